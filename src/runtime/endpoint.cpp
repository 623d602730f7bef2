// endpoint: parsing, printing and comparing socket addresses (IPv4, IPv6, Unix).
#include <zcio/endpoint.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <utility>

#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/un.h>

namespace zcio {

namespace {

constexpr socklen_t unix_path_offset = offsetof(sockaddr_un, sun_path);
// One byte of sun_path is spent on the terminating NUL of a path, or on the leading NUL
// that marks an abstract name (unix(7)), so both kinds get the same room.
constexpr std::size_t max_unix_name = sizeof(sockaddr_un::sun_path) - 1;

// Escapes quotes, backslashes and control bytes of `text` for an error line, so that
// the message stays on one line whatever the user typed.
std::string escaped(std::string_view text) {
    std::string out;
    for (char c : text) {
        auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20 || u == 0x7f) {
            constexpr char hex[] = "0123456789abcdef";
            out += "\\x";
            out += hex[u >> 4];
            out += hex[u & 0xf];
        } else {
            out += c;
        }
    }
    return out;
}

// `text`, escaped, in double quotes.
std::string quoted(std::string_view text) {
    return "\"" + escaped(text) + "\"";
}

std::unexpected<std::string> bad(std::string_view text, std::string_view why) {
    std::string msg = "bad address ";
    msg += quoted(text);
    msg += ": ";
    msg += why;
    return std::unexpected(std::move(msg));
}

bool all_digits(std::string_view s) noexcept {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Parses the port text after the last ':'; on failure returns the reason.
std::expected<std::uint16_t, std::string> parse_port(std::string_view p) {
    if (p.empty()) {
        return std::unexpected(std::string("missing port after \":\" (expected HOST:PORT)"));
    }
    std::size_t digits = 0;
    while (digits < p.size() && p[digits] >= '0' && p[digits] <= '9') {
        ++digits;
    }
    if (digits == 0) {
        return std::unexpected("port " + quoted(p) + " is not a number");
    }
    if (digits < p.size()) {
        return std::unexpected("unexpected " + quoted(p.substr(digits)) + " after port " +
                               std::string(p.substr(0, digits)));
    }
    // from_chars reports overflow rather than wrapping, so 99999999999999999999 is
    // out of range, not some small port.
    unsigned long value = 0;
    auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), value);
    if (ec != std::errc{} || ptr != p.data() + p.size() || value > 65535) {
        return std::unexpected("port " + std::string(p) + " is out of range (0-65535)");
    }
    return static_cast<std::uint16_t>(value);
}

std::expected<endpoint, std::string> parse_unix(std::string_view text, std::string_view rest) {
    endpoint e;
    auto* sun = reinterpret_cast<sockaddr_un*>(e.data());
    sun->sun_family = AF_UNIX;
    if (rest.empty()) {
        return bad(text,
                   "empty Unix socket path after \"unix:\" (expected unix:/PATH or unix:@NAME)");
    }
    if (rest.front() == '@') {
        std::string_view name = rest.substr(1);
        if (name.empty()) {
            return bad(text, "empty abstract socket name after \"unix:@\"");
        }
        if (name.size() > max_unix_name) {
            return bad(text, "abstract socket name is too long (" + std::to_string(name.size()) +
                                 " bytes, at most " + std::to_string(max_unix_name) + ")");
        }
        // Abstract namespace (unix(7)): sun_path[0] is NUL and the length, not a
        // terminator, says where the name ends; a trailing NUL would be part of the name.
        sun->sun_path[0] = '\0';
        std::memcpy(sun->sun_path + 1, name.data(), name.size());
        e.set_size(static_cast<socklen_t>(unix_path_offset + 1 + name.size()));
        return e;
    }
    if (rest.find('\0') != std::string_view::npos) {
        return bad(text, "Unix socket path contains a NUL byte");
    }
    if (rest.size() > max_unix_name) {
        return bad(text, "Unix socket path is too long (" + std::to_string(rest.size()) +
                             " bytes, at most " + std::to_string(max_unix_name) + ")");
    }
    std::memcpy(sun->sun_path, rest.data(), rest.size());
    sun->sun_path[rest.size()] = '\0';
    // The length the kernel itself reports from getsockname for a path socket.
    e.set_size(static_cast<socklen_t>(unix_path_offset + rest.size() + 1));
    return e;
}

