// The `zcio proxy` engine: accept loops, a task per connection until the upstream
// answers, then a relay (no coroutine frame while the connection is quiet); drain and
// reload.
#include "proxy_server.hpp"

#include "cli_util.hpp"

#include <malloc.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <future>
#include <sstream>
#include <thread>
#include <unordered_map>

namespace zcio::cli {

using namespace std::chrono_literals;

// One listener on one loop. Its route can be swapped by a reload. Owned by the loop's
// list and by its accept loop: a closed one is freed when its accept loop ends (a
// reload that removed 1,024 ports used to keep them all until the process ended).
struct listener_entry {
    std::shared_ptr<route_runtime> rt;
    zcio::listener listener;
    std::string key; // the endpoint text, for reload diffs
};

struct loop_ctx {
    std::size_t index = 0;
    event_loop* loop = nullptr;
    // Every route this loop has served (by name, never removed): their pools on this
    // loop are refreshed into their gauges by this loop.
    std::vector<std::shared_ptr<route_stats>> routes;
    cancel_source cancel_all;
    std::vector<std::shared_ptr<listener_entry>> listeners;
    connection_budget* budget = nullptr; // the server's, shared by every loop
    std::unique_ptr<relay_set> relays;   // open connections; sweeps their idle timeouts
    bool stopping = false;
};

namespace {

const char* reason_of(const traffic& t) {
    if (t.ok()) {
        return "closed by both sides";
    }
    if (t.error == std::errc::timed_out) {
        return "idle timeout";
    }
    if (t.error == std::errc::operation_canceled) {
        return "shutdown";
    }
    return nullptr;
}

std::string describe_end(const traffic& t) {
    if (const char* r = reason_of(t)) {
        return r;
    }
    const char* side = t.failed == direction::a_to_b ? "client→upstream" : "upstream→client";
    return std::string(side) + " " + t.error.message();
}

// Makes the coming close of `s` send an RST instead of a FIN. Used on every connection
// that did not end with both sides closing cleanly (a reset or an error on either side,
// the idle timeout, a drain cut, an upstream that could not be reached): with a FIN the
// peer would read a clean end of stream and could take a cut transfer for a complete
// one (tests/stress: fault-*-rst, fault-drain-restart).
void abort_on_close(const stream& s) noexcept {
    const ::linger lg{.l_onoff = 1, .l_linger = 0};
    (void)sys::setsockopt(s.fd(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

// A connection counted by the accept loop has ended (or never reached its upstream).
void end_connection(connection_budget& budget, route_stats& stats) noexcept {
    stats.connections_active.fetch_sub(1, std::memory_order_relaxed);
    budget.open.fetch_sub(1, std::memory_order_relaxed);
}

// A connection whose upstream answered: a relay plus what its close line needs. It
// lives in its loop's list (for the shutdown) and deletes itself in on_done().
// Made with `new` from a slab of its own (slab_allocated): connections opened in a
// burst are then packed together instead of between the connect-phase frames, whose
// pages can go back to the kernel once those frames are freed.
class proxied_connection final : public relay, public slab_allocated<proxied_connection> {
public:
    proxied_connection(loop_ctx* ctx, std::shared_ptr<route_runtime> rt, stream client,
                       stream upstream, const bidirectional_options& bo, const endpoint& peer,
                       clock::time_point started)
        : relay(std::move(client), std::move(upstream), bo), rt_(std::move(rt)),
          budget_(ctx->budget), started_(started) {
        // Only what the log line needs of the peer: an IP address fits in 28 bytes (a
        // whole endpoint is 132); a Unix client is unnamed or printed by its family.
        peer_len_ = std::min<socklen_t>(peer.size(), sizeof peer_);
        std::memcpy(&peer_, peer.data(), peer_len_);
        ctx->relays->add(*this); // every relay in the set is a proxied_connection
    }

    // Adds what moved since the last call to the route's byte counters: one relaxed
    // add per direction that moved, called by the loop's refresh tick and at the end.
    // Not after each burst of the relay: a direction that always has data (a rate-
    // limited one, a fast sender) stays in one copy() burst until the stream ends.
    void count_progress() noexcept {
        route_stats& stats = *rt_->stats;
        add_since(stats.bytes_client_to_upstream, a_to_b(), counted_[0]);
        add_since(stats.bytes_upstream_to_client, b_to_a(), counted_[1]);
    }

protected:
    void on_done(const traffic& t) override {
        if (!t.ok()) {
            abort_on_close(a()); // the client
            abort_on_close(b()); // the upstream
        }
        count_progress(); // t.a_to_b == a_to_b(), t.b_to_a == b_to_a()
        end_connection(*budget_, *rt_->stats);
        if (spdlog::should_log(spdlog::level::info)) {
            log_close(t); // its arguments are formatted even when the level drops the line
        }
        delete this; // leaves the set
    }

private:
    void log_close(const traffic& t) const {
        const double secs = std::chrono::duration<double>(clock::now() - started_).count();
        spdlog::info("{} closed client {} upstream {} sent {} received {} in {:.3f}s path {}: {}",
                     rt_->config.name, peer_text(), rt_->config.upstream.to_string(), t.a_to_b,
                     t.b_to_a, secs, path_text(t), describe_end(t));
    }

    static void add_since(std::atomic<std::uint64_t>& counter, std::uint64_t now,
                          std::uint64_t& counted) noexcept {
        if (now != counted) {
            counter.fetch_add(now - counted, std::memory_order_relaxed);
            counted = now;
        }
    }

    std::string peer_text() const {
        if (peer_.sin6_family == AF_UNIX) {
            return "unix:";
        }
        return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&peer_), peer_len_)
            .to_string();
    }

    // The path of each direction that moved bytes ("-" when neither did): a direction
    // that moved nothing only reports the path it would have tried.
    static std::string path_text(const traffic& t) {
        std::string path;
        if (t.a_to_b > 0) {
            path = to_string(t.a_to_b_path);
        }
        if (t.b_to_a > 0 && (t.a_to_b == 0 || t.b_to_a_path != t.a_to_b_path)) {
            path += (path.empty() ? "" : "/") + std::string(to_string(t.b_to_a_path));
        }
        return path.empty() ? "-" : path;
    }

    std::shared_ptr<route_runtime> rt_;
    connection_budget* budget_;
    std::uint64_t counted_[2] = {0, 0}; // bytes already in the route's counters
    clock::time_point started_;
    sockaddr_in6 peer_{}; // IPv4 addresses fit too
    socklen_t peer_len_ = 0;
};

task<void> handle_connection(loop_ctx* ctx, std::shared_ptr<route_runtime> rt, stream client,
                             endpoint peer) {
    const auto started = clock::now();
    route_stats& stats = *rt->stats;
    const route_options& o = rt->config.options;

    std::vector<connect_failure> failed; // each address that failed, for the log line
    auto up = co_await with_cancel(
        *ctx->loop,
        stream::connect(*ctx->loop, rt->config.upstream,
                        std::chrono::duration_cast<clock::duration>(o.connect_timeout), &failed),
        ctx->cancel_all);
    if (!up) {
        if (up.error() == std::errc::timed_out) {
            stats.upstream_connect_timeouts.fetch_add(1, std::memory_order_relaxed);
        } else if (up.error() != std::errc::operation_canceled) {
            stats.upstream_connect_failures.fetch_add(1, std::memory_order_relaxed);
        }
        spdlog::warn("{} client {} upstream {}: {} (client closed)", rt->config.name,
                     peer.to_string(), rt->config.upstream.to_string(),
                     failed.size() > 1 ? to_string(failed) : up.error().message());
        abort_on_close(client);
        end_connection(*ctx->budget, stats);
        co_return;
    }
    if (o.proxy_protocol != proxy_header::none) {
        auto local = client.local_endpoint();
        endpoint dst = local ? *local : endpoint{};
        std::string header = o.proxy_protocol == proxy_header::v1 ? proxy_header_v1(peer, dst)
                                                                  : proxy_header_v2(peer, dst);
        auto w = co_await up->write_all(std::as_bytes(std::span(header)));
        if (!w) {
            spdlog::warn("{} client {} upstream {}: sending the PROXY header: {}", rt->config.name,
                         peer.to_string(), rt->config.upstream.to_string(), w.error().message());
            abort_on_close(client);
            abort_on_close(*up);
            end_connection(*ctx->budget, stats);
            co_return;
        }
    }

    bidirectional_options bo;
    bo.path = o.engine;
    bo.pipe_size = o.pipe_size;
    bo.rate_limit = o.rate_limit;
    if (o.idle_timeout.count() > 0) {
        bo.idle_timeout = std::chrono::duration_cast<clock::duration>(o.idle_timeout);
    }
    bo.pools = &rt->stats->per_loop[ctx->index].pools;
    // From here on the connection is an object, not this coroutine: a quiet one holds
    // no frame. It deletes itself when it ends.
    auto* conn = new proxied_connection(ctx, std::move(rt), std::move(client), std::move(*up), bo,
                                        peer, started);
    conn->start();
}

// Counts a new connection of `rt`, or refuses it: past the route's max_connections,
// or, for a route without one, past the process's descriptor budget, which every
// route's connections share (default_max_connections).
bool admit(loop_ctx& ctx, const route_runtime& rt, const endpoint& peer) {
    route_stats& stats = *rt.stats;
    const auto& own = rt.config.options.max_connections;
    const std::uint64_t limit =
        own ? *own : ctx.budget->default_limit.load(std::memory_order_relaxed);
    const std::uint64_t route_active =
        stats.connections_active.fetch_add(1, std::memory_order_relaxed);
    const std::uint64_t all_active = ctx.budget->open.fetch_add(1, std::memory_order_relaxed);
    const std::uint64_t active = own ? route_active : all_active;
    if (limit == 0 || active < limit) {
        return true;
    }
    end_connection(*ctx.budget, stats);
    stats.connections_refused.fetch_add(1, std::memory_order_relaxed);
    if (own) {
        spdlog::warn("{} refused client {}: --max-connections {} reached", rt.config.name,
                     peer.to_string(), limit);
    } else {
        spdlog::warn("{} refused client {}: {} connections open, all the descriptor limit "
                     "allows (set max_connections to choose)",
                     rt.config.name, peer.to_string(), limit);
    }
    return false;
}

// Holds its listener: a listener closed by a reload is freed when this ends.
task<void> accept_loop(loop_ctx* ctx, std::shared_ptr<listener_entry> entry) {
    while (true) {
        auto a = co_await entry->listener.accept();
        if (!a) {
            if (a.error() == std::errc::operation_canceled || entry->listener.fd() < 0) {
                co_return; // the listener was closed (drain or reload)
            }
            spdlog::error("accept on {}: {}", entry->key, a.error().message());
            co_await sleep_for(*ctx->loop, 100ms); // do not spin on a persistent error
            if (entry->listener.fd() < 0) {
                co_return; // closed while this slept
            }
            continue;
        }
        auto rt = entry->rt;
        route_stats& stats = *rt->stats;
        if (!admit(*ctx, *rt, a->peer)) {
            continue; // `a` goes out of scope: the client is closed at once
        }
        stats.connections_total.fetch_add(1, std::memory_order_relaxed);
        ctx->loop->spawn(handle_connection(ctx, std::move(rt), std::move(a->conn), a->peer));
    }
}

// Stops the loop once the cancelled connections have logged and closed (a few loop
// turns; a rate-limited one may sleep up to its quantum, so the wait is bounded).
task<void> stop_when_closed(loop_ctx* ctx) {
    for (int i = 0; i < 200 && !ctx->relays->empty(); ++i) {
        co_await sleep_for(*ctx->loop, 10ms);
    }
    ctx->loop->stop();
}

// Publishes the pools' gauges; frees the idle pipes and buffers of pools nobody
// leased from for a second (two ticks): kept for reuse while traffic flows, they
// would otherwise hold memory (and pipes) for as long as the proxy sits idle.
// Returns whether it freed anything.
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

// Twice a second: bytes moved by open connections into their routes' counters, and
// the pools into their gauges. One pass over the loop's connections (a few loads
// each) keeps the data path free of atomics; a counter is at most 0.5 s behind.
task<void> refresh_metrics(loop_ctx* ctx) {
    std::uint64_t opened_at_trim = 0;
    while (!ctx->stopping) {
        ctx->relays->for_each(
            [](relay& r) { static_cast<proxied_connection&>(r).count_progress(); });
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

// Unix sockets cannot share an address between loops (no SO_REUSEPORT), so only the
// first loop listens on them.
bool listens_on(const loop_ctx& ctx, const endpoint& ep) {
    return ctx.index == 0 || ep.is_ip();
}

std::shared_ptr<listener_entry> bind_entry(loop_ctx& ctx, std::shared_ptr<route_runtime> rt,
                                           const endpoint& ep) {
    if (ctx.index == 0) {
        ensure_port_free(ep); // the other loops then share the port with loop 0's listener
    }
    listen_options lo;
    lo.reuse_port = ep.is_ip();
    auto l = listener::bind(*ctx.loop, ep, lo);
    if (!l) {
        throw runtime_failure("cannot listen on " + ep.to_string() + ": " + l.error().message());
    }
    auto e = std::make_shared<listener_entry>();
    e->rt = std::move(rt);
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

// The addresses the loop listens on, as configured, with how many listeners each
// has: several routes may ask for "127.0.0.1:0", each with a port of its own.
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

// Listening sockets `cfg` needs on every loop: all of them, and the ones no loop holds
// yet (a reload keeps a listener whose address stays, at no cost). Reads the loops'
// lists: call before the loops run or from the thread that alone changes them.
struct listener_count {
    std::uint64_t total = 0;
    std::uint64_t fresh = 0;
};
listener_count count_listeners(const std::vector<std::unique_ptr<loop_ctx>>& ctxs,
                               const proxy_config& cfg) {
    listener_count n;
    for (const auto& ctx : ctxs) {
        auto held = listener_keys(*ctx);
        for (const auto& r : cfg.routes) {
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
    const bool used = std::ranges::any_of(
        cfg.routes, [](const route& r) { return !r.options.max_connections.has_value(); });
    if (budget.default_limit.exchange(limit, std::memory_order_relaxed) != limit && used &&
        limit != 0) {
        spdlog::info("up to {} connections for the routes without max_connections together "
                     "(descriptor limit {}, {} listening sockets)",
                     limit, descriptor_limit().value_or(0), listeners);
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

} // namespace

proxy_server::proxy_server(proxy_config cfg, std::size_t threads) : cfg_(std::move(cfg)) {
    group_ = std::make_unique<loop_group>(threads);
    for (std::size_t i = 0; i < group_->size(); ++i) {
        auto c = std::make_unique<loop_ctx>();
        c->index = i;
        c->loop = &group_->loop(i);
        c->budget = &budget_;
        c->relays = std::make_unique<relay_set>(*c->loop, idle_tick(cfg_));
        if (cfg_.global.busy_poll) {
            c->loop->set_busy_poll(
                std::chrono::duration_cast<clock::duration>(*cfg_.global.busy_poll));
        }
        ctxs_.push_back(std::move(c));
    }
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
        s = std::make_shared<route_stats>(group_->size());
    }
    return s;
}

std::vector<std::shared_ptr<route_runtime>> proxy_server::make_runtimes(const proxy_config& cfg) {
    std::vector<std::shared_ptr<route_runtime>> out;
    for (const auto& r : cfg.routes) {
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
    }
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
            ready.push_back(rt->config.name + " listening on " + ep.to_string() + " → " +
                            rt->config.upstream.to_string());
        }
    }
    set_default_limit(budget_, cfg_, need.total);
    for (const auto& line : ready) {
        spdlog::info("{}", line);
    }
    for (auto& ctx : ctxs_) {
        for (auto& e : ctx->listeners) {
            ctx->loop->spawn(accept_loop(ctx.get(), e));
        }
        ctx->loop->spawn(refresh_metrics(ctx.get()));
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
        n += s->connections_active.load(std::memory_order_relaxed);
    }
    return n;
}

void proxy_server::drain(std::chrono::nanoseconds timeout) {
    if (!started_) {
        return;
    }
    started_ = false;
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
    auto runtimes = make_runtimes(cfg);
    std::vector<std::vector<std::shared_ptr<listener_entry>>> fresh(ctxs_.size());
    // New addresses with port 0: the first loop that binds one picks the port and the
    // others reuse it, as in start(). By route and address as configured (a file's
    // addresses are unique but for port 0: load_config_file checks).
    std::map<std::pair<const route_runtime*, std::string>, endpoint> resolved;
    std::vector<std::string> ready;
    std::string failure;
    for (std::size_t i = 0; i < ctxs_.size() && failure.empty(); ++i) {
        loop_ctx& c = *ctxs_[i];
        run_on(c, [&] {
            auto held = listener_keys(c);
            try {
                for (const auto& rt : runtimes) {
                    for (const auto& ep : rt->config.listen) {
                        const std::string key = ep.to_string();
                        if (!listens_on(c, ep) || take(held, key)) {
                            continue;
                        }
                        const auto known = resolved.find({rt.get(), key});
                        auto e = bind_entry(c, rt, known != resolved.end() ? known->second : ep);
                        e->key = key;
                        if (known == resolved.end()) {
                            const endpoint bound = e->listener.local_endpoint();
                            resolved.emplace(std::pair{rt.get(), key}, bound);
                            ready.push_back(rt->config.name + " listening on " + bound.to_string() +
                                            " → " + rt->config.upstream.to_string());
                        }
                        fresh[i].push_back(std::move(e));
                    }
                }
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
        throw runtime_failure(failure);
    }
    // Commit: nothing below can fail.
    for (const auto& rt : runtimes) {
        rt->stats = stats_for(rt->config.name);
    }
    set_default_limit(budget_, cfg, need.total);
    for (std::size_t i = 0; i < ctxs_.size(); ++i) {
        loop_ctx& c = *ctxs_[i];
        run_on(c, [&] {
            adopt_routes(c, runtimes);
            // Same key: the listeners in the order they were made, as the routes take
            // them (several port-0 routes keep their own ports, on every loop).
            std::unordered_map<std::string, std::deque<std::shared_ptr<listener_entry>>> held;
            for (auto& e : c.listeners) {
                held[e->key].push_back(std::move(e));
            }
            std::vector<std::shared_ptr<listener_entry>> next = std::move(fresh[i]);
            for (auto& e : next) {
                c.loop->spawn(accept_loop(&c, e));
            }
            for (const auto& rt : runtimes) {
                for (const auto& ep : rt->config.listen) {
                    if (!listens_on(c, ep)) {
                        continue;
                    }
                    auto it = held.find(ep.to_string());
                    if (it != held.end() && !it->second.empty()) {
                        it->second.front()->rt = rt; // same address: keep the socket
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
        });
    }
    for (const auto& line : ready) {
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
    }
}

void config_reloader::stop() {
    std::lock_guard lock(shared_->mutex);
    shared_->stopped = true;
}

namespace {

// A label value of the text format: backslash, double quote and newline escaped (a
// route name is free text in the config file).
std::string label_value(std::string_view v) {
    std::string out;
    out.reserve(v.size());
    for (char ch : v) {
        if (ch == '\\' || ch == '"') {
            out += '\\';
            out += ch;
        } else if (ch == '\n') {
            out += "\\n";
        } else {
            out += ch;
        }
    }
    return out;
}

void family_head(std::ostringstream& out, const char* name, const char* type, const char* help) {
    out << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n';
}

} // namespace

std::string proxy_server::metrics_text() const {
    std::ostringstream out;
    struct family {
        const char* name;
        const char* type;
        const char* help;
        std::atomic<std::uint64_t> route_stats::*field;
    };
    static const family families[] = {
        {"zcio_connections_total", "counter", "Client connections accepted and proxied",
         &route_stats::connections_total},
        {"zcio_connections_active", "gauge", "Client connections open now",
         &route_stats::connections_active},
        {"zcio_connections_refused_total", "counter",
         "Client connections closed at once because --max-connections was reached",
         &route_stats::connections_refused},
        {"zcio_bytes_client_to_upstream_total", "counter",
         "Bytes relayed from clients to the upstream, counted while they move (at most 0.5 s "
         "late)",
         &route_stats::bytes_client_to_upstream},
        {"zcio_bytes_upstream_to_client_total", "counter",
         "Bytes relayed from the upstream to clients, counted while they move (at most 0.5 s "
         "late)",
         &route_stats::bytes_upstream_to_client},
        {"zcio_upstream_connect_failures_total", "counter", "Upstream connects that failed",
         &route_stats::upstream_connect_failures},
        {"zcio_upstream_connect_timeouts_total", "counter", "Upstream connects that timed out",
         &route_stats::upstream_connect_timeouts},
    };
    struct gauge {
        const char* name;
        const char* help;
        std::atomic<std::uint64_t> pool_gauges::*field;
    };
    static const gauge gauges[] = {
        {"zcio_pipes_leased", "Pipes held by the route's transfers now, per event loop",
         &pool_gauges::pipes_leased},
        {"zcio_pipes_idle", "Empty pipes kept for reuse in the route's pool, per event loop",
         &pool_gauges::pipes_idle},
        {"zcio_buffers_leased", "Buffers held by the route's transfers now, per event loop",
         &pool_gauges::buffers_leased},
        {"zcio_buffers_idle", "Buffers kept for reuse in the route's pool, per event loop",
         &pool_gauges::buffers_idle},
    };
    const std::size_t loops = ctxs_.size();
    std::lock_guard lock(stats_mutex_);
    for (const auto& f : families) {
        family_head(out, f.name, f.type, f.help);
        for (const auto& [name, s] : stats_) {
            out << f.name << "{route=\"" << label_value(name) << "\"} "
                << ((*s).*(f.field)).load(std::memory_order_relaxed) << '\n';
        }
    }
    for (const auto& g : gauges) {
        family_head(out, g.name, "gauge", g.help);
        for (const auto& [name, s] : stats_) {
            for (std::size_t i = 0; i < loops; ++i) {
                out << g.name << "{route=\"" << label_value(name) << "\",loop=\"" << i << "\"} "
                    << (s->per_loop[i].gauges.*(g.field)).load(std::memory_order_relaxed) << '\n';
            }
        }
    }
    return out.str();
}

} // namespace zcio::cli
