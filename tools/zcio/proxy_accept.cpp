// accept_proxy: reading the PROXY header of a client before its upstream is connected.
#include "proxy_accept.hpp"

#include "proxy_server.hpp"

#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <algorithm>
#include <memory>

namespace zcio::cli {

const char* to_string(header_refusal r) noexcept {
    switch (r) {
    case header_refusal::unlisted_peer:
        return "unlisted_peer";
    case header_refusal::malformed:
        return "malformed";
    case header_refusal::timeout:
        return "timeout";
    case header_refusal::closed:
        return "closed";
    case header_refusal::duplicate:
        return "duplicate";
    }
    return "unknown";
}

namespace {

// What the peeking loop saw: a decoder verdict, or the client's end (closed) or error.
struct header_peek {
    proxy_decode_result decoded;
    bool closed = false;
    std::error_code error;
};

// Peeks at what the client sent so far into `buf` and decodes it, waiting for more
// while the decoder needs more. Nothing is consumed: peeking again after a new edge
// sees the whole prefix. Bounded by the caller's timeout.
task<header_peek> peek_header(stream& s, std::span<std::byte> buf) {
    io_handle& h = s.handle();
    while (true) {
        auto n = sys::recv(s.fd(), buf.data(), buf.size(), MSG_PEEK | MSG_DONTWAIT);
        if (n && *n == 0) {
            co_return header_peek{.decoded = {}, .closed = true, .error = {}};
        }
        if (n) {
            header_peek p{
                .decoded = decode_proxy_header(buf.first(*n)), .closed = false, .error = {}};
            if (p.decoded.status != proxy_decode_status::need_more) {
                co_return p;
            }
            if (h.peer_closed()) {
                co_return header_peek{.decoded = {}, .closed = true, .error = {}}; // cut short
            }
        } else if (!would_block(n.error())) {
            co_return header_peek{.decoded = {}, .closed = false, .error = n.error()};
        }
        // Nothing new past what was seen: wait for the next edge (a new segment).
        h.clear_ready(io_direction::read);
        auto ready = h.wait(io_direction::read);
        auto w = co_await ready;
        if (!w) {
            co_return header_peek{.decoded = {}, .closed = false, .error = w.error()};
        }
    }
}

bool peer_allowed(const route_runtime& rt, const endpoint& peer) {
    const auto& from = rt.config.options.accept_proxy.from;
    return from.empty() || std::ranges::any_of(from, [&](const address_prefix& p) {
               return prefix_contains(p, peer);
           });
}

void refuse(const route_runtime& rt, const endpoint& peer, header_refusal why,
            std::string_view detail) {
    rt.stats->proxy_accept.refused[static_cast<std::size_t>(why)].fetch_add(
        1, std::memory_order_relaxed);
    spdlog::warn("{} refused client {}: PROXY header {}: {}", rt.config.name, peer.to_string(),
                 to_string(why), detail);
}

// After the header: the next bytes must not start another one (HAProxy refuses a
// second header too). Only what has already arrived is checked: a second header sent
// in the same write as the first always is.
bool second_header_follows(const stream& s) {
    std::array<std::byte, 12> next{};
    auto n = sys::recv(s.fd(), next.data(), next.size(), MSG_PEEK | MSG_DONTWAIT);
    return n && starts_with_proxy_signature(std::span(next).first(*n));
}

} // namespace

task<std::optional<accepted_client>> accept_proxy_header(route_runtime& rt, stream& client,
                                                         const endpoint& peer) {
    if (!peer_allowed(rt, peer)) {
        if (rt.config.options.accept_proxy.unlisted_direct) {
            rt.stats->proxy_accept.direct.fetch_add(1, std::memory_order_relaxed);
            co_return accepted_client{peer, endpoint{}}; // no header: its bytes are data
        }
        refuse(rt, peer, header_refusal::unlisted_peer, "peer not in accept_proxy_from");
        co_return std::nullopt;
    }
    // Heap, not the frame: the 4 KiB are needed only until the header is read.
    auto buf = std::make_unique_for_overwrite<std::byte[]>(proxy_v2_max);
    auto peeking = peek_header(client, std::span(buf.get(), proxy_v2_max));
    const auto timeout =
        std::chrono::duration_cast<clock::duration>(rt.config.options.accept_proxy.header_timeout);
    auto bounded = with_timeout(client.loop(), std::move(peeking), timeout);
    auto got = co_await bounded;
    if (!got) {
        refuse(rt, peer, header_refusal::timeout, "none complete within proxy_header_timeout");
        co_return std::nullopt;
    }
    if (got->closed || got->error) {
        refuse(rt, peer, header_refusal::closed,
               got->closed ? "closed before sending it" : got->error.message());
        co_return std::nullopt;
    }
    const proxy_decode_result& d = got->decoded;
    if (d.status == proxy_decode_status::malformed) {
        refuse(rt, peer, header_refusal::malformed, d.reason);
        co_return std::nullopt;
    }
    // Exactly the header's bytes: they were peeked, so they are all there.
    auto taken = sys::recv(client.fd(), buf.get(), d.header.size, MSG_DONTWAIT);
    if (!taken || *taken != d.header.size) {
        refuse(rt, peer, header_refusal::closed, "lost while reading it");
        co_return std::nullopt;
    }
    if (second_header_follows(client)) {
        refuse(rt, peer, header_refusal::duplicate, "more than one header");
        co_return std::nullopt;
    }
    rt.stats->proxy_accept.accepted.fetch_add(1, std::memory_order_relaxed);
    if (d.header.source.family() == AF_UNSPEC) {
        co_return accepted_client{peer, endpoint{}}; // LOCAL, UNKNOWN, UNSPEC: the real peer
    }
    co_return accepted_client{d.header.source, d.header.destination};
}

} // namespace zcio::cli
