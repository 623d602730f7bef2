// Loading [[route]] tables from a TOML file, with one-line errors that name the key.
#include "route_config.hpp"

#include "cli_util.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <vector>

namespace zcio::cli {

copy_path parse_engine(std::string_view text, std::string_view what) {
    const auto p = parse_copy_path(text);
    // sendfile and copy_file_range need a file at one end: never two sockets.
    if (p == copy_path::automatic || p == copy_path::splice || p == copy_path::buffer) {
        return *p;
    }
    throw usage_error(std::string(what) + ": \"" + std::string(text) +
                      "\" is not an engine (auto, splice or buffer)");
}

proxy_header parse_proxy_header(std::string_view text, std::string_view what) {
    if (text == "v1") {
        return proxy_header::v1;
    }
    if (text == "v2") {
        return proxy_header::v2;
    }
    if (text == "none" || text.empty()) {
        return proxy_header::none;
    }
    throw usage_error(std::string(what) + ": \"" + std::string(text) +
                      "\" is not a PROXY protocol version (v1 or v2)");
}

const char* to_string(proxy_header h) noexcept {
    switch (h) {
    case proxy_header::none:
        return "none";
    case proxy_header::v1:
        return "v1";
    case proxy_header::v2:
        return "v2";
    }
    return "?";
}

namespace {

// Builds "FILE:LINE: route[N].KEY: message" and throws it.
class located {
public:
    located(const std::string& file, std::string prefix)
        : file_(file), prefix_(std::move(prefix)) {}

    [[noreturn]] void fail(const toml::node& node, std::string_view key,
                           const std::string& msg) const {
        fail_at(node.source().begin.line, key, msg);
    }
    [[noreturn]] void fail_at(std::size_t line, std::string_view key,
                              const std::string& msg) const {
        throw usage_error(file_ + ":" + std::to_string(line) + ": " + prefix_ + std::string(key) +
                          ": " + msg);
    }

