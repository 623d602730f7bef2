// Address prefixes for accept_proxy_from.
#include "address_prefix.hpp"

#include "cli_util.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>
#include <string>

namespace zcio::cli {

namespace {

void clear_host_bits(address_prefix& p) noexcept {
    const unsigned total = p.family == AF_INET ? 32 : 128;
    for (unsigned bit = p.bits; bit < total; ++bit) {
        p.addr[bit / 8] &= static_cast<unsigned char>(~(0x80u >> (bit % 8)));
    }
}

bool bits_equal(const unsigned char* a, const unsigned char* b, unsigned bits) noexcept {
    const unsigned whole = bits / 8;
    if (std::memcmp(a, b, whole) != 0) {
        return false;
    }
    const unsigned rest = bits % 8;
    if (rest == 0) {
        return true;
    }
    const auto mask = static_cast<unsigned char>(0xff00u >> rest);
    return (a[whole] & mask) == (b[whole] & mask);
}

} // namespace

address_prefix parse_address_prefix(std::string_view text, std::string_view what) {
    const auto bad = [&](const std::string& why) {
        return usage_error(std::string(what) + ": \"" + std::string(text) + "\" " + why);
    };
    const auto slash = text.find('/');
    std::string addr(text.substr(0, slash));
    if (addr.size() > 2 && addr.front() == '[' && addr.back() == ']') {
        addr = addr.substr(1, addr.size() - 2);
    }
    address_prefix p;
    if (::inet_pton(AF_INET, addr.c_str(), p.addr.data()) == 1) {
        p.family = AF_INET;
    } else if (::inet_pton(AF_INET6, addr.c_str(), p.addr.data()) == 1) {
        p.family = AF_INET6;
    } else {
        throw bad("is not an IP address or prefix (e.g. 10.0.0.0/8, ::1/128)");
    }
    const unsigned total = p.family == AF_INET ? 32 : 128;
    p.bits = total;
    if (slash != std::string_view::npos) {
        const std::string_view n = text.substr(slash + 1);
        unsigned v = 0;
        if (n.empty() || n.size() > 3 || (n.size() > 1 && n[0] == '0')) {
            throw bad("has a bad prefix length (0 to " + std::to_string(total) + ")");
        }
        for (char c : n) {
            if (c < '0' || c > '9') {
                throw bad("has a bad prefix length (0 to " + std::to_string(total) + ")");
            }
            v = v * 10 + static_cast<unsigned>(c - '0');
        }
        if (v > total) {
            throw bad("has a prefix length past " + std::to_string(total));
        }
        p.bits = v;
    }
    clear_host_bits(p);
    return p;
}

bool prefix_contains(const address_prefix& p, const endpoint& peer) noexcept {
    if (peer.family() == AF_INET) {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(peer.data());
        return p.family == AF_INET &&
               bits_equal(p.addr.data(), reinterpret_cast<const unsigned char*>(&sin->sin_addr),
                          p.bits);
    }
    if (peer.family() != AF_INET6) {
        return false;
    }
    const auto* a = reinterpret_cast<const sockaddr_in6*>(peer.data())->sin6_addr.s6_addr;
    if (p.family == AF_INET6) {
        return bits_equal(p.addr.data(), a, p.bits);
    }
    static constexpr unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(a, mapped, sizeof mapped) == 0 && bits_equal(p.addr.data(), a + 12, p.bits);
}

} // namespace zcio::cli
