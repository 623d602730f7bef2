// The sys layer: one checked wrapper per system call, EINTR retried, errors as values.
#include <zcio/sys.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>

namespace zcio::sys {
namespace {

// Counted per thread, without atomics, for the benchmarks' "system calls per MiB".
thread_local std::uint64_t calls_made = 0;

// signal(7): a handler installed without SA_RESTART makes a blocked call fail with
// EINTR; the call did nothing, so it is safe to repeat.
template <class F>
auto no_eintr(F f) {
    for (;;) {
        ++calls_made;
        auto r = f();
        if (r != -1 || errno != EINTR) {
            return r;
        }
    }
}

result<std::size_t> sized(ssize_t n) {
    if (n < 0) {
        return fail(errno);
    }
    return static_cast<std::size_t>(n);
}

result<void> checked(int r) {
    if (r < 0) {
        return fail(errno);
    }
    return {};
}

result<unique_fd> owned(int fd) {
    if (fd < 0) {
        return fail(errno);
    }
    return unique_fd(fd);
}

timespec to_timespec(std::chrono::nanoseconds d) {
    auto s = std::chrono::duration_cast<std::chrono::seconds>(d);
    return {static_cast<time_t>(s.count()), static_cast<long>((d - s).count())};
}

result<void> epoll_ctl(int epfd, int op, int fd, std::uint32_t events, void* data) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = data;
    return checked(::epoll_ctl(epfd, op, fd, &ev));
}

} // namespace

std::uint64_t calls_on_this_thread() noexcept {
    return calls_made;
}

// ---- factories ----

result<pipe_pair> pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
        return fail(errno);
    }
    return pipe_pair{unique_fd(fds[0]), unique_fd(fds[1])};
}

result<unique_fd> socket(int domain, int type, int protocol) {
    return owned(::socket(domain, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol));
}

result<std::pair<unique_fd, unique_fd>> socketpair(int domain, int type) {
    int fds[2];
    if (::socketpair(domain, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) < 0) {
        return fail(errno);
    }
    return std::pair{unique_fd(fds[0]), unique_fd(fds[1])};
}

result<unique_fd> open(const char* path, int flags, mode_t mode) {
    // open(2) can sleep (a FIFO waiting for its peer, NFS) and be interrupted.
    return owned(no_eintr([&] { return ::open(path, flags | O_CLOEXEC, mode); }));
}

result<unique_fd> accept(int listen_fd, sockaddr* addr, socklen_t* len) {
    return owned(
        no_eintr([&] { return ::accept4(listen_fd, addr, len, SOCK_CLOEXEC | SOCK_NONBLOCK); }));
}

result<unique_fd> eventfd(unsigned initial) {
    return owned(::eventfd(initial, EFD_CLOEXEC | EFD_NONBLOCK));
}

result<unique_fd> timerfd() {
    return owned(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
}

result<void> timerfd_arm(int fd, std::chrono::nanoseconds first,
                         std::chrono::nanoseconds interval) {
    // timerfd_settime(2): an all-zero it_value disarms the timer, so "expire after 0"
    // is sent as the shortest real delay instead.
    itimerspec spec{};
    spec.it_value = to_timespec(std::max(first, std::chrono::nanoseconds{1}));
    spec.it_interval = to_timespec(std::max(interval, std::chrono::nanoseconds{0}));
    return checked(::timerfd_settime(fd, 0, &spec, nullptr));
}

result<unique_fd> signalfd(const sigset_t& mask) {
    return owned(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
}

result<int> read_signal(int fd) {
    signalfd_siginfo info{};
    auto n = sized(no_eintr([&] { return ::read(fd, &info, sizeof info); }));
    if (!n) {
        return fail(n.error());
    }
    // signalfd(2): reads return whole signalfd_siginfo records only.
    if (*n != sizeof info) {
        return fail(EIO);
    }
    return static_cast<int>(info.ssi_signo);
}

result<unique_fd> epoll_create() {
    return owned(::epoll_create1(EPOLL_CLOEXEC));
}

result<void> epoll_add(int epfd, int fd, std::uint32_t events, void* data) {
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, events, data);
}

result<void> epoll_mod(int epfd, int fd, std::uint32_t events, void* data) {
    return epoll_ctl(epfd, EPOLL_CTL_MOD, fd, events, data);
}

result<void> epoll_del(int epfd, int fd) {
    // Kernels before 2.6.9 required a non-null event even for EPOLL_CTL_DEL.
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, 0, nullptr);
}