    // Runs a parser that throws usage_error and relocates its message to the node. The
    // shared parsers start their message with the name they were given (`key`), which
    // the location already ends with: it is said once ("route[0].pipe_size: ...", not
    // "route[0].pipe_size: pipe_size: ...").
    template <class F>
    auto wrap(const toml::node& node, std::string_view key, F&& f) const {
        try {
            return f();
        } catch (const usage_error& e) {
            std::string_view msg = e.what();
            if (!key.empty() && msg.starts_with(key) && msg.substr(key.size()).starts_with(": ")) {
                msg.remove_prefix(key.size() + 2);
            }
            fail(node, key, std::string(msg));
        }
    }

private:
    const std::string& file_;
    std::string prefix_;
};

std::string need_string(const located& at, const toml::node& n, std::string_view key) {
    if (auto s = n.value<std::string>()) {
        return *s;
    }
    at.fail(n, key, "expected a string");
}

// Sizes and rates may be integers (bytes) or strings with units ("1M").
std::uint64_t size_value(const located& at, const toml::node& n, std::string_view key) {
    // is_integer(): value<std::int64_t>() would also take `true` as 1.
    if (auto i = n.is_integer() ? n.value<std::int64_t>() : std::nullopt) {
        if (*i < 0) {
            at.fail(n, key, "must not be negative");
        }
        return static_cast<std::uint64_t>(*i);
    }
    if (auto s = n.value<std::string>()) {
        return at.wrap(n, key, [&] { return parse_size(*s, key); });
    }
    at.fail(n, key, "expected a size (integer bytes or a string such as \"1M\")");
}

// Durations may be numbers (seconds) or strings with units ("250ms").
std::chrono::nanoseconds duration_value(const located& at, const toml::node& n,
                                        std::string_view key) {
    if (n.is_integer() || n.is_floating_point()) {
        double v = n.value<double>().value_or(-1);
        if (std::isnan(v)) {
            at.fail(n, key, "expected a duration (seconds, or a string such as \"250ms\")");
        }
        if (v < 0) {
            at.fail(n, key, "must not be negative");
        }
        // As parse_duration: 1e300 or inf would not fit the nanosecond count (converting
        // such a double to an integer is undefined behaviour).
        if (v > 1e9) {
            at.fail(n, key, "is too long (at most 1e9 seconds)");
        }
        return std::chrono::nanoseconds(static_cast<std::int64_t>(v * 1e9));
    }
    if (auto s = n.value<std::string>()) {
        return at.wrap(n, key, [&] { return parse_duration(*s, key); });
    }
    at.fail(n, key, "expected a duration (seconds, or a string such as \"250ms\")");
}

std::chrono::nanoseconds busy_poll_value(const located& at, const toml::node& n,
                                         std::string_view key) {
    auto d = duration_value(at, n, key);
    if (d > busy_poll_limit) {
        at.fail(n, key, "is too long (at most 10ms; e.g. \"50us\")");
    }
    return d;
}

bool is_wildcard(const endpoint& e) {
    if (e.family() == AF_INET) {
        return reinterpret_cast<const sockaddr_in*>(e.data())->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    if (e.family() == AF_INET6) {
        const auto* a = &reinterpret_cast<const sockaddr_in6*>(e.data())->sin6_addr;
        return IN6_IS_ADDR_UNSPECIFIED(a);
    }
    return false;
}

// Two IP addresses of one family that the kernel would not let both listen on one
// port: equal ones, or the wildcard and any other (the proxy probes the port without
// SO_REUSEPORT before binding: ensure_port_free).
bool clash(endpoint a, endpoint b) {
    if (a.family() != b.family()) {
        return false;
    }
    a.set_port(0);
    b.set_port(0);
    return a == b || is_wildcard(a) || is_wildcard(b);
}

// Listen addresses and names must be unique across the routes of a file. Otherwise two
// routes on one address fail only when the second binds ("Address already in use",
// exit 1, or a half-applied reload), and two routes of one name would add up in one
// metrics series and share one set of pools.
class route_registry {
public:
    // One listen item of route[`index`]: a single address or a port range (`eps`, as
    // parse_listen returns it). Fails at `item` if it overlaps an earlier item.
    void claim_listen(const located& at, const toml::node& item, std::size_t index,
                      const std::string& text, const std::vector<endpoint>& eps, bool udp) {
        const claim mine{span_of(eps), index, text, udp};
        for (const auto& other : claims_) {
            // A UDP and a TCP socket may share an address and port (DNS on 53 does).
            if (other.udp != udp) {
                continue;
            }
            if (auto shared = listen_overlap(other.span, mine.span)) {
                const std::string addr = shared->to_string();
                at.fail(item, "listen", addr + " is already used by " + owner(other, index, addr));
            }
        }
        claims_.push_back(mine);
    }

    // Fails at `line` if route[`index`]'s name is taken by an earlier route.
    void claim_name(const located& at, std::size_t line, std::size_t index, const std::string& name,
                    bool is_default) {
        auto [it, fresh] = names_.try_emplace(name, named{index, is_default});
        if (!fresh) {
            at.fail_at(line, "name",
                       "\"" + name + "\"" + (is_default ? " (the default name)" : "") +
                           " is already the name of route[" + std::to_string(it->second.index) +
                           "]" + (it->second.is_default ? " (its default name)" : ""));
        }
    }

private:
    struct claim {
        listen_span span;
        std::size_t index;
        std::string text; // as written in the file
        bool udp = false;
    };
    struct named {
        std::size_t index;
        bool is_default;
    };

    // "route[0]", with the address as written when it is not the one that clashed
    // (a range or a wildcard).
    static std::string owner(const claim& c, std::size_t index, const std::string& addr) {
        std::string who =
            c.index == index ? "this route" : "route[" + std::to_string(c.index) + "]";
        if (c.text != addr) {
            who += " (\"" + c.text + "\")";
        }
        return who;
    }

    std::vector<claim> claims_;
    std::map<std::string, named, std::less<>> names_;
};

// A whole number from `low` to `high`.
unsigned count_value(const located& at, const toml::node& n, std::string_view key, unsigned low,
                     unsigned high) {
    auto v = n.is_integer() ? n.value<std::int64_t>() : std::nullopt;
    if (!v || *v < std::int64_t{low} || *v > std::int64_t{high}) {
        at.fail(n, key,
                "expected an integer from " + std::to_string(low) + " to " + std::to_string(high));
    }
    return static_cast<unsigned>(*v);
}

bool bool_value(const located& at, const toml::node& n, std::string_view key) {
    auto v = n.value<bool>();
    if (!v || !n.is_boolean()) {
        at.fail(n, key, "expected true or false");
    }
    return *v;
}

// One item of `upstream`: "HOST:PORT" or { address = "HOST:PORT", weight = 3,
// backup = true, drain = false }.
upstream_entry upstream_item(const located& at, const toml::node& n) {
    upstream_entry u;
    const toml::node* address = &n;
    if (const auto* t = n.as_table()) {
        address = nullptr;
        for (const auto& [k, v] : *t) {
            const std::string_view key = k.str();
            if (key == "address") {
                address = &v;
            } else if (key == "weight") {
                u.weight = count_value(at, v, "upstream.weight", 0, max_upstream_weight);
            } else if (key == "backup") {
                u.backup = bool_value(at, v, "upstream.backup");
            } else if (key == "drain") {
                u.drain = bool_value(at, v, "upstream.drain");
            } else {
                at.fail(v, "upstream." + std::string(key),
                        "unknown key (known: address, weight, backup, drain)");
            }
        }
        if (address == nullptr) {
            at.fail(n, "upstream", "a table without address (e.g. { address = \"HOST:PORT\" })");
        }
    } else if (!n.is_string()) {
        at.fail(n, "upstream", "expected \"HOST:PORT\", a table { address = ... } or a list");
    }
    u.text = need_string(at, *address, "upstream");
    u.addresses = at.wrap(*address, "upstream", [&] { return parse_endpoint_list(u.text); });
    return u;
}

std::vector<upstream_entry> upstream_list(const located& at, const toml::node& node) {
    std::vector<upstream_entry> list;
    if (const auto* arr = node.as_array()) {
        for (const auto& item : *arr) {
            list.push_back(upstream_item(at, item));
        }
    } else {
        list.push_back(upstream_item(at, node));
    }
    at.wrap(node, "upstream", [&] { check_upstreams(list, "upstream"); });
    return list;
}

// The balancing and health keys of a route; false for any other key.
bool load_balance_key(const located& at, std::string_view key, const toml::node& node,
                      balance_options& b) {
    if (key == "balance") {
        std::string text = need_string(at, node, key);
        b.policy = at.wrap(node, key, [&] { return parse_balance(text, key); });
    } else if (key == "max_fails") {
        b.passive.max_fails = count_value(at, node, key, 0, 1000);
    } else if (key == "fail_timeout") {
        b.passive.fail_timeout =
            std::chrono::duration_cast<clock::duration>(duration_value(at, node, key));
    } else if (key == "connect_retries") {
        b.connect_retries = count_value(at, node, key, 0, 100);
    } else if (key == "health_interval") {
        b.health_interval = duration_value(at, node, key);
        if (b.health_interval.count() > 0 && b.health_interval < std::chrono::milliseconds(10)) {
            at.fail(node, key, "is too short (at least 10ms; 0: no active checks)");
        }
    } else if (key == "rise") {
        b.active.rise = count_value(at, node, key, 1, 1000);
    } else if (key == "fall") {
        b.active.fall = count_value(at, node, key, 1, 1000);
    } else {
        return false;
    }
    return true;
}

// accept_proxy_from: an array of "ADDR/BITS" strings (at least one).
std::vector<address_prefix> prefix_list(const located& at, const toml::node& node,
                                        std::string_view key) {
    const auto* arr = node.as_array();
    if (arr == nullptr || arr->empty()) {
        at.fail(node, key, "expected a non-empty array of prefixes, e.g. [\"10.0.0.0/8\"]");
    }
    std::vector<address_prefix> out;
    for (const auto& item : *arr) {
        std::string text = need_string(at, item, key);
        out.push_back(at.wrap(item, key, [&] { return parse_address_prefix(text, key); }));
    }
    return out;
}

route load_route(const located& at, const toml::table& t, std::size_t index,
                 route_registry& registry) {
    route r;
    r.name = "route" + std::to_string(index);
    std::size_t name_line = t.source().begin.line; // the table's line for a default name
    bool named = false;
    // Never destroyed: a reload's thread that SIGTERM did not wait for (it may sit in
    // getaddrinfo) can still be reading a config while exit() runs the destructors.
    static const auto& known = *new std::set<std::string, std::less<>>{"name",
                                                                       "listen",
                                                                       "upstream",
                                                                       "engine",
                                                                       "pipe_size",
                                                                       "max_connections",
                                                                       "idle_timeout",
                                                                       "connect_timeout",
                                                                       "rate_limit",
                                                                       "proxy_protocol",
                                                                       "protocol",
                                                                       "session_timeout",
                                                                       "max_sessions",
                                                                       "responses",
                                                                       "accept_proxy",
                                                                       "accept_proxy_from",
                                                                       "proxy_header_timeout",
                                                                       "proxy_unlisted",
                                                                       "balance",
                                                                       "max_fails",
                                                                       "fail_timeout",
                                                                       "connect_retries",
                                                                       "health_interval",
                                                                       "rise",
                                                                       "fall"};
    bool has_upstream = false;
    // Listen items are claimed once the protocol is known (it may come after them).
    struct listen_item {
        const toml::node* node;
        std::string text;
        std::vector<endpoint> eps;
        bool udp_prefix;
    };
    std::vector<listen_item> listen_items;
    std::vector<std::pair<std::string_view, const toml::node*>> given;
    const toml::node* protocol_node = nullptr;
    for (const auto& [k, node] : t) {
        const std::string_view key = k.str();
        if (!known.contains(key)) {
            at.fail(node, key,
                    "unknown key (known: name, listen, upstream, engine, pipe_size, "
                    "max_connections, idle_timeout, connect_timeout, rate_limit, "
                    "proxy_protocol, protocol, session_timeout, max_sessions, responses, "
                    "accept_proxy, accept_proxy_from, proxy_header_timeout, proxy_unlisted, "
                    "balance, max_fails, "
                    "fail_timeout, connect_retries, "
                    "health_interval, rise, fall)");
        }
        given.emplace_back(key, &node);
        if (key == "name") {
            r.name = need_string(at, node, key);
            name_line = node.source().begin.line;
            named = true;
        } else if (key == "listen") {
            std::vector<const toml::node*> items;
            if (const auto* arr = node.as_array()) {
                for (const auto& item : *arr) {
                    items.push_back(&item);
                }
            } else {
                items.push_back(&node);
            }
            for (const auto* item : items) {
                std::string text = need_string(at, *item, key);
                std::string addr = text;
                const bool udp_prefix = strip_udp_prefix(addr);
                auto eps = at.wrap(*item, key, [&] { return parse_listen(addr); });
                r.listen.insert(r.listen.end(), eps.begin(), eps.end());
                r.listen_text.push_back(text);
                listen_items.push_back({item, text, std::move(eps), udp_prefix});
            }
        } else if (key == "upstream") {
            r.upstreams = upstream_list(at, node);
            r.upstream = r.upstreams.front().addresses;
            has_upstream = true;
        } else if (load_balance_key(at, key, node, r.balance)) {
            // balance, max_fails, fail_timeout, connect_retries, health_interval, rise, fall
        } else if (key == "engine") {
            std::string text = need_string(at, node, key);
            r.options.engine = at.wrap(node, key, [&] { return parse_engine(text, key); });
        } else if (key == "pipe_size") {
            r.options.pipe_size = size_value(at, node, key);
        } else if (key == "max_connections") {
            auto v = node.is_integer() ? node.value<std::int64_t>() : std::nullopt;
            if (!v || *v < 0) {
                at.fail(node, key, "expected a non-negative integer");
            }
            r.options.max_connections = static_cast<std::uint64_t>(*v);
        } else if (key == "idle_timeout") {
            r.options.idle_timeout = duration_value(at, node, key);
        } else if (key == "connect_timeout") {
            r.options.connect_timeout = duration_value(at, node, key);
        } else if (key == "rate_limit") {
            r.options.rate_limit = size_value(at, node, key);
        } else if (key == "proxy_protocol") {
            std::string text = need_string(at, node, key);
            r.options.proxy_protocol =
                at.wrap(node, key, [&] { return parse_proxy_header(text, key); });
        } else if (key == "protocol") {
            std::string text = need_string(at, node, key);
            r.protocol = at.wrap(node, key, [&] { return parse_protocol(text, key); });
            protocol_node = &node;
        } else if (key == "session_timeout") {
            r.udp.session_timeout = duration_value(at, node, key);
        } else if (key == "max_sessions") {
            auto v = node.is_integer() ? node.value<std::int64_t>() : std::nullopt;
            if (!v || *v < 1) {
                at.fail(node, key, "expected a positive integer");
            }
            r.udp.max_sessions = static_cast<std::uint64_t>(*v);
        } else if (key == "responses") {
            auto v = node.is_integer() ? node.value<std::int64_t>() : std::nullopt;
            if (!v || *v < 0 || *v > UINT32_MAX) {
                at.fail(node, key, "expected an integer from 0 (unlimited) to 4294967295");
            }
            r.udp.responses = static_cast<std::uint32_t>(*v);
        } else if (key == "accept_proxy") {
            auto v = node.value<bool>();
            if (!v || !node.is_boolean()) {
                at.fail(node, key, "expected true or false");
            }
            r.udp.accept_proxy = *v;
            r.options.accept_proxy.enabled = *v;
        } else if (key == "accept_proxy_from") {
            r.options.accept_proxy.from = prefix_list(at, node, key);
        } else if (key == "proxy_header_timeout") {
            r.options.accept_proxy.header_timeout = duration_value(at, node, key);
            if (r.options.accept_proxy.header_timeout.count() == 0) {
                at.fail(node, key, "must be more than 0 (a client may not wait forever)");
            }
        } else if (key == "proxy_unlisted") {
            auto v = node.value<std::string>();
            if (!v || (*v != "refuse" && *v != "direct")) {
                at.fail(node, key, "expected \"refuse\" or \"direct\"");
            }
            r.options.accept_proxy.unlisted_direct = *v == "direct";
        }
    }
    for (const auto& [key, node] : given) {
        if ((key == "accept_proxy_from" || key == "proxy_header_timeout" ||
             key == "proxy_unlisted") &&
            !r.options.accept_proxy.enabled) {
            at.fail(*node, key, "needs accept_proxy = true");
        }
        if (key == "proxy_unlisted" && r.options.accept_proxy.from.empty()) {
            at.fail(*node, key, "needs accept_proxy_from (without it no peer is unlisted)");
        }
    }
    const bool any_prefix =
        std::ranges::any_of(listen_items, [](const auto& i) { return i.udp_prefix; });
    if (any_prefix) {
        if (protocol_node != nullptr && r.protocol == route_protocol::tcp) {
            at.fail(*protocol_node, "protocol", "\"tcp\" but listen has a udp: address");
        }
        for (const auto& item : listen_items) {
            if (!item.udp_prefix) {
                at.fail(*item.node, "listen",
                        "\"" + item.text +
                            "\" has no udp: prefix where another has (a route "
                            "is one protocol)");
            }
        }
        r.protocol = route_protocol::udp;
    }
    for (const auto& [key, node] : given) {
        if (auto why = misplaced_key(r.protocol, key); !why.empty()) {
            at.fail(*node, key, why);
        }
    }
    for (const auto& item : listen_items) {
        for (const auto& group : split_by_address(item.eps)) {
            registry.claim_listen(at, *item.node, index, item.text, group,
                                  r.protocol == route_protocol::udp);
        }
    }
    if (r.listen.empty()) {
        at.fail_at(t.source().begin.line, "listen",
                   "missing (every route needs listen = \"HOST:PORT\")");
    }
    if (!has_upstream) {
        at.fail_at(t.source().begin.line, "upstream",
                   "missing (every route needs upstream = \"HOST:PORT\")");
    }
    if (r.protocol == route_protocol::udp) {
        try {
            check_udp_route(r, "");
        } catch (const usage_error& e) {
            // "listen: ..." / "upstream: ..." / "proxy_protocol: ...": at the table.
            const std::string msg = e.what();
            const auto colon = msg.find(": ");
            at.fail_at(t.source().begin.line, msg.substr(0, colon), msg.substr(colon + 2));
        }
    }
    registry.claim_name(at, name_line, index, r.name, !named);
    return r;
}

} // namespace

listen_span span_of(const std::vector<endpoint>& eps) {
    return listen_span{eps.front(), eps.back().port()};
}

std::optional<endpoint> listen_overlap(const listen_span& a, const listen_span& b) {
    if (a.first.is_unix() || b.first.is_unix()) {
        return a.first == b.first ? std::optional(b.first) : std::nullopt;
    }
    const std::uint16_t lo = std::max(a.first.port(), b.first.port());
    const std::uint16_t hi = std::min(a.last_port, b.last_port);
    if (lo == 0 || lo > hi || !clash(a.first, b.first)) {
        return std::nullopt;
    }
    endpoint at = b.first;
    at.set_port(lo);
    return at;
}

namespace {

// Reads the config file without ever blocking: O_NONBLOCK so that opening a FIFO does
// not wait for a writer (fifo(7); the main thread would hang there, SIGTERM included),
// then fstat refuses anything but a regular file. Symlinks are followed (no
// O_NOFOLLOW): a config under /etc is often one. At most max_config_bytes are read.
std::string read_config_text(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        throw usage_error(path + ": cannot open: " + std::strerror(errno));
    }
    // The one raw descriptor of the tool: closed on every path below.
    struct closer {
        int fd;
        ~closer() { ::close(fd); }
    } guard{fd};
    struct ::stat st {};
    if (::fstat(fd, &st) != 0) {
        throw usage_error(path + ": cannot stat: " + std::strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        throw usage_error(path + ": not a regular file");
    }
    if (static_cast<std::uint64_t>(st.st_size) > max_config_bytes) {
        throw usage_error(path + ": too large (" + std::to_string(st.st_size) +
                          " bytes; a config is at most " + std::to_string(max_config_bytes) +
                          " bytes)");
    }
    // Sized by fstat, one byte more so that a file that grew since is noticed; grown up
    // to one byte past the limit (never a 1 MiB buffer for a 1 KiB file).
    std::string text(static_cast<std::size_t>(st.st_size) + 1, '\0');
    std::size_t got = 0;
    while (true) {
        const ssize_t n = ::read(fd, text.data() + got, text.size() - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            throw usage_error(path + ": cannot read: " + std::strerror(errno));
        }
        if (n == 0) {
            break;
        }
        got += static_cast<std::size_t>(n);
        if (got == text.size()) {
            if (got > max_config_bytes) {
                break;
            }
            text.resize(std::min<std::size_t>(2 * got, max_config_bytes + 1));
        }
    }
    if (got > max_config_bytes) {
        throw usage_error(path + ": too large (a config is at most " +
                          std::to_string(max_config_bytes) + " bytes)");
    }
    text.resize(got);
    return text;
}

// Where the text of a TOML document nests deeper than max_config_depth, if it does.
// toml++ parses dotted keys, tables and arrays by recursion, so a key of 50,000
// segments ("a.a.a...") overflows the stack before any limit of its own applies: the
// text is scanned first. The depth at a point is the sum, over the open brackets
// ([ ] of headers and arrays, { } of inline tables), of the key segments before each
// bracket plus one, plus the segments of the key being read. Dots inside strings
// and comments do not count; the dot of a float ("1.5") counts as a segment, which
// only overestimates by one.
struct nesting_scan {
    std::string_view text;
    std::size_t i = 0;
    std::size_t line = 1;

