// stream: a watched byte-stream fd (TCP or Unix socket, pipe, tty, regular file).
#pragma once

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>
#include <zcio/unique_fd.hpp>

#include <chrono>
#include <cstddef>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace zcio {

// One address a connect to a list could not reach, and why (see stream::connect).
struct connect_failure {
    endpoint to;
    std::error_code error;
};

// "[::1]:80: connect: Connection refused; 127.0.0.1:80: connect: Connection timed out"
std::string to_string(std::span<const connect_failure> failures);

// Owns an fd and its registration with a loop. Reads and writes make the syscall
// first and suspend only on EAGAIN. Destroying a stream (or close()) cancels its
// pending operations with operation_canceled and closes the fd.
//
// One read and one write may be pending at once (full duplex); a second concurrent
// read cancels the first with device_or_resource_busy. Buffers passed to an operation
// must outlive its co_await.
class stream {
public:
    stream() noexcept = default;
    stream(stream&&) noexcept = default;
    stream& operator=(stream&& other) noexcept {
        if (this != &other) {
            close();
            handle_.reset();
            handle_ = std::move(other.handle_);
            fd_ = std::move(other.fd_);
            kind_ = other.kind_;
        }
        return *this;
    }
    ~stream() { close(); }

    // Takes ownership of `fd` and watches it on `loop`. Sockets and pipes should be
    // non-blocking (the sys factories make them so); adopt() sets O_NONBLOCK on them
    // otherwise (for stdin/stdout, which the caller may share: see docs).
    static result<stream> adopt(event_loop& loop, unique_fd fd);
    // Like adopt() for a socket the caller knows is a non-blocking stream socket (made
    // with SOCK_NONBLOCK by socket() or accept4()): skips the fstat and fcntl calls,
    // two system calls per connection on a proxy's accept and connect paths.
    static result<stream> adopt_socket(event_loop& loop, unique_fd fd);

    // Connects a TCP or Unix stream socket to `to`, giving up after `timeout`
    // (timed_out). Sets TCP_NODELAY on TCP. A Unix listener whose backlog is full
    // (EAGAIN) is tried again, with growing pauses, until the timeout.
    static task<result<stream>> connect(event_loop& loop, endpoint to,
                                        clock::duration timeout = std::chrono::seconds(10));

    // Connects to the first of `to` that answers, with Happy Eyeballs (RFC 8305):
    //  - addresses are tried in the order given (endpoint_list::resolve() has already
    //    interleaved the families);
    //  - the next attempt starts when the one before it fails, or when
    //    connect_attempt_delay (250 ms, the RFC's recommendation) has passed since the
    //    last one started, whichever comes first; earlier attempts keep going;
    //  - the first attempt to complete wins, and every other socket is closed;
    //  - `timeout` bounds the whole connect, not each attempt: when it passes, every
    //    attempt still in flight is closed and the result is timed_out.
    // When every address fails the result is the last failure's error. `failed`, when
    // given, receives each address that failed (or was still in flight at the
    // timeout) with its error, for a message that names them. A list of one behaves as
    // the connect above. `to` and `*failed` must outlive the co_await. A Unix address
    // in a list of several is tried once (no EAGAIN retries). An empty list fails with
    // EDESTADDRREQ.
    static task<result<stream>> connect(event_loop& loop, std::span<const endpoint> to,
                                        clock::duration timeout = std::chrono::seconds(10),
                                        std::vector<connect_failure>* failed = nullptr);

    // RFC 8305 section 5's recommended "Connection Attempt Delay".
    static constexpr clock::duration connect_attempt_delay = std::chrono::milliseconds(250);

    // co_await s.read_some(buf): bytes read, 0 at end of stream.
    auto read_some(std::span<std::byte> buf) {
        int fd = fd_.get();
        return io_op<std::size_t>(*handle_, io_direction::read,
                                  [fd, buf] { return sys::read(fd, buf.data(), buf.size()); });
    }

    // co_await s.write_some(buf): bytes written (at least 1 unless buf is empty).
    auto write_some(std::span<const std::byte> buf) {
        int fd = fd_.get();
        return io_op<std::size_t>(*handle_, io_direction::write, [fd, buf, this] {
            return kind_ == sys::fd_kind::socket
                       ? sys::send(fd, buf.data(), buf.size(), MSG_NOSIGNAL)
                       : sys::write(fd, buf.data(), buf.size());
        });
    }

    // co_await s.write_all(buf): writes every byte, waiting as needed; the result is
    // buf.size(), or the error (after which some prefix of buf may have been written).
    auto write_all(std::span<const std::byte> buf) {
        int fd = fd_.get();
        return io_op<std::size_t>(
            *handle_, io_direction::write,
            [fd, buf, done = std::size_t{0}, this]() mutable -> result<std::size_t> {
                while (done < buf.size()) {
                    auto rest = buf.subspan(done);
                    auto n = kind_ == sys::fd_kind::socket
                                 ? sys::send(fd, rest.data(), rest.size(), MSG_NOSIGNAL)
                                 : sys::write(fd, rest.data(), rest.size());
                    if (!n) {
                        return n;
                    }
                    done += *n;
                }
                return done;
            });
    }

    // Sends FIN (SHUT_WR); reading goes on.
    result<void> shutdown_write();
    result<void> set_nodelay(bool on);

    // Closes now; pending operations end with operation_canceled.
    void close() noexcept;

    [[nodiscard]] bool is_open() const noexcept { return fd_.valid(); }
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] sys::fd_kind kind() const noexcept { return kind_; }
    [[nodiscard]] io_handle& handle() const noexcept { return *handle_; }
    [[nodiscard]] event_loop& loop() const noexcept { return handle_->loop(); }

    [[nodiscard]] result<endpoint> local_endpoint() const { return local_endpoint_of(fd()); }
    [[nodiscard]] result<endpoint> peer_endpoint() const { return peer_endpoint_of(fd()); }

private:
    friend class stream_view; // makes unwatched streams over borrowed fds
    stream(unique_fd fd, io_handle_ptr h, sys::fd_kind kind) noexcept
        : handle_(std::move(h)), fd_(std::move(fd)), kind_(kind) {}

    // The handle first, then the 4-byte fd and the kind: 16 bytes, not 24 (two per
    // proxied connection). ~stream() unregisters before the close (close() forgets the
    // handle, then closes the fd), so the declaration order does not matter for that.
    io_handle_ptr handle_;
    unique_fd fd_;
    sys::fd_kind kind_ = sys::fd_kind::other;
};

} // namespace zcio
