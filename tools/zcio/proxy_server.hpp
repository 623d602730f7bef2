// The `zcio proxy` engine: routes served by one event loop per thread.
#pragma once

#include "route_config.hpp"

#include <zcio/zcio.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
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

// One route (by name), shared by every loop, kept for the life of the process so
// counters survive reloads and pools outlive the connections that lease from them.
// The counters are relaxed atomics touched once per connection, or once per loop
// tick for the byte counts (never per byte or per system call).
struct route_stats {
    explicit route_stats(std::size_t loops)
        : per_loop(std::make_unique<route_loop_state[]>(loops)) {}

    std::atomic<std::uint64_t> connections_total{0};
    std::atomic<std::uint64_t> connections_active{0};
    std::atomic<std::uint64_t> connections_refused{0};
    std::atomic<std::uint64_t> bytes_client_to_upstream{0};
    std::atomic<std::uint64_t> bytes_upstream_to_client{0};
    std::atomic<std::uint64_t> upstream_connect_failures{0};
    std::atomic<std::uint64_t> upstream_connect_timeouts{0};
    std::unique_ptr<route_loop_state[]> per_loop; // indexed by loop
};

struct route_runtime {
    route config;
    std::shared_ptr<route_stats> stats;
};

struct loop_ctx;

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

    // Applies a new set of routes: listeners of unchanged addresses stay open (they
    // take the new options), new addresses are bound, removed ones closed. Open
    // connections are not touched.
    void reload(proxy_config cfg);

    [[nodiscard]] std::uint64_t active_connections() const;
    // The Prometheus text exposition of every route, with its pools on every loop.
    [[nodiscard]] std::string metrics_text() const;

private:
    std::shared_ptr<route_stats> stats_for(const std::string& name);
    std::vector<std::shared_ptr<route_runtime>> make_runtimes(const proxy_config& cfg);

    proxy_config cfg_;
    mutable std::mutex stats_mutex_; // guards stats_ (the map, not the counters)
    // Declared before the loops and contexts: the pools in it outlive every lease.
    std::map<std::string, std::shared_ptr<route_stats>> stats_;
    // Declared before the loops: contexts (and the listeners and pools they own)
    // must outlive the loops' destruction of suspended tasks.
    std::vector<std::unique_ptr<loop_ctx>> ctxs_;
    std::unique_ptr<loop_group> group_;
    bool started_ = false;
};

} // namespace zcio::cli
