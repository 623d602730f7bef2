// zcio: the command-line tool. Parses arguments and hands each subcommand to its file.
#include "cli_util.hpp"
#include "commands.hpp"
#include "metrics.hpp"
#include "proxy_server.hpp"
#include "route_config.hpp"

#include <zcio/zcio.hpp>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <optional>
#include <thread>

#ifndef ZCIO_VERSION
#define ZCIO_VERSION "0.0.0"
#endif

namespace zcio::cli {
namespace {

struct proxy_flags {
    std::vector<std::string> listen;
    std::string upstream;
    std::string config;
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
};

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
        for (const auto& l : f.listen) {
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
        r.upstream = parse_endpoint_list(f.upstream);
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

task<int> proxy_main(event_loop* loop, proxy_server* server, proxy_flags flags,
                     std::chrono::nanoseconds drain) {
    auto signals = signal_set::open(*loop, {SIGINT, SIGTERM, SIGHUP});
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
        if (*sig == SIGHUP) {
            if (flags.config.empty()) {
                spdlog::warn("SIGHUP: nothing to reload (no --config)");
                continue;
            }
            reloader.request();
            continue;
        }
        spdlog::info("{}: draining (up to {:.1f}s)", *sig == SIGINT ? "SIGINT" : "SIGTERM",
                     std::chrono::duration<double>(drain).count());
        reloader.stop();
        server->drain(drain);
        co_return 0;
    }
}

int run_proxy(const proxy_flags& flags) {
    proxy_config cfg = config_from_flags(flags);
    const std::size_t threads = cfg.global.threads.value_or(0);
    const auto drain = *cfg.global.drain_timeout;
    const auto metrics_at = cfg.global.metrics;

    // Block the signals before any thread starts: the loop threads inherit the mask and
    // only the main loop's signalfd receives them.
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGINT, SIGTERM, SIGHUP}) {
        sigaddset(&mask, s);
    }
    pthread_sigmask(SIG_BLOCK, &mask, nullptr);

    event_loop main_loop;
    proxy_server server(std::move(cfg), threads);
    // Bind the metrics address before the routes' start logs "listening on", so a
    // failure of either is the only line on stderr.
    std::optional<endpoint> metrics_bound;
    if (metrics_at) {
        metrics_bound = start_metrics_server(main_loop, *metrics_at,
                                             [&server] { return server.metrics_text(); });
    }
    server.start();
    if (metrics_bound) {
        spdlog::info("metrics on http://{}/metrics", metrics_bound->to_string());
    }
    return main_loop.block_on(proxy_main(&main_loop, &server, flags, drain));
}

void setup_logging(const std::string& level) {
    auto logger = spdlog::stderr_logger_mt("zcio");
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %L %v");
    spdlog::set_default_logger(logger);
    auto lvl = spdlog::level::from_str(level);
    if (lvl == spdlog::level::off && level != "off") {
        throw usage_error("--log-level: \"" + level +
                          "\" is not a level (trace, debug, info, warn, error, off)");
    }
    spdlog::set_level(lvl);
}

