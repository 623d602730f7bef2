// `zcio proxy`: its flags, the config they make, and the main loop that serves the
// signals (drain, reload) and the metrics while the proxy_server runs.
#include "cli_util.hpp"
#include "commands.hpp"
#include "metrics.hpp"
#include "proxy_server.hpp"
#include "route_config.hpp"
#include "systemd.hpp"
#include "takeover.hpp"

#include <zcio/zcio.hpp>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <csignal>
#include <memory>
#include <optional>
#include <span>
#include <utility>

namespace zcio::cli {
namespace {

struct proxy_flags {
    std::vector<std::string> listen;
    std::vector<std::string> upstream;
    std::string config;
    // Balancing and health (balance_options)
    std::string balance;
    std::optional<unsigned> max_fails;
    std::string fail_timeout;
    std::optional<unsigned> connect_retries;
    std::string health_interval;
    std::optional<unsigned> rise;
    std::optional<unsigned> fall;
    std::size_t threads = 0;
    std::string engine = "auto";
    std::string pipe_size;
    std::optional<std::uint64_t> max_connections;
    std::string idle_timeout;
    std::string connect_timeout = "10";
    std::string rate_limit;
    std::string proxy_protocol;
    std::string metrics;
    std::string drain_timeout = "10";
    std::string busy_poll;
    // UDP routes (udp_route.hpp)
    std::string protocol;
    std::string session_timeout;
    std::optional<std::uint64_t> max_sessions;
    std::optional<std::uint32_t> responses;
    bool accept_proxy = false; // TCP and UDP routes
    std::vector<std::string> accept_proxy_from;
    std::string proxy_header_timeout;
    std::string proxy_unlisted;
    // Restart without loss (takeover.hpp)
    std::string control;
    std::string take_over;
};

// The --protocol and UDP flags of the one route flags make: which protocol, and the
// flags of the other protocol refused by name.
void udp_from_flags(const proxy_flags& f, bool udp_prefix, route& r) {
    if (!f.protocol.empty()) {
        r.protocol = parse_protocol(f.protocol, "--protocol");
        if (udp_prefix && r.protocol == route_protocol::tcp) {
            throw usage_error("--protocol tcp: --listen has a udp: address");
        }
    }
    if (udp_prefix) {
        r.protocol = route_protocol::udp;
    }
    const bool udp = r.protocol == route_protocol::udp;
    const std::pair<const char*, bool> tcp_flags[] = {
        {"--engine", f.engine != "auto"},
        {"--pipe-size", !f.pipe_size.empty()},
        {"--max-connections", f.max_connections.has_value()},
        {"--idle-timeout", !f.idle_timeout.empty()},
        {"--connect-timeout", f.connect_timeout != "10"},
        {"--rate-limit", !f.rate_limit.empty()},
        {"--balance", !f.balance.empty()},
        {"--max-fails", f.max_fails.has_value()},
        {"--fail-timeout", !f.fail_timeout.empty()},
        {"--connect-retries", f.connect_retries.has_value()},
        {"--health-interval", !f.health_interval.empty()},
        {"--rise", f.rise.has_value()},
        {"--fall", f.fall.has_value()},
        {"--accept-proxy-from", !f.accept_proxy_from.empty()},
        {"--proxy-header-timeout", !f.proxy_header_timeout.empty()},
        {"--proxy-unlisted", !f.proxy_unlisted.empty()},
    };
    const std::pair<const char*, bool> udp_flags[] = {
        {"--session-timeout", !f.session_timeout.empty()},
        {"--max-sessions", f.max_sessions.has_value()},
        {"--responses", f.responses.has_value()},
    };
    using flag_list = std::span<const std::pair<const char*, bool>>;
    for (const auto& [name, set] : udp ? flag_list(tcp_flags) : flag_list(udp_flags)) {
        if (set) {
            throw usage_error(std::string(name) +
                              (udp ? " is for TCP routes only (this route is UDP)"
                                   : " is for UDP routes only (--protocol udp or a udp: listen)"));
        }
    }
    if (!udp) {
        return;
    }
    if (!f.session_timeout.empty()) {
        r.udp.session_timeout = parse_duration(f.session_timeout, "--session-timeout");
    }
    if (f.max_sessions) {
        if (*f.max_sessions == 0) {
            throw usage_error("--max-sessions: must be at least 1");
        }
        r.udp.max_sessions = f.max_sessions;
    }
    r.udp.responses = f.responses.value_or(0);
    r.udp.accept_proxy = f.accept_proxy;
    check_udp_route(r, "--");
}

void accept_proxy_from_flags(const proxy_flags& f, accept_proxy_options& a) {
    a.enabled = f.accept_proxy;
    if (!f.accept_proxy && (!f.accept_proxy_from.empty() || !f.proxy_header_timeout.empty() ||
                            !f.proxy_unlisted.empty())) {
        const char* flag = !f.accept_proxy_from.empty()      ? "--accept-proxy-from"
                           : !f.proxy_header_timeout.empty() ? "--proxy-header-timeout"
                                                             : "--proxy-unlisted";
        throw usage_error(std::string(flag) + " needs --accept-proxy");
    }
    if (!f.proxy_unlisted.empty()) {
        if (f.proxy_unlisted != "refuse" && f.proxy_unlisted != "direct") {
            throw usage_error("--proxy-unlisted: expected refuse or direct, not '" +
                              f.proxy_unlisted + "'");
        }
        if (f.accept_proxy_from.empty()) {
            throw usage_error("--proxy-unlisted needs --accept-proxy-from (without it no peer "
                              "is unlisted)");
        }
        a.unlisted_direct = f.proxy_unlisted == "direct";
    }
    for (const auto& text : f.accept_proxy_from) {
        a.from.push_back(parse_address_prefix(text, "--accept-proxy-from"));
    }
    if (!f.proxy_header_timeout.empty()) {
        a.header_timeout = parse_duration(f.proxy_header_timeout, "--proxy-header-timeout");
        if (a.header_timeout.count() == 0) {
            throw usage_error("--proxy-header-timeout: must be more than 0 (a client may not "
                              "wait forever)");
        }
    }
}

void balance_from_flags(const proxy_flags& f, balance_options& b) {
    if (!f.balance.empty()) {
        b.policy = parse_balance(f.balance, "--balance");
    }
    b.passive.max_fails = f.max_fails.value_or(b.passive.max_fails);
    if (!f.fail_timeout.empty()) {
        b.passive.fail_timeout = std::chrono::duration_cast<clock::duration>(
            parse_duration(f.fail_timeout, "--fail-timeout"));
    }
    b.connect_retries = f.connect_retries.value_or(b.connect_retries);
    if (!f.health_interval.empty()) {
        b.health_interval = parse_duration(f.health_interval, "--health-interval");
        if (b.health_interval.count() > 0 && b.health_interval < std::chrono::milliseconds(10)) {
            throw usage_error("--health-interval: " + f.health_interval +
                              " is too short (at least 10ms; 0: no active checks)");
        }
    }
    b.active.rise = f.rise.value_or(b.active.rise);
    b.active.fall = f.fall.value_or(b.active.fall);
    if (b.active.rise == 0 || b.active.fall == 0) {
        throw usage_error(std::string(b.active.rise == 0 ? "--rise" : "--fall") +
                          ": must be at least 1");
    }
}

proxy_config config_from_flags(const proxy_flags& f) {
    proxy_config cfg;
    if (!f.config.empty()) {
        if (!f.listen.empty() || !f.upstream.empty()) {
            throw usage_error("--config cannot be combined with --listen/--upstream (put the "
                              "routes in the file)");
        }
        cfg = load_config_file(f.config);
    } else {
        if (f.listen.empty()) {
            throw usage_error("--listen is required (or give --config FILE)");
        }
        if (f.upstream.empty()) {
            throw usage_error("--upstream is required (or give --config FILE)");
        }
        route r;
        r.name = "default";
        std::vector<listen_span> spans;
        std::vector<std::string> span_texts; // the --listen each span came from
        bool udp_prefix = false;
        for (const auto& text : f.listen) {
            std::string l = text;
            const bool prefixed = strip_udp_prefix(l);
            if (&text != &f.listen.front() && prefixed != udp_prefix) {
                throw usage_error("--listen " + text +
                                  ": every --listen has the udp: prefix, or none (one route is "
                                  "one protocol)");
            }
            udp_prefix = prefixed;
            auto eps = parse_listen(l);
            // Overlapping --listen flags (the same address twice, ranges that share a
            // port, a wildcard and an address under it) would fail only at bind time,
            // as a runtime error: the checks of a config file's routes apply.
            for (const auto& group : split_by_address(eps)) {
                const listen_span mine = span_of(group);
                for (std::size_t i = 0; i < spans.size(); ++i) {
                    if (auto shared = listen_overlap(spans[i], mine)) {
                        const std::string& earlier = span_texts[i];
                        if (earlier == l) {
                            throw usage_error("--listen " + l + " is given twice");
                        }
                        throw usage_error("--listen " + l + ": " + shared->to_string() +
                                          " is already taken by --listen " + earlier);
                    }
                }
                spans.push_back(mine);
                span_texts.push_back(l);
            }
            r.listen.insert(r.listen.end(), eps.begin(), eps.end());
            r.listen_text.push_back(l);
        }
        for (const auto& text : f.upstream) {
            r.upstreams.push_back(parse_upstream_flag(text));
        }
        check_upstreams(r.upstreams, "--upstream");
        r.upstream = r.upstreams.front().addresses;
        balance_from_flags(f, r.balance);
        r.options.engine = parse_engine(f.engine, "--engine");
        if (!f.pipe_size.empty()) {
            r.options.pipe_size = parse_size(f.pipe_size, "--pipe-size");
        }
        r.options.max_connections = f.max_connections;
        if (!f.idle_timeout.empty()) {
            r.options.idle_timeout = parse_duration(f.idle_timeout, "--idle-timeout");
        }
        r.options.connect_timeout = parse_duration(f.connect_timeout, "--connect-timeout");
        if (!f.rate_limit.empty()) {
            r.options.rate_limit = parse_size(f.rate_limit, "--rate-limit");
        }
        r.options.proxy_protocol = parse_proxy_header(f.proxy_protocol, "--proxy-protocol");
        accept_proxy_from_flags(f, r.options.accept_proxy);
        udp_from_flags(f, udp_prefix, r);
        cfg.routes.push_back(std::move(r));
    }
    if (!f.metrics.empty()) {
        cfg.global.metrics = parse_listen_endpoint(f.metrics);
    }
    if (f.threads != 0) {
        cfg.global.threads = f.threads;
    }
    if (!cfg.global.drain_timeout) {
        cfg.global.drain_timeout = parse_duration(f.drain_timeout, "--drain-timeout");
    }
    if (!f.busy_poll.empty()) {
        auto d = parse_duration(f.busy_poll, "--busy-poll");
        if (d > busy_poll_limit) {
            throw usage_error("--busy-poll: " + f.busy_poll +
                              " is too long (at most 10ms; e.g. 50us)");
        }
        cfg.global.busy_poll = d;
    }
    for (const auto& r : cfg.routes) {
        if (r.upstream.is_ip() && r.upstream.port() == 0) {
            throw usage_error(r.name + ": upstream " + r.upstream.to_string() + " has port 0");
        }
    }
    return cfg;
}

// SIGUSR2 is raised by the take-over thread once the new process accepts: this one
// stops accepting (the sockets stay open in the new one) and drains.
bool handed_over(proxy_server* server, takeover_server* control, std::chrono::nanoseconds drain) {
    if (control == nullptr || !control->handed_over()) {
        spdlog::warn("SIGUSR2: ignored (no take-over in progress)");
        return false;
    }
    spdlog::info("take-over: pid {} accepts now; stopping accepting, draining (up to {:.1f}s)",
                 control->new_pid(), std::chrono::duration<double>(drain).count());
    notify_stopping();
    server->stop_accepting();
    control->stopped_accepting();
    server->drain(drain);
    spdlog::info("take-over: drained, exiting");
    return true;
}

task<int> proxy_main(event_loop* loop, proxy_server* server, proxy_flags flags,
                     std::chrono::nanoseconds drain, takeover_server* control) {
    auto signals = signal_set::open(*loop, {SIGINT, SIGTERM, SIGHUP, SIGUSR2});
    if (!signals) {
        spdlog::critical("signals: {}", signals.error().message());
        co_return 1;
    }
    // The file is read on a thread: the loop serves signals and metrics meanwhile.
    config_reloader reloader(*loop, *server, [flags] { return config_from_flags(flags); });
    while (true) {
        auto sig = co_await signals->next();
        if (!sig) {
            spdlog::critical("signals: {}", sig.error().message());
            co_return 1;
        }
        if (*sig == SIGUSR2) {
            if (control != nullptr && control->handed_over()) {
                reloader.stop();
            }
            if (handed_over(server, control, drain)) {
                co_return 0;
            }
            continue;
        }
        if (*sig == SIGHUP) {
            if (flags.config.empty()) {
                spdlog::warn("SIGHUP: nothing to reload (no --config)");
                continue;
            }
            notify_reloading(); // READY=1 again once applied or refused (config_reloader)
            reloader.request();
            continue;
        }
        spdlog::info("{}: draining (up to {:.1f}s)", *sig == SIGINT ? "SIGINT" : "SIGTERM",
                     std::chrono::duration<double>(drain).count());
        reloader.stop();
        notify_stopping();
        server->drain(drain);
        co_return 0;
    }
}

int run_proxy(const proxy_flags& flags) {
    adopt_systemd_sockets(); // before the config: its "systemd:NAME" addresses need them
    proxy_config cfg = config_from_flags(flags);
    const std::size_t threads = cfg.global.threads.value_or(0);
    const auto drain = *cfg.global.drain_timeout;
    const auto metrics_at = cfg.global.metrics;

    // Block the signals before any thread starts: the loop threads inherit the mask and
    // only the main loop's signalfd receives them.
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR2}) {
        sigaddset(&mask, s);
    }
    pthread_sigmask(SIG_BLOCK, &mask, nullptr);

