// The upstreams of a route: the --upstream flag's form, the checks every route's list
// must pass, and the servers the balancer gets from it.
#include "cli_util.hpp"
#include "route_config.hpp"

#include <charconv>

namespace zcio::cli {

balance_policy parse_balance(std::string_view text, std::string_view what) {
    if (auto p = parse_balance_policy(text)) {
        return *p;
    }
    throw usage_error(std::string(what) + ": \"" + std::string(text) +
                      "\" is not a balance (round-robin, least-connections, client-hash or "
                      "random-two)");
}

std::vector<upstream_server> servers_of(const route& r) {
    std::vector<upstream_server> out;
    for (const auto& u : r.upstreams) {
        out.push_back({u.addresses, u.weight, u.backup, u.drain});
    }
    return out;
}

std::string upstreams_text(const route& r) {
    if (r.upstreams.empty()) {
        return r.upstream.to_string();
    }
    std::string out;
    for (const auto& u : r.upstreams) {
        out += (out.empty() ? "" : ", ") + u.addresses.to_string();
        if (u.weight != 1) {
            out += " weight " + std::to_string(u.weight);
        }
        out += u.backup ? " (backup)" : "";
        out += u.drain ? " (drain)" : "";
    }
    return out;
}

namespace {

unsigned parse_weight(std::string_view text, std::string_view what) {
    unsigned w = 0;
    const auto* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, w);
    if (text.empty() || ec != std::errc{} || p != end || w > max_upstream_weight) {
        throw usage_error(std::string(what) + ": weight \"" + std::string(text) +
                          "\" is not a whole number from 0 to " +
                          std::to_string(max_upstream_weight));
    }
    return w;
}

} // namespace

upstream_entry parse_upstream_flag(std::string_view text) {
    const std::string what = "--upstream " + std::string(text);
    upstream_entry u;
    auto comma = text.find(',');
    // "[::1]:80" has no comma, so the first comma ends the address.
    u.text = std::string(text.substr(0, comma));
    while (comma != std::string_view::npos) {
        text.remove_prefix(comma + 1);
        comma = text.find(',');
        const auto opt = text.substr(0, comma);
        if (opt.starts_with("weight=")) {
            u.weight = parse_weight(opt.substr(7), what);
        } else if (opt == "backup") {
            u.backup = true;
        } else if (opt == "drain") {
            u.drain = true;
        } else {
            throw usage_error(what + ": \"" + std::string(opt) +
                              "\" is not weight=N, backup or drain");
        }
    }
    u.addresses = parse_endpoint_list(u.text);
    return u;
}

void check_upstreams(const std::vector<upstream_entry>& list, std::string_view where) {
    const std::string w(where);
    if (list.empty()) {
        throw usage_error(w + ": an empty list (at least one upstream is needed)");
    }
    bool any_weight = false;
    for (const auto& u : list) {
        if (u.addresses.is_ip() && u.addresses.port() == 0) {
            throw usage_error(w + ": " + u.addresses.to_string() + " has port 0");
        }
        any_weight = any_weight || u.weight > 0;
    }
    if (!any_weight) {
        throw usage_error(w + ": every weight is 0 (no server could take a connection)");
    }
}

} // namespace zcio::cli
