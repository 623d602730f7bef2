// compact_peer: what a connection's close line needs of its client's address.
//
// A whole endpoint is 132 bytes and a sockaddr_in6 28; every idle proxied connection
// carries one, so it keeps only the family, the port and the 4 or 16 address bytes (19
// bytes, 20 with padding). A Unix client is printed by its family alone: accepted
// Unix sockets are almost always unnamed.
#pragma once

#include <zcio/endpoint.hpp>

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace zcio::cli {

class compact_peer {
public:
    static compact_peer of(const endpoint& e) noexcept {
        compact_peer p;
        const sockaddr* sa = e.data();
        p.family_ = static_cast<std::uint8_t>(sa->sa_family);
        if (sa->sa_family == AF_INET && e.size() >= sizeof(sockaddr_in)) {
            const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
            std::memcpy(p.addr_, &in->sin_addr, sizeof in->sin_addr);
            p.port_ = in->sin_port;
        } else if (sa->sa_family == AF_INET6 && e.size() >= sizeof(sockaddr_in6)) {
            const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
            std::memcpy(p.addr_, &in6->sin6_addr, sizeof in6->sin6_addr);
            p.port_ = in6->sin6_port;
        }
        return p;
    }

    [[nodiscard]] std::string to_string() const {
        if (family_ != AF_INET && family_ != AF_INET6) {
            return family_ == AF_UNIX ? "unix:" : "?";
        }
        sockaddr_in6 in6{}; // an IPv4 address is rebuilt in the same storage
        socklen_t len = sizeof in6;
        if (family_ == AF_INET) {
            auto* in = reinterpret_cast<sockaddr_in*>(&in6);
            in->sin_family = AF_INET;
            in->sin_port = port_;
            std::memcpy(&in->sin_addr, addr_, sizeof in->sin_addr);
            len = sizeof(sockaddr_in);
        } else {
            in6.sin6_family = AF_INET6;
            in6.sin6_port = port_;
            std::memcpy(&in6.sin6_addr, addr_, sizeof in6.sin6_addr);
        }
        return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&in6), len).to_string();
    }

private:
    std::uint8_t addr_[16] = {};
    std::uint16_t port_ = 0; // network order
    std::uint8_t family_ = AF_UNSPEC;
};

static_assert(sizeof(compact_peer) <= 20);

} // namespace zcio::cli
