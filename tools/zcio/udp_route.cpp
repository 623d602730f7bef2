// UDP routes of `zcio proxy`: their forwarders on every loop through
// start, reload (all or nothing, unchanged instances kept) and drain.
#include "udp_route.hpp"

#include "cli_util.hpp"
#include "proxy_loop.hpp"
#include "route_config.hpp"
#include "socket_inventory.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <span>

namespace zcio::cli {

namespace {

// Everything that makes one instance differ from another: a reload keeps an instance
// whose fingerprint it finds again, and restarts it otherwise.
std::string udp_fingerprint(const route& r, const endpoint& listen) {
    const auto& u = r.udp;
    return r.name + "|" + listen.to_string() + "|" + r.upstream.addresses_text() + "|" +
           std::to_string(u.max_sessions.value_or(UINT64_MAX)) + "|" +
           std::to_string(u.session_timeout.count()) + "|" + std::to_string(u.responses) + "|" +
           (u.accept_proxy ? "a" : "-") + to_string(r.options.proxy_protocol);
}

udp_forward_options forward_options(const route& r, std::size_t loops) {
    udp_forward_options o;
    // One upstream for now: the first address of its name (a balancer over all of
    // them plugs in through udp_forward_options::choose_upstream).
    o.upstream = r.upstream.front();
    if (r.udp.max_sessions) {
        const std::uint64_t share = (*r.udp.max_sessions + loops - 1) / loops;
        o.max_sessions = static_cast<std::size_t>(std::max<std::uint64_t>(share, 1));
    } else {
        o.max_sessions = std::max<std::size_t>(udp_default_max_sessions() / loops, 1);
    }
    o.session_timeout = std::chrono::duration_cast<clock::duration>(r.udp.session_timeout);
    o.responses = r.udp.responses;
    o.accept_proxy_v2 = r.udp.accept_proxy;
    o.send_proxy_v2 = r.options.proxy_protocol == proxy_header::v2;
    return o;
}

// Runs one forwarder until its slot is cancelled or its socket fails (logged).
task<void> serve_udp(event_loop* loop, udp_socket sock, udp_forward_options opt,
                     std::shared_ptr<udp_forwarder_slot> slot, std::string name) {
    auto r = co_await with_cancel(
        *loop, udp_forward(std::move(sock), std::move(opt), &slot->counters), slot->cancel);
    if (!r && r.error() != std::errc::operation_canceled) {
        spdlog::error("{}: UDP forwarding stopped: {}", name, r.error().message());
    }
}

// Why a fixed UDP port cannot be ours, or empty: as ensure_port_free does for TCP, a
// probe bind without SO_REUSEPORT, since with it a second process of the same user
// would silently get part of the datagrams.
std::string udp_port_in_use(const endpoint& ep) {
    if (ep.port() == 0) {
        return {};
    }
    auto probe = sys::socket(ep.family(), SOCK_DGRAM);
    if (!probe) {
        return {}; // the real bind reports what is wrong
    }
    if (auto b = sys::bind(probe->get(), ep.data(), ep.size()); !b) {
        return "cannot listen on udp:" + ep.to_string() + ": " + b.error().message();
    }
    return {};
}

// Runs `fn` on the loop of `ctx` when the loops run, here otherwise.
void on_loop(loop_ctx& ctx, bool running, const std::function<void()>& fn) {
    if (running) {
        run_on(ctx, fn);
    } else {
        fn();
    }
}

} // namespace

void udp_routes::bind_instance(udp_instance& inst, bool running) {
    // A changed route on an address a running instance holds: the port is ours, the
    // probe would see our own socket (both are bound with SO_REUSEPORT until the old
    // one stops at the commit).
    const bool ours = std::ranges::any_of(running_, [&](const auto& r) {
        return r->wanted == inst.wanted || r->bound == inst.wanted;
    });
    inst.pending.resize(loops_.size());
    endpoint at = inst.wanted;
    for (std::size_t i = 0; i < loops_.size(); ++i) {
        std::string error;
        on_loop(*loops_[i], running, [&] {
            // A socket handed over or passed by systemd (takeover.hpp) is ours already.
            auto inherited = socket_inventory::instance().claim(socket_kind::datagram, at, i);
            if (i == 0 && !ours && !inherited) {
                error = udp_port_in_use(at);
                if (!error.empty()) {
                    return;
                }
            }
            auto s = inherited ? udp_socket::adopt(*loops_[i]->loop, std::move(*inherited))
                               : udp_socket::bind(*loops_[i]->loop, at, true);
            if (!s) {
                error = "cannot listen on udp:" + at.to_string() + ": " + s.error().message();
                return;
            }
            at = s->local_endpoint().value_or(at); // port 0: the others take this one
            inst.pending[i] = std::make_unique<udp_socket>(std::move(*s));
        });
        if (!error.empty()) {
            close_pending(inst, running);
            throw runtime_failure(error);
        }
    }
    inst.bound = at;
}

void udp_routes::close_pending(udp_instance& inst, bool running) {
    for (std::size_t i = 0; i < inst.pending.size(); ++i) {
        if (inst.pending[i]) {
            on_loop(*loops_[i], running, [&] { inst.pending[i].reset(); });
        }
    }
    inst.pending.clear();
}

udp_routes::plan udp_routes::prepare(const std::vector<route>& routes, bool running) {
    plan p;
    std::vector<bool> kept(running_.size(), false); // each running instance kept once
    try {
        for (const auto& r : routes) {
            if (r.protocol != route_protocol::udp) {
                continue;
            }
            for (const auto& ep : r.listen) {
                const std::string fp = udp_fingerprint(r, ep);
                std::size_t k = 0;
                while (k < running_.size() && (kept[k] || running_[k]->fingerprint != fp)) {
                    ++k;
                }
                if (k < running_.size()) {
                    kept[k] = true;
                    p.next.push_back(running_[k]);
                    continue;
                }
                auto inst = std::make_shared<udp_instance>();
                inst->route_name = r.name;
                inst->fingerprint = fp;
                inst->upstream_text = r.upstream.to_string();
                inst->wanted = ep;
                inst->options = forward_options(r, loops_.size());
                bind_instance(*inst, running);
                p.ready.push_back(r.name + " listening on udp:" + inst->bound.to_string() + " → " +
                                  inst->upstream_text);
                p.next.push_back(std::move(inst));
            }
        }
    } catch (...) {
        discard(p, running);
        throw;
    }
    return p;
}

void udp_routes::discard(plan& p, bool running) {
    for (auto& inst : p.next) {
        if (!inst->pending.empty()) {
            close_pending(*inst, running);
        }
    }
    p.next.clear();
}

void udp_routes::commit(plan p, bool running) {
    for (auto& inst : p.next) {
        if (inst->pending.empty()) {
            continue; // kept: it runs on
        }
        for (std::size_t i = 0; i < loops_.size(); ++i) {
            auto slot = std::make_shared<udp_forwarder_slot>();
            inst->slots.push_back(slot);
            {
                std::lock_guard lock(mutex_);
                by_route_[inst->route_name].push_back(slot);
            }
            loop_ctx* ctx = loops_[i];
            inst->fds.push_back(inst->pending[i]->fd());
            on_loop(*ctx, running, [&] {
                ctx->loop->spawn(serve_udp(ctx->loop, std::move(*inst->pending[i]), inst->options,
                                           slot, inst->route_name));
            });
        }
        inst->pending.clear();
    }
    for (auto& old : running_) {
        if (std::ranges::find(p.next, old) == p.next.end()) {
            for (std::size_t i = 0; i < old->slots.size(); ++i) {
                auto slot = old->slots[i];
                loops_[i]->loop->post([slot] { slot->cancel.cancel(); });
            }
        }
    }
    running_ = std::move(p.next);
}

std::vector<std::pair<std::string, int>> udp_routes::socket_fds() const {
    std::vector<std::pair<std::string, int>> out;
    for (const auto& inst : running_) {
        for (int fd : inst->fds) {
            out.emplace_back("udp:" + inst->bound.to_string(), fd);
        }
    }
    return out;
}

void udp_routes::stop() {
    for (auto& inst : running_) {
        for (std::size_t i = 0; i < inst->slots.size(); ++i) {
            auto slot = inst->slots[i];
            loops_[i]->loop->post([slot] { slot->cancel.cancel(); });
        }
    }
    running_.clear();
}

namespace {

struct udp_family {
    const char* name;
    const char* type;
    const char* help;
    std::atomic<std::uint64_t> udp_forward_counters::*field;
};

const udp_family udp_families[] = {
    {"zcio_udp_sessions_active", "gauge", "UDP sessions open now",
     &udp_forward_counters::sessions_active},
    {"zcio_udp_sessions_total", "counter", "UDP sessions opened",
     &udp_forward_counters::sessions_created},
    {"zcio_udp_sessions_expired_total", "counter", "UDP sessions ended by session_timeout",
     &udp_forward_counters::sessions_expired},
    {"zcio_udp_sessions_refused_total", "counter",
     "UDP sessions ended by an ICMP error from the upstream (ECONNREFUSED)",
     &udp_forward_counters::sessions_refused},
    {"zcio_udp_sessions_completed_total", "counter", "UDP sessions ended by `responses`",
     &udp_forward_counters::sessions_completed},
    {"zcio_udp_datagrams_client_to_upstream_total", "counter",
     "Datagrams forwarded from clients to the upstream",
     &udp_forward_counters::datagrams_to_upstream},
    {"zcio_udp_datagrams_upstream_to_client_total", "counter",
     "Datagrams forwarded from the upstream to clients",
     &udp_forward_counters::datagrams_to_client},
    {"zcio_udp_bytes_client_to_upstream_total", "counter",
     "Bytes sent to the upstream (PROXY headers included)",
     &udp_forward_counters::bytes_to_upstream},
    {"zcio_udp_bytes_upstream_to_client_total", "counter", "Bytes sent back to clients",
     &udp_forward_counters::bytes_to_client},
};

struct udp_drop {
    const char* reason;
    std::atomic<std::uint64_t> udp_forward_counters::*field;
};
const udp_drop udp_drops[] = {
    {"table_full", &udp_forward_counters::dropped_table_full},
    {"truncated", &udp_forward_counters::dropped_truncated},
    {"proxy_header", &udp_forward_counters::dropped_proxy_header},
    {"no_socket", &udp_forward_counters::dropped_no_socket},
    {"send", &udp_forward_counters::dropped_send},
    {"after_responses", &udp_forward_counters::dropped_after_responses},
};

std::string udp_label(std::string_view v) {
    std::string out;
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

} // namespace

void udp_routes::write_metrics(std::ostringstream& out) const {
    std::lock_guard lock(mutex_);
    if (by_route_.empty()) {
        return;
    }
    const auto sum = [](const std::vector<std::shared_ptr<udp_forwarder_slot>>& slots,
                        std::atomic<std::uint64_t> udp_forward_counters::*field) {
        std::uint64_t n = 0;
        for (const auto& s : slots) {
            n += (s->counters.*field).load(std::memory_order_relaxed);
        }
        return n;
    };
    for (const auto& f : udp_families) {
        out << "# HELP " << f.name << ' ' << f.help << "\n# TYPE " << f.name << ' ' << f.type
            << '\n';
        for (const auto& [name, slots] : by_route_) {
            out << f.name << "{route=\"" << udp_label(name) << "\"} " << sum(slots, f.field)
                << '\n';
        }
    }
    out << "# HELP zcio_udp_dropped_total Datagrams dropped, by reason\n"
           "# TYPE zcio_udp_dropped_total counter\n";
    for (const auto& [name, slots] : by_route_) {
        for (const auto& d : udp_drops) {
            out << "zcio_udp_dropped_total{route=\"" << udp_label(name) << "\",reason=\""
                << d.reason << "\"} " << sum(slots, d.field) << '\n';
        }
    }
}

} // namespace zcio::cli
