// `zcio copy SRC DST`: a socat-like one-way copy on copy().
#include "cli_util.hpp"
#include "commands.hpp"

#include <zcio/zcio.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
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
};

// Parses one endpoint completely (addresses resolved) without creating anything.
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
    if (is_source && e.kind == end_kind::file) {
        struct stat st {};
        if (::stat(e.path.c_str(), &st) != 0) {
            throw runtime_failure("source \"" + text + "\": " + std::strerror(errno));
        }
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

task<result<stream>> open_end(event_loop& loop, end_spec e, bool is_source) {
    switch (e.kind) {
    case end_kind::stdio: {
        auto fd = sys::dup(is_source ? STDIN_FILENO : STDOUT_FILENO);
        if (!fd) {
            co_return fail(fd.error());
        }
        co_return stream::adopt(loop, std::move(*fd));
    }
    case end_kind::file: {
        int flags = is_source ? O_RDONLY : (O_WRONLY | O_CREAT | (e.append ? O_APPEND : O_TRUNC));
        auto fd = sys::open(e.path.c_str(), flags, 0644);
        if (!fd) {
            co_return fail(name_op("open", fd.error()));
        }
        co_return stream::adopt(loop, std::move(*fd));
    }
    case end_kind::tcp:
    case end_kind::unix_connect:
        co_return co_await stream::connect(loop, e.address, 10s);
    case end_kind::tcp_listen:
    case end_kind::unix_listen: {
        auto l = tcp_listener::bind(loop, e.address.front());
        if (!l) {
            co_return fail(l.error());
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
    if (::stat(src.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
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
};

task<copy_outcome> run(event_loop* loop, end_spec src_spec, end_spec dst_spec, copy_options opts,
                       std::optional<std::uint64_t> total, bool show_progress) {
    copy_outcome out;
    auto src = co_await open_end(*loop, src_spec, true);
    if (!src) {
        out.failure = "source \"" + src_spec.text + "\": " + src.error().message();
        co_return out;
    }
    auto dst = co_await open_end(*loop, dst_spec, false);
    if (!dst) {
        out.failure = "destination \"" + dst_spec.text + "\": " + dst.error().message();
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
    if (!out.result.ok()) {
        out.failure = "copy failed after " + std::to_string(out.result.bytes) +
                      " bytes: " + out.result.error.message();
    }
    co_return out;
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
    stdio_flags_guard in_guard{STDIN_FILENO,
                               src.kind == end_kind::stdio ? ::fcntl(STDIN_FILENO, F_GETFL) : -1};
    stdio_flags_guard out_guard{STDOUT_FILENO,
                                dst.kind == end_kind::stdio ? ::fcntl(STDOUT_FILENO, F_GETFL) : -1};

    copy_options opts;
    opts.limit = o.limit;
    opts.path = o.engine;
    const auto size = known_size(src);
    const auto total = o.limit && size ? std::optional(std::min(*o.limit, *size)) : size;
    const bool show_progress = ::isatty(STDERR_FILENO) == 1;

    event_loop loop;
    copy_outcome out = loop.block_on(run(&loop, src, dst, opts, total, show_progress));
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

} // namespace zcio::cli
