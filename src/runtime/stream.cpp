// stream: adopt, connect with a timeout, shutdown and close.
#include <zcio/stream.hpp>

#include <zcio/timeout.hpp>

#include <algorithm>
#include <coroutine>
#include <memory>
#include <string>
#include <utility>

#include <netinet/in.h>
#include <netinet/tcp.h>

namespace zcio {

result<stream> stream::adopt(event_loop& loop, unique_fd fd) {
    auto kind = sys::kind_of(fd.get());
    if (!kind) {
        return fail(name_op("fstat", kind.error()));
    }
    if (*kind == sys::fd_kind::socket || *kind == sys::fd_kind::pipe ||
        *kind == sys::fd_kind::other) {
        // Edge-triggered readiness needs non-blocking fds, or a read blocks the loop.
        if (auto r = sys::set_nonblocking(fd.get(), true); !r) {
            return fail(name_op("fcntl(O_NONBLOCK)", r.error()));
        }
    }
    auto h = loop.watch(fd.get());
    if (!h) {
        return fail(h.error());
    }
    return stream(std::move(fd), std::move(*h), *kind);
}

result<stream> stream::adopt_socket(event_loop& loop, unique_fd fd) {
    auto h = loop.watch(fd.get());
    if (!h) {
        return fail(h.error());
    }
    return stream(std::move(fd), std::move(*h), sys::fd_kind::socket);
}

std::string to_string(std::span<const connect_failure> failures) {
    std::string out;
    for (const connect_failure& f : failures) {
        if (!out.empty()) {
            out += "; ";
        }
        out += f.to.to_string() + ": " + f.error.message();
    }
    return out;
}

namespace {

task<result<void>> wait_connected(io_handle* h) {
    if (auto w = co_await h->wait(io_direction::write); !w) {
        co_return w;
    }
    co_return result<void>{};
}

void note_failure(std::vector<connect_failure>* failed, const endpoint& to, std::error_code ec) {
    if (failed != nullptr) {
        failed->push_back({to, ec});
    }
}

// A socket whose connect() has been started: done (a Unix socket connects at once),
// in progress (TCP: completion shows up as writability, then SO_ERROR), or refused
// with EAGAIN (a Unix listener with a full backlog: the connect did not start).
enum class started { done, in_progress, again };

struct begun {
    stream s;
    started state = started::done;
};

result<stream> open_socket(event_loop& loop, const endpoint& to) {
    auto fd = sys::socket(to.family(), SOCK_STREAM);
    if (!fd) {
        return fail(name_op("socket", fd.error()));
    }
    return stream::adopt_socket(loop, std::move(*fd)); // sys::socket made it non-blocking
}

// connect() on `s` without waiting.
result<started> start_connect(stream& s, const endpoint& to) {
    auto r = sys::connect(s.fd(), to.data(), to.size());
    if (r) {
        return started::done;
    }
    const int e = errno_of(r.error());
    if (e == EAGAIN) {
        return started::again;
    }
    if (e != EINPROGRESS) {
        return fail(name_op("connect", r.error()));
    }
    // The cached readiness says "writable" until told otherwise; from now on only the
    // edge that ends the handshake may say so.
    s.handle().clear_ready(io_direction::write);
    return started::in_progress;
}

// socket() + connect() without waiting.
result<begun> begin_connect(event_loop& loop, const endpoint& to) {
    auto s = open_socket(loop, to);
    if (!s) {
        return fail(s.error());
    }
    auto st = start_connect(*s, to);
    if (!st) {
        return fail(st.error());
    }
    return begun{std::move(*s), *st};
}

// After the socket of an in-progress connect turned writable: whether it connected.
result<void> connect_outcome(const stream& s) {
    auto so_error = sys::socket_error(s.fd());
    if (!so_error) {
        return fail(name_op("getsockopt(SO_ERROR)", so_error.error()));
    }
    if (*so_error) {
        return fail(name_op("connect", *so_error));
    }
    return {};
}

task<result<stream>> connect_one(event_loop& loop, endpoint to, clock::duration timeout,
                                 std::vector<connect_failure>* failed) {
    const auto deadline = clock::now() + timeout;
    auto s = open_socket(loop, to);
    if (!s) {
        note_failure(failed, to, s.error());
        co_return fail(s.error());
    }
    auto st = start_connect(*s, to);
    // A Unix listener with a full backlog answers EAGAIN and the connect did not
    // start: try again shortly, until the deadline.
    for (auto pause = std::chrono::milliseconds(1); st && *st == started::again;
         pause = std::min(pause * 2, std::chrono::milliseconds(100))) {
        if (clock::now() >= deadline) {
            note_failure(failed, to, op_error("connect", ETIMEDOUT));
            co_return fail_op("connect", ETIMEDOUT);
        }
        co_await sleep_for(loop, pause);
        st = start_connect(*s, to);
    }
    if (st && *st == started::in_progress) {
        auto waited = co_await with_deadline(loop, wait_connected(&s->handle()), deadline);
        auto outcome = waited ? connect_outcome(*s) : fail(name_op("connect", waited.error()));
        if (!outcome) {
            st = fail(outcome.error());
        }
    }
    if (!st) {
        note_failure(failed, to, st.error());
        co_return fail(st.error());
    }
    if (to.is_ip()) {
        (void)s->set_nodelay(true);
    }
    co_return std::move(*s);
}

task<result<stream>> connect_none() {
    co_return fail_op("connect", EDESTADDRREQ);
}

// ---- Happy Eyeballs ----

// One address of the list and the socket trying it.
struct attempt {
    stream s;
    bool in_flight = false;
};

// Suspends until the socket of an in-flight attempt turns writable (its connect ended,
// either way) or `until` passes. It parks a waiter on every such socket and arms a
// timer; the first to fire resumes the coroutine, and the destructor (run at the end
// of the co_await, or when the suspended frame is destroyed) unhooks all of them, so
// no later event can resume a coroutine that has moved on.
class first_writable final : public detail::coroutine_waiter<detail::timer_node> {
public:
    first_writable(event_loop& loop, std::span<attempt> attempts, clock::time_point until)
        : loop_(&loop), attempts_(attempts), until_(until) {}
    first_writable(const first_writable&) = delete;
    first_writable& operator=(const first_writable&) = delete;
    ~first_writable() override = default; // slots_ unpark first, then the timer disarms

