// sys: one thin function per system call. EINTR is retried inside, EAGAIN comes back
// as a value (would_block()), nothing here has policy. Raw int fds live only here.
#pragma once

#include <zcio/result.hpp>
#include <zcio/unique_fd.hpp>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>

#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>

struct mmsghdr;
struct signalfd_siginfo;

namespace zcio::sys {

// ---- factories: every descriptor is CLOEXEC; sockets and pipes are NONBLOCK ----

struct pipe_pair {
    unique_fd read_end;
    unique_fd write_end;
};

// pipe2(O_CLOEXEC | O_NONBLOCK).
result<pipe_pair> pipe();

// socket(domain, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol).
result<unique_fd> socket(int domain, int type, int protocol = 0);

// socketpair(domain, type | SOCK_CLOEXEC | SOCK_NONBLOCK).
result<std::pair<unique_fd, unique_fd>> socketpair(int domain, int type);

// open(path, flags | O_CLOEXEC, mode). Regular files stay blocking: they are never
// "not ready" (the kernel does not poll regular files).
result<unique_fd> open(const char* path, int flags, mode_t mode = 0644);

// accept4(..., SOCK_CLOEXEC | SOCK_NONBLOCK). `addr`/`len` may be null.
result<unique_fd> accept(int listen_fd, sockaddr* addr = nullptr, socklen_t* len = nullptr);

// eventfd(initial, EFD_CLOEXEC | EFD_NONBLOCK).
result<unique_fd> eventfd(unsigned initial = 0);

// timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK).
result<unique_fd> timerfd();

// Arms a timerfd: first expiry after `first`, then every `interval` (0 = once).
result<void> timerfd_arm(int fd, std::chrono::nanoseconds first,
                         std::chrono::nanoseconds interval = {});

// signalfd for `mask` with SFD_CLOEXEC | SFD_NONBLOCK. The signals must be blocked
// (pthread_sigmask) in every thread, or they are delivered the ordinary way.
result<unique_fd> signalfd(const sigset_t& mask);

// Reads one pending signal from a signalfd: its number (EAGAIN when none).
result<int> read_signal(int fd);

// epoll_create1(EPOLL_CLOEXEC).
result<unique_fd> epoll_create();
result<void> epoll_add(int epfd, int fd, std::uint32_t events, void* data);
result<void> epoll_mod(int epfd, int fd, std::uint32_t events, void* data);
result<void> epoll_del(int epfd, int fd);
// Waits up to `timeout_ms` (-1 forever). EINTR returns 0 events rather than retrying,
// so a caller's deadline is recomputed.
result<int> epoll_wait(int epfd, std::span<epoll_event> events, int timeout_ms);

// ---- data movement ----

result<std::size_t> read(int fd, void* buf, std::size_t len);
result<std::size_t> write(int fd, const void* buf, std::size_t len);
result<std::size_t> pread(int fd, void* buf, std::size_t len, off_t offset);
result<std::size_t> pwrite(int fd, const void* buf, std::size_t len, off_t offset);
result<std::size_t> send(int fd, const void* buf, std::size_t len, int flags);
result<std::size_t> recv(int fd, void* buf, std::size_t len, int flags);

// splice(2). Offsets may be null (use and advance the file offset).
result<std::size_t> splice(int fd_in, off_t* off_in, int fd_out, off_t* off_out, std::size_t len,
                           unsigned flags);
// tee(2) between two pipes.
result<std::size_t> tee(int fd_in, int fd_out, std::size_t len, unsigned flags);
// sendfile(2). `offset` may be null (use and advance the file offset).
result<std::size_t> sendfile(int out_fd, int in_fd, off_t* offset, std::size_t len);
// copy_file_range(2).
result<std::size_t> copy_file_range(int fd_in, off_t* off_in, int fd_out, off_t* off_out,
                                    std::size_t len);

// Returns the number of messages received or sent (a partial count is a result).
result<std::size_t> recvmmsg(int fd, std::span<mmsghdr> msgs, int flags);
result<std::size_t> sendmmsg(int fd, std::span<mmsghdr> msgs, int flags);

// ---- pipes ----

// fcntl(F_GETPIPE_SZ) and fcntl(F_SETPIPE_SZ); the latter returns the size granted
// (the kernel rounds up to a power-of-two number of pages).
result<std::size_t> get_pipe_size(int fd);
result<std::size_t> set_pipe_size(int fd, std::size_t size);

// ioctl(FIONREAD): bytes waiting in a pipe or socket receive queue.
result<std::size_t> bytes_readable(int fd);

// What poll(2) with a zero timeout says of each fd now, in one call: readable (data,
// end of stream, hang-up or error pending) and writable (room, or an error the next
// write reports). Unlike epoll, poll answers for every kind of fd: files and devices
// without a poll method are always both. `out` must be as long as `fds`.
struct poll_state {
    bool readable = false;
    bool writable = false;
    bool error = false; // POLLERR: a pending socket error (a reset, say)
};
result<void> poll_now(std::span<const int> fds, std::span<poll_state> out);

// ---- sockets ----

result<void> bind(int fd, const sockaddr* addr, socklen_t len);
result<void> listen(int fd, int backlog);
// A non-blocking connect: EINPROGRESS comes back as an error value; wait writable,
// then read SO_ERROR (socket_error()).
result<void> connect(int fd, const sockaddr* addr, socklen_t len);
result<void> shutdown(int fd, int how);
result<void> getsockname(int fd, sockaddr* addr, socklen_t* len);
result<void> getpeername(int fd, sockaddr* addr, socklen_t* len);

result<void> setsockopt(int fd, int level, int name, const void* value, socklen_t len);
result<void> getsockopt(int fd, int level, int name, void* value, socklen_t* len);
result<void> set_int_option(int fd, int level, int name, int value);
result<int> get_int_option(int fd, int level, int name);
// SO_ERROR as an error_code (empty when there is no pending error).
result<std::error_code> socket_error(int fd);

// ---- descriptors ----

enum class fd_kind { socket, pipe, regular_file, other };
const char* to_string(fd_kind kind) noexcept;

// fstat-based: what kind of object the descriptor refers to.
result<fd_kind> kind_of(int fd);

// fcntl(F_GETFL) / F_SETFL helpers.
result<int> get_status_flags(int fd);
result<void> set_nonblocking(int fd, bool on);

// lseek(fd, 0, SEEK_CUR) and lseek(fd, off, SEEK_SET).
result<off_t> tell(int fd);
result<off_t> seek(int fd, off_t offset);

// dup with CLOEXEC (fcntl F_DUPFD_CLOEXEC).
result<unique_fd> dup(int fd);

// System calls the calling thread made through the data-path wrappers of this layer
// (reads, writes, splices, sendfile, copy_file_range, epoll_wait, accept, ...), for
// benchmarks that report system calls per MiB.
std::uint64_t calls_on_this_thread() noexcept;

// Number of open descriptors of this process (/proc/self/fd), for leak checks.
result<std::size_t> count_open_fds();

} // namespace zcio::sys
