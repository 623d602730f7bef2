// accept_proxy on TCP routes: the PROXY header (v1 or v2) every client of the route
// sends first, read before the upstream is connected.
#pragma once

#include <zcio/zcio.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>

namespace zcio::cli {

struct route_runtime;

// Why a client was closed for its header (zcio_proxy_header_refused_total's reason).
enum class header_refusal { unlisted_peer, malformed, timeout, closed, duplicate };
inline constexpr std::size_t header_refusal_count = 5;
const char* to_string(header_refusal r) noexcept;

// route_stats' counters of accept_proxy.
struct accept_proxy_counters {
    std::atomic<std::uint64_t> accepted{0};
    std::atomic<std::uint64_t> direct{0}; // unlisted peers served without a header
    std::array<std::atomic<std::uint64_t>, header_refusal_count> refused{};
};

// What a header said: the original client and the address it connected to. For LOCAL,
// "PROXY UNKNOWN" and family UNSPEC: the real peer, and no destination (AF_UNSPEC).
struct accepted_client {
    endpoint source;
    endpoint destination;
};

// Reads the header off `client` (connected from `peer`): peeks until a whole one is
// there, then receives exactly its bytes, so what follows stays in the socket for the
// relay (splice included). Refused, counted and logged once at warn (nothing returned;
// the caller closes): a peer outside accept_proxy_from, a malformed header, none
// complete within proxy_header_timeout, a close before it, or a second signature right
// after it.
task<std::optional<accepted_client>> accept_proxy_header(route_runtime& rt, stream& client,
                                                         const endpoint& peer);

} // namespace zcio::cli
