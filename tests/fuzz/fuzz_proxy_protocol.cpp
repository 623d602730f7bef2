// The PROXY protocol encoders against a small independent decoder of v1 (text) and v2
// (binary), written from HAProxy's specification: for any pair of addresses the fuzzer
// builds (IPv4, IPv6, Unix paths and abstract names, other families, mixed pairs), the
// decoded header must carry exactly the families, addresses and ports given, or say
// UNKNOWN / LOCAL where the specification asks for it.
#include <zcio/proxy_protocol.hpp>

#include "fuzz_support.hpp"

#include <array>
#include <charconv>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

namespace {

using zcio::endpoint;
using zcio::fuzz::input;

// An endpoint of the family the fuzzer picks, filled from its bytes.
endpoint make_endpoint(input& in) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    switch (in.byte() % 5) {
    case 0: {
        auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
        sin->sin_family = AF_INET;
        auto a = in.take(4);
        std::memcpy(&sin->sin_addr, a.data(), a.size());
        sin->sin_port = htons(in.u16());
        len = sizeof(sockaddr_in);
        break;
    }
    case 1: {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
        sin6->sin6_family = AF_INET6;
        auto a = in.take(16);
        std::memcpy(&sin6->sin6_addr, a.data(), a.size());
        sin6->sin6_port = htons(in.u16());
        sin6->sin6_scope_id = in.byte();
        len = sizeof(sockaddr_in6);
        break;
    }
    case 2:
    case 3: {
        // A Unix address of any length the kernel could report, up to the whole
        // sockaddr_storage (longer than sockaddr_un: from_sockaddr keeps what fits).
        auto* sun = reinterpret_cast<sockaddr_un*>(&ss);
        sun->sun_family = AF_UNIX;
        const std::size_t room = sizeof(ss) - offsetof(sockaddr_un, sun_path);
        const std::size_t n = in.byte() % (room + 1);
        auto p = in.take(n);
        std::memcpy(sun->sun_path, p.data(), p.size());
        len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n);
        break;
    }
    default: {
        ss.ss_family = in.byte() % 2 == 0 ? AF_UNSPEC : AF_NETLINK;
        len = sizeof(sa_family_t) + in.byte() % 16;
        break;
    }
    }
    return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
}

// ---- v1 ----

struct v1_header {
    bool unknown = false;
    int family = AF_UNSPEC;
    std::array<unsigned char, 16> src{};
    std::array<unsigned char, 16> dst{};
    std::uint16_t sport = 0;
    std::uint16_t dport = 0;
};

