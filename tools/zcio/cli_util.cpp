// Parsing helpers shared by the subcommands: sizes, durations, listen specs.
#include "cli_util.hpp"

#include <zcio/sys.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <utility>

namespace zcio::cli {

namespace {

std::string quoted(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

} // namespace

namespace {

// The multiple of a size unit, 0 for an unknown one.
std::uint64_t unit_multiple(std::string_view unit) {
    if (unit.empty() || unit == "B") {
        return 1;
    }
    if (unit == "K" || unit == "k" || unit == "KiB" || unit == "KB") {
        return 1ULL << 10;
    }
    if (unit == "M" || unit == "MiB" || unit == "MB") {
        return 1ULL << 20;
    }
    if (unit == "G" || unit == "GiB" || unit == "GB") {
        return 1ULL << 30;
    }
    return 0;
}

// `bytes` in the largest unit it is a whole number of: 1572864 → "1536K".
std::string whole_size(std::uint64_t bytes) {
    for (auto [mult, unit] : {std::pair{1ULL << 30, "G"}, {1ULL << 20, "M"}, {1ULL << 10, "K"}}) {
        if (bytes != 0 && bytes % mult == 0) {
            return std::to_string(bytes / mult) + unit;
        }
    }
    return std::to_string(bytes);
}

// "1.5M": sizes are whole numbers of bytes, and rounding a fraction silently would
// give a size nobody typed. Says what to type instead when the size is whole in a
// smaller unit (1.5M is 1536K).
[[noreturn]] void refuse_fraction(std::string_view text, std::string_view what, std::uint64_t whole,
                                  std::string_view after_dot) {
    std::string hint = "use a whole number of bytes, K, M or G";
    const auto digits = after_dot.find_first_not_of("0123456789");
    const std::string_view fraction = after_dot.substr(0, digits);
    const std::uint64_t mult =
        unit_multiple(digits == std::string_view::npos ? "" : after_dot.substr(digits));
    std::uint64_t frac = 0;
    std::uint64_t scale = 1;
    auto [p, ec] = std::from_chars(fraction.data(), fraction.data() + fraction.size(), frac);
    if (mult != 0 && !fraction.empty() && fraction.size() <= 9 && ec == std::errc() &&
        whole <= UINT64_MAX / mult / 2) {
        for (std::size_t i = 0; i < fraction.size(); ++i) {
            scale *= 10;
        }
        if ((frac * mult) % scale == 0) {
            hint = "use " + whole_size(whole * mult + frac * mult / scale);
        }
    }
    throw usage_error(std::string(what) + ": " + quoted(text) +
                      " has a decimal point; sizes are whole numbers (" + hint + ")");
}

} // namespace

std::uint64_t parse_size(std::string_view text, std::string_view what) {
    std::uint64_t value = 0;
    const char* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc() || p == text.data()) {
        throw usage_error(std::string(what) + ": " + quoted(text) +
                          " is not a size (examples: 65536, 64K, 1M, 2G)");
    }
    std::string_view unit(p, static_cast<std::size_t>(end - p));
    if (unit.starts_with('.')) {
        refuse_fraction(text, what, value, unit.substr(1));
    }
    const std::uint64_t mult = unit_multiple(unit);
    if (mult == 0) {
        throw usage_error(std::string(what) + ": unknown unit in " + quoted(text) +
                          " (use K, M or G)");
    }
    if (value > UINT64_MAX / mult) {
        throw usage_error(std::string(what) + ": " + quoted(text) + " is too large");
    }
    return value * mult;
}

std::chrono::nanoseconds parse_duration(std::string_view text, std::string_view what) {
    double value = 0;
    const char* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc() || p == text.data() || !std::isfinite(value) || value < 0) {
        throw usage_error(std::string(what) + ": " + quoted(text) +
                          " is not a duration (examples: 10, 10s, 250ms, 2m)");
    }
    std::string_view unit(p, static_cast<std::size_t>(end - p));
    double secs = value;
    if (unit.empty() || unit == "s") {
        secs = value;
    } else if (unit == "ms") {
        secs = value / 1000.0;
    } else if (unit == "us") {
        secs = value / 1e6;
    } else if (unit == "m") {
        secs = value * 60.0;
    } else if (unit == "h") {
        secs = value * 3600.0;
    } else {
        throw usage_error(std::string(what) + ": unknown unit in " + quoted(text) +
                          " (use us, ms, s, m or h)");
    }
    if (secs > 1e9) {
        throw usage_error(std::string(what) + ": " + quoted(text) + " is too long");
    }
    return std::chrono::nanoseconds(static_cast<std::int64_t>(secs * 1e9));
}

endpoint parse_endpoint(std::string_view text) {
    auto ep = endpoint::parse(text);
    if (!ep) {
        throw usage_error(ep.error());
    }
    return *ep;
}

endpoint_list parse_endpoint_list(std::string_view text) {
    auto list = endpoint_list::resolve(text);
    if (!list) {
        throw usage_error(list.error());
    }
    return std::move(*list);
}

