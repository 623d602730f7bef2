// The `zcio proxy` engine's part of a take-over (takeover.hpp): its listening sockets
// for the new process, and stopping accepting without closing them for it.
#include "proxy_loop.hpp"

#include "socket_inventory.hpp"

#include <spdlog/spdlog.h>

namespace zcio::cli {

void adopt_extra_sockets(const std::vector<std::unique_ptr<loop_ctx>>& ctxs,
                         const std::shared_ptr<route_runtime>& rt, const endpoint& wanted,
                         const endpoint& bound) {
    auto extra = socket_inventory::instance().extras(socket_kind::stream, bound, ctxs.size());
    for (std::size_t i = 0; i < extra.size(); ++i) {
        auto& ctx = *ctxs[i % ctxs.size()];
        auto l = listener::adopt(*ctx.loop, std::move(extra[i]));
        if (!l) {
            spdlog::warn("take-over: an extra socket of {}: {}", bound.to_string(),
                         l.error().message());
            continue;
        }
        auto e = std::make_shared<listener_entry>();
        e->rt = rt;
        e->listener = std::move(*l);
        e->key = wanted.to_string();
        ctx.listeners.push_back(std::move(e));
    }
}

std::vector<handed_socket> proxy_server::listening_sockets() {
    std::vector<handed_socket> out;
    for (auto& ctx : ctxs_) {
        run_on(*ctx, [&] {
            for (const auto& e : ctx->listeners) {
                if (auto fd = sys::dup(e->listener.fd())) {
                    out.push_back({e->listener.local_endpoint().to_string(), std::move(*fd)});
                }
            }
        });
    }
    for (const auto& [name, raw] : udp_->socket_fds()) {
        if (auto fd = sys::dup(raw)) {
            out.push_back({name, std::move(*fd)});
        }
    }
    return out;
}

void proxy_server::stop_accepting() {
    if (!started_) {
        return;
    }
    udp_->stop(); // datagram sessions end; queued datagrams wait for the new process
    for (auto& ctx : ctxs_) {
        run_on(*ctx, [&] {
            for (auto& e : ctx->listeners) {
                e->listener.keep_unix_path(); // the new process serves that file
                e->listener.close();          // its accept loop ends, and frees it
            }
            ctx->listeners.clear();
        });
    }
}

} // namespace zcio::cli
