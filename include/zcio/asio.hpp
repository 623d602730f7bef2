// zcio::asio: zcio's zero-copy copy engine inside Asio programs (standalone Asio 1.22+).
//
//   co_await zcio::asio::async_copy(socket, file_descriptor, {}, asio::use_awaitable);
//   auto [ec, t] = co_await zcio::asio::async_copy_bidirectional(
//       client, upstream, asio::as_tuple(asio::use_awaitable));
//
// The ends are Asio I/O objects: ip::tcp::socket, local::stream_protocol::socket,
// posix::stream_descriptor (pipes, or regular files by fd). The same zcio::transfer
// that zcio::copy() drives moves the bytes, so the path table is the same (splice,
// sendfile, copy_file_range, buffer): the transfer makes the system calls, and where
// zcio's loop would park on a handle this adapter parks with the object's
// async_wait(wait_read / wait_write), a steady_timer for a rate limit, and post() for a
// yield. See docs/asio.md.
//
// - Every completion token (callbacks, use_awaitable, use_future, deferred, as_tuple).
// - Cancellation (the token's cancellation slot, terminal): the operation ends with
//   asio::error::operation_aborted and the counts so far, holding no pipe or buffer.
// - Steps run on the I/O objects' executor (a strand if the objects use one), or the
//   handler's associated executor; async_copy_bidirectional keeps its two directions
//   on a strand of its own, so a multi-threaded io_context is fine.
// - Leases come from copy_options::pools, by default transfer_pools::shared() (a
//   synchronized pool: a step may run on another thread than the one before). A
//   waiting direction holds no lease.
// - The objects are made non-blocking (native_non_blocking(true)); SIGPIPE is set to
//   SIG_IGN if it is at its default (splice and sendfile have no MSG_NOSIGNAL).
// - The objects must outlive the operation, and must have no other operation in
//   flight meanwhile.
#pragma once

#include <zcio/copy_bidirectional.hpp>
#include <zcio/stream_view.hpp>
#include <zcio/transfer.hpp>

#include <asio/associated_cancellation_slot.hpp>
#include <asio/associated_executor.hpp>
#include <asio/async_result.hpp>
#include <asio/bind_cancellation_slot.hpp>
#include <asio/cancellation_signal.hpp>
#include <asio/compose.hpp>
#include <asio/dispatch.hpp>
#include <asio/error.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>
#include <asio/strand.hpp>

#include <cerrno>
#include <memory>
#include <optional>
#include <system_error>
#include <utility>

namespace zcio::asio {

namespace detail {

// An Asio object the adapter can drive: an fd, an executor, and readiness waits.
template <class S>
concept waitable = requires(S& s, std::error_code& ec) {
    s.native_handle();
    s.get_executor();
    s.native_non_blocking(true, ec);
    s.async_wait(S::wait_read, [](std::error_code) {});
};

// The object's fd as a zcio stream, made non-blocking first: the transfer reads until
// EAGAIN, and Asio leaves fds blocking until its own first operation.
template <class S>
result<stream_view> view_of(S& s) {
    std::error_code ec;
    if (!s.is_open()) {
        return fail_op("zcio::asio", EBADF);
    }
    s.native_non_blocking(true, ec);
    if (ec) {
        return fail(name_op("native_non_blocking", ec));
    }
    return stream_view::of(s.native_handle());
}

inline copy_options with_pools(copy_options o) {
    if (o.pools == nullptr) {
        o.pools = &transfer_pools::shared();
    }
    return o;
}

// Parks one direction on what step() asked for; `h` is called with an error_code when
// it should step again. Regular files are always ready: a post, not an async_wait
// (Asio's reactor refuses to watch them). `timer()` gives the direction's steady_timer,
// asked for only by a wait::until (a rate limit), so that the timer may be made then.
template <class Dst, class Src, class Timer, class Executor, class H>
void park(transfer::wait w, Dst& dst, Src& src, const stream_view& dv, const stream_view& sv,
          Timer&& timer_of, const transfer& t, const Executor& ex, H&& h) {
    using wait = transfer::wait;
    if (w == wait::until) {
        ::asio::steady_timer& timer = timer_of();
        timer.expires_at(t.wake_at());
        timer.async_wait(std::forward<H>(h));
    } else if (w == wait::readable && sv.pollable()) {
        src.async_wait(Src::wait_read, std::forward<H>(h));
    } else if (w == wait::writable && dv.pollable()) {
        dst.async_wait(Dst::wait_write, std::forward<H>(h));
    } else { // yield, or a file
        ::asio::post(ex, [h = std::forward<H>(h)]() mutable { std::move(h)(std::error_code{}); });
    }
}

// After the wait for `w` ended with `ec`: the readiness it saw, or the failed wait.
inline void woke(transfer::wait w, std::error_code ec, stream_view& dv, stream_view& sv,
                 transfer& t) {
    if (w != transfer::wait::readable && w != transfer::wait::writable) {
        return; // a timer or a post: nothing to record (a cancelled one is seen by the caller)
    }
    if (ec) {
        t.wait_failed(ec);
    } else if (w == transfer::wait::readable) {
        sv.mark_ready(io_direction::read);
    } else {
        dv.mark_ready(io_direction::write);
    }
}

// One direction as an async_compose implementation. The state is on the heap: a
// transfer does not move, and the composed operation is moved from handler to handler.
template <class Dst, class Src>
class copy_op {
public:
    copy_op(Dst& dst, Src& src, const copy_options& opts)
        : dst_(&dst), src_(&src), opts_(with_pools(opts)) {}

