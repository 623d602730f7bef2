// The epoll edge-triggered implementation of poll_backend.
#include "runtime/poll_backend.hpp"

#include <zcio/sys.hpp>

#include <array>

namespace zcio::detail {
namespace {

// Registered once per fd for both directions and peer half-close; with EPOLLET the
// kernel reports each new readiness once, so the loop must cache it (io_handle does).
constexpr std::uint32_t watch_events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

bool is_readable(std::uint32_t ev) noexcept {
    return (ev & (EPOLLIN | EPOLLPRI)) != 0;
}
bool is_writable(std::uint32_t ev) noexcept {
    return (ev & EPOLLOUT) != 0;
}
bool is_read_closed(std::uint32_t ev) noexcept {
    return (ev & (EPOLLRDHUP | EPOLLHUP)) != 0;
}
bool is_error(std::uint32_t ev) noexcept {
    return (ev & (EPOLLERR | EPOLLHUP)) != 0;
}

class epoll_backend final : public poll_backend {
public:
    epoll_backend(unique_fd epfd, int wake_fd) : epfd_(std::move(epfd)), wake_fd_(wake_fd) {}

    result<bool> add(io_handle& h) override {
        auto r = sys::epoll_add(epfd_.get(), h.fd(), watch_events, &h);
        if (r) {
            return true;
        }
        if (errno_of(r.error()) == EPERM) {
            return false; // regular files and directories: always ready
        }
        return fail(name_op("epoll_ctl(ADD)", r.error()));
    }

    void remove(io_handle& h) noexcept override {
        // Can only fail if the fd was closed before being forgotten, which would be
        // a bug in the owner; nothing useful to do about it here.
        (void)sys::epoll_del(epfd_.get(), h.fd());
    }

    result<bool> poll(int timeout_ms) override {
        auto n = sys::epoll_wait(epfd_.get(), events_, timeout_ms);
        if (!n) {
            return fail(name_op("epoll_wait", n.error()));
        }
        bool woke = false;
        // Only flags are set and waiters queued here; no user code runs until every
        // event of this batch is delivered, so no handle can vanish mid-batch.
        for (int i = 0; i < *n; ++i) {
            const epoll_event& ev = events_[static_cast<std::size_t>(i)];
            if (ev.data.ptr == nullptr) {
                woke = true;
                continue;
            }
            deliver(*static_cast<io_handle*>(ev.data.ptr), is_readable(ev.events),
                    is_writable(ev.events), is_read_closed(ev.events), is_error(ev.events));
        }
        return woke;
    }

    result<void> watch_wake_fd() {
        auto r = sys::epoll_add(epfd_.get(), wake_fd_, EPOLLIN | EPOLLET, nullptr);
        if (!r) {
            return fail(name_op("epoll_ctl(ADD eventfd)", r.error()));
        }
        return {};
    }

private:
    unique_fd epfd_;
    int wake_fd_;
    std::array<epoll_event, 256> events_{};
};

} // namespace

result<std::unique_ptr<poll_backend>> make_epoll_backend(int wake_fd) {
    auto epfd = sys::epoll_create();
    if (!epfd) {
        return fail(name_op("epoll_create1", epfd.error()));
    }
    auto backend = std::make_unique<epoll_backend>(std::move(*epfd), wake_fd);
    if (auto r = backend->watch_wake_fd(); !r) {
        return fail(r.error());
    }
    return std::unique_ptr<poll_backend>(std::move(backend));
}

} // namespace zcio::detail
