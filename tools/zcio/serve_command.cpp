// `zcio serve DIR`: a static file server whose bodies leave with sendfile.
#include "cli_util.hpp"
#include "commands.hpp"
#include "http_server.hpp"

#include <zcio/zcio.hpp>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <memory>

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
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

// Every address `--listen HOST:PORT` names. An IP literal, a bare port or a Unix socket
// is one address; a host name is every address it resolves to (getaddrinfo, once, at
// start), so that "localhost:8000" listens on 127.0.0.1 and on [::1], not only on
// whichever the resolver answered first. Clients that try the other family would
// otherwise get a refused connection.
std::vector<endpoint> listen_addresses(const std::string& text) {
    endpoint first = parse_listen_endpoint(text); // checks the syntax and the port
    const auto colon = text.rfind(':');
    if (!first.is_ip() || text.starts_with('[') || colon == std::string::npos || colon == 0) {
        return {first};
    }
    const std::string host = text.substr(0, colon);
    in_addr v4{};
    if (::inet_pton(AF_INET, host.c_str(), &v4) == 1) {
        return {first};
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* res = nullptr;
    const std::string port = std::to_string(first.port());
    if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
        throw usage_error("--listen " + text + ": cannot resolve \"" + host +
                          "\": " + ::gai_strerror(rc));
    }
    std::vector<endpoint> out;
    for (const addrinfo* a = res; a != nullptr; a = a->ai_next) {
        endpoint ep = endpoint::from_sockaddr(a->ai_addr, a->ai_addrlen);
        const bool seen = std::any_of(out.begin(), out.end(), [&ep](const endpoint& e) {
            return e.to_string() == ep.to_string();
        });
        if (!seen) {
            out.push_back(ep);
        }
    }
    ::freeaddrinfo(res);
    if (out.empty()) {
        out.push_back(first);
    }
    return out;
}

serve_options options_from(const serve_flags& f) {
    serve_options o;
    o.root = f.root;
    o.listen = listen_addresses(f.listen);
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
    const std::vector<endpoint> at = server.start();
    std::string where;
    for (const auto& ep : at) {
        where += (where.empty() ? "http://" : " and http://") + ep.to_string() + "/";
    }
    spdlog::info("serving {} on {} ({} thread{})", o.root, where, server.threads(),
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
                    "unix:/path; port 0 picks a free one; a bare PORT means 127.0.0.1; a "
                    "host name listens on every address it resolves to)")
        ->capture_default_str();
    cmd->add_option("-t,--threads", f->threads, "Event loops (threads); default: one per core")
        ->check(CLI::Range(1, 1024));
    cmd->add_option("--max-connections", f->max_connections,
                    "Open connections at most; more get 503 and a graceful close (0: no limit)")
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
    cmd->footer("Answers: 200/206 (Range) with ETag and Last-Modified; 304 for If-None-Match or "
                "If-Modified-Since, 412 for If-Match or If-Unmodified-Since; 301 for a directory "
                "without '/'; 404 for a missing file, a file with a trailing '/', or a dotfile "
                "(without --dotfiles); 403 outside DIR; 400 for two Host fields. A connection a "
                "timeout cuts is logged with 408. See docs/serve.md.");
    return {cmd, [f] { return run_serve(*f); }};
}

} // namespace zcio::cli
