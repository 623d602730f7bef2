// Parsing helpers shared by the subcommands: sizes, durations, listen specs.
#pragma once

#include <zcio/endpoint.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace zcio::cli {

// A mistake in what the user typed: one line on stderr, exit code 2.
struct usage_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A failure while running (port in use, permission denied): one line, exit code 1.
struct runtime_failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// "65536", "64K", "64KiB", "1M", "1MiB", "2G" (binary multiples). Throws usage_error
// naming `what`; a decimal ("1.5M") is refused with the whole size to type instead
// ("use 1536K") when there is one.
std::uint64_t parse_size(std::string_view text, std::string_view what);

// "10", "10s", "250ms", "1.5s", "2m". Throws usage_error naming `what`.
std::chrono::nanoseconds parse_duration(std::string_view text, std::string_view what);

// One endpoint; throws usage_error with the parser's message.
endpoint parse_endpoint(std::string_view text);
// Every address of one text (endpoint_list::resolve), for connects; throws usage_error.
endpoint_list parse_endpoint_list(std::string_view text);

// An address to listen on. Without a host ("8080" or ":8080") it is loopback
// (127.0.0.1): listening on every interface must be asked for by name (0.0.0.0:8080
// or [::]:8080), never be what a forgotten host gives. "*" is refused for the same
// reason (the resolver turns it into an arbitrary address).
endpoint parse_listen_endpoint(std::string_view text);

// A listen spec: as parse_listen_endpoint, or an IP endpoint with a port range
// "HOST:A-B" (or ":A-B", loopback) that expands to every port of it.
// A host name gives every address it resolves to, each with every port, address by
// address (split_by_address() groups them).
std::vector<endpoint> parse_listen(std::string_view text);
// "systemd:NAME" listen addresses: the resolver gives the address of the socket systemd
// passed under NAME, or throws usage_error (systemd_activation.cpp installs it). Without
// one, such an address is refused.
using named_listen_resolver = endpoint (*)(std::string_view name);
void set_named_listen_resolver(named_listen_resolver resolver);
// parse_listen's result, one group per address (each a single port or a port range).
std::vector<std::vector<endpoint>> split_by_address(const std::vector<endpoint>& eps);

// Throws runtime_failure when an IP address with a fixed port is already in use.
// SO_REUSEPORT lets any process of the same user bind a port that already has such a
// listener, and the kernel then splits the clients between the two: a second zcio on
// a busy port would start "fine" and get part of the traffic. A probe bind without
// SO_REUSEPORT fails with EADDRINUSE in that case.
void ensure_port_free(const endpoint& ep);

// Descriptors the proxy keeps out of every budget: the metrics endpoint (its listener
// and at most 8 connections), the loops' epoll, eventfd and timerfd descriptors, the
// signalfd, logs, the probe socket of ensure_port_free, a config being read.
inline constexpr std::uint64_t descriptor_reserve = 64;

// The soft RLIMIT_NOFILE, or nullopt when there is none (RLIM_INFINITY). Read once.
std::optional<std::uint64_t> descriptor_limit();

// Descriptors open in the process now (/proc/self/fd).
std::uint64_t open_descriptors();

// The connection limit, across all routes, when a route gives none: the descriptors
// left under the soft RLIMIT_NOFILE after the reserve and the `listeners` the running
// config holds, halved (a proxied connection holds two descriptors, a client and an
// upstream; pipes are borrowed only while bytes move and come out of the reserve).
// Past it a client is refused at once instead of the process running out of
// descriptors mid-connect. 0: no limit (no RLIMIT_NOFILE).
std::uint64_t default_max_connections(std::uint64_t listeners);

// "12.3 MiB", "1.00 GiB"...
std::string human_bytes(double bytes);

} // namespace zcio::cli
