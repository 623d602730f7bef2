// udp-multisocket-join: ten UDP echo sockets awaited together by one task.
//
//   udp-multisocket-join [--port 9100] [--quiet]
//       ports PORT..PORT+9 (port 0: ten ports the kernel picks)
//
// One of three ways to serve many sockets (compare udp-multisocket-spawn and
// udp-multisocket-set). Here a single task serves all ten, the way a join of ten
// futures inside one task works (Rust's join!/join_all): the task is woken when any
// socket is ready, and it does not know which, so it polls every socket, trying a
// non-blocking receive on each until EAGAIN. One datagram on one socket costs ten
// receive calls, nine of them EAGAIN; the line printed per wake-up shows it. With
// one task per socket (spawn, set) the loop resumes exactly the task whose socket is
// ready.
//
// How one coroutine waits for ten sockets: a zcio io_handle parks one waiter per
// direction, so the waiting is done by ten tiny watcher coroutines, one per socket,
// each parked on its socket's readability. They do no I/O: when a socket turns
// readable, its watcher resumes the joined task, which polls all ten and parks again;
// then the watcher parks again too. (The joined task clears each socket's cached
// readiness when the receive says EAGAIN, so a watcher only wakes for a new edge.)
//
// Echoes go out with a non-blocking send; one the socket refuses (EAGAIN, which a UDP
// socket on loopback never says) is dropped and counted.
#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/signal_set.hpp>
#include <zcio/task.hpp>
#include <zcio/udp_socket.hpp>

#include <coroutine>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using zcio::task;

constexpr std::size_t sockets = 10;
constexpr std::size_t max_datagram = 65536;

struct joined {
    std::vector<zcio::udp_socket> socks;
    std::coroutine_handle<> parked; // the joined task while it waits
    std::size_t woken_by = 0;
    bool closing = false;
    bool quiet = false;
    unsigned long long received = 0, echoed = 0, dropped = 0, wakeups = 0, polls = 0;

    // Resumes the joined task right here; it polls and parks again before this returns.
    void wake(std::size_t by) {
        woken_by = by;
        if (auto h = std::exchange(parked, {})) {
            h.resume();
        }
    }
};

// co_await park{j}: suspends the joined task until a watcher wakes it.
struct park {
    joined* j;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept { j->parked = h; }
    void await_resume() const noexcept {}
    ~park() { j->parked = {}; }
};

// The one task that serves all ten sockets.
task<void> joined_task(joined* j) {
    auto buf = std::make_unique_for_overwrite<std::byte[]>(max_datagram);
    while (!j->closing) {
        std::size_t with_data = 0;
        std::size_t got_here = 0;
        // Poll every socket: the wake-up did not say which one is ready.
        for (std::size_t k = 0; k < j->socks.size(); ++k) {
            zcio::udp_socket& s = j->socks[k];
            bool any = false;
            for (std::size_t budget = 0; budget < 64; ++budget) {
                ++j->polls;
                auto got = zcio::udp_socket::receive(s.fd(), std::span(buf.get(), max_datagram));
                if (!got) {
                    if (zcio::would_block(got)) {
                        s.handle().clear_ready(zcio::io_direction::read); // wait for an edge
                    }
                    break;
                }
                any = true;
                ++got_here;
                ++j->received;
                auto n = zcio::udp_socket::send(s.fd(), std::span(buf.get(), got->size), got->from);
                (n ? j->echoed : j->dropped) += 1;
            }
            with_data += any ? 1 : 0;
        }
        if (!j->quiet && got_here > 0) {
            std::printf("join: woken by socket %zu: the one task polled all %zu sockets, "
                        "%zu had data, echoed %zu\n",
                        j->woken_by, j->socks.size(), with_data, got_here);
        }
        co_await park{j};
        ++j->wakeups;
    }
}

// Waits for one socket's readability and forwards it to the joined task.
task<void> watcher(joined* j, std::size_t k) {
    while (true) {
        auto ready = co_await zcio::readable(j->socks[k].handle());
        if (!ready) {
            break; // the socket was closed
        }
        // Readiness still cached after the joined task ran means it stopped at its
        // budget: wake it again; it is the same as a new edge.
        j->wake(k);
        if (j->closing) {
            break;
        }
        // Give the loop a turn if the socket is still readable (budget exhausted), so
        // a flooded socket cannot keep this watcher and the joined task spinning.
        if (j->socks[k].handle().ready(zcio::io_direction::read)) {
            co_await zcio::yield(j->socks[k].handle().loop());
        }
    }
    j->closing = true;
    j->wake(k); // lets the joined task see `closing` and end
}

task<int> run(zcio::event_loop* loop, joined* j) {
    loop->spawn(joined_task(j)); // first: it polls once and parks
    for (std::size_t k = 0; k < j->socks.size(); ++k) {
        loop->spawn(watcher(j, k));
    }
    // (A named vector: g++ 12 rejects a braced list inside a co_await expression.)
    std::vector<int> stop_signals{SIGINT, SIGTERM};
    auto sig = co_await zcio::wait_signal(*loop, stop_signals);
    for (auto& s : j->socks) {
        s.close(); // the watchers resume with operation_canceled
    }
    while (loop->spawned_count() > 0) {
        co_await zcio::yield(*loop);
    }
    std::fflush(stdout);
    std::fprintf(stderr,
                 "udp-multisocket-join: %s: received %llu echoed %llu dropped %llu; "
                 "wake-ups %llu, receive calls %llu\n",
                 sig && *sig == SIGINT ? "SIGINT" : "SIGTERM", j->received, j->echoed, j->dropped,
                 j->wakeups, j->polls);
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
            std::fprintf(stderr, "usage: udp-multisocket-join [--port N] [--quiet]\n");
            return 2;
        }
    }
    zcio::event_loop loop;
    joined j;
    j.quiet = quiet;
    for (std::size_t i = 0; i < sockets; ++i) {
        const auto p = port == 0 ? 0 : static_cast<std::uint16_t>(port + i);
        auto s = zcio::udp_socket::bind(loop, zcio::endpoint::ipv4_loopback(p));
        if (!s) {
            std::fprintf(stderr, "udp-multisocket-join: bind port %u: %s\n", p,
                         s.error().message().c_str());
            return 1;
        }
        std::printf("udp-multisocket-join: listening on %s\n",
                    s->local_endpoint().value_or(zcio::endpoint{}).to_string().c_str());
        j.socks.push_back(std::move(*s));
    }
    std::fflush(stdout);
    return loop.block_on(run(&loop, &j));
}
