// What the parts of the `zcio proxy` engine share: one loop's context, its listeners,
// and the functions each part (lifecycle, connections, ticks, reload) offers the others.
#pragma once

#include "proxy_server.hpp"

#include <zcio/zcio.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace zcio::cli {

// One listener on one loop. Its route can be swapped by a reload (set_route). Owned by
// the loop's list and by its accept loop: a closed one is freed when its accept loop
// ends (a reload that removed 1,024 ports used to keep them all until the process ended).
struct listener_entry {
    std::shared_ptr<route_runtime> rt;
    zcio::listener listener;
    std::string key;          // the endpoint text, for reload diffs
    accept_options accepting; // its limit is the route's (set_route)
};

struct loop_ctx {
    std::size_t index = 0;
    event_loop* loop = nullptr;
    // Every route this loop has served (by name, never removed): their pools on this
    // loop are refreshed into their gauges by this loop.
    std::vector<std::shared_ptr<route_stats>> routes;
    cancel_source cancel_all;
    std::vector<std::shared_ptr<listener_entry>> listeners;
    // Open connections: sweeps their idle timeouts; report_all() counts their bytes.
    std::unique_ptr<relay_set> relays;
    bool stopping = false;
};

// ---- proxy_connection.cpp ----
// Points `e` at `rt`: its clients go to that route, counted in its limit.
void set_route(listener_entry& e, std::shared_ptr<route_runtime> rt);
// Spawns the accept loop of `e` on its loop (its route must have its stats); the loop
// holds `e` until the listener closes.
void start_accepting(loop_ctx& ctx, std::shared_ptr<listener_entry> e);
// Adds what every open connection of the loop moved to its route's byte counters.
void count_progress(loop_ctx& ctx) noexcept;

// ---- proxy_upstream.cpp ----
// Gives `rt` (its stats set) a new server group that inherits the health of the
// previous one of its route, which retires. Main thread, on start and reload commit.
void attach_upstreams(route_runtime& rt);
// On loop 0: the route's active health checks, if it has any, until the group retires
// or the loop stops.
void start_health_checks(loop_ctx& ctx, const std::shared_ptr<route_runtime>& rt);

// A connected upstream: the stream and the server it went to.
struct upstream_link {
    stream conn;
    std::shared_ptr<upstream_state> server;
    std::string label;
    std::uint32_t index = 0; // the server's place in the route's upstream group
};
// Connects to a server `rt` balances to, trying others after a failure (up to
// connect_retries). Nothing when none could be reached: counted and logged here.
task<std::optional<upstream_link>> connect_upstream(loop_ctx* ctx, route_runtime* rt,
                                                    const endpoint& peer);

// ---- proxy_trim.cpp ----
// Twice a second until the loop stops: byte counters, pool gauges, memory back.
task<void> refresh_metrics(loop_ctx* ctx);

// ---- proxy_server.cpp ----
// Unix sockets cannot share an address between loops (no SO_REUSEPORT), so only the
// first loop listens on them.
bool listens_on(const loop_ctx& ctx, const endpoint& ep);
std::shared_ptr<listener_entry> bind_entry(loop_ctx& ctx, std::shared_ptr<route_runtime> rt,
                                           const endpoint& ep);
void run_on(loop_ctx& ctx, const std::function<void()>& fn);
void adopt_routes(loop_ctx& ctx, const std::vector<std::shared_ptr<route_runtime>>& runtimes);

// ---- proxy_handover.cpp ----
// Handed-over sockets of `bound` beyond one per loop (the old process had more loops):
// listeners on the loops round-robin, so their queues are served too.
void adopt_extra_sockets(const std::vector<std::unique_ptr<loop_ctx>>& ctxs,
                         const std::shared_ptr<route_runtime>& rt, const endpoint& wanted,
                         const endpoint& bound);

// ---- proxy_reload.cpp ----
struct listener_count {
    std::uint64_t total = 0;
    std::uint64_t fresh = 0;
};
listener_count count_listeners(const std::vector<std::unique_ptr<loop_ctx>>& ctxs,
                               const proxy_config& cfg);
void check_descriptors(std::uint64_t fresh);
void set_default_limit(connection_budget& budget, const proxy_config& cfg, std::uint64_t listeners);
// Each route's own max_connections into its limit (0 in the config: none at all).
void set_route_limits(const std::vector<std::shared_ptr<route_runtime>>& runtimes);
void warn_restart_only(const global_options& running, const global_options& next);

} // namespace zcio::cli