// The text inside [...]: an IPv6 address with an optional %zone (interface name or
// number), as link-local addresses need one to be usable.
std::expected<endpoint, std::string> parse_ipv6(std::string_view text, std::string_view host,
                                                std::uint16_t port) {
    std::string_view zone;
    if (auto pct = host.find('%'); pct != std::string_view::npos) {
        zone = host.substr(pct + 1);
        host = host.substr(0, pct);
        if (zone.empty()) {
            return bad(text, "empty zone after \"%\" in IPv6 address");
        }
    }
    endpoint e;
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(e.data());
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    if (host.empty()) {
        return bad(text, "empty IPv6 address between \"[\" and \"]\"");
    }
    std::string h(host);
    if (::inet_pton(AF_INET6, h.c_str(), &sin6->sin6_addr) != 1) {
        return bad(text, quoted(host) + " is not an IPv6 address");
    }
    if (!zone.empty()) {
        unsigned long index = 0;
        if (all_digits(zone)) {
            auto [ptr, ec] = std::from_chars(zone.data(), zone.data() + zone.size(), index);
            if (ec != std::errc{} || index > 0xffffffffUL) {
                return bad(text, "zone " + quoted(zone) + " is out of range");
            }
        } else {
            index = ::if_nametoindex(std::string(zone).c_str());
            if (index == 0) {
                return bad(text, "no network interface named " + quoted(zone));
            }
        }
        sin6->sin6_scope_id = static_cast<std::uint32_t>(index);
    }
    e.set_size(sizeof(sockaddr_in6));
    return e;
}

// A host name: resolved with getaddrinfo. The first answer is returned (the resolver
// already orders them by RFC 6724 / gai.conf preference); when `all` is given, every
// IPv4 and IPv6 answer is appended to it in that order.
std::expected<endpoint, std::string> resolve(std::string_view text, std::string_view host,
                                             std::string_view port_text, std::uint16_t port,
                                             std::vector<endpoint>* all) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    // One socket type, or every address comes back once per type.
    hints.ai_socktype = SOCK_STREAM;
    // No AI_ADDRCONFIG: on a host with only loopback it can hide ::1 or even 127.0.0.1.
    hints.ai_flags = AI_NUMERICSERV;
    std::string h(host);
    std::string p(port_text);
    addrinfo* list = nullptr;
    int rc = ::getaddrinfo(h.c_str(), p.c_str(), &hints, &list);
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> owner(list, &::freeaddrinfo);
    if (rc != 0) {
        const char* why = rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc);
        return bad(text, "host " + quoted(host) + " does not resolve: " + why);
    }
    std::optional<endpoint> first;
    for (const addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
        if ((ai->ai_family == AF_INET || ai->ai_family == AF_INET6) && ai->ai_addr != nullptr) {
            endpoint e = endpoint::from_sockaddr(ai->ai_addr, ai->ai_addrlen);
            e.set_port(port);
            if (!first) {
                first = e;
            }
            if (all == nullptr) {
                break;
            }
            all->push_back(e);
        }
    }
    if (!first) {
        return bad(text, "host " + quoted(host) + " has no IPv4 or IPv6 address");
    }
    return *first;
}

// "http://host:1/": a URL where an address belongs. The hint is its host and port
// ("host:1"), or the host with PORT to fill in.
std::unexpected<std::string> url_is_not_an_address(std::string_view text,
                                                   std::string_view after_scheme) {
    std::string_view authority = after_scheme.substr(0, after_scheme.find_first_of("/?#"));
    if (auto at = authority.rfind('@'); at != std::string_view::npos) {
        authority = authority.substr(at + 1); // user:password@
    }
    const bool has_port = !authority.empty() && authority.back() != ']' &&
                          authority.find(':') != std::string_view::npos;
    std::string hint = authority.empty() ? "HOST:PORT" : escaped(authority);
    if (!authority.empty() && !has_port) {
        hint += ":PORT";
    }
    return bad(text, "a URL is not an address (expected HOST:PORT, e.g. " + hint + ")");
}

