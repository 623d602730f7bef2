// udp-multisocket-set: ten UDP echo sockets, one task each, held in a task set.
//
//   udp-multisocket-set [--port 9100] [--quiet]
//       ports PORT..PORT+9 (port 0: ten ports the kernel picks)
//
// One of three ways to serve many sockets (compare udp-multisocket-join and
// udp-multisocket-spawn). The tasks belong to a task_set (the idea of tokio's JoinSet
// or a FuturesUnordered): the set starts them, can be awaited until all ended, and
// destroying it destroys whatever still runs, which cancels it (every zcio awaitable
// unhooks itself from the loop when its coroutine is destroyed).
//
// What the set does not do is get in the way of wake-ups: each member parks on its own
// socket, so when a datagram arrives the loop resumes exactly that member and nobody
// else; the set is not involved and the other nine are not polled. The line printed
// per datagram shows which task was resumed. Compare udp-multisocket-join, where one
// task waits for all ten sockets and looks at every one of them on every wake-up.
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

// Tasks owned together. add() starts a task at once (it runs until it first waits);
// co_await join() waits until every member ended; the destructor destroys the members
// that are still suspended.
class task_set {
public:
    explicit task_set(zcio::event_loop& loop) : loop_(&loop) {}
    task_set(const task_set&) = delete;
    task_set& operator=(const task_set&) = delete;

    void add(task<void> t) {
        members_.push_back(member(this, std::move(t)));
        ++running_;
        members_.back().handle().resume();
    }

    [[nodiscard]] std::size_t running() const noexcept { return running_; }

    auto join() noexcept {
        struct awaiter {
            task_set* set;
            bool await_ready() const noexcept { return set->running_ == 0; }
            void await_suspend(std::coroutine_handle<> h) noexcept { set->joiner_ = h; }
            void await_resume() const noexcept {}
        };
        return awaiter{this};
    }

private:
    // Wraps a member to tell the set when it ended (by value: tasks are lazy).
    static task<void> member(task_set* set, task<void> t) {
        co_await std::move(t);
        set->ended();
    }

    void ended() {
        if (--running_ == 0 && joiner_) {
            // Not resumed from here: this runs inside a member's frame, and the joiner
            // may destroy the set (and that frame) as soon as it runs. post() resumes it
            // from the loop, once this member reached its end.
            loop_->post([h = std::exchange(joiner_, {})] { h.resume(); });
        }
    }

    zcio::event_loop* loop_;
    std::vector<task<void>> members_;
    std::size_t running_ = 0;
    std::coroutine_handle<> joiner_;
};

struct counters {
    unsigned long long received = 0, echoed = 0, dropped = 0, resumes = 0;
};

task<void> echo_task(zcio::event_loop* loop, zcio::udp_socket* sock, std::size_t index, counters* c,
                     bool quiet) {
    auto buf = std::make_unique_for_overwrite<std::byte[]>(max_datagram);
    std::size_t since_yield = 0;
    while (true) {
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
            std::printf("set: datagram on socket %zu: resumed task %zu of the set, and no "
                        "other%s\n",
                        index, index, will_suspend ? "" : " (no wait: it was still running)");
        }
        if (++since_yield == 256) {
            since_yield = 0;
            co_await zcio::yield(*loop);
        }
    }
}

task<int> run(zcio::event_loop* loop, std::vector<zcio::udp_socket>* socks, counters* c,
              bool quiet) {
    task_set set(*loop); // destroyed before the sockets: members never outlive them
    for (std::size_t i = 0; i < socks->size(); ++i) {
        set.add(echo_task(loop, &(*socks)[i], i, c, quiet));
    }
    // (A named vector: g++ 12 rejects a braced list inside a co_await expression.)
    std::vector<int> stop_signals{SIGINT, SIGTERM};
    auto sig = co_await zcio::wait_signal(*loop, stop_signals);
    for (auto& s : *socks) {
        s.close(); // members resume with operation_canceled and end
    }
    co_await set.join();
    std::fflush(stdout);
    std::fprintf(stderr,
                 "udp-multisocket-set: %s: received %llu echoed %llu dropped %llu; "
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
            std::fprintf(stderr, "usage: udp-multisocket-set [--port N] [--quiet]\n");
            return 2;
        }
    }
    zcio::event_loop loop;
    std::vector<zcio::udp_socket> socks;
    for (std::size_t i = 0; i < sockets; ++i) {
        const auto p = port == 0 ? 0 : static_cast<std::uint16_t>(port + i);
        auto s = zcio::udp_socket::bind(loop, zcio::endpoint::ipv4_loopback(p));
        if (!s) {
            std::fprintf(stderr, "udp-multisocket-set: bind port %u: %s\n", p,
                         s.error().message().c_str());
            return 1;
        }
        std::printf("udp-multisocket-set: listening on %s\n",
                    s->local_endpoint().value_or(zcio::endpoint{}).to_string().c_str());
        socks.push_back(std::move(*s));
    }
    std::fflush(stdout);
    counters c;
    return loop.block_on(run(&loop, &socks, &c, quiet));
}
