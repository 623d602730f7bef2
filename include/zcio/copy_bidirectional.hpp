// copy_bidirectional(): the heart of a proxy. Both directions at once, half-close
// honoured, per-direction counts kept even when it ends in an error.
#pragma once

#include <zcio/copy.hpp>
#include <zcio/stream.hpp>
#include <zcio/task.hpp>

#include <cstdint>
#include <optional>
#include <system_error>

namespace zcio {

enum class direction : std::uint8_t { a_to_b, b_to_a };
const char* to_string(direction d) noexcept;

struct bidirectional_options {
    // automatic | splice | buffer. automatic starts each direction on the buffer path
    // and moves it to splice once one read fills a whole buffer (bulk traffic), so a
    // chatty exchange of small messages never pays for pipes.
    copy_path path = copy_path::automatic;
    std::size_t pipe_size = 0;
    // No byte in either direction for this long ends the copy with timed_out.
    std::optional<clock::duration> idle_timeout;
    // Bytes per second, per direction; 0 = unlimited.
    std::uint64_t rate_limit = 0;
    // Optional live counters (bytes are added as they move); must outlive the copy.
    std::uint64_t* a_to_b_progress = nullptr;
    std::uint64_t* b_to_a_progress = nullptr;
    transfer_pools* pools = nullptr;
};

struct traffic {
    std::uint64_t a_to_b = 0; // bytes written to b, also when it ended in an error
    std::uint64_t b_to_a = 0; // bytes written to a
    copy_path a_to_b_path = copy_path::automatic;
    copy_path b_to_a_path = copy_path::automatic;
    std::optional<direction> failed; // which direction failed (none for a timeout)
    std::error_code error;           // empty when both directions reached end of stream

    [[nodiscard]] bool ok() const noexcept { return !error; }
};

// Copies a→b and b→a concurrently until both reach end of stream. When one direction
// reads end of stream and has written everything, it shuts down writing on its
// destination (SHUT_WR) and the other direction goes on. An error in either direction,
// or the idle timeout, ends both; the counts say what moved until then.
// `a` and `b` must outlive the copy; they are not closed by it.
task<traffic> copy_bidirectional(stream& a, stream& b, bidirectional_options opts = {});

} // namespace zcio
