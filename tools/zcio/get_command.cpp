// `zcio get URL -o FILE`: an HTTP/1.1 download whose body is spliced from the socket
// into the file (the socket → file case of copy()), through FILE.part created with
// O_EXCL, resumable with -c.
#include "cli_util.hpp"
#include "commands.hpp"
#include "http_head.hpp"
#include "http_util.hpp"

#include <zcio/zcio.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef ZCIO_VERSION
#define ZCIO_VERSION "0.0.0"
#endif

namespace zcio::cli {

namespace {

using namespace std::chrono_literals;
using http::head_parser;

struct get_flags {
    std::string url;
    std::string output;
    bool verbose = false;
    bool resume = false;
    std::string connect_timeout = "10s";
    std::string timeout = "60s";
    std::string max_time;
    std::string max_size;
    std::size_t max_redirects = 5;
    std::vector<std::string> headers;
};

struct request_header {
    std::string name;
    std::string value;
};

struct get_params {
    std::string output;              // "-" for standard output (only an explicit -o -)
    bool derived = false;            // the name came from the URL: never replace a file
    clock::duration connect_timeout; // per connection attempt
    clock::duration timeout;         // longest time without a byte received
    std::optional<std::uint64_t> max_size;
    std::size_t max_redirects;
    std::vector<request_header> headers; // -H, in order
};

// Where the body goes, decided before connecting.
enum class target_kind {
    standard_output, // -o -, or a name of one of our descriptors (-o /dev/stdout)
    in_place,        // an existing FIFO or device: written through, never replaced
    part,            // a regular file: FILE.part, renamed to FILE when complete
};

// The extended attribute that keeps the validator (ETag or Last-Modified) of a partial
// download on FILE.part, for the If-Range of a later -c.
constexpr const char* validator_xattr = "user.zcio.validator";

// Everything the download reports, kept outside the coroutine so that it survives a
// cancellation (the --timeout deadline, --max-time or a signal), which destroys the
// coroutine where it waits.
struct get_state {
    target_kind kind = target_kind::part;
    int out_fd = STDOUT_FILENO;    // standard_output: the descriptor written (a dup of it)
    unique_fd in_place;            // the FIFO or device, opened before connecting
    std::string part;              // FILE.part
    unique_fd part_fd;             // FILE.part as -c found it (resume), or as created
    bool part_touched = false;     // created or truncated by this run (removed on failure)
    bool keep_part = false;        // a failure now leaves FILE.part for -c
    std::uint64_t offset = 0;      // bytes already in FILE.part (-c)
    std::string validator;         // If-Range value read from FILE.part
    bool resumed = false;          // a 206 continues FILE.part
    bool already_complete = false; // 416 for a .part that already holds everything
    bool in_body = false;          // the progress bar draws from here on
    bool finished = false;         // stops the progress bar
    std::optional<std::uint64_t> total;
    std::string failure; // one line; empty on success
    int status = 0;
    std::string reason;
    std::string path = "buffer"; // what moved the body
    std::vector<std::string> hops;
    clock::time_point body_started{};
    double seconds = 0;
    int signal = 0;
    bool max_time_fired = false;
};

constexpr std::size_t head_buffer_size = std::size_t{64} << 10;
// Derived names are cut to this many bytes: NAME_MAX is 255, and ".part" must fit.
constexpr std::size_t max_derived_name = 200;

// The file name a URL suggests: its last path segment, percent-decoded, with control
// bytes and '/' (a decoded %2F) made '_'; "index.html" when nothing usable is left.
// "-" is never returned: only an explicit -o - writes to standard output.
std::string name_from_url(const http::url& u) {
    std::string_view path = u.target;
    if (auto q = path.find('?'); q != std::string_view::npos) {
        path = path.substr(0, q);
    }
    const auto raw = path.substr(path.rfind('/') + 1);
    std::string name = http::percent_decode(raw).value_or(std::string(raw));
    for (char& c : name) {
        const auto b = static_cast<unsigned char>(c);
        if (b < 0x20 || b == 0x7f || c == '/') {
            c = '_';
        }
    }
    if (name.size() > max_derived_name) {
        name.resize(max_derived_name);
    }
    if (name.empty() || name == "." || name == ".." || name == "-") {
        return "index.html";
    }
    return name;
}

bool is_redirect(int status) {
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

std::string in_quotes(std::string_view s) {
    return "\"" + std::string(s) + "\"";
}

bool is_token_char(char c) {
    const auto b = static_cast<unsigned char>(c);
    return std::isalnum(b) != 0 ||
           std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// -H "Name: value". The request line and our own framing headers are not the user's:
// a CR or LF would start a new header (or a new request) on the wire.
request_header parse_header_flag(std::string_view text, bool resume) {
    if (text.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos) {
        throw usage_error("-H: a header cannot contain CR, LF or NUL");
    }
    const auto colon = text.find(':');
    const auto name = colon == std::string_view::npos ? text : text.substr(0, colon);
    if (colon == std::string_view::npos || name.empty() ||
        !std::all_of(name.begin(), name.end(), is_token_char)) {
        throw usage_error("-H " + in_quotes(text) + ": expected \"Name: value\"");
    }
    for (const char* own : {"connection", "content-length", "transfer-encoding"}) {
        if (http::iequals(name, own)) {
            throw usage_error("-H " + in_quotes(text) + ": zcio get sets " + std::string(name) +
                              " itself");
        }
    }
    if (resume && (http::iequals(name, "range") || http::iequals(name, "if-range"))) {
        throw usage_error("-H " + in_quotes(text) + ": -c sets " + std::string(name) + " itself");
    }
    return {std::string(name), std::string(http::trim(text.substr(colon + 1)))};
}

const request_header* find_header(const get_params& prm, std::string_view name) {
    for (const auto& h : prm.headers) {
        if (http::iequals(h.name, name)) {
            return &h;
        }
    }
    return nullptr;
}

std::string build_request(const http::url& u, const get_params& prm, const get_state* st) {
    std::string r = "GET " + u.target + " HTTP/1.1\r\n";
    auto line = [&r](std::string_view name, std::string_view value) {
        r += name;
        r += ": ";
        r += value;
        r += "\r\n";
    };
    // A -H of the same name replaces our default.
    if (find_header(prm, "host") == nullptr) {
        line("Host", u.authority());
    }
    if (find_header(prm, "user-agent") == nullptr) {
        line("User-Agent", "zcio/" ZCIO_VERSION);
    }
    if (find_header(prm, "accept") == nullptr) {
        line("Accept", "*/*");
    }
    for (const auto& h : prm.headers) {
        line(h.name, h.value);
    }
    if (st->offset > 0) {
        line("Range", "bytes=" + std::to_string(st->offset) + "-");
        if (!st->validator.empty()) {
            line("If-Range", st->validator);
        }
    }
    r += "Connection: close\r\n\r\n";
    return r;
}

// Credentials given for one host do not follow a redirect to another (as curl does),
// and neither does a Host given with -H (it names the first server).
void drop_host_bound_headers(get_params& prm) {
    std::erase_if(prm.headers, [](const request_header& h) {
        return http::iequals(h.name, "authorization") || http::iequals(h.name, "cookie") ||
               http::iequals(h.name, "proxy-authorization") || http::iequals(h.name, "host");
    });
}

// The If-Range validator of a response: a strong ETag (a weak one may not be used in
// If-Range, RFC 9110 §13.1.5), else Last-Modified; empty when it has neither.
std::string validator_of(const head_parser& p) {
    if (auto etag = p.find("etag"); etag && etag->starts_with('"')) {
        return std::string(*etag);
    }
    if (auto lm = p.find("last-modified"); lm && !lm->empty()) {
        return std::string(*lm);
    }
    return {};
}

// FILE.part for a fresh download: created with O_EXCL, which never follows a symbolic
// link (open(2): "if pathname is a symbolic link, open() fails regardless of where
// it points"), so a link planted there by someone who can write the directory is
// removed (unlink removes the link, not its target) and a file of our own made in its
// place. A name that reappears after every unlink is someone racing us: give up.
result<unique_fd> create_part(const std::string& part) {
    for (int attempt = 0; attempt < 3; ++attempt) {
        auto fd =
            sys::open(part.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
        if (fd || errno_of(fd.error()) != EEXIST) {
            return fd;
        }
        if (::unlink(part.c_str()) != 0 && errno != ENOENT) {
            return fail(name_op("unlink", std::error_code(errno, std::generic_category())));
        }
    }
    return fail_op("open(O_EXCL)", EEXIST);
}

// Sets (or, with an empty value, removes) the validator kept on FILE.part. Best
// effort: without it a later -c resumes without If-Range, as curl and wget do.
void store_validator(int fd, const std::string& v) {
    if (v.empty()) {
        ::fremovexattr(fd, validator_xattr);
    } else {
        ::fsetxattr(fd, validator_xattr, v.data(), v.size(), 0);
    }
}

// The output for a 2xx: standard output, the FIFO or device, or FILE.part (created
// now, or the one -c found: appended to on 206, emptied on 200).
result<stream> open_output(event_loop& loop, get_state* st, const head_parser& p) {
    if (st->kind == target_kind::standard_output) {
        auto fd = sys::dup(st->out_fd);
        if (!fd) {
            return fail(fd.error());
        }
        return stream::adopt(loop, std::move(*fd));
    }
    if (st->kind == target_kind::in_place) {
        return stream::adopt(loop, std::move(st->in_place));
    }
    if (st->resumed) {
        if (auto r = sys::seek(st->part_fd.get(), static_cast<off_t>(st->offset)); !r) {
            return fail(name_op("lseek", r.error()));
        }
    } else if (st->part_fd) {
        // -c, but the server sent the whole representation: start over in the same file.
        if (::ftruncate(st->part_fd.get(), 0) != 0) {
            return fail_op("ftruncate", errno);
        }
        if (auto r = sys::seek(st->part_fd.get(), 0); !r) {
            return fail(name_op("lseek", r.error()));
        }
        st->part_touched = true;
        st->offset = 0;
    } else {
        auto fd = create_part(st->part);
        if (!fd) {
            return fail(name_op("open", fd.error()));
        }
        st->part_fd = std::move(*fd);
        st->part_touched = true;
    }
    if (!st->resumed) {
        store_validator(st->part_fd.get(), validator_of(p));
    }
    // The stream owns a duplicate: st->part_fd stays open to drop the validator once
    // the body is complete.
    auto dup = sys::dup(st->part_fd.get());
    if (!dup) {
        return fail(dup.error());
    }
    return stream::adopt(loop, std::move(*dup));
}

// Whether a 206 names another version of the file than the one FILE.part was started
// from: its ETag (when the kept validator is one) or its Last-Modified (when that is)
// differs. A server only SHOULD honour If-Range (RFC 9110 §13.1.5); one that ignores it
// answers the Range from the new version, and appending that tail to the old head
// would make a file that is neither. A 206 without the header cannot be checked.
bool other_version(const get_state* st, const head_parser& p) {
    if (st->validator.empty()) {
        return false;
    }
    const std::string_view kept = st->validator;
    if (kept.starts_with('"') || kept.starts_with("W/")) {
        const auto etag = p.find("etag");
        return etag && http::trim(*etag) != kept;
    }
    const auto lm = p.find("last-modified");
    if (!lm) {
        return false;
    }
    const auto theirs = http::parse_date(*lm);
    const auto ours = http::parse_date(kept);
    return theirs && ours ? *theirs != *ours : http::trim(*lm) != kept;
}

// -c against a 206: the range must start where FILE.part ends, of the same version.
std::string check_partial(const get_state* st, const head_parser& p, const http::url& u) {
    if (other_version(st, p)) {
        const bool by_tag = st->validator.starts_with('"') || st->validator.starts_with("W/");
        return "206 from " + u.text() + " is of another version (" +
               (by_tag ? "ETag " : "Last-Modified ") +
               std::string(http::trim(p.find(by_tag ? "etag" : "last-modified").value_or(""))) +
               ", \"" + st->part + "\" was started from " + st->validator +
               "): the server ignored If-Range; not appending (remove the .part to start over)";
    }
    const auto cr = p.find("content-range");
    const auto range = cr ? http::parse_content_range(*cr) : std::nullopt;
    if (!range || !range->satisfied) {
        return "206 from " + u.text() + " without a usable Content-Range";
    }
    if (range->first != st->offset) {
        return "206 from " + u.text() + " starts at byte " + std::to_string(range->first) +
               ", not at " + std::to_string(st->offset) + " where \"" + st->part + "\" ends";
    }
    const auto len = p.content_length();
    if (p.chunked() || !len || *len != range->last - range->first + 1) {
        return "206 from " + u.text() + " whose length does not match its Content-Range";
    }
    return {};
}

// Waits for one more byte after a body that reached --max-size: end of stream means
// the body was exactly that large.
task<result<bool>> more_follows(stream* conn) {
    std::array<std::byte, 1> one{};
    auto n = co_await conn->read_some(std::span(one));
    if (!n) {
        co_return fail(n.error());
    }
    co_return *n > 0;
}

// What the body phase works with. Everything it points to lives in download()'s frame,
// which awaits the body coroutines, so it outlives them.
struct body_context {
    get_state* st;
    http::deadline_watch* w;
    head_parser* parser;
    http::head_buffer* hb;
    std::vector<char>* buf;
    stream* conn;
    stream* out;
    std::optional<std::uint64_t> room; // bytes --max-size still allows
    std::string url;                   // for messages
    std::string written_to;            // for messages: FILE.part, the FIFO, "-"
    std::optional<std::uint64_t> max_size;
};

// The body would pass --max-size: nothing past the limit was written, and what was is
// not worth resuming.
void fail_too_large(const body_context& c) {
    c.st->failure = "the body from " + c.url + " is larger than --max-size (" +
                    std::to_string(*c.max_size) + " bytes); stopped before writing past it";
    c.st->keep_part = false;
}

// A chunked body, decoded by http-parser on the buffered path (the framing has to be
// read). Pieces are views into buf, written out before buf is read into again.
// `status` is what the head's last feed() said. False (with st->failure) on failure.
task<bool> chunked_body(body_context c, head_parser::status status) {
    get_state* st = c.st;
    st->path = "buffer (chunked)";
    while (true) {
        for (auto piece : c.parser->body_pieces()) {
            if (c.room && piece.size() > *c.room - c.w->progress) {
                fail_too_large(c);
                co_return false;
            }
            if (auto r = co_await c.out->write_all(std::as_bytes(std::span(piece))); !r) {
                st->failure = "writing \"" + c.written_to + "\": " + r.error().message();
                co_return false;
            }
            c.w->progress += piece.size();
        }
        c.parser->body_pieces().clear();
        if (status == head_parser::status::complete) {
            co_return true;
        }
        if (status != head_parser::status::need_more) {
            st->failure = "bad chunked body from " + c.url + ": " + c.parser->error_text();
            st->keep_part = false;
            co_return false;
        }
        auto n = co_await c.conn->read_some(std::as_writable_bytes(std::span(*c.buf)));
        if (!n) {
            st->failure = "download from " + c.url + " failed after " +
                          std::to_string(c.w->progress) + " bytes: " + n.error().message();
            co_return false;
        }
        if (*n == 0) {
            st->failure = "short body from " + c.url +
                          ": the connection closed in the middle of the chunked body after " +
                          std::to_string(c.w->progress) + " bytes";
            co_return false;
        }
        std::size_t used = 0;
        status = c.parser->feed(c.buf->data(), *n, &used);
    }
}

// A length-delimited body (or one that ends with the stream): what came with the head
// is written first, the rest moves socket → file by copy() (splice through a pooled
// pipe; no byte passes through this process). False (with st->failure) on failure.
task<bool> delimited_body(body_context c) {
    get_state* st = c.st;
    st->total = c.parser->content_length();
    std::uint64_t extra = c.hb->have - c.hb->head_len;
    if (st->total) {
        extra = std::min<std::uint64_t>(extra, *st->total);
    }
    if (c.room && extra > *c.room) {
        fail_too_large(c);
        co_return false;
    }
    if (extra > 0) {
        std::span<const char> first(c.buf->data() + c.hb->head_len, extra);
        if (auto r = co_await c.out->write_all(std::as_bytes(first)); !r) {
            st->failure = "writing \"" + c.written_to + "\": " + r.error().message();
            co_return false;
        }
        c.w->progress += extra;
    }
    if (st->total && *st->total == extra) {
        co_return true;
    }
    copy_options co;
    if (st->total) {
        co.limit = *st->total - extra;
    } else if (c.room) {
        co.limit = *c.room - extra; // then one byte more would be too many
    }
    co.progress = &c.w->progress;
    // 512 KiB pipes rather than the pool's default 1 MiB: in interleaved 1 GiB downloads
    // from nginx (docs/BENCHMARKS.md, "HTTP file transfer"), 1 MiB pipes had runs up to
    // 4x the median CPU (all of it in the pipe → page cache memcpy of ext4's buffered
    // write) and a higher median in two of three batches; 512 KiB pipes did not.
    transfer_pools pools{pipe_pool(pipe_pool_options{.pipe_size = std::size_t{512} << 10}),
                         buffer_pool()};
    co.pools = &pools;
    auto r = co_await copy(*c.out, *c.conn, co);
    st->path = to_string(r.path);
    if (!r.ok()) {
        st->failure = "download from " + c.url + " failed after " + std::to_string(c.w->progress) +
                      " bytes: " + r.error.message();
        co_return false;
    }
    if (st->total && c.w->progress < *st->total) {
        st->failure = "short body from " + c.url + ": got " + std::to_string(c.w->progress) +
                      " of " + std::to_string(*st->total) +
                      " bytes before the server closed the connection";
        co_return false;
    }
    if (!st->total && c.room && c.w->progress == *c.room) {
        auto more = co_await more_follows(c.conn);
        if (!more) {
            st->failure = "download from " + c.url + " failed after " +
                          std::to_string(c.w->progress) + " bytes: " + more.error().message();
            co_return false;
        }
        if (*more) {
            fail_too_large(c);
            co_return false;
        }
    }
    co_return true;
}

task<void> download(event_loop* loop, get_state* st, http::url u, get_params prm,
                    http::deadline_watch* w) {
    std::vector<char> buf(head_buffer_size);
    head_parser parser(head_parser::kind::response, 256);
    const http::url first_url = u;
    for (std::size_t hop = 0;; ++hop) {
        // Names resolve with getaddrinfo, which blocks: only this download runs on the
        // loop, so nothing else waits meanwhile.
        auto ep = endpoint_list::resolve(u.endpoint_text());
        if (!ep) {
            st->failure = ep.error();
            co_return;
        }
        w->slide = {};
        w->deadline = clock::time_point::max(); // connect has its own timeout
        std::vector<connect_failure> failed;
        auto conn = co_await stream::connect(*loop, *ep, prm.connect_timeout, &failed);
        if (!conn) {
            st->failure = "cannot connect to " + ep->to_string() + " (" + u.text() +
                          "): " + (failed.size() > 1 ? to_string(failed) : conn.error().message());
            co_return;
        }
        w->slide = prm.timeout;
        w->deadline = clock::now() + prm.timeout;
        const std::string request = build_request(u, prm, st);
        if (auto r = co_await conn->write_all(std::as_bytes(std::span(request))); !r) {
            st->failure = "sending the request to " + u.text() + ": " + r.error().message();
            co_return;
        }

        // ---- the response head (1xx interim answers skipped) ----
        http::head_buffer hb;
        auto status = hb.start(parser, buf.data());
        while (true) {
            if (hb.have == buf.size()) {
                st->failure = "the response head from " + u.text() + " is larger than 64 KiB";
                co_return;
            }
            auto n =
                co_await conn->read_some(std::as_writable_bytes(std::span(buf)).subspan(hb.have));
            if (!n) {
                st->failure = "reading the response from " + u.text() + ": " + n.error().message();
                co_return;
            }
            if (*n == 0) {
                st->failure = "the server closed the connection before a complete response "
                              "head (" +
                              u.text() + ")";
                co_return;
            }
            w->progress += *n;
            status = hb.received(parser, buf.data(), *n);
            // 100 Continue and friends: the real answer follows.
            status = http::skip_interim(parser, hb, buf.data(), status);
            if (status == head_parser::status::error ||
                status == head_parser::status::too_many_headers) {
                st->failure = "bad response from " + u.text() + ": " + parser.error_text();
                co_return;
            }
            if (parser.head_done()) {
                break;
            }
        }
        st->status = parser.status_code();
        st->reason = std::string(parser.reason());

        if (is_redirect(st->status)) {
            auto loc = parser.find("location");
            if (!loc || loc->empty()) {
                st->failure = "HTTP " + std::to_string(st->status) + " " + st->reason +
                              " without a Location from " + u.text();
                co_return;
            }
            if (hop >= prm.max_redirects) {
                st->failure = "too many redirects (more than " + std::to_string(prm.max_redirects) +
                              ") from " + u.text();
                co_return;
            }
            auto next = http::resolve_reference(u, *loc);
            if (!next) {
                st->failure = "redirect from " + u.text() + ": " + next.error().message;
                co_return;
            }
            st->hops.push_back(std::to_string(st->status) + " " + u.text() + " → " + next->text());
            if (next->host != first_url.host || next->port != first_url.port) {
                drop_host_bound_headers(prm);
            }
            u = std::move(*next);
            continue; // conn closes here
        }
        if (st->status == 416 && st->offset > 0) {
            // -c with a FILE.part that already holds the whole representation.
            const auto cr = parser.find("content-range");
            const auto range = cr ? http::parse_content_range(*cr) : std::nullopt;
            // Of the same version: a server that ignores If-Range answers 416 for a new
            // file of the same size too, and FILE.part would become FILE unchanged.
            if (range && !range->satisfied && range->total == st->offset &&
                !other_version(st, parser)) {
                st->already_complete = true;
                ::fremovexattr(st->part_fd.get(), validator_xattr);
                co_return;
            }
        }
        if (st->status < 200 || st->status > 299) {
            st->failure =
                "HTTP " + std::to_string(st->status) + " " + st->reason + " from " + u.text();
            co_return;
        }
        if (st->status == 206 && st->offset > 0) {
            if (auto bad = check_partial(st, parser, u); !bad.empty()) {
                st->failure = bad; // FILE.part is untouched: keep it
                st->keep_part = true;
                co_return;
            }
            st->resumed = true;
        }

        // ---- the body ----
        // --max-size counts the whole file, the part a -c already has included.
        const std::uint64_t base = st->resumed ? st->offset : 0;
        std::optional<std::uint64_t> room;
        if (prm.max_size) {
            if (base > *prm.max_size ||
                (parser.content_length() && *parser.content_length() > *prm.max_size - base)) {
                // Nothing was written: a FILE.part that -c found is left as it was (a
                // larger --max-size can still resume it).
                st->keep_part = st->resumed;
                st->failure =
                    "the body from " + u.text() + " is larger than --max-size (" +
                    std::to_string(*prm.max_size) + " bytes): Content-Length " +
                    std::to_string(parser.content_length().value_or(0)) +
                    (base > 0 ? " after the " + std::to_string(base) + " in \"" + st->part + "\""
                              : std::string());
                co_return;
            }
            room = *prm.max_size - base;
        }
        auto out = open_output(*loop, st, parser);
        if (!out) {
            st->failure = "cannot write \"" + (st->part.empty() ? prm.output : st->part) +
                          "\": " + out.error().message();
            co_return;
        }
        // An interrupted body can be continued with -c when the server takes ranges.
        const auto ranges = parser.find("accept-ranges");
        st->keep_part = st->kind == target_kind::part &&
                        (st->resumed || (ranges && http::iequals(*ranges, "bytes")));
        w->progress = 0;
        st->in_body = true;
        st->body_started = clock::now();
        const body_context bc{.st = st,
                              .w = w,
                              .parser = &parser,
                              .hb = &hb,
                              .buf = &buf,
                              .conn = &*conn,
                              .out = &*out,
                              .room = room,
                              .url = u.text(),
                              .written_to = st->part.empty() ? prm.output : st->part,
                              .max_size = prm.max_size};
        if (parser.chunked()) {
            if (!co_await chunked_body(bc, status)) {
                co_return;
            }
        } else if (st->status != 204 && st->status != 205) {
            if (!co_await delimited_body(bc)) {
                co_return;
            }
        }
        if (st->kind == target_kind::part) {
            ::fremovexattr(st->part_fd.get(), validator_xattr); // complete: nothing to resume
        }
        st->seconds = std::chrono::duration<double>(clock::now() - st->body_started).count();
        co_return;
    }
}

// --max-time: one deadline for the whole download, redirects included.
task<void> watch_max_time(event_loop* loop, get_state* st, http::deadline_watch* w,
                          clock::duration limit) {
    co_await sleep_for(*loop, limit);
    st->max_time_fired = true;
    w->cancel.cancel();
}

task<void> watch_signals(event_loop* loop, get_state* st, http::deadline_watch* w) {
    std::vector<int> signals{SIGINT, SIGTERM}; // not inline: g++ 12 rejects a braced list here
    auto sig = co_await wait_signal(*loop, std::move(signals));
    if (sig) {
        st->signal = *sig;
        w->cancel.cancel();
    }
}

task<result<void>> cancellable_download(event_loop* loop, get_state* st, http::url u,
                                        get_params prm, http::deadline_watch* w) {
    co_return co_await with_cancel(*loop, download(loop, st, std::move(u), std::move(prm), w),
                                   w->cancel);
}

void draw_progress(std::uint64_t done, std::optional<std::uint64_t> total, double secs) {
    const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
    if (total && *total > 0) {
        const double pct = 100.0 * static_cast<double>(done) / static_cast<double>(*total);
        const double eta =
            rate > 0 ? static_cast<double>(*total - std::min(done, *total)) / rate : 0;
        std::fprintf(stderr, "\r%12s / %-12s %5.1f%%  %10s/s  ETA %4.0fs ",
                     human_bytes(static_cast<double>(done)).c_str(),
                     human_bytes(static_cast<double>(*total)).c_str(), pct,
                     human_bytes(rate).c_str(), eta);
    } else {
        std::fprintf(stderr, "\r%12s  %10s/s ", human_bytes(static_cast<double>(done)).c_str(),
                     human_bytes(rate).c_str());
    }
}

task<void> progress_bar(event_loop* loop, get_state* st, const http::deadline_watch* w) {
    while (!st->finished) {
        if (st->in_body) {
            draw_progress(w->progress, st->total,
                          std::chrono::duration<double>(clock::now() - st->body_started).count());
        }
        co_await sleep_for(*loop, 200ms);
    }
}

// Restores standard output's flags (adopt() makes a pipe non-blocking, and the flag is
// shared with whoever else holds the pipe).
struct stdout_flags_guard {
    int fd;
    int flags;
    ~stdout_flags_guard() {
        if (flags >= 0) {
            ::fcntl(fd, F_SETFL, flags);
        }
    }
};

std::string join_path(std::string_view dir, std::string_view name) {
    std::string out(dir);
    if (!out.ends_with('/')) {
        out += '/';
    }
    return out + std::string(name);
}

// A FIFO or device named by -o: opened now, written in place, never replaced. No
// O_TRUNC (a device has nothing to truncate; a FIFO has no size), no O_CREAT, and a
// second look after the open: if what opened is not the object `seen` (stat before
// the open), someone swapped the name meanwhile (for a link to a disk, or to a
// regular file that would be overwritten from byte 0), and nothing is written. A
// FIFO's open waits for a reader, as `>` does.
unique_fd open_in_place(const std::string& path, const struct stat& seen) {
    auto fd = sys::open(path.c_str(), O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (!fd) {
        throw runtime_failure("cannot write " + in_quotes(path) + ": " + fd.error().message());
    }
    struct stat now {};
    if (::fstat(fd->get(), &now) != 0 || now.st_dev != seen.st_dev || now.st_ino != seen.st_ino ||
        S_ISREG(now.st_mode) || S_ISDIR(now.st_mode)) {
        throw runtime_failure(in_quotes(path) +
                              " changed while it was being opened; not writing it");
    }
    if (::isatty(fd->get()) == 1) {
        throw usage_error("not writing the body to a terminal (" + path +
                          "); use -o - to write it to standard output anyway");
    }
    return std::move(*fd);
}

// -c: the FILE.part a previous run left. Opened without following a link, and only if
// it is a regular file with no other name: a link or a hard link planted by someone
// who can write the directory would have us append to a file of theirs choosing.
// O_NONBLOCK keeps a FIFO planted there from blocking the open (it is refused next).
void open_part_for_resume(get_state* st) {
    auto fd = sys::open(st->part.c_str(), O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (!fd) {
        const int e = errno_of(fd.error());
        if (e == ENOENT) {
            return; // nothing to resume: a fresh download
        }
        if (e == ELOOP) {
            throw runtime_failure(in_quotes(st->part) +
                                  " is a symbolic link: not resuming through it (remove it)");
        }
        throw runtime_failure("cannot resume " + in_quotes(st->part) + ": " + fd.error().message());
    }
    struct stat ps {};
    if (::fstat(fd->get(), &ps) != 0 || !S_ISREG(ps.st_mode)) {
        throw runtime_failure(in_quotes(st->part) + " is not a regular file: not resuming it");
    }
    if (ps.st_nlink != 1) {
        throw runtime_failure(in_quotes(st->part) +
                              " has other hard links: not resuming it (remove it)");
    }
    // In a shared directory (/tmp) another user can plant FILE.part, a regular file of
    // theirs that they made writable for us: resuming it would make its head, which
    // they chose, the head of FILE. Only a FILE.part of our own is ours to continue.
    if (ps.st_uid != ::geteuid()) {
        throw runtime_failure(in_quotes(st->part) + " belongs to another user (uid " +
                              std::to_string(ps.st_uid) + "): not resuming it (remove it)");
    }
    if (auto r = sys::set_nonblocking(fd->get(), false); !r) {
        throw runtime_failure("cannot resume " + in_quotes(st->part) + ": " + r.error().message());
    }
    // Room for any value a response head (at most head_buffer_size) can have given us:
    // a smaller buffer fails with ERANGE on a long ETag, and the resume would then go
    // without If-Range, appending to FILE.part whatever version the server has now.
    std::string v(head_buffer_size, '\0');
    const auto n = ::fgetxattr(fd->get(), validator_xattr, v.data(), v.size());
    if (n > 0) {
        v.resize(static_cast<std::size_t>(n));
        st->validator = std::move(v);
        // Sent as a header: only a value a server could have sent us.
        if (st->validator.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
            st->validator.clear();
        }
    }
    st->offset = static_cast<std::uint64_t>(ps.st_size);
    st->part_fd = std::move(*fd);
}

// The descriptor a name like /dev/stdout, /dev/fd/N or /proc/self/fd/N stands for, read
// from the names themselves (links followed by hand, a few levels). Such a name is not
// a file to replace: when it leads to a regular file (`-o /dev/stdout > out`), FILE.part
// would be made next to the link, in /dev as root, and renamed over it, replacing the
// system's /dev/stdout with the download and leaving `out` empty. It is written
// through a duplicate of the descriptor instead, as -o - writes standard output (same
// offset, O_APPEND kept).
std::optional<int> own_descriptor(std::string path) {
    for (int level = 0; level < 8; ++level) {
        for (std::string_view dir : {"/dev/fd/", "/proc/self/fd/", "/proc/thread-self/fd/"}) {
            if (!path.starts_with(dir) || path.size() == dir.size()) {
                continue;
            }
            const std::string_view digits = std::string_view(path).substr(dir.size());
            int fd = -1;
            const auto [end, ec] =
                std::from_chars(digits.data(), digits.data() + digits.size(), fd);
            if (ec == std::errc{} && end == digits.data() + digits.size()) {
                return fd;
            }
        }
        std::array<char, 4096> target{};
        const ssize_t n = ::readlink(path.c_str(), target.data(), target.size() - 1);
        if (n <= 0) {
            return std::nullopt;
        }
        std::string next(target.data(), static_cast<std::size_t>(n));
        if (!next.starts_with('/')) {
            const auto slash = path.rfind('/');
            next = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + next;
        }
        path = std::move(next);
    }
    return std::nullopt;
}

// Decides where the body goes before anything is sent: -o -, a FIFO or device named
// by -o (opened now), or FILE.part next to FILE. A name derived from the URL (no -o,
// or -o DIR) never replaces an existing file.
void plan_output(const get_flags& f, const http::url& u, get_params& prm, get_state* st) {
    if (f.output == "-") {
        prm.output = "-";
        st->kind = target_kind::standard_output;
        return;
    }
    std::string path = f.output;
    prm.derived = path.empty();
    if (prm.derived) {
        path = name_from_url(u);
    } else {
        struct stat ds {};
        const bool is_dir = ::stat(path.c_str(), &ds) == 0 && S_ISDIR(ds.st_mode);
        if (is_dir) {
            path = join_path(path, name_from_url(u));
            prm.derived = true;
        } else if (path.ends_with('/')) {
            throw runtime_failure("-o " + in_quotes(path) + ": no such directory");
        }
    }
    prm.output = path;
    if (!prm.derived) {
        if (auto fd = own_descriptor(path)) {
            struct stat ds {};
            if (::fstat(*fd, &ds) != 0) {
                throw runtime_failure("-o " + in_quotes(path) + ": descriptor " +
                                      std::to_string(*fd) + " is not open");
            }
            if (::isatty(*fd) == 1) {
                throw usage_error("not writing the body to a terminal (" + path +
                                  "); use -o - to write it to standard output anyway");
            }
            st->kind = target_kind::standard_output;
            st->out_fd = *fd;
            return;
        }
    }
    struct stat ls {};
    if (::lstat(path.c_str(), &ls) == 0) {
        if (prm.derived) {
            throw runtime_failure(in_quotes(path) +
                                  " exists and its name comes from the URL: not replacing it "
                                  "(give -o " +
                                  path + " to replace it, or another -o)");
        }
        struct stat ts {};
        if (::stat(path.c_str(), &ts) == 0 && !S_ISREG(ts.st_mode)) {
            if (S_ISDIR(ts.st_mode)) {
                throw runtime_failure("-o " + in_quotes(path) + " is a directory");
            }
            st->kind = target_kind::in_place;
            st->in_place = open_in_place(path, ts);
            return;
        }
    }
    st->kind = target_kind::part;
    st->part = path + ".part";
}

// Renames FILE.part to FILE. A derived name must still be free: RENAME_NOREPLACE
// makes the check and the rename one step.
std::string finish_part(const get_state& st, const get_params& prm) {
    if (::renameat2(AT_FDCWD, st.part.c_str(), AT_FDCWD, prm.output.c_str(),
                    prm.derived ? RENAME_NOREPLACE : 0) == 0) {
        return {};
    }
    if (errno == EEXIST) {
        return in_quotes(prm.output) +
               " appeared during the download: not replacing it; the body is in " +
               in_quotes(st.part);
    }
    return "cannot rename " + in_quotes(st.part) + " to " + in_quotes(prm.output) + ": " +
           std::strerror(errno);
}

int run_get(const get_flags& f) {
    auto u = http::parse_url(f.url);
    if (!u) {
        throw usage_error(u.error().message);
    }
    get_params prm;
    prm.connect_timeout = std::chrono::duration_cast<clock::duration>(
        parse_duration(f.connect_timeout, "--connect-timeout"));
    prm.timeout =
        std::chrono::duration_cast<clock::duration>(parse_duration(f.timeout, "--timeout"));
    prm.max_redirects = f.max_redirects;
    if (prm.connect_timeout.count() == 0 || prm.timeout.count() == 0) {
        throw usage_error("--connect-timeout and --timeout must be more than 0");
    }
    std::optional<clock::duration> max_time;
    if (!f.max_time.empty()) {
        max_time =
            std::chrono::duration_cast<clock::duration>(parse_duration(f.max_time, "--max-time"));
        if (max_time->count() == 0) {
            throw usage_error("--max-time must be more than 0");
        }
    }
    if (!f.max_size.empty()) {
        prm.max_size = parse_size(f.max_size, "--max-size");
    }
    for (const auto& h : f.headers) {
        prm.headers.push_back(parse_header_flag(h, f.resume));
    }
    get_state st;
    plan_output(f, *u, prm, &st);
    if (f.resume && st.kind != target_kind::part) {
        throw usage_error(st.kind == target_kind::standard_output
                              ? "-c resumes a file: it cannot be combined with -o " + prm.output
                              : "-c resumes a file: " + prm.output + " is a FIFO or device");
    }
    if (f.resume) {
        open_part_for_resume(&st);
    }
    const bool to_stdout = st.kind == target_kind::standard_output;
    stdout_flags_guard out_guard{st.out_fd, to_stdout ? ::fcntl(st.out_fd, F_GETFL) : -1};

    // SIGINT/SIGTERM end the download through the loop, so FILE.part is removed.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &mask, nullptr);

    // Outlives the loop and its tasks, which point to it.
    http::deadline_watch watch;
    http::deadline_watch* w = &watch;
    const bool bar = ::isatty(STDERR_FILENO) == 1;
    {
        event_loop loop;
        // Progress is sampled once a tick (see deadline_watch): a twentieth of --timeout
        // keeps a 2 s timeout within 0.1 s of 2 s, where a fixed second made it 3 s.
        idle_sweeper sweeper(loop, http::sweep_tick_for(prm.timeout));
        sweeper.add(watch);
        loop.spawn(watch_signals(&loop, &st, w));
        if (max_time) {
            loop.spawn(watch_max_time(&loop, &st, w, *max_time));
        }
        if (bar) {
            loop.spawn(progress_bar(&loop, &st, w));
        }
        if (f.verbose && st.offset > 0) {
            std::fprintf(stderr, "zcio get: resuming \"%s\" from byte %llu%s\n", st.part.c_str(),
                         static_cast<unsigned long long>(st.offset),
                         st.validator.empty() ? " (no validator kept: no If-Range)" : "");
        }
        auto r = loop.block_on(cancellable_download(&loop, &st, *u, prm, w));
        st.finished = true;
        if (!r && st.failure.empty()) {
            if (st.signal != 0) {
                st.failure =
                    std::string("interrupted by ") + (st.signal == SIGINT ? "SIGINT" : "SIGTERM");
            } else if (st.max_time_fired) {
                st.failure = "the download took longer than --max-time " + f.max_time + " (" +
                             u->text() + ")";
            } else if (w->fired) {
                st.failure = "no data from the server for " + f.timeout + " (" + u->text() + ")";
            } else {
                st.failure = r.error().message();
            }
        }
        if (bar && st.in_body) {
            draw_progress(w->progress, st.total,
                          std::chrono::duration<double>(clock::now() - st.body_started).count());
            std::fputc('\n', stderr);
        }
    } // the loop and every task still on it are gone: the output fd is closed

    const bool part_written = st.kind == target_kind::part && (st.part_touched || st.resumed);
    if (st.failure.empty() && st.kind == target_kind::part &&
        (part_written || st.already_complete)) {
        st.failure = finish_part(st, prm);
        if (!st.failure.empty()) {
            st.keep_part = true; // the body is complete in FILE.part
        }
    }
    st.part_fd.reset();
    if (!st.failure.empty()) {
        if (part_written) {
            if (st.keep_part && std::filesystem::exists(st.part)) {
                st.failure += " (kept \"" + st.part + "\": -c resumes it)";
            } else if (!st.keep_part) {
                ::unlink(st.part.c_str());
            }
        }
        if (st.signal != 0) {
            std::fprintf(stderr, "zcio: %s\n", st.failure.c_str());
            return 128 + st.signal;
        }
        throw runtime_failure(st.failure);
    }
    if (f.verbose) {
        for (const auto& h : st.hops) {
            std::fprintf(stderr, "zcio get: %s\n", h.c_str());
        }
        if (st.already_complete) {
            std::fprintf(
                stderr, "zcio get: 416, \"%s\" already held all %llu bytes; renamed to %s\n",
                st.part.c_str(), static_cast<unsigned long long>(st.offset), prm.output.c_str());
            return 0;
        }
        const double rate = st.seconds > 0 ? static_cast<double>(w->progress) / st.seconds : 0;
        std::fprintf(stderr, "zcio get: %d %s, %llu bytes (%s) to %s via %s in %.3f s, %s/s\n",
                     st.status, st.reason.c_str(), static_cast<unsigned long long>(w->progress),
                     human_bytes(static_cast<double>(w->progress)).c_str(),
                     prm.output == "-" ? "standard output" : prm.output.c_str(), st.path.c_str(),
                     st.seconds, human_bytes(rate).c_str());
    }
    return 0;
}

} // namespace

subcommand add_get_command(CLI::App& app) {
    auto f = std::make_shared<get_flags>();
    auto* cmd = app.add_subcommand("get", "HTTP/1.1 download (http:// only): the body goes "
                                          "socket → file with splice");
    cmd->add_option("URL", f->url, "http://HOST[:PORT]/PATH")->required();
    cmd->add_option("-o,--output", f->output,
                    "File to write (via FILE.part, renamed when complete); an existing FIFO "
                    "or device is written in place, /dev/stdout or /dev/fd/N that descriptor; "
                    "DIR or DIR/: a file in DIR named from the URL; - for standard output "
                    "(the only way to write a terminal); default: "
                    "the last segment of the URL path, never replacing an existing file");
    cmd->add_flag("-c,--continue", f->resume,
                  "Resume FILE.part: Range from its size, If-Range with the ETag or "
                  "Last-Modified kept on it; appends on 206, starts over on 200");
    cmd->add_option("-H,--header", f->headers,
                    "Extra request header \"Name: value\" (repeatable; replaces Host, "
                    "User-Agent or Accept of the same name)")
        // One value per -H, so that `-H 'A: b' URL` leaves the URL to the positional
        // (a vector option otherwise takes every following word).
        ->allow_extra_args(false);
    cmd->add_flag("-v,--verbose", f->verbose,
                  "Print redirects, and the status, bytes, path and rate at the end");
    cmd->add_option("--connect-timeout", f->connect_timeout, "Give up connecting after this long")
        ->capture_default_str();
    cmd->add_option("--timeout", f->timeout,
                    "Give up when no byte arrives for this long (e.g. 30s, 500ms)")
        ->capture_default_str();
    cmd->add_option("--max-time", f->max_time,
                    "Give up when the whole download takes longer than this (e.g. 5m)");
    cmd->add_option("--max-size", f->max_size,
                    "Give up when the file would be larger than this (e.g. 100M); nothing past "
                    "it is written");
    cmd->add_option("--max-redirects", f->max_redirects, "Redirects to follow at most")
        ->capture_default_str()
        ->check(CLI::Range(0, 20));
    return {cmd, [f] { return run_get(*f); }};
}

} // namespace zcio::cli
