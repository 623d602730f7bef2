// The `zcio serve` engine: accept loops, one coroutine per connection, request heads
// through http-parser, files resolved beneath the root, bodies sent with copy().
#include "http_server.hpp"

#include "cli_util.hpp"
#include "http_head.hpp"
#include "http_request.hpp"
#include "http_util.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <utility>

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace zcio::cli {

using namespace std::chrono_literals;
using http::head_parser;

// Read-only after start(), shared by every loop.
struct serve_state {
    serve_options opts;
    unique_fd root; // O_PATH | O_DIRECTORY
    // openat2(2) is Linux 5.6+, and some seccomp profiles answer ENOSYS to it; then
    // walk_beneath() resolves instead, one openat() per component.
    // ZCIO_SERVE_NO_OPENAT2=1 forces the fallback (the e2e tests run the escape cases
    // through both).
    std::atomic<bool> use_openat2{true};
    connection_limit active; // every loop's connections against --max-connections
};

// Everything one loop owns. Only its own thread touches it after start().
struct serve_loop {
    std::size_t index = 0;
    event_loop* loop = nullptr;
    serve_state* state = nullptr;
    transfer_pools pools;
    // Request heads are read into buffers of exactly max_header_size bytes, borrowed
    // while a head is read and given back while the connection waits for the next
    // one: an idle keep-alive connection holds no buffer.
    std::unique_ptr<buffer_pool> heads;
    std::vector<listener> listeners; // one per address of --listen
    accept_options accepting;        // for every listener of this loop
    // Refused connections (--max-connections) being closed gracefully right now; at
    // most max_refusing, so a flood beyond the limit holds a bounded set of sockets.
    std::size_t refusing = 0;
    // What refused clients still send is read into this and dropped. One per loop is
    // enough: only this loop's thread reads into it, and nobody looks at the bytes.
    std::array<std::byte, 4096> discard{};
    // Checks every connection's deadline (http::deadline_watch) once a tick: one timer
    // per loop instead of a watchdog coroutine per connection.
    std::unique_ptr<idle_sweeper> sweeper;
};

namespace {

// ---- resolving a request path beneath the root ----

struct opened {
    unique_fd fd;
    struct stat st {};
    int status = 0; // 0: opened; otherwise the HTTP status to answer
};

int status_for_errno(int e) {
    switch (e) {
    case ENOENT:
    case ENOTDIR:
    case ENAMETOOLONG:
        return 404;
    case EXDEV: // openat2 RESOLVE_BENEATH: the path (or a symlink on it) leads out of the root
    case ELOOP:
    case EACCES:
    case EPERM:
        return 403;
    default:
        return 500;
    }
}

// The fallback resolver, for kernels without openat2 (or seccomp profiles that deny
// it): walks `rel` one component at a time from the root's fd, each step an openat()
// with O_NOFOLLOW relative to a directory fd we hold, so the kernel never follows a
// symbolic link or a ".." for us. A directory swapped for a symlink between two steps
// is seen as the link it now is (ENOTDIR/ELOOP), never followed. Symbolic links are
// resolved here, by reading them and walking their target from the directory that holds
// them, with the same rules as openat2's RESOLVE_BENEATH: an absolute target, or a ".."
// that would climb above the root, is 403; more than 40 links (the kernel's MAXSYMLINKS)
// is 403. ".." pops our own stack of directory fds, so it can never lead out of the
// root even if a directory on the way was moved meanwhile. Returns 0 with `out` set, or
// the HTTP status to answer.
int walk_beneath(int root, const std::string& rel, int flags, unique_fd& out) {
    constexpr int max_links = 40;
    std::deque<std::string> pending;
    auto push_front_path = [&pending](std::string_view path) {
        std::vector<std::string> parts;
        std::size_t i = 0;
        while (i <= path.size()) {
            auto next = path.find('/', i);
            if (next == std::string_view::npos) {
                next = path.size();
            }
            parts.emplace_back(path.substr(i, next - i));
            i = next + 1;
        }
        pending.insert(pending.begin(), parts.begin(), parts.end());
    };
    push_front_path(rel);
    std::vector<unique_fd> dirs; // the directories walked into, beneath the root
    auto cur = [&dirs, root] { return dirs.empty() ? root : dirs.back().get(); };
    int links = 0;
    while (!pending.empty()) {
        const std::string comp = std::move(pending.front());
        pending.pop_front();
        if (comp.empty() || comp == ".") {
            continue;
        }
        if (comp == "..") {
            if (dirs.empty()) {
                return 403; // above the root
            }
            dirs.pop_back();
            continue;
        }
        const bool last = pending.empty();
        // An intermediate component must be a directory: O_PATH needs only search
        // permission, as the kernel's own walk does. O_NOFOLLOW|O_DIRECTORY on a symlink
        // fails with ENOTDIR; O_NOFOLLOW on a final symlink fails with ELOOP.
        const int fd =
            last ? ::openat(cur(), comp.c_str(), flags | O_NOFOLLOW)
                 : ::openat(cur(), comp.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            if (last) {
                out.reset(fd);
                return 0;
            }
            dirs.emplace_back(fd);
            continue;
        }
        const int e = errno;
        if (e != ELOOP && e != ENOTDIR) {
            return status_for_errno(e);
        }
        // Perhaps a symbolic link: read it (whatever is there now) and walk its target.
        char target[PATH_MAX];
        const ssize_t n = ::readlinkat(cur(), comp.c_str(), target, sizeof target);
        if (n < 0) {
            return status_for_errno(errno == EINVAL ? ENOTDIR : errno); // not a link
        }
        if (n == 0 || static_cast<std::size_t>(n) == sizeof target) {
            return 404;
        }
        if (target[0] == '/' || ++links > max_links) {
            return 403; // absolute (refused even when it points inside), or a loop
        }
        push_front_path(std::string_view(target, static_cast<std::size_t>(n)));
    }
    // The walk ended on a directory we hold (the root, or a link to "." or ".."): open
    // it for reading through "." (which cannot leave it).
    const int fd = ::openat(cur(), ".", flags | O_DIRECTORY);
    if (fd < 0) {
        return status_for_errno(errno);
    }
    out.reset(fd);
    return 0;
}

// Opens `rel` (no leading '/', no "." or ".." segments; "" is the root itself) so that
// nothing outside the root can be reached, symbolic links included. O_NONBLOCK: opening
// a FIFO for reading would otherwise block the loop until a writer appears.
opened open_beneath(serve_state& s, const std::string& rel) {
    opened out;
    const char* p = rel.empty() ? "." : rel.c_str();
    constexpr int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    if (s.use_openat2.load(std::memory_order_relaxed)) {
        // RESOLVE_BENEATH makes the kernel refuse (EXDEV) any resolution that leaves the
        // directory: "..", absolute symlinks, relative symlinks that climb out. It is
        // race-free, unlike a realpath check followed by open.
        open_how how{};
        how.flags = flags;
        how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
        const long fd = ::syscall(SYS_openat2, s.root.get(), p, &how, sizeof how);
        if (fd >= 0) {
            out.fd.reset(static_cast<int>(fd));
        } else if (errno == ENOSYS) {
            s.use_openat2.store(false, std::memory_order_relaxed);
        } else {
            out.status = status_for_errno(errno);
            return out;
        }
    }
    if (!out.fd) {
        out.status = walk_beneath(s.root.get(), rel, flags, out.fd);
        if (out.status != 0) {
            return out;
        }
    }
    if (::fstat(out.fd.get(), &out.st) != 0) {
        out.status = 500;
        out.fd.reset();
        return out;
    }
    if (!S_ISREG(out.st.st_mode) && !S_ISDIR(out.st.st_mode)) {
        out.status = 403; // devices, FIFOs, sockets are not files to serve
        out.fd.reset();
    }
    return out;
}

// ---- building responses ----

void append_number(std::string& out, std::uint64_t v) {
    char buf[24];
    auto [p, ec] = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, p);
}

// What to send after the head: nothing, the small body in `body`, or file bytes.
struct plan {
    int status = 0;
    bool keep_alive = true;
    bool head_only = false; // HEAD: the head says what GET would send, no body follows
    unique_fd file;
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
};

void start_head(std::string& h, int status) {
    h.clear();
    h += "HTTP/1.1 ";
    append_number(h, static_cast<std::uint64_t>(status));
    h += ' ';
    h += http::reason_phrase(status);
    h += "\r\nServer: zcio\r\nDate: ";
    h += http::date_now();
    h += "\r\n";
}

void end_head(std::string& h, bool keep_alive, bool http10) {
    if (!keep_alive) {
        h += "Connection: close\r\n";
    } else if (http10) {
        h += "Connection: keep-alive\r\n";
    }
    h += "\r\n";
}

// A short text/plain answer ("404 Not Found\n"). `extra` is more header lines.
void simple_response(plan& p, std::string& h, std::string& body, int status, bool keep_alive,
                     bool http10, std::string_view extra = {}) {
    p.status = status;
    p.keep_alive = keep_alive;
    body.clear();
    append_number(body, static_cast<std::uint64_t>(status));
    body += ' ';
    body += http::reason_phrase(status);
    body += '\n';
    start_head(h, status);
    h += "Content-Type: text/plain; charset=utf-8\r\nContent-Length: ";
    append_number(h, body.size());
    h += "\r\n";
    h += extra;
    end_head(h, keep_alive, http10);
}

struct listing_entry {
    std::string name;
    bool is_dir = false;
    bool stat_ok = false;
    std::uint64_t size = 0;
    std::time_t mtime = 0;
    bool operator<(const listing_entry& o) const { return name < o.name; }
};

// "2026-12-01 23:20:05", UTC.
void append_listing_date(std::string& out, std::time_t t) {
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buf[32];
    const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
    out.append(buf, n);
}

// Directory listing: names HTML-escaped and links percent-encoded, with each entry's
// size in bytes and modification time (UTC). Entries are lstat()ed: a symbolic link
// shows its own size and date, never those of what it points to (which may lie
// outside the root). Names starting with '.' are left out unless `dotfiles`.
std::optional<std::string> make_listing(int dir_fd, std::string_view url_path, bool dotfiles) {
    auto dup = sys::dup(dir_fd);
    if (!dup) {
        return std::nullopt;
    }
    DIR* d = ::fdopendir(dup->get());
    if (d == nullptr) {
        return std::nullopt;
    }
    (void)dup->release(); // the DIR owns it now; closedir closes it
    std::vector<listing_entry> entries;
    while (dirent* e = ::readdir(d)) {
        const std::string_view name(e->d_name);
        if (name == "." || name == ".." || (!dotfiles && name.starts_with('.'))) {
            continue;
        }
        listing_entry le;
        le.name = std::string(name);
        struct stat st {};
        if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            le.stat_ok = true;
            le.is_dir = S_ISDIR(st.st_mode);
            le.size = static_cast<std::uint64_t>(st.st_size);
            le.mtime = st.st_mtim.tv_sec;
        } else {
            le.is_dir = e->d_type == DT_DIR; // vanished meanwhile: name only
        }
        entries.push_back(std::move(le));
    }
    ::closedir(d);
    std::sort(entries.begin(), entries.end());
    const std::string title = "Index of " + http::html_escape(url_path);
    std::string out =
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + title +
        "</title></head>\n<body><h1>" + title +
        "</h1>\n<table>\n<tr><th>Name</th><th>Size</th><th>Modified (UTC)</th></tr>\n";
    if (url_path != "/") {
        out += "<tr><td><a href=\"../\">../</a></td><td>-</td><td></td></tr>\n";
    }
    for (const auto& e : entries) {
        const std::string suffix = e.is_dir ? "/" : "";
        out += "<tr><td><a href=\"" + http::html_escape(http::percent_encode_path(e.name)) +
               suffix + "\">" + http::html_escape(e.name) + suffix + "</a></td><td>";
        if (e.stat_ok && !e.is_dir) {
            append_number(out, e.size);
        } else {
            out += '-';
        }
        out += "</td><td>";
        if (e.stat_ok) {
            append_listing_date(out, e.mtime);
        }
        out += "</td></tr>\n";
    }
    out += "</table></body></html>\n";
    return out;
}

