// `zcio get URL -o FILE`: an HTTP/1.1 download whose body is spliced from the socket
// into the file (the socket → file case of copy()).
#include "cli_util.hpp"
#include "commands.hpp"
#include "http_head.hpp"
#include "http_util.hpp"

#include <zcio/zcio.hpp>

#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>

#include <fcntl.h>
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
    std::string connect_timeout = "10s";
    std::string timeout = "60s";
    std::size_t max_redirects = 5;
};

struct get_params {
    std::string output;              // "-" for standard output
    clock::duration connect_timeout; // per connection attempt
    clock::duration timeout;         // longest time without a byte received
    std::size_t max_redirects;
};

// Everything the download reports, kept outside the coroutine so that it survives a
// cancellation (watchdog or signal), which destroys the coroutine where it waits.
struct get_state {
    std::string part;          // FILE.part, once created (to remove on failure)
    bool part_created = false; //
    bool in_body = false;      // the progress bar draws from here on
    bool finished = false;     // stops the progress bar
    std::optional<std::uint64_t> total;
    std::string failure; // one line; empty on success
    int status = 0;
    std::string reason;
    std::string path = "buffer"; // what moved the body
    std::vector<std::string> hops;
    clock::time_point body_started{};
    double seconds = 0;
    int signal = 0;
};

constexpr std::size_t head_buffer_size = std::size_t{64} << 10;

std::string default_output(const http::url& u) {
    std::string_view path = u.target;
    if (auto q = path.find('?'); q != std::string_view::npos) {
        path = path.substr(0, q);
    }
    auto name = path.substr(path.rfind('/') + 1);
    auto decoded = http::percent_decode(name);
    if (!decoded || decoded->empty() || *decoded == "." || *decoded == ".." ||
        decoded->find('/') != std::string::npos) {
        return "index.html";
    }
    return *decoded;
}

bool is_redirect(int status) {
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

// The output: FILE.part (renamed by the caller on success) or a dup of standard output.
result<stream> open_output(event_loop& loop, get_state* st, const get_params& prm) {
    if (prm.output == "-") {
        auto fd = sys::dup(STDOUT_FILENO);
        if (!fd) {
            return fail(fd.error());
        }
        return stream::adopt(loop, std::move(*fd));
    }
    st->part = prm.output + ".part";
    auto fd = sys::open(st->part.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0666);
    if (!fd) {
        return fail(name_op("open", fd.error()));
    }
    st->part_created = true;
    return stream::adopt(loop, std::move(*fd));
}

task<void> download(event_loop* loop, get_state* st, http::url u, get_params prm,
                    http::watch_state* w) {
    std::vector<char> buf(head_buffer_size);
    head_parser parser(head_parser::kind::response, 256);
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
        const std::string request = "GET " + u.target + " HTTP/1.1\r\nHost: " + u.authority() +
                                    "\r\nUser-Agent: zcio/" ZCIO_VERSION
                                    "\r\nAccept: */*\r\nConnection: close\r\n\r\n";
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
            u = std::move(*next);
            continue; // conn closes here
        }
        if (st->status < 200 || st->status > 299) {
            st->failure =
                "HTTP " + std::to_string(st->status) + " " + st->reason + " from " + u.text();
            co_return;
        }

        // ---- the body ----
        auto out = open_output(*loop, st, prm);
        if (!out) {
            st->failure = "cannot write \"" + (st->part.empty() ? prm.output : st->part) +
                          "\": " + out.error().message();
            co_return;
        }
        w->progress = 0;
        st->in_body = true;
        st->body_started = clock::now();
        const bool no_body = st->status == 204 || st->status == 205;
        if (parser.chunked()) {
            // Chunked: decoded by http-parser on the buffered path. Pieces are views into
            // buf, written out before buf is read into again.
            st->path = "buffer (chunked)";
            while (true) {
                for (auto piece : parser.body_pieces()) {
                    if (auto r = co_await out->write_all(std::as_bytes(std::span(piece))); !r) {
                        st->failure = "writing \"" + st->part + "\": " + r.error().message();
                        co_return;
                    }
                    w->progress += piece.size();
                }
                parser.body_pieces().clear();
                if (status == head_parser::status::complete) {
                    break;
                }
                if (status != head_parser::status::need_more) {
                    st->failure = "bad chunked body from " + u.text() + ": " + parser.error_text();
                    co_return;
                }
                auto n = co_await conn->read_some(std::as_writable_bytes(std::span(buf)));
                if (!n) {
                    st->failure = "download from " + u.text() + " failed after " +
                                  std::to_string(w->progress) + " bytes: " + n.error().message();
                    co_return;
                }
                if (*n == 0) {
                    st->failure = "short body from " + u.text() +
                                  ": the connection closed in "
                                  "the middle of the chunked body after " +
                                  std::to_string(w->progress) + " bytes";
                    co_return;
                }
                std::size_t used = 0;
                status = parser.feed(buf.data(), *n, &used);
            }
        } else if (!no_body) {
            // Length-delimited (or until the end of the stream): what came with the head
            // is written first, the rest moves socket → file by copy() (splice through
            // a pooled pipe; no byte passes through this process).
            st->total = parser.content_length();
            std::uint64_t extra = hb.have - hb.head_len;
            if (st->total) {
                extra = std::min<std::uint64_t>(extra, *st->total);
            }
            if (extra > 0) {
                std::span<const char> first(buf.data() + hb.head_len, extra);
                if (auto r = co_await out->write_all(std::as_bytes(first)); !r) {
                    st->failure = "writing \"" + st->part + "\": " + r.error().message();
                    co_return;
                }
                w->progress += extra;
            }
            if (!st->total || *st->total > extra) {
                copy_options co;
                if (st->total) {
                    co.limit = *st->total - extra;
                }
                co.progress = &w->progress;
                // 512 KiB pipes rather than the pool's default 1 MiB: in interleaved
                // 1 GiB downloads from nginx (docs/BENCHMARKS.md, "HTTP file
                // transfer"), 1 MiB pipes had runs up to 4x the median CPU (all of it
                // in the pipe → page cache memcpy of ext4's buffered write) and a
                // higher median in two of three batches; 512 KiB pipes did not.
                transfer_pools pools{
                    pipe_pool(pipe_pool_options{.pipe_size = std::size_t{512} << 10}),
                    buffer_pool()};
                co.pools = &pools;
                auto r = co_await copy(*out, *conn, co);
                st->path = to_string(r.path);
                if (!r.ok()) {
                    st->failure = "download from " + u.text() + " failed after " +
                                  std::to_string(w->progress) + " bytes: " + r.error.message();
                    co_return;
                }
                if (st->total && w->progress < *st->total) {
                    st->failure = "short body from " + u.text() + ": got " +
                                  std::to_string(w->progress) + " of " +
                                  std::to_string(*st->total) +
                                  " bytes before the server closed the connection";
                    co_return;
                }
            }
        }
        st->seconds = std::chrono::duration<double>(clock::now() - st->body_started).count();
        co_return;
    }
}

