// The keys of a UDP route: the udp: prefix, `protocol`, keys that belong to one protocol
// and what a UDP route needs beyond its keys. Separate from udp_route.cpp so the config
// parser (and its fuzz target) does not pull in the forwarders.
#include "udp_route.hpp"

#include "cli_util.hpp"
#include "route_config.hpp"

#include <algorithm>
#include <span>

namespace zcio::cli {

bool strip_udp_prefix(std::string& text) {
    if (text.starts_with("udp:")) {
        text.erase(0, 4);
        return true;
    }
    return false;
}

route_protocol parse_protocol(std::string_view text, std::string_view what) {
    if (text == "tcp") {
        return route_protocol::tcp;
    }
    if (text == "udp") {
        return route_protocol::udp;
    }
    throw usage_error(std::string(what) + ": \"" + std::string(text) +
                      "\" is not a protocol (tcp or udp)");
}

std::string misplaced_key(route_protocol protocol, std::string_view key) {
    const std::span<const std::string_view> other =
        protocol == route_protocol::udp ? std::span<const std::string_view>(tcp_only_keys)
                                        : std::span<const std::string_view>(udp_only_keys);
    if (std::ranges::find(other, key) == other.end()) {
        return {};
    }
    return protocol == route_protocol::udp ? "is for TCP routes only (this route is UDP)"
                                           : "is for UDP routes only (protocol = \"udp\")";
}

void check_udp_route(const route& r, std::string_view where) {
    // "route[0].proxy_protocol" in a file, "--proxy-protocol" on the command line.
    const bool flag = where == "--";
    const auto key = [&](std::string name) {
        if (flag) {
            std::ranges::replace(name, '_', '-');
        }
        return std::string(where) + name;
    };
    for (const auto& ep : r.listen) {
        if (!ep.is_ip()) {
            throw usage_error(key("listen") + ": " + ep.to_string() +
                              ": a UDP route listens on IP addresses only");
        }
    }
    if (r.upstreams.size() > 1) {
        throw usage_error(key("upstream") +
                          ": a UDP route has one upstream (balancing is for TCP routes)");
    }
    if (!r.upstream.is_ip()) {
        throw usage_error(key("upstream") + ": " + r.upstream.to_string() +
                          ": a UDP route forwards to an IP address only");
    }
    if (r.options.proxy_protocol == proxy_header::v1) {
        throw usage_error(key("proxy_protocol") +
                          ": v1 has no datagram form (use v2 on a UDP route)");
    }
}

} // namespace zcio::cli
