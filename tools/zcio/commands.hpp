// The subcommands' entry points and their options.
#pragma once

#include "route_config.hpp"

#include <zcio/copy.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace CLI {
class App;
}

namespace zcio::cli {

// A subcommand defined in its own file: add_X(app) adds its options to `app` and
// returns the subcommand with the function main() runs when it was chosen.
struct subcommand {
    CLI::App* app = nullptr;
    std::function<int()> run;
};

// Every subcommand: `zcio proxy` (proxy_command.cpp), `zcio copy` (copy_command.cpp),
// `zcio bench` (bench_command.cpp), ...
subcommand add_proxy_command(CLI::App& app);
subcommand add_copy_command(CLI::App& app);
subcommand add_bench_command(CLI::App& app);

// `zcio serve DIR` (serve_command.cpp) and `zcio get URL` (get_command.cpp).
subcommand add_serve_command(CLI::App& app);
subcommand add_get_command(CLI::App& app);

// `zcio udp-echo` (udp_echo_command.cpp).
subcommand add_udp_echo_command(CLI::App& app);

struct copy_command_options {
    std::string source;
    std::string destination;
    std::optional<std::uint64_t> limit;
    copy_path engine = copy_path::automatic;
    bool verbose = false;
};
int run_copy_command(const copy_command_options& o);

struct bench_command_options {
    double seconds = 3;
    std::uint64_t bytes = 0; // when set: move exactly this much per case instead of timing
    bool json = false;
    std::size_t idle_connections = 1000;
};
int run_bench_command(const bench_command_options& o);

} // namespace zcio::cli