// The answer `generate` made, then the connection closes (one request each).
void generated_answer(plan& p, std::string& h, std::string& body, generated_response g) {
    p.status = g.status;
    p.keep_alive = false;
    body = std::move(g.body);
    start_head(h, g.status);
    h += "Content-Type: ";
    h += g.content_type;
    h += "\r\nContent-Length: ";
    append_number(h, body.size());
    h += "\r\n";
    end_head(h, false, false);
}

// Decides the answer to one complete request head. Fills `h` (the response head) and
// `body` (a small body, or empty) and returns the plan; never blocks on the network.
plan plan_response(serve_state& s, const head_parser& req, std::string& h, std::string& body) {
    plan p;
    const bool http10 = req.version_minor() == 0;
    bool keep_alive = req.keep_alive();
    body.clear();
    if (int st = http::check_head(req); st != 0) {
        simple_response(p, h, body, st, false, http10); // 505, or 400 (RFC 9112 §3.2)
        return p;
    }
    const auto method = req.method();
    if (method != HTTP_GET && method != HTTP_HEAD) {
        // A body we will not read would be taken for the next request: close after.
        simple_response(p, h, body, 405, keep_alive && !req.has_body(), http10,
                        "Allow: GET, HEAD\r\n");
        return p;
    }
    p.head_only = method == HTTP_HEAD;
    if (req.has_body()) {
        // GET and HEAD carry no content here; we do not read one (limit: 0 bytes).
        simple_response(p, h, body, 413, false, http10);
        return p;
    }
    if (s.opts.generate) {
        generated_answer(p, h, body, s.opts.generate(req.target()));
        return p;
    }

    // The path: percent-decoded, split and checked (http_request.hpp).
    auto path = http::resolve_target(req.target());
    if (path.status != 0) {
        simple_response(p, h, body, path.status, keep_alive && path.status != 400, http10);
        return p;
    }
    const std::string& rel = path.rel;
    if (!s.opts.dotfiles && http::has_dotfile(rel)) {
        simple_response(p, h, body, 404, keep_alive, http10); // as if it did not exist
        return p;
    }

    opened f = open_beneath(s, rel);
    if (f.status != 0) {
        simple_response(p, h, body, f.status, keep_alive && f.status != 500, http10);
        return p;
    }
    if (S_ISREG(f.st.st_mode) && path.decoded.ends_with('/')) {
        simple_response(p, h, body, 404, keep_alive, http10); // "/file.txt/" is no directory
        return p;
    }
    if (S_ISDIR(f.st.st_mode)) {
        if (!path.decoded.ends_with('/')) {
            // Relative links in the page (and the listing) need the trailing slash.
            const std::string loc = "Location: " + http::redirect_location(path) + "\r\n";
            simple_response(p, h, body, 301, keep_alive, http10, loc);
            return p;
        }
        opened index = open_beneath(s, rel.empty() ? "index.html" : rel + "/index.html");
        if (index.status == 0 && S_ISREG(index.st.st_mode)) {
            f = std::move(index);
        } else if (index.status != 404 && index.status != 0) {
            simple_response(p, h, body, index.status, keep_alive, http10);
            return p;
        } else {
            auto page = s.opts.listing ? make_listing(f.fd.get(), path.decoded, s.opts.dotfiles)
                                       : std::nullopt;
            if (!page) {
                simple_response(p, h, body, 403, keep_alive, http10);
                return p;
            }
            p.status = 200;
            p.keep_alive = keep_alive;
            body = std::move(*page);
            start_head(h, 200);
            h += "Content-Type: text/html; charset=utf-8\r\nContent-Length: ";
            append_number(h, body.size());
            h += "\r\n";
            end_head(h, keep_alive, http10);
            return p;
        }
    }

    // A regular file.
    const auto size = static_cast<std::uint64_t>(f.st.st_size);
    const std::time_t mtime = f.st.st_mtim.tv_sec;
    const std::string etag = http::make_etag(size, f.st.st_mtim.tv_sec, f.st.st_mtim.tv_nsec);
    if (int st = http::evaluate_preconditions(req, etag, mtime, std::time(nullptr)); st == 304) {
        p.status = 304;
        p.keep_alive = keep_alive;
        start_head(h, 304);
        h += "ETag: " + etag + "\r\nLast-Modified: ";
        http::append_date(h, mtime);
        h += "\r\n";
        end_head(h, keep_alive, http10);
        return p;
    } else if (st == 412) {
        simple_response(p, h, body, 412, keep_alive, http10);
        return p;
    }
    http::byte_range range;
    if (auto r = req.find("range")) {
        auto ir = req.find("if-range");
        if (!ir || http::if_range_holds(*ir, etag, mtime)) {
            range = http::parse_range(*r, size);
        }
    }
    if (range.k == http::byte_range::kind::unsatisfiable) {
        std::string extra = "Content-Range: bytes */";
        append_number(extra, size);
        extra += "\r\n";
        simple_response(p, h, body, 416, keep_alive, http10, extra);
        return p;
    }
    p.keep_alive = keep_alive;
    p.offset = 0;
    p.length = size;
    p.status = 200;
    if (range.k == http::byte_range::kind::satisfiable) {
        p.status = 206;
        p.offset = range.first;
        p.length = range.last - range.first + 1;
    }
    start_head(h, p.status);
    h += "Content-Type: ";
    h += http::media_type(rel);
    h += "\r\nContent-Length: ";
    append_number(h, p.length);
    h += "\r\nLast-Modified: ";
    http::append_date(h, mtime);
    h += "\r\nETag: " + etag + "\r\nAccept-Ranges: bytes\r\n";
    if (p.status == 206) {
        h += "Content-Range: bytes ";
        append_number(h, range.first);
        h += '-';
        append_number(h, range.last);
        h += '/';
        append_number(h, size);
        h += "\r\n";
    }
    end_head(h, keep_alive, http10);
    p.file = std::move(f.fd);
    return p;
}

