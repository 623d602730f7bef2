// udp_socket: a watched datagram socket (send_to / recv_from, one datagram each).
#pragma once

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/sys.hpp>
#include <zcio/unique_fd.hpp>

#include <cstddef>
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
