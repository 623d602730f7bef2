// `zcio bench`: a self-contained benchmark. A sink, a relay per engine (zcio::relay in a
// relay_set, as `zcio proxy` holds its connections) and a client run in one process on
// loopback; it prints rate, CPU and system calls per GiB of the thread that moves the
// bytes, round trips of a chatty exchange, and, per engine, what idle relayed
// connections hold.
#include "cli_util.hpp"
#include "commands.hpp"

#include <zcio/zcio.hpp>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace zcio::cli {

namespace {

using namespace std::chrono_literals;

// CPU seconds and system calls of the calling thread: the cost of moving the bytes.
struct thread_cost {
    double cpu = 0;
    std::uint64_t calls = 0;

    static thread_cost now() {
        rusage ru{};
        ::getrusage(RUSAGE_THREAD, &ru);
        return {static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                    static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6,
                sys::calls_on_this_thread()};
    }
    thread_cost operator-(const thread_cost& o) const { return {cpu - o.cpu, calls - o.calls}; }
};

// Runs `fn` on `loop`'s thread and returns its value.
template <class F>
auto on_loop(event_loop& loop, F fn) -> decltype(fn()) {
    std::promise<decltype(fn())> p;
    auto f = p.get_future();
    loop.post([&] { p.set_value(fn()); });
    return f.get();
}

const char* engine_name(copy_path p) {
    return p == copy_path::automatic ? "auto" : to_string(p);
}

struct row {
    std::string name;
    std::string engine;
    std::string path; // what copy() reported
    std::uint64_t bytes = 0;
    double seconds = 0;
    thread_cost cost;
    std::uint64_t round_trips = 0; // chatty rows only

    [[nodiscard]] double gib() const { return static_cast<double>(bytes) / (1u << 30); }
    [[nodiscard]] double mib() const { return static_cast<double>(bytes) / (1u << 20); }
};

// How much a case moves: bytes when --bytes was given, otherwise for --seconds.
struct budget {
    std::uint64_t bytes = 0; // 0: time-bounded
    double seconds = 3;
    [[nodiscard]] clock::time_point end(clock::time_point start) const {
        return start +
               std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(seconds));
    }
};

// ---- peers: a sink that discards and an echo server ----

task<void> discard(stream conn) {
    std::vector<std::byte> buf(std::size_t{256} * 1024);
    while (true) {
        auto n = co_await conn.read_some(buf);
        if (!n || *n == 0) {
            co_return;
        }
    }
}

task<void> echo(stream conn) {
    std::array<std::byte, 4096> buf{};
    while (true) {
        auto n = co_await conn.read_some(buf);
        if (!n || *n == 0) {
            co_return;
        }
        if (!co_await conn.write_all(std::span(buf).first(*n))) {
            co_return;
        }
    }
}

task<void> serve(event_loop* loop, listener* l, bool echoing) {
    while (true) {
        auto a = co_await l->accept();
        if (!a) {
            co_return;
        }
        loop->spawn(echoing ? echo(std::move(a->conn)) : discard(std::move(a->conn)));
    }
}

// ---- the relay under test: zcio::relay, the engine `zcio proxy` runs ----

struct relay_state {
    endpoint upstream;
    copy_path engine = copy_path::automatic;
    transfer_pools pools;
    std::unique_ptr<relay_set> relays; // made on the relay's loop by relay_rig
    copy_path last_path = copy_path::automatic;
    // Connections relayed end to end right now (upstream connected, not yet ended):
    // the idle case reads it with the pools so its count is the relay's, not the client's.
    std::size_t open = 0;
};

// One relayed connection, as the proxy holds it: a relay object in its loop's set that
// deletes itself when both directions are done (no coroutine frame while it waits).
class bench_relay final : public relay {
public:
    bench_relay(relay_state* st, stream client, stream upstream, const bidirectional_options& o)
        : relay(std::move(client), std::move(upstream), o), st_(st) {
        st_->relays->add(*this);
        ++st_->open;
    }

protected:
    void on_done(const traffic& t) override {
        --st_->open;
        if (t.a_to_b > 0) {
            st_->last_path = t.a_to_b_path;
        }
        delete this; // leaves the set
    }

private:
    relay_state* st_;
};

