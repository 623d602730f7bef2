// udp-multisocket-spawn: ten UDP echo sockets, one spawned task each.
//
//   udp-multisocket-spawn [--port 9100] [--quiet]
//       ports PORT..PORT+9 (port 0: ten ports the kernel picks)
//
// One of three ways to serve many sockets (compare udp-multisocket-join and
// udp-multisocket-set). Here every socket gets its own coroutine, started with
// loop.spawn() and then forgotten: the loop owns it. Each task parks on its own socket,
// so when a datagram arrives the loop resumes exactly that one task; the nine others
// stay asleep and cost nothing. The line printed per datagram shows it: only the task
// of the socket that received is resumed.
//
// The catch of "spawn and forget" is the end: nobody holds the tasks, so to stop them
// main() closes the sockets (which resumes each parked task with operation_canceled)
// and waits until loop.spawned_count() is zero. udp-multisocket-set keeps the tasks in
// a set that can be awaited and destroyed as one.
//
// Echoes go out with a non-blocking send; one the socket refuses (EAGAIN, which a UDP
// socket on loopback never says) is dropped and counted: the queueing variants are
// udp-echo-loop and udp-echo-channel.
#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/signal_set.hpp>
#include <zcio/task.hpp>
#include <zcio/udp_socket.hpp>

#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string_view>
#include <vector>

namespace {

using zcio::task;

constexpr std::size_t sockets = 10;
constexpr std::size_t max_datagram = 65536;

struct counters {
    unsigned long long received = 0, echoed = 0, dropped = 0, resumes = 0;
};

task<void> echo_task(zcio::event_loop* loop, zcio::udp_socket* sock, std::size_t index, counters* c,
                     bool quiet) {
    auto buf = std::make_unique_for_overwrite<std::byte[]>(max_datagram);
    std::size_t since_yield = 0;
    while (true) {
        // Cached readiness false: this co_await will suspend, and only this socket's
        // next edge resumes this task.
        const bool will_suspend = !sock->handle().ready(zcio::io_direction::read);
        auto got = co_await sock->recv_from(std::span(buf.get(), max_datagram));
        if (!got) {
            if (got.error() == std::errc::operation_canceled) {
                co_return;
            }
            continue;
        }
        ++c->received;
        if (will_suspend) {
            ++c->resumes;
        }
        auto n = zcio::udp_socket::send(sock->fd(), std::span(buf.get(), got->size), got->from);
        (n ? c->echoed : c->dropped) += 1;
        if (!quiet) {
            std::printf("spawn: datagram on socket %zu: resumed task %zu%s\n", index, index,
                        will_suspend ? "" : " (no wait: it was still running)");
        }
        if (++since_yield == 256) {
            since_yield = 0;
            co_await zcio::yield(*loop);
        }
    }
}

task<int> run(zcio::event_loop* loop, std::vector<zcio::udp_socket>* socks, counters* c,
              bool quiet) {
    for (std::size_t i = 0; i < socks->size(); ++i) {
        loop->spawn(echo_task(loop, &(*socks)[i], i, c, quiet));
    }
    // (A named vector: g++ 12 rejects a braced list inside a co_await expression.)
    std::vector<int> stop_signals{SIGINT, SIGTERM};
    auto sig = co_await zcio::wait_signal(*loop, stop_signals);
    for (auto& s : *socks) {
        s.close(); // each parked task resumes with operation_canceled and ends
    }
    while (loop->spawned_count() > 0) {
        co_await zcio::yield(*loop);
    }
    std::fflush(stdout);
    std::fprintf(stderr,
                 "udp-multisocket-spawn: %s: received %llu echoed %llu dropped %llu; "
                 "task resumes %llu\n",
                 sig && *sig == SIGINT ? "SIGINT" : "SIGTERM", c->received, c->echoed, c->dropped,
                 c->resumes);
    co_return 0;
}

} // namespace

int main(int argc, char** argv) {
    unsigned long port = 9100;
    bool quiet = false;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        char* end = nullptr;
        if (a == "--port" && i + 1 < argc &&
            (port = std::strtoul(argv[i + 1], &end, 10), *end == '\0' && port <= 65535 - sockets)) {
            ++i;
        } else if (a == "--quiet") {
            quiet = true;
        } else {
            std::fprintf(stderr, "usage: udp-multisocket-spawn [--port N] [--quiet]\n");
            return 2;
        }
    }
    zcio::event_loop loop;
    std::vector<zcio::udp_socket> socks;
    for (std::size_t i = 0; i < sockets; ++i) {
        const auto p = port == 0 ? 0 : static_cast<std::uint16_t>(port + i);
        auto s = zcio::udp_socket::bind(loop, zcio::endpoint::ipv4_loopback(p));
        if (!s) {
            std::fprintf(stderr, "udp-multisocket-spawn: bind port %u: %s\n", p,
                         s.error().message().c_str());
            return 1;
        }
        std::printf("udp-multisocket-spawn: listening on %s\n",
                    s->local_endpoint().value_or(zcio::endpoint{}).to_string().c_str());
        socks.push_back(std::move(*s));
    }
    std::fflush(stdout);
    counters c;
    return loop.block_on(run(&loop, &socks, &c, quiet));
}
