// zcio: the command-line tool. Parses arguments and hands each subcommand to its file.
#include "cli_util.hpp"
#include "commands.hpp"

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

int run(int argc, char** argv) {
    CLI::App app{"zcio: move bytes between sockets, pipes and files with zero copies where the "
                 "kernel allows"};
    app.set_version_flag("-V,--version", std::string("zcio ") + ZCIO_VERSION);
    app.require_subcommand(1);
    app.fallthrough(); // global options (--log-level) may also follow the subcommand
    std::string log_level = "info";
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
        ->capture_default_str();

    // Every subcommand lives in its own file and registers the same way: its
    // add_X_command adds it and its options to `app` and returns what to run when it
    // was chosen. In the order --help lists them.
    std::vector<subcommand> commands;
    for (auto add : {add_proxy_command, add_copy_command, add_udp_echo_command, add_serve_command,
                     add_get_command, add_bench_command}) {
        commands.push_back(add(app));
    }

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
    for (const auto& sub : commands) {
        if (sub.app->parsed()) {
            return sub.run();
        }
    }
    return 2; // not reached: require_subcommand(1) made the parse fail
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
