// relay: both directions of a connection as two transfers driven by plain waiters.
//
// Each direction is a transfer (transfer.hpp). The relay calls its step() and parks the
// direction's waiter on whatever it asked for: the source's readability, the
// destination's writability, or a timer (rate limit). No coroutine frame exists at any
// point, and a transfer holds a pipe or buffer only while bytes are in hand, so a quiet
// connection costs the relay object and its two registered sockets, nothing else; a
// direction stuck on a full destination costs the bytes it holds.
//
// Semantics are those of copy_bidirectional() (which is a relay plus a join):
// half-close passed on (SHUT_WR) when a direction reads end of stream, an error or the
// idle timeout ends both directions, and the counts say what moved until then.
#pragma once

#include <zcio/copy.hpp>
#include <zcio/copy_bidirectional.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/stream.hpp>
#include <zcio/transfer.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <system_error>

namespace zcio {

class relay_set;
class relay;

namespace detail {
// Where a relay's direction waits: parked on a readiness, or in the run queue. A base
// of relay rather than a member: it converts to its relay, so it needs no pointer back
// (48 bytes: io_waiter plus the index in its tail padding).
class relay_park : public io_waiter {
public:
    void wake() override;

protected:
    friend class zcio::relay;
    void unpark() noexcept {
        if (handle_ != nullptr) {
            handle_->unpark(this);
        }
    }
    [[nodiscard]] relay& owner() noexcept;
    std::uint8_t index_ = 0; // 0: a→b, 1: b→a
};
// The two bases must be distinct types.
template <int I>
class relay_park_at : public relay_park {
protected:
    relay_park_at() noexcept { index_ = I; }
};
} // namespace detail

class relay : private detail::relay_park_at<0>, private detail::relay_park_at<1> {
public:
    // Takes both streams (same loop). Options as for copy_bidirectional(); the live
    // progress pointers, when set, must outlive the relay. The idle timeout is enforced only for a
    // relay in a relay_set (one timer sweeps the whole set instead of one timer per connection).
    relay(stream a, stream b, const bidirectional_options& opts);
    relay(const relay&) = delete;
    relay& operator=(const relay&) = delete;
    // Destroying a relay that was started is allowed only from on_done() or after it.
    // A relay leaves its set when destroyed.
    virtual ~relay();

    // Starts both directions (runs them until they first must wait).
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
    [[nodiscard]] std::uint64_t a_to_b() const noexcept { return dirs_[0].bytes(); }
    [[nodiscard]] std::uint64_t b_to_a() const noexcept { return dirs_[1].bytes(); }
    // The path each direction uses now (metrics).
    [[nodiscard]] copy_path a_to_b_path() const noexcept { return dirs_[0].path(); }
    [[nodiscard]] copy_path b_to_a_path() const noexcept { return dirs_[1].path(); }
    // Directions busy with data: holding bytes for a full destination, throttled or
    // yielding (0 while the connection is quiet).
    [[nodiscard]] int running() const noexcept {
        return (state_[0] == phase::running ? 1 : 0) + (state_[1] == phase::running ? 1 : 0);
    }

    [[nodiscard]] stream& a() noexcept { return a_; }
    [[nodiscard]] stream& b() noexcept { return b_; }

protected:
    // Called once, from the loop (never inside a direction's frame), when both
    // directions reached end of stream, one failed, the idle timeout fired or cancel()
    // was called. The streams are still open and registered (closing them is the
    // owner's job). It may destroy the relay.
    virtual void on_done(const traffic& t) = 0;
    // Called by relay_set::report_all() (an owner's metrics tick): a_to_b() and
    // b_to_a() say what moved so far. Nothing by default.
    virtual void report() noexcept {}

private:
    friend class relay_set;
    friend class detail::relay_park;
    enum class phase : std::uint8_t { parked, running, done };

    // Wakes a direction that waits for a time (rate limit, a splice pause).
    struct pace_timer final : detail::timer_node {
        relay* owner = nullptr;
        int i = 0;
        void wake() override { owner->resume(i, {}); }
        void start(event_loop& loop, clock::time_point at) { arm(loop, at); }
        void stop() noexcept { disarm(); }
    };
    // Only for a relay with a rate limit (or once a direction asks for a time).
    struct pacing {
        rate_limiter limits[2];
        pace_timer timers[2];
    };

    // Direction i reads src_of(i) and writes dst_of(i): 0 is a→b, 1 is b→a.
    stream& src_of(int i) noexcept { return i == 0 ? a_ : b_; }
    stream& dst_of(int i) noexcept { return i == 0 ? b_ : a_; }
    // Direction i's waiter (a base: see detail::relay_park).
    detail::relay_park& waiter(int i) noexcept {
        return i == 0
                   ? static_cast<detail::relay_park&>(static_cast<detail::relay_park_at<0>&>(*this))
                   : static_cast<detail::relay_park&>(
                         static_cast<detail::relay_park_at<1>&>(*this));
    }

    static copy_options options_for(const bidirectional_options& o, int i, pacing* p);
    void run(int i);
    void resume(int i, std::error_code ec);
    void park(int i, transfer::wait w);
    void pause(int i);
    void end_of_stream(int i);
    void fail(std::optional<direction> which, std::error_code ec);
    void maybe_finish();
    void check_stuck();
    void deliver();

    stream a_;
    stream b_;
    std::unique_ptr<pacing> pacing_;
    transfer dirs_[2]; // a→b, b→a
    relay_set* set_ = nullptr;
    relay* prev_ = nullptr;
    relay* next_ = nullptr;
    std::uint32_t idle_timeout_ms_ = 0; // 0: none
    std::uint32_t total_at_check_ = 0;  // low 32 bits of the bytes moved at the last tick
    std::uint32_t quiet_ticks_ = 0;     // sweeps in a row that saw no byte move
    std::optional<direction> failed_;
    phase state_[2] = {phase::parked, phase::parked};
    std::uint8_t error_in_ = 0; // the transfer whose result holds the relay's error
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
    // report() on every relay in the set (it must not destroy relays or add any).
    void report_all() noexcept;

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