// ---- the connection ----

// Sends all of `data`; `flags` may hold MSG_MORE (more bytes follow at once, so the
// kernel holds back a partial segment instead of pushing the head alone).
auto send_all_op(stream& s, std::string_view data, int flags) {
    int fd = s.fd();
    return io_op<std::size_t>(
        s.handle(), io_direction::write,
        [fd, data, flags, done = std::size_t{0}]() mutable -> result<std::size_t> {
            while (done < data.size()) {
                auto n =
                    sys::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL | flags);
                if (!n) {
                    return n;
                }
                done += *n;
            }
            return done;
        });
}

void log_access(const serve_options& o, const std::string& peer, const head_parser* req, int status,
                std::uint64_t bytes, const char* path, clock::time_point started) {
    if (!o.access_log || !spdlog::should_log(spdlog::level::info)) {
        return;
    }
    const double ms = std::chrono::duration<double, std::milli>(clock::now() - started).count();
    if (req == nullptr) {
        spdlog::info("{} \"-\" {} {} {} {:.3f}ms", peer, status, bytes, path, ms);
        return;
    }
    spdlog::info("{} \"{} {} HTTP/{}.{}\" {} {} {} {:.3f}ms", peer, http_method_str(req->method()),
                 req->target(), req->version_major(), req->version_minor(), status, bytes, path,
                 ms);
}

