// Small HTTP helpers shared by `zcio serve` and `zcio get`.
#include "http_util.hpp"

#include <http_parser.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <vector>

namespace zcio::cli::http {

using namespace std::chrono_literals;

// ---- dates ----

namespace {
constexpr std::array<const char*, 7> day_names = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
constexpr std::array<const char*, 12> month_names = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

// Formatted by hand: strftime's %a and %b follow the locale, and HTTP dates do not.
std::size_t format_date_into(std::time_t t, char* out, std::size_t cap) {
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    int n = std::snprintf(out, cap, "%s, %02d %s %04d %02d:%02d:%02d GMT",
                          day_names[static_cast<std::size_t>(tm.tm_wday) % 7], tm.tm_mday,
                          month_names[static_cast<std::size_t>(tm.tm_mon) % 12], tm.tm_year + 1900,
                          tm.tm_hour, tm.tm_min, tm.tm_sec);
    return n > 0 ? std::min(static_cast<std::size_t>(n), cap - 1) : 0;
}
} // namespace

std::string format_date(std::time_t t) {
    char buf[64];
    return std::string(buf, format_date_into(t, buf, sizeof buf));
}

void append_date(std::string& out, std::time_t t) {
    char buf[64];
    out.append(buf, format_date_into(t, buf, sizeof buf));
}

std::string_view date_now() {
    thread_local std::time_t cached_at = -1;
    thread_local char buf[64];
    thread_local std::size_t len = 0;
    const std::time_t now = std::time(nullptr);
    if (now != cached_at) {
        len = format_date_into(now, buf, sizeof buf);
        cached_at = now;
    }
    return {buf, len};
}

std::optional<std::time_t> parse_date(std::string_view text) {
    const std::string s(trim(text));
    // The three forms RFC 9110 §5.6.7 asks a recipient to accept. strptime reads %a/%b
    // in the C locale, which is the one this program runs in (it never calls setlocale).
    static const char* const formats[] = {
        "%a, %d %b %Y %H:%M:%S GMT", // IMF-fixdate
        "%A, %d-%b-%y %H:%M:%S GMT", // RFC 850
        "%a %b %e %H:%M:%S %Y",      // asctime
    };
    for (const char* f : formats) {
        std::tm tm{};
        const char* end = ::strptime(s.c_str(), f, &tm);
        if (end != nullptr && *end == '\0') {
            return ::timegm(&tm);
        }
    }
    return std::nullopt;
}

// ---- text ----

std::string_view media_type(std::string_view path) {
    struct entry {
        std::string_view ext;
        std::string_view type;
    };
    static constexpr entry table[] = {
        {"html", "text/html; charset=utf-8"},
        {"htm", "text/html; charset=utf-8"},
        {"css", "text/css; charset=utf-8"},
        {"js", "text/javascript; charset=utf-8"},
        {"mjs", "text/javascript; charset=utf-8"},
        {"json", "application/json"},
        {"txt", "text/plain; charset=utf-8"},
        {"md", "text/markdown; charset=utf-8"},
        {"csv", "text/csv; charset=utf-8"},
        {"xml", "application/xml"},
        {"svg", "image/svg+xml"},
        {"png", "image/png"},
        {"jpg", "image/jpeg"},
        {"jpeg", "image/jpeg"},
        {"gif", "image/gif"},
        {"webp", "image/webp"},
        {"avif", "image/avif"},
        {"ico", "image/vnd.microsoft.icon"},
        {"pdf", "application/pdf"},
        {"wasm", "application/wasm"},
        {"woff", "font/woff"},
        {"woff2", "font/woff2"},
        {"ttf", "font/ttf"},
        {"otf", "font/otf"},
        {"mp3", "audio/mpeg"},
        {"ogg", "audio/ogg"},
        {"wav", "audio/wav"},
        {"mp4", "video/mp4"},
        {"webm", "video/webm"},
        {"zip", "application/zip"},
        {"gz", "application/gzip"},
        {"tgz", "application/gzip"},
        {"tar", "application/x-tar"},
        {"xz", "application/x-xz"},
        {"zst", "application/zstd"},
    };
    const auto slash = path.rfind('/');
    const auto name = slash == std::string_view::npos ? path : path.substr(slash + 1);
    const auto dot = name.rfind('.');
    if (dot == std::string_view::npos || dot + 1 == name.size()) {
        return "application/octet-stream";
    }
    const auto ext = name.substr(dot + 1);
    for (const auto& e : table) {
        if (iequals(e.ext, ext)) {
            return e.type;
        }
    }
    return "application/octet-stream";
}

std::string html_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
        case '&':
            out += "&amp;";
            break;
        case '<':
            out += "&lt;";
            break;
        case '>':
            out += "&gt;";
            break;
        case '"':
            out += "&quot;";
            break;
        case '\'':
            out += "&#39;";
            break;
        default:
            out += c;
        }
    }
    return out;
}

