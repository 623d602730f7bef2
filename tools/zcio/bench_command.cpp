// `zcio bench`: a self-contained benchmark. A sink, a relay per engine and a client
// run in one process on loopback; it prints rate, CPU per GiB and idle-connection cost.
#include "cli_util.hpp"
#include "commands.hpp"

#include <zcio/zcio.hpp>

#include <cstdio>
#include <future>
#include <string>
#include <thread>
#include <vector>
#include <cstring>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace zcio::cli {

namespace {

using namespace std::chrono_literals;

double thread_cpu_seconds() {
    rusage ru{};
    ::getrusage(RUSAGE_THREAD, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// Runs `fn` on `loop`'s thread and returns its value.
template <class F>
auto on_loop(event_loop& loop, F fn) -> decltype(fn()) {
    std::promise<decltype(fn())> p;
    auto f = p.get_future();
    loop.post([&] { p.set_value(fn()); });
    return f.get();
}

struct row {
    std::string name;
    std::string path;
    double gib_per_s = 0;
    double cpu_per_gib = 0; // seconds of the moving thread's CPU per GiB
    std::uint64_t bytes = 0;
};

// ---- the sink: reads and discards, or writes what it reads to a file ----

task<void> discard(stream conn) {
    std::vector<std::byte> buf(256 * 1024);
    while (true) {
        auto n = co_await conn.read_some(buf);
        if (!n || *n == 0) {
            co_return;
        }
    }
}

task<void> sink_accept(event_loop* loop, tcp_listener* l) {
    while (true) {
        auto a = co_await l->accept();
        if (!a) {
            co_return;
        }
        loop->spawn(discard(std::move(a->conn)));
    }
}

// ---- the relay under test ----

struct relay_state {
    endpoint upstream;
    copy_path engine = copy_path::automatic;
    transfer_pools pools;
};

task<void> relay_one(relay_state* st, event_loop* loop, stream client) {
    auto up = co_await stream::connect(*loop, st->upstream, 5s);
    if (!up) {
        co_return;
    }
    bidirectional_options o;
    o.path = st->engine;
    o.pools = &st->pools;
    (void)co_await copy_bidirectional(client, *up, o);
}

task<void> relay_accept(relay_state* st, event_loop* loop, tcp_listener* l) {
    while (true) {
        auto a = co_await l->accept();
        if (!a) {
            co_return;
        }
        loop->spawn(relay_one(st, loop, std::move(a->conn)));
    }
}

// ---- the client ----

task<std::uint64_t> blast(event_loop* loop, endpoint to, double seconds) {
    auto s = co_await stream::connect(*loop, to, 5s);
    if (!s) {
        co_return 0;
    }
    std::vector<std::byte> chunk(256 * 1024);
    for (std::size_t i = 0; i < chunk.size(); ++i) {
        chunk[i] = static_cast<std::byte>(i * 131 + 7);
    }
    std::uint64_t sent = 0;
    const auto end = clock::now() + std::chrono::duration_cast<clock::duration>(
                                        std::chrono::duration<double>(seconds));
    while (clock::now() < end) {
        auto n = co_await s->write_all(chunk);
        if (!n) {
            break;
        }
        sent += *n;
    }
    (void)s->shutdown_write();
    std::array<std::byte, 64> tmp{};
    (void)co_await s->read_some(tmp); // wait for the far side to close
    co_return sent;
}

task<std::vector<stream>> open_idle(event_loop* loop, endpoint to, std::size_t n) {
    std::vector<stream> out;
    for (std::size_t i = 0; i < n; ++i) {
        auto s = co_await stream::connect(*loop, to, 5s);
        if (!s) {
            break;
        }
        out.push_back(std::move(*s));
    }
    co_return out;
}

double gib(std::uint64_t bytes) { return static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0); }

struct relay_rig {
    // Member order matters: the loops are destroyed first (their suspended tasks hold
    // pool leases and listener registrations), then the listeners and the pools.
    relay_state state;
    tcp_listener sink;
    tcp_listener relay;
    loop_group sink_group{1};
    loop_group relay_group{1};

    explicit relay_rig(copy_path engine) {
        state.engine = engine;
        auto s = tcp_listener::bind(sink_group.loop(0), endpoint::ipv4_loopback(0));
        auto r = tcp_listener::bind(relay_group.loop(0), endpoint::ipv4_loopback(0));
        if (!s || !r) {
            throw runtime_failure("bench: cannot listen on 127.0.0.1");
        }
        sink = std::move(*s);
        relay = std::move(*r);
        state.upstream = sink.local_endpoint();
        sink_group.loop(0).spawn(sink_accept(&sink_group.loop(0), &sink));
        relay_group.loop(0).spawn(relay_accept(&state, &relay_group.loop(0), &relay));
        sink_group.start();
        relay_group.start();
    }
    ~relay_rig() {
        on_loop(sink_group.loop(0), [this] { sink.close(); return 0; });
        on_loop(relay_group.loop(0), [this] { relay.close(); return 0; });
        relay_group.stop();
        sink_group.stop();
        relay_group.join();
        sink_group.join();
    }
    relay_rig(const relay_rig&) = delete;
    relay_rig& operator=(const relay_rig&) = delete;
};

row relay_row(copy_path engine, double seconds) {
    relay_rig rig(engine);
    event_loop client;
    event_loop& relay_loop = rig.relay_group.loop(0);
    const double cpu0 = on_loop(relay_loop, [] { return thread_cpu_seconds(); });
    const auto t0 = clock::now();
    const std::uint64_t sent = client.block_on(blast(&client, rig.relay.local_endpoint(), seconds));
    const double wall = std::chrono::duration<double>(clock::now() - t0).count();
    const double cpu1 = on_loop(relay_loop, [] { return thread_cpu_seconds(); });
    row r;
    r.name = std::string("tcp relay, ") + (engine == copy_path::automatic ? "auto" : to_string(engine));
    r.path = engine == copy_path::automatic ? "buffer→splice" : to_string(engine);
    r.bytes = sent;
    r.gib_per_s = gib(sent) / wall;
    r.cpu_per_gib = sent > 0 ? (cpu1 - cpu0) / gib(sent) : 0;
    return r;
}

struct idle_cost {
    std::size_t connections = 0;
    std::size_t pipes_leased = 0;
    std::size_t buffers_leased = 0;
};

idle_cost idle_row(std::size_t n) {
    relay_rig rig(copy_path::automatic);
    event_loop client;
    auto conns = client.block_on(open_idle(&client, rig.relay.local_endpoint(), n));
    std::this_thread::sleep_for(300ms); // let the relay accept and connect them all
    idle_cost c;
    c.connections = conns.size();
    c.pipes_leased = on_loop(rig.relay_group.loop(0), [&] { return rig.state.pools.pipes.stats().leased; });
    c.buffers_leased =
        on_loop(rig.relay_group.loop(0), [&] { return rig.state.pools.buffers.stats().leased; });
    conns.clear();
    return c;
}

// A temporary file of `size` bytes, unlinked at once (the fd keeps it).
unique_fd temp_file(std::size_t size) {
    char name[] = "/tmp/zcio-bench-XXXXXX";
    int fd = ::mkostemp(name, O_CLOEXEC);
    if (fd < 0) {
        throw runtime_failure(std::string("bench: cannot create a temporary file: ") + std::strerror(errno));
    }
    ::unlink(name);
    unique_fd f(fd);
    std::vector<std::byte> chunk(1 << 20);
    for (std::size_t i = 0; i < chunk.size(); ++i) {
        chunk[i] = static_cast<std::byte>(i * 17 + 3);
    }
    for (std::size_t done = 0; done < size; done += chunk.size()) {
        if (::write(fd, chunk.data(), chunk.size()) != static_cast<ssize_t>(chunk.size())) {
            throw runtime_failure("bench: cannot fill the temporary file (disk full?)");
        }
    }
    return f;
}

// Sends the file again and again (from offset 0) for `seconds` into a discarding sink.
task<std::uint64_t> file_to_socket(event_loop* loop, int file_fd, endpoint to, double seconds,
                                   copy_path* path) {
    auto s = co_await stream::connect(*loop, to, 5s);
    auto dupfd = sys::dup(file_fd);
    if (!s || !dupfd) {
        co_return 0;
    }
    auto f = stream::adopt(*loop, std::move(*dupfd));
    if (!f) {
        co_return 0;
    }
    std::uint64_t sent = 0;
    const auto end = clock::now() + std::chrono::duration_cast<clock::duration>(
                                        std::chrono::duration<double>(seconds));
    while (clock::now() < end) {
        copy_options o;
        o.src_offset = 0;
        auto r = co_await copy(*s, *f, o);
        sent += r.bytes;
        *path = r.path;
        if (!r.ok() || r.bytes == 0) {
            break;
        }
    }
    co_return sent;
}

task<void> receive_to_file(tcp_listener* l, int file_fd, copy_result* out, double* cpu) {
    auto a = co_await l->accept();
    auto dupfd = sys::dup(file_fd);
    if (!a || !dupfd) {
        co_return;
    }
    auto f = stream::adopt(a->conn.loop(), std::move(*dupfd));
    if (!f) {
        co_return;
    }
    const double c0 = thread_cpu_seconds();
    copy_options o;
    o.dst_offset = 0; // rewrite the same region: measures the path, not the disk's size
    *out = co_await copy(*f, a->conn, o);
    *cpu = thread_cpu_seconds() - c0;
}

row file_to_socket_row(double seconds) {
    auto file = temp_file(64u << 20);
    loop_group sink_group{1};
    auto s = tcp_listener::bind(sink_group.loop(0), endpoint::ipv4_loopback(0));
    if (!s) {
        throw runtime_failure("bench: cannot listen on 127.0.0.1");
    }
    sink_group.loop(0).spawn(sink_accept(&sink_group.loop(0), &*s));
    sink_group.start();
    event_loop client;
    copy_path path = copy_path::automatic;
    const double c0 = thread_cpu_seconds();
    const auto t0 = clock::now();
    const std::uint64_t sent = client.block_on(file_to_socket(&client, file.get(), s->local_endpoint(), seconds, &path));
    const double wall = std::chrono::duration<double>(clock::now() - t0).count();
    const double cpu = thread_cpu_seconds() - c0;
    on_loop(sink_group.loop(0), [&] { s->close(); return 0; });
    sink_group.stop();
    sink_group.join();
    return row{"file → socket", to_string(path), gib(sent) / wall, sent ? cpu / gib(sent) : 0, sent};
}

row socket_to_file_row(double seconds) {
    auto file = temp_file(0);
    loop_group recv_group{1};
    auto l = tcp_listener::bind(recv_group.loop(0), endpoint::ipv4_loopback(0));
    if (!l) {
        throw runtime_failure("bench: cannot listen on 127.0.0.1");
    }
    copy_result result;
    double cpu = 0;
    std::promise<void> done;
    recv_group.loop(0).spawn(receive_to_file(&*l, file.get(), &result, &cpu),
                             [&](std::exception_ptr) { done.set_value(); });
    recv_group.start();
    event_loop client;
    const auto t0 = clock::now();
    const std::uint64_t sent = client.block_on(blast(&client, l->local_endpoint(), seconds));
    done.get_future().wait();
    const double wall = std::chrono::duration<double>(clock::now() - t0).count();
    on_loop(recv_group.loop(0), [&] { l->close(); return 0; });
    recv_group.stop();
    recv_group.join();
    (void)sent;
    return row{"socket → file", to_string(result.path), gib(result.bytes) / wall,
               result.bytes ? cpu / gib(result.bytes) : 0, result.bytes};
}

} // namespace

int run_bench_command(const bench_command_options& o) {
    if (!(o.seconds > 0) || o.seconds > 600) {
        throw usage_error("--seconds: expected a number of seconds from 0.1 to 600");
    }
    std::vector<row> rows;
    auto step = [&](const char* what) {
        std::fprintf(stderr, "zcio bench: %s...\n", what);
    };
    step("tcp relay, splice");
    rows.push_back(relay_row(copy_path::splice, o.seconds));
    step("tcp relay, buffer");
    rows.push_back(relay_row(copy_path::buffer, o.seconds));
    step("tcp relay, auto");
    rows.push_back(relay_row(copy_path::automatic, o.seconds));
    step("file → socket");
    rows.push_back(file_to_socket_row(o.seconds));
    step("socket → file");
    rows.push_back(socket_to_file_row(o.seconds));
    step((std::to_string(o.idle_connections) + " idle connections through the relay").c_str());
    idle_cost idle = idle_row(o.idle_connections);

    if (o.json) {
        std::printf("{\n  \"rows\": [\n");
        for (std::size_t i = 0; i < rows.size(); ++i) {
            const auto& r = rows[i];
            std::printf("    {\"name\": \"%s\", \"path\": \"%s\", \"gib_per_s\": %.3f, "
                        "\"cpu_s_per_gib\": %.3f, \"bytes\": %llu}%s\n",
                        r.name.c_str(), r.path.c_str(), r.gib_per_s, r.cpu_per_gib,
                        static_cast<unsigned long long>(r.bytes), i + 1 < rows.size() ? "," : "");
        }
        std::printf("  ],\n  \"idle\": {\"connections\": %zu, \"pipes_leased\": %zu, "
                    "\"buffers_leased\": %zu}\n}\n",
                    idle.connections, idle.pipes_leased, idle.buffers_leased);
        return 0;
    }
    std::printf("\n%-22s %-15s %9s %14s\n", "case", "path", "GiB/s", "CPU s/GiB");
    for (const auto& r : rows) {
        std::printf("%-22s %-15s %9.2f %14.3f\n", r.name.c_str(), r.path.c_str(), r.gib_per_s,
                    r.cpu_per_gib);
    }
    std::printf("\nidle: %zu connections through the relay hold %zu pipes and %zu buffers\n",
                idle.connections, idle.pipes_leased, idle.buffers_leased);
    std::printf("(one process, loopback, %.1f s per case; CPU is the moving thread's)\n", o.seconds);
    return 0;
}

} // namespace zcio::cli