// Closes after a final answer without losing it: a close() with unread bytes in the
// receive queue sends RST, which can destroy the answer in flight. So shut down our
// side, then read and drop what the client still sends, for a short while.
task<void> lingering_close(serve_loop* L, stream* conn, buffer_lease* buf,
                           http::deadline_watch* w) {
    (void)conn->shutdown_write();
    w->slide = {};
    w->deadline = clock::now() + 2s;
    if (!*buf) {
        auto l = L->heads->lease();
        if (!l) {
            co_return;
        }
        *buf = std::move(*l);
    }
    std::uint64_t dropped = 0;
    while (dropped < (std::uint64_t{1} << 20)) {
        auto n = co_await conn->read_some(buf->data());
        if (!n || *n == 0) {
            co_return;
        }
        dropped += *n;
    }
}

// What a connection is doing, for the access-log line of one that a timeout cuts: the
// cancelled task is destroyed where it waits, so connection() writes that line.
struct phase_info {
    enum class kind { header, idle, sending, closing } k = kind::header;
    clock::time_point since = clock::now();
    int status = 0; // while sending: the answer's status
};

void log_timeout(const std::string& peer, const phase_info& ph) {
    if (!spdlog::should_log(spdlog::level::info)) {
        return;
    }
    const double ms = std::chrono::duration<double, std::milli>(clock::now() - ph.since).count();
    switch (ph.k) {
    case phase_info::kind::header: // nothing was answered; 408 says why (as nginx logs it)
        spdlog::info("{} \"-\" 408 0 - {:.3f}ms header-timeout", peer, ms);
        break;
    case phase_info::kind::idle:
        spdlog::info("{} \"-\" 408 0 - {:.3f}ms idle-timeout", peer, ms);
        break;
    case phase_info::kind::sending:
        spdlog::info("{} \"-\" {} - - {:.3f}ms send-timeout", peer, ph.status, ms);
        break;
    case phase_info::kind::closing: // the answer was logged; the lingering close ended
        break;
    }
}