task<void> watch_signals(event_loop* loop, get_state* st, http::watch_state* w) {
    std::vector<int> signals{SIGINT, SIGTERM}; // not inline: g++ 12 rejects a braced list here
    auto sig = co_await wait_signal(*loop, std::move(signals));
    if (sig) {
        st->signal = *sig;
        w->cancel.cancel();
    }
}

task<result<void>> cancellable_download(event_loop* loop, get_state* st, http::url u,
                                        get_params prm, http::watch_state* w) {
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

task<void> progress_bar(event_loop* loop, get_state* st, std::shared_ptr<http::watch_state> w) {
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
    int flags;
    ~stdout_flags_guard() {
        if (flags >= 0) {
            ::fcntl(STDOUT_FILENO, F_SETFL, flags);
        }
    }
};

int run_get(const get_flags& f) {
    auto u = http::parse_url(f.url);
    if (!u) {
        throw usage_error(u.error().message);
    }
    get_params prm;
    prm.output = f.output.empty() ? default_output(*u) : f.output;
    prm.connect_timeout = std::chrono::duration_cast<clock::duration>(
        parse_duration(f.connect_timeout, "--connect-timeout"));
    prm.timeout =
        std::chrono::duration_cast<clock::duration>(parse_duration(f.timeout, "--timeout"));
    prm.max_redirects = f.max_redirects;
    if (prm.connect_timeout.count() == 0 || prm.timeout.count() == 0) {
        throw usage_error("--connect-timeout and --timeout must be more than 0");
    }
    const bool to_stdout = prm.output == "-";
    stdout_flags_guard out_guard{to_stdout ? ::fcntl(STDOUT_FILENO, F_GETFL) : -1};

    // SIGINT/SIGTERM end the download through the loop, so FILE.part is removed.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &mask, nullptr);

    get_state st;
    auto w = std::make_shared<http::watch_state>();
    const bool bar = ::isatty(STDERR_FILENO) == 1;
    {
        event_loop loop;
        loop.spawn(http::watchdog(&loop, w));
        loop.spawn(watch_signals(&loop, &st, w.get()));
        if (bar) {
            loop.spawn(progress_bar(&loop, &st, w));
        }
        auto r = loop.block_on(cancellable_download(&loop, &st, *u, prm, w.get()));
        st.finished = true;
        w->done = true;
        if (!r && st.failure.empty()) {
            if (st.signal != 0) {
                st.failure =
                    std::string("interrupted by ") + (st.signal == SIGINT ? "SIGINT" : "SIGTERM");
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

    if (st.failure.empty() && st.part_created &&
        std::rename(st.part.c_str(), prm.output.c_str()) != 0) {
        st.failure =
            "cannot rename \"" + st.part + "\" to \"" + prm.output + "\": " + std::strerror(errno);
    }
    if (!st.failure.empty()) {
        if (st.part_created) {
            ::unlink(st.part.c_str());
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
        const double rate = st.seconds > 0 ? static_cast<double>(w->progress) / st.seconds : 0;
        std::fprintf(stderr, "zcio get: %d %s, %llu bytes (%s) to %s via %s in %.3f s, %s/s\n",
                     st.status, st.reason.c_str(), static_cast<unsigned long long>(w->progress),
                     human_bytes(static_cast<double>(w->progress)).c_str(),
                     to_stdout ? "standard output" : prm.output.c_str(), st.path.c_str(),
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
                    "File to write (via FILE.part, renamed when complete); - for standard "
                    "output; default: the last segment of the URL path");
    cmd->add_flag("-v,--verbose", f->verbose,
                  "Print redirects, and the status, bytes, path and rate at the end");
    cmd->add_option("--connect-timeout", f->connect_timeout, "Give up connecting after this long")
        ->capture_default_str();
    cmd->add_option("--timeout", f->timeout,
                    "Give up when no byte arrives for this long (e.g. 30s)")
        ->capture_default_str();
    cmd->add_option("--max-redirects", f->max_redirects, "Redirects to follow at most")
        ->capture_default_str()
        ->check(CLI::Range(0, 20));
    return {cmd, [f] { return run_get(*f); }};
}

} // namespace zcio::cli