    // Skips a string starting at i (a quote); multi-line ones count their lines.
    void skip_string() {
        const char q = text[i];
        const bool multi = text.substr(i, 3) == std::string(3, q);
        i += multi ? 3 : 1;
        while (i < text.size()) {
            const char c = text[i];
            if (c == '\\' && q == '"') {
                if (i + 1 < text.size() && text[i + 1] == '\n') {
                    ++line; // a line-ending backslash
                }
                i += 2;
                continue;
            }
            if (c == '\n') {
                if (!multi) {
                    return; // toml++ reports the unterminated string
                }
                ++line;
            }
            if (c == q && !multi) {
                ++i;
                return;
            }
            if (c == q && text.substr(i, 3) == std::string(3, q)) {
                // A multi-line string may end with one or two quotes of its own just
                // before the closing three (TOML 1.0: """a"""" is `a"`), so a run of up to
                // five closes it, as toml++ reads it. Stopping after three left a quote
                // that this scan took for the start of a string hiding the rest of the
                // line, where toml++ then parsed a key of 500,000 segments: SIGSEGV.
                std::size_t run = 3;
                while (run < 5 && i + run < text.size() && text[i + run] == q) {
                    ++run;
                }
                i += run;
                return;
            }
            ++i;
        }
    }

    // The line of the first point deeper than the limit, or 0.
    std::size_t too_deep_at() {
        std::vector<std::size_t> open; // what each open bracket adds
        std::size_t depth = 0;         // the sum of `open`
        std::size_t segments = 0;      // dots of the key (or value) being read
        while (i < text.size()) {
            const char c = text[i];
            if (c == '"' || c == '\'') {
                skip_string();
                continue;
            }
            if (c == '#') {
                while (i < text.size() && text[i] != '\n') {
                    ++i;
                }
                continue;
            }
            if (c == '.') {
                ++segments;
            } else if (c == '[' || c == '{') {
                open.push_back(segments + 1);
                depth += segments + 1;
                segments = 0;
            } else if (c == ']' || c == '}') {
                if (!open.empty()) {
                    depth -= open.back();
                    open.pop_back();
                }
                segments = 0;
            } else if (c == ',' || c == '\n') {
                // Not at '=': the key's segments nest the inline table or array that
                // is its value ("a.b.c = {" opens at depth 3). Reset there, a chain of
                // inline tables under 31-segment keys nested ~1,000 deep unseen.
                segments = 0;
            }
            if (c == '\n') {
                ++line;
            }
            if (depth + segments > max_config_depth) {
                return line;
            }
            ++i;
        }
        return 0;
    }
};

} // namespace

proxy_config load_config_file(const std::string& path) {
    const std::string source = read_config_text(path);
    if (const std::size_t line = nesting_scan{source}.too_deep_at(); line != 0) {
        throw usage_error(path + ":" + std::to_string(line) + ": nested too deeply (at most " +
                          std::to_string(max_config_depth) +
                          " levels of dotted keys, tables and arrays)");
    }
    toml::table doc;
    try {
        doc = toml::parse(source, path);
    } catch (const toml::parse_error& e) {
        const auto& src = e.source();
        if (src.begin.line == 0) {
            throw usage_error(path + ": " + std::string(e.description()));
        }
        throw usage_error(path + ":" + std::to_string(src.begin.line) + ": " +
                          std::string(e.description()));
    }
    proxy_config cfg;
    located top(path, "");
    route_registry registry;
    for (const auto& [k, node] : doc) {
        const std::string_view key = k.str();
        if (key == "route") {
            const auto* arr = node.as_array();
            if (arr == nullptr || !arr->is_array_of_tables()) {
                top.fail(node, key, "expected [[route]] tables");
            }
            std::size_t i = 0;
            for (const auto& item : *arr) {
                located at(path, "route[" + std::to_string(i) + "].");
                cfg.routes.push_back(load_route(at, *item.as_table(), i, registry));
                ++i;
            }
        } else if (key == "threads") {
            auto v = node.is_integer() ? node.value<std::int64_t>() : std::nullopt;
            if (!v || *v < 1 || *v > 1024) {
                top.fail(node, key, "expected an integer from 1 to 1024");
            }
            cfg.global.threads = static_cast<std::size_t>(*v);
        } else if (key == "metrics") {
            std::string text = need_string(top, node, key);
            cfg.global.metrics = top.wrap(node, key, [&] { return parse_listen_endpoint(text); });
        } else if (key == "drain_timeout") {
            cfg.global.drain_timeout = duration_value(top, node, key);
        } else if (key == "busy_poll") {
            cfg.global.busy_poll = busy_poll_value(top, node, key);
        } else {
            top.fail(node, key,
                     "unknown key (known at the top: route, threads, metrics, drain_timeout, "
                     "busy_poll)");
        }
    }
    if (cfg.routes.empty()) {
        throw usage_error(path + ": no [[route]] table (at least one is needed)");
    }
    return cfg;
}

} // namespace zcio::cli
