// udp-echo-loop: a UDP echo server on zcio's event loop and coroutines.
//
//   udp-echo-loop [--port 9000] [--queue 64]      (port 0: the kernel picks one)
//
// Step four of the progression: the edge-triggered loop of udp-echo-epoll-edge, with
// the bookkeeping moved into the library. `co_await sock.recv_from(buf)` makes the
// system call first and suspends only on EAGAIN; the loop keeps the readiness flags
// (io_handle) and resumes the coroutine on the next edge. The code reads like blocking
// code, but one thread serves everything.
//
// Reads and writes are multiplexed without a second coroutine most of the time: after
// each datagram the reader tries to send the echo at once, with a non-blocking sendto
// that never waits. Only when that says EAGAIN does the echo go to a bounded queue, and
// a flusher coroutine is spawned that waits for the socket to turn writable and drains
// the queue, while the reader goes on reading (into the queue, or dropping and counting
// when it is full). Echoes keep their order: while the queue holds anything, new echoes
// go behind it. (On loopback a UDP send never says EAGAIN, so the flusher only shows up
// on real networks; the same code paths run with udp-echo-channel's reader and writer.)
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
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

namespace {

using zcio::task;

constexpr std::size_t max_datagram = 65536;

struct server {
    zcio::udp_socket sock;
    // The queue of echoes a send refused (EAGAIN): a ring of fixed slots.
    struct slot {
        std::unique_ptr<std::byte[]> data =
            std::make_unique_for_overwrite<std::byte[]>(max_datagram);
        std::size_t size = 0;
        zcio::endpoint peer;
    };
    std::vector<slot> queue;
    std::size_t head = 0;
    std::size_t count = 0;
    bool flushing = false; // a flusher coroutine is running
    unsigned long long received = 0, echoed = 0, dropped = 0;
};

// Sends the queued echoes, waiting (co_await) whenever the socket is not writable, and
// ends when the queue is empty. The reader spawns it on demand.
task<void> flush(server* s) {
    while (s->count > 0) {
        server::slot& q = s->queue[s->head];
        auto n = co_await s->sock.send_to(std::span(q.data.get(), q.size), q.peer);
        if (!n && n.error() == std::errc::operation_canceled) {
            break; // the socket was closed
        }
        (n ? s->echoed : s->dropped) += 1;
        s->head = (s->head + 1) % s->queue.size();
        --s->count;
    }
    s->flushing = false;
}

task<void> receive(zcio::event_loop* loop, server* s) {
    auto buf = std::make_unique_for_overwrite<std::byte[]>(max_datagram);
    std::size_t since_yield = 0;
    while (true) {
        // Returns at once while datagrams are queued; suspends only on EAGAIN.
        auto got = co_await s->sock.recv_from(std::span(buf.get(), max_datagram));
        if (!got) {
            if (got.error() == std::errc::operation_canceled) {
                co_return; // closed by main()
            }
            continue;
        }
        ++s->received;
        const auto data = std::span(buf.get(), got->size);
        if (s->count == 0) {
            // Nothing is waiting: send now, without waiting (udp_socket::send is one
            // non-blocking sendto; EAGAIN comes back as a value).
            auto n = zcio::udp_socket::send(s->sock.fd(), data, got->from);
            if (n) {
                ++s->echoed;
                continue;
            }
            if (!zcio::would_block(n)) {
                ++s->dropped;
                continue;
            }
        }
        if (s->count == s->queue.size()) {
            ++s->dropped; // full: drop and count, and go on reading
            continue;
        }
        server::slot& q = s->queue[(s->head + s->count) % s->queue.size()];
        std::memcpy(q.data.get(), data.data(), data.size());
        q.size = data.size();
        q.peer = got->from;
        ++s->count;
        if (!s->flushing) {
            s->flushing = true;
            loop->spawn(flush(s));
        }
        // Edge-triggered fairness: a flooded socket never says EAGAIN, so let the
        // loop's other work (the flusher, the signal) run now and then.
        if (++since_yield == 256) {
            since_yield = 0;
            co_await zcio::yield(*loop);
        }
    }
}

task<int> run(zcio::event_loop* loop, server* s) {
    loop->spawn(receive(loop, s));
    // (A named vector: g++ 12 rejects a braced list inside a co_await expression.)
    std::vector<int> stop_signals{SIGINT, SIGTERM};
    auto sig = co_await zcio::wait_signal(*loop, stop_signals);
    // Closing the socket resumes the reader and any flusher with operation_canceled;
    // they end, and then nothing refers to `s` any more.
    s->sock.close();
    while (loop->spawned_count() > 0) {
        co_await zcio::yield(*loop);
    }
    std::fprintf(stderr, "udp-echo-loop: %s: received %llu echoed %llu dropped %llu\n",
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
    unsigned long queue_size = 64;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--port" && i + 1 < argc && parse_number(argv[i + 1], 65535, &port)) {
            ++i;
        } else if (a == "--queue" && i + 1 < argc &&
                   parse_number(argv[i + 1], 1 << 16, &queue_size) && queue_size > 0) {
            ++i;
        } else {
            std::fprintf(stderr, "usage: udp-echo-loop [--port N] [--queue N]\n");
            return 2;
        }
    }
    zcio::event_loop loop;
    auto sock = zcio::udp_socket::bind(
        loop, zcio::endpoint::ipv4_loopback(static_cast<std::uint16_t>(port)));
    if (!sock) {
        std::fprintf(stderr, "udp-echo-loop: bind: %s\n", sock.error().message().c_str());
        return 1;
    }
    server s{std::move(*sock), std::vector<server::slot>(queue_size)};
    std::printf("udp-echo-loop: listening on %s\n",
                s.sock.local_endpoint().value_or(zcio::endpoint{}).to_string().c_str());
    std::fflush(stdout);
    return loop.block_on(run(&loop, &s));
}
