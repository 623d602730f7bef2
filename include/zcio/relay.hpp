// relay: copy_bidirectional() for servers that hold many quiet connections.
//
// copy_bidirectional() is a coroutine: while a connection waits for data, its frame, the
// frames of both copy() directions and the caller's frame stay allocated (several KiB).
// A relay is an object instead. Each burst of data runs a copy() that returns as soon as
// its source has nothing more to read; the direction then parks on the source's
// readiness with a plain waiter inside the relay, and its frames are freed. A quiet
// connection costs the relay object and its two registered sockets, nothing else: no
// coroutine frame, no pipe, no buffer, no timer.
//
// Semantics are those of copy_bidirectional(): half-close passed on (SHUT_WR) when a
// direction reads end of stream, an error or the idle timeout ends both directions, and
// the counts say what moved until then.
#pragma once

#include <zcio/copy.hpp>
#include <zcio/copy_bidirectional.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/stream.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <system_error>

namespace zcio {

class relay_set;

class relay {
public:
    // Takes both streams (same loop). Options as for copy_bidirectional(), except the
    // live progress pointers, which a relay does not use (read a_to_b()/b_to_a()).
    // The idle timeout is enforced only for a relay in a relay_set (one timer sweeps
    // the whole set instead of one timer per connection).
    relay(stream a, stream b, const bidirectional_options& opts);
    relay(const relay&) = delete;
    relay& operator=(const relay&) = delete;
    // Destroying a relay that was started is allowed only from on_done() or after it.
    // A relay leaves its set when destroyed.
    virtual ~relay();

    // Starts both directions (runs them until they first have nothing to read).
    void start();
    // Ends both directions with operation_canceled; their counts are kept. Idempotent,
    // and nothing after on_done().
    void cancel();
    // One tick of an idle sweep (relay_set calls it every `tick`): ends the relay with
    // timed_out once no byte moved either way for idle_timeout worth of ticks. After a
    // tick without a byte while a direction waits to write, it also looks for a reset
    // on either socket (nothing else watches a source then) and ends the relay with it.
    void check_idle(clock::duration tick);

    // Bytes written so far to b (a_to_b) and to a (b_to_a).
    [[nodiscard]] std::uint64_t a_to_b() const noexcept { return dirs_[0].bytes; }
    [[nodiscard]] std::uint64_t b_to_a() const noexcept { return dirs_[1].bytes; }
    // Directions currently running a copy (0 while the connection is quiet).
    [[nodiscard]] int running() const noexcept { return running_; }

    [[nodiscard]] stream& a() noexcept { return a_; }
    [[nodiscard]] stream& b() noexcept { return b_; }

protected:
    // Called once, from the loop (never inside a direction's frame), when both
    // directions reached end of stream, one failed, the idle timeout fired or cancel()
    // was called. The streams are still open; after a failure their registrations are
    // gone (closing them is the owner's job). It may destroy the relay.
    virtual void on_done(const traffic& t) = 0;

private:
    friend class relay_set;
    friend struct relay_burst;
    enum class phase : std::uint8_t { parked, running, done };

    // Parks a direction on its source's readability without a coroutine frame. Once
    // both directions are done, the first one's waiter also delivers on_done().
    struct park_waiter final : detail::io_waiter {
        relay* owner = nullptr;
        void wake() override;
        void reset_error() noexcept { ec_.clear(); }
        [[nodiscard]] bool cancelled() const noexcept { return static_cast<bool>(ec_); }
    };

    struct direction_state {
        std::uint64_t bytes = 0;
        park_waiter waiter;
        copy_path path = copy_path::automatic;     // sticky: splice once upgraded
        copy_path reported = copy_path::automatic; // the path that last moved bytes
        phase state = phase::parked;
    };

    void launch(int i);
    void burst_ended(int i, const copy_result& r);
    void park(int i);
    void fail(std::optional<direction> which, std::error_code ec);
    void maybe_finish();
    void check_stuck();
    void deliver();
    [[nodiscard]] copy_options options_for(int i);

    stream a_;
    stream b_;
    direction_state dirs_[2];
    transfer_pools* pools_;
    std::unique_ptr<rate_limiter[]> limiters_; // only with a rate limit
    relay_set* set_ = nullptr;
    relay* prev_ = nullptr;
    relay* next_ = nullptr;
    clock::duration idle_timeout_{};
    std::uint64_t total_at_check_ = 0;
    std::error_code error_;
    std::uint32_t pipe_size_;
    std::uint32_t quiet_ticks_ = 0; // sweeps in a row that saw no byte move
    std::optional<direction> failed_;
    copy_path engine_;
    std::int8_t running_ = 0;
    bool started_ = false;
    bool ending_ = false;
    bool finished_ = false;
};

// The relays of one loop: cancel them all at shutdown, and enforce their idle timeouts
// with one timer that sweeps the set every `tick` (a timeout then fires between T and
// T + tick after the last byte). Not thread-safe: one set per loop.
class relay_set {
public:
    explicit relay_set(event_loop& loop, clock::duration tick = std::chrono::seconds(1));
    relay_set(const relay_set&) = delete;
    relay_set& operator=(const relay_set&) = delete;
    // The relays must have left (been destroyed) before the set goes.
    ~relay_set();

    // Adds a relay (before or after start()); it leaves when destroyed.
    void add(relay& r) noexcept;
    // cancel() on every relay in the set.
    void cancel_all();

    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }

    // Calls `fn(relay&)` for every relay in the set (metrics, say). `fn` must not
    // destroy relays or add any.
    template <class F>
    void for_each(F&& fn) {
        for (relay* r = head_; r != nullptr; r = r->next_) {
            fn(*r);
        }
    }

private:
    friend class relay;
    struct sweeper final : detail::timer_node {
        relay_set* owner = nullptr;
        void wake() override;
        void start(event_loop& loop, clock::time_point at) { arm(loop, at); }
        void stop() noexcept { disarm(); }
    };
    void remove(relay& r) noexcept;

    event_loop* loop_;
    clock::duration tick_;
    relay* head_ = nullptr;
    std::size_t size_ = 0;
    sweeper sweeper_;
};

} // namespace zcio
