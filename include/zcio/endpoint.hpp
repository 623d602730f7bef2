// endpoint: a socket address parsed from and printed as text.
#pragma once

#include <zcio/result.hpp>

#include <cstddef>
#include <cstdint>
#include <expected>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <sys/socket.h>

namespace zcio {

// A TCP/UDP (IPv4 or IPv6) or Unix socket address. Text forms:
//   127.0.0.1:8080   [::1]:8080   localhost:8080 (resolved)   unix:/path   unix:@abstract
// Port 0 is allowed (the kernel picks one; ask the socket for local_endpoint()).
class endpoint {
public:
    endpoint() noexcept;

    // Parses the text forms above. Host names are resolved with getaddrinfo (blocking:
    // call it at start-up, not on a loop) and the first answer is kept; to connect,
    // prefer endpoint_list::resolve(), which keeps every answer. The error is one line
    // that quotes `text` and says what is wrong with it.
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

// Every address one text names, in the order a connect should try them. A literal
// address or a Unix socket is a list of one; a host name is every IPv4 and IPv6
// address getaddrinfo gives for it (RFC 6724 order, as the resolver sorts them), with
// duplicates dropped and the families interleaved (RFC 8305 section 4: the first
// address's family, then the other, then the first again...), so that a dead IPv6 path
// costs one attempt, not all of them. stream::connect() tries the list with Happy
// Eyeballs (see stream.hpp). Resolution is getaddrinfo, once, when the text is
// resolved (at start-up); the list does not follow later DNS changes (resolving on the
// loop with c-ares, and again when answers expire, is a later change).
//
// It is a contiguous range of endpoints, so it converts to std::span<const endpoint>.
class endpoint_list {
public:
    endpoint_list() = default;
    // A list of one, named by the endpoint itself.
    endpoint_list(const endpoint& only); // implicit: an endpoint is a list of one
    // Several addresses under one name (a host name, "HOST:PORT", for to_string()),
    // tried in the order given: this constructor does not reorder them.
    endpoint_list(std::string name, std::vector<endpoint> addresses);

    // As endpoint::parse(), but a host name keeps every address (ordered as above).
    // Blocking (getaddrinfo): call it at start-up, not on a loop. The error is the one
    // endpoint::parse() gives for the same text.
    static std::expected<endpoint_list, std::string> resolve(std::string_view text);

    [[nodiscard]] const endpoint* begin() const noexcept { return addresses_.data(); }
    [[nodiscard]] const endpoint* end() const noexcept {
        return addresses_.data() + addresses_.size();
    }
    [[nodiscard]] const endpoint* data() const noexcept { return addresses_.data(); }
    [[nodiscard]] std::size_t size() const noexcept { return addresses_.size(); }
    [[nodiscard]] bool empty() const noexcept { return addresses_.empty(); }
    // The first address (the one endpoint::parse() gives). The list must not be empty.
    [[nodiscard]] const endpoint& front() const noexcept { return addresses_.front(); }
    [[nodiscard]] const endpoint& operator[](std::size_t i) const noexcept { return addresses_[i]; }

    // The name as given ("localhost:8080") for a host name; the canonical text of the
    // address (endpoint::to_string()) for a list of one made from an address.
    [[nodiscard]] std::string to_string() const;
    // Every address, comma-separated: "[::1]:8080, 127.0.0.1:8080".
    [[nodiscard]] std::string addresses_text() const;

    // What every address of one resolved text shares: its kind and its port.
    [[nodiscard]] bool is_ip() const noexcept { return !empty() && front().is_ip(); }
    [[nodiscard]] bool is_unix() const noexcept { return !empty() && front().is_unix(); }
    [[nodiscard]] std::uint16_t port() const noexcept { return empty() ? 0 : front().port(); }

    // The same name and the same addresses in the same order.
    friend bool operator==(const endpoint_list& a, const endpoint_list& b) = default;

private:
    std::string name_; // empty: the list is one address, named by itself
    std::vector<endpoint> addresses_;
};

// Reorders `addresses` as RFC 8305 section 4 asks: the family of the first address
// first, then alternating between the families, each family keeping its own order
// ([v6a, v6b, v4a, v4b] -> [v6a, v4a, v6b, v4b]). Equal addresses after the first are
// dropped. endpoint_list::resolve() applies it; use it on lists built by hand.
std::vector<endpoint> interleave_families(std::span<const endpoint> addresses);

// getsockname / getpeername as endpoints.
result<endpoint> local_endpoint_of(int fd);
result<endpoint> peer_endpoint_of(int fd);

} // namespace zcio
