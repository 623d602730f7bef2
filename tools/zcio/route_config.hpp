// Routes of `zcio proxy`: from command-line flags or a TOML file of [[route]] tables.
#pragma once

#include "address_prefix.hpp"
#include "udp_route.hpp"

#include <zcio/balancer.hpp>
#include <zcio/copy.hpp>
#include <zcio/endpoint.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace zcio::cli {

enum class proxy_header { none, v1, v2 };

// Accepting PROXY headers on a TCP route (proxy_accept.cpp): every client must start
// with one, and it names the client that logs, metrics, balancing and an outgoing
// header carry.
struct accept_proxy_options {
    bool enabled = false;
    std::vector<address_prefix> from; // peers allowed to send one; empty: any peer
    // A peer outside `from`: refused (the default), or served as a plain client whose
    // bytes are relayed as they come, with its own address (proxy_unlisted = "direct":
    // a balancer's clients and direct ones on the same port).
    bool unlisted_direct = false;
    std::chrono::nanoseconds header_timeout = std::chrono::seconds(3);
};

struct route_options {
    copy_path engine = copy_path::automatic; // automatic | splice | buffer
    std::size_t pipe_size = 0;               // 0: the pool's default (1 MiB)
    // Absent: what the open-file limit allows (default_max_connections()); 0: no limit.
    std::optional<std::uint64_t> max_connections;
    // Bounded by default so a peer that goes silent cannot hold a connection forever;
    // zero: never.
    std::chrono::nanoseconds idle_timeout = std::chrono::hours(1);
    std::chrono::nanoseconds connect_timeout = std::chrono::seconds(10);
    std::uint64_t rate_limit = 0; // bytes per second per direction; 0: unlimited
    proxy_header proxy_protocol = proxy_header::none;
    accept_proxy_options accept_proxy;
};

// One `upstream` item: an address or a name (every address of it, tried with Happy
// Eyeballs) and its weight, backup and drain (see upstream_server).
struct upstream_entry {
    std::string text;        // as written, for logs
    endpoint_list addresses; // every address it resolved to
    unsigned weight = 1;
    bool backup = false;
    bool drain = false;
};

// How a route spreads its clients over its upstreams and watches their health.
struct balance_options {
    balance_policy policy = balance_policy::round_robin;
    passive_health passive;       // max_fails, fail_timeout
    unsigned connect_retries = 2; // further servers tried after a failed connect
    // Active checks: a TCP connect to every server this often; 0: none.
    std::chrono::nanoseconds health_interval{0};
    active_health active; // rise, fall
};

// Weights above this are refused (HAProxy's bound).
inline constexpr unsigned max_upstream_weight = 256;

struct route {
    std::string name;             // for logs and metrics
    std::vector<endpoint> listen; // every port of every --listen
    std::vector<std::string> listen_text;
    // The first upstream item's addresses (a UDP route has only it; a TCP route
    // balances over `upstreams`).
    endpoint_list upstream;
    std::vector<upstream_entry> upstreams;
    balance_options balance;
    route_options options;
    // `protocol = "udp"` or a `udp:` listen prefix: datagram sessions (udp_route.hpp).
    route_protocol protocol = route_protocol::tcp;
    udp_route_options udp;
};

// Settings that belong to the whole process rather than one route.
// Busy polling longer than this only burns CPU: a reply that takes longer is better
// waited for asleep.
inline constexpr std::chrono::milliseconds busy_poll_limit{10};

struct global_options {
    std::optional<std::size_t> threads;
    std::optional<endpoint> metrics;
    std::optional<std::chrono::nanoseconds> drain_timeout;
    // Busy polling of each loop after work (event_loop::set_busy_poll); 0 = off; at
    // most busy_poll_limit.
    std::optional<std::chrono::nanoseconds> busy_poll;
};

struct proxy_config {
    std::vector<route> routes;
    global_options global;
};

// A config is kilobytes: a larger file is refused before it is parsed (a 20 MB one
// took 708 MB and 4 s to parse).
inline constexpr std::uint64_t max_config_bytes = 1 << 20;
// Nesting of dotted keys, tables, arrays and inline tables ([[route]] is 2): refused
// beyond this before parsing, because the parser recurses (docs/proxy.md).
inline constexpr std::size_t max_config_depth = 32;

// Loads a TOML file: a regular file (a FIFO or a device is refused, never waited on)
// of at most max_config_bytes, nested at most max_config_depth deep. Throws
// usage_error with one line: "FILE:LINE: KEY: what is wrong", also when two routes (or
// one route twice) would listen on one address or two routes share a name.
proxy_config load_config_file(const std::string& path);

// The addresses one listen item takes: `first` (with the first port) up to `last_port`
// on the same address; last_port == first.port() for a single address.
struct listen_span {
    endpoint first;
    std::uint16_t last_port = 0;
};
listen_span span_of(const std::vector<endpoint>& eps); // as parse_listen returns them

// The first address both spans would listen on, if the kernel would refuse one of the
// binds: equal addresses, or the wildcard and any other address of its family, on a
// shared port. Port 0 (the kernel picks a free port) never overlaps; Unix addresses
// overlap when equal. IPv4 against IPv6 is left to the bind (net.ipv6.bindv6only).
std::optional<endpoint> listen_overlap(const listen_span& a, const listen_span& b);

// Every server of `r`'s upstreams, one per item (a name's addresses are one server),
// in the order written.
std::vector<upstream_server> servers_of(const route& r);
// "a:1, b:2 (backup)" for the "listening on" line.
std::string upstreams_text(const route& r);

// One --upstream flag: "ADDR" or "ADDR,weight=N,backup,drain". Throws usage_error.
upstream_entry parse_upstream_flag(std::string_view text);
// Refuses what no route can run with: no upstream, every weight 0, port 0.
// `where` prefixes the message ("route[0].upstream" or "--upstream").
void check_upstreams(const std::vector<upstream_entry>& list, std::string_view where);
// A --balance value or a balance key; throws usage_error naming `what`.
balance_policy parse_balance(std::string_view text, std::string_view what);

// Shared with the flag parser: throw usage_error naming `what`.
copy_path parse_engine(std::string_view text, std::string_view what);
proxy_header parse_proxy_header(std::string_view text, std::string_view what);
const char* to_string(proxy_header h) noexcept;

} // namespace zcio::cli
