// relay: copy_bidirectional() for servers that hold many quiet connections.
//
// copy_bidirectional() is a coroutine: while a connection waits for data, its frame, the
// frames of both copy() directions and the caller's frame stay allocated (several KiB).
// A relay is an object instead. Each burst of data runs a copy() that returns as soon as
// its source has nothing more to read; the direction then parks on the source's
// readiness with a plain waiter inside the relay, and its frames are freed. A quiet
// connection costs the relay object and its two registered sockets, nothing else: no
// coroutine frame, no pipe, no buffer.
//
// Semantics are those of copy_bidirectional(): half-close passed on (SHUT_WR) when a
// direction reads end of stream, an error or the idle timeout ends both directions, and
// the counts say what moved until then.
#pragma once

#include <zcio/copy.hpp>
#include <zcio/copy_bidirectional.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/stream.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <system_error>

namespace zcio {

class relay {
public:
    // Takes both streams (same loop). Options as for copy_bidirectional(); the live
    // progress pointers, when given, must outlive the relay.
    relay(stream a, stream b, const bidirectional_options& opts);
    relay(const relay&) = delete;
    relay& operator=(const relay&) = delete;
    // Destroying a relay that was started is allowed only from on_done() or after it.
    virtual ~relay();

    // Starts both directions (runs them until they first have nothing to read).
    void start();
    // Ends both directions with operation_canceled; their counts are kept. Idempotent,
    // and nothing after on_done().
    void cancel();

    // Bytes written so far to b (a_to_b) and to a (b_to_a).
    [[nodiscard]] std::uint64_t a_to_b() const noexcept { return *dirs_[0].counter; }
    [[nodiscard]] std::uint64_t b_to_a() const noexcept { return *dirs_[1].counter; }
    // Directions currently running a copy (0 while the connection is quiet).
    [[nodiscard]] int running() const noexcept { return running_; }

    [[nodiscard]] stream& a() noexcept { return a_; }
    [[nodiscard]] stream& b() noexcept { return b_; }

protected:
    // Called once, from the loop (never inside a direction's frame), when both
    // directions reached end of stream, one failed, the idle timeout fired or cancel()
    // was called. The streams are still open (closed after a failure). It may destroy
    // the relay.
    virtual void on_done(const traffic& t) = 0;

private:
    enum class phase : std::uint8_t { parked, running, done };

    // Parks a direction on its source's readability without a coroutine frame.
    struct park_waiter final : detail::io_waiter {
        relay* owner = nullptr;
        void wake() override;
        [[nodiscard]] io_handle* parked_on() const noexcept { return handle_; }
        [[nodiscard]] std::error_code cancelled() const noexcept { return ec_; }
        void reset_error() noexcept { ec_.clear(); }
    };

    struct direction_state {
        std::uint64_t own = 0;
        std::uint64_t* counter = &own;
        std::uint64_t start = 0;
        copy_path path = copy_path::automatic;     // sticky: splice once upgraded
        copy_path reported = copy_path::automatic; // the path that last moved bytes
        phase state = phase::parked;
        park_waiter waiter;
    };

    // Runs on_done() from the run queue.
    struct finisher final : detail::waiter {
        relay* owner = nullptr;
        void wake() override;
    };

    // Compares totals a few times per period instead of arming a timer per operation.
    struct watchdog final : detail::timer_node {
        relay* owner = nullptr;
        std::uint64_t last_total = 0;
        int quiet_checks = 0;
        void wake() override;
        void start(event_loop& loop, clock::time_point at) { arm(loop, at); }
        void stop() noexcept { disarm(); }
    };

    friend struct burst;
    void launch(int i);
    void burst_ended(int i, const copy_result& r);
    void park(int i);
    void fail(std::optional<direction> which, std::error_code ec);
    void maybe_finish();
    [[nodiscard]] std::uint64_t total() const noexcept;
    [[nodiscard]] copy_options options_for(int i) const;

    stream a_;
    stream b_;
    direction_state dirs_[2];
    transfer_pools* pools_;
    std::unique_ptr<rate_limiter[]> limiters_; // only with a rate limit
    std::size_t pipe_size_;
    clock::duration idle_timeout_{};
    std::error_code error_;
    std::optional<direction> failed_;
    copy_path engine_;
    int running_ = 0;
    bool started_ = false;
    bool ending_ = false;
    bool finished_ = false;
    finisher finisher_;
    watchdog watchdog_;
};

} // namespace zcio
