// udp_socket: a watched datagram socket: send_to / recv_from (one datagram each) and
// send_batch / recv_batch (many per system call, see udp_batch.hpp).
#pragma once

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/sys.hpp>
#include <zcio/udp_batch.hpp>
#include <zcio/unique_fd.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

namespace zcio {

struct datagram_info {
    std::size_t size = 0; // bytes received (the datagram is cut at the buffer's size)
    endpoint from;
    bool truncated = false;
};

class udp_socket {
public:
    udp_socket() noexcept = default;
    udp_socket(udp_socket&&) noexcept = default;
    udp_socket& operator=(udp_socket&& other) noexcept {
        if (this != &other) {
            close();
            handle_.reset();
            handle_ = std::move(other.handle_);
            fd_ = std::move(other.fd_);
        }
        return *this;
    }
    ~udp_socket() { close(); }

    // socket(SOCK_DGRAM) bound to `at` (port 0: the kernel picks one), optionally
    // with SO_REUSEPORT.
    static result<udp_socket> bind(event_loop& loop, const endpoint& at, bool reuse_port = false);
    // A bound datagram socket from elsewhere (another process, systemd), made
    // non-blocking and watched on `loop`.
    static result<udp_socket> adopt(event_loop& loop, unique_fd fd);

    // co_await u.recv_from(buf): one datagram and its sender.
    auto recv_from(std::span<std::byte> buf) {
        int fd = fd_.get();
        return io_op<datagram_info>(*handle_, io_direction::read,
                                    [fd, buf] { return receive(fd, buf); });
    }

    // co_await u.send_to(buf, to): bytes sent (the whole datagram or an error).
    auto send_to(std::span<const std::byte> buf, const endpoint& to) {
        int fd = fd_.get();
        return io_op<std::size_t>(*handle_, io_direction::write,
                                  [fd, buf, to] { return send(fd, buf, to); });
    }

    // co_await u.recv_batch(b): up to min(max, b.capacity()) datagrams with one
    // recvmmsg; b is cleared first and then holds them, each queued for sending back to
    // its sender. Returns how many arrived (at least 1). A short count means the
    // socket's queue ran empty, so the cached readiness is cleared right away: the next
    // call waits for the next edge instead of spending a system call on EAGAIN.
    // `b` must stay valid until the co_await completes.
    auto recv_batch(udp_batch& b, std::size_t max = SIZE_MAX) {
        int fd = fd_.get();
        io_handle* h = handle_.get();
        udp_batch* batch = &b;
        return io_op<std::size_t>(*handle_, io_direction::read, [fd, h, batch, max] {
            auto n = batch->receive(fd, max);
            if (n && *n < std::min(max, batch->capacity())) {
                h->clear_ready(io_direction::read);
            }
            return n;
        });
    }

    // co_await u.send_batch(b): one sendmmsg of b's unsent messages (waiting while the
    // socket says EAGAIN). Returns how many were sent completely (see udp_batch::send:
    // a partial count is a result, and 0 is possible while a refused GSO message is sent
    // datagram by datagram); an error concerns the next unsent message (skip() it).
    // `b` and any memory it refers to must stay valid until the co_await completes.
    auto send_batch(udp_batch& b) {
        int fd = fd_.get();
        udp_batch* batch = &b;
        return io_op<std::size_t>(*handle_, io_direction::write,
                                  [fd, batch] { return batch->send(fd); });
    }

    // UDP_SEGMENT (GSO) is usable on this socket (see udp_gso_supported).
    [[nodiscard]] bool gso_supported() const noexcept { return udp_gso_supported(fd()); }
    // UDP_GRO on or off: false when the kernel does not support it (see set_udp_gro).
    result<bool> set_gro(bool on) noexcept { return set_udp_gro(fd(), on); }

    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    [[nodiscard]] io_handle& handle() const noexcept { return *handle_; }
    [[nodiscard]] result<endpoint> local_endpoint() const { return local_endpoint_of(fd()); }

    void close() noexcept {
        if (handle_) {
            handle_->forget(); // later operations report operation_canceled
        }
        fd_.reset();
    }

    // One non-blocking recvmsg / sendto (EAGAIN as a value).
    static result<datagram_info> receive(int fd, std::span<std::byte> buf);
    static result<std::size_t> send(int fd, std::span<const std::byte> buf, const endpoint& to);

private:
    udp_socket(unique_fd fd, io_handle_ptr h) noexcept
        : fd_(std::move(fd)), handle_(std::move(h)) {}
    unique_fd fd_;
    io_handle_ptr handle_;
};

} // namespace zcio
