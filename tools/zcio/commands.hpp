// The subcommands' entry points and their options.
#pragma once

#include "route_config.hpp"

#include <zcio/copy.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace zcio::cli {

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