task<void> serve_connection(serve_loop* L, stream conn, std::string peer, http::deadline_watch* w,
                            phase_info* ph) {
    serve_state& s = *L->state;
    const serve_options& o = s.opts;
    head_parser req(head_parser::kind::request, o.max_headers);
    buffer_lease buf;
    http::head_buffer hb; // hb.have: bytes of the next request(s) at the start of buf
    std::string head;
    std::string body;
    head.reserve(512);
    const std::size_t cap = L->heads->buffer_size();
    bool first = true;

    while (true) {
        // ---- one request head ----
        w->slide = {};
        w->deadline = clock::now() + (first || hb.have > 0 ? o.header_timeout : o.idle_timeout);
        ph->k = first || hb.have > 0 ? phase_info::kind::header : phase_info::kind::idle;
        ph->since = clock::now();
        // Pipelined: the next request may be (partly) here already.
        auto st = hb.start(req, reinterpret_cast<const char*>(buf.data().data()));
        bool too_large = false;
        while (st == head_parser::status::need_more) {
            if (hb.have == cap) {
                too_large = true;
                break;
            }
            if (!conn.handle().ready(io_direction::read)) {
                if (hb.have == 0) {
                    buf.reset(); // wait for the next request holding no buffer
                }
                if (auto r = co_await conn.handle().wait(io_direction::read); !r) {
                    co_return;
                }
            }
            if (!buf) {
                auto l = L->heads->lease();
                if (!l) {
                    spdlog::warn("{}: no buffer for a request head: {}", peer, l.error().message());
                    co_return;
                }
                buf = std::move(*l);
            }
            char* base = reinterpret_cast<char*>(buf.data().data());
            auto n = sys::recv(conn.fd(), base + hb.have, cap - hb.have, 0);
            if (!n) {
                if (would_block(n.error())) {
                    conn.handle().clear_ready(io_direction::read);
                    continue;
                }
                co_return; // reset by the peer, or worse: nothing to answer to
            }
            if (*n == 0) {
                co_return; // the client closed (between requests, or giving up on one)
            }
            if (*n < cap - hb.have && !conn.handle().peer_closed()) {
                // A short read emptied the receive queue: skip the read that would only
                // say EAGAIN and wait for the next edge (as copy() does).
                conn.handle().clear_ready(io_direction::read);
            }
            if (hb.have == 0 && !first) {
                w->deadline = clock::now() + o.header_timeout; // a kept-alive client speaks
                ph->k = phase_info::kind::header;
                ph->since = clock::now();
            }
            st = hb.received(req, base, *n);
        }
        first = false;
        const auto started = clock::now();

        // ---- the answer ----
        plan p;
        const bool parsed = st == head_parser::status::complete;
        if (too_large || st == head_parser::status::too_many_headers) {
            simple_response(p, head, body, 431, false, false);
        } else if (st == head_parser::status::error) {
            spdlog::debug("{}: bad request: {}", peer, req.error_text());
            simple_response(p, head, body, 400, false, false);
        } else {
            p = plan_response(s, req, head, body);
        }
        const bool file_body = p.file.valid() && p.length > 0 && !p.head_only;
        if (!body.empty() && !p.head_only) {
            head += body; // head and a small body in one send
        }
        w->slide = o.send_timeout;
        w->deadline = clock::now() + o.send_timeout;
        ph->k = phase_info::kind::sending;
        ph->status = p.status;
        ph->since = started;
        auto sent = co_await send_all_op(conn, head, file_body ? MSG_MORE : 0);
        if (!sent) {
            log_access(o, peer, parsed ? &req : nullptr, p.status, 0, "-", started);
            co_return;
        }
        std::uint64_t body_bytes = p.head_only ? 0 : body.size();
        const char* path = "-";
        if (file_body) {
            auto file = stream::adopt(*L->loop, std::move(p.file));
            if (!file) {
                spdlog::warn("{}: {}", peer, file.error().message());
                co_return;
            }
            copy_options co;
            co.limit = p.length;
            co.src_offset = static_cast<off_t>(p.offset);
            co.progress = &w->progress;
            co.pools = &L->pools;
            auto r = co_await copy(conn, *file, co);
            body_bytes = r.bytes;
            path = to_string(r.path);
            if (!r.ok() || r.bytes != p.length) {
                // The head promised p.length bytes: a short body can only end the
                // connection (a file that shrank, or a client that went away).
                log_access(o, peer, &req, p.status, body_bytes, path, started);
                spdlog::debug("{}: body ended after {} of {} bytes: {}", peer, r.bytes, p.length,
                              r.ok() ? "the file shrank" : r.error.message());
                co_return;
            }
        }
        log_access(o, peer, parsed ? &req : nullptr, p.status, body_bytes, path, started);

        if (!p.keep_alive) {
            ph->k = phase_info::kind::closing;
            co_await lingering_close(L, &conn, &buf, w);
            co_return;
        }
        // Keep what follows this request (pipelining) at the start of the buffer.
        hb.drop_message(reinterpret_cast<char*>(buf.data().data()));
    }
}