    template <class Self>
    void operator()(Self& self, std::error_code ec = {}) {
        if (!posted_) {
            posted_ = true; // never complete inside the initiating call
            auto ex = self.get_executor();
            ::asio::post(ex, std::move(self));
            return;
        }
        if (!st_) {
            start(self);
            return;
        }
        if (self.get_cancellation_state().cancelled() != ::asio::cancellation_type::none) {
            finish(self, ::asio::error::operation_aborted);
            return;
        }
        woke(st_->w, ec, st_->dv, st_->sv, st_->t);
        run(self);
    }

private:
    struct state {
        state(stream_view d, stream_view s, const copy_options& o)
            : dv(std::move(d)), sv(std::move(s)), t(dv.get(), sv.get(), o) {}
        stream_view dv;
        stream_view sv;
        transfer t;
        std::unique_ptr<::asio::steady_timer> timer; // made by the first wait::until
        transfer::wait w = transfer::wait::yield;
    };

    template <class Self>
    void start(Self& self) {
        auto dv = view_of(*dst_);
        auto sv = dv ? view_of(*src_) : result<stream_view>(zcio::fail(dv.error()));
        if (!sv) {
            const copy_result r{0, opts_.path, sv.error()};
            self.complete(r.error, r);
            return;
        }
        st_ = std::make_unique<state>(std::move(*dv), std::move(*sv), opts_);
        run(self);
    }

    template <class Self>
    void run(Self& self) {
        state& st = *st_;
        st.w = st.t.step(st.dv.get(), st.sv.get());
        if (st.w == transfer::wait::done || st.w == transfer::wait::failed) {
            finish(self, {});
            return;
        }
        auto ex = self.get_executor();
        auto timer = [&st, src = src_]() -> ::asio::steady_timer& { // rate limits only
            if (!st.timer) {
                st.timer = std::make_unique<::asio::steady_timer>(src->get_executor());
            }
            return *st.timer;
        };
        park(st.w, *dst_, *src_, st.dv, st.sv, timer, st.t, ex, std::move(self));
    }

    // Leases go back (stop, then the state's end) before the handler runs.
    template <class Self>
    void finish(Self& self, std::error_code stop) {
        if (stop) {
            st_->t.stop(stop);
        }
        const copy_result r = st_->t.result();
        st_.reset();
        self.complete(r.error, r);
    }

    Dst* dst_;
    Src* src_;
    copy_options opts_;
    std::unique_ptr<state> st_;
    bool posted_ = false;
};

// Both directions, shared by the waits of both and kept on one strand. Direction 0 is
// a→b (reads a, writes b), direction 1 is b→a, as in zcio::relay.
template <class A, class B, class Handler>
class bidi_op : public std::enable_shared_from_this<bidi_op<A, B, Handler>> {
public:
    using executor_type = typename A::executor_type;

    bidi_op(A& a, B& b, Handler h)
        : a_(a), b_(b), strand_(::asio::make_strand(a.get_executor())), handler_(std::move(h)),
          work_(::asio::get_associated_executor(handler_, a.get_executor())) {}

    // The options go with the first step only: begin() is all that reads them, and the
    // operation does not keep their 64 bytes for the connection's life.
    void start(const bidirectional_options& o) {
        auto slot = ::asio::get_associated_cancellation_slot(handler_);
        if (slot.is_connected()) {
            slot.template emplace<canceller>(this->weak_from_this());
        }
        ::asio::post(strand_, [self = this->shared_from_this(), o] { self->begin(o); });
    }

private:
    // The handler's cancellation slot: a cancel of any type ends both directions.
    struct canceller {
        std::weak_ptr<bidi_op> op;
        void operator()(::asio::cancellation_type type) const {
            auto self = op.lock();
            if (self && type != ::asio::cancellation_type::none) {
                ::asio::post(self->strand_, [self] { self->cancel(); });
            }
        }
    };