result<int> epoll_wait(int epfd, std::span<epoll_event> events, int timeout_ms) {
    int max = static_cast<int>(std::min<std::size_t>(events.size(), INT_MAX));
    ++calls_made;
    int n = ::epoll_wait(epfd, events.data(), max, timeout_ms);
    if (n < 0) {
        // epoll_wait(2) is never restarted after a signal handler, even with SA_RESTART.
        if (errno == EINTR) {
            return 0;
        }
        return fail(errno);
    }
    return n;
}

// ---- data movement ----

result<std::size_t> read(int fd, void* buf, std::size_t len) {
    return sized(no_eintr([&] { return ::read(fd, buf, len); }));
}

result<std::size_t> write(int fd, const void* buf, std::size_t len) {
    return sized(no_eintr([&] { return ::write(fd, buf, len); }));
}

result<std::size_t> pread(int fd, void* buf, std::size_t len, off_t offset) {
    return sized(no_eintr([&] { return ::pread(fd, buf, len, offset); }));
}

result<std::size_t> pwrite(int fd, const void* buf, std::size_t len, off_t offset) {
    return sized(no_eintr([&] { return ::pwrite(fd, buf, len, offset); }));
}

result<std::size_t> send(int fd, const void* buf, std::size_t len, int flags) {
    return sized(no_eintr([&] { return ::send(fd, buf, len, flags); }));
}

result<std::size_t> recv(int fd, void* buf, std::size_t len, int flags) {
    return sized(no_eintr([&] { return ::recv(fd, buf, len, flags); }));
}

result<std::size_t> splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, std::size_t len,
                           unsigned flags) {
    return sized(no_eintr([&] { return ::splice(fd_in, off_in, fd_out, off_out, len, flags); }));
}

result<std::size_t> tee(int fd_in, int fd_out, std::size_t len, unsigned flags) {
    return sized(no_eintr([&] { return ::tee(fd_in, fd_out, len, flags); }));
}

result<std::size_t> sendfile(int out_fd, int in_fd, off_t* offset, std::size_t len) {
    return sized(no_eintr([&] { return ::sendfile(out_fd, in_fd, offset, len); }));
}

result<std::size_t> copy_file_range(int fd_in, off_t* off_in, int fd_out, off_t* off_out,
                                    std::size_t len) {
    return sized(
        no_eintr([&] { return ::copy_file_range(fd_in, off_in, fd_out, off_out, len, 0); }));
}

result<std::size_t> recvmmsg(int fd, std::span<mmsghdr> msgs, int flags) {
    auto n = static_cast<unsigned>(std::min<std::size_t>(msgs.size(), UINT_MAX));
    return sized(no_eintr([&] { return ::recvmmsg(fd, msgs.data(), n, flags, nullptr); }));
}

result<std::size_t> sendmmsg(int fd, std::span<mmsghdr> msgs, int flags) {
    auto n = static_cast<unsigned>(std::min<std::size_t>(msgs.size(), UINT_MAX));
    return sized(no_eintr([&] { return ::sendmmsg(fd, msgs.data(), n, flags); }));
}

// ---- pipes ----

result<std::size_t> get_pipe_size(int fd) {
    return sized(::fcntl(fd, F_GETPIPE_SZ));
}

result<std::size_t> set_pipe_size(int fd, std::size_t size) {
    if (size > INT_MAX) {
        return fail(EINVAL);
    }
    return sized(::fcntl(fd, F_SETPIPE_SZ, static_cast<int>(size)));
}

result<std::size_t> bytes_readable(int fd) {
    int n = 0;
    ++calls_made;
    if (::ioctl(fd, FIONREAD, &n) < 0) {
        return fail(errno);
    }
    return static_cast<std::size_t>(n);
}