// `all`: as for resolve(); left empty for a literal address.
std::expected<endpoint, std::string> parse_ip(std::string_view text,
                                              std::vector<endpoint>* all = nullptr) {
    if (auto scheme = text.find("://"); scheme != std::string_view::npos) {
        return url_is_not_an_address(text, text.substr(scheme + 3));
    }
    if (text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos) {
            return bad(text, "missing \"]\" after IPv6 address (expected [IPV6]:PORT)");
        }
        std::string_view host = text.substr(1, close - 1);
        std::string_view after = text.substr(close + 1);
        if (after.empty()) {
            return bad(text, "missing port (expected [IPV6]:PORT)");
        }
        if (after.front() != ':') {
            return bad(text, "unexpected " + quoted(after) + " after \"]\" (expected :PORT)");
        }
        auto port = parse_port(after.substr(1));
        if (!port) {
            return bad(text, port.error());
        }
        return parse_ipv6(text, host, *port);
    }

    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
        if (all_digits(text)) {
            return bad(text, "missing host: a port alone is not an address (expected "
                             "HOST:PORT, e.g. 127.0.0.1:" +
                                 std::string(text) + ")");
        }
        return bad(text, "missing port (expected HOST:PORT)");
    }
    std::string_view host = text.substr(0, colon);
    std::string_view port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
        // "::1:80" could be ::1 port 80 or ::1:80 with no port: RFC 3986 brackets decide.
        in6_addr probe{};
        std::string hint;
        if (::inet_pton(AF_INET6, std::string(host).c_str(), &probe) == 1) {
            hint = "use [" + escaped(host) + "]:" + escaped(port_text);
        } else if (::inet_pton(AF_INET6, std::string(text).c_str(), &probe) == 1) {
            hint = "use [" + escaped(text) + "]:PORT";
        } else {
            return bad(text, "too many \":\" (an IPv6 address goes in brackets, e.g. [::1]:80)");
        }
        return bad(text,
                   "an IPv6 address must be in brackets with the port after them (" + hint + ")");
    }
    if (host.empty()) {
        return bad(text, "empty host before \":\" (expected HOST:PORT, e.g. 0.0.0.0" +
                             escaped(text) + ")");
    }
    auto port = parse_port(port_text);
    if (!port) {
        return bad(text, port.error());
    }

    endpoint e;
    auto* sin = reinterpret_cast<sockaddr_in*>(e.data());
    std::string h(host);
    if (::inet_pton(AF_INET, h.c_str(), &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(*port);
        e.set_size(sizeof(sockaddr_in));
        return e;
    }
    // Digits and dots only: a mistyped IPv4 address. getaddrinfo would accept the old
    // inet_aton shorthands ("1.2.3" = 1.2.0.3) or send it to DNS; neither is wanted.
    if (std::all_of(host.begin(), host.end(),
                    [](char c) { return c == '.' || (c >= '0' && c <= '9'); })) {
        return bad(text, quoted(host) + " is not a valid IPv4 address");
    }
    return resolve(text, host, port_text, *port, all);
}

enum class unix_kind { unnamed, path, abstract };

unix_kind kind_of(const sockaddr_un* sun, socklen_t len) noexcept {
    if (len <= unix_path_offset) {
        return unix_kind::unnamed;
    }
    return sun->sun_path[0] == '\0' ? unix_kind::abstract : unix_kind::path;
}

// The path of a path socket: up to the first NUL within the address length (the kernel
// may or may not count the terminator in the length).
std::string_view unix_path(const sockaddr_un* sun, socklen_t len) noexcept {
    std::size_t room = len - unix_path_offset;
    return {sun->sun_path, ::strnlen(sun->sun_path, room)};
}

// The name of an abstract socket: every byte after the leading NUL, NULs included.
std::string_view abstract_name(const sockaddr_un* sun, socklen_t len) noexcept {
    return {sun->sun_path + 1, static_cast<std::size_t>(len - unix_path_offset - 1)};
}

} // namespace

