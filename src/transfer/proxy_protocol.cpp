// PROXY protocol v1 and v2 header encoders.
#include <zcio/proxy_protocol.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

namespace zcio {

namespace {

std::string address_text(const endpoint& ep) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (ep.family() == AF_INET) {
        ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(ep.data())->sin_addr, buf,
                    sizeof buf);
    } else {
        ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(ep.data())->sin6_addr, buf,
                    sizeof buf);
    }
    return buf;
}

void put_bytes(std::string& out, const void* p, std::size_t n) {
    out.append(static_cast<const char*>(p), n);
}

void put_be16(std::string& out, std::uint16_t v) {
    out.push_back(static_cast<char>(v >> 8));
    out.push_back(static_cast<char>(v & 0xff));
}

// The 12-byte v2 signature: "\r\n\r\n\0\r\nQUIT\n".
constexpr std::array<unsigned char, 12> v2_signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

} // namespace

std::string proxy_header_v1(const endpoint& source, const endpoint& destination) {
    if (!source.is_ip() || source.family() != destination.family()) {
        return "PROXY UNKNOWN\r\n";
    }
    std::string out = source.family() == AF_INET ? "PROXY TCP4 " : "PROXY TCP6 ";
    out += address_text(source) + " " + address_text(destination) + " " +
           std::to_string(source.port()) + " " + std::to_string(destination.port()) + "\r\n";
    return out;
}

std::string proxy_header_v2(const endpoint& source, const endpoint& destination) {
    std::string out;
    put_bytes(out, v2_signature.data(), v2_signature.size());
    const bool same = source.family() == destination.family();
    if (same && source.family() == AF_INET) {
        out.push_back('\x21'); // version 2, PROXY
        out.push_back('\x11'); // AF_INET, STREAM
        put_be16(out, 12);
        const auto* s = reinterpret_cast<const sockaddr_in*>(source.data());
        const auto* d = reinterpret_cast<const sockaddr_in*>(destination.data());
        put_bytes(out, &s->sin_addr, 4);
        put_bytes(out, &d->sin_addr, 4);
        put_bytes(out, &s->sin_port, 2); // already in network order
        put_bytes(out, &d->sin_port, 2);
    } else if (same && source.family() == AF_INET6) {
        out.push_back('\x21');
        out.push_back('\x21'); // AF_INET6, STREAM
        put_be16(out, 36);
        const auto* s = reinterpret_cast<const sockaddr_in6*>(source.data());
        const auto* d = reinterpret_cast<const sockaddr_in6*>(destination.data());
        put_bytes(out, &s->sin6_addr, 16);
        put_bytes(out, &d->sin6_addr, 16);
        put_bytes(out, &s->sin6_port, 2);
        put_bytes(out, &d->sin6_port, 2);
    } else if (same && source.family() == AF_UNIX) {
        out.push_back('\x21');
        out.push_back('\x31'); // AF_UNIX, STREAM
        put_be16(out, 216);
        for (const endpoint* ep : {&source, &destination}) {
            std::array<char, 108> path{};
            const auto* un = reinterpret_cast<const sockaddr_un*>(ep->data());
            const std::size_t n = ep->size() > offsetof(sockaddr_un, sun_path)
                                      ? ep->size() - offsetof(sockaddr_un, sun_path)
                                      : 0;
            std::memcpy(path.data(), un->sun_path, std::min(n, path.size()));
            put_bytes(out, path.data(), path.size());
        }
    } else {
        out.push_back('\x20'); // version 2, LOCAL: the receiver uses the real addresses
        out.push_back('\x00'); // AF_UNSPEC
        put_be16(out, 0);
    }
    return out;
}

} // namespace zcio