// "zcio proxy --help" once a subcommand was named (its flags are listed there), else
// "zcio --help".
std::string help_command(const CLI::App& app) {
    const auto chosen = app.get_subcommands();
    return chosen.empty() ? "zcio --help" : "zcio " + chosen.front()->get_name() + " --help";
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

int run(int argc, char** argv) {
    CLI::App app{"zcio: move bytes between sockets, pipes and files with zero copies where the "
                 "kernel allows"};
    app.set_version_flag("-V,--version", std::string("zcio ") + ZCIO_VERSION);
    app.require_subcommand(1);
    app.fallthrough(); // global options (--log-level) may also follow the subcommand
    std::string log_level = "info";
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
        ->capture_default_str();

    proxy_flags pf;
    auto* proxy = app.add_subcommand("proxy", "TCP/Unix forwarder: every client connection is "
                                              "relayed to the upstream (splice where possible)");
    proxy
        ->add_option("-l,--listen", pf.listen,
                     "Address to accept clients on; repeatable. HOST:PORT, [::1]:PORT, "
                     "HOST:FIRST-LAST (every port of the range), unix:/path, unix:@abstract; "
                     "a bare PORT or :PORT means 127.0.0.1 (0.0.0.0:PORT for every interface)")
        // One address per flag, taken as typed: CLI11 would otherwise read "[::1]" as a
        // list and hand over "::1".
        ->allow_extra_args(false);
    proxy->add_option("-u,--upstream", pf.upstream,
                      "Address to connect each client to (a name: each of its addresses "
                      "is tried, Happy Eyeballs)");
    proxy->add_option("-c,--config", pf.config,
                      "TOML file with [[route]] tables (see docs/proxy.md); "
                      "SIGHUP reloads it");
    proxy->add_option("-t,--threads", pf.threads, "Event loops (threads); default: one per core")
        ->check(CLI::Range(1, 1024));
    proxy->add_option("--engine", pf.engine, "auto, splice or buffer")->capture_default_str();
    proxy->add_option("--pipe-size", pf.pipe_size, "Size of pooled pipes (e.g. 1M); default 1 MiB");
    proxy
        ->add_option("--max-connections", pf.max_connections,
                     "Open client connections at most; more are accepted and closed at once "
                     "(0: no limit; default: one limit shared by every route without its own, "
                     "(open-file limit - 64 reserved - listeners) / 2, as each connection "
                     "costs two descriptors)")
        ->check(whole_number); // CLI11 2.1 reads "-1" into an unsigned as 2^64 - 1
    proxy->add_option("--idle-timeout", pf.idle_timeout,
                      "Close a connection when no byte moved either way for this long (e.g. 30s; "
                      "0: never; default 1h)");
    proxy->add_option("--connect-timeout", pf.connect_timeout, "Upstream connect timeout")
        ->capture_default_str();
    proxy->add_option(
        "--rate-limit", pf.rate_limit,
        "Bytes per second per connection and direction (e.g. 10M); works with splice");
    proxy->add_option("--proxy-protocol", pf.proxy_protocol,
                      "Send a PROXY protocol header (v1 or v2) to the upstream");
    proxy->add_option("--metrics", pf.metrics, "Serve Prometheus metrics at http://ADDR/metrics");
    proxy->add_option("--busy-poll", pf.busy_poll,
                      "After work, poll without sleeping for this long before blocking (e.g. "
                      "50us, at most 10ms): lower latency on machines slow to wake a core, at "
                      "the cost of CPU while traffic flows; default off");
    proxy
        ->add_option("--drain-timeout", pf.drain_timeout,
                     "On SIGINT/SIGTERM, wait this long for open connections before closing them")
        ->capture_default_str();

    copy_command_options co;
    std::string copy_limit;
    std::string copy_engine = "auto";
    auto* copy = app.add_subcommand("copy", "One-way copy from SRC to DST, like socat, by the "
                                            "cheapest kernel path");
    copy->add_option("SRC", co.source,
                     "- (stdin), file:PATH, tcp:HOST:PORT, tcp-listen:HOST:PORT, unix:PATH, "
                     "unix-listen:PATH")
        ->required();
    copy->add_option("DST", co.destination,
                     "- (stdout), file:PATH (created or truncated; a sparse source keeps "
                     "its holes), file:PATH,append, "
                     "tcp:HOST:PORT, tcp-listen:HOST:PORT, unix:PATH, unix-listen:PATH")
        ->required();
    copy->add_option("--limit", copy_limit, "Copy at most this many bytes (e.g. 1M)");
    copy->add_option("--engine", copy_engine,
                     "auto, splice, sendfile, copy_file_range or buffer (forcing one still falls "
                     "back when the kernel refuses)")
        ->capture_default_str();
    copy->add_flag("-v,--verbose", co.verbose,
                   "Print bytes, path and rate on stderr at the end, and where a listening "
                   "end listens (always printed for port 0)");

    // Subcommands that live wholly in their own files register here: each returns the
    // CLI11 subcommand and what to run when it was chosen.
    std::vector<subcommand> extra;
    extra.push_back(add_udp_echo_command(app));
    extra.push_back(add_serve_command(app));
    extra.push_back(add_get_command(app));

    bench_command_options bo;
    auto* bench = app.add_subcommand("bench", "Self-contained benchmark on loopback: relay per "
                                              "engine, file→socket, socket→file, idle cost");
    bench->add_option("--seconds", bo.seconds, "Seconds per case")->capture_default_str();
    std::string bench_bytes;
    bench->add_option("--bytes", bench_bytes,
                      "Move exactly this much per case (e.g. 1G) instead of for --seconds");
    bench->add_flag("--json", bo.json, "Print the results as JSON");
    bench->add_option("--idle", bo.idle_connections, "Idle connections to open")
        ->capture_default_str()
        ->check(CLI::Range(1, 4000));

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        // `zcio frobnicate`: CLI11 only says that a subcommand is required; name the word.
        if (const auto rest = app.remaining();
            app.get_subcommands().empty() && !rest.empty() && !rest.front().starts_with("-")) {
            std::fprintf(stderr,
                         "zcio: unknown subcommand \"%s\" (expected proxy, copy, udp-echo, serve, "
                         "get or bench; see zcio --help)\n",
                         rest.front().c_str());
            return 2;
        }
        // `zcio --bogus`: likewise, name the flag rather than the missing subcommand.
        if (const auto rest = app.remaining();
            app.get_subcommands().empty() && !rest.empty() && rest.front().starts_with("-")) {
            std::fprintf(stderr,
                         "zcio: unknown option \"%s\" (options follow a subcommand; see "
                         "zcio --help)\n",
                         rest.front().c_str());
            return 2;
        }
        std::fprintf(stderr, "zcio: %s (see %s)\n", e.what(), help_command(app).c_str());
        return 2;
    }
    setup_logging(log_level);
    if (proxy->parsed()) {
        return run_proxy(pf);
    }
    for (const auto& sub : extra) {
        if (sub.app->parsed()) {
            return sub.run();
        }
    }
    if (copy->parsed()) {
        if (!copy_limit.empty()) {
            co.limit = parse_size(copy_limit, "--limit");
        }
        if (copy_engine == "auto") {
            co.engine = copy_path::automatic;
        } else if (copy_engine == "splice") {
            co.engine = copy_path::splice;
        } else if (copy_engine == "sendfile") {
            co.engine = copy_path::sendfile;
        } else if (copy_engine == "copy_file_range") {
            co.engine = copy_path::copy_file_range;
        } else if (copy_engine == "buffer") {
            co.engine = copy_path::buffer;
        } else {
            throw usage_error(
                "--engine: \"" + copy_engine +
                "\" is not an engine (auto, splice, sendfile, copy_file_range, buffer)");
        }
        return run_copy_command(co);
    }
    if (!bench_bytes.empty()) {
        bo.bytes = parse_size(bench_bytes, "--bytes");
        if (bo.bytes == 0) {
            throw usage_error("--bytes: must be more than 0");
        }
    }
    return run_bench_command(bo);
}

} // namespace
} // namespace zcio::cli

int main(int argc, char** argv) {
    try {
        return zcio::cli::run(argc, argv);
    } catch (const zcio::cli::usage_error& e) {
        std::fprintf(stderr, "zcio: %s\n", e.what());
        return 2;
    } catch (const zcio::cli::runtime_failure& e) {
        std::fprintf(stderr, "zcio: %s\n", e.what());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "zcio: %s\n", e.what());
        return 1;
    }
}