task<void> connection(serve_loop* L, stream conn, endpoint peer, connection_slot slot) {
    http::deadline_watch w; // in this frame: leaves the sweeper when the frame goes
    L->sweeper->add(w);
    std::string peer_text = peer.to_string();
    phase_info ph;
    auto r = co_await with_cancel(
        *L->loop, serve_connection(L, std::move(conn), peer_text, &w, &ph), w.cancel);
    if (!r && w.fired) {
        log_timeout(peer_text, ph);
    }
    slot.release(); // before the frame goes: the count is the process's
}

constexpr std::string_view busy_response = "HTTP/1.1 503 Service Unavailable\r\n"
                                           "Server: zcio\r\n"
                                           "Content-Type: text/plain; charset=utf-8\r\n"
                                           "Content-Length: 24\r\n"
                                           "Connection: close\r\n\r\n"
                                           "503 Service Unavailable\n";

// How a refusal ends: like lingering_close, but on a smaller budget, since the client
// was never admitted.
constexpr std::size_t max_refusing = 64;
constexpr auto refuse_linger = 1s;
constexpr std::uint64_t refuse_drain_bytes = 64 * 1024;

task<void> drain_refused(serve_loop* L, stream* conn) {
    (void)conn->shutdown_write();
    std::uint64_t dropped = 0;
    while (dropped < refuse_drain_bytes) {
        auto n = co_await conn->read_some(L->discard);
        if (!n || *n == 0) {
            co_return;
        }
        dropped += *n;
    }
}

