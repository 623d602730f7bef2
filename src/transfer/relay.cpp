// relay: both directions of a connection, holding coroutine frames only while data moves.
#include <zcio/relay.hpp>

#include <algorithm>
#include <climits>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <utility>

namespace zcio {

namespace {

// A coroutine that starts at once and frees its own frame when it ends: one burst of
// one direction. Nobody awaits it; the relay learns of its end through burst_ended().
struct detached {
    struct promise_type {
        // Counted with the tasks' frames, so live_task_frames() sees every frame.
        promise_type() noexcept {
            detail::live_task_frames.fetch_add(1, std::memory_order_relaxed);
        }
        ~promise_type() { detail::live_task_frames.fetch_sub(1, std::memory_order_relaxed); }
        promise_type(const promise_type&) = delete;
        promise_type& operator=(const promise_type&) = delete;
        detached get_return_object() noexcept { return {}; }
        std::suspend_never initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); } // copy() does not throw
    };
};

} // namespace

// One burst: copy until the source has nothing more to read (or ends, or fails).
struct relay_burst {
    static detached run(relay* r, int i) {
        stream& from = i == 0 ? r->a_ : r->b_;
        stream& to = i == 0 ? r->b_ : r->a_;
        const copy_result res = co_await copy(to, from, r->options_for(i));
        r->burst_ended(i, res); // never destroys the relay: on_done() runs from the queue
    }
};

relay::relay(stream a, stream b, const bidirectional_options& opts)
    : a_(std::move(a)), b_(std::move(b)), pools_(opts.pools),
      pipe_size_(static_cast<std::uint32_t>(std::min<std::size_t>(opts.pipe_size, UINT32_MAX))),
      engine_(opts.path) {
    dirs_[0].waiter.owner = this;
    dirs_[1].waiter.owner = this;
    if (opts.rate_limit != 0) {
        limiters_.reset(
            new rate_limiter[2]{rate_limiter(opts.rate_limit), rate_limiter(opts.rate_limit)});
    }
    if (opts.idle_timeout) {
        idle_timeout_ = *opts.idle_timeout;
    }
}

relay::~relay() {
    if (set_ != nullptr) {
        set_->remove(*this);
    }
}

copy_options relay::options_for(int i) {
    copy_options o;
    o.path = engine_ == copy_path::automatic ? dirs_[i].path : engine_;
    o.pipe_size = pipe_size_;
    o.pools = pools_;
    o.progress = &dirs_[i].bytes;
    o.limiter = limiters_ ? &limiters_[i] : nullptr;
    o.return_when_idle = true;
    return o;
}

void relay::start() {
    if (started_) {
        return;
    }
    started_ = true;
    launch(0);
    if (ending_) {
        // The first direction failed at once: fail() queued the second one's waiter,
        // which ends that direction and lets on_done() come once.
        return;
    }
    launch(1);
}

void relay::cancel() {
    if (started_ && !finished_) {
        fail(std::nullopt, std::make_error_code(std::errc::operation_canceled));
    }
}

void relay::check_idle(clock::duration tick) {
    if (!started_ || ending_ || finished_ || idle_timeout_.count() <= 0) {
        return;
    }
    const std::uint64_t total = dirs_[0].bytes + dirs_[1].bytes;
    if (total != total_at_check_) {
        total_at_check_ = total;
        quiet_ticks_ = 0;
        return;
    }
    // A tick counts only once it passed entirely without a byte: the timeout fires
    // between T and T + tick after the last byte.
    if (quiet_ticks_ < UINT32_MAX) {
        ++quiet_ticks_;
    }
    if (tick * quiet_ticks_ >= idle_timeout_) {
        fail(std::nullopt, op_error("idle timeout", ETIMEDOUT));
        return;
    }
    check_stuck();
}

void relay::check_stuck() {
    // A direction that is running but moved nothing for a whole tick is waiting to
    // write. Meanwhile nothing waits on its source, so a reset there (the client gone
    // while the upstream neither reads nor writes) would only end the relay at the
    // idle timeout. One poll(2) of both sockets finds such a pending error.
    if (running_ == 0) {
        return;
    }
    const int fds[2] = {a_.fd(), b_.fd()};
    sys::poll_state st[2];
    if (!sys::poll_now(fds, st) || (!st[0].error && !st[1].error)) {
        return;
    }
    const int side = st[0].error ? 0 : 1;
    std::error_code ec = sys::socket_error(fds[side]).value_or(std::error_code{});
    if (!ec) {
        ec = std::make_error_code(std::errc::connection_reset);
    }
    // Reading from the side that failed is the direction that failed.
    fail(side == 0 ? direction::a_to_b : direction::b_to_a, name_op("recv", ec));
}

void relay::launch(int i) {
    dirs_[i].state = phase::running;
    ++running_;
    relay_burst::run(this, i);
}

