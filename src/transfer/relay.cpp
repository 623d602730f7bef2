// relay: two transfers, each parked on whatever its step() asked for.
#include <zcio/relay.hpp>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <utility>

namespace zcio {

namespace {
direction direction_of(int i) noexcept {
    return i == 0 ? direction::a_to_b : direction::b_to_a;
}
} // namespace

copy_options relay::options_for(const bidirectional_options& o, int i, pacing* p) {
    copy_options c;
    c.path = o.path;
    c.pipe_size = o.pipe_size;
    c.pools = o.pools;
    c.progress = i == 0 ? o.a_to_b_progress : o.b_to_a_progress;
    c.limiter = p != nullptr ? &p->limits[i] : nullptr;
    return c;
}

relay::relay(stream a, stream b, const bidirectional_options& opts)
    : a_(std::move(a)), b_(std::move(b)),
      pacing_(opts.rate_limit == 0
                  ? nullptr
                  : new pacing{{rate_limiter(opts.rate_limit), rate_limiter(opts.rate_limit)}, {}}),
      dirs_{{b_, a_, options_for(opts, 0, pacing_.get())},
            {a_, b_, options_for(opts, 1, pacing_.get())}} {
    if (opts.idle_timeout) {
        // In milliseconds, at least 1 and at most 49 days (32 bits).
        const auto ms = std::chrono::ceil<std::chrono::milliseconds>(*opts.idle_timeout).count();
        idle_timeout_ms_ =
            ms <= 0 ? 0 : static_cast<std::uint32_t>(std::min<std::int64_t>(ms, UINT32_MAX));
    }
}

relay::~relay() {
    if (set_ != nullptr) {
        set_->remove(*this);
    }
}

void relay::start() {
    if (started_) {
        return;
    }
    started_ = true;
    run(0);
    if (!ending_) {
        run(1); // else fail() has queued its waiter, which ends it
    }
}

void relay::cancel() {
    if (started_ && !finished_) {
        fail(std::nullopt, std::make_error_code(std::errc::operation_canceled));
    }
}

void relay::check_idle(clock::duration tick) {
    if (!started_ || ending_ || finished_ || idle_timeout_ms_ == 0) {
        return;
    }
    // The low 32 bits tell a quiet tick from a busy one (exactly 4 GiB in one tick
    // would look quiet once; the next tick sees it).
    const auto total = static_cast<std::uint32_t>(a_to_b() + b_to_a());
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
    if (tick * quiet_ticks_ >= std::chrono::milliseconds(idle_timeout_ms_)) {
        fail(std::nullopt, op_error("idle timeout", ETIMEDOUT));
        return;
    }
    check_stuck();
}

void relay::check_stuck() {
    // A direction that moved nothing for a whole tick while busy waits to write.
    // Nothing may wait on its source then (the other direction can be parked on its
    // own source), so a reset there (the client gone while the upstream neither reads
    // nor writes) would only end the relay at the idle timeout: the io_handle wakes
    // only the waiters it has. One poll(2) of both sockets finds such a pending error.
    if (running() == 0) {
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
    fail(direction_of(side), name_op("recv", ec));
}

// Steps direction `i` and parks it on what it waits for. Never destroys the relay:
// on_done() runs from the queue.
void relay::run(int i) {
    transfer& t = dirs_[i];
    switch (const transfer::wait w = t.step(dst_of(i), src_of(i))) {
    case transfer::wait::readable:
    case transfer::wait::writable:
        park(i, w);
        return;
    case transfer::wait::until:
        pause(i);
        return;
    case transfer::wait::yield:
        state_[i] = phase::running;
        a_.loop().schedule(waiter(i)); // behind everything else that is ready
        return;
    case transfer::wait::done:
        end_of_stream(i);
        return;
    case transfer::wait::failed:
        state_[i] = phase::done;
        fail(direction_of(i), t.result().error);
        return;
    }
}

// Direction `i` woke (readiness, time, or a cancelled wait): step it again, unless the
// relay is ending or a registration is gone.
void relay::resume(int i, std::error_code ec) {
    if (ending_ || ec || a_.handle().forgotten() || b_.handle().forgotten()) {
        state_[i] = phase::done;
        maybe_finish();
        return;
    }
    run(i);
}

void relay::park(int i, transfer::wait w) {
    transfer& t = dirs_[i];
    const bool reading = w == transfer::wait::readable;
    const io_direction dir = reading ? io_direction::read : io_direction::write;
    io_handle& h = (reading ? src_of(i) : dst_of(i)).handle();
    state_[i] = reading && !t.holds_lease() ? phase::parked : phase::running;
    waiter(i).clear_error();
    if (h.ready(dir) || h.forgotten()) {
        a_.loop().schedule(waiter(i)); // never step again from inside a step
        return;
    }
    h.park(dir, &waiter(i));
}

void relay::pause(int i) {
    if (!pacing_) {
        pacing_.reset(new pacing{}); // a direct splice's pause, without a rate limit
    }
    pace_timer& t = pacing_->timers[i];
    t.owner = this;
    t.i = i;
    state_[i] = phase::running;
    t.start(a_.loop(), dirs_[i].wake_at());
}

relay& detail::relay_park::owner() noexcept {
    return index_ == 0 ? static_cast<relay&>(static_cast<relay_park_at<0>&>(*this))
                       : static_cast<relay&>(static_cast<relay_park_at<1>&>(*this));
}

void detail::relay_park::wake() {
    relay& r = owner();
    if (r.finished_) {
        r.deliver(); // both directions are done: this waiter carries on_done()
        return;
    }
    r.resume(index_, error());
}

// End of stream read and everything written: pass the half-close on, here and only
// here. ENOTCONN means the peer is already gone entirely, which the other direction
// will see.
void relay::end_of_stream(int i) {
    state_[i] = phase::done;
    stream& to = dst_of(i);
    if (to.kind() == sys::fd_kind::socket) {
        if (auto sh = to.shutdown_write(); !sh && errno_of(sh.error()) != ENOTCONN) {
            fail(direction_of(i), sh.error());
            return;
        }
    }
    maybe_finish();
}

void relay::fail(std::optional<direction> which, std::error_code ec) {
    if (ending_) {
        return;
    }
    ending_ = true;
    failed_ = which;
    // The error is kept by the failed direction's transfer (a→b's for a cancel or a
    // timeout), not in a 16-byte field of its own; one that failed keeps its own.
    error_in_ = which == direction::b_to_a ? 1 : 0;
    dirs_[error_in_].stop(ec);
    // Every direction still waiting is taken off what it waits on and woken: it sees
    // ending_ and stops. Streams and registrations stay for the owner (and the caller
    // of copy_bidirectional()) to use or close.
    for (int i = 0; i < 2; ++i) {
        waiter(i).unpark();
        if (pacing_) {
            pacing_->timers[i].stop();
        }
        if (state_[i] != phase::done && !waiter(i).queued()) {
            a_.loop().schedule(waiter(i));
        }
    }
    maybe_finish();
}

void relay::maybe_finish() {
    if (finished_ || state_[0] != phase::done || state_[1] != phase::done) {
        return;
    }
    // Neither waiter is parked or queued now (a done direction's waiter has run), so
    // the first one is free to carry on_done() through the run queue.
    finished_ = true;
    a_.loop().schedule(waiter(0));
}

void relay::deliver() {
    traffic t;
    t.a_to_b = a_to_b();
    t.b_to_a = b_to_a();
    t.a_to_b_path = dirs_[0].result().path;
    t.b_to_a_path = dirs_[1].result().path;
    t.failed = failed_;
    t.error = ending_ ? dirs_[error_in_].result().error : std::error_code{};
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

void relay_set::report_all() noexcept {
    for (relay* r = head_; r != nullptr; r = r->next_) {
        r->report();
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