    void begin(const bidirectional_options& opts) {
        auto va = view_of(a_);
        auto vb = va ? view_of(b_) : result<stream_view>(zcio::fail(va.error()));
        if (!vb) {
            error_ = vb.error();
            done_[0] = done_[1] = true;
            finish();
            return;
        }
        if (opts.idle_timeout) {
            error_ = std::make_error_code(std::errc::invalid_argument);
            done_[0] = done_[1] = true;
            finish();
            return;
        }
        va_.emplace(std::move(*va));
        vb_.emplace(std::move(*vb));
        if (opts.rate_limit != 0) {
            limits_ = std::make_unique<rate_limiter[]>(2);
            limits_[0] = limits_[1] = rate_limiter(opts.rate_limit);
        }
        t_[0].emplace(vb_->get(), va_->get(), options_for(opts, 0));
        t_[1].emplace(va_->get(), vb_->get(), options_for(opts, 1));
        run(0);
        run(1);
    }

    copy_options options_for(const bidirectional_options& opts, int i) {
        copy_options c;
        c.path = opts.path;
        c.pipe_size = opts.pipe_size;
        c.pools = opts.pools != nullptr ? opts.pools : &transfer_pools::shared();
        c.progress = i == 0 ? opts.a_to_b_progress : opts.b_to_a_progress;
        c.limiter = limits_ ? &limits_[i] : nullptr;
        return c;
    }

    stream_view& dst_view(int i) { return i == 0 ? *vb_ : *va_; }
    stream_view& src_view(int i) { return i == 0 ? *va_ : *vb_; }

    void run(int i) {
        if (ending_) {
            done_[i] = true;
            maybe_finish();
            return;
        }
        transfer& t = *t_[i];
        const transfer::wait w = t.step(dst_view(i).get(), src_view(i).get());
        waits_[i] = w;
        if (w == transfer::wait::done) {
            end_of_stream(i);
        } else if (w == transfer::wait::failed) {
            done_[i] = true;
            fail(i == 0 ? direction::a_to_b : direction::b_to_a, t.result().error);
        } else {
            park(i, w);
        }
    }

    // The wait's handler is not bound to the strand: it dispatches to it when the wait
    // ends. Bound, every pending wait held two copies of the strand executor (one in
    // the handler, one type-erased on the heap for its work), about 250 bytes per idle
    // direction; the cancellation slot is only used from the strand either way.
    void park(int i, transfer::wait w) {
        pending_[i] = true;
        auto h = ::asio::bind_cancellation_slot(
            signals_[i].slot(), [self = this->shared_from_this(), i](std::error_code ec) mutable {
                auto& strand = self->strand_;
                ::asio::dispatch(strand, [self = std::move(self), i, ec] { self->wake(i, ec); });
            });
        auto timer = [this, i]() -> ::asio::steady_timer& { // rate limits only
            if (!timers_[i]) {
                timers_[i] = std::make_unique<::asio::steady_timer>(strand_);
            }
            return *timers_[i];
        };
        if (i == 0) {
            detail::park(w, b_, a_, *vb_, *va_, timer, *t_[i], strand_, std::move(h));
        } else {
            detail::park(w, a_, b_, *va_, *vb_, timer, *t_[i], strand_, std::move(h));
        }
    }

    void wake(int i, std::error_code ec) {
        pending_[i] = false;
        if (!ending_) {
            woke(waits_[i], ec, dst_view(i), src_view(i), *t_[i]);
        }
        run(i);
    }

    // End of stream read and everything written: pass the half-close on (sockets only,
    // as the relay does; ENOTCONN means the peer is gone, which the other side sees).
    void end_of_stream(int i) {
        done_[i] = true;
        stream& to = dst_view(i).get();
        if (to.kind() == sys::fd_kind::socket) {
            if (auto sh = to.shutdown_write(); !sh && errno_of(sh.error()) != ENOTCONN) {
                fail(i == 0 ? direction::a_to_b : direction::b_to_a, sh.error());
                return;
            }
        }
        maybe_finish();
    }

    void cancel() {
        if (t_[0] && !ending_) {
            fail(std::nullopt, ::asio::error::operation_aborted);
        }
    }

