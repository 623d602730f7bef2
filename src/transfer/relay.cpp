// relay: both directions of a connection, holding coroutine frames only while data moves.
#include <zcio/relay.hpp>

#include <coroutine>
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
// Parameters by value: the frame must not refer to anything the relay may move.
struct burst {
    static detached run(relay* r, int i) {
        stream& from = i == 0 ? r->a_ : r->b_;
        stream& to = i == 0 ? r->b_ : r->a_;
        const copy_result res = co_await copy(to, from, r->options_for(i));
        r->burst_ended(i, res); // never destroys the relay: on_done() runs from the queue
    }
};

relay::relay(stream a, stream b, const bidirectional_options& opts)
    : a_(std::move(a)), b_(std::move(b)), pools_(opts.pools), pipe_size_(opts.pipe_size),
      engine_(opts.path) {
    std::uint64_t* live[2] = {opts.a_to_b_progress, opts.b_to_a_progress};
    for (int i = 0; i < 2; ++i) {
        if (live[i] != nullptr) {
            dirs_[i].counter = live[i];
            dirs_[i].start = *live[i];
        }
        dirs_[i].waiter.owner = this;
    }
    if (opts.rate_limit != 0) {
        limiters_.reset(
            new rate_limiter[2]{rate_limiter(opts.rate_limit), rate_limiter(opts.rate_limit)});
    }
    if (opts.idle_timeout) {
        idle_timeout_ = *opts.idle_timeout;
    }
    finisher_.owner = this;
    watchdog_.owner = this;
}

relay::~relay() = default;

copy_options relay::options_for(int i) const {
    copy_options o;
    o.path = engine_ == copy_path::automatic ? dirs_[i].path : engine_;
    o.pipe_size = pipe_size_;
    o.pools = pools_;
    o.progress = dirs_[i].counter;
    o.limiter = limiters_ ? &limiters_[i] : nullptr;
    o.return_when_idle = true;
    return o;
}

std::uint64_t relay::total() const noexcept {
    return (*dirs_[0].counter - dirs_[0].start) + (*dirs_[1].counter - dirs_[1].start);
}

void relay::start() {
    if (started_) {
        return;
    }
    started_ = true;
    if (idle_timeout_.count() > 0) {
        watchdog_.last_total = total();
        watchdog_.start(a_.loop(), clock::now() + idle_timeout_ / 4);
    }
    launch(0);
    if (ending_) {
        dirs_[1].state = phase::done; // the first direction failed at once
        maybe_finish();
        return;
    }
    launch(1);
}

void relay::cancel() {
    if (started_ && !finished_) {
        fail(std::nullopt, std::make_error_code(std::errc::operation_canceled));
    }
}

void relay::launch(int i) {
    dirs_[i].state = phase::running;
    ++running_;
    burst::run(this, i);
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
    const int i = this == &owner->dirs_[0].waiter ? 0 : 1;
    io_handle& h = (i == 0 ? owner->a_ : owner->b_).handle();
    if (owner->ending_ || ec_ || h.forgotten()) {
        owner->dirs_[i].state = phase::done;
        owner->maybe_finish();
        return;
    }
    owner->launch(i);
}

void relay::fail(std::optional<direction> which, std::error_code ec) {
    if (ending_) {
        return;
    }
    ending_ = true;
    failed_ = which;
    error_ = ec;
    watchdog_.stop();
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
    finished_ = true;
    watchdog_.stop();
    a_.loop().schedule(finisher_);
}

void relay::finisher::wake() {
    traffic t;
    t.a_to_b = owner->a_to_b() - owner->dirs_[0].start;
    t.b_to_a = owner->b_to_a() - owner->dirs_[1].start;
    t.a_to_b_path = owner->dirs_[0].reported;
    t.b_to_a_path = owner->dirs_[1].reported;
    t.failed = owner->failed_;
    t.error = owner->error_;
    owner->on_done(t); // may destroy the relay, this waiter with it
}

void relay::watchdog::wake() {
    if (owner->ending_ || owner->finished_) {
        return;
    }
    // Checked four times a period, so the timeout fires between T and T + T/4 after
    // the last byte.
    const std::uint64_t now_total = owner->total();
    if (now_total != last_total) {
        last_total = now_total;
        quiet_checks = 0;
    } else if (++quiet_checks >= 4) {
        owner->fail(std::nullopt, op_error("idle timeout", ETIMEDOUT));
        return;
    }
    arm(owner->a_.loop(), clock::now() + owner->idle_timeout_ / 4);
}

} // namespace zcio
