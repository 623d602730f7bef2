// The `zcio proxy` metrics: every route's counters and pools in the Prometheus text
// format.
#include "proxy_loop.hpp"

#include "cli_util.hpp"

#include <spdlog/spdlog.h>

#include <map>
#include <memory>
#include <sstream>
#include <string_view>
#include <vector>

namespace zcio::cli {

using namespace std::chrono_literals;

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

template <std::atomic<std::uint64_t> route_stats::*Field>
std::uint64_t counter(const route_stats& s) {
    return (s.*Field).load(std::memory_order_relaxed);
}

using stats_map = std::map<std::string, std::shared_ptr<route_stats>>;

// A route's counters and gauges, one series per route.
struct metric_family {
    const char* name;
    const char* type;
    const char* help;
    std::uint64_t (*value)(const route_stats&);
};
const metric_family route_families[] = {
    {"zcio_connections_total", "counter", "Client connections accepted and proxied",
     counter<&route_stats::connections_total>},
    {"zcio_connections_active", "gauge", "Client connections open now",
     [](const route_stats& r) { return r.active.open(); }},
    {"zcio_connections_refused_total", "counter",
     "Client connections closed at once because --max-connections was reached",
     counter<&route_stats::connections_refused>},
    {"zcio_bytes_client_to_upstream_total", "counter",
     "Bytes relayed from clients to the upstream, counted while they move (at most 0.5 s "
     "late)",
     counter<&route_stats::bytes_client_to_upstream>},
    {"zcio_bytes_upstream_to_client_total", "counter",
     "Bytes relayed from the upstream to clients, counted while they move (at most 0.5 s "
     "late)",
     counter<&route_stats::bytes_upstream_to_client>},
    {"zcio_upstream_connect_failures_total", "counter", "Upstream connects that failed",
     counter<&route_stats::upstream_connect_failures>},
    {"zcio_upstream_connect_timeouts_total", "counter", "Upstream connects that timed out",
     counter<&route_stats::upstream_connect_timeouts>},
    {"zcio_upstream_unavailable_total", "counter",
     "Clients closed at once because no upstream server could be reached",
     counter<&route_stats::upstream_unavailable>},
};

void write_route_series(std::ostringstream& out, const stats_map& stats) {
    for (const auto& f : route_families) {
        family_head(out, f.name, f.type, f.help);
        for (const auto& [name, s] : stats) {
            out << f.name << "{route=\"" << label_value(name) << "\"} " << f.value(*s) << '\n';
        }
    }
}

// accept_proxy: headers accepted, and clients closed for theirs by reason.
void write_accept_proxy_series(std::ostringstream& out, const stats_map& stats) {
    family_head(out, "zcio_proxy_headers_accepted_total", "counter",
                "PROXY headers accepted from clients (accept_proxy)");
    for (const auto& [name, s] : stats) {
        out << "zcio_proxy_headers_accepted_total{route=\"" << label_value(name) << "\"} "
            << s->proxy_accept.accepted.load(std::memory_order_relaxed) << '\n';
    }
    family_head(out, "zcio_proxy_unlisted_direct_total", "counter",
                "Clients outside accept_proxy_from served without a header (proxy_unlisted)");
    for (const auto& [name, s] : stats) {
        out << "zcio_proxy_unlisted_direct_total{route=\"" << label_value(name) << "\"} "
            << s->proxy_accept.direct.load(std::memory_order_relaxed) << '\n';
    }
    family_head(out, "zcio_proxy_header_refused_total", "counter",
                "Clients closed for their PROXY header (accept_proxy), by reason");
    for (const auto& [name, s] : stats) {
        for (std::size_t i = 0; i < header_refusal_count; ++i) {
            out << "zcio_proxy_header_refused_total{route=\"" << label_value(name) << "\",reason=\""
                << to_string(static_cast<header_refusal>(i)) << "\"} "
                << s->proxy_accept.refused[i].load(std::memory_order_relaxed) << '\n';
        }
    }
}

// The pools' gauges, one series per route and loop.
struct pool_gauge {
    const char* name;
    const char* help;
    std::atomic<std::uint64_t> pool_gauges::*field;
};
const pool_gauge pool_gauges_list[] = {
    {"zcio_pipes_leased", "Pipes held by the route's transfers now, per event loop",
     &pool_gauges::pipes_leased},
    {"zcio_pipes_idle", "Empty pipes kept for reuse in the route's pool, per event loop",
     &pool_gauges::pipes_idle},
    {"zcio_buffers_leased", "Buffers held by the route's transfers now, per event loop",
     &pool_gauges::buffers_leased},
    {"zcio_buffers_idle", "Buffers kept for reuse in the route's pool, per event loop",
     &pool_gauges::buffers_idle},
};

void write_pool_series(std::ostringstream& out, const stats_map& stats, std::size_t loops) {
    for (const auto& g : pool_gauges_list) {
        family_head(out, g.name, "gauge", g.help);
        for (const auto& [name, s] : stats) {
            for (std::size_t i = 0; i < loops; ++i) {
                out << g.name << "{route=\"" << label_value(name) << "\",loop=\"" << i << "\"} "
                    << (s->per_loop[i].gauges.*(g.field)).load(std::memory_order_relaxed) << '\n';
            }
        }
    }
}

// Each server of each route's current group, labelled route and server.
struct server_family {
    const char* name;
    const char* type;
    const char* help;
    std::atomic<std::uint64_t> upstream_state::*field; // nullptr: zcio_upstream_up
};
const server_family server_families[] = {
    {"zcio_upstream_up", "gauge",
     "1 while the server takes new connections by its health (passive and active checks)", nullptr},
    {"zcio_upstream_active", "gauge", "Connections open to the server now",
     &upstream_state::active},
    {"zcio_upstream_connects_total", "counter", "Connects to the server that succeeded",
     &upstream_state::connects},
    {"zcio_upstream_server_connect_failures_total", "counter",
     "Connects to the server that failed or timed out", &upstream_state::connect_failures},
    {"zcio_upstream_bytes_to_server_total", "counter",
     "Bytes relayed from clients to the server (at most 0.5 s late)",
     &upstream_state::bytes_to_server},
    {"zcio_upstream_bytes_from_server_total", "counter",
     "Bytes relayed from the server to clients (at most 0.5 s late)",
     &upstream_state::bytes_from_server},
};

void write_server_series(std::ostringstream& out, const stats_map& stats) {
    std::vector<std::pair<std::string, std::shared_ptr<upstream_group>>> groups;
    for (const auto& [name, s] : stats) {
        if (auto g = s->current_upstreams(); g && !g->retired.load(std::memory_order_relaxed)) {
            groups.emplace_back(label_value(name), std::move(g));
        }
    }
    for (const auto& f : server_families) {
        family_head(out, f.name, f.type, f.help);
        for (const auto& [route, g] : groups) {
            for (std::size_t i = 0; i < g->set.size(); ++i) {
                std::uint64_t v = 0;
                if (f.field == nullptr) {
                    std::lock_guard lock(g->mutex);
                    v = g->set.is_up(i) ? 1 : 0;
                } else {
                    v = (g->set.state(i).*(f.field)).load(std::memory_order_relaxed);
                }
                out << f.name << "{route=\"" << route << "\",server=\"" << label_value(g->labels[i])
                    << "\"} " << v << '\n';
            }
        }
    }
}

} // namespace

std::string proxy_server::metrics_text() const {
    std::ostringstream out;
    std::lock_guard lock(stats_mutex_);
    write_route_series(out, stats_);
    write_accept_proxy_series(out, stats_);
    write_pool_series(out, stats_, ctxs_.size());
    write_server_series(out, stats_);
    udp_->write_metrics(out);
    return out.str();
}

} // namespace zcio::cli