std::string percent_encode(std::string_view s, std::string_view keep) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size());
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if ((c < 0x80 && std::isalnum(c) != 0) || keep.find(ch) != std::string_view::npos) {
            out += ch;
        } else {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        }
    }
    return out;
}

std::string percent_encode_path(std::string_view s) {
    return percent_encode(s, "-._~/");
}

namespace {
int hex_value(char c) noexcept {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}
} // namespace

std::optional<std::string> percent_decode(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= s.size()) {
                return std::nullopt;
            }
            const int hi = hex_value(s[i + 1]);
            const int lo = hex_value(s[i + 2]);
            if (hi < 0 || lo < 0) {
                return std::nullopt;
            }
            c = static_cast<char>(hi * 16 + lo);
            i += 2;
        }
        if (c == '\0') {
            return std::nullopt;
        }
        out += c;
    }
    return out;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view s) noexcept {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
        s.remove_prefix(1);
    }
    while (!s.empty() &&
           (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
        s.remove_suffix(1);
    }
    return s;
}

const char* reason_phrase(int status) noexcept {
    switch (status) {
    case 200:
        return "OK";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 416:
        return "Range Not Satisfiable";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return http_status_str(static_cast<http_status>(status));
    }
}

// ---- byte ranges ----

namespace {
std::optional<std::uint64_t> parse_digits(std::string_view s) {
    if (s.empty()) {
        return std::nullopt;
    }
    std::uint64_t v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size()) {
        return std::nullopt;
    }
    return v;
}
} // namespace

byte_range parse_range(std::string_view header, std::uint64_t size) {
    using kind = byte_range::kind;
    header = trim(header);
    const auto eq = header.find('=');
    if (eq == std::string_view::npos || !iequals(trim(header.substr(0, eq)), "bytes")) {
        return {};
    }
    const auto spec = trim(header.substr(eq + 1));
    if (spec.find(',') != std::string_view::npos) {
        return {}; // several ranges: answer 200 with everything (allowed, and simpler)
    }
    const auto dash = spec.find('-');
    if (dash == std::string_view::npos) {
        return {};
    }
    const auto a = trim(spec.substr(0, dash));
    const auto b = trim(spec.substr(dash + 1));
    if (a.empty()) {
        // Suffix range: the last n bytes.
        const auto n = parse_digits(b);
        if (!n) {
            return {};
        }
        if (*n == 0 || size == 0) {
            return {kind::unsatisfiable, 0, 0};
        }
        return {kind::satisfiable, size > *n ? size - *n : 0, size - 1};
    }
    const auto first = parse_digits(a);
    if (!first) {
        return {};
    }
    std::uint64_t last = size == 0 ? 0 : size - 1;
    if (!b.empty()) {
        const auto l = parse_digits(b);
        if (!l || *l < *first) {
            return {}; // invalid: ignored, as RFC 9110 §14.2 allows
        }
        last = std::min(*l, last);
    }
    if (*first >= size) {
        return {kind::unsatisfiable, 0, 0};
    }
    return {kind::satisfiable, *first, last};
}

