// Small HTTP helpers shared by `zcio serve` and `zcio get`: dates, media types, escaping,
// byte ranges, URLs, and the deadline that ends a connection after a period of no progress.
#pragma once

#include <zcio/event_loop.hpp>
#include <zcio/idle_sweeper.hpp>
#include <zcio/task.hpp>
#include <zcio/timeout.hpp>

#include <cstdint>
#include <ctime>
#include <expected>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace zcio::cli::http {

// ---- dates (RFC 9110 §5.6.7) ----

// IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
std::string format_date(std::time_t t);
void append_date(std::string& out, std::time_t t);
// The current time as IMF-fixdate, formatted at most once a second per thread.
std::string_view date_now();
// IMF-fixdate, and the obsolete RFC 850 and asctime forms a recipient must accept.
std::optional<std::time_t> parse_date(std::string_view text);

// ---- text ----

// "text/html; charset=utf-8" for "x.html"; application/octet-stream when unknown.
std::string_view media_type(std::string_view path);
// &, <, >, " and ' as character references.
std::string html_escape(std::string_view s);
// Percent-encodes every byte that is neither an ASCII letter or digit nor in `keep`.
std::string percent_encode(std::string_view s, std::string_view keep);
// Percent-encodes every byte that is not unreserved (RFC 3986) or '/'.
std::string percent_encode_path(std::string_view s);
// Decodes %XX; nullopt for a malformed escape or a decoded NUL.
std::optional<std::string> percent_decode(std::string_view s);
// ASCII case-insensitive equality.
bool iequals(std::string_view a, std::string_view b) noexcept;
std::string_view trim(std::string_view s) noexcept;
const char* reason_phrase(int status) noexcept;

// ---- byte ranges (RFC 9110 §14) ----

struct byte_range {
    enum class kind {
        none,          // no usable Range header: send the whole representation
        satisfiable,   // [first, last], both inclusive
        unsatisfiable, // 416
    };
    kind k = kind::none;
    std::uint64_t first = 0;
    std::uint64_t last = 0;
};
// One "bytes=a-b", "bytes=a-" or "bytes=-n" against a representation of `size` bytes.
// Several ranges, other units or a malformed header give kind::none: a server may
// ignore Range, and answering 200 with the whole file is always correct.
byte_range parse_range(std::string_view header, std::uint64_t size);

// A response's Content-Range (RFC 9110 §14.4): "bytes FIRST-LAST/TOTAL" (TOTAL may be
// "*") or, with 416, "bytes */TOTAL" (unsatisfied: `satisfied` false, only `total`).
// nullopt when malformed, when LAST < FIRST, or when TOTAL does not exceed LAST: a
// server's numbers are not trusted until they agree with each other.
struct content_range {
    bool satisfied = false;
    std::uint64_t first = 0;
    std::uint64_t last = 0;
    std::optional<std::uint64_t> total;
};
std::optional<content_range> parse_content_range(std::string_view header);

// ---- URLs ----

struct url {
    std::string host;        // without brackets for IPv6
    std::uint16_t port = 80; // 80 when absent
    std::string target;      // "/path?query", never empty
    // "HOST" or "HOST:PORT" (brackets kept for IPv6), for the Host header.
    [[nodiscard]] std::string authority() const;
    // "host:port" for endpoint::parse ("[::1]:80" for IPv6).
    [[nodiscard]] std::string endpoint_text() const;
    [[nodiscard]] std::string text() const; // "http://authority/target"
};
// Parses an absolute http:// URL. The error is one line; `https_refused` tells that the
// scheme was https (out of scope, said so plainly).
struct url_error {
    std::string message;
    bool https = false;
};
std::expected<url, url_error> parse_url(std::string_view text);
// Resolves a Location header value against the URL it came from (RFC 3986 §5.2, the
// forms servers send: absolute, scheme-relative, absolute-path, relative-path).
std::expected<url, url_error> resolve_reference(const url& base, std::string_view ref);

// ---- a connection's timeout ----

// A deadline that the loop's idle_sweeper checks once a tick. The connection moves
// `deadline` as it changes phase; while `slide` is non-zero, every change of `progress`
// pushes the deadline to now + slide (a transfer that still moves is not idle). When
// the deadline passes, the sweep sets `fired` and cancels `cancel`, which ends the
// with_cancel() that runs the connection, and the watch leaves the sweeper. It lives in
// the frame of the coroutine that runs the connection: no allocation, no coroutine of
// its own, and it leaves the sweeper when that frame goes.
//
// Progress is sampled once a tick, and an idle period is counted from the sample that
// saw the last change, so the timeout fires up to one tick after the deadline the
// bytes earned: a caller with short timeouts uses a short tick (get: a twentieth of
// its --timeout).
struct deadline_watch final : idle_entry {
    clock::time_point deadline = clock::time_point::max();
    clock::duration slide{};
    std::uint64_t progress = 0;
    std::uint64_t seen = 0; // progress at the last tick
    bool fired = false;
    cancel_source cancel;

    void on_tick(clock::duration tick) override;
};

// The tick for a sweeper whose shortest timeout is `shortest`: a twentieth of it
// (within 10 ms and 1 s), so a timeout fires within 5 % of its value.
clock::duration sweep_tick_for(clock::duration shortest);

} // namespace zcio::cli::http
