// udp_forward: forwards datagrams between the clients of one UDP socket and an upstream,
// with a session per client address.
//
// Each session owns a UDP socket connected to the upstream, so the kernel sorts the
// replies by session (a reply arrives on its client's socket) and leaves them on the
// listening socket toward that client. A session is ended by `session_timeout` without a
// datagram either way, by `responses` (once every request had its replies), or by an
// ICMP error from the upstream (ECONNREFUSED). Both legs use recvmmsg / sendmmsg, with
// UDP_GRO on receive and UDP_SEGMENT (GSO) on send where the kernel has them (detected
// at run time, as udp_echo does), one datagram per message otherwise.
//
// Memory follows data: an idle session holds its socket, its loop registration and a
// table entry, 216 bytes of user space together, no buffer. The buffers belong to two
// batches per forwarder (one per direction), allocated once and touched only where
// datagrams land.
//
// PROXY protocol v2 (HAProxy's specification, section 2.2) has a datagram form: family
// and transport byte 0x12 (IPv4, DGRAM) or 0x22 (IPv6, DGRAM), a header in front of
// every datagram. With `send_proxy_v2` each datagram toward the upstream carries one
// (unbound's proxy-protocol-port reads it); with `accept_proxy_v2` each datagram from a
// client must start with one, which is checked strictly, stripped, and names the
// original client (a datagram without a valid header is dropped and counted).
#pragma once

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/task.hpp>
#include <zcio/udp_echo.hpp>
#include <zcio/udp_socket.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>

namespace zcio {

// ---- PROXY protocol v2, datagram form ----

// The longest header proxy_v2_datagram_header() writes: 16 bytes of fixed part plus
// 36 of IPv6 addresses.
inline constexpr std::size_t proxy_v2_datagram_max = 52;

// Writes the v2 header for a datagram from `source` to `destination` into `out` and
// returns its length: PROXY with 0x12 (both IPv4) or 0x22 (both IPv6); LOCAL with
// AF_UNSPEC (16 bytes, no address) for any other pair, as the specification asks.
std::size_t proxy_v2_datagram_header(const endpoint& source, const endpoint& destination,
                                     std::span<std::byte, proxy_v2_datagram_max> out) noexcept;

// What a v2 header at the start of a datagram says.
struct proxy_v2_datagram {
    std::size_t header_size = 0; // the payload starts here
    bool local = false;          // LOCAL: no address (health checks); use the real peer
    endpoint source;             // PROXY: the original client
    endpoint destination;
};

// Parses the v2 header at the start of `datagram`, strictly: the signature, version 2,
// command LOCAL or PROXY; with PROXY the family must be 0x12 or 0x22 (a datagram, IPv4
// or IPv6) and the length must hold the addresses; the length must fit in the datagram
// (TLVs after the addresses are skipped). Anything else is nullopt: the caller drops the
// datagram. Never reads past `datagram`.
std::optional<proxy_v2_datagram>
parse_proxy_v2_datagram(std::span<const std::byte> datagram) noexcept;

// ---- the forwarder ----

struct udp_forward_options {
    // Where sessions send. The upstream of one client is chosen by choose_upstream()
    // when it is set (the seam for a balancer: client-hash keeps a client on its
    // server), by `upstream` otherwise.
    endpoint upstream;
    std::function<endpoint(const endpoint& client)> choose_upstream;
    // Sessions at most; 0: what the open-file limit leaves (udp_default_max_sessions).
    // A full table drops new clients' datagrams (counted in dropped_table_full); it
    // never evicts a session.
    std::size_t max_sessions = 0;
    // A session ends after this long without a datagram either way; zero: never.
    clock::duration session_timeout = std::chrono::seconds(30);
    // 0: unlimited. N: a session ends once the upstream sent N datagrams for every
    // datagram the client sent (as nginx's proxy_responses; 1 for DNS).
    std::uint32_t responses = 0;
    // Prepend a PROXY v2 datagram header to each datagram sent upstream.
    bool send_proxy_v2 = false;
    // Require, check and strip a PROXY v2 header on each datagram from a client.
    bool accept_proxy_v2 = false;
    // Datagrams per recvmmsg / sendmmsg, 1 to 1024.
    std::size_t batch = 64;
    // Bytes of each receive buffer; a longer datagram is cut by the kernel (MSG_TRUNC),
    // counted in dropped_truncated and never forwarded. UDP_GRO is used only when this
    // is at least 65536 (a coalesced buffer must never be cut).
    std::size_t datagram_buffer = 65536;
    // UDP_GRO on receive and UDP_SEGMENT on send, on both legs.
    udp_offload gso = udp_offload::automatic;
    // Datagrams moved before the forwarder lets the loop's other tasks run once.
    std::size_t yield_after = 1024;
};

// What a forwarder did. Written by its loop's thread only, read from any thread (the
// counters are atomics written with plain relaxed stores: one writer, no RMW cost).
struct udp_forward_counters {
    std::atomic<std::uint64_t> sessions_active{0};
    std::atomic<std::uint64_t> sessions_created{0};
    std::atomic<std::uint64_t> sessions_expired{0};   // session_timeout
    std::atomic<std::uint64_t> sessions_refused{0};   // ICMP port unreachable (ECONNREFUSED)
    std::atomic<std::uint64_t> sessions_completed{0}; // responses reached
    std::atomic<std::uint64_t> datagrams_to_upstream{0};
    std::atomic<std::uint64_t> bytes_to_upstream{0}; // as sent, PROXY header included
    std::atomic<std::uint64_t> datagrams_to_client{0};
    std::atomic<std::uint64_t> bytes_to_client{0};
    // Drops, by reason.
    std::atomic<std::uint64_t> dropped_table_full{0};      // no room for a new session
    std::atomic<std::uint64_t> dropped_truncated{0};       // longer than datagram_buffer
    std::atomic<std::uint64_t> dropped_proxy_header{0};    // accept_proxy_v2: bad or missing
    std::atomic<std::uint64_t> dropped_no_socket{0};       // a session's socket failed (EMFILE...)
    std::atomic<std::uint64_t> dropped_send{0};            // the kernel refused or had no room
    std::atomic<std::uint64_t> dropped_after_responses{0}; // replies past `responses`
    std::atomic<bool> gro{false};
    std::atomic<bool> gso{false};
};

// Sessions a forwarder may open when max_sessions is 0: the soft RLIMIT_NOFILE less the
// descriptors open now and a reserve of 64, at least 1 (1,048,576 without a limit).
std::size_t udp_default_max_sessions() noexcept;

// Forwards until the task is destroyed (cancellation: with_cancel, with_timeout, or the
// loop going away), which closes the listening socket and every session, or until the
// listening socket fails in a way reading cannot go on from; then it returns that
// error. `counters` must outlive the task. With options.gso == on it fails at once with
// ENOPROTOOPT when the kernel lacks UDP_GRO or UDP_SEGMENT.
task<result<void>> udp_forward(udp_socket listener, udp_forward_options options,
                               udp_forward_counters* counters);

} // namespace zcio
