// loop-mixed-events: one event loop that receives socket events and events posted from
// another thread.
//
//   loop-mixed-events [--port 9000] [--tick-ms 2000]      (port 0: the kernel picks one)
//
// A UDP echo server runs on the loop (a reader task that sends each echo at once, or
// queues it for a writer when the socket says EAGAIN, as in udp-echo-loop) while a
// plain std::thread, a timer, posts a function to the loop every --tick-ms. The posted
// function runs on the loop's thread, between coroutines, so it may read the echo
// counters without locks: that is the whole point of post().
//
// How the wake-up works. The loop sleeps in epoll_wait() on its sockets and on one
// eventfd. post() appends the function to a queue under a mutex and then writes 1 to the
// eventfd, which makes it readable, so epoll_wait() returns; the loop reads the eventfd
// (resetting its counter to 0) and runs the queued functions. A post never gets lost,
// whatever the loop is doing at that moment:
//  - if the loop is busy running coroutines (not in epoll_wait), the eventfd write still
//    happens and the counter stays non-zero, so the next epoll_wait() returns at once;
//  - the loop clears its "wake-up pending" flag before it takes the queued functions,
//    so a post that lands while it runs them writes the eventfd again and is picked up
//    on the next turn; posts between those two moments are in the batch it takes.
// Only the first post of a batch writes the eventfd (the flag says one is on its way),
// so a burst of posts costs one write and one wake-up.
#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/signal_set.hpp>
#include <zcio/task.hpp>
#include <zcio/udp_socket.hpp>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <vector>

namespace {

using zcio::task;

constexpr std::size_t max_datagram = 65536;
constexpr std::size_t queue_limit = 64;

struct server {
    zcio::udp_socket sock;
    struct echo {
        std::vector<std::byte> bytes;
        zcio::endpoint peer;
    };
    std::deque<echo> waiting; // echoes a send refused (EAGAIN), at most queue_limit
    bool writer_running = false;
    unsigned long long received = 0, echoed = 0, dropped = 0;
};

task<void> writer(server* s) {
    while (!s->waiting.empty()) {
        auto n = co_await s->sock.send_to(s->waiting.front().bytes, s->waiting.front().peer);
        if (!n && n.error() == std::errc::operation_canceled) {
            break;
        }
        (n ? s->echoed : s->dropped) += 1;
        s->waiting.pop_front();
    }
    s->writer_running = false;
}

task<void> reader(zcio::event_loop* loop, server* s) {
    auto buf = std::make_unique_for_overwrite<std::byte[]>(max_datagram);
    std::size_t since_yield = 0;
    while (true) {
        auto got = co_await s->sock.recv_from(std::span(buf.get(), max_datagram));
        if (!got) {
            if (got.error() == std::errc::operation_canceled) {
                co_return;
            }
            continue;
        }
        ++s->received;
        const auto data = std::span(buf.get(), got->size);
        if (s->waiting.empty()) {
            auto n = zcio::udp_socket::send(s->sock.fd(), data, got->from);
            if (n || !zcio::would_block(n)) {
                (n ? s->echoed : s->dropped) += 1;
                continue;
            }
        }
        if (s->waiting.size() == queue_limit) {
            ++s->dropped;
            continue;
        }
        s->waiting.push_back({{data.begin(), data.end()}, got->from});
        if (!s->writer_running) {
            s->writer_running = true;
            loop->spawn(writer(s));
        }
        if (++since_yield == 256) {
            since_yield = 0;
            co_await zcio::yield(*loop);
        }
    }
}

// The other thread: sleeps, posts, sleeps... until told to stop.
struct ticker {
    std::mutex mutex;
    std::condition_variable cv;
    bool stop = false;

    void run(zcio::event_loop* loop, server* s, std::chrono::milliseconds every) {
        std::unique_lock lock(mutex);
        for (unsigned long tick = 1; !cv.wait_for(lock, every, [this] { return stop; }); ++tick) {
            // Runs later, on the loop's thread: reading the counters there is safe.
            loop->post([s, tick] {
                std::printf("loop-mixed-events: tick %lu (posted from the timer thread): "
                            "received %llu echoed %llu dropped %llu\n",
                            tick, s->received, s->echoed, s->dropped);
                std::fflush(stdout);
            });
        }
    }
};

task<int> run(zcio::event_loop* loop, server* s) {
    loop->spawn(reader(loop, s));
    // (A named vector: g++ 12 rejects a braced list inside a co_await expression.)
    std::vector<int> stop_signals{SIGINT, SIGTERM};
    auto sig = co_await zcio::wait_signal(*loop, stop_signals);
    s->sock.close();
    while (loop->spawned_count() > 0) {
        co_await zcio::yield(*loop);
    }
    std::fprintf(stderr, "loop-mixed-events: %s: received %llu echoed %llu dropped %llu\n",
                 sig && *sig == SIGINT ? "SIGINT" : "SIGTERM", s->received, s->echoed, s->dropped);
    co_return 0;
}

bool parse_number(const char* text, unsigned long max, unsigned long* out) {
    char* end = nullptr;
    const unsigned long v = std::strtoul(text, &end, 10);
    if (end == text || *end != '\0' || v > max) {
        return false;
    }
    *out = v;
    return true;
}

} // namespace

int main(int argc, char** argv) {
    unsigned long port = 9000;
    unsigned long tick_ms = 2000;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--port" && i + 1 < argc && parse_number(argv[i + 1], 65535, &port)) {
            ++i;
        } else if (a == "--tick-ms" && i + 1 < argc &&
                   parse_number(argv[i + 1], 3600000, &tick_ms) && tick_ms > 0) {
            ++i;
        } else {
            std::fprintf(stderr, "usage: loop-mixed-events [--port N] [--tick-ms MS]\n");
            return 2;
        }
    }
    // Block SIGINT/SIGTERM before the timer thread starts, so it inherits the mask and
    // only the loop's signalfd (wait_signal) receives them.
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &mask, nullptr);

    zcio::event_loop loop;
    auto sock = zcio::udp_socket::bind(
        loop, zcio::endpoint::ipv4_loopback(static_cast<std::uint16_t>(port)));
    if (!sock) {
        std::fprintf(stderr, "loop-mixed-events: bind: %s\n", sock.error().message().c_str());
        return 1;
    }
    server s{std::move(*sock), {}, false, 0, 0, 0};
    std::printf("loop-mixed-events: listening on %s\n",
                s.sock.local_endpoint().value_or(zcio::endpoint{}).to_string().c_str());
    std::fflush(stdout);

    ticker t;
    std::thread timer([&] { t.run(&loop, &s, std::chrono::milliseconds(tick_ms)); });
    const int status = loop.block_on(run(&loop, &s));
    {
        std::lock_guard lock(t.mutex);
        t.stop = true;
    }
    t.cv.notify_one();
    timer.join();
    return status;
}
