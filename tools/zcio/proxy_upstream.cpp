// The `zcio proxy` side of balancing: each route's server group (kept across reloads),
// the connect that retries on another server, and the active health checks.
#include "proxy_loop.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace zcio::cli {

using namespace std::chrono_literals;

void attach_upstreams(route_runtime& rt) {
    auto& stats = *rt.stats;
    auto g = std::make_shared<upstream_group>(servers_of(rt.config), rt.config.balance,
                                              stats.health_mutex);
    if (auto old = stats.current_upstreams()) {
        std::lock_guard lock(g->mutex);
        g->set.inherit(old->set);
        old->retired.store(true, std::memory_order_relaxed);
    }
    rt.upstreams = g;
    stats.set_upstreams(std::move(g));
}

namespace {

struct attempt {
    std::size_t index;
    endpoint_list address; // a copy: the group may be replaced meanwhile
    std::shared_ptr<upstream_state> state;
};

std::optional<attempt> choose_server(upstream_group& g, std::uint64_t client,
                                     std::span<const std::size_t> tried) {
    std::lock_guard lock(g.mutex);
    auto i = g.set.choose(client, tried);
    if (!i) {
        return std::nullopt;
    }
    return attempt{*i, g.set.server(*i).address, g.set.state_ptr(*i)};
}

void report(upstream_group& g, std::size_t i, bool ok) {
    std::lock_guard lock(g.mutex);
    if (ok) {
        g.set.report_success(i);
    } else {
        g.set.report_failure(i);
    }
}

} // namespace

task<std::optional<upstream_link>> connect_upstream(loop_ctx* ctx, route_runtime* rt,
                                                    const endpoint& peer) {
    upstream_group& g = *rt->upstreams;
    route_stats& stats = *rt->stats;
    const auto timeout =
        std::chrono::duration_cast<clock::duration>(rt->config.options.connect_timeout);
    const std::uint64_t client = hash_client(peer);
    std::vector<std::size_t> tried;
    std::string why;
    for (unsigned n = 0; n <= g.options.connect_retries; ++n) {
        auto pick = choose_server(g, client, tried);
        if (!pick) {
            break;
        }
        tried.push_back(pick->index);
        std::vector<connect_failure> failed; // each address of a name that failed
        auto connecting = stream::connect(*ctx->loop, pick->address, timeout, &failed);
        auto up = co_await with_cancel(*ctx->loop, std::move(connecting), ctx->cancel_all);
        if (up) {
            report(g, pick->index, true);
            pick->state->active.fetch_add(1, std::memory_order_relaxed);
            co_return upstream_link{std::move(*up), std::move(pick->state), g.labels[pick->index],
                                    static_cast<std::uint32_t>(pick->index)};
        }
        if (up.error() == std::errc::operation_canceled) {
            co_return std::nullopt; // shutting down
        }
        report(g, pick->index, false);
        auto& counter = up.error() == std::errc::timed_out ? stats.upstream_connect_timeouts
                                                           : stats.upstream_connect_failures;
        counter.fetch_add(1, std::memory_order_relaxed);
        why = failed.size() > 1 ? to_string(failed) : up.error().message();
        if (n < g.options.connect_retries && g.set.size() > tried.size()) {
            spdlog::warn("{} client {} upstream {}: {} (trying another server)", rt->config.name,
                         peer.to_string(), g.labels[pick->index], why);
        } else {
            stats.upstream_unavailable.fetch_add(1, std::memory_order_relaxed);
            spdlog::warn("{} client {} upstream {}: {} (client closed{})", rt->config.name,
                         peer.to_string(), g.labels[pick->index], why,
                         tried.size() > 1 ? ", " + std::to_string(tried.size()) + " servers tried"
                                          : std::string());
            co_return std::nullopt;
        }
    }
    stats.upstream_unavailable.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("{} client {}: no upstream is up{} (client closed)", rt->config.name,
                 peer.to_string(), tried.empty() ? "" : " to try after " + why);
    co_return std::nullopt;
}

namespace {

// One check of one server: a TCP connect within the interval (or the connect
// timeout, if shorter), closed at once. Logs each change of state once.
task<void> check_server(loop_ctx* ctx, std::shared_ptr<upstream_group> g, std::string route,
                        std::size_t i, clock::duration timeout) {
    const endpoint_list to = g->set.server(i).address; // immutable once made
    auto connecting = stream::connect(*ctx->loop, to, timeout);
    auto up = co_await with_cancel(*ctx->loop, std::move(connecting), ctx->cancel_all);
    if (!up && up.error() == std::errc::operation_canceled) {
        co_return;
    }
    check_change change;
    {
        std::lock_guard lock(g->mutex);
        change = g->set.report_check(i, up.has_value(), g->options.active);
    }
    if (change == check_change::went_down) {
        spdlog::warn("{} upstream {} is down: {} check(s) failed, last: {}", route, g->labels[i],
                     g->options.active.fall, up.error().message());
    } else if (change == check_change::came_up) {
        spdlog::info("{} upstream {} is up: {} check(s) passed", route, g->labels[i],
                     g->options.active.rise);
    }
}

task<void> health_loop(loop_ctx* ctx, std::shared_ptr<upstream_group> g, std::string route) {
    const auto interval = std::chrono::duration_cast<clock::duration>(g->options.health_interval);
    const auto timeout = std::min<clock::duration>(interval, 10s);
    while (!ctx->stopping && !g->retired.load(std::memory_order_relaxed)) {
        for (std::size_t i = 0; i < g->set.size(); ++i) {
            ctx->loop->spawn(check_server(ctx, g, route, i, timeout));
        }
        co_await sleep_for(*ctx->loop, interval);
    }
}

} // namespace

void start_health_checks(loop_ctx& ctx, const std::shared_ptr<route_runtime>& rt) {
    if (rt->upstreams->options.health_interval.count() <= 0) {
        return;
    }
    ctx.loop->spawn(health_loop(&ctx, rt->upstreams, rt->config.name));
}

} // namespace zcio::cli