// Answers 503 to a connection beyond --max-connections and closes it the way every
// other final answer closes: shut down writing, then read and drop what the client
// sends (its request, typically) for a short while, so the close does not turn into a
// reset that destroys the 503 before the client has read it.
task<void> refuse(serve_loop* L, stream conn) {
    http::deadline_watch w;
    w.deadline = clock::now() + refuse_linger;
    L->sweeper->add(w);
    (void)co_await with_cancel(*L->loop, drain_refused(L, &conn), w.cancel);
    --L->refusing;
}

// A connection beyond --max-connections gets a 503 and a graceful close.
void refuse_busy(serve_loop* L, accepted a) {
    if (!L->state->opts.refuse_with_503) {
        return; // `a` goes out of scope: closed at once
    }
    // A fresh socket's send buffer is empty: one non-blocking send fits.
    (void)sys::send(a.conn.fd(), busy_response.data(), busy_response.size(), MSG_NOSIGNAL);
    spdlog::warn("{}: refused: --max-connections {} reached", a.peer.to_string(),
                 L->state->active.max());
    if (L->refusing < max_refusing) {
        ++L->refusing;
        L->loop->spawn(refuse(L, std::move(a.conn)));
    }
    // Otherwise `a` goes out of scope: closed at once (a client that already sent its
    // request may then see a reset instead of the 503).
}

void set_up_accepting(serve_loop* L) {
    L->accepting.limit = &L->state->active;
    L->accepting.refused = [L](accepted a) { refuse_busy(L, std::move(a)); };
    L->accepting.failed = [](const std::error_code& e) {
        spdlog::error("accept: {}", e.message());
    };
}

} // namespace

namespace {
// The sweep's tick follows the shortest timeout (http::sweep_tick_for); the fixed
// lingers of a closing or refused connection (1-2 s) are never shorter than a tick.
clock::duration sweep_tick(const serve_options& o) {
    const auto shortest = std::min({o.header_timeout, o.idle_timeout, o.send_timeout});
    return http::sweep_tick_for(std::chrono::duration_cast<clock::duration>(shortest));
}
} // namespace

http_server::http_server(serve_options opts) : state_(std::make_unique<serve_state>()) {
    state_->opts = std::move(opts);
    if (!state_->opts.generate) {
        auto root = sys::open(state_->opts.root.c_str(), O_PATH | O_DIRECTORY);
        if (!root) {
            throw runtime_failure("cannot serve \"" + state_->opts.root +
                                  "\": " + root.error().message());
        }
        state_->root = std::move(*root);
    }
    state_->active.set_max(state_->opts.max_connections);
    if (const char* e = std::getenv("ZCIO_SERVE_NO_OPENAT2"); e != nullptr && *e == '1') {
        state_->use_openat2 = false;
    }
    group_ = std::make_unique<loop_group>(state_->opts.threads);
    for (std::size_t i = 0; i < group_->size(); ++i) {
        auto l = std::make_unique<serve_loop>();
        l->index = i;
        l->loop = &group_->loop(i);
        l->state = state_.get();
        buffer_pool_options bo;
        bo.buffer_size = state_->opts.max_header_size;
        bo.max_idle = 256;
        l->heads = std::make_unique<buffer_pool>(bo);
        l->sweeper = std::make_unique<idle_sweeper>(*l->loop, sweep_tick(state_->opts));
        set_up_accepting(l.get());
        loops_.push_back(std::move(l));
    }
}

