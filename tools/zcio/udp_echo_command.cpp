// `zcio udp-echo`: a UDP echo server on udp_echo(), one task per socket of a port range.
#include "cli_util.hpp"
#include "commands.hpp"

#include <zcio/signal_set.hpp>
#include <zcio/timeout.hpp>
#include <zcio/udp_echo.hpp>
#include <zcio/udp_socket.hpp>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <sys/socket.h>

namespace zcio::cli {

namespace {

using namespace std::chrono_literals;

struct udp_echo_flags {
    std::vector<std::string> listen;
    std::size_t batch = 64;
    std::size_t queue = 1024;
    std::string queue_bytes;
    std::string mode = "batch";
    std::string gso = "auto";
    std::string rcvbuf;
    std::string stats_interval;
};

struct udp_echo_plan {
    std::vector<endpoint> listen;
    std::string listen_text;
    udp_echo_options options;
    std::size_t rcvbuf = 0;
    std::chrono::nanoseconds stats_interval{0};
};

udp_echo_plan plan_from_flags(const udp_echo_flags& f) {
    udp_echo_plan p;
    if (f.listen.empty()) {
        throw usage_error("udp-echo: --listen is required (e.g. --listen 127.0.0.1:2000-2009)");
    }
    for (const auto& l : f.listen) {
        auto eps = parse_listen(l);
        for (const auto& e : eps) {
            if (!e.is_ip()) {
                throw usage_error("udp-echo: --listen \"" + l + "\" is not an IP address");
            }
        }
        p.listen.insert(p.listen.end(), eps.begin(), eps.end());
        p.listen_text += (p.listen_text.empty() ? "" : ", ") + l;
    }
    if (f.batch < 1 || f.batch > 1024) {
        throw usage_error("udp-echo: --batch must be between 1 and 1024");
    }
    if (f.queue < 1 || f.queue > (1U << 20)) {
        throw usage_error("udp-echo: --queue must be between 1 and 1048576 datagrams");
    }
    p.options.batch = f.batch;
    p.options.queue = f.queue;
    if (!f.queue_bytes.empty()) {
        p.options.queue_bytes = parse_size(f.queue_bytes, "--queue-bytes");
        if (p.options.queue_bytes < 65536 || p.options.queue_bytes > (1ULL << 32)) {
            throw usage_error("udp-echo: --queue-bytes must be between 64K and 4G");
        }
    }
    if (f.mode == "batch") {
        p.options.mode = udp_echo_mode::batch;
    } else if (f.mode == "simple") {
        p.options.mode = udp_echo_mode::simple;
    } else {
        throw usage_error("udp-echo: --mode \"" + f.mode + "\" is not a mode (batch, simple)");
    }
    if (f.gso == "auto") {
        p.options.gso = udp_offload::automatic;
    } else if (f.gso == "on") {
        p.options.gso = udp_offload::on;
    } else if (f.gso == "off") {
        p.options.gso = udp_offload::off;
    } else {
        throw usage_error("udp-echo: --gso \"" + f.gso + "\" is not a setting (auto, on, off)");
    }
    if (p.options.gso == udp_offload::on && p.options.mode == udp_echo_mode::simple) {
        throw usage_error("udp-echo: --gso on needs --mode batch");
    }
    if (!f.rcvbuf.empty()) {
        p.rcvbuf = parse_size(f.rcvbuf, "--rcvbuf");
        if (p.rcvbuf == 0 || p.rcvbuf > (1U << 30)) {
            throw usage_error("udp-echo: --rcvbuf must be between 1 and 1G");
        }
    }
    if (!f.stats_interval.empty()) {
        p.stats_interval = parse_duration(f.stats_interval, "--stats-interval");
        if (p.stats_interval < 10ms) {
            throw usage_error("udp-echo: --stats-interval must be at least 10ms");
        }
    }
    return p;
}

struct echo_totals {
    std::uint64_t received = 0, echoed = 0, dropped = 0, send_errors = 0;
    std::uint64_t recv_calls = 0, send_calls = 0;
};

echo_totals sum(const std::vector<udp_echo_counters>& all) {
    echo_totals t;
    for (const auto& c : all) {
        t.received += c.received;
        t.echoed += c.echoed;
        t.dropped += c.dropped;
        t.send_errors += c.send_errors;
        t.recv_calls += c.recv_calls;
        t.send_calls += c.send_calls;
    }
    return t;
}

// Shared by the echo tasks and the main task, all on one loop.
struct server_state {
    std::vector<udp_echo_counters> counters;
    std::string failure; // the first echo task that ended with an error
};

task<void> echo_one(udp_socket sock, endpoint at, udp_echo_options options,
                    udp_echo_counters* counters, server_state* state) {
    auto r = co_await udp_echo(std::move(sock), options, counters);
    if (!r && state->failure.empty()) {
        state->failure = at.to_string() + ": " + r.error().message();
    }
}

task<result<int>> next_signal(signal_set* signals) {
    co_return co_await signals->next();
}

task<int> serve(event_loop* loop, udp_echo_plan plan, server_state* state) {
    // Before any socket exists, so a signal during start-up is not the default death.
    auto signals = signal_set::open(*loop, {SIGINT, SIGTERM});
    if (!signals) {
        throw runtime_failure("udp-echo: signals: " + signals.error().message());
    }
    std::vector<udp_socket> sockets;
    std::vector<endpoint> bound;
    for (const auto& at : plan.listen) {
        auto s = udp_socket::bind(*loop, at);
        if (!s) {
            throw runtime_failure("udp-echo: cannot listen on " + at.to_string() + ": " +
                                  s.error().message());
        }
        if (plan.rcvbuf != 0) {
            if (auto r = sys::set_int_option(s->fd(), SOL_SOCKET, SO_RCVBUF,
                                             static_cast<int>(plan.rcvbuf));
                !r) {
                throw runtime_failure("udp-echo: SO_RCVBUF: " + r.error().message());
            }
        }
        if (plan.options.gso == udp_offload::on) {
            auto gro = s->set_gro(true);
            if (!s->gso_supported() || !gro || !*gro) {
                throw runtime_failure("udp-echo: --gso on: this kernel does not offer UDP_GRO "
                                      "and UDP_SEGMENT on UDP sockets (use --gso auto)");
            }
        }
        bound.push_back(s->local_endpoint().value_or(at));
        sockets.push_back(std::move(*s));
    }
    state->counters.assign(sockets.size(), udp_echo_counters{});
    for (std::size_t i = 0; i < sockets.size(); ++i) {
        loop->spawn(
            echo_one(std::move(sockets[i]), bound[i], plan.options, &state->counters[i], state));
    }
    // Offloads are settled once the tasks ran their start: report after one turn.
    co_await yield(*loop);
    const bool batch = plan.options.mode == udp_echo_mode::batch;
    const bool gso = !state->counters.empty() && state->counters.front().gso;
    std::string where = bound.size() == 1
                            ? bound.front().to_string()
                            : bound.front().to_string() + " ... " + bound.back().to_string() +
                                  " (" + std::to_string(bound.size()) + " sockets)";
    spdlog::info("udp-echo: listening on {} (mode {}, batch {}, queue {}, gso {})", where,
                 batch ? "batch" : "simple", batch ? plan.options.batch : 1, plan.options.queue,
                 gso ? "on" : "off");

    // Wake at least every 200 ms to notice a failed socket; print stats when due.
    const auto tick = plan.stats_interval.count() > 0
                          ? std::min<clock::duration>(plan.stats_interval, 200ms)
                          : clock::duration(200ms);
    auto next_stats = clock::now() + plan.stats_interval;
    echo_totals last{};
    auto last_at = clock::now();
    while (true) {
        auto sig = co_await with_timeout(*loop, next_signal(&*signals), tick);
        if (!state->failure.empty()) {
            throw runtime_failure("udp-echo: " + state->failure);
        }
        if (sig) {
            const echo_totals t = sum(state->counters);
            std::fprintf(stderr,
                         "zcio udp-echo: %s: received %llu echoed %llu dropped %llu "
                         "send-errors %llu (system calls: %llu receives, %llu sends)\n",
                         *sig == SIGINT ? "SIGINT" : "SIGTERM",
                         static_cast<unsigned long long>(t.received),
                         static_cast<unsigned long long>(t.echoed),
                         static_cast<unsigned long long>(t.dropped),
                         static_cast<unsigned long long>(t.send_errors),
                         static_cast<unsigned long long>(t.recv_calls),
                         static_cast<unsigned long long>(t.send_calls));
            co_return 0;
        }
        if (sig.error() != std::errc::timed_out) {
            throw runtime_failure("udp-echo: signals: " + sig.error().message());
        }
        if (plan.stats_interval.count() > 0 && clock::now() >= next_stats) {
            const auto now = clock::now();
            const echo_totals t = sum(state->counters);
            const double secs = std::chrono::duration<double>(now - last_at).count();
            spdlog::info("udp-echo: received {} echoed {} dropped {} send-errors {} "
                         "({:.0f} echoed/s)",
                         t.received, t.echoed, t.dropped, t.send_errors,
                         secs > 0 ? static_cast<double>(t.echoed - last.echoed) / secs : 0.0);
            last = t;
            last_at = now;
            next_stats = now + plan.stats_interval;
        }
    }
}

int run_udp_echo(const udp_echo_flags& flags) {
    const udp_echo_plan plan = plan_from_flags(flags);
    server_state state; // outlives the loop: the tasks write its counters
    event_loop loop;
    return loop.block_on(serve(&loop, plan, &state));
}

} // namespace

subcommand add_udp_echo_command(CLI::App& app) {
    auto flags = std::make_shared<udp_echo_flags>();
    auto* sub = app.add_subcommand(
        "udp-echo", "UDP echo server: every datagram goes back to its sender, unchanged "
                    "(recvmmsg/sendmmsg batches, GRO/GSO where the kernel has them)");
    sub->add_option("-l,--listen", flags->listen,
                    "Address to receive on; repeatable. HOST:PORT, [::1]:PORT, or "
                    "HOST:FIRST-LAST for one socket per port of the range; a bare PORT means "
                    "127.0.0.1");
    sub->add_option("--batch", flags->batch, "Datagrams per recvmmsg/sendmmsg, 1 to 1024")
        ->capture_default_str();
    sub->add_option("--queue", flags->queue,
                    "Datagrams waiting to be echoed per socket; more are dropped and counted")
        ->capture_default_str();
    sub->add_option("--queue-bytes", flags->queue_bytes,
                    "Bytes waiting to be echoed per socket (e.g. 4M); default: 2 KiB per "
                    "--queue slot, at least 256 KiB");
    sub->add_option("--mode", flags->mode,
                    "batch (recvmmsg/sendmmsg) or simple (one recvmsg and sendto per datagram)")
        ->capture_default_str();
    sub->add_option("--gso", flags->gso,
                    "auto, on or off: UDP_GRO on receive and UDP_SEGMENT on send (batch mode)")
        ->capture_default_str();
    sub->add_option("--rcvbuf", flags->rcvbuf,
                    "SO_RCVBUF of every socket (e.g. 4M; the kernel caps it at "
                    "net.core.rmem_max); default: the kernel's");
    sub->add_option("--stats-interval", flags->stats_interval,
                    "Print received/echoed/dropped counts this often (e.g. 5s)");
    return {sub, [flags] { return run_udp_echo(*flags); }};
}

} // namespace zcio::cli