void relay::burst_ended(int i, const copy_result& r) {
    direction_state& d = dirs_[i];
    --running_;
    if (r.path != copy_path::automatic && (r.bytes > 0 || d.reported == copy_path::automatic)) {
        d.reported = r.path;
    }
    if (r.path == copy_path::splice && r.bytes > 0) {
        d.path = copy_path::splice; // bulk data went by splice: start there next time
    }
    if (ending_) {
        d.state = phase::done;
        maybe_finish();
        return;
    }
    if (!r.ok()) {
        d.state = phase::done;
        fail(i == 0 ? direction::a_to_b : direction::b_to_a, r.error);
        return;
    }
    if (r.idle) {
        park(i);
        return;
    }
    // End of stream read and everything written: pass the half-close on. ENOTCONN
    // means the peer is already gone entirely, which the other direction will see.
    stream& to = i == 0 ? b_ : a_;
    d.state = phase::done;
    if (to.kind() == sys::fd_kind::socket) {
        if (auto sh = to.shutdown_write(); !sh && errno_of(sh.error()) != ENOTCONN) {
            fail(i == 0 ? direction::a_to_b : direction::b_to_a, sh.error());
            return;
        }
    }
    maybe_finish();
}

void relay::park(int i) {
    direction_state& d = dirs_[i];
    io_handle& h = (i == 0 ? a_ : b_).handle();
    d.state = phase::parked;
    d.waiter.reset_error();
    if (h.ready(io_direction::read) || h.forgotten()) {
        a_.loop().schedule(d.waiter); // never re-enter a burst from inside one
        return;
    }
    h.park(io_direction::read, &d.waiter);
}

void relay::park_waiter::wake() {
    relay* r = owner;
    if (r->finished_) {
        r->deliver(); // both directions are done: this waiter carries on_done()
        return;
    }
    const int i = this == &r->dirs_[0].waiter ? 0 : 1;
    io_handle& h = (i == 0 ? r->a_ : r->b_).handle();
    if (r->ending_ || cancelled() || h.forgotten()) {
        r->dirs_[i].state = phase::done;
        r->maybe_finish();
        return;
    }
    r->launch(i);
}

void relay::fail(std::optional<direction> which, std::error_code ec) {
    if (ending_) {
        return;
    }
    ending_ = true;
    failed_ = which;
    error_ = ec;
    // Forgetting the registrations wakes everything that waits on them: a parked
    // direction through its waiter, a running one at its next wait (operation_canceled).
    // The descriptors stay open until the owner closes them.
    a_.handle().forget();
    b_.handle().forget();
    for (auto& d : dirs_) {
        if (d.state == phase::parked && !d.waiter.queued()) {
            a_.loop().schedule(d.waiter); // parked on nothing the forget reached
        }
    }
    maybe_finish();
}

void relay::maybe_finish() {
    if (finished_ || dirs_[0].state != phase::done || dirs_[1].state != phase::done) {
        return;
    }
    // Neither waiter is parked or queued now (a done direction's waiter has run), so
    // the first one is free to carry on_done() through the run queue.
    finished_ = true;
    a_.loop().schedule(dirs_[0].waiter);
}

void relay::deliver() {
    traffic t;
    t.a_to_b = dirs_[0].bytes;
    t.b_to_a = dirs_[1].bytes;
    t.a_to_b_path = dirs_[0].reported;
    t.b_to_a_path = dirs_[1].reported;
    t.failed = failed_;
    t.error = error_;
    on_done(t); // may destroy the relay, the waiter that called us with it
}

// ---- relay_set ----

relay_set::relay_set(event_loop& loop, clock::duration tick) : loop_(&loop), tick_(tick) {
    sweeper_.owner = this;
}

relay_set::~relay_set() {
    sweeper_.stop();
    for (relay* r = head_; r != nullptr; r = r->next_) {
        r->set_ = nullptr; // should not happen: relays outliving their set just leave it
    }
}

void relay_set::add(relay& r) noexcept {
    if (r.set_ != nullptr) {
        return;
    }
    r.set_ = this;
    r.prev_ = nullptr;
    r.next_ = head_;
    if (head_ != nullptr) {
        head_->prev_ = &r;
    }
    head_ = &r;
    ++size_;
    if (!sweeper_.armed()) {
        sweeper_.start(*loop_, clock::now() + tick_);
    }
}

void relay_set::remove(relay& r) noexcept {
    (r.prev_ != nullptr ? r.prev_->next_ : head_) = r.next_;
    if (r.next_ != nullptr) {
        r.next_->prev_ = r.prev_;
    }
    r.set_ = nullptr;
    r.prev_ = r.next_ = nullptr;
    --size_;
}

void relay_set::cancel_all() {
    for (relay* r = head_; r != nullptr; r = r->next_) {
        r->cancel(); // never removes a relay: on_done() comes later, from the queue
    }
}

void relay_set::sweeper::wake() {
    for (relay* r = owner->head_; r != nullptr; r = r->next_) {
        r->check_idle(owner->tick_);
    }
    if (owner->head_ != nullptr) {
        start(*owner->loop_, clock::now() + owner->tick_);
    }
}

} // namespace zcio
