// The `zcio proxy` engine's lifecycle: loops and their contexts, start (bind every
// listener, then run), drain (stop accepting, wait, cut) and what they share.
#include "proxy_loop.hpp"

#include "cli_util.hpp"
#include "socket_inventory.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <future>
#include <thread>

namespace zcio::cli {

using namespace std::chrono_literals;

// Makes `ctx` refresh the pools of every route of `runtimes`, and marks the routes it
// knew that are not among them as unused. Runs on the loop (or before it starts).
void adopt_routes(loop_ctx& ctx, const std::vector<std::shared_ptr<route_runtime>>& runtimes) {
    for (const auto& route : ctx.routes) {
        route->per_loop[ctx.index].in_use = false;
    }
    for (const auto& rt : runtimes) {
        if (std::ranges::find(ctx.routes, rt->stats) == ctx.routes.end()) {
            ctx.routes.push_back(rt->stats);
        }
        rt->stats->per_loop[ctx.index].in_use = true;
    }
}

bool listens_on(const loop_ctx& ctx, const endpoint& ep) {
    return ctx.index == 0 || ep.is_ip();
}

std::shared_ptr<listener_entry> bind_entry(loop_ctx& ctx, std::shared_ptr<route_runtime> rt,
                                           const endpoint& ep) {
    // A socket handed over or passed by systemd (takeover.hpp) is served as it is.
    auto inherited = socket_inventory::instance().claim(socket_kind::stream, ep, ctx.index);
    if (ctx.index == 0 && !inherited) {
        ensure_port_free(ep); // the other loops then share the port with loop 0's listener
    }
    listen_options lo;
    lo.reuse_port = ep.is_ip();
    auto l = inherited ? listener::adopt(*ctx.loop, std::move(*inherited))
                       : listener::bind(*ctx.loop, ep, lo);
    if (!l) {
        throw runtime_failure("cannot listen on " + ep.to_string() + ": " + l.error().message());
    }
    auto e = std::make_shared<listener_entry>();
    e->rt = std::move(rt); // its stats may come later (a reload commits them): no limit yet
    e->listener = std::move(*l);
    e->key = ep.to_string();
    return e;
}

// Runs `fn` on the loop of `ctx` and waits for it (the loop runs; the caller is the
// main thread). `fn` must not throw.
void run_on(loop_ctx& ctx, const std::function<void()>& fn) {
    std::promise<void> done;
    auto finished = done.get_future();
    ctx.loop->post([&fn, &done] {
        fn();
        done.set_value();
    });
    finished.wait();
}

namespace {

// How often each loop checks its connections' idle timeouts: a quarter of the
// shortest timeout configured, between 100 ms and 30 s (a timeout then fires at most a
// quarter late; a sweep touches every connection of the loop, so the tick is never
// shorter than 100 ms). Routes added by a reload keep the tick of the start.
clock::duration idle_tick(const proxy_config& cfg) {
    clock::duration shortest = std::chrono::hours(1);
    for (const auto& r : cfg.routes) {
        if (r.options.idle_timeout.count() > 0) {
            shortest = std::min(
                shortest, std::chrono::duration_cast<clock::duration>(r.options.idle_timeout));
        }
    }
    return std::clamp<clock::duration>(shortest / 4, 100ms, 30s);
}

// Stops the loop once the cancelled connections have logged and closed (a few loop
// turns; a rate-limited one may sleep up to its quantum, so the wait is bounded).
task<void> stop_when_closed(loop_ctx* ctx) {
    for (int i = 0; i < 200 && !ctx->relays->empty(); ++i) {
        co_await sleep_for(*ctx->loop, 10ms);
    }
    ctx->loop->stop();
}

} // namespace

proxy_server::proxy_server(proxy_config cfg, std::size_t threads) : cfg_(std::move(cfg)) {
    group_ = std::make_unique<loop_group>(threads);
    for (std::size_t i = 0; i < group_->size(); ++i) {
        auto c = std::make_unique<loop_ctx>();
        c->index = i;
        c->loop = &group_->loop(i);
        c->relays = std::make_unique<relay_set>(*c->loop, idle_tick(cfg_));
        if (cfg_.global.busy_poll) {
            c->loop->set_busy_poll(
                std::chrono::duration_cast<clock::duration>(*cfg_.global.busy_poll));
        }
        ctxs_.push_back(std::move(c));
    }
    std::vector<loop_ctx*> loops;
    for (auto& c : ctxs_) {
        loops.push_back(c.get());
    }
    udp_ = std::make_unique<udp_routes>(std::move(loops));
}

proxy_server::~proxy_server() {
    if (started_) {
        drain(0s);
    }
    // A start() that failed halfway (a later address in use) leaves the listeners it
    // bound registered with their loops: close them while the loops still exist.
    for (auto& ctx : ctxs_) {
        for (auto& e : ctx->listeners) {
            e->listener.close();
        }
    }
    for (auto& ctx : ctxs_) {
        ctx->relays.reset(); // its sweeper timer belongs to the loop: go first
    }
    group_.reset(); // loops (and their suspended tasks) go before the contexts
}

std::shared_ptr<route_stats> proxy_server::stats_for(const std::string& name) {
    std::lock_guard lock(stats_mutex_);
    auto& s = stats_[name];
    if (!s) {
        s = std::make_shared<route_stats>(group_->size(), budget_);
    }
    return s;
}

std::vector<std::shared_ptr<route_runtime>> proxy_server::make_runtimes(const proxy_config& cfg) {
    std::vector<std::shared_ptr<route_runtime>> out;
    for (const auto& r : cfg.routes) {
        if (r.protocol == route_protocol::udp) {
            continue; // served by udp_routes
        }
        auto rt = std::make_shared<route_runtime>();
        rt->config = r;
        out.push_back(std::move(rt));
    }
    return out;
}

void proxy_server::start() {
    // Bind everything before any thread runs, so a bad address fails the start
    // cleanly. Port 0 is resolved by the first loop; the others reuse that port.
    // "listening on" is logged only once every address is bound, so a failure is the
    // one line on stderr.
    const auto need = count_listeners(ctxs_, cfg_);
    check_descriptors(need.fresh);
    std::vector<std::string> ready;
    const auto runtimes = make_runtimes(cfg_);
    for (const auto& rt : runtimes) {
        rt->stats = stats_for(rt->config.name);
        attach_upstreams(*rt);
    }
    set_route_limits(runtimes);
    for (auto& ctx : ctxs_) {
        adopt_routes(*ctx, runtimes);
    }
    for (const auto& rt : runtimes) {
        for (const auto& wanted : rt->config.listen) {
            endpoint ep = wanted;
            for (auto& ctx : ctxs_) {
                if (!listens_on(*ctx, ep)) {
                    continue;
                }
                auto e = bind_entry(*ctx, rt, ep);
                // Keyed by the address as configured (port 0 included) on every loop,
                // so that a reload finds the same listeners on all of them.
                e->key = wanted.to_string();
                ep = e->listener.local_endpoint();
                ctx->listeners.push_back(std::move(e));
            }
            adopt_extra_sockets(ctxs_, rt, wanted, ep);
            ready.push_back(rt->config.name + " listening on " + ep.to_string() + " → " +
                            upstreams_text(rt->config));
        }
    }
    auto udp_plan = udp_->prepare(cfg_.routes, false);
    ready.insert(ready.end(), udp_plan.ready.begin(), udp_plan.ready.end());
    udp_->commit(std::move(udp_plan), false);
    set_default_limit(budget_, cfg_, need.total);
    for (const auto& line : ready) {
        spdlog::info("{}", line);
    }
    for (auto& ctx : ctxs_) {
        for (auto& e : ctx->listeners) {
            start_accepting(*ctx, e);
        }
        ctx->loop->spawn(refresh_metrics(ctx.get()));
    }
    for (const auto& rt : runtimes) {
        start_health_checks(*ctxs_.front(), rt);
    }
    group_->start([](std::size_t i, std::error_code ec) {
        spdlog::critical("event loop {} failed: {}", i, ec.message());
    });
    started_ = true;
}

std::uint64_t proxy_server::active_connections() const {
    std::lock_guard lock(stats_mutex_);
    std::uint64_t n = 0;
    for (const auto& [name, s] : stats_) {
        n += s->active.open();
    }
    return n;
}

void proxy_server::drain(std::chrono::nanoseconds timeout) {
    if (!started_) {
        return;
    }
    started_ = false;
    udp_->stop(); // datagram sessions have nothing to drain
    for (auto& ctx : ctxs_) {
        loop_ctx* c = ctx.get();
        c->loop->post([c] {
            for (auto& e : c->listeners) {
                e->listener.close(); // its accept loop ends, and frees it
            }
            c->listeners.clear();
        });
    }
    const auto deadline = clock::now() + timeout;
    while (active_connections() > 0 && clock::now() < deadline) {
        std::this_thread::sleep_for(20ms);
    }
    if (auto left = active_connections(); left > 0) {
        spdlog::warn("drain timeout: closing {} open connection(s)", left);
    }
    for (auto& ctx : ctxs_) {
        loop_ctx* c = ctx.get();
        c->loop->post([c] {
            c->stopping = true;
            c->cancel_all.cancel();
            c->relays->cancel_all();
            c->loop->spawn(stop_when_closed(c));
        });
    }
    group_->join();
}

} // namespace zcio::cli