    // The running process's sockets first: its binds then find them (takeover.hpp).
    std::unique_ptr<takeover_client> from;
    if (!flags.take_over.empty()) {
        from = std::make_unique<takeover_client>(flags.take_over);
    }
    event_loop main_loop;
    proxy_server server(std::move(cfg), threads);
    // Bind the metrics address before the routes' start logs "listening on", so a
    // failure of either is the only line on stderr. Freed before the server it reads.
    metrics_endpoint metrics;
    if (metrics_at) {
        metrics = start_metrics_server(
            *metrics_at, [&server] { return server.metrics_text(); }, from != nullptr);
    }
    server.start();
    if (metrics.server) {
        spdlog::info("metrics on http://{}/metrics", metrics.bound.to_string());
    }
    if (from) {
        from->started(); // returns once the old process stopped accepting
        from.reset();
    }
    std::unique_ptr<takeover_server> control; // freed before the server it reads
    if (!flags.control.empty()) {
        control = std::make_unique<takeover_server>(flags.control, main_loop, server);
    }
    notify_ready();
    main_loop.spawn(feed_watchdog(&main_loop));
    return main_loop.block_on(proxy_main(&main_loop, &server, flags, drain, control.get()));
}

// A count: digits only, so "-1" and "1.5" are refused with a message that says so.
const CLI::Validator whole_number(
    [](std::string& text) -> std::string {
        if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) {
            return "\"" + text + "\" is not a whole number (0, 1, 2, ...)";
        }
        return {};
    },
    "COUNT");

} // namespace

