// endpoint: a socket address parsed from and printed as text.
#pragma once

#include <zcio/result.hpp>

#include <cstdint>
#include <expected>
#include <string>
#include <string_view>

#include <sys/socket.h>

namespace zcio {

// A TCP/UDP (IPv4 or IPv6) or Unix socket address. Text forms:
//   127.0.0.1:8080   [::1]:8080   localhost:8080 (resolved)   unix:/path   unix:@abstract
// Port 0 is allowed (the kernel picks one; ask the socket for local_endpoint()).
class endpoint {
public:
    endpoint() noexcept;

    // Parses the text forms above. Host names are resolved with getaddrinfo (blocking:
    // call it at start-up, not on a loop). The error is one line that quotes `text`
    // and says what is wrong with it.
    static std::expected<endpoint, std::string> parse(std::string_view text);

    // Copies a kernel address (from accept, getsockname, recvmsg).
    static endpoint from_sockaddr(const sockaddr* addr, socklen_t len) noexcept;

    // IPv4/IPv6 address plus port, without name resolution.
    static endpoint ipv4_loopback(std::uint16_t port) noexcept;
    static endpoint ipv6_loopback(std::uint16_t port) noexcept;

    // The canonical text form: 127.0.0.1:80, [::1]:80, unix:/p, unix:@name.
    [[nodiscard]] std::string to_string() const;

    [[nodiscard]] int family() const noexcept { return storage_.ss_family; }
    [[nodiscard]] bool is_ip() const noexcept;
    [[nodiscard]] bool is_unix() const noexcept { return family() == AF_UNIX; }
    [[nodiscard]] bool is_abstract() const noexcept;
    // Port of an IP endpoint (0 for Unix ones).
    [[nodiscard]] std::uint16_t port() const noexcept;
    void set_port(std::uint16_t port) noexcept;

    [[nodiscard]] const sockaddr* data() const noexcept {
        return reinterpret_cast<const sockaddr*>(&storage_);
    }
    [[nodiscard]] sockaddr* data() noexcept { return reinterpret_cast<sockaddr*>(&storage_); }
    [[nodiscard]] socklen_t size() const noexcept { return len_; }
    void set_size(socklen_t len) noexcept { len_ = len; }
    [[nodiscard]] static constexpr socklen_t capacity() noexcept {
        return sizeof(sockaddr_storage);
    }

    friend bool operator==(const endpoint& a, const endpoint& b) noexcept;

private:
    sockaddr_storage storage_{};
    socklen_t len_ = 0;
};

// getsockname / getpeername as endpoints.
result<endpoint> local_endpoint_of(int fd);
result<endpoint> peer_endpoint_of(int fd);

} // namespace zcio
