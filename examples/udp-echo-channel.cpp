// udp-echo-channel: a UDP echo server as a reader task and a writer task joined by a
// bounded channel.
//
//   udp-echo-channel [--port 9000] [--queue 64]      (port 0: the kernel picks one)
//
// Step five of the progression, and the shape of `zcio udp-echo` (src/transfer/
// udp_echo.cpp). Each task does one thing and may wait for it without holding up the
// other: the reader waits only for datagrams, the writer only for the socket to be
// writable, or for the channel to have something.
//
// The channel is bounded and the reader never waits for room: when it is full the
// datagram is read, dropped and counted. So reads never stop because a send is
// pending, and memory never grows past the channel's slots, which are allocated once.
//
// How the writer is woken: both tasks run on one loop, one thread. When the reader
// pushes into an empty channel while the writer waits for one, it resumes the writer
// right there (a direct coroutine resume, no trip through the loop): the writer sends
// until it must wait again, for the socket (the loop resumes it on the next writable
// edge) or for the channel, and then the reader carries on. Resuming inline is safe
// here because nothing the writer does can destroy the reader or the channel.
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
#include <cstring>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

namespace {

using zcio::task;

constexpr std::size_t max_datagram = 65536;

// A bounded single-producer, single-consumer channel of datagrams between two
// coroutines of one loop. The producer fills a slot in place (no copy, no allocation):
// begin_push() lends it, end_push() publishes it. The consumer awaits next(), uses the
// slot and pop()s it.
class datagram_channel {
public:
    struct datagram {
        std::unique_ptr<std::byte[]> bytes =
            std::make_unique_for_overwrite<std::byte[]>(max_datagram);
        std::size_t size = 0;
        zcio::endpoint peer;
    };

    explicit datagram_channel(std::size_t capacity) : slots_(capacity) {}

    // A free slot to fill, or null when the channel is full.
    datagram* begin_push() noexcept {
        return count_ == slots_.size() ? nullptr : &slots_[(head_ + count_) % slots_.size()];
    }
    // Publishes the slot begin_push() lent, and runs a waiting consumer at once.
    void end_push() {
        ++count_;
        wake();
    }

    // co_await ch.next(): the oldest datagram, or null once the channel is closed.
    // The consumer must pop() it before the next next().
    auto next() noexcept {
        struct awaiter {
            datagram_channel* ch;
            bool await_ready() const noexcept { return ch->count_ > 0 || ch->closed_; }
            void await_suspend(std::coroutine_handle<> h) noexcept { ch->consumer_ = h; }
            datagram* await_resume() const noexcept {
                return ch->count_ > 0 ? &ch->slots_[ch->head_] : nullptr;
            }
            // A consumer destroyed while it waits must not be resumed later.
            ~awaiter() { ch->consumer_ = {}; }
        };
        return awaiter{this};
    }
    void pop() noexcept {
        head_ = (head_ + 1) % slots_.size();
        --count_;
    }

    // Wakes the consumer; next() returns null once the channel is empty.
    void close() {
        closed_ = true;
        wake();
    }

private:
    void wake() {
        if (auto h = std::exchange(consumer_, {})) {
            h.resume();
        }
    }

    std::vector<datagram> slots_;
    std::size_t head_ = 0;
    std::size_t count_ = 0;
    bool closed_ = false;
    std::coroutine_handle<> consumer_;
};

struct counters {
    unsigned long long received = 0, echoed = 0, dropped = 0;
};

// Reads datagrams into the channel until the socket is closed.
task<void> reader(zcio::event_loop* loop, zcio::udp_socket* sock, datagram_channel* ch,
                  counters* c) {
    auto spare = std::make_unique_for_overwrite<std::byte[]>(max_datagram); // for drops
    std::size_t since_yield = 0;
    while (true) {
        datagram_channel::datagram* d = ch->begin_push();
        auto got = co_await sock->recv_from(
            std::span(d != nullptr ? d->bytes.get() : spare.get(), max_datagram));
        if (!got) {
            if (got.error() == std::errc::operation_canceled) {
                break;
            }
            continue;
        }
        ++c->received;
        if (d == nullptr && (d = ch->begin_push()) != nullptr) {
            // The writer made room while we waited: keep it after all.
            std::memcpy(d->bytes.get(), spare.get(), got->size);
        }
        if (d == nullptr) {
            ++c->dropped; // full: the datagram was read anyway, and is dropped
        } else {
            d->size = got->size;
            d->peer = got->from;
            ch->end_push(); // may run the writer right here, until it waits again
        }
        if (++since_yield == 256) { // let the rest of the loop run under a flood
            since_yield = 0;
            co_await zcio::yield(*loop);
        }
    }
    ch->close();
}

// Sends what the channel holds, waiting for writability when the socket says EAGAIN.
task<void> writer(zcio::udp_socket* sock, datagram_channel* ch, counters* c) {
    while (auto* d = co_await ch->next()) {
        auto n = co_await sock->send_to(std::span(d->bytes.get(), d->size), d->peer);
        if (!n && n.error() == std::errc::operation_canceled) {
            break;
        }
        (n ? c->echoed : c->dropped) += 1;
        ch->pop();
    }
}

task<int> run(zcio::event_loop* loop, zcio::udp_socket* sock, datagram_channel* ch, counters* c) {
    loop->spawn(writer(sock, ch, c)); // waits on the empty channel
    loop->spawn(reader(loop, sock, ch, c));
    // (A named vector: g++ 12 rejects a braced list inside a co_await expression.)
    std::vector<int> stop_signals{SIGINT, SIGTERM};
    auto sig = co_await zcio::wait_signal(*loop, stop_signals);
    sock->close(); // the reader ends and closes the channel, which ends the writer
    while (loop->spawned_count() > 0) {
        co_await zcio::yield(*loop);
    }
    std::fprintf(stderr, "udp-echo-channel: %s: received %llu echoed %llu dropped %llu\n",
                 sig && *sig == SIGINT ? "SIGINT" : "SIGTERM", c->received, c->echoed, c->dropped);
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
            std::fprintf(stderr, "usage: udp-echo-channel [--port N] [--queue N]\n");
            return 2;
        }
    }
    zcio::event_loop loop;
    auto sock = zcio::udp_socket::bind(
        loop, zcio::endpoint::ipv4_loopback(static_cast<std::uint16_t>(port)));
    if (!sock) {
        std::fprintf(stderr, "udp-echo-channel: bind: %s\n", sock.error().message().c_str());
        return 1;
    }
    datagram_channel ch(queue_size);
    counters c;
    std::printf("udp-echo-channel: listening on %s\n",
                sock->local_endpoint().value_or(zcio::endpoint{}).to_string().c_str());
    std::fflush(stdout);
    return loop.block_on(run(&loop, &*sock, &ch, &c));
}
