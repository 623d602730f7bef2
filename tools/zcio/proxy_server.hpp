// The `zcio proxy` engine: routes served by one event loop per thread.
#pragma once

#include "proxy_accept.hpp"
#include "route_config.hpp"
#include "udp_route.hpp"

#include <zcio/zcio.hpp>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace zcio::cli {

// What one loop's pools of one route hold, copied out by the loop itself twice a
// second so the metrics thread never reads a pool.
struct pool_gauges {
    std::atomic<std::uint64_t> pipes_leased{0};
    std::atomic<std::uint64_t> pipes_idle{0};
    std::atomic<std::uint64_t> buffers_leased{0};
    std::atomic<std::uint64_t> buffers_idle{0};
};

// One route on one event loop. Each route has its own pools on every loop, so that
// the pools' own counters say what each route leases (counting leases per route in
// shared pools would need a hook in the pools' lease path); the price is that idle
// pipes and buffers are not shared between routes.
struct route_loop_state {
    transfer_pools pools; // only its loop touches them
    pool_gauges gauges;   // written by its loop, read by the metrics thread
    bool in_use = true;   // in the running config (loop's own; a removed route's idle
                          // pipes and buffers are freed)
    // Pool activity at the last tick, and ticks in a row without a lease: idle pipes
    // and buffers are freed after a quiet second (loop's own).
    std::uint64_t lent_at_tick = 0;
    unsigned quiet_ticks = 0;
};

// Connections of every route against the descriptors of the process: a route without
// max_connections is refused a client once `open` reaches its maximum (set from
// default_max_connections(); 0: none). Each route's own limit counts in it.
struct connection_budget {
    connection_limit open; // proxied connections of all routes
};

struct upstream_group;

// One route (by name), shared by every loop, kept for the life of the process so
// counters survive reloads and pools outlive the connections that lease from them.
// The counters are relaxed atomics touched once per connection, or once per loop
// tick for the byte counts (never per byte or per system call).
struct route_stats {
    route_stats(std::size_t loops, connection_budget& budget)
        : active(0, &budget.open), per_loop(std::make_unique<route_loop_state[]>(loops)) {}

    std::atomic<std::uint64_t> connections_total{0};
    // Open now (zcio_connections_active): the route's max_connections, or the budget's
    // maximum when it has none.
    connection_limit active;
    std::atomic<std::uint64_t> connections_refused{0};
    std::atomic<std::uint64_t> bytes_client_to_upstream{0};
    std::atomic<std::uint64_t> bytes_upstream_to_client{0};
    std::atomic<std::uint64_t> upstream_connect_failures{0};
    std::atomic<std::uint64_t> upstream_connect_timeouts{0};
    // Clients closed at once because no server could be reached (all down or failed).
    std::atomic<std::uint64_t> upstream_unavailable{0};
    accept_proxy_counters proxy_accept; // accept_proxy routes' headers
    // The route's servers now (metrics read them; a reload replaces them).
    std::shared_ptr<upstream_group> current_upstreams() const {
        std::lock_guard lock(upstreams_mutex);
        return upstreams;
    }
    void set_upstreams(std::shared_ptr<upstream_group> g) {
        std::lock_guard lock(upstreams_mutex);
        upstreams = std::move(g);
    }
    mutable std::mutex upstreams_mutex;
    std::mutex health_mutex;                      // every upstream_group of the route
    std::shared_ptr<upstream_group> upstreams;    // guarded by upstreams_mutex
    std::unique_ptr<route_loop_state[]> per_loop; // indexed by loop
};

// A route's servers and their balancer, shared by every loop (under `mutex`: a choice
// is a few dozen nanoseconds, once per connection). A reload makes a new group that
// inherits the state of the servers that stay; `retired` then stops the old group's
// health checks.
struct upstream_group {
    upstream_group(std::vector<upstream_server> servers, const balance_options& o,
                   std::mutex& route_mutex)
        : mutex(route_mutex), set(std::move(servers), o.policy, o.passive), options(o) {
        for (std::size_t i = 0; i < set.size(); ++i) {
            labels.push_back(set.server(i).address.to_string());
        }
    }

    // The route's (route_stats::health_mutex): the groups before and after a reload
    // share the servers that stay, and so their lock.
    std::mutex& mutex;
    upstream_set set; // guarded by `mutex`
    const balance_options options;
    std::vector<std::string> labels; // each server's address, for logs and metrics
    std::atomic<bool> retired{false};
};

