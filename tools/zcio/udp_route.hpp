// UDP routes of `zcio proxy`: their options and keys, and the forwarders (zcio::
// udp_forward) that serve them, one per listen address and event loop.
#pragma once

#include <zcio/zcio.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace zcio::cli {

struct route;
struct loop_ctx;

enum class route_protocol { tcp, udp };

struct udp_route_options {
    // Sessions at most for the route, split evenly over the event loops (each loop's
    // forwarder takes its share, rounded up). Absent: what the descriptor limit leaves.
    std::optional<std::uint64_t> max_sessions;
    std::chrono::nanoseconds session_timeout = std::chrono::seconds(30); // 0: never
    std::uint32_t responses = 0;                                         // 0: unlimited
    bool accept_proxy = false; // require and strip a PROXY v2 datagram header
    friend bool operator==(const udp_route_options&, const udp_route_options&) = default;
};

// Keys (and flags) that belong to one protocol only.
inline constexpr std::string_view udp_only_keys[] = {"session_timeout", "max_sessions",
                                                     "responses"};
inline constexpr std::string_view tcp_only_keys[] = {"engine",
                                                     "pipe_size",
                                                     "max_connections",
                                                     "idle_timeout",
                                                     "connect_timeout",
                                                     "rate_limit",
                                                     "balance",
                                                     "max_fails",
                                                     "fail_timeout",
                                                     "connect_retries",
                                                     "health_interval",
                                                     "rise",
                                                     "fall",
                                                     "accept_proxy_from",
                                                     "proxy_header_timeout"};

// "udp:ADDR" becomes "ADDR" (returns true); anything else is left alone.
bool strip_udp_prefix(std::string& text);
// "tcp" or "udp"; throws usage_error naming `what` otherwise.
route_protocol parse_protocol(std::string_view text, std::string_view what);

// Why `key` may not be on a route of `protocol`, or empty when it may.
std::string misplaced_key(route_protocol protocol, std::string_view key);

// Checks what a UDP route needs beyond its keys (IP addresses, PROXY v2 only); throws
// usage_error with `where` ("route[0]." or "--") before the key.
void check_udp_route(const route& r, std::string_view where);

// One forwarder on one loop, kept for its counters after it stops (they survive
// reloads). The cancel source is its loop's.
struct udp_forwarder_slot {
    udp_forward_counters counters;
    cancel_source cancel;
};

// One listen address of one UDP route, served on every loop (SO_REUSEPORT: the
// kernel hashes a client's address to one loop, so a client keeps its session).
struct udp_instance {
    std::string route_name;
    std::string fingerprint; // equal in two configs: a reload keeps it running
    std::string upstream_text;
    endpoint wanted; // as configured (port 0 included)
    endpoint bound;
    udp_forward_options options;
    std::vector<std::shared_ptr<udp_forwarder_slot>> slots; // by loop
    std::vector<int> fds; // the forwarders' sockets, by loop (valid while running)
    // Bound but not started yet (a reload that may still fail), by loop.
    std::vector<std::unique_ptr<udp_socket>> pending;
};

class udp_routes {
public:
    explicit udp_routes(std::vector<loop_ctx*> loops) : loops_(std::move(loops)) {}
    ~udp_routes() = default;
    udp_routes(const udp_routes&) = delete;
    udp_routes& operator=(const udp_routes&) = delete;

    // What a config needs: instances kept from the running set, and fresh ones bound
    // on every loop (throws runtime_failure naming the address, having closed what it
    // bound). `running`: the loops run (binds go through them).
    struct plan {
        std::vector<std::shared_ptr<udp_instance>> next; // kept and fresh, in config order
        std::vector<std::string> ready;                  // "listening on" lines
    };
    plan prepare(const std::vector<route>& routes, bool running);
    // Starts the fresh instances of `p` and stops the running ones it does not keep.
    void commit(plan p, bool running);
    // Closes what an uncommitted plan bound.
    void discard(plan& p, bool running);
    // Stops every forwarder (their loops close the sockets and sessions).
    void stop();

    void write_metrics(std::ostringstream& out) const;
    // The running forwarders' sockets ("udp:ADDR", descriptor): main thread, which
    // alone commits and stops them (a socket closes only after its slot is cancelled).
    std::vector<std::pair<std::string, int>> socket_fds() const;

private:
    void bind_instance(udp_instance& inst, bool running);
    void close_pending(udp_instance& inst, bool running);

    std::vector<loop_ctx*> loops_;
    std::vector<std::shared_ptr<udp_instance>> running_;
    mutable std::mutex mutex_; // guards by_route_ (the map, not the counters)
    std::map<std::string, std::vector<std::shared_ptr<udp_forwarder_slot>>> by_route_;
};

} // namespace zcio::cli
