// `zcio serve DIR`: a static file server whose bodies leave with sendfile.
#include "cli_util.hpp"
#include "commands.hpp"
#include "http_server.hpp"

#include <zcio/zcio.hpp>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstring>
#include <memory>

#include <sys/stat.h>

namespace zcio::cli {

namespace {

struct serve_flags {
    std::string root;
    std::string listen = "127.0.0.1:8000";
    std::size_t threads = 0;
    std::uint64_t max_connections = 0;
    std::string max_header_size = "16K";
    std::size_t max_headers = 100;
    std::string header_timeout = "10s";
    std::string idle_timeout = "30s";
    std::string send_timeout = "60s";
    bool no_listing = false;
    bool dotfiles = false;
};

serve_options options_from(const serve_flags& f) {
    serve_options o;
    o.root = f.root;
    o.listen = parse_listen_endpoint(f.listen);
    o.threads = f.threads;
    o.max_connections = f.max_connections;
    o.max_header_size = parse_size(f.max_header_size, "--max-header-size");
    if (o.max_header_size < 1024 || o.max_header_size > (std::size_t{1} << 20)) {
        throw usage_error("--max-header-size: must be between 1K and 1M");
    }
    o.max_headers = f.max_headers;
    o.header_timeout = parse_duration(f.header_timeout, "--header-timeout");
    o.idle_timeout = parse_duration(f.idle_timeout, "--idle-timeout");
    o.send_timeout = parse_duration(f.send_timeout, "--send-timeout");
    for (auto [d, name] : {std::pair{o.header_timeout, "--header-timeout"},
                           std::pair{o.idle_timeout, "--idle-timeout"},
                           std::pair{o.send_timeout, "--send-timeout"}}) {
        if (d.count() == 0) {
            throw usage_error(std::string(name) + ": must be more than 0");
        }
    }
    o.listing = !f.no_listing;
    o.dotfiles = f.dotfiles;
    struct stat st {};
    if (::stat(o.root.c_str(), &st) != 0) {
        throw runtime_failure("cannot serve \"" + o.root + "\": " + std::strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) {
        throw usage_error("\"" + o.root + "\" is not a directory");
    }
    return o;
}

int run_serve(const serve_flags& f) {
    serve_options o = options_from(f);
    // Block the signals before any thread starts: the loop threads inherit the mask
    // and only the main thread's signalfd receives them.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &mask, nullptr);

    event_loop main_loop;
    http_server server(o);
    const endpoint at = server.start();
    spdlog::info("serving {} on http://{}/ ({} thread{})", o.root, at.to_string(), server.threads(),
                 server.threads() == 1 ? "" : "s");
    auto sig = main_loop.block_on(wait_signal(main_loop, {SIGINT, SIGTERM}));
    if (!sig) {
        throw runtime_failure("signals: " + sig.error().message());
    }
    spdlog::info("{}: stopping", *sig == SIGINT ? "SIGINT" : "SIGTERM");
    server.stop();
    return 0;
}

} // namespace

subcommand add_serve_command(CLI::App& app) {
    auto f = std::make_shared<serve_flags>();
    auto* cmd =
        app.add_subcommand("serve", "Static HTTP/1.1 file server: GET and HEAD of the files "
                                    "under DIR, bodies sent with sendfile");
    cmd->add_option("DIR", f->root, "Directory to serve; nothing outside it is ever served")
        ->required();
    cmd->add_option("-l,--listen", f->listen,
                    "Address to listen on (HOST:PORT, [::1]:PORT, "
                    "unix:/path; port 0 picks a free one; a bare PORT means 127.0.0.1)")
        ->capture_default_str();
    cmd->add_option("-t,--threads", f->threads, "Event loops (threads); default: one per core")
        ->check(CLI::Range(1, 1024));
    cmd->add_option("--max-connections", f->max_connections,
                    "Open connections at most; more get 503 and are closed (0: no limit)")
        ->capture_default_str();
    cmd->add_option("--max-header-size", f->max_header_size,
                    "Largest request head (request line and header fields); larger gets 431")
        ->capture_default_str();
    cmd->add_option("--max-headers", f->max_headers,
                    "Most header fields in a request; more gets 431")
        ->capture_default_str()
        ->check(CLI::Range(1, 10000));
    cmd->add_option("--header-timeout", f->header_timeout,
                    "Time a client has to send a whole request head")
        ->capture_default_str();
    cmd->add_option("--idle-timeout", f->idle_timeout,
                    "Close a kept-alive connection that sends no new request for this long")
        ->capture_default_str();
    cmd->add_option("--send-timeout", f->send_timeout,
                    "Close a connection whose client reads nothing of a response for this long")
        ->capture_default_str();
    cmd->add_flag("--no-listing", f->no_listing,
                  "Answer 403 for a directory without index.html instead of listing it");
    cmd->add_flag("--dotfiles", f->dotfiles,
                  "Serve and list names starting with '.' (by default any path segment "
                  "starting with '.' is 404 and such names are left out of listings)");
    return {cmd, [f] { return run_serve(*f); }};
}

} // namespace zcio::cli
