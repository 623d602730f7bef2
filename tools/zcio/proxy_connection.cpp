// The `zcio proxy` connections: accepted against the limits, a task each until the
// upstream answers, then a relay (no coroutine frame while the connection is quiet).
#include "proxy_loop.hpp"

#include "cli_util.hpp"
#include "compact_peer.hpp"

#include <spdlog/spdlog.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

namespace zcio::cli {

using namespace std::chrono_literals;

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

} // namespace

// A connection whose upstream answered: a relay plus what its close line needs. It
// lives in its loop's relay set (for the idle sweep, the metrics tick and the
// shutdown), holds its slot in the route's limit, and deletes itself in on_done().
// Made with `new` from a slab of its own (slab_allocated): connections opened in a
// burst are then packed together instead of between the connect-phase frames, whose
// pages can go back to the kernel once those frames are freed.
class proxied_connection final : public relay, public slab_allocated<proxied_connection> {
public:
    proxied_connection(loop_ctx* ctx, std::shared_ptr<route_runtime> rt, stream client,
                       upstream_link upstream, const bidirectional_options& bo,
                       const endpoint& peer, clock::time_point started, connection_slot slot)
        : relay(std::move(client), std::move(upstream.conn), bo), rt_(std::move(rt)),
          slot_(std::move(slot)), started_(started), peer_(compact_peer::of(peer)),
          server_(upstream.index) {
        // The server's state and label live in rt_'s upstream group, which the
        // connection keeps alive: an index here, not a shared_ptr and a string (48
        // bytes on every idle connection).
        ctx->relays->add(*this);
    }

    // Adds what moved since the last call to the route's byte counters: one relaxed
    // add per direction that moved, called by the loop's refresh tick (through the
    // relay set) and at the end, not on every step: a busy route's counters are
    // shared by every loop, so per-step adds would bounce their cache line.
    void report() noexcept override {
        route_stats& stats = *rt_->stats;
        upstream_state& server = this->server();
        const std::uint64_t up = a_to_b();
        const std::uint64_t down = b_to_a();
        if (up != counted_[0]) {
            server.bytes_to_server.fetch_add(up - counted_[0], std::memory_order_relaxed);
        }
        if (down != counted_[1]) {
            server.bytes_from_server.fetch_add(down - counted_[1], std::memory_order_relaxed);
        }
        add_since(stats.bytes_client_to_upstream, up, counted_[0]);
        add_since(stats.bytes_upstream_to_client, down, counted_[1]);
    }

protected:
    void on_done(const traffic& t) override {
        if (!t.ok()) {
            abort_on_close(a()); // the client
            abort_on_close(b()); // the upstream
        }
        report(); // t.a_to_b == a_to_b(), t.b_to_a == b_to_a()
        server().active.fetch_sub(1, std::memory_order_relaxed);
        slot_.release();
        if (spdlog::should_log(spdlog::level::info)) {
            log_close(t); // its arguments are formatted even when the level drops the line
        }
        delete this; // leaves the set
    }

private:
    void log_close(const traffic& t) const {
        const double secs = std::chrono::duration<double>(clock::now() - started_).count();
        spdlog::info("{} closed client {} upstream {} sent {} received {} in {:.3f}s path {}: {}",
                     rt_->config.name, peer_.to_string(), rt_->upstreams->labels[server_], t.a_to_b,
                     t.b_to_a, secs, path_text(t), describe_end(t));
    }

    static void add_since(std::atomic<std::uint64_t>& counter, std::uint64_t now,
                          std::uint64_t& counted) noexcept {
        if (now != counted) {
            counter.fetch_add(now - counted, std::memory_order_relaxed);
            counted = now;
        }
    }

