// stream: adopt, connect with a timeout, shutdown and close.
#include <zcio/stream.hpp>

#include <zcio/timeout.hpp>

#include <algorithm>

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

namespace {

task<result<void>> wait_connected(io_handle* h) {
    if (auto w = co_await h->wait(io_direction::write); !w) {
        co_return w;
    }
    co_return result<void>{};
}

} // namespace

task<result<stream>> stream::connect(event_loop& loop, endpoint to, clock::duration timeout) {
    auto fd = sys::socket(to.family(), SOCK_STREAM);
    if (!fd) {
        co_return fail(name_op("socket", fd.error()));
    }
    auto s = adopt_socket(loop, std::move(*fd)); // sys::socket made it non-blocking
    if (!s) {
        co_return fail(s.error());
    }
    const auto deadline = clock::now() + timeout;
    auto r = sys::connect(s->fd(), to.data(), to.size());
    // A Unix listener with a full backlog answers EAGAIN and the connect did not
    // start: try again shortly, until the deadline.
    for (auto pause = std::chrono::milliseconds(1); !r && errno_of(r.error()) == EAGAIN;
         pause = std::min(pause * 2, std::chrono::milliseconds(100))) {
        if (clock::now() >= deadline) {
            co_return fail_op("connect", ETIMEDOUT);
        }
        co_await sleep_for(loop, pause);
        r = sys::connect(s->fd(), to.data(), to.size());
    }
    if (!r) {
        if (errno_of(r.error()) != EINPROGRESS) {
            co_return fail(name_op("connect", r.error()));
        }
        // TCP: completion (or failure) shows up as writability, then SO_ERROR.
        s->handle().clear_ready(io_direction::write);
        auto waited = co_await with_deadline(loop, wait_connected(&s->handle()), deadline);
        if (!waited) {
            co_return fail(name_op("connect", waited.error()));
        }
        auto so_error = sys::socket_error(s->fd());
        if (!so_error) {
            co_return fail(name_op("getsockopt(SO_ERROR)", so_error.error()));
        }
        if (*so_error) {
            co_return fail(name_op("connect", *so_error));
        }
    }
    if (to.is_ip()) {
        (void)s->set_nodelay(true);
    }
    co_return std::move(*s);
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