task<void> relay_one(relay_state* st, event_loop* loop, stream client) {
    auto up = co_await stream::connect(*loop, st->upstream, 5s);
    if (!up) {
        co_return;
    }
    bidirectional_options o;
    o.path = st->engine;
    o.pools = &st->pools;
    auto* r = new bench_relay(st, std::move(client), std::move(*up), o);
    r->start(); // `r` may be gone once start() returns (its on_done deletes it)
}

task<void> relay_accept(relay_state* st, event_loop* loop, listener* l) {
    while (true) {
        auto a = co_await l->accept();
        if (!a) {
            co_return;
        }
        loop->spawn(relay_one(st, loop, std::move(a->conn)));
    }
}

listener listen_loopback(event_loop& loop) {
    auto l = listener::bind(loop, endpoint::ipv4_loopback(0));
    if (!l) {
        throw runtime_failure("bench: cannot listen on 127.0.0.1: " + l.error().message());
    }
    return std::move(*l);
}

// A peer thread and a relay thread. Member order matters: the loops go first (their
// suspended tasks hold pool leases and registrations), then listeners and pools.
struct relay_rig {
    relay_state state;
    listener peer;
    listener relay;
    loop_group peer_group{1};
    loop_group relay_group{1};

    relay_rig(copy_path engine, bool echoing) {
        state.engine = engine;
        peer = listen_loopback(peer_group.loop(0));
        relay = listen_loopback(relay_group.loop(0));
        state.upstream = peer.local_endpoint();
        state.relays = std::make_unique<relay_set>(relay_group.loop(0));
        peer_group.loop(0).spawn(serve(&peer_group.loop(0), &peer, echoing));
        relay_group.loop(0).spawn(relay_accept(&state, &relay_group.loop(0), &relay));
        peer_group.start();
        relay_group.start();
    }
    ~relay_rig() {
        on_loop(peer_group.loop(0), [this] {
            peer.close();
            return 0;
        });
        on_loop(relay_group.loop(0), [this] {
            relay.close();
            state.relays->cancel_all();
            return 0;
        });
        wait_relays_gone();
        relay_group.stop();
        peer_group.stop();
        relay_group.join();
        peer_group.join();
        state.relays.reset(); // after its relays, before its loop
    }
    relay_rig(const relay_rig&) = delete;
    relay_rig& operator=(const relay_rig&) = delete;
    event_loop& relay_loop() { return relay_group.loop(0); }

private:
    // Cancelled relays deliver on_done() (and delete themselves) from their loop a few
    // turns later; the loop must not stop with one left. Bounded: 2 s.
    void wait_relays_gone() {
        for (int i = 0; i < 200; ++i) {
            if (on_loop(relay_group.loop(0), [this] { return state.relays->empty(); })) {
                return;
            }
            std::this_thread::sleep_for(10ms);
        }
        std::fprintf(stderr, "zcio bench: relays still open after 2 s; leaving them\n");
    }
};

// ---- clients ----

std::vector<std::byte> pattern(std::size_t n) {
    std::vector<std::byte> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        v[i] = static_cast<std::byte>((i * 131 + 7) >> 3);
    }
    return v;
}

// Writes until the budget is spent, half-closes, waits for the far side to close.
task<std::uint64_t> blast(event_loop* loop, endpoint to, budget b) {
    auto s = co_await stream::connect(*loop, to, 5s);
    if (!s) {
        co_return 0;
    }
    const auto chunk = pattern(std::size_t{256} * 1024);
    std::uint64_t sent = 0;
    const auto end = b.end(clock::now());
    while (b.bytes != 0 ? sent < b.bytes : clock::now() < end) {
        std::size_t len =
            b.bytes != 0 ? std::min<std::uint64_t>(chunk.size(), b.bytes - sent) : chunk.size();
        auto n = co_await s->write_all(std::span(chunk).first(len));
        if (!n) {
            break;
        }
        sent += *n;
    }
    (void)s->shutdown_write();
    std::array<std::byte, 64> tmp{};
    (void)co_await s->read_some(tmp);
    co_return sent;
}

// 64-byte request, 64-byte reply, one at a time, for the budget's seconds.
task<std::uint64_t> ping_pong(event_loop* loop, endpoint to, double seconds) {
    auto s = co_await stream::connect(*loop, to, 5s);
    if (!s) {
        co_return 0;
    }
    std::array<std::byte, 64> req{};
    std::array<std::byte, 64> rep{};
    std::uint64_t trips = 0;
    const auto end = budget{0, seconds}.end(clock::now());
    while (clock::now() < end) {
        if (!co_await s->write_all(req)) {
            break;
        }
        std::size_t got = 0;
        while (got < rep.size()) {
            auto n = co_await s->read_some(std::span(rep).subspan(got));
            if (!n || *n == 0) {
                co_return trips;
            }
            got += *n;
        }
        ++trips;
    }
    co_return trips;
}

