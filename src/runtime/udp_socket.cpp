// udp_socket: bind, and one-datagram receive and send.
#include <zcio/udp_socket.hpp>

#include <sys/socket.h>

namespace zcio {

result<udp_socket> udp_socket::bind(event_loop& loop, const endpoint& at, bool reuse_port) {
    auto fd = sys::socket(at.family(), SOCK_DGRAM);
    if (!fd) {
        return fail(name_op("socket", fd.error()));
    }
    if (reuse_port) {
        if (auto r = sys::set_int_option(fd->get(), SOL_SOCKET, SO_REUSEPORT, 1); !r) {
            return fail(name_op("setsockopt(SO_REUSEPORT)", r.error()));
        }
    }
    if (auto r = sys::bind(fd->get(), at.data(), at.size()); !r) {
        return fail(name_op("bind", r.error()));
    }
    auto h = loop.watch(fd->get());
    if (!h) {
        return fail(h.error());
    }
    return udp_socket(std::move(*fd), std::move(*h));
}

result<udp_socket> udp_socket::adopt(event_loop& loop, unique_fd fd) {
    if (auto r = sys::set_nonblocking(fd.get(), true); !r) {
        return fail(name_op("fcntl(O_NONBLOCK)", r.error()));
    }
    auto h = loop.watch(fd.get());
    if (!h) {
        return fail(h.error());
    }
    return udp_socket(std::move(fd), std::move(*h));
}

result<datagram_info> udp_socket::receive(int fd, std::span<std::byte> buf) {
    datagram_info info;
    iovec iov{buf.data(), buf.size()};
    msghdr msg{};
    msg.msg_name = info.from.data();
    msg.msg_namelen = endpoint::capacity();
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    ssize_t n;
    do {
        n = ::recvmsg(fd, &msg, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        return fail(errno);
    }
    info.from.set_size(msg.msg_namelen);
    info.size = static_cast<std::size_t>(n);
    info.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
    return info;
}

result<std::size_t> udp_socket::send(int fd, std::span<const std::byte> buf, const endpoint& to) {
    ssize_t n;
    do {
        n = ::sendto(fd, buf.data(), buf.size(), MSG_NOSIGNAL, to.data(), to.size());
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        return fail(errno);
    }
    return static_cast<std::size_t>(n);
}

} // namespace zcio