    bool await_ready() const noexcept {
        if (clock::now() >= until_) {
            return true;
        }
        for (const attempt& a : attempts_) {
            if (a.in_flight && a.s.handle().ready(io_direction::write)) {
                return true;
            }
        }
        return false;
    }

    void await_suspend(std::coroutine_handle<> co) {
        co_ = co;
        slots_ = std::make_unique<slot[]>(attempts_.size());
        for (std::size_t i = 0; i < attempts_.size(); ++i) {
            if (attempts_[i].in_flight) {
                slots_[i].owner = this;
                attempts_[i].s.handle().park(io_direction::write, &slots_[i]);
            }
        }
        arm(*loop_, until_);
    }

    void await_resume() const noexcept {}

private:
    // A waiter on one socket that resumes the coroutine waiting in `owner`.
    struct slot final : detail::io_waiter {
        first_writable* owner = nullptr;
        // Resuming may destroy the awaitable, this slot with it: touch nothing after.
        void wake() override { owner->co_.resume(); }
    };

    event_loop* loop_;
    std::span<attempt> attempts_;
    clock::time_point until_;
    std::unique_ptr<slot[]> slots_;
};

// Ends every attempt still in flight at the deadline.
void time_out_attempts(std::span<const endpoint> to, std::span<attempt> attempts,
                       std::vector<connect_failure>* failed) {
    for (std::size_t i = 0; i < attempts.size(); ++i) {
        if (attempts[i].in_flight) {
            note_failure(failed, to[i], op_error("connect", ETIMEDOUT));
            attempts[i].s.close();
            attempts[i].in_flight = false;
        }
    }
}

task<result<stream>> connect_racing(event_loop& loop, std::span<const endpoint> to,
                                    clock::duration timeout, std::vector<connect_failure>* failed) {
    const auto deadline = clock::now() + timeout;
    // One slot per address: an attempt never moves, so a parked waiter's socket stays put.
    auto attempts = std::make_unique<attempt[]>(to.size());
    const std::span<attempt> all(attempts.get(), to.size());
    std::size_t next = 0;      // the next address to try
    std::size_t in_flight = 0; // attempts started and not yet ended
    auto next_start = clock::now();
    std::error_code last_error = op_error("connect", ECONNREFUSED);
    while (true) {
        // Start the next attempt when its delay has passed, or at once when nothing
        // is in flight (the previous one failed, or this is the first).
        while (next < to.size() && clock::now() < deadline &&
               (in_flight == 0 || clock::now() >= next_start)) {
            const std::size_t i = next++;
            auto b = begin_connect(loop, to[i]);
            if (b && b->state == started::again) {
                b = fail_op("connect", EAGAIN); // tried once in a list: see stream.hpp
            }
            if (!b) {
                last_error = b.error();
                note_failure(failed, to[i], b.error());
                continue;
            }
            if (b->state == started::done) {
                co_return std::move(b->s); // the other sockets close with `attempts`
            }
            all[i].s = std::move(b->s);
            all[i].in_flight = true;
            ++in_flight;
            next_start = clock::now() + stream::connect_attempt_delay;
        }
        if (in_flight == 0 && next == to.size()) {
            co_return fail(last_error); // every address failed
        }
        if (clock::now() >= deadline) {
            time_out_attempts(to, all, failed);
            co_return fail_op("connect", ETIMEDOUT);
        }
        co_await first_writable(loop, all,
                                next < to.size() ? std::min(next_start, deadline) : deadline);
        for (std::size_t i = 0; i < to.size(); ++i) {
            attempt& a = all[i];
            if (!a.in_flight || !a.s.handle().ready(io_direction::write)) {
                continue;
            }
            auto outcome = connect_outcome(a.s);
            if (outcome) {
                if (to[i].is_ip()) {
                    (void)a.s.set_nodelay(true);
                }
                co_return std::move(a.s);
            }
            last_error = outcome.error();
            note_failure(failed, to[i], outcome.error());
            a.s.close();
            a.in_flight = false;
            --in_flight;
            next_start = clock::now(); // a failure starts the next attempt at once
        }
    }
}

} // namespace

task<result<stream>> stream::connect(event_loop& loop, endpoint to, clock::duration timeout) {
    return connect_one(loop, to, timeout, nullptr);
}

// Not a coroutine: a list of one gets connect_one's frame and nothing more, which is
// what a proxy with one upstream address pays per client.
task<result<stream>> stream::connect(event_loop& loop, std::span<const endpoint> to,
                                     clock::duration timeout,
                                     std::vector<connect_failure>* failed) {
    if (to.size() == 1) {
        return connect_one(loop, to.front(), timeout, failed);
    }
    if (to.empty()) {
        return connect_none();
    }
    return connect_racing(loop, to, timeout, failed);
}

result<void> stream::shutdown_write() {
    if (auto r = sys::shutdown(fd(), SHUT_WR); !r) {
        return fail(name_op("shutdown(SHUT_WR)", r.error()));
    }
    return {};
}

result<void> stream::set_nodelay(bool on) {
    if (auto r = sys::set_int_option(fd(), IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0); !r) {
        return fail(name_op("setsockopt(TCP_NODELAY)", r.error()));
    }
    return {};
}

void stream::close() noexcept {
    // Unregister and cancel waiters before the fd number is freed. The handle object
    // stays (forgotten) so a later operation reports operation_canceled, not a crash.
    if (handle_) {
        handle_->forget();
    }
    fd_.reset();
}

} // namespace zcio