subcommand add_proxy_command(CLI::App& app) {
    auto f = std::make_shared<proxy_flags>();
    auto* cmd = app.add_subcommand("proxy", "TCP/Unix forwarder: every client connection is "
                                            "relayed to the upstream (splice where possible); "
                                            "UDP routes: a session per client address");
    cmd->add_option("-l,--listen", f->listen,
                    "Address to accept clients on; repeatable. HOST:PORT, [::1]:PORT, "
                    "HOST:FIRST-LAST (every port of the range), unix:/path, unix:@abstract; "
                    "a bare PORT or :PORT means 127.0.0.1 (0.0.0.0:PORT for every interface)")
        // One address per flag, taken as typed: CLI11 would otherwise read "[::1]" as a
        // list and hand over "::1".
        ->allow_extra_args(false);
    cmd->add_option("-u,--upstream", f->upstream,
                    "Server to connect each client to; repeatable: the clients are balanced "
                    "over them (--balance). ADDR or ADDR,weight=N,backup,drain; a name "
                    "gives one server per address")
        ->allow_extra_args(false);
    cmd->add_option("--balance", f->balance,
                    "round-robin (default, weighted), least-connections, client-hash "
                    "(a client address sticks to its server) or random-two");
    cmd->add_option("--max-fails", f->max_fails,
                    "Failed connects within --fail-timeout that take a server out for "
                    "--fail-timeout (default 1; 0: never)")
        ->check(whole_number);
    cmd->add_option("--fail-timeout", f->fail_timeout,
                    "Window of --max-fails and how long a failed server is out (default 10s)");
    cmd->add_option("--connect-retries", f->connect_retries,
                    "Other servers tried when a connect fails, before any byte is relayed "
                    "(default 2)")
        ->check(whole_number);
    cmd->add_option("--health-interval", f->health_interval,
                    "Active health checks: a TCP connect to every server this often (e.g. "
                    "2s; default 0: none)");
    cmd->add_option("--rise", f->rise, "Passed checks that bring a down server back (default 2)")
        ->check(whole_number);
    cmd->add_option("--fall", f->fall, "Failed checks that take an up server out (default 3)")
        ->check(whole_number);
    cmd->add_option("-c,--config", f->config,
                    "TOML file with [[route]] tables (see docs/proxy.md); "
                    "SIGHUP reloads it");
    cmd->add_option("-t,--threads", f->threads, "Event loops (threads); default: one per core")
        ->check(CLI::Range(1, 1024));
    cmd->add_option("--engine", f->engine, "auto, splice or buffer")->capture_default_str();
    cmd->add_option("--pipe-size", f->pipe_size, "Size of pooled pipes (e.g. 1M); default 1 MiB");
    cmd->add_option("--max-connections", f->max_connections,
                    "Open client connections at most; more are accepted and closed at once "
                    "(0: no limit; default: one limit shared by every route without its own, "
                    "(open-file limit - 64 reserved - listeners) / 2, as each connection "
                    "costs two descriptors)")
        ->check(whole_number); // CLI11 2.1 reads "-1" into an unsigned as 2^64 - 1
    cmd->add_option("--idle-timeout", f->idle_timeout,
                    "Close a connection when no byte moved either way for this long (e.g. 30s; "
                    "0: never; default 1h)");
    cmd->add_option("--connect-timeout", f->connect_timeout, "Upstream connect timeout")
        ->capture_default_str();
    cmd->add_option("--rate-limit", f->rate_limit,
                    "Bytes per second per connection and direction (e.g. 10M); works with splice");
    cmd->add_option("--proxy-protocol", f->proxy_protocol,
                    "Send a PROXY protocol header (v1 or v2) to the upstream");
    cmd->add_option("--metrics", f->metrics, "Serve Prometheus metrics at http://ADDR/metrics");
    cmd->add_option("--busy-poll", f->busy_poll,
                    "After work, poll without sleeping for this long before blocking (e.g. "
                    "50us, at most 10ms): lower latency on machines slow to wake a core, at "
                    "the cost of CPU while traffic flows; default off");
    cmd->add_option("--protocol", f->protocol,
                    "tcp (default) or udp: datagram sessions, one per client address "
                    "(same as a udp: prefix on --listen, e.g. udp:127.0.0.1:5353)");
    cmd->add_option("--session-timeout", f->session_timeout,
                    "UDP: end a session after this long without a datagram either way "
                    "(default 30s; 0: never)");
    cmd->add_option("--max-sessions", f->max_sessions,
                    "UDP: sessions at most (new clients' datagrams are dropped and counted "
                    "past it); default: what the open-file limit leaves")
        ->check(whole_number);
    cmd->add_option("--responses", f->responses,
                    "UDP: end a session once the upstream sent this many datagrams for each "
                    "one the client sent (1 for DNS; default 0: unlimited)")
        ->check(whole_number);
    cmd->add_flag("--accept-proxy", f->accept_proxy,
                  "Every client connection starts with a PROXY header, v1 or v2 (UDP: every "
                  "datagram, v2); it names the original client for logs, metrics, balancing "
                  "and --proxy-protocol. A missing, malformed, slow or repeated header closes "
                  "the connection (a bad datagram is dropped)");
    cmd->add_option("--accept-proxy-from", f->accept_proxy_from,
                    "With --accept-proxy: only these peers may connect (a prefix, e.g. "
                    "10.0.0.0/8 or ::1/128; repeat the flag for more); others are closed");
    cmd->add_option("--proxy-unlisted", f->proxy_unlisted,
                    "With --accept-proxy-from: what a peer outside the list gets: refuse "
                    "(default: closed and counted) or direct (served as a plain client, no "
                    "header read, its own address used)");
    cmd->add_option("--proxy-header-timeout", f->proxy_header_timeout,
                    "With --accept-proxy: close a client whose header is not complete after "
                    "this long (default 3s)");
    cmd->add_option("--control", f->control,
                    "Unix socket (e.g. /run/zcio.sock, mode 0600) on which a new zcio proxy "
                    "started with --take-over receives the listening sockets");
    cmd->add_option("--take-over", f->take_over,
                    "Take the listening sockets of the zcio proxy whose --control socket this "
                    "is, start accepting on them, then let it drain and exit (restart without "
                    "loss, e.g. --take-over /run/zcio.sock --control /run/zcio.sock)");
    cmd->add_option("--drain-timeout", f->drain_timeout,
                    "On SIGINT/SIGTERM, wait this long for open connections before closing them")
        ->capture_default_str();
    return {cmd, [f] { return run_proxy(*f); }};
}

} // namespace zcio::cli