std::optional<content_range> parse_content_range(std::string_view header) {
    header = trim(header);
    if (header.size() < 6 || !iequals(header.substr(0, 6), "bytes ")) {
        return std::nullopt;
    }
    const auto spec = trim(header.substr(6));
    const auto slash = spec.find('/');
    if (slash == std::string_view::npos) {
        return std::nullopt;
    }
    const auto range = spec.substr(0, slash);
    const auto total_text = spec.substr(slash + 1);
    content_range out;
    if (total_text != "*") {
        out.total = parse_digits(total_text);
        if (!out.total) {
            return std::nullopt;
        }
    }
    if (range == "*") {
        // Only a 416 says this, and it must say how large the representation is.
        return out.total ? std::optional(out) : std::nullopt;
    }
    const auto dash = range.find('-');
    if (dash == std::string_view::npos) {
        return std::nullopt;
    }
    const auto first = parse_digits(range.substr(0, dash));
    const auto last = parse_digits(range.substr(dash + 1));
    if (!first || !last || *last < *first || (out.total && *out.total <= *last)) {
        return std::nullopt;
    }
    out.satisfied = true;
    out.first = *first;
    out.last = *last;
    return out;
}

// ---- URLs ----

std::string url::authority() const {
    std::string a = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    if (port != 80) {
        a += ":" + std::to_string(port);
    }
    return a;
}

std::string url::endpoint_text() const {
    const std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    return h + ":" + std::to_string(port);
}

std::string url::text() const {
    return "http://" + authority() + target;
}

namespace {
std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return out;
}

// RFC 3986 §5.2.4, on a path without query.
std::string remove_dot_segments(std::string_view path) {
    std::vector<std::string_view> out;
    std::size_t i = 0;
    const bool trailing = path.ends_with("/.") || path.ends_with("/..") || path.ends_with('/');
    while (i <= path.size()) {
        const auto next = path.find('/', i);
        const auto seg =
            path.substr(i, next == std::string_view::npos ? std::string_view::npos : next - i);
        if (seg == "..") {
            if (!out.empty()) {
                out.pop_back();
            }
        } else if (seg != "." && !seg.empty()) {
            out.push_back(seg);
        }
        if (next == std::string_view::npos) {
            break;
        }
        i = next + 1;
    }
    std::string r;
    for (auto s : out) {
        r += '/';
        r += s;
    }
    if (r.empty() || trailing) {
        r += '/';
    }
    return r;
}
// Percent-encodes the bytes a request line cannot carry as they are: controls, space
// and bytes outside ASCII (RFC 9112 §3.2). http-parser lets a tab and such bytes
// through in a URL, and a Location header may hold any of them; a space in a target
// would split the request line.
std::string sendable_target(std::string_view t) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(t.size());
    for (char ch : t) {
        const auto c = static_cast<unsigned char>(ch);
        if (c <= 0x20 || c >= 0x7f) {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        } else {
            out += ch;
        }
    }
    return out;
}
} // namespace

