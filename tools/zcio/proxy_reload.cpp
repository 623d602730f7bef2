// The `zcio proxy` reload: what a new config needs (descriptors, listeners kept or
// bound), all or nothing; and the SIGHUP reader that applies it.
#include "proxy_loop.hpp"

#include "cli_util.hpp"
#include "systemd.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <map>
#include <thread>
#include <unordered_map>

namespace zcio::cli {

using namespace std::chrono_literals;

// The addresses the loop listens on, as configured, with how many listeners each
// has: several routes may ask for "127.0.0.1:0", each with a port of its own.
namespace {

using key_counts = std::unordered_map<std::string, std::size_t>;
key_counts listener_keys(const loop_ctx& ctx) {
    key_counts keys;
    for (const auto& e : ctx.listeners) {
        ++keys[e->key];
    }
    return keys;
}

// Takes one listener of `key` from `held` if there is one left: a route of the new
// config keeps it (in the config's order, as a reload always matched them).
bool take(key_counts& held, const std::string& key) {
    auto it = held.find(key);
    if (it == held.end() || it->second == 0) {
        return false;
    }
    --it->second;
    return true;
}

} // namespace

// Listening sockets `cfg` needs on every loop: all of them, and the ones no loop holds
// yet (a reload keeps a listener whose address stays, at no cost). Reads the loops'
// lists: call before the loops run or from the thread that alone changes them.
listener_count count_listeners(const std::vector<std::unique_ptr<loop_ctx>>& ctxs,
                               const proxy_config& cfg) {
    listener_count n;
    for (const auto& ctx : ctxs) {
        auto held = listener_keys(*ctx);
        for (const auto& r : cfg.routes) {
            if (r.protocol == route_protocol::udp) {
                continue; // udp_routes binds its own sockets
            }
            for (const auto& ep : r.listen) {
                if (listens_on(*ctx, ep)) {
                    ++n.total;
                    n.fresh += take(held, ep.to_string()) ? 0 : 1;
                }
            }
        }
    }
    return n;
}

// Refuses `fresh` new listening sockets that the descriptor limit cannot hold beside
// what is open now, the reserve and the eighth of the limit that is always kept for
// connections: five 4,096-port ranges under a limit of 20,000 used to take every
// descriptor, and the running routes' clients then timed out.
void check_descriptors(std::uint64_t fresh) {
    const auto limit = descriptor_limit();
    if (!limit || fresh == 0) {
        return;
    }
    const std::uint64_t open = open_descriptors();
    // Under a tiny limit (tests/stress fd-exhaustion runs with 64) the reserve shrinks
    // with it, so that a proxy that served before still starts.
    const std::uint64_t reserve = std::min(descriptor_reserve, *limit / 4);
    const std::uint64_t for_connections = *limit / 8;
    const std::uint64_t taken = open + reserve + for_connections;
    const std::uint64_t room = *limit > taken ? *limit - taken : 0;
    if (fresh > room) {
        throw runtime_failure(std::to_string(fresh) +
                              " new listening socket(s) do not fit: the descriptor limit " +
                              std::to_string(*limit) + " less " + std::to_string(open) + " open, " +
                              std::to_string(reserve) + " reserved and " +
                              std::to_string(for_connections) + " kept for connections leaves " +
                              std::to_string(room) + " (raise ulimit -n or listen on fewer ports)");
    }
}

// Sets the shared limit of the routes without max_connections from the listeners the
// config holds, and says it when it is new.
void set_default_limit(connection_budget& budget, const proxy_config& cfg,
                       std::uint64_t listeners) {
    const std::uint64_t limit = default_max_connections(listeners);
    const bool used = std::ranges::any_of(cfg.routes, [](const route& r) {
        return r.protocol == route_protocol::tcp && !r.options.max_connections.has_value();
    });
    const bool changed = budget.open.max() != limit;
    budget.open.set_max(limit);
    if (changed && used && limit != 0) {
        spdlog::info("up to {} connections for the routes without max_connections together "
                     "(descriptor limit {}, {} listening sockets)",
                     limit, descriptor_limit().value_or(0), listeners);
    }
}

void set_route_limits(const std::vector<std::shared_ptr<route_runtime>>& runtimes) {
    constexpr std::uint64_t none = UINT64_MAX; // never reached
    for (const auto& rt : runtimes) {
        const auto& own = rt->config.options.max_connections;
        rt->stats->active.set_max(own ? (*own == 0 ? none : *own) : 0);
    }
}

// Process-wide keys a reload cannot apply: said in the log, never silently dropped.
void warn_restart_only(const global_options& running, const global_options& next) {
    const auto warn = [](const char* key) {
        spdlog::warn("reload: {}: change needs a restart (the running value stays)", key);
    };
    if (next.threads != running.threads) {
        warn("threads");
    }
    if (next.metrics != running.metrics) {
        warn("metrics");
    }
    if (next.drain_timeout != running.drain_timeout) {
        warn("drain_timeout");
    }
    if (next.busy_poll != running.busy_poll) {
        warn("busy_poll");
    }
}

namespace {

using runtime_list = std::vector<std::shared_ptr<route_runtime>>;
using entry_list = std::vector<std::shared_ptr<listener_entry>>;

// What binding a reload's new addresses learns over the loops. New addresses with port
// 0: the first loop that binds one picks the port and the others reuse it, as in
// start(). By route and address as configured (a file's addresses are unique but for
// port 0: load_config_file checks).
struct bind_round {
    std::map<std::pair<const route_runtime*, std::string>, endpoint> resolved;
    std::vector<std::string> ready; // "listening on" lines, logged once all are bound
};

// On `c`'s loop: binds every address of `runtimes` that the loop does not listen on
// yet into `out` (kept there when a later bind throws, for the caller to close).
void bind_fresh(loop_ctx& c, const runtime_list& runtimes, bind_round& round, entry_list& out) {
    auto held = listener_keys(c);
    for (const auto& rt : runtimes) {
        for (const auto& ep : rt->config.listen) {
            const std::string key = ep.to_string();
            if (!listens_on(c, ep) || take(held, key)) {
                continue;
            }
            const auto known = round.resolved.find({rt.get(), key});
            auto e = bind_entry(c, rt, known != round.resolved.end() ? known->second : ep);
            e->key = key;
            if (known == round.resolved.end()) {
                const endpoint bound = e->listener.local_endpoint();
                round.resolved.emplace(std::pair{rt.get(), key}, bound);
                round.ready.push_back(rt->config.name + " listening on " + bound.to_string() +
                                      " → " + upstreams_text(rt->config));
            }
            out.push_back(std::move(e));
        }
    }
}

// On `c`'s loop, once every bind succeeded: the fresh listeners start accepting, the
// held ones whose address stays take their new route, the others are closed.
void swap_listeners(loop_ctx& c, const runtime_list& runtimes, entry_list fresh) {
    // Same key: the listeners in the order they were made, as the routes take them
    // (several port-0 routes keep their own ports, on every loop).
    std::unordered_map<std::string, std::deque<std::shared_ptr<listener_entry>>> held;
    for (auto& e : c.listeners) {
        held[e->key].push_back(std::move(e));
    }
    entry_list next = std::move(fresh);
    for (auto& e : next) {
        start_accepting(c, e);
    }
    for (const auto& rt : runtimes) {
        for (const auto& ep : rt->config.listen) {
            auto it = listens_on(c, ep) ? held.find(ep.to_string()) : held.end();
            if (it != held.end() && !it->second.empty()) {
                set_route(*it->second.front(), rt); // same address: keep the socket
                next.push_back(std::move(it->second.front()));
                it->second.pop_front();
            }
        }
    }
    for (auto& [key, left] : held) {
        for (auto& e : left) {
            e->listener.close(); // removed: its accept loop ends, and frees it
        }
    }
    c.listeners = std::move(next);
}

} // namespace

// The server groups of routes a reload removed stop their health checks (a route
// that comes back inherits their state).
void proxy_server::retire_removed(const std::vector<std::shared_ptr<route_runtime>>& runtimes) {
    std::lock_guard lock(stats_mutex_);
    for (const auto& [name, s] : stats_) {
        const bool kept =
            std::ranges::any_of(runtimes, [&](const auto& rt) { return rt->stats == s; });
        auto g = s->current_upstreams();
        if (!kept && g) {
            g->retired.store(true, std::memory_order_relaxed);
        }
    }
}

void proxy_server::reload(proxy_config cfg) {
    // All or nothing: every new listener is bound first (on its loop, loops one after
    // the other) while the running routes serve on; only if all of them are bound are
    // the routes swapped. On any failure the new listeners are closed and nothing of
    // the new config remains (no route, no metrics series).
    if (!started_) {
        throw runtime_failure("the proxy is not running");
    }
    const auto need = count_listeners(ctxs_, cfg);
    check_descriptors(need.fresh);
    // UDP sockets first: a failure there leaves nothing to undo.
    auto udp_plan = udp_->prepare(cfg.routes, true);
    auto runtimes = make_runtimes(cfg);
    std::vector<entry_list> fresh(ctxs_.size());
    bind_round round;
    std::string failure;
    for (std::size_t i = 0; i < ctxs_.size() && failure.empty(); ++i) {
        run_on(*ctxs_[i], [&] {
            try {
                bind_fresh(*ctxs_[i], runtimes, round, fresh[i]);
            } catch (const std::exception& f) {
                failure = f.what();
            }
        });
    }
    if (!failure.empty()) {
        for (std::size_t i = 0; i < ctxs_.size(); ++i) {
            if (!fresh[i].empty()) {
                run_on(*ctxs_[i], [&] {
                    for (auto& e : fresh[i]) {
                        e->listener.close();
                    }
                    fresh[i].clear();
                });
            }
        }
        udp_->discard(udp_plan, true);
        throw runtime_failure(failure);
    }
    // Commit: nothing below can fail.
    for (const auto& rt : runtimes) {
        rt->stats = stats_for(rt->config.name);
        attach_upstreams(*rt);
    }
    retire_removed(runtimes);
    set_route_limits(runtimes);
    set_default_limit(budget_, cfg, need.total);
    for (std::size_t i = 0; i < ctxs_.size(); ++i) {
        run_on(*ctxs_[i], [&] {
            adopt_routes(*ctxs_[i], runtimes);
            swap_listeners(*ctxs_[i], runtimes, std::move(fresh[i]));
        });
    }
    run_on(*ctxs_.front(), [&] {
        for (const auto& rt : runtimes) {
            start_health_checks(*ctxs_.front(), rt);
        }
    });
    round.ready.insert(round.ready.end(), udp_plan.ready.begin(), udp_plan.ready.end());
    udp_->commit(std::move(udp_plan), true);
    for (const auto& line : round.ready) {
        spdlog::info("{}", line);
    }
    warn_restart_only(cfg_.global, cfg.global);
    cfg_.routes = std::move(cfg.routes); // the process-wide keys stay as started
    spdlog::info("reloaded: {} route(s)", cfg_.routes.size());
}

config_reloader::config_reloader(event_loop& loop, proxy_server& server,
                                 std::function<proxy_config()> load)
    : server_(server), shared_(std::make_shared<shared_state>()) {
    shared_->loop = &loop;
    shared_->load = std::move(load);
}

config_reloader::~config_reloader() {
    stop();
}

bool config_reloader::stopped(shared_state& sh) {
    std::lock_guard lock(sh.mutex);
    return sh.stopped;
}

void config_reloader::request() {
    if (stopped(*shared_)) {
        return;
    }
    if (busy_) {
        again_ = true; // one more read once this one is applied: the file changed again
        return;
    }
    busy_ = true;
    try {
        // Detached: stop() never waits for it (see there). It touches only `sh` until
        // it posts, and posts only while the reloader, and so the loop, still runs.
        std::thread([this, sh = shared_] {
            auto cfg = std::make_shared<proxy_config>();
            std::string error;
            try {
                *cfg = sh->load();
            } catch (const std::exception& e) {
                error = e.what();
            }
            std::lock_guard lock(sh->mutex);
            if (sh->stopped) {
                return; // the proxy is draining or gone: nothing to apply it to
            }
            sh->loop->post([this, sh, cfg, error] {
                if (!stopped(*sh)) {
                    finish(*cfg, error);
                }
            });
        }).detach();
    } catch (const std::system_error& e) {
        busy_ = false;
        spdlog::error("reload refused: cannot start a thread to read the config: {}", e.what());
    }
}

void config_reloader::finish(proxy_config& cfg, const std::string& error) {
    busy_ = false;
    if (!error.empty()) {
        spdlog::error("reload refused: {}", error);
    } else {
        try {
            server_.reload(std::move(cfg));
        } catch (const std::exception& e) {
            spdlog::error("reload refused: {}", e.what());
        }
    }
    if (std::exchange(again_, false)) {
        request();
    } else {
        notify_ready(); // after systemctl reload's RELOADING=1, applied or refused
    }
}

void config_reloader::stop() {
    std::lock_guard lock(shared_->mutex);
    shared_->stopped = true;
}

} // namespace zcio::cli