endpoint::endpoint() noexcept = default;

std::expected<endpoint, std::string> endpoint::parse(std::string_view text) {
    if (text.empty()) {
        return bad(text, "empty (expected HOST:PORT, [IPV6]:PORT, unix:/PATH or unix:@NAME)");
    }
    constexpr std::string_view unix_prefix = "unix:";
    if (text.starts_with(unix_prefix)) {
        return parse_unix(text, text.substr(unix_prefix.size()));
    }
    return parse_ip(text);
}

endpoint endpoint::from_sockaddr(const sockaddr* addr, socklen_t len) noexcept {
    endpoint e;
    if (addr == nullptr || len < static_cast<socklen_t>(sizeof(sa_family_t))) {
        return e;
    }
    // The kernel truncates to the buffer it was given; so do we.
    len = std::min(len, capacity());
    std::memcpy(&e.storage_, addr, len);
    e.len_ = len;
    return e;
}

endpoint endpoint::ipv4_loopback(std::uint16_t port) noexcept {
    endpoint e;
    auto* sin = reinterpret_cast<sockaddr_in*>(e.data());
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin->sin_port = htons(port);
    e.len_ = sizeof(sockaddr_in);
    return e;
}

endpoint endpoint::ipv6_loopback(std::uint16_t port) noexcept {
    endpoint e;
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(e.data());
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = in6addr_loopback;
    sin6->sin6_port = htons(port);
    e.len_ = sizeof(sockaddr_in6);
    return e;
}

std::string endpoint::to_string() const {
    switch (family()) {
    case AF_INET: {
        const auto* sin = reinterpret_cast<const sockaddr_in*>(&storage_);
        char buf[INET_ADDRSTRLEN] = {};
        ::inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf));
        return std::string(buf) + ":" + std::to_string(port());
    }
    case AF_INET6: {
        const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&storage_);
        char buf[INET6_ADDRSTRLEN] = {};
        ::inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf));
        std::string out = "[";
        out += buf;
        if (sin6->sin6_scope_id != 0) {
            // Print the number, not the interface name: it parses back to the same
            // scope even if the interface is renamed or gone.
            out += "%" + std::to_string(sin6->sin6_scope_id);
        }
        out += "]:" + std::to_string(port());
        return out;
    }
    case AF_UNIX: {
        const auto* sun = reinterpret_cast<const sockaddr_un*>(&storage_);
        switch (kind_of(sun, len_)) {
        case unix_kind::unnamed:
            // socketpair ends and unbound clients have no name (unix(7)); this is not
            // parseable, on purpose.
            return "unix:(unnamed)";
        case unix_kind::abstract:
            return "unix:@" + std::string(abstract_name(sun, len_));
        case unix_kind::path:
            return "unix:" + std::string(unix_path(sun, len_));
        }
        break;
    }
    case AF_UNSPEC:
        return "(none)";
    default:
        break;
    }
    return "(address family " + std::to_string(family()) + ")";
}

bool endpoint::is_ip() const noexcept {
    return family() == AF_INET || family() == AF_INET6;
}

bool endpoint::is_abstract() const noexcept {
    return is_unix() &&
           kind_of(reinterpret_cast<const sockaddr_un*>(&storage_), len_) == unix_kind::abstract;
}

std::uint16_t endpoint::port() const noexcept {
    switch (family()) {
    case AF_INET:
        return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
    case AF_INET6:
        return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
    default:
        return 0;
    }
}

void endpoint::set_port(std::uint16_t port) noexcept {
    switch (family()) {
    case AF_INET:
        reinterpret_cast<sockaddr_in*>(&storage_)->sin_port = htons(port);
        break;
    case AF_INET6:
        reinterpret_cast<sockaddr_in6*>(&storage_)->sin6_port = htons(port);
        break;
    default:
        break;
    }
}

