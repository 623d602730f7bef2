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

// Counters of one route, shared by every loop. Touched once per connection (never
// per byte), so relaxed atomics cost nothing measurable on the data path.
struct route_stats {
    std::atomic<std::uint64_t> connections_total{0};
    std::atomic<std::uint64_t> connections_active{0};
    std::atomic<std::uint64_t> connections_refused{0};
    std::atomic<std::uint64_t> bytes_client_to_upstream{0};
    std::atomic<std::uint64_t> bytes_upstream_to_client{0};
    std::atomic<std::uint64_t> upstream_connect_failures{0};
    std::atomic<std::uint64_t> upstream_connect_timeouts{0};
};

// What one loop's pools hold, copied out by the loop itself twice a second so the
// metrics thread never reads a pool.
struct pool_gauges {
    std::atomic<std::uint64_t> pipes_leased{0};
    std::atomic<std::uint64_t> pipes_idle{0};
    std::atomic<std::uint64_t> buffers_leased{0};
    std::atomic<std::uint64_t> buffers_idle{0};
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
    // The Prometheus text exposition of every route and every loop's pools.
    [[nodiscard]] std::string metrics_text() const;

private:
    std::shared_ptr<route_stats> stats_for(const std::string& name);
    std::vector<std::shared_ptr<route_runtime>> make_runtimes(const proxy_config& cfg);

    proxy_config cfg_;
    mutable std::mutex stats_mutex_; // guards stats_ (the map, not the counters)
    std::map<std::string, std::shared_ptr<route_stats>> stats_;
    // Declared before the loops: contexts (and the listeners and pools they own)
    // must outlive the loops' destruction of suspended tasks.
    std::vector<std::unique_ptr<loop_ctx>> ctxs_;
    std::unique_ptr<loop_group> group_;
    bool started_ = false;
};

} // namespace zcio::cli
