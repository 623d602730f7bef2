// idle_sweeper: idle timeouts for many connections with one timer per loop.
//
// A timer per connection costs a node in the loop's timer set and an insert and erase
// for every change of deadline; a watchdog coroutine per connection costs a frame. A
// sweeper instead keeps an intrusive list of entries and, while the list is not empty,
// wakes once every `tick` and calls each entry's on_tick(). An entry decides for itself
// whether it timed out (quiet_ticks counts the ticks in a row without progress), so a
// timeout fires between T and T + tick after the last activity when T is a multiple of
// the tick (at most T + 2 ticks otherwise). Entries are members of the objects they
// watch (a relay, a connection's frame): joining and leaving never allocate.
//
// Threading: a sweeper and its entries belong to one loop's thread.
#pragma once

#include <zcio/event_loop.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace zcio {

class idle_sweeper;

// A member of a sweep: derive from it and implement on_tick(). It joins with
// idle_sweeper::add() and leaves with leave() or when destroyed.
class idle_entry {
public:
    idle_entry() noexcept = default;
    idle_entry(const idle_entry&) = delete;
    idle_entry& operator=(const idle_entry&) = delete;
    virtual ~idle_entry() { leave(); }

    // Leaves the sweeper, if in one. Safe during a sweep, from any entry's on_tick().
    void leave() noexcept;
    [[nodiscard]] bool joined() const noexcept { return sweeper_ != nullptr; }

protected:
    // Called from the loop once a tick while joined, with the sweeper's tick. It may
    // destroy this entry or others and add new ones (those are first ticked at the
    // next sweep); it must not destroy the sweeper.
    virtual void on_tick(clock::duration tick) = 0;

private:
    friend class idle_sweeper;
    idle_sweeper* sweeper_ = nullptr;
    idle_entry* prev_ = nullptr;
    idle_entry* next_ = nullptr;
};

// Counts the sweeps in a row that saw a progress counter (bytes moved, say) unchanged.
// A tick counts only once it passed entirely without progress: the first observation
// after construction or reset() only records the counter.
class quiet_ticks {
public:
    // Called from on_tick() with the counter's value. Returns how long the counter has
    // been still, in whole ticks: zero when it moved since the last call.
    clock::duration observe(std::uint64_t progress, clock::duration tick) noexcept;
    // Starts counting afresh (activity that the counter does not show).
    void reset() noexcept { fresh_ = true; }

private:
    std::uint64_t seen_ = 0;
    std::uint32_t ticks_ = 0;
    bool fresh_ = true;
};

class idle_sweeper {
public:
    // One per loop is enough; `tick` is the timeout's resolution. Throws
    // std::invalid_argument for a tick that is not positive (it would sweep in a loop).
    explicit idle_sweeper(event_loop& loop, clock::duration tick = std::chrono::seconds(1));
    idle_sweeper(const idle_sweeper&) = delete;
    idle_sweeper& operator=(const idle_sweeper&) = delete;
    // Entries still joined are let go (they leave nothing behind when destroyed later).
    ~idle_sweeper();

    // Adds `e` (leaving another sweeper first) and starts the timer if it was stopped.
    void add(idle_entry& e) noexcept;

    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
    [[nodiscard]] clock::duration tick() const noexcept { return tick_; }
    [[nodiscard]] event_loop& loop() const noexcept { return *loop_; }
    // Whether the timer is armed. A sweep that finds the list empty does not re-arm
    // it, so a sweeper without entries costs the loop nothing.
    [[nodiscard]] bool running() const noexcept { return timer_.armed(); }
    // Sweeps done so far (for tests and metrics).
    [[nodiscard]] std::uint64_t sweeps() const noexcept { return sweeps_; }

private:
    friend class idle_entry;
    struct timer final : detail::timer_node {
        idle_sweeper* owner = nullptr;
        void wake() override { owner->sweep(); }
        void start(event_loop& loop, clock::time_point at) { arm(loop, at); }
        void stop() noexcept { disarm(); }
    };

    void remove(idle_entry& e) noexcept;
    void sweep();

    event_loop* loop_;
    clock::duration tick_;
    idle_entry* head_ = nullptr;
    idle_entry* cursor_ = nullptr; // during a sweep: the next entry to tick
    std::size_t size_ = 0;
    std::uint64_t sweeps_ = 0;
    timer timer_;
};

} // namespace zcio
