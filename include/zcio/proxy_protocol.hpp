// PROXY protocol headers (HAProxy's specification, v1 text and v2 binary): tell an
// upstream the client's address that a proxy hides.
#pragma once

#include <zcio/endpoint.hpp>

#include <cstddef>
#include <span>
#include <string>

namespace zcio {

// v1: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n" (TCP6 for IPv6); "PROXY UNKNOWN\r\n"
// when either address is not IP or the families differ.
std::string proxy_header_v1(const endpoint& source, const endpoint& destination);

// v2: the 12-byte signature, version 2 + PROXY command, the family and protocol byte,
// the length, and the addresses (IPv4 12 bytes, IPv6 36, Unix 216). Mixed or other
// families give the LOCAL command with no address, as the specification asks.
std::string proxy_header_v2(const endpoint& source, const endpoint& destination);

// ---- accepting: a strict, stateless decoder (src/transfer/proxy_decode.cpp) ----

// The longest v1 header, CRLF included (the specification's bound).
inline constexpr std::size_t proxy_v1_max = 107;
// The longest v2 header accepted: 16 fixed bytes plus addresses (216 for Unix) and TLVs.
// HAProxy reads a header into one buffer too; real fronts send well under 1 KiB (AWS
// NLB's TLVs are about 60 bytes), so a longer one is refused rather than buffered.
inline constexpr std::size_t proxy_v2_max = 4096;

enum class proxy_decode_status { need_more, header, malformed };
enum class proxy_command { local, proxy };

struct proxy_header_info {
    int version = 0; // 1 or 2
    // v2's command. v1 is always PROXY; "PROXY UNKNOWN" has no addresses.
    proxy_command command = proxy_command::proxy;
    int transport = 1; // v2's low nibble of byte 13: 0 UNSPEC, 1 STREAM, 2 DGRAM
    // The original client and the address it connected to; AF_UNSPEC (a default
    // endpoint) when the header names none (LOCAL, UNKNOWN, family UNSPEC): the
    // receiver then uses the real connection's addresses.
    endpoint source;
    endpoint destination;
    std::size_t size = 0; // bytes of the header: the client's data starts after them
};

struct proxy_decode_result {
    proxy_decode_status status = proxy_decode_status::need_more;
    proxy_header_info header;     // status == header
    const char* reason = nullptr; // status == malformed: a static string, one line
};

// Decodes the PROXY header at the start of `bytes` (v1 or v2, told by the first byte):
//  - need_more: `bytes` is a strict prefix of a header that may still be valid;
//  - header: a complete, valid header of `header.size` bytes (what follows is not read);
//  - malformed: no valid header can start with these bytes, `reason` says why.
// v1 is the exact grammar "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n" (addresses as
// inet_pton reads them, ports decimal without leading zeros, single spaces) or
// "PROXY UNKNOWN...\r\n", at most proxy_v1_max bytes. v2: the signature, version 2,
// command LOCAL or PROXY, family UNSPEC/INET/INET6/UNIX with transport UNSPEC/STREAM/
// DGRAM, a length that holds the family's addresses and ends within proxy_v2_max, and
// TLVs after the addresses each inside the length (skipped, never trusted). A LOCAL
// header's body is ignored, as the specification asks. Never reads past `bytes`.
proxy_decode_result decode_proxy_header(std::span<const std::byte> bytes) noexcept;

// Whether `bytes` start with a whole PROXY signature ("PROXY " or v2's 12 bytes): a
// second header right after the first is refused on this.
bool starts_with_proxy_signature(std::span<const std::byte> bytes) noexcept;

} // namespace zcio