// Opens `n` connections through the relay to the echo peer. Each sends one 64-byte
// message and waits for it to come back before the next is opened: then every
// connection is relayed end to end, and both of its directions have moved bytes, so a
// relay that kept a pipe or a buffer after moving data (not only one that takes them
// up front) shows in the idle counts.
task<std::vector<stream>> open_idle(event_loop* loop, endpoint to, std::size_t n) {
    std::vector<stream> out;
    out.reserve(n);
    std::array<std::byte, 64> msg{};
    std::array<std::byte, 64> back{};
    for (std::size_t i = 0; i < n; ++i) {
        auto s = co_await stream::connect(*loop, to, 5s);
        if (!s || !co_await s->write_all(msg)) {
            break;
        }
        std::size_t got = 0;
        while (got < back.size()) {
            auto r = co_await s->read_some(std::span(back).subspan(got));
            if (!r || *r == 0) {
                co_return out;
            }
            got += *r;
        }
        out.push_back(std::move(*s));
    }
    co_return out;
}

// ---- the cases ----

row relay_row(copy_path engine, budget b) {
    relay_rig rig(engine, false);
    event_loop client;
    const auto c0 = on_loop(rig.relay_loop(), [] { return thread_cost::now(); });
    const auto t0 = clock::now();
    row r;
    r.bytes = client.block_on(blast(&client, rig.relay.local_endpoint(), b));
    r.seconds = std::chrono::duration<double>(clock::now() - t0).count();
    r.cost = on_loop(rig.relay_loop(), [] { return thread_cost::now(); }) - c0;
    r.name = "tcp -> relay -> tcp";
    r.engine = engine_name(engine);
    r.path = on_loop(rig.relay_loop(), [&] { return std::string(to_string(rig.state.last_path)); });
    return r;
}

row chatty_row(copy_path engine, double seconds) {
    relay_rig rig(engine, true);
    event_loop client;
    const auto c0 = on_loop(rig.relay_loop(), [] { return thread_cost::now(); });
    const auto t0 = clock::now();
    row r;
    r.round_trips = client.block_on(ping_pong(&client, rig.relay.local_endpoint(), seconds));
    r.seconds = std::chrono::duration<double>(clock::now() - t0).count();
    r.cost = on_loop(rig.relay_loop(), [] { return thread_cost::now(); }) - c0;
    r.bytes = r.round_trips * 128;
    r.name = "chatty 64 B ping-pong";
    r.engine = engine_name(engine);
    r.path = engine_name(engine);
    return r;
}

// A temporary file of `size` bytes, unlinked at once (the fd keeps it).
unique_fd temp_file(std::uint64_t size) {
    char name[] = "/tmp/zcio-bench-XXXXXX";
    int fd = ::mkostemp(name, O_CLOEXEC);
    if (fd < 0) {
        throw runtime_failure(std::string("bench: cannot create a temporary file: ") +
                              std::strerror(errno));
    }
    ::unlink(name);
    unique_fd f(fd);
    const auto chunk = pattern(1 << 20);
    for (std::uint64_t done = 0; done < size; done += chunk.size()) {
        const auto len =
            static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), size - done));
        if (::write(fd, chunk.data(), len) != static_cast<ssize_t>(len)) {
            throw runtime_failure("bench: cannot fill the temporary file (disk full?)");
        }
    }
    return f;
}

