// What `zcio serve` makes of a request target before it touches the file system: the
// pure part of request handling, apart from the sockets (tests/fuzz fuzzes it).
#pragma once

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

} // namespace zcio::cli::http
