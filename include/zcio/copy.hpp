// copy(): move bytes from one fd to another by the cheapest path the kernel offers.
//
// What users must know:
//  - A file sent with sendfile or splice is referenced from the page cache, not copied:
//    if the file changes before the data leaves the socket buffer, the new bytes can be
//    sent. Do not modify a file while it is being served.
//  - A completed splice or sendfile means the bytes reached the destination socket's
//    send buffer, not the peer. Close or shut down the socket to learn about failures.
//  - copy() counts bytes even when it fails: the result always says how many bytes
//    were written to `dst` and by which path.
//  - Regular file → regular file (the copy_file_range path) keeps the holes of a sparse
//    source, as cp(1) does, when `dst` holds nothing from where the copy writes on (a
//    new or truncated file): only the data extents are copied, a hole at the end is
//    made by ftruncate. Holes count as copied bytes; they cost no I/O, so a rate limit
//    does not apply to them.
#pragma once

#include <zcio/buffer_pool.hpp>
#include <zcio/copy_path.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/pipe_pool.hpp>
#include <zcio/stream.hpp>
#include <zcio/task.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <system_error>

#include <sys/types.h>

namespace zcio {

// The two pools a copy borrows from. One per event loop; never shared across threads.
struct transfer_pools {
    pipe_pool pipes;
    buffer_pool buffers;

    // The calling thread's pools (made on first use with default options).
    static transfer_pools& for_this_thread();
};

// Token bucket for rate limits in bytes per second: the next read or splice is cut to
// what the bucket allows, and the copy sleeps when it is empty. Works with every path.
class rate_limiter {
public:
    // `bytes_per_second` 0 means unlimited. `burst` defaults to a tenth of a second.
    explicit rate_limiter(std::uint64_t bytes_per_second = 0, std::uint64_t burst = 0) noexcept;

    [[nodiscard]] bool unlimited() const noexcept { return rate_ == 0; }
    // How many of `want` bytes may move now (0: wait until ready_at()).
    std::size_t allow(std::size_t want, clock::time_point now) noexcept;
    // Records `n` bytes that moved.
    void consume(std::size_t n) noexcept;
    // When the next quantum (min of the request, the burst and 64 KiB) may move.
    [[nodiscard]] clock::time_point ready_at(clock::time_point now) const noexcept;

private:
    void refill(clock::time_point now) noexcept;
    std::uint64_t rate_;
    double burst_;
    double tokens_;
    clock::time_point last_{};
};

// copy_options::max_chunk: its default, and the largest length copy() passes to one
// system call.
inline constexpr std::size_t default_max_chunk = std::size_t{1} << 20;
inline constexpr std::size_t max_chunk_limit = std::size_t{1} << 30;

// The length bound copy() really uses for a requested max_chunk: 0 means the default
// (1 MiB), anything above max_chunk_limit is cut to it.
constexpr std::size_t effective_max_chunk(std::size_t requested) noexcept {
    if (requested == 0) {
        return default_max_chunk;
    }
    return requested < max_chunk_limit ? requested : max_chunk_limit;
}

struct copy_options {
    // Bytes to copy at most; std::nullopt = until end of stream. 0 copies nothing.
    std::optional<std::uint64_t> limit;
    // Force a path (tests, benchmarks). A refused path still falls back to the buffer
    // path as long as no byte has moved.
    copy_path path = copy_path::automatic;
    // Size asked of pooled pipes; 0 = the pool's size.
    std::size_t pipe_size = 0;
    // Upper bound for one splice/sendfile/copy_file_range call. Larger values are cut
    // to max_chunk_limit (1 GiB): some kernels reject huge lengths such as SIZE_MAX
    // with EINVAL. 0 means the default.
    std::size_t max_chunk = default_max_chunk;
    // After this many bytes the copy yields to the loop even if both fds stay ready,
    // so one busy connection cannot starve the others under edge triggering.
    std::size_t yield_budget = std::size_t{4} << 20;
    // Explicit file offsets (pread/pwrite style: the fd's own offset is not moved).
    // Without them a file is read or written at its current offset, which is left
    // after the last byte, as read(2)/write(2) would.
    std::optional<off_t> src_offset;
    std::optional<off_t> dst_offset;
    // Optional: bytes are added here as they move (metrics, idle detection). Must
    // outlive the copy.
    std::uint64_t* progress = nullptr;
    // Optional rate limit (must outlive the copy).
    rate_limiter* limiter = nullptr;
    // Pools to borrow from; null = transfer_pools::for_this_thread().
    transfer_pools* pools = nullptr;
    // Instead of waiting for the source to become readable while holding nothing,
    // return with copy_result::idle set. The caller waits for readability however it
    // likes (relay does it without a coroutine frame) and calls copy() again.
    bool return_when_idle = false;
};

struct copy_result {
    std::uint64_t bytes = 0;               // bytes written to dst, also on error
    copy_path path = copy_path::automatic; // path that moved the bytes (the last one)
    std::error_code error;                 // empty on success (end of stream or limit)
    // With copy_options::return_when_idle: the copy stopped because its source had
    // nothing to read (not at end of stream); nothing is held, nothing is lost.
    bool idle = false;

    [[nodiscard]] bool ok() const noexcept { return !error; }
};

// The path copy() would try first for these two fds (automatic selection).
copy_path choose_path(const stream& dst, const stream& src, const copy_options& opts);

// Copies from `src` to `dst` until end of stream, the limit, or an error.
// `dst` and `src` must outlive the copy (co_await it where you call it).
// Cancellation (destroying the awaiting task) is safe: a pipe still holding bytes is
// closed, never returned to its pool.
task<copy_result> copy(stream& dst, stream& src, copy_options opts = {});

} // namespace zcio