    [[nodiscard]] upstream_state& server() const noexcept {
        return rt_->upstreams->set.state(server_);
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
    connection_slot slot_;              // in the route's limit until the connection ends
    std::uint64_t counted_[2] = {0, 0}; // bytes already in the route's counters
    clock::time_point started_;
    compact_peer peer_;    // for the close line
    std::uint32_t server_; // in rt_->upstreams; its `active` counts this connection
};

namespace {

task<void> handle_connection(loop_ctx* ctx, std::shared_ptr<route_runtime> rt, stream client,
                             endpoint peer, connection_slot slot) {
    const auto started = clock::now();
    const route_options& o = rt->config.options;
    endpoint header_destination; // accept_proxy: where the original client connected
    if (o.accept_proxy.enabled) {
        // From here on `peer` is the original client the header names (the real peer
        // for LOCAL): logs, metrics, balancing and an outgoing header carry it.
        auto reading = accept_proxy_header(*rt, client, peer);
        auto accepted = co_await std::move(reading);
        if (!accepted) {
            abort_on_close(client); // counted and logged
            co_return;
        }
        peer = accepted->source;
        header_destination = accepted->destination;
    }

    auto connecting = connect_upstream(ctx, rt.get(), peer);
    auto up = co_await std::move(connecting);
    if (!up) {
        abort_on_close(client); // connect_upstream counted and logged it
        co_return;              // the slot goes with the frame
    }
    if (o.proxy_protocol != proxy_header::none) {
        auto local = client.local_endpoint();
        endpoint dst = header_destination.family() != AF_UNSPEC ? header_destination
                       : local                                  ? *local
                                                                : endpoint{};
        std::string header = o.proxy_protocol == proxy_header::v1 ? proxy_header_v1(peer, dst)
                                                                  : proxy_header_v2(peer, dst);
        auto w = co_await up->conn.write_all(std::as_bytes(std::span(header)));
        if (!w) {
            spdlog::warn("{} client {} upstream {}: sending the PROXY header: {}", rt->config.name,
                         peer.to_string(), up->label, w.error().message());
            abort_on_close(client);
            abort_on_close(up->conn);
            up->server->active.fetch_sub(1, std::memory_order_relaxed);
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
                                        peer, started, std::move(slot));
    conn->start();
}

// Counts and logs a client refused by the limit of `rt`: the route's max_connections,
// or, for a route without one, the process's descriptor budget, which every route's
// connections share (default_max_connections). The client is closed at once.
void refused(const route_runtime& rt, const endpoint& peer) {
    rt.stats->connections_refused.fetch_add(1, std::memory_order_relaxed);
    if (rt.config.options.max_connections) {
        spdlog::warn("{} refused client {}: --max-connections {} reached", rt.config.name,
                     peer.to_string(), *rt.config.options.max_connections);
    } else {
        spdlog::warn("{} refused client {}: {} connections open, all the descriptor limit "
                     "allows (set max_connections to choose)",
                     rt.config.name, peer.to_string(), rt.stats->active.applied_max());
    }
}

} // namespace

void set_route(listener_entry& e, std::shared_ptr<route_runtime> rt) {
    e.accepting.limit = &rt->stats->active;
    e.rt = std::move(rt);
}

void start_accepting(loop_ctx& ctx, std::shared_ptr<listener_entry> e) {
    listener_entry* entry = e.get();
    set_route(*entry, entry->rt);
    entry->accepting.refused = [entry](accepted a) { refused(*entry->rt, a.peer); };
    entry->accepting.failed = [entry](const std::error_code& err) {
        spdlog::error("accept on {}: {}", entry->key, err.message());
    };
    loop_ctx* c = &ctx;
    auto handler = [c, e](accepted a, connection_slot slot) {
        e->rt->stats->connections_total.fetch_add(1, std::memory_order_relaxed);
        c->loop->spawn(handle_connection(c, e->rt, std::move(a.conn), a.peer, std::move(slot)));
    };
    ctx.loop->spawn(accept_loop(&entry->listener, &entry->accepting, std::move(handler)));
}

void count_progress(loop_ctx& ctx) noexcept {
    ctx.relays->report_all();
}

} // namespace zcio::cli
