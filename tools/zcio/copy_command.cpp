// `zcio copy SRC DST`: a socat-like one-way copy on copy().
#include "cli_util.hpp"
#include "commands.hpp"

#include <zcio/zcio.hpp>

#include <CLI/CLI.hpp>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

namespace zcio::cli {

namespace {

using namespace std::chrono_literals;

enum class end_kind { stdio, file, tcp, tcp_listen, unix_connect, unix_listen };

struct end_spec {
    end_kind kind = end_kind::stdio;
    std::string text;
    std::string path; // files
    bool append = false;
    endpoint_list address; // sockets: every address of a name, for tcp:
    unique_fd source;      // a file source, opened and checked before the destination
};

// Opens a file source and checks that it can be read, so that a directory, a file
// without read permission or a missing one is refused before the destination is
// created or truncated. The descriptor is kept for the copy: a FIFO opened twice
// would make its writer see a reader come and go.
unique_fd open_source_file(const end_spec& e) {
    auto fd = sys::open(e.path.c_str(), O_RDONLY);
    if (!fd) {
        throw runtime_failure("source \"" + e.text + "\": " + fd.error().message());
    }
    struct stat st {};
    if (::fstat(fd->get(), &st) != 0) {
        throw runtime_failure("source \"" + e.text + "\": fstat: " + std::strerror(errno));
    }
    // open(2) lets O_RDONLY through for a directory; only read(2) says EISDIR.
    if (S_ISDIR(st.st_mode)) {
        throw runtime_failure("source \"" + e.text + "\": is a directory (copy reads files)");
    }
    return std::move(*fd);
}

// Parses one endpoint completely (addresses resolved) without opening anything.
end_spec parse_end(const std::string& text, bool is_source) {
    end_spec e;
    e.text = text;
    auto rest_after = [&](std::string_view prefix) { return text.substr(prefix.size()); };
    if (text == "-") {
        e.kind = end_kind::stdio;
    } else if (text.starts_with("file:")) {
        e.kind = end_kind::file;
        e.path = rest_after("file:");
        if (e.path.ends_with(",append")) {
            if (is_source) {
                throw usage_error("source \"" + text +
                                  "\": ,append only makes sense for a destination");
            }
            e.append = true;
            e.path.resize(e.path.size() - std::string_view(",append").size());
        }
        if (e.path.empty()) {
            throw usage_error("endpoint \"" + text + "\": empty file path");
        }
    } else if (text.starts_with("tcp-listen:")) {
        e.kind = end_kind::tcp_listen;
        e.address = parse_listen_endpoint(rest_after("tcp-listen:"));
    } else if (text.starts_with("tcp:")) {
        e.kind = end_kind::tcp;
        e.address = parse_endpoint_list(rest_after("tcp:"));
    } else if (text.starts_with("unix-listen:")) {
        e.kind = end_kind::unix_listen;
        e.address = parse_endpoint("unix:" + rest_after("unix-listen:"));
    } else if (text.starts_with("unix:")) {
        e.kind = end_kind::unix_connect;
        e.address = parse_endpoint(text);
    } else {
        throw usage_error("endpoint \"" + text +
                          "\": unknown form (use -, file:PATH, tcp:HOST:PORT, "
                          "tcp-listen:HOST:PORT, unix:PATH or unix-listen:PATH)");
    }
    if ((e.kind == end_kind::tcp || e.kind == end_kind::tcp_listen) && !e.address.is_ip()) {
        throw usage_error("endpoint \"" + text + "\": expected HOST:PORT after tcp:");
    }
    if (e.kind == end_kind::tcp && e.address.port() == 0) {
        throw usage_error("endpoint \"" + text + "\": cannot connect to port 0");
    }
    return e;
}

// Restores stdin/stdout flags we changed (O_NONBLOCK is shared with the shell).
struct stdio_flags_guard {
    int fd;
    int flags;
    ~stdio_flags_guard() {
        if (flags >= 0) {
            ::fcntl(fd, F_SETFL, flags);
        }
    }
};

// "zcio copy: listening on ADDR", the wording of proxy, serve and udp-echo, so a script
// that asked for port 0 can read the port the kernel chose.
void announce_listening(const endpoint& at) {
    std::fprintf(stderr, "zcio copy: listening on %s\n", at.to_string().c_str());
}

// Opens one end. `e` lives in the caller's frame; a file source is already open.
// A listener says where it listens when `announce` is set.
task<result<stream>> open_end(event_loop& loop, end_spec* e, bool is_source, bool announce) {
    switch (e->kind) {
    case end_kind::stdio: {
        auto fd = sys::dup(is_source ? STDIN_FILENO : STDOUT_FILENO);
        if (!fd) {
            co_return fail(fd.error());
        }
        co_return stream::adopt(loop, std::move(*fd));
    }
    case end_kind::file: {
        if (is_source) {
            co_return stream::adopt(loop, std::move(e->source));
        }
        int flags = O_WRONLY | O_CREAT | (e->append ? O_APPEND : O_TRUNC);
        auto fd = sys::open(e->path.c_str(), flags, 0644);
        if (!fd) {
            co_return fail(name_op("open", fd.error()));
        }
        co_return stream::adopt(loop, std::move(*fd));
    }
    case end_kind::tcp:
    case end_kind::unix_connect:
        co_return co_await stream::connect(loop, e->address, 10s);
    case end_kind::tcp_listen:
    case end_kind::unix_listen: {
        auto l = listener::bind(loop, e->address.front());
        if (!l) {
            co_return fail(l.error());
        }
        if (announce) {
            announce_listening(l->local_endpoint());
        }
        auto a = co_await l->accept();
        if (!a) {
            co_return fail(a.error());
        }
        co_return std::move(a->conn);
    }
    }
    co_return fail_op("open", EINVAL);
}

std::optional<std::uint64_t> known_size(const end_spec& src) {
    if (src.kind != end_kind::file) {
        return std::nullopt;
    }
    struct stat st {};
    if (::fstat(src.source.get(), &st) != 0 || !S_ISREG(st.st_mode)) {
        return std::nullopt;
    }
    return static_cast<std::uint64_t>(st.st_size);
}

void print_progress(std::uint64_t done, std::uint64_t total, double secs) {
    const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
    const double pct =
        total > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100;
    const double eta = rate > 0 ? static_cast<double>(total - std::min(done, total)) / rate : 0;
    std::fprintf(stderr, "\r%12s / %-12s %5.1f%%  %10s/s  ETA %4.0fs ",
                 human_bytes(static_cast<double>(done)).c_str(),
                 human_bytes(static_cast<double>(total)).c_str(), pct, human_bytes(rate).c_str(),
                 eta);
}

task<void> progress_bar(event_loop* loop, const std::uint64_t* done, std::uint64_t total,
                        clock::time_point start, const bool* finished) {
    while (!*finished) {
        print_progress(*done, total, std::chrono::duration<double>(clock::now() - start).count());
        co_await sleep_for(*loop, 200ms);
    }
}

struct copy_outcome {
    std::string failure; // empty on success
    copy_result result;
    double seconds = 0;
    bool reader_gone = false; // standard output is a pipe or socket whose reader closed it
};

// A listener announces its address with --verbose, and always when the kernel picks the
// port (tcp-listen:HOST:0): without the line nobody could connect.
bool announces(const end_spec& e, bool verbose) {
    const bool listens = e.kind == end_kind::tcp_listen || e.kind == end_kind::unix_listen;
    return listens && (verbose || (e.address.is_ip() && e.address.port() == 0));
}

task<copy_outcome> run(event_loop* loop, end_spec* src_spec, end_spec* dst_spec, copy_options opts,
                       std::optional<std::uint64_t> total, bool show_progress, bool verbose) {
    copy_outcome out;
    auto src = co_await open_end(*loop, src_spec, true, announces(*src_spec, verbose));
    if (!src) {
        out.failure = "source \"" + src_spec->text + "\": " + src.error().message();
        co_return out;
    }
    auto dst = co_await open_end(*loop, dst_spec, false, announces(*dst_spec, verbose));
    if (!dst) {
        out.failure = "destination \"" + dst_spec->text + "\": " + dst.error().message();
        co_return out;
    }
    std::uint64_t moved = 0;
    bool finished = false;
    opts.progress = &moved;
    const auto start = clock::now();
    if (show_progress && total) {
        loop->spawn(progress_bar(loop, &moved, *total, start, &finished));
    }
    out.result = co_await copy(*dst, *src, opts);
    finished = true;
    out.seconds = std::chrono::duration<double>(clock::now() - start).count();
    if (show_progress && total) {
        print_progress(moved, *total, out.seconds);
        std::fputc('\n', stderr);
    }
    if (dst->kind() == sys::fd_kind::socket) {
        (void)dst->shutdown_write(); // the peer sees end of stream
    }
    out.reader_gone =
        dst_spec->kind == end_kind::stdio && out.result.error == std::errc::broken_pipe;
    if (out.reader_gone) {
        // cat's "write error: Broken pipe", for a caller that ignores SIGPIPE.
        out.failure = "destination \"-\": write error after " + std::to_string(out.result.bytes) +
                      " bytes: the reader closed it (" + out.result.error.message() + ")";
    } else if (!out.result.ok()) {
        out.failure = "copy failed after " + std::to_string(out.result.bytes) +
                      " bytes: " + out.result.error.message();
    }
    co_return out;
}

// Whether SIGPIPE is at its default, before the first event loop sets it to ignored
// (splice and sendfile have no MSG_NOSIGNAL).
bool sigpipe_is_default() {
    struct sigaction now {};
    return ::sigaction(SIGPIPE, nullptr, &now) == 0 && now.sa_handler == SIG_DFL;
}

// Ends the process by SIGPIPE, as cat(1) ends when the reader of its output goes away
// (`zcio copy file:/dev/urandom - | head -c 100`): no message, and a shell reports 141.
// Returns only if the signal could not be delivered (then 128 + SIGPIPE, the same code).
int die_of_sigpipe() {
    std::fflush(nullptr);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    ::sigaction(SIGPIPE, &dfl, nullptr);
    sigset_t pipe_only;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    ::pthread_sigmask(SIG_UNBLOCK, &pipe_only, nullptr);
    ::raise(SIGPIPE);
    return 128 + SIGPIPE;
}

// Runs the copy with standard input and output switched back to their own flags at the
// end (O_NONBLOCK is shared with the shell), whatever the outcome.
copy_outcome copy_with_stdio_restored(const copy_command_options& o, end_spec* src, end_spec* dst) {
    stdio_flags_guard in_guard{STDIN_FILENO,
                               src->kind == end_kind::stdio ? ::fcntl(STDIN_FILENO, F_GETFL) : -1};
    stdio_flags_guard out_guard{
        STDOUT_FILENO, dst->kind == end_kind::stdio ? ::fcntl(STDOUT_FILENO, F_GETFL) : -1};

    copy_options opts;
    opts.limit = o.limit;
    opts.path = o.engine;
    const auto size = known_size(*src);
    const auto total = o.limit && size ? std::optional(std::min(*o.limit, *size)) : size;
    const bool show_progress = ::isatty(STDERR_FILENO) == 1;

    event_loop loop;
    return loop.block_on(run(&loop, src, dst, opts, total, show_progress, o.verbose));
}

} // namespace

int run_copy_command(const copy_command_options& o) {
    // Parse and resolve both ends before creating, truncating or connecting anything.
    end_spec src = parse_end(o.source, true);
    end_spec dst = parse_end(o.destination, false);
    if (src.kind == end_kind::file && dst.kind == end_kind::file && !dst.append) {
        std::error_code ec;
        if (std::filesystem::exists(dst.path) &&
            std::filesystem::equivalent(src.path, dst.path, ec)) {
            throw usage_error("source and destination are the same file: \"" + src.path + "\"");
        }
    }
    // Then the source file, still before the destination is touched. (After both are
    // parsed: a FIFO's open waits for a writer, and a usage error must not wait.)
    if (src.kind == end_kind::file) {
        src.source = open_source_file(src);
    }
    const bool sigpipe_default = sigpipe_is_default();
    copy_outcome out = copy_with_stdio_restored(o, &src, &dst);
    // The reader of standard output went away: like cat, die of SIGPIPE quietly, or
    // report the write error (exit 1) when whoever started us chose to ignore SIGPIPE.
    if (out.reader_gone && sigpipe_default) {
        return die_of_sigpipe();
    }
    if (!out.failure.empty()) {
        throw runtime_failure(out.failure);
    }
    if (o.verbose) {
        const double rate =
            out.seconds > 0 ? static_cast<double>(out.result.bytes) / out.seconds : 0;
        std::fprintf(stderr, "zcio copy: %llu bytes (%s) via %s in %.3f s, %s/s\n",
                     static_cast<unsigned long long>(out.result.bytes),
                     human_bytes(static_cast<double>(out.result.bytes)).c_str(),
                     to_string(out.result.path), out.seconds, human_bytes(rate).c_str());
    }
    return 0;
}

namespace {

// What `zcio copy` reads from its command line, as typed.
struct copy_flags {
    copy_command_options co;
    std::string limit;
    std::string engine = "auto";
};

int run_copy_flags(copy_flags& f) {
    if (!f.limit.empty()) {
        f.co.limit = parse_size(f.limit, "--limit");
    }
    const auto engine = parse_copy_path(f.engine);
    if (!engine) {
        throw usage_error("--engine: \"" + f.engine +
                          "\" is not an engine (auto, splice, sendfile, copy_file_range, buffer)");
    }
    f.co.engine = *engine;
    return run_copy_command(f.co);
}

} // namespace

subcommand add_copy_command(CLI::App& app) {
    auto f = std::make_shared<copy_flags>();
    auto* cmd = app.add_subcommand("copy", "One-way copy from SRC to DST, like socat, by the "
                                           "cheapest kernel path");
    cmd->add_option("SRC", f->co.source,
                    "- (stdin), file:PATH, tcp:HOST:PORT, tcp-listen:HOST:PORT, unix:PATH, "
                    "unix-listen:PATH")
        ->required();
    cmd->add_option("DST", f->co.destination,
                    "- (stdout), file:PATH (created or truncated; a sparse source keeps "
                    "its holes), file:PATH,append, "
                    "tcp:HOST:PORT, tcp-listen:HOST:PORT, unix:PATH, unix-listen:PATH")
        ->required();
    cmd->add_option("--limit", f->limit, "Copy at most this many bytes (e.g. 1M)");
    cmd->add_option("--engine", f->engine,
                    "auto, splice, sendfile, copy_file_range or buffer (forcing one still falls "
                    "back when the kernel refuses)")
        ->capture_default_str();
    cmd->add_flag("-v,--verbose", f->co.verbose,
                  "Print bytes, path and rate on stderr at the end, and where a listening "
                  "end listens (always printed for port 0)");
    return {cmd, [f] { return run_copy_flags(*f); }};
}

} // namespace zcio::cli