std::expected<url, url_error> parse_url(std::string_view text) {
    text = trim(text);
    const auto sep = text.find("://");
    if (sep == std::string_view::npos) {
        return std::unexpected(url_error{"\"" + std::string(text) +
                                         "\" is not a URL (expected http://HOST[:PORT]/PATH)"});
    }
    const std::string scheme = lower(text.substr(0, sep));
    if (scheme == "https") {
        return std::unexpected(url_error{"https:// is not supported: zcio get speaks plain HTTP "
                                         "only (\"" +
                                             std::string(text) + "\")",
                                         true});
    }
    if (scheme != "http") {
        return std::unexpected(url_error{"unsupported scheme \"" + scheme + "\" in \"" +
                                         std::string(text) + "\" (only http:// is)"});
    }
    http_parser_url u;
    http_parser_url_init(&u);
    if (text.size() > 65000 || http_parser_parse_url(text.data(), text.size(), 0, &u) != 0 ||
        (u.field_set & (1 << UF_HOST)) == 0) {
        return std::unexpected(
            url_error{"\"" + std::string(text) + "\" is not a valid http:// URL"});
    }
    auto field = [&](int f) { return text.substr(u.field_data[f].off, u.field_data[f].len); };
    if ((u.field_set & (1 << UF_USERINFO)) != 0) {
        return std::unexpected(url_error{"user names and passwords in URLs are not supported (\"" +
                                         std::string(text) + "\")"});
    }
    url out;
    out.host = std::string(field(UF_HOST));
    // A bracketed host must be an IPv6 literal: http-parser also takes "[2.%0089]", which
    // could not be printed back (authority() brackets only hosts with a colon).
    const auto host_at = u.field_data[UF_HOST].off;
    const bool bracketed = host_at > 0 && text[host_at - 1] == '[';
    if (bracketed != (out.host.find(':') != std::string::npos)) {
        return std::unexpected(
            url_error{"\"" + std::string(text) + "\" is not a valid http:// URL"});
    }
    if ((u.field_set & (1 << UF_PORT)) != 0) {
        if (u.port == 0) {
            return std::unexpected(url_error{"\"" + std::string(text) + "\": port 0"});
        }
        out.port = u.port;
    }
    out.target = (u.field_set & (1 << UF_PATH)) != 0 ? std::string(field(UF_PATH)) : "/";
    if ((u.field_set & (1 << UF_QUERY)) != 0) {
        out.target += "?" + std::string(field(UF_QUERY));
    }
    out.target = sendable_target(out.target);
    return out;
}

std::expected<url, url_error> resolve_reference(const url& base, std::string_view ref) {
    ref = trim(ref);
    if (const auto hash = ref.find('#'); hash != std::string_view::npos) {
        ref = ref.substr(0, hash);
    }
    if (ref.empty()) {
        return base;
    }
    const auto colon = ref.find(':');
    const auto slash = ref.find('/');
    if (colon != std::string_view::npos && (slash == std::string_view::npos || colon < slash)) {
        return parse_url(ref); // has a scheme
    }
    if (ref.starts_with("//")) {
        return parse_url("http:" + std::string(ref));
    }
    url out = base;
    std::string_view base_path = base.target;
    if (const auto q = base_path.find('?'); q != std::string_view::npos) {
        base_path = base_path.substr(0, q);
    }
    std::string path;
    std::string query;
    std::string_view r = ref;
    if (const auto q = r.find('?'); q != std::string_view::npos) {
        query = std::string(r.substr(q));
        r = r.substr(0, q);
    }
    if (r.empty()) {
        path = std::string(base_path); // "?query" only
    } else if (r.front() == '/') {
        path = std::string(r);
    } else {
        const auto last = base_path.rfind('/');
        path = std::string(last == std::string_view::npos ? "/" : base_path.substr(0, last + 1));
        path += r;
    }
    out.target = sendable_target(remove_dot_segments(path) + query);
    return out;
}

// ---- a connection's timeout ----

void deadline_watch::on_tick(clock::duration /*tick*/) {
    const auto now = clock::now();
    if (progress != seen) {
        seen = progress;
        if (slide.count() > 0) {
            deadline = std::max(deadline, now + slide);
        }
    }
    if (now >= deadline) {
        fired = true;
        leave();
        cancel.cancel(); // only schedules: the connection's frame goes later
    }
}

clock::duration sweep_tick_for(clock::duration shortest) {
    using namespace std::chrono_literals;
    return std::clamp<clock::duration>(shortest / 20, 10ms, 1s);
}

} // namespace zcio::cli::http