http_server::~http_server() {
    stop();
    // Close the listeners while their loops exist, then destroy the loops (and the
    // tasks suspended on them) before the contexts those tasks point into.
    for (auto& l : loops_) {
        for (auto& listener : l->listeners) {
            listener.close();
        }
    }
    group_.reset();
}

std::size_t http_server::threads() const noexcept {
    return loops_.size();
}

namespace {

// The port the kernel chose for the first address is taken on another address: worth
// another try with a new port, as no port was asked for.
struct shared_port_taken : runtime_failure {
    using runtime_failure::runtime_failure;
};

// How many times start() lets the kernel pick again. A port free on ::1 is taken on
// 127.0.0.1 (or the reverse) by a socket of another program now and then; sixteen
// misses in a row would mean something else is wrong.
constexpr int port_pick_attempts = 16;

} // namespace

std::vector<endpoint> http_server::bind_listeners(std::size_t first) {
    const auto& wanted = state_->opts.listen;
    std::vector<endpoint> bound(wanted.size());
    std::uint16_t port = 0;
    for (std::size_t i = 0; i < wanted.size(); ++i) {
        const std::size_t at = (first + i) % wanted.size();
        endpoint ep = wanted[at];
        const bool shared = ep.is_ip() && ep.port() == 0 && port != 0;
        if (shared) {
            ep.set_port(port);
        }
        try {
            if (!state_->opts.share_port) {
                ensure_port_free(ep);
            }
        } catch (const runtime_failure& e) {
            if (shared) {
                throw shared_port_taken(e.what());
            }
            throw;
        }
        for (auto& l : loops_) {
            if (l->index > 0 && !ep.is_ip()) {
                break; // a Unix socket cannot be shared between loops
            }
            listen_options lo;
            lo.reuse_port = ep.is_ip();
            auto b = listener::bind(*l->loop, ep, lo);
            if (!b) {
                const std::string what =
                    "cannot listen on " + ep.to_string() + ": " + b.error().message();
                if (shared && b.error() == std::errc::address_in_use) {
                    throw shared_port_taken(what);
                }
                throw runtime_failure(what);
            }
            l->listeners.push_back(std::move(*b));
            ep = l->listeners.back().local_endpoint();
        }
        if (ep.is_ip()) {
            port = ep.port();
        }
        bound[at] = ep;
    }
    return bound;
}

std::vector<endpoint> http_server::start() {
    // Bind on every loop before any thread runs, so a bad address fails cleanly. Port 0
    // is resolved by the first bind; every other bind uses the port it got (SO_REUSEPORT
    // between loops; another address family shares the number, not the socket).
    std::vector<endpoint> bound;
    for (int attempt = 1;; ++attempt) {
        try {
            // Each attempt lets another address pick: the kernel knows which ports
            // are taken on the address it binds, not on the others (and prefers the
            // same odd ports for every bind to port 0, so asking again the same way
            // tends to get the same answer).
            bound = bind_listeners(static_cast<std::size_t>(attempt - 1));
            break;
        } catch (const shared_port_taken&) {
            for (auto& l : loops_) {
                l->listeners.clear(); // nothing accepts on them yet
            }
            if (attempt == port_pick_attempts) {
                throw;
            }
        }
    }
    for (auto& l : loops_) {
        for (auto& listener : l->listeners) {
            l->loop->spawn(accept_loop(
                &listener, &l->accepting, [L = l.get()](accepted a, connection_slot slot) {
                    L->loop->spawn(connection(L, std::move(a.conn), a.peer, std::move(slot)));
                }));
        }
    }
    group_->start([](std::size_t i, std::error_code ec) {
        spdlog::critical("event loop {} failed: {}", i, ec.message());
    });
    started_ = true;
    return bound;
}

void http_server::stop() {
    if (!started_) {
        return;
    }
    started_ = false;
    group_->stop();
    group_->join();
}

} // namespace zcio::cli
