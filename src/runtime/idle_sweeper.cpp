// idle_sweeper: the entry list and the timer that ticks it.
#include <zcio/idle_sweeper.hpp>

#include <limits>
#include <stdexcept>

namespace zcio {

void idle_entry::leave() noexcept {
    if (sweeper_ != nullptr) {
        sweeper_->remove(*this);
    }
}

clock::duration quiet_ticks::observe(std::uint64_t progress, clock::duration tick) noexcept {
    if (fresh_ || progress != seen_) {
        fresh_ = false;
        seen_ = progress;
        ticks_ = 0;
        return clock::duration::zero();
    }
    if (ticks_ < std::numeric_limits<std::uint32_t>::max()) {
        ++ticks_;
    }
    return tick * ticks_;
}

idle_sweeper::idle_sweeper(event_loop& loop, clock::duration tick) : loop_(&loop), tick_(tick) {
    if (tick <= clock::duration::zero()) {
        throw std::invalid_argument("zcio::idle_sweeper: the tick must be positive");
    }
    timer_.owner = this;
}

idle_sweeper::~idle_sweeper() {
    timer_.stop();
    for (idle_entry* e = head_; e != nullptr;) {
        idle_entry* next = e->next_;
        e->sweeper_ = nullptr;
        e->prev_ = e->next_ = nullptr;
        e = next;
    }
}

void idle_sweeper::add(idle_entry& e) noexcept {
    if (e.sweeper_ == this) {
        return;
    }
    e.leave();
    e.sweeper_ = this;
    e.prev_ = nullptr;
    e.next_ = head_;
    if (head_ != nullptr) {
        head_->prev_ = &e;
    }
    head_ = &e;
    ++size_;
    if (!timer_.armed()) {
        timer_.start(*loop_, clock::now() + tick_);
    }
}

void idle_sweeper::remove(idle_entry& e) noexcept {
    // A sweep in progress goes on from the entry after the one leaving.
    if (cursor_ == &e) {
        cursor_ = e.next_;
    }
    (e.prev_ != nullptr ? e.prev_->next_ : head_) = e.next_;
    if (e.next_ != nullptr) {
        e.next_->prev_ = e.prev_;
    }
    e.sweeper_ = nullptr;
    e.prev_ = e.next_ = nullptr;
    --size_;
    // The timer is left armed: it stops at the next sweep if the list is still empty,
    // so a server taking one connection at a time does not insert and erase a timer
    // for each.
}

void idle_sweeper::sweep() {
    ++sweeps_;
    // Invariant: cursor_ is the next entry to tick; remove() moves it past an entry
    // that leaves, so on_tick() may destroy any entry. New entries join at the head,
    // behind the cursor, and wait for the next sweep.
    for (idle_entry* e = head_; e != nullptr; e = cursor_) {
        cursor_ = e->next_;
        e->on_tick(tick_);
    }
    cursor_ = nullptr;
    // Re-armed from now, not from the last deadline: a loop that fell behind must not
    // sweep twice in a row and count a tick that did not pass.
    if (head_ != nullptr) {
        timer_.start(*loop_, clock::now() + tick_);
    }
}

} // namespace zcio