// Sends the file from offset 0, again and again, until the budget is spent.
task<row> file_to_socket(event_loop* loop, int file_fd, std::uint64_t file_size, endpoint to,
                         budget b, copy_path engine) {
    row r;
    auto s = co_await stream::connect(*loop, to, 5s);
    auto dupfd = sys::dup(file_fd);
    if (!s || !dupfd) {
        co_return r;
    }
    auto f = stream::adopt(*loop, std::move(*dupfd));
    if (!f) {
        co_return r;
    }
    const auto c0 = thread_cost::now();
    const auto start = clock::now();
    const auto end = b.end(start);
    while (b.bytes != 0 ? r.bytes < b.bytes : clock::now() < end) {
        copy_options o;
        o.src_offset = 0;
        o.path = engine;
        o.limit = b.bytes != 0 ? std::min(file_size, b.bytes - r.bytes) : file_size;
        auto c = co_await copy(*s, *f, o);
        r.bytes += c.bytes;
        r.path = to_string(c.path);
        if (!c.ok() || c.bytes == 0) {
            break;
        }
    }
    r.cost = thread_cost::now() - c0;
    r.seconds = std::chrono::duration<double>(clock::now() - start).count();
    co_return r;
}

row file_to_socket_row(int file_fd, std::uint64_t file_size, copy_path engine, budget b) {
    listener sink;
    loop_group sink_group{1};
    sink = listen_loopback(sink_group.loop(0));
    sink_group.loop(0).spawn(serve(&sink_group.loop(0), &sink, false));
    sink_group.start();
    event_loop mover;
    row r = mover.block_on(
        file_to_socket(&mover, file_fd, file_size, sink.local_endpoint(), b, engine));
    on_loop(sink_group.loop(0), [&] {
        sink.close();
        return 0;
    });
    sink_group.stop();
    sink_group.join();
    r.name = "file -> socket";
    r.engine = engine_name(engine);
    return r;
}

task<void> receive_to_file(listener* l, int file_fd, copy_path engine, row* out) {
    auto a = co_await l->accept();
    auto dupfd = sys::dup(file_fd);
    if (!a || !dupfd) {
        co_return;
    }
    auto f = stream::adopt(a->conn.loop(), std::move(*dupfd));
    if (!f) {
        co_return;
    }
    const auto c0 = thread_cost::now();
    copy_options o;
    o.path = engine;
    // Rewrite the file from the start, 256 MiB at a time, so the page cache (not the
    // disk's free space) bounds the case.
    while (true) {
        o.dst_offset = 0;
        o.limit = 256u << 20;
        auto c = co_await copy(*f, a->conn, o);
        out->bytes += c.bytes;
        out->path = to_string(c.path);
        if (!c.ok() || c.bytes < *o.limit) {
            break;
        }
    }
    out->cost = thread_cost::now() - c0;
}

row socket_to_file_row(copy_path engine, budget b) {
    auto file = temp_file(0);
    listener l;
    loop_group recv_group{1};
    l = listen_loopback(recv_group.loop(0));
    row r;
    std::promise<void> done;
    recv_group.loop(0).spawn(receive_to_file(&l, file.get(), engine, &r),
                             [&](const std::exception_ptr& /*unused*/) { done.set_value(); });
    recv_group.start();
    event_loop client;
    const auto t0 = clock::now();
    (void)client.block_on(blast(&client, l.local_endpoint(), b));
    done.get_future().wait();
    r.seconds = std::chrono::duration<double>(clock::now() - t0).count();
    on_loop(recv_group.loop(0), [&] {
        l.close();
        return 0;
    });
    recv_group.stop();
    recv_group.join();
    r.name = "socket -> file";
    r.engine = engine_name(engine);
    return r;
}

// What idle relayed connections cost one engine's relay, from its own counters.
struct idle_cost {
    std::string engine;
    std::size_t connections = 0;    // relayed end to end (the relay's count)
    std::size_t pipes_leased = 0;   // pipes held by connections: the figure that matters
    std::size_t buffers_leased = 0; // buffers held by connections
    std::size_t pipes_pooled = 0;   // empty pipes the pool keeps for reuse, held by none
    std::size_t buffers_pooled = 0; // free buffers the pool keeps for reuse
};