    // Ends both directions: the waiting ones are cancelled and finish when they wake.
    void fail(std::optional<direction> which, std::error_code ec) {
        if (ending_) {
            return;
        }
        ending_ = true;
        failed_ = which;
        error_ = ec;
        for (int i = 0; i < 2; ++i) {
            if (pending_[i]) {
                signals_[i].emit(::asio::cancellation_type::terminal);
            } else {
                done_[i] = true;
            }
        }
        maybe_finish();
    }

    void maybe_finish() {
        if (done_[0] && done_[1] && !pending_[0] && !pending_[1]) {
            finish();
        }
    }

    // Leases go back before the handler runs, on the handler's executor.
    void finish() {
        if (finished_) {
            return;
        }
        finished_ = true;
        traffic r;
        for (int i = 0; i < 2; ++i) {
            if (t_[i]) {
                if (waits_[i] != transfer::wait::done && waits_[i] != transfer::wait::failed) {
                    t_[i]->stop(::asio::error::operation_aborted); // its leases go back
                }
                (i == 0 ? r.a_to_b : r.b_to_a) = t_[i]->bytes();
                (i == 0 ? r.a_to_b_path : r.b_to_a_path) = t_[i]->result().path;
            }
        }
        r.failed = failed_;
        r.error = error_;
        ::asio::get_associated_cancellation_slot(handler_).clear();
        auto ex = ::asio::get_associated_executor(handler_, a_.get_executor());
        ::asio::dispatch(ex,
                         [h = std::move(handler_), r, self = this->shared_from_this()]() mutable {
                             self->work_.reset();
                             std::move(h)(r.error, r);
                         });
    }

    A& a_;
    B& b_;
    ::asio::strand<executor_type> strand_;
    Handler handler_;
    ::asio::executor_work_guard<::asio::associated_executor_t<Handler, executor_type>> work_;
    std::optional<stream_view> va_;
    std::optional<stream_view> vb_;
    std::unique_ptr<rate_limiter[]> limits_; // both directions', with a rate limit only
    std::optional<transfer> t_[2];
    std::unique_ptr<::asio::steady_timer> timers_[2]; // made by the first wait::until
    ::asio::cancellation_signal signals_[2];
    transfer::wait waits_[2] = {transfer::wait::yield, transfer::wait::yield};
    bool pending_[2] = {false, false};
    bool done_[2] = {false, false};
    bool ending_ = false;
    bool finished_ = false;
    std::optional<direction> failed_;
    std::error_code error_;
};

struct initiate_bidi {
    template <class Handler, class A, class B>
    void operator()(Handler&& h, A* a, B* b, const bidirectional_options& o) const {
        using op = bidi_op<A, B, std::decay_t<Handler>>;
        std::make_shared<op>(*a, *b, std::forward<Handler>(h))->start(o);
    }
};

} // namespace detail

// Copies `src` to `dst` by zcio::copy()'s rules (see zcio/copy.hpp: limit, path, file
// offsets, rate limit, progress) until end of stream or the limit. Completes with
// void(std::error_code, zcio::copy_result): the error is also in the result, whose
// bytes count what was written, also on error or cancellation. `dst` is not shut down.
template <detail::waitable Dst, detail::waitable Src, class Token>
auto async_copy(Dst& dst, Src& src, const copy_options& opts, Token&& token) {
    return ::asio::async_compose<Token, void(std::error_code, copy_result)>(
        detail::copy_op<Dst, Src>(dst, src, opts), token, dst, src);
}

// Both directions of a proxied connection at once, as zcio::copy_bidirectional: when
// a direction reads end of stream and has written everything, it shuts down sending
// on its destination (a socket); an error in either direction, or a cancel
// (operation_aborted), ends both. Completes with void(std::error_code, zcio::traffic);
// the counts say what moved either way. bidirectional_options::idle_timeout is not
// supported here (use a timer and the cancellation slot): it must be unset, else
// invalid_argument.
template <detail::waitable A, detail::waitable B, class Token>
auto async_copy_bidirectional(A& a, B& b, const bidirectional_options& opts, Token&& token) {
    return ::asio::async_initiate<Token, void(std::error_code, traffic)>(detail::initiate_bidi{},
                                                                         token, &a, &b, opts);
}

template <detail::waitable A, detail::waitable B, class Token>
auto async_copy_bidirectional(A& a, B& b, Token&& token) {
    return async_copy_bidirectional(a, b, bidirectional_options{}, std::forward<Token>(token));
}

} // namespace zcio::asio
