// Address prefixes ("10.0.0.0/8", "::1/128", "192.0.2.7"): who may send a PROXY header
// (accept_proxy_from).
#pragma once

#include <zcio/endpoint.hpp>

#include <array>
#include <string_view>

namespace zcio::cli {

struct address_prefix {
    int family = 0;                       // AF_INET or AF_INET6
    std::array<unsigned char, 16> addr{}; // the network, host bits cleared
    unsigned bits = 0;
};

// "ADDR/BITS" or "ADDR" (all bits). Throws usage_error naming `what`: one line.
address_prefix parse_address_prefix(std::string_view text, std::string_view what);

// Whether `peer`'s address is inside `p`. An IPv4-mapped IPv6 peer (::ffff:a.b.c.d,
// what a dual-stack listener reports) matches IPv4 prefixes. Unix peers match none.
bool prefix_contains(const address_prefix& p, const endpoint& peer) noexcept;

} // namespace zcio::cli
