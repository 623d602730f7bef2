// What `zcio serve` makes of a request target before it touches the file system: the
// pure part of request handling, apart from the sockets (tests/fuzz fuzzes it).
#pragma once

#include "http_head.hpp"

#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

namespace zcio::cli::http {

struct request_path {
    int status = 0;         // 0: serve `rel`; otherwise the status to answer (400 or 403)
    std::string decoded;    // the percent-decoded path; starts with '/'
    std::string rel;        // beneath the root: no leading '/', no "", "." or ".." segment
                            // ("" is the root itself)
    std::string_view query; // the raw query, without '?' (a view into the target)
};

// Splits a request target (origin or absolute form) into the file to serve. A target
// http-parser cannot read, a bad escape, a decoded NUL or a path that does not start
// with '/' is 400; ".." anywhere is refused outright (403) rather than normalised, so
// "/a/../b" and "/%2e%2e/x" get the same answer.
request_path resolve_target(std::string_view target);

// 0, or the status a request head gets before its target is looked at: 505 for an HTTP
// version other than 1.x; 400 for HTTP/1.1 without Host, or for Host given more than
// once (RFC 9112 §3.2: a server must answer 400 to either).
int check_head(const head_parser& req);

// Where a directory requested without its trailing '/' is redirected: "/" + rel + "/"
// (percent-encoded) and the query. Built from `rel`, not from the decoded path, so
// leading slashes ("//host", "/%2Fhost") collapse: "//host/" would be read by a
// browser as another site (an open redirect, as in CVE-2021-28861).
std::string redirect_location(const request_path& p);

// Whether a path beneath the root names a dotfile: any segment starting with '.'.
bool has_dotfile(std::string_view rel) noexcept;

// A strong entity tag from the file's size and modification time (nanoseconds
// included, so a rewrite within the same second gives a new tag): "\"<sec>.<nsec>-<size>\""
// in hexadecimal.
std::string make_etag(std::uint64_t size, std::int64_t mtime_sec, std::int64_t mtime_nsec);

// Whether an If-None-Match / If-Match field value (a comma-separated list of entity
// tags, or "*") matches `etag`. `weak` selects weak comparison (W/ prefixes ignored,
// RFC 9110 §8.8.3.2), used by If-None-Match; strong comparison never matches a weak tag.
bool etag_matches(std::string_view list, std::string_view etag, bool weak) noexcept;

// The preconditions of a GET or HEAD of a file, in the order of RFC 9110 §13.2.2:
// If-Match (412 unless it matches), else If-Unmodified-Since (412 when the file was
// modified after that date), then If-None-Match (304 when it matches), else
// If-Modified-Since (304 when not modified since that date). Dates that do not parse,
// and If-Modified-Since dates in the future, are ignored. Returns 0, 304 or 412.
int evaluate_preconditions(const head_parser& req, std::string_view etag, std::time_t mtime,
                           std::time_t now);

// If-Range (RFC 9110 §13.1.5): the range applies only when the value is the file's
// exact Last-Modified date or its (strong) entity tag.
bool if_range_holds(std::string_view if_range, std::string_view etag, std::time_t mtime);

} // namespace zcio::cli::http
