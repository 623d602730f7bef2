// The PROXY protocol decoder (v1 text, v2 binary): strict, stateless, bounds-checked.
// Every byte it is given comes from a peer, so no length is used before it is checked
// against what was received.
#include <zcio/proxy_protocol.hpp>

#include <array>
#include <cstring>
#include <string_view>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

namespace zcio {

namespace {

constexpr std::array<unsigned char, 12> v2_sig = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                  0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr std::string_view v1_sig = "PROXY ";
constexpr std::size_t v2_fixed = 16;

proxy_decode_result need_more() noexcept {
    return {};
}

proxy_decode_result malformed(const char* why) noexcept {
    proxy_decode_result r;
    r.status = proxy_decode_status::malformed;
    r.reason = why;
    return r;
}

proxy_decode_result complete(proxy_header_info h) noexcept {
    proxy_decode_result r;
    r.status = proxy_decode_status::header;
    r.header = h;
    return r;
}

// ---- v1 ----

// A decimal port: "0" or 1-5 digits without a leading zero, at most 65535.
bool v1_port(std::string_view s, std::uint16_t& out) noexcept {
    if (s.empty() || s.size() > 5 || (s.size() > 1 && s[0] == '0')) {
        return false;
    }
    unsigned v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') {
            return false;
        }
        v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v > 65535) {
        return false;
    }
    out = static_cast<std::uint16_t>(v);
    return true;
}

// An address of `family` as inet_pton reads it (dotted quad without leading zeros, or
// an IPv6 text form), with `port`, into `out`.
bool v1_address(int family, std::string_view text, std::uint16_t port, endpoint& out) noexcept {
    std::array<char, INET6_ADDRSTRLEN> buf{};
    if (text.empty() || text.size() >= buf.size()) {
        return false;
    }
    std::memcpy(buf.data(), text.data(), text.size());
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        len = sizeof(sockaddr_in);
        if (::inet_pton(AF_INET, buf.data(), &sin->sin_addr) != 1) {
            return false;
        }
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        len = sizeof(sockaddr_in6);
        if (::inet_pton(AF_INET6, buf.data(), &sin6->sin6_addr) != 1) {
            return false;
        }
    }
    out = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
    return true;
}

// The fields between "PROXY " and CRLF: "TCP4 SRC DST SPORT DPORT", single spaces.
proxy_decode_result v1_fields(std::string_view line, std::size_t size) noexcept {
    std::array<std::string_view, 5> f;
    std::size_t n = 0;
    std::size_t start = 0;
    for (std::size_t i = 0; i <= line.size(); ++i) {
        if (i == line.size() || line[i] == ' ') {
            if (n == f.size()) {
                return malformed("v1 header has more than 5 fields");
            }
            if (i == start) {
                return malformed("v1 header has an empty field (two spaces, or one at an end)");
            }
            f[n++] = line.substr(start, i - start);
            start = i + 1;
        }
    }
    if (n != f.size()) {
        return malformed("v1 header has fewer than 5 fields");
    }
    int family = AF_UNSPEC;
    if (f[0] == "TCP4") {
        family = AF_INET;
    } else if (f[0] == "TCP6") {
        family = AF_INET6;
    } else {
        return malformed("v1 protocol is not TCP4, TCP6 or UNKNOWN");
    }
    std::uint16_t sport = 0;
    std::uint16_t dport = 0;
    if (!v1_port(f[3], sport) || !v1_port(f[4], dport)) {
        return malformed("v1 port is not a decimal number from 0 to 65535");
    }
    proxy_header_info h;
    h.version = 1;
    h.size = size;
    if (!v1_address(family, f[1], sport, h.source) ||
        !v1_address(family, f[2], dport, h.destination)) {
        return malformed("v1 address is not one of its protocol's family");
    }
    return complete(h);
}

proxy_decode_result decode_v1(std::span<const std::byte> bytes) noexcept {
    const std::string_view s(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    const std::size_t sig = std::min(s.size(), v1_sig.size());
    if (s.substr(0, sig) != v1_sig.substr(0, sig)) {
        return malformed("no PROXY header (v1 starts with \"PROXY \")");
    }
    // The CR of the CRLF that ends the longest header is its byte 106 (index 105).
    const std::size_t scan = std::min(s.size(), proxy_v1_max - 1);
    for (std::size_t i = sig; i < scan; ++i) {
        const char c = s[i];
        if (c == '\r') {
            if (i + 1 == s.size()) {
                return need_more();
            }
            if (s[i + 1] != '\n') {
                return malformed("v1 header has a CR without LF");
            }
            const std::string_view line = s.substr(v1_sig.size(), i - v1_sig.size());
            if (line == "UNKNOWN" || line.starts_with("UNKNOWN ")) {
                // The receiver ignores whatever follows UNKNOWN (the specification).
                proxy_header_info h;
                h.version = 1;
                h.size = i + 2;
                return complete(h);
            }
            return v1_fields(line, i + 2);
        }
        if (c < 0x20 || c > 0x7e) {
            return malformed("v1 header has a control or non-ASCII byte");
        }
    }
    if (s.size() >= proxy_v1_max - 1) {
        return malformed("v1 header longer than 107 bytes");
    }
    return need_more();
}

// ---- v2 ----

std::size_t be16(const std::byte* p) noexcept {
    return std::size_t{std::to_integer<unsigned char>(p[0])} << 8 |
           std::to_integer<unsigned char>(p[1]);
}

endpoint ip_endpoint(int family, const std::byte* addr, const std::byte* port) noexcept {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        std::memcpy(&sin->sin_addr, addr, 4);
        std::memcpy(&sin->sin_port, port, 2); // network order on the wire and in sockaddr
        len = sizeof(sockaddr_in);
    } else {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        sin6->sin6_family = AF_INET6;
        std::memcpy(&sin6->sin6_addr, addr, 16);
        std::memcpy(&sin6->sin6_port, port, 2);
        len = sizeof(sockaddr_in6);
    }
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
}