struct route_runtime {
    route config;
    std::shared_ptr<route_stats> stats;
    std::shared_ptr<upstream_group> upstreams; // set with `stats`, on commit
};

struct loop_ctx;

// One listening socket for a take-over (takeover.hpp): a dup, and its address.
struct handed_socket {
    std::string name;
    unique_fd fd;
};

class proxy_server {
public:
    proxy_server(proxy_config cfg, std::size_t threads);
    ~proxy_server();
    proxy_server(const proxy_server&) = delete;
    proxy_server& operator=(const proxy_server&) = delete;

    // Binds every listener (throws runtime_failure naming the address) and starts the
    // threads. Logs "listening on ADDR" once per address.
    void start();

    // Stops accepting, waits up to `timeout` for open connections to finish, then
    // closes the rest and stops the loops. Called from the main thread.
    void drain(std::chrono::nanoseconds timeout);

    // Applies a new set of routes, all or nothing: every new address is bound first;
    // if one cannot be (in use, or the descriptor limit has no room for it) the ones
    // bound are closed, the running routes stay and runtime_failure says why. Then
    // listeners of unchanged addresses stay open (they take the new options) and
    // removed ones are closed. Open connections are not touched. Process-wide keys
    // (threads, metrics, drain_timeout, busy_poll) keep their running value; a change
    // of one is logged ("threads: change needs a restart"). Main thread.
    void reload(proxy_config cfg);

    // Take-over (proxy_handover.cpp). A dup of every listening socket, TCP, Unix and
    // UDP, of every loop. Main thread (no reload runs meanwhile).
    std::vector<handed_socket> listening_sockets();
    // Stops accepting: closes every listener (a Unix socket file stays, the new process
    // serves it) and stops the UDP forwarders. drain() then waits for the connections.
    void stop_accepting();

    [[nodiscard]] std::uint64_t active_connections() const;
    // The Prometheus text exposition of every route, with its pools on every loop.
    [[nodiscard]] std::string metrics_text() const;

private:
    std::shared_ptr<route_stats> stats_for(const std::string& name);
    void retire_removed(const std::vector<std::shared_ptr<route_runtime>>& runtimes);
    std::vector<std::shared_ptr<route_runtime>> make_runtimes(const proxy_config& cfg);

    proxy_config cfg_;
    connection_budget budget_;       // read by every loop: declared before them
    mutable std::mutex stats_mutex_; // guards stats_ (the map, not the counters)
    // Declared before the loops and contexts: the pools in it outlive every lease.
    std::map<std::string, std::shared_ptr<route_stats>> stats_;
    // UDP routes' forwarders; before the loops, whose tasks hold its slots' counters.
    std::unique_ptr<udp_routes> udp_;
    // Declared before the loops: contexts (and the listeners and pools they own)
    // must outlive the loops' destruction of suspended tasks.
    std::vector<std::unique_ptr<loop_ctx>> ctxs_;
    std::unique_ptr<loop_group> group_;
    bool started_ = false;
};

// SIGHUP's reload: reads and checks the config on a thread of its own, so a slow or
// large file never stalls `loop` (it serves the signals and metrics), then applies it
// on `loop` with proxy_server::reload. A failure anywhere logs one line, "reload
// refused: REASON", and keeps the running routes. A request during a read is queued
// (once). Everything but the reading thread is `loop`'s.
class config_reloader {
public:
    config_reloader(event_loop& loop, proxy_server& server, std::function<proxy_config()> load);
    ~config_reloader();
    config_reloader(const config_reloader&) = delete;
    config_reloader& operator=(const config_reloader&) = delete;

    void request();
    // No more reloads are applied. A read in progress is not waited for: it may be
    // resolving an upstream name (getaddrinfo), which takes as long as the DNS server
    // lets it (a server that never answers held SIGTERM for timeout x attempts per
    // name); its thread ends on its own and drops what it read.
    void stop();

private:
    // What the reading thread shares with the reloader: it may outlive it.
    struct shared_state {
        std::mutex mutex;
        bool stopped = false; // set by stop(); guarded by `mutex`
        event_loop* loop;
        std::function<proxy_config()> load;
    };

    void finish(proxy_config& cfg, const std::string& error);
    static bool stopped(shared_state& sh);

    proxy_server& server_;
    bool busy_ = false;
    bool again_ = false;
    std::shared_ptr<shared_state> shared_;
};

} // namespace zcio::cli