namespace {

// "8080" → "127.0.0.1:8080", ":8080" → "127.0.0.1:8080"; anything else unchanged.
std::string with_default_host(std::string_view text) {
    if (text.starts_with("*:")) {
        throw usage_error("listen address " + quoted(text) +
                          ": name the interface (0.0.0.0 or [::] for every one, "
                          "127.0.0.1 for loopback)");
    }
    const bool digits_only =
        !text.empty() && text.find_first_not_of("0123456789-") == std::string_view::npos;
    if (digits_only) {
        return "127.0.0.1:" + std::string(text);
    }
    // ":8080" and ":8000-8010" only: "::1" is an IPv6 address without brackets, and the
    // parser's message about it must quote what was typed.
    if (text.starts_with(':') && text.size() > 1 &&
        text.find_first_not_of("0123456789-", 1) == std::string_view::npos) {
        return "127.0.0.1" + std::string(text);
    }
    return std::string(text);
}

// Every address `text` names: one for an address, each that a host name resolves to
// (so "localhost:8080" listens on [::1] and on 127.0.0.1 where both are listed: a
// client trying either family is answered).
std::vector<endpoint> every_address(std::string_view text) {
    auto all = endpoint_list::resolve(text);
    if (!all) {
        throw usage_error(all.error());
    }
    return {all->begin(), all->end()};
}

} // namespace

endpoint parse_listen_endpoint(std::string_view text) {
    return parse_endpoint(with_default_host(text));
}

namespace {
named_listen_resolver listen_resolver = nullptr; // set once, before any config is read
} // namespace

void set_named_listen_resolver(named_listen_resolver resolver) {
    listen_resolver = resolver;
}

std::vector<endpoint> parse_listen(std::string_view spec) {
    if (spec.starts_with("systemd:")) {
        if (listen_resolver == nullptr) {
            throw usage_error(std::string(spec) +
                              ": no sockets were passed by systemd (LISTEN_FDS is not set)");
        }
        return {listen_resolver(spec.substr(8))};
    }
    const std::string full = with_default_host(spec);
    const std::string_view text = full;
    const auto colon = text.rfind(':');
    const auto dash = text.rfind('-');
    const bool range = !text.starts_with("unix:") && colon != std::string_view::npos &&
                       dash != std::string_view::npos && dash > colon;
    if (!range) {
        return every_address(text);
    }
    std::string_view from_text = text.substr(colon + 1, dash - colon - 1);
    std::string_view to_text = text.substr(dash + 1);
    unsigned from = 0;
    unsigned to = 0;
    auto r1 = std::from_chars(from_text.data(), from_text.data() + from_text.size(), from);
    auto r2 = std::from_chars(to_text.data(), to_text.data() + to_text.size(), to);
    if (r1.ec != std::errc() || r1.ptr != from_text.data() + from_text.size() ||
        r2.ec != std::errc() || r2.ptr != to_text.data() + to_text.size() || from == 0 ||
        to > 65535 || from > to) {
        throw usage_error("bad port range in " + quoted(text) +
                          " (expected HOST:FIRST-LAST with 1 <= FIRST <= LAST <= 65535)");
    }
    if (to - from >= 4096) {
        throw usage_error("port range in " + quoted(text) + " is too large (at most 4096 ports)");
    }
    std::vector<endpoint> out;
    for (const endpoint& base :
         every_address(std::string(text.substr(0, colon)) + ":" + std::to_string(from))) {
        for (unsigned port = from; port <= to; ++port) {
            endpoint e = base;
            e.set_port(static_cast<std::uint16_t>(port));
            out.push_back(e);
        }
    }
    return out;
}

std::vector<std::vector<endpoint>> split_by_address(const std::vector<endpoint>& eps) {
    std::vector<std::vector<endpoint>> groups;
    for (const endpoint& e : eps) {
        endpoint bare = e;
        bare.set_port(0);
        endpoint last_bare;
        if (!groups.empty()) {
            last_bare = groups.back().front();
            last_bare.set_port(0);
        }
        if (groups.empty() || !(bare == last_bare)) {
            groups.emplace_back();
        }
        groups.back().push_back(e);
    }
    return groups;
}

std::optional<std::uint64_t> descriptor_limit() {
    static const std::optional<std::uint64_t> limit = []() -> std::optional<std::uint64_t> {
        ::rlimit rl{};
        if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) {
            return std::nullopt;
        }
        return static_cast<std::uint64_t>(rl.rlim_cur);
    }();
    return limit;
}

std::uint64_t open_descriptors() {
    auto n = sys::count_open_fds();
    return n ? *n : 0;
}

std::uint64_t default_max_connections(std::uint64_t listeners) {
    const auto limit = descriptor_limit();
    if (!limit) {
        return 0;
    }
    const std::uint64_t fds = *limit;
    const std::uint64_t taken = descriptor_reserve + listeners;
    // A limit too small for the reserve still lets a few clients in.
    return fds > taken + 2 ? (fds - taken) / 2 : std::max<std::uint64_t>(1, fds / 4);
}

void ensure_port_free(const endpoint& ep) {
    if (!ep.is_ip() || ep.port() == 0) {
        return;
    }
    auto probe = sys::socket(ep.family(), SOCK_STREAM);
    if (!probe) {
        return; // the real bind will report what is wrong
    }
    (void)sys::set_int_option(probe->get(), SOL_SOCKET, SO_REUSEADDR, 1);
    if (auto b = sys::bind(probe->get(), ep.data(), ep.size()); !b) {
        throw runtime_failure("cannot listen on " + ep.to_string() + ": " + b.error().message());
    }
}

std::string human_bytes(double bytes) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
    return buf;
}

} // namespace zcio::cli
