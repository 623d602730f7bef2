// copy_bidirectional(): two copy() directions, a join, half-close and an idle watchdog.
#include <zcio/copy_bidirectional.hpp>

namespace zcio {

const char* to_string(direction d) noexcept {
    return d == direction::a_to_b ? "a→b" : "b→a";
}

namespace {

// Per-direction state lives outside the direction's coroutine frame, so its counts
// survive when the frame is destroyed to cancel it.
struct direction_state {
    enum class phase { running, shutting_down, done };
    phase state = phase::running;
    std::uint64_t own = 0;         // the counter, unless the caller gave a live one
    std::uint64_t* counter = &own; // copy() adds to it as bytes move
    std::uint64_t start = 0;       // the live counter's value when we began
    copy_path path = copy_path::automatic;

    [[nodiscard]] std::uint64_t bytes() const noexcept { return *counter - start; }
};

struct join_state;

// The parent, parked until both directions end or one of them fails.
struct join_waiter final : detail::waiter {
    join_state* st;
    explicit join_waiter(join_state* s) noexcept : st(s) {}
    bool await_ready() const noexcept;
    void await_suspend(std::coroutine_handle<> co) noexcept;
    void await_resume() noexcept;
};

// Ends the copy when no byte moved either way for a whole period. It compares totals
// instead of re-arming a timer per operation, which keeps the data path free of timer
// work.
struct idle_watchdog final : detail::timer_node {
    join_state* st = nullptr;
    clock::duration period{};
    std::uint64_t last_total = 0;
    static constexpr int checks_per_period = 4;
    int quiet_checks = 0;
    void start(event_loop& loop, join_state* s, clock::duration p);
    void stop() noexcept { disarm(); }
    void wake() override;
};

struct join_state {
    event_loop* loop;
    direction_state dir[2];
    int running = 2;
    bool ending = false;
    std::optional<direction> failed;
    std::error_code error;
    join_waiter* parent = nullptr;
    idle_watchdog watchdog;

    void wake_parent() {
        if (parent != nullptr) {
            loop->schedule(*parent);
        }
    }
    void finish(int i) {
        dir[i].state = direction_state::phase::done;
        --running;
        if (running == 0) {
            wake_parent();
        }
    }
    void fail(std::optional<direction> which, std::error_code ec) {
        if (!ending) {
            ending = true;
            failed = which;
            error = ec;
        }
        wake_parent();
    }
    [[nodiscard]] std::uint64_t total() const noexcept { return dir[0].bytes() + dir[1].bytes(); }
};

bool join_waiter::await_ready() const noexcept {
    return st->running == 0 || st->ending;
}
void join_waiter::await_suspend(std::coroutine_handle<> co) noexcept {
    co_ = co;
    st->parent = this;
}
void join_waiter::await_resume() noexcept {
    st->parent = nullptr;
}

void idle_watchdog::start(event_loop& loop, join_state* s, clock::duration p) {
    st = s;
    period = p;
    last_total = s->total();
    quiet_checks = 0;
    arm(loop, clock::now() + p / checks_per_period);
}

void idle_watchdog::wake() {
    // The timer can expire in the same loop turn in which both directions finished (a
    // quiet connection that closes just as the period ends): the copy is already over
    // and must not be reported as timed out.
    if (st->running == 0 || st->ending) {
        return;
    }
    // Checked `checks_per_period` times a period, so the timeout fires between T and
    // T + T/4 after the last byte rather than anywhere up to 2T.
    const std::uint64_t now_total = st->total();
    if (now_total != last_total) {
        last_total = now_total;
        quiet_checks = 0;
    } else if (++quiet_checks >= checks_per_period) {
        st->fail(std::nullopt, op_error("idle timeout", ETIMEDOUT));
        return;
    }
    arm(*st->loop, clock::now() + period / checks_per_period);
}

task<void> run_direction(join_state* st, int i, stream* from, stream* to, copy_options o) {
    copy_result r = co_await copy(*to, *from, o);
    st->dir[i].path = r.path;
    if (!r.ok()) {
        st->fail(i == 0 ? direction::a_to_b : direction::b_to_a, r.error);
        co_return;
    }
    if (st->ending) {
        // The other direction failed (a reset, say): after that a read may return 0
        // although the stream was cut, and a half-close passed on now would tell the
        // peer the stream ended cleanly. The parent aborts both instead.
        co_return;
    }
    // End of stream read and everything written: pass the half-close on. ENOTCONN
    // means the peer is already gone entirely, which the other direction will see.
    st->dir[i].state = direction_state::phase::shutting_down;
    if (to->kind() == sys::fd_kind::socket) {
        if (auto sh = to->shutdown_write(); !sh && errno_of(sh.error()) != ENOTCONN) {
            st->fail(i == 0 ? direction::a_to_b : direction::b_to_a, sh.error());
            co_return;
        }
    }
    st->finish(i);
}

} // namespace

task<traffic> copy_bidirectional(stream& a, stream& b, bidirectional_options opts) {
    join_state st{};
    st.loop = &a.loop();
    rate_limiter limits[2] = {rate_limiter(opts.rate_limit), rate_limiter(opts.rate_limit)};

    copy_options base;
    base.path = opts.path;
    base.pipe_size = opts.pipe_size;
    base.pools = opts.pools;
    copy_options o[2] = {base, base};
    std::uint64_t* live[2] = {opts.a_to_b_progress, opts.b_to_a_progress};
    for (int i = 0; i < 2; ++i) {
        if (live[i] != nullptr) {
            st.dir[i].counter = live[i];
            st.dir[i].start = *live[i];
        }
        o[i].progress = st.dir[i].counter;
        o[i].limiter = opts.rate_limit != 0 ? &limits[i] : nullptr;
    }

    task<void> dirs[2] = {run_direction(&st, 0, &a, &b, o[0]), run_direction(&st, 1, &b, &a, o[1])};
    if (opts.idle_timeout) {
        st.watchdog.start(*st.loop, &st, *opts.idle_timeout);
    }
    // Each direction runs until its first suspension and then returns here; from then
    // on the loop drives it. Its end wakes us through the run queue, never inline, so
    // we never destroy a frame that is still executing.
    dirs[0].handle().resume();
    dirs[1].handle().resume();
    co_await join_waiter{&st};

    // Cancel whatever still runs (only after a failure): its counts stay in `st`.
    dirs[0].reset();
    dirs[1].reset();
    st.watchdog.stop();

    traffic t;
    t.a_to_b = st.dir[0].bytes();
    t.b_to_a = st.dir[1].bytes();
    t.a_to_b_path = st.dir[0].path;
    t.b_to_a_path = st.dir[1].path;
    t.failed = st.failed;
    t.error = st.error;
    co_return t;
}

} // namespace zcio