result<void> poll_now(std::span<const int> fds, std::span<poll_state> out) {
    constexpr std::size_t most = 8;
    if (fds.size() > most || out.size() != fds.size()) {
        return fail(EINVAL);
    }
    std::array<::pollfd, most> p{};
    for (std::size_t i = 0; i < fds.size(); ++i) {
        p[i] = {fds[i], POLLIN | POLLOUT | POLLRDHUP, 0};
    }
    int n = 0;
    do {
        ++calls_made;
        n = ::poll(p.data(), fds.size(), 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        return fail(errno);
    }
    for (std::size_t i = 0; i < fds.size(); ++i) {
        const short r = p[i].revents;
        out[i].readable = (r & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) != 0;
        out[i].writable = (r & (POLLOUT | POLLERR | POLLHUP)) != 0;
        out[i].error = (r & POLLERR) != 0;
    }
    return {};
}

// ---- sockets ----

result<void> bind(int fd, const sockaddr* addr, socklen_t len) {
    return checked(::bind(fd, addr, len));
}

result<void> listen(int fd, int backlog) {
    return checked(::listen(fd, backlog));
}

result<void> connect(int fd, const sockaddr* addr, socklen_t len) {
    if (::connect(fd, addr, len) < 0) {
        // connect(2): after EINTR the connection goes on asynchronously and a second
        // connect would fail with EALREADY; report it as in progress instead.
        return fail(errno == EINTR ? EINPROGRESS : errno);
    }
    return {};
}

result<void> shutdown(int fd, int how) {
    return checked(::shutdown(fd, how));
}

result<void> getsockname(int fd, sockaddr* addr, socklen_t* len) {
    return checked(::getsockname(fd, addr, len));
}

result<void> getpeername(int fd, sockaddr* addr, socklen_t* len) {
    return checked(::getpeername(fd, addr, len));
}

result<void> setsockopt(int fd, int level, int name, const void* value, socklen_t len) {
    return checked(::setsockopt(fd, level, name, value, len));
}

result<void> getsockopt(int fd, int level, int name, void* value, socklen_t* len) {
    return checked(::getsockopt(fd, level, name, value, len));
}

result<void> set_int_option(int fd, int level, int name, int value) {
    return setsockopt(fd, level, name, &value, sizeof value);
}

result<int> get_int_option(int fd, int level, int name) {
    int value = 0;
    socklen_t len = sizeof value;
    if (auto r = getsockopt(fd, level, name, &value, &len); !r) {
        return fail(r.error());
    }
    return value;
}

result<std::error_code> socket_error(int fd) {
    auto err = get_int_option(fd, SOL_SOCKET, SO_ERROR);
    if (!err) {
        return fail(err.error());
    }
    return *err == 0 ? std::error_code{} : errno_error(*err);
}

// ---- descriptors ----

const char* to_string(fd_kind kind) noexcept {
    switch (kind) {
    case fd_kind::socket:
        return "socket";
    case fd_kind::pipe:
        return "pipe";
    case fd_kind::regular_file:
        return "regular_file";
    case fd_kind::other:
        break;
    }
    return "other";
}

result<fd_kind> kind_of(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) < 0) {
        return fail(errno);
    }
    if (S_ISSOCK(st.st_mode)) {
        return fd_kind::socket;
    }
    if (S_ISFIFO(st.st_mode)) {
        return fd_kind::pipe;
    }
    if (S_ISREG(st.st_mode)) {
        return fd_kind::regular_file;
    }
    return fd_kind::other;
}

result<int> get_status_flags(int fd) {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0) {
        return fail(errno);
    }
    return flags;
}

result<void> set_nonblocking(int fd, bool on) {
    auto flags = get_status_flags(fd);
    if (!flags) {
        return fail(flags.error());
    }
    int want = on ? (*flags | O_NONBLOCK) : (*flags & ~O_NONBLOCK);
    if (want == *flags) {
        return {};
    }
    return checked(::fcntl(fd, F_SETFL, want));
}

result<off_t> tell(int fd) {
    off_t off = ::lseek(fd, 0, SEEK_CUR);
    if (off < 0) {
        return fail(errno);
    }
    return off;
}

result<off_t> seek(int fd, off_t offset) {
    off_t off = ::lseek(fd, offset, SEEK_SET);
    if (off < 0) {
        return fail(errno);
    }
    return off;
}

result<unique_fd> dup(int fd) {
    return owned(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
}

result<std::size_t> count_open_fds() {
    DIR* dir = ::opendir("/proc/self/fd");
    if (dir == nullptr) {
        return fail(errno);
    }
    std::size_t n = 0;
    errno = 0;
    while (const dirent* entry = ::readdir(dir)) {
        if (entry->d_name[0] != '.') {
            ++n;
        }
    }
    int err = errno;
    ::closedir(dir);
    if (err != 0) {
        return fail(err);
    }
    return n - 1; // the directory stream's own descriptor is listed too
}

} // namespace zcio::sys
