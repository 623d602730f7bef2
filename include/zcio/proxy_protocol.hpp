// PROXY protocol headers (HAProxy's specification, v1 text and v2 binary): tell an
// upstream the client's address that a proxy hides.
#pragma once

#include <zcio/endpoint.hpp>

#include <cstddef>
#include <string>

namespace zcio {

// v1: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n" (TCP6 for IPv6); "PROXY UNKNOWN\r\n"
// when either address is not IP or the families differ.
std::string proxy_header_v1(const endpoint& source, const endpoint& destination);

// v2: the 12-byte signature, version 2 + PROXY command, the family and protocol byte,
// the length, and the addresses (IPv4 12 bytes, IPv6 36, Unix 216). Mixed or other
// families give the LOCAL command with no address, as the specification asks.
std::string proxy_header_v2(const endpoint& source, const endpoint& destination);

} // namespace zcio
