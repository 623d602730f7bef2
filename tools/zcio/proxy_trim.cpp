// The `zcio proxy` loops' ticks: bytes and pool gauges into the metrics, idle pool
// memory and freed pages handed back (malloc_trim).
#include "proxy_loop.hpp"

#include "cli_util.hpp"

#include <spdlog/spdlog.h>

#include <malloc.h>

namespace zcio::cli {

using namespace std::chrono_literals;

// Publishes the pools' gauges; frees the idle pipes and buffers of pools nobody
// leased from for a second (two ticks): kept for reuse while traffic flows, they
// would otherwise hold memory (and pipes) for as long as the proxy sits idle.
// Returns whether it freed anything.
namespace {

bool publish_pools(loop_ctx& ctx) {
    bool freed = false;
    for (const auto& route : ctx.routes) {
        route_loop_state& here = route->per_loop[ctx.index];
        const std::uint64_t lent = here.pools.pipes.stats().lent + here.pools.buffers.stats().lent;
        here.quiet_ticks = lent == here.lent_at_tick ? here.quiet_ticks + 1 : 0;
        here.lent_at_tick = lent;
        // Removed by a reload: its pools serve no new connection, so what the old ones
        // give back is freed rather than kept for reuse.
        if (!here.in_use || here.quiet_ticks >= 2) {
            freed = freed || here.pools.pipes.stats().idle + here.pools.buffers.stats().idle > 0;
            here.pools.pipes.clear_idle();
            here.pools.buffers.clear_idle();
        }
        const auto p = here.pools.pipes.stats();
        const auto b = here.pools.buffers.stats();
        here.gauges.pipes_leased.store(p.leased, std::memory_order_relaxed);
        here.gauges.pipes_idle.store(p.idle, std::memory_order_relaxed);
        here.gauges.buffers_leased.store(b.leased, std::memory_order_relaxed);
        here.gauges.buffers_idle.store(b.idle, std::memory_order_relaxed);
    }
    return freed;
}

} // namespace

// Twice a second: bytes moved by open connections into their routes' counters, and
// the pools into their gauges. One pass over the loop's connections (a few loads
// each) keeps the data path free of atomics; a counter is at most 0.5 s behind.
task<void> refresh_metrics(loop_ctx* ctx) {
    std::uint64_t opened_at_trim = 0;
    while (!ctx->stopping) {
        count_progress(*ctx);
        const bool freed = publish_pools(*ctx);
        // Hand the pages freed by connection set-up (and by the pools) back to the
        // kernel: a burst of connects leaves their coroutine frames' memory free but
        // resident (docs/BENCHMARKS.md, "Idle memory"). Only after new connections
        // came or a pool let go (an idle proxy never pays for it), at most twice a
        // second. From any loop: malloc_trim covers every thread's arena.
        bool opened_more = false;
        if (ctx->index == 0) { // the connection counters are the routes', for all loops
            std::uint64_t opened = 0;
            for (const auto& route : ctx->routes) {
                opened += route->connections_total.load(std::memory_order_relaxed);
            }
            opened_more = std::exchange(opened_at_trim, opened) != opened;
        }
        if (freed || opened_more) {
            ::malloc_trim(0);
        }
        co_await sleep_for(*ctx->loop, 500ms);
    }
}

} // namespace zcio::cli