// A 108-byte sun_path as v2 carries it: a path ends at its first NUL; an abstract
// name (leading NUL) at its last non-NUL byte; all NULs is an unnamed socket.
endpoint unix_endpoint(const std::byte* path) noexcept {
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    std::memcpy(un.sun_path, path, sizeof un.sun_path);
    std::size_t n = 0;
    if (un.sun_path[0] != '\0') {
        n = ::strnlen(un.sun_path, sizeof un.sun_path);
    } else {
        for (std::size_t i = sizeof un.sun_path; i > 0; --i) {
            if (un.sun_path[i - 1] != '\0') {
                n = i;
                break;
            }
        }
    }
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&un),
                                   static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n));
}

// The TLVs from `at` to `end` (type, 16-bit length, value): each must end inside.
const char* check_tlvs(const std::byte* body, std::size_t at, std::size_t end) noexcept {
    while (at < end) {
        if (end - at < 3) {
            return "v2 TLV cut short (fewer than 3 bytes left)";
        }
        const std::size_t n = be16(body + at + 1);
        if (n > end - at - 3) {
            return "v2 TLV runs past the header's length";
        }
        at += 3 + n;
    }
    return nullptr;
}

proxy_decode_result v2_addresses(std::span<const std::byte> bytes, proxy_header_info h,
                                 std::size_t len) noexcept {
    const unsigned fam = std::to_integer<unsigned>(bytes[13]);
    const std::byte* body = bytes.data() + v2_fixed;
    std::size_t need = 0;
    switch (fam) {
    case 0x00:
        return complete(h); // UNSPEC: no address, the real connection's are used
    case 0x11:
    case 0x12:
        need = 12;
        break;
    case 0x21:
    case 0x22:
        need = 36;
        break;
    case 0x31:
    case 0x32:
        need = 216;
        break;
    default:
        return malformed("v2 family and transport byte is not one of 0x00, 0x11, 0x12, "
                         "0x21, 0x22, 0x31, 0x32");
    }
    if (len < need) {
        return malformed("v2 length too short for its family's addresses");
    }
    if (const char* why = check_tlvs(body, need, len)) {
        return malformed(why);
    }
    if (need == 12) {
        h.source = ip_endpoint(AF_INET, body, body + 8);
        h.destination = ip_endpoint(AF_INET, body + 4, body + 10);
    } else if (need == 36) {
        h.source = ip_endpoint(AF_INET6, body, body + 32);
        h.destination = ip_endpoint(AF_INET6, body + 16, body + 34);
    } else {
        h.source = unix_endpoint(body);
        h.destination = unix_endpoint(body + 108);
    }
    return complete(h);
}

proxy_decode_result decode_v2(std::span<const std::byte> bytes) noexcept {
    const std::size_t sig = std::min(bytes.size(), v2_sig.size());
    if (std::memcmp(bytes.data(), v2_sig.data(), sig) != 0) {
        return malformed("no PROXY header (bad v2 signature)");
    }
    if (bytes.size() < v2_fixed) {
        return need_more();
    }
    const unsigned vc = std::to_integer<unsigned>(bytes[12]);
    if ((vc >> 4) != 2) {
        return malformed("v2 version is not 2");
    }
    if ((vc & 0x0f) > 1) {
        return malformed("v2 command is not LOCAL or PROXY");
    }
    const std::size_t len = be16(&bytes[14]);
    if (v2_fixed + len > proxy_v2_max) {
        return malformed("v2 header longer than 4096 bytes");
    }
    if (bytes.size() < v2_fixed + len) {
        return need_more();
    }
    proxy_header_info h;
    h.version = 2;
    h.size = v2_fixed + len;
    h.transport = static_cast<int>(std::to_integer<unsigned>(bytes[13]) & 0x0f);
    if ((vc & 0x0f) == 0) {
        h.command = proxy_command::local; // its family and body are ignored
        return complete(h);
    }
    return v2_addresses(bytes, h, len);
}

} // namespace

proxy_decode_result decode_proxy_header(std::span<const std::byte> bytes) noexcept {
    if (bytes.empty()) {
        return need_more();
    }
    if (bytes[0] == std::byte{'P'}) {
        return decode_v1(bytes);
    }
    if (bytes[0] == std::byte{v2_sig[0]}) {
        return decode_v2(bytes);
    }
    return malformed("no PROXY header (neither \"PROXY \" nor the v2 signature)");
}

bool starts_with_proxy_signature(std::span<const std::byte> bytes) noexcept {
    return (bytes.size() >= v1_sig.size() &&
            std::memcmp(bytes.data(), v1_sig.data(), v1_sig.size()) == 0) ||
           (bytes.size() >= v2_sig.size() &&
            std::memcmp(bytes.data(), v2_sig.data(), v2_sig.size()) == 0);
}

} // namespace zcio