idle_cost idle_case(copy_path engine, std::size_t n) {
    relay_rig rig(engine, true);
    event_loop client;
    auto conns = client.block_on(open_idle(&client, rig.relay.local_endpoint(), n));
    idle_cost c;
    c.engine = engine_name(engine);
    c.connections = n;
    // Every connection is quiet now. Read the relay's counters on its own thread (they
    // are not synchronised) a few times over 0.2 s and keep the worst: a lease that is
    // only given back later, or taken again while nothing moves, shows.
    for (int i = 0; i < 5; ++i) {
        std::this_thread::sleep_for(40ms);
        const idle_cost now = on_loop(rig.relay_loop(), [&] {
            const auto p = rig.state.pools.pipes.stats();
            const auto b = rig.state.pools.buffers.stats();
            return idle_cost{{}, rig.state.open, p.leased, b.leased, p.idle, b.idle};
        });
        c.connections = std::min(c.connections, now.connections);
        c.pipes_leased = std::max(c.pipes_leased, now.pipes_leased);
        c.buffers_leased = std::max(c.buffers_leased, now.buffers_leased);
        c.pipes_pooled = std::max(c.pipes_pooled, now.pipes_pooled);
        c.buffers_pooled = std::max(c.buffers_pooled, now.buffers_pooled);
    }
    if (conns.size() < n) {
        std::fprintf(stderr, "zcio bench: only %zu of %zu idle connections could be opened\n",
                     conns.size(), n);
    }
    return c;
}

// Each idle connection takes four descriptors in this one process (client, both sides
// of the relay, echo peer): raise the soft limit towards the hard one when it is short.
void raise_fd_limit(std::size_t want) {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
        rl.rlim_cur >= want) {
        return;
    }
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? want : std::min<rlim_t>(want, rl.rlim_max);
    (void)::setrlimit(RLIMIT_NOFILE, &rl);
}

void print_table(const std::vector<row>& rows, const std::vector<idle_cost>& idle,
                 const budget& b) {
    std::printf("\n%-22s %-7s %-16s %8s %11s %12s\n", "case", "engine", "path", "GiB/s",
                "CPU s/GiB", "syscalls/MiB");
    for (const auto& r : rows) {
        if (r.round_trips != 0) {
            continue;
        }
        const double gib = r.gib();
        std::printf("%-22s %-7s %-16s %8.2f %11.3f %12.1f\n", r.name.c_str(), r.engine.c_str(),
                    r.path.c_str(), r.seconds > 0 ? gib / r.seconds : 0,
                    gib > 0 ? r.cost.cpu / gib : 0,
                    r.mib() > 0 ? static_cast<double>(r.cost.calls) / r.mib() : 0);
    }
    std::printf("\n%-22s %-7s %14s %16s %14s\n", "case", "engine", "round trips/s",
                "relay CPU us/trip", "syscalls/trip");
    for (const auto& r : rows) {
        if (r.round_trips == 0) {
            continue;
        }
        const double trips = static_cast<double>(r.round_trips);
        std::printf("%-22s %-7s %14.0f %16.1f %14.1f\n", r.name.c_str(), r.engine.c_str(),
                    trips / r.seconds, 1e6 * r.cost.cpu / trips,
                    static_cast<double>(r.cost.calls) / trips);
    }
    std::printf("\n%-22s %-7s %11s %10s %12s\n", "case", "engine", "connections", "pipes held",
                "buffers held");
    for (const auto& c : idle) {
        std::printf("%-22s %-7s %11zu %10zu %12zu\n", "idle through the relay", c.engine.c_str(),
                    c.connections, c.pipes_leased, c.buffers_leased);
    }
    std::printf("(idle: leases from the relay's pools while they sit quiet, each after one 64 B "
                "echo)\n");
    if (b.bytes != 0) {
        std::printf(
            "(one process on loopback; %s per case; CPU and syscalls are the moving thread's)\n",
            human_bytes(static_cast<double>(b.bytes)).c_str());
    } else {
        std::printf("(one process on loopback; %.1f s per case; CPU and syscalls are the moving "
                    "thread's)\n",
                    b.seconds);
    }
}

void print_idle_json(const idle_cost& c) {
    std::printf("{\"engine\": \"%s\", \"connections\": %zu, \"pipes_leased\": %zu, "
                "\"buffers_leased\": %zu, \"pipes_pooled\": %zu, \"buffers_pooled\": %zu}",
                c.engine.c_str(), c.connections, c.pipes_leased, c.buffers_leased, c.pipes_pooled,
                c.buffers_pooled);
}