bool operator==(const endpoint& a, const endpoint& b) noexcept {
    if (a.family() != b.family()) {
        return false;
    }
    switch (a.family()) {
    case AF_INET: {
        const auto* x = reinterpret_cast<const sockaddr_in*>(a.data());
        const auto* y = reinterpret_cast<const sockaddr_in*>(b.data());
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    case AF_INET6: {
        // sin6_flowinfo is per-packet traffic information, not part of the address.
        const auto* x = reinterpret_cast<const sockaddr_in6*>(a.data());
        const auto* y = reinterpret_cast<const sockaddr_in6*>(b.data());
        return x->sin6_port == y->sin6_port && x->sin6_scope_id == y->sin6_scope_id &&
               std::memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(in6_addr)) == 0;
    }
    case AF_UNIX: {
        const auto* x = reinterpret_cast<const sockaddr_un*>(a.data());
        const auto* y = reinterpret_cast<const sockaddr_un*>(b.data());
        unix_kind kx = kind_of(x, a.size());
        if (kx != kind_of(y, b.size())) {
            return false;
        }
        switch (kx) {
        case unix_kind::unnamed:
            return true;
        case unix_kind::abstract:
            return abstract_name(x, a.size()) == abstract_name(y, b.size());
        case unix_kind::path:
            return unix_path(x, a.size()) == unix_path(y, b.size());
        }
        return false;
    }
    default:
        return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size()) == 0;
    }
}

// ---- endpoint_list ----

endpoint_list::endpoint_list(const endpoint& only) : addresses_{only} {}

endpoint_list::endpoint_list(std::string name, std::vector<endpoint> addresses)
    : name_(std::move(name)), addresses_(std::move(addresses)) {}

std::expected<endpoint_list, std::string> endpoint_list::resolve(std::string_view text) {
    if (text.empty() || text.starts_with("unix:")) {
        auto one = endpoint::parse(text); // no name to resolve
        if (!one) {
            return std::unexpected(std::move(one.error()));
        }
        return endpoint_list(*one);
    }
    std::vector<endpoint> all;
    auto first = parse_ip(text, &all);
    if (!first) {
        return std::unexpected(std::move(first.error()));
    }
    if (all.empty()) {
        return endpoint_list(*first); // a literal address
    }
    return endpoint_list(std::string(text), interleave_families(all));
}

std::string endpoint_list::to_string() const {
    if (!name_.empty()) {
        return name_;
    }
    return empty() ? std::string("(none)") : front().to_string();
}

std::string endpoint_list::addresses_text() const {
    std::string out;
    for (const endpoint& e : addresses_) {
        if (!out.empty()) {
            out += ", ";
        }
        out += e.to_string();
    }
    return out;
}

std::vector<endpoint> interleave_families(std::span<const endpoint> addresses) {
    std::vector<endpoint> first_family;
    std::vector<endpoint> other_family;
    for (const endpoint& e : addresses) {
        // An address twice (an /etc/hosts line and DNS, say) would only cost a second
        // identical attempt.
        if (std::find(first_family.begin(), first_family.end(), e) != first_family.end() ||
            std::find(other_family.begin(), other_family.end(), e) != other_family.end()) {
            continue;
        }
        (first_family.empty() || e.family() == first_family.front().family() ? first_family
                                                                             : other_family)
            .push_back(e);
    }
    std::vector<endpoint> out;
    out.reserve(first_family.size() + other_family.size());
    for (std::size_t i = 0; i < std::max(first_family.size(), other_family.size()); ++i) {
        if (i < first_family.size()) {
            out.push_back(first_family[i]);
        }
        if (i < other_family.size()) {
            out.push_back(other_family[i]);
        }
    }
    return out;
}

result<endpoint> local_endpoint_of(int fd) {
    endpoint e;
    socklen_t len = endpoint::capacity();
    if (::getsockname(fd, e.data(), &len) != 0) {
        return fail_op("getsockname", errno);
    }
    // A longer address than the buffer was truncated (getsockname(2)); keep what fits.
    e.set_size(std::min(len, endpoint::capacity()));
    return e;
}

result<endpoint> peer_endpoint_of(int fd) {
    endpoint e;
    socklen_t len = endpoint::capacity();
    if (::getpeername(fd, e.data(), &len) != 0) {
        return fail_op("getpeername", errno);
    }
    e.set_size(std::min(len, endpoint::capacity()));
    return e;
}

} // namespace zcio
