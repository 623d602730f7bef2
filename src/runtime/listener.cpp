// listener: bind, listen and accept with back-off when descriptors run out.
#include <zcio/listener.hpp>

#include <algorithm>
#include <string>

#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace zcio {

namespace {

std::string unix_path_of(const endpoint& ep) {
    const auto* un = reinterpret_cast<const sockaddr_un*>(ep.data());
    return un->sun_path; // only called for path (non-abstract) endpoints
}

// Whether a connect to the Unix socket at `ep` is refused, which means nobody listens
// there (unix(7): ECONNREFUSED). Accepted, a full backlog (EAGAIN), or any other answer
// (EACCES, EPROTOTYPE for a socket of another type): somebody may, so it is not stale.
bool connect_refused(const endpoint& ep) {
    auto probe = sys::socket(AF_UNIX, SOCK_STREAM);
    if (!probe) {
        return false;
    }
    auto r = sys::connect(probe->get(), ep.data(), ep.size());
    return !r && errno_of(r.error()) == ECONNREFUSED;
}

bool same_file(const struct stat& a, const struct stat& b) noexcept {
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// Removes the socket file at `ep` if it is stale (see listen_options). Anything else
// at the path stays, and the bind that follows fails with EADDRINUSE.
void remove_stale_socket(const endpoint& ep) {
    const std::string path = unix_path_of(ep);
    struct stat before {};
    if (::lstat(path.c_str(), &before) != 0 || !S_ISSOCK(before.st_mode) || !connect_refused(ep)) {
        return;
    }
    // The same file as the one probed: not one a server that started meanwhile made.
    struct stat now {};
    if (::lstat(path.c_str(), &now) == 0 && S_ISSOCK(now.st_mode) && same_file(before, now)) {
        ::unlink(path.c_str());
    }
}

} // namespace

listener& listener::operator=(listener&& other) noexcept {
    if (this != &other) {
        close();
        loop_ = other.loop_;
        fd_ = std::move(other.fd_);
        handle_ = std::move(other.handle_);
        local_ = other.local_;
        owns_unix_path_ = std::exchange(other.owns_unix_path_, false);
        unix_dev_ = other.unix_dev_;
        unix_ino_ = other.unix_ino_;
        fd_exhausted_ = other.fd_exhausted_;
    }
    return *this;
}

listener::~listener() {
    close();
}

result<listener> listener::bind(event_loop& loop, const endpoint& at, listen_options opts) {
    auto fd = sys::socket(at.family(), SOCK_STREAM);
    if (!fd) {
        return fail(name_op("socket", fd.error()));
    }
    const bool unix_path = at.is_unix() && !at.is_abstract();
    if (at.is_ip()) {
        if (auto r = sys::set_int_option(fd->get(), SOL_SOCKET, SO_REUSEADDR, 1); !r) {
            return fail(name_op("setsockopt(SO_REUSEADDR)", r.error()));
        }
        if (opts.reuse_port) {
            if (auto r = sys::set_int_option(fd->get(), SOL_SOCKET, SO_REUSEPORT, 1); !r) {
                return fail(name_op("setsockopt(SO_REUSEPORT)", r.error()));
            }
        }
    }
    if (unix_path && opts.unlink_unix_path) {
        remove_stale_socket(at);
    }
    if (auto r = sys::bind(fd->get(), at.data(), at.size()); !r) {
        return fail(name_op("bind", r.error()));
    }
    listener l;
    if (unix_path && opts.unlink_unix_path) {
        struct stat st {};
        std::string path = unix_path_of(at);
        l.owns_unix_path_ = ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
        l.unix_dev_ = static_cast<std::uint64_t>(st.st_dev);
        l.unix_ino_ = static_cast<std::uint64_t>(st.st_ino);
    }
    l.local_ = at;
    l.fd_ = std::move(*fd);
    if (auto r = sys::listen(l.fd_.get(), opts.backlog); !r) {
        return fail(name_op("listen", r.error()));
    }
    if (auto local = local_endpoint_of(l.fd_.get())) {
        l.local_ = *local;
    }
    if (auto r = l.watch_on(loop); !r) {
        return fail(r.error());
    }
    return l;
}

// Registers the listening fd with `loop` (the last step of bind and adopt).
result<void> listener::watch_on(event_loop& loop) {
    auto h = loop.watch(fd_.get());
    if (!h) {
        return fail(h.error());
    }
    loop_ = &loop;
    handle_ = std::move(*h);
    return {};
}

result<listener> listener::adopt(event_loop& loop, unique_fd fd, bool own_unix_path) {
    if (auto r = sys::set_nonblocking(fd.get(), true); !r) {
        return fail(name_op("fcntl(O_NONBLOCK)", r.error()));
    }
    auto local = local_endpoint_of(fd.get());
    if (!local) {
        return fail(local.error());
    }
    listener l;
    l.local_ = *local;
    if (local->is_unix() && !local->is_abstract() && own_unix_path) {
        struct stat st {};
        l.owns_unix_path_ = ::lstat(unix_path_of(*local).c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
        l.unix_dev_ = static_cast<std::uint64_t>(st.st_dev);
        l.unix_ino_ = static_cast<std::uint64_t>(st.st_ino);
    }
    l.fd_ = std::move(fd);
    if (auto r = l.watch_on(loop); !r) {
        return fail(r.error());
    }
    return l;
}

task<result<accepted>> listener::accept() {
    auto pause = std::chrono::milliseconds(1);
    while (true) {
        if (!handle_ || handle_->forgotten()) {
            co_return fail_op("accept4", ECANCELED); // closed, possibly during a back-off
        }
        endpoint peer;
        int lfd = fd_.get();
        auto fd = co_await io_op<unique_fd>(*handle_, io_direction::read, [lfd, &peer] {
            socklen_t len = endpoint::capacity();
            auto r = sys::accept(lfd, peer.data(), &len);
            peer.set_size(len);
            return r;
        });
        if (fd) {
            auto s = stream::adopt_socket(*loop_, std::move(*fd)); // accept4 made it non-blocking
            if (!s) {
                co_return fail(s.error());
            }
            co_return accepted{std::move(*s), peer};
        }
        const int e = errno_of(fd.error());
        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
            // The client stays queued and no new edge will come for it: poll again
            // after a pause, growing it so a process stuck at its limit stays idle.
            ++fd_exhausted_;
            co_await sleep_for(*loop_, pause);
            pause = std::min(pause * 2, std::chrono::milliseconds(1000));
            continue;
        }
        if (e == ECONNABORTED || e == EPROTO || e == EPERM) {
            continue; // the client gave up (or a firewall refused it) before we took it
        }
        co_return fail(name_op("accept4", fd.error()));
    }
}

void listener::close() noexcept {
    if (handle_) {
        handle_->forget(); // kept (forgotten) so a pending accept() sees the cancel
    }
    if (fd_.valid() && owns_unix_path_) {
        // Only our own socket file: a server started since may have replaced it (after
        // deciding ours was stale), and its file is not ours to remove.
        const std::string path = unix_path_of(local_);
        struct stat st {};
        if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
            static_cast<std::uint64_t>(st.st_dev) == unix_dev_ &&
            static_cast<std::uint64_t>(st.st_ino) == unix_ino_) {
            ::unlink(path.c_str());
        }
        owns_unix_path_ = false;
    }
    fd_.reset();
}

} // namespace zcio