void print_json(const std::vector<row>& rows, const std::vector<idle_cost>& idle) {
    std::printf("{\n  \"rows\": [\n");
    for (std::size_t i = 0; i < rows.size(); ++i) {
        const auto& r = rows[i];
        std::printf("    {\"case\": \"%s\", \"engine\": \"%s\", \"path\": \"%s\", \"bytes\": %llu, "
                    "\"seconds\": %.4f, \"cpu_seconds\": %.4f, \"syscalls\": %llu, "
                    "\"round_trips\": %llu}%s\n",
                    r.name.c_str(), r.engine.c_str(), r.path.c_str(),
                    static_cast<unsigned long long>(r.bytes), r.seconds, r.cost.cpu,
                    static_cast<unsigned long long>(r.cost.calls),
                    static_cast<unsigned long long>(r.round_trips), i + 1 < rows.size() ? "," : "");
    }
    // "idle" keeps its earlier shape, the auto engine's figures, for bench/median.py;
    // "idle_engines" has every engine.
    std::printf("  ],\n  \"idle\": ");
    print_idle_json(idle.front());
    std::printf(",\n  \"idle_engines\": [\n");
    for (std::size_t i = 0; i < idle.size(); ++i) {
        std::printf("    ");
        print_idle_json(idle[i]);
        std::printf("%s\n", i + 1 < idle.size() ? "," : "");
    }
    std::printf("  ]\n}\n");
}

} // namespace

int run_bench_command(const bench_command_options& o) {
    if (!(o.seconds > 0) || o.seconds > 600) {
        throw usage_error("--seconds: expected a number of seconds from 0.1 to 600");
    }
    const budget b{o.bytes, o.seconds};
    const copy_path engines[] = {copy_path::automatic, copy_path::splice, copy_path::buffer};
    std::vector<row> rows;
    auto progress = [&](const std::string& what) {
        std::fprintf(stderr, "zcio bench: %s\n", what.c_str());
    };
    // One unrecorded relay first: the first transfer of a process pays for cold caches,
    // TCP buffer autotuning and the pools' first pipes, and would charge it to
    // whichever engine happened to run first.
    progress("warm-up");
    (void)relay_row(copy_path::splice, budget{std::uint64_t{256} << 20, 1});
    for (auto e : engines) {
        progress(std::string("tcp relay, ") + engine_name(e));
        rows.push_back(relay_row(e, b));
    }
    {
        const std::uint64_t file_size = 64u << 20;
        auto file = temp_file(file_size);
        for (auto e : {copy_path::automatic, copy_path::splice, copy_path::buffer}) {
            progress(std::string("file -> socket, ") + engine_name(e));
            rows.push_back(file_to_socket_row(file.get(), file_size, e, b));
        }
    }
    for (auto e : engines) {
        progress(std::string("socket -> file, ") + engine_name(e));
        rows.push_back(socket_to_file_row(e, b));
    }
    for (auto e : engines) {
        progress(std::string("chatty ping-pong, ") + engine_name(e));
        rows.push_back(chatty_row(e, std::min(o.seconds, 3.0)));
    }
    raise_fd_limit(4 * o.idle_connections + 256);
    std::vector<idle_cost> idle;
    for (auto e : engines) { // auto first: "idle" in --json is the first
        progress(std::to_string(o.idle_connections) + " idle connections through the relay, " +
                 engine_name(e));
        idle.push_back(idle_case(e, o.idle_connections));
    }
    if (o.json) {
        print_json(rows, idle);
    } else {
        print_table(rows, idle, b);
    }
    return 0;
}

namespace {

// What `zcio bench` reads from its command line, as typed.
struct bench_flags {
    bench_command_options bo;
    std::string bytes;
};

int run_bench_flags(bench_flags& f) {
    if (!f.bytes.empty()) {
        f.bo.bytes = parse_size(f.bytes, "--bytes");
        if (f.bo.bytes == 0) {
            throw usage_error("--bytes: must be more than 0");
        }
    }
    return run_bench_command(f.bo);
}

} // namespace

subcommand add_bench_command(CLI::App& app) {
    auto f = std::make_shared<bench_flags>();
    auto* cmd = app.add_subcommand("bench", "Self-contained benchmark on loopback: relay per "
                                            "engine, file→socket, socket→file, idle cost");
    cmd->add_option("--seconds", f->bo.seconds, "Seconds per case")->capture_default_str();
    cmd->add_option("--bytes", f->bytes,
                    "Move exactly this much per case (e.g. 1G) instead of for --seconds");
    cmd->add_flag("--json", f->bo.json, "Print the results as JSON");
    cmd->add_option("--idle", f->bo.idle_connections, "Idle connections to open")
        ->capture_default_str()
        ->check(CLI::Range(1, 4000));
    return {cmd, [f] { return run_bench_flags(*f); }};
}

} // namespace zcio::cli
