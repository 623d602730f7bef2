// echo_demo: one event loop runs an echo server and a client that pushes random data
// through it, then checks that every byte came back.
//
// What it shows:
//  - a listener on 127.0.0.1:0: the kernel picks the port, local_endpoint() says
//    which;
//  - spawn() for coroutines that run beside the main one (the server, the writer), all
//    on one thread: no locks anywhere;
//  - full duplex on one stream: a writer and a reader coroutine share it, so neither
//    side can stall the other by filling the socket buffers;
//  - half-close: the writer's shutdown_write() is how the server learns the data has
//    ended, and the server's own shutdown_write() is the client's end of stream;
//  - the lifetime rule for coroutines: parameters by value (a pointer is a value; what
//    it points to must outlive the coroutine, which the comments below argue).
//
// Usage: echo_demo [MiB]     (default 100)
#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/listener.hpp>
#include <zcio/result.hpp>
#include <zcio/stream.hpp>
#include <zcio/task.hpp>

#include <algorithm>
#include <bit>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string_view>
#include <system_error>
#include <vector>

namespace {

using zcio::stream;
using zcio::task;

constexpr std::size_t mib = 1024 * 1024;
constexpr std::size_t chunk_size = 256 * 1024; // per read or write: large enough to be cheap

// A streaming checksum over 64-bit words; bytes may arrive in any split (a read returns
// what the socket has), so a word cut between two reads is carried over. Not
// cryptographic: it catches lost, duplicated, reordered or changed bytes, which is all
// a transport test needs, and it keeps up with loopback where a byte-wise hash would not.
class checksum {
public:
    void update(std::span<const std::byte> data) noexcept {
        total_ += data.size();
        while (!data.empty() && fill_ != 0) { // finish the word the last call began
            add_byte(data.front());
            data = data.subspan(1);
        }
        while (data.size() >= 8) {
            std::uint64_t w = 0;
            std::memcpy(&w, data.data(), 8);
            mix(w);
            data = data.subspan(8);
        }
        for (std::byte b : data) {
            add_byte(b);
        }
    }
    [[nodiscard]] std::uint64_t value() const noexcept {
        checksum c = *this;
        if (c.fill_ != 0) {
            c.mix(c.partial_);
        }
        c.mix(c.total_); // so a stream of zero bytes differs from a shorter one
        return c.h_;
    }

private:
    void mix(std::uint64_t w) noexcept { h_ = std::rotl((h_ ^ w) * 0x9e3779b97f4a7c15ULL, 27); }
    void add_byte(std::byte b) noexcept {
        partial_ |= static_cast<std::uint64_t>(b) << (8 * fill_);
        if (++fill_ == 8) {
            mix(partial_);
            partial_ = 0;
            fill_ = 0;
        }
    }
    std::uint64_t h_ = 0xcbf29ce484222325ULL;
    std::uint64_t partial_ = 0;
    std::uint64_t total_ = 0;
    unsigned fill_ = 0;
};

// Fast pseudo-random bytes (xorshift64*), a word at a time.
void fill_random(std::span<std::byte> out, std::uint64_t& state) noexcept {
    for (std::size_t i = 0; i < out.size(); i += 8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        const std::uint64_t w = state * 0x2545f4914f6cdd1dULL;
        std::memcpy(out.data() + i, &w, std::min<std::size_t>(8, out.size() - i));
    }
}

void report(const char* what, std::error_code ec) {
    std::fprintf(stderr, "echo_demo: %s: %s\n", what, ec.message().c_str());
}

// The server: accepts one connection and sends back whatever it reads until the
// client half-closes, then half-closes too. It owns the accepted stream, so the
// connection closes when this coroutine ends. `listener` lives in the frame of run(),
// which outlives this task (run() waits for the end of stream, which comes after).
task<void> echo_server(zcio::listener* listener) {
    auto conn = co_await listener->accept();
    if (!conn) {
        report("accept", conn.error());
        co_return;
    }
    stream s = std::move(conn->conn);
    std::vector<std::byte> buf(chunk_size);
    while (true) {
        // The read makes its syscall first and suspends only when the socket is empty.
        auto n = co_await s.read_some(buf);
        if (!n) {
            report("server read", n.error());
            co_return;
        }
        if (*n == 0) {
            break; // the client half-closed: everything has been echoed
        }
        if (auto w = co_await s.write_all(std::span(buf).first(*n)); !w) {
            report("server write", w.error());
            co_return;
        }
    }
    (void)s.shutdown_write();
}

struct writer_state {
    std::size_t sent = 0;
    std::uint64_t sum = 0;
    bool failed = false;
};

// The client's writing half: `bytes` of random data, then a half-close. It shares the
// stream with run()'s reading half (one read and one write may be pending at once).
task<void> write_random(stream* s, std::size_t bytes, writer_state* out) {
    std::vector<std::byte> buf(chunk_size);
    std::uint64_t rng = 0x9e3779b97f4a7c15ULL;
    checksum sum;
    while (out->sent < bytes) {
        const auto chunk = std::span(buf).first(std::min(chunk_size, bytes - out->sent));
        fill_random(chunk, rng);
        sum.update(chunk);
        if (auto w = co_await s->write_all(chunk); !w) {
            report("client write", w.error());
            out->failed = true;
            co_return;
        }
        out->sent += chunk.size();
    }
    out->sum = sum.value();
    if (auto r = s->shutdown_write(); !r) {
        report("shutdown", r.error());
        out->failed = true;
    }
}

// Sets everything up, reads the echo to its end and reports. Returns the exit status.
task<int> run(zcio::event_loop* loop, std::size_t bytes) {
    auto listener = zcio::listener::bind(*loop, zcio::endpoint::ipv4_loopback(0));
    if (!listener) {
        report("listen on 127.0.0.1:0", listener.error());
        co_return 1;
    }
    loop->spawn(echo_server(&*listener));

    const auto started = std::chrono::steady_clock::now();
    auto client = co_await stream::connect(*loop, listener->local_endpoint());
    if (!client) {
        report("connect", client.error());
        co_return 1;
    }
    writer_state writer;
    loop->spawn(write_random(&*client, bytes, &writer));

    // The reading half runs right here: it ends when the server half-closes, which it
    // does only after it read the writer's half-close, so by then the writer is done
    // (and the pointers it holds were valid all along).
    std::vector<std::byte> buf(chunk_size);
    checksum sum;
    std::size_t received = 0;
    while (true) {
        auto n = co_await client->read_some(buf);
        if (!n) {
            report("client read", n.error());
            co_return 1;
        }
        if (*n == 0) {
            break;
        }
        sum.update(std::span(buf).first(*n));
        received += *n;
    }
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;

    if (writer.failed) {
        co_return 1;
    }
    if (received != writer.sent || sum.value() != writer.sum) {
        std::fprintf(stderr,
                     "echo_demo: MISMATCH: sent %zu bytes (checksum %016llx), got back %zu "
                     "(checksum %016llx)\n",
                     writer.sent, static_cast<unsigned long long>(writer.sum), received,
                     static_cast<unsigned long long>(sum.value()));
        co_return 1;
    }
    const double moved_mib = static_cast<double>(bytes) / mib;
    std::printf("echo_demo: moved %g MiB through a loopback echo server in %.2f s "
                "(%.0f MiB/s each way), checksum ok\n",
                moved_mib, took.count(), moved_mib / took.count());
    co_return 0;
}

} // namespace

int main(int argc, char** argv) {
    std::size_t mebibytes = 100;
    if (argc > 2) {
        std::fprintf(stderr, "usage: echo_demo [MiB]\n");
        return 2;
    }
    if (argc == 2) {
        const std::string_view arg = argv[1];
        auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), mebibytes);
        if (ec != std::errc{} || end != arg.data() + arg.size() || mebibytes == 0 ||
            mebibytes > 1024 * 1024) {
            std::fprintf(stderr, "echo_demo: \"%s\" is not a size in MiB (1 to 1048576)\n",
                         argv[1]);
            return 2;
        }
    }
    zcio::event_loop loop; // one loop, this thread: everything below runs on it
    try {
        return loop.block_on(run(&loop, mebibytes * mib));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "echo_demo: %s\n", e.what());
        return 1;
    }
}
