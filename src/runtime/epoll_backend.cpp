// The epoll edge-triggered implementation of poll_backend.
#include "runtime/poll_backend.hpp"

#include <zcio/sys.hpp>

#include <array>

namespace zcio::detail {
namespace {

// Registered once per fd for both directions and peer half-close; with EPOLLET the
// kernel reports each new readiness once, so the loop must cache it (io_handle does).
constexpr std::uint32_t watch_events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

// Muting. Watching both directions all the time wakes the loop for readiness nobody
// waits for: a relay direction that waits to write is woken each time its source
// receives a segment, and one that waits for its source, each time the socket it
// writes to frees send space; each such wake-up costs two context switches and an
// epoll_wait (docs/BENCHMARKS.md: muting cut a one-stream relay's CPU per GB to
// 0.56-0.71x). So when a wait wakes the loop and no event in it woke a waiter, the
// directions those events reported are taken out of the interest set
// (EPOLL_CTL_MOD); the readiness they carried is still cached in the handle. When a
// coroutine later parks on a muted direction, arm() puts it back, and since a MOD
// re-checks readiness at once (as ADD does), readiness that came meanwhile is
// reported then: no edge is lost. Short connections pay nothing: only a wake-up that
// found nothing to do mutes.
// The muted directions live in the handle's backend bits (poll_backend::backend_bits):
// one bit each, read on every event without a lookup.
constexpr std::uint8_t muted_read_bit = 1;
constexpr std::uint8_t muted_write_bit = 2;
constexpr std::uint8_t muted_bit(io_direction d) noexcept {
    return d == io_direction::read ? muted_read_bit : muted_write_bit;
}

std::uint32_t events_for(bool muted_read, bool muted_write) noexcept {
    std::uint32_t ev = EPOLLRDHUP | EPOLLET; // a peer's close is always wanted
    if (!muted_read) {
        ev |= EPOLLIN;
    }
    if (!muted_write) {
        ev |= EPOLLOUT;
    }
    return ev;
}

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

    void arm(io_handle& h, io_direction d) noexcept override {
        if (muted(h, d)) {
            set_muted(h, d, false);
            modify(h);
        }
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
        bool useful = false;
        // Only flags are set and waiters queued here; no user code runs until every
        // event of this batch is delivered, so no handle can vanish mid-batch.
        for (int i = 0; i < *n; ++i) {
            const epoll_event& ev = events_[static_cast<std::size_t>(i)];
            if (ev.data.ptr == nullptr) {
                woke = true;
                continue;
            }
            useful |=
                deliver(*static_cast<io_handle*>(ev.data.ptr), is_readable(ev.events),
                        is_writable(ev.events), is_read_closed(ev.events), is_error(ev.events));
        }
        if (timeout_ms != 0 && *n > 0 && !woke && !useful) {
            ++idle_wakeups_;
            mute_batch(static_cast<std::size_t>(*n));
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
    static bool muted(const io_handle& h, io_direction d) noexcept {
        return (backend_bits(h) & muted_bit(d)) != 0;
    }
    static void set_muted(io_handle& h, io_direction d, bool on) noexcept {
        const std::uint8_t bits = backend_bits(h);
        set_backend_bits(
            h, static_cast<std::uint8_t>(on ? bits | muted_bit(d) : bits & ~muted_bit(d)));
    }

    // After a wake-up for nothing: stops watching the directions this batch reported
    // (none of them had a waiter, or the batch would have woken one).
    void mute_batch(std::size_t n) noexcept {
        for (std::size_t i = 0; i < n; ++i) {
            const epoll_event& ev = events_[i];
            auto* h = static_cast<io_handle*>(ev.data.ptr);
            if (h == nullptr) {
                continue;
            }
            bool changed = false;
            if (is_readable(ev.events) && !muted(*h, io_direction::read) && !has_reader(*h)) {
                set_muted(*h, io_direction::read, true);
                changed = true;
            }
            if (is_writable(ev.events) && !muted(*h, io_direction::write) && !has_writer(*h)) {
                set_muted(*h, io_direction::write, true);
                changed = true;
            }
            if (changed) {
                modify(*h);
            }
        }
    }

    void modify(io_handle& h) noexcept {
        // MOD of a registered fd fails only on a bug (EBADF, ENOENT: the fd was closed
        // before its handle was forgotten); nothing useful to do about it here.
        (void)sys::epoll_mod(
            epfd_.get(), h.fd(),
            events_for(muted(h, io_direction::read), muted(h, io_direction::write)), &h);
    }

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