// "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" or "PROXY UNKNOWN\r\n", nothing after.
std::optional<v1_header> decode_v1(std::string_view s) {
    if (s.size() > 107 || !s.starts_with("PROXY ") || !s.ends_with("\r\n")) {
        return std::nullopt;
    }
    s = s.substr(6, s.size() - 8);
    v1_header h;
    if (s == "UNKNOWN") {
        h.unknown = true;
        return h;
    }
    std::vector<std::string> f;
    std::size_t i = 0;
    while (true) {
        const auto sp = s.find(' ', i);
        f.emplace_back(s.substr(i, sp == std::string_view::npos ? sp : sp - i));
        if (sp == std::string_view::npos) {
            break;
        }
        i = sp + 1;
    }
    if (f.size() != 5) {
        return std::nullopt;
    }
    if (f[0] == "TCP4") {
        h.family = AF_INET;
    } else if (f[0] == "TCP6") {
        h.family = AF_INET6;
    } else {
        return std::nullopt;
    }
    if (inet_pton(h.family, f[1].c_str(), h.src.data()) != 1 ||
        inet_pton(h.family, f[2].c_str(), h.dst.data()) != 1) {
        return std::nullopt;
    }
    for (auto [text, port] : {std::pair{&f[3], &h.sport}, std::pair{&f[4], &h.dport}}) {
        // Decimal, no sign, no leading zero (the specification's grammar).
        if (text->empty() || (text->size() > 1 && (*text)[0] == '0')) {
            return std::nullopt;
        }
        unsigned v = 0;
        auto [p, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
        if (ec != std::errc() || p != text->data() + text->size() || v > 65535) {
            return std::nullopt;
        }
        *port = static_cast<std::uint16_t>(v);
    }
    return h;
}

// ---- v2 ----

struct v2_header {
    int command = -1; // 0 LOCAL, 1 PROXY
    int family = -1;  // the high nibble: 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX
    int transport = -1;
    std::string src; // raw address bytes (4, 16 or 108)
    std::string dst;
    std::uint16_t sport = 0;
    std::uint16_t dport = 0;
};

std::optional<v2_header> decode_v2(std::string_view s) {
    static constexpr unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                              0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    if (s.size() < 16 || std::memcmp(s.data(), sig, 12) != 0) {
        return std::nullopt;
    }
    const auto u = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
    if ((u(12) >> 4) != 2) {
        return std::nullopt; // version
    }
    v2_header h;
    h.command = u(12) & 0xf;
    h.family = u(13) >> 4;
    h.transport = u(13) & 0xf;
    const std::size_t len = std::size_t{u(14)} << 8 | u(15);
    if (s.size() != 16 + len) {
        return std::nullopt;
    }
    const auto body = s.substr(16);
    std::size_t addr = 0;
    bool ports = true;
    switch (h.family) {
    case 0:
        return len == 0 ? std::optional(h) : std::nullopt;
    case 1:
        addr = 4;
        break;
    case 2:
        addr = 16;
        break;
    case 3:
        addr = 108;
        ports = false;
        break;
    default:
        return std::nullopt;
    }
    const std::size_t need = 2 * addr + (ports ? 4 : 0);
    if (len != need) {
        return std::nullopt; // we send no TLVs, so nothing may follow the addresses
    }
    h.src = std::string(body.substr(0, addr));
    h.dst = std::string(body.substr(addr, addr));
    if (ports) {
        const auto b = [&](std::size_t i) { return static_cast<unsigned char>(body[i]); };
        h.sport = static_cast<std::uint16_t>(b(2 * addr) << 8 | b(2 * addr + 1));
        h.dport = static_cast<std::uint16_t>(b(2 * addr + 2) << 8 | b(2 * addr + 3));
    }
    return h;
}

std::string ip_bytes(const endpoint& e) {
    if (e.family() == AF_INET) {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(e.data());
        return {reinterpret_cast<const char*>(&sin->sin_addr), 4};
    }
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(e.data());
    return {reinterpret_cast<const char*>(&sin6->sin6_addr), 16};
}

// What v2 must carry for a Unix endpoint: sun_path as the address holds it (the bytes
// within its length, at most 108), zero-padded to 108.
std::string unix_bytes(const endpoint& e) {
    std::string out(108, '\0');
    const std::size_t off = offsetof(sockaddr_un, sun_path);
    const std::size_t n = e.size() > off ? std::min<std::size_t>(e.size() - off, 108) : 0;
    std::memcpy(out.data(), reinterpret_cast<const sockaddr_un*>(e.data())->sun_path, n);
    return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    input in(data, size);
    const endpoint src = make_endpoint(in);
    const endpoint dst = make_endpoint(in);
    const bool same = src.family() == dst.family();

    // v1
    const std::string t1 = zcio::proxy_header_v1(src, dst);
    const auto h1 = decode_v1(t1);
    ZCIO_FUZZ_CHECK(h1.has_value());
    if (same && src.is_ip()) {
        ZCIO_FUZZ_CHECK(!h1->unknown && h1->family == src.family());
        const std::size_t n = src.family() == AF_INET ? 4 : 16;
        ZCIO_FUZZ_CHECK(std::string(reinterpret_cast<const char*>(h1->src.data()), n) ==
                        ip_bytes(src));
        ZCIO_FUZZ_CHECK(std::string(reinterpret_cast<const char*>(h1->dst.data()), n) ==
                        ip_bytes(dst));
        ZCIO_FUZZ_CHECK(h1->sport == src.port() && h1->dport == dst.port());
    } else {
        ZCIO_FUZZ_CHECK(h1->unknown);
    }

    // v2
    const std::string t2 = zcio::proxy_header_v2(src, dst);
    const auto h2 = decode_v2(t2);
    ZCIO_FUZZ_CHECK(h2.has_value());
    if (same && src.is_ip()) {
        ZCIO_FUZZ_CHECK(h2->command == 1 && h2->transport == 1);
        ZCIO_FUZZ_CHECK(h2->family == (src.family() == AF_INET ? 1 : 2));
        ZCIO_FUZZ_CHECK(h2->src == ip_bytes(src) && h2->dst == ip_bytes(dst));
        ZCIO_FUZZ_CHECK(h2->sport == src.port() && h2->dport == dst.port());
    } else if (same && src.is_unix()) {
        ZCIO_FUZZ_CHECK(h2->command == 1 && h2->family == 3 && h2->transport == 1);
        ZCIO_FUZZ_CHECK(h2->src == unix_bytes(src) && h2->dst == unix_bytes(dst));
    } else {
        ZCIO_FUZZ_CHECK(h2->command == 0 && h2->family == 0 && h2->transport == 0);
    }
    return 0;
}
