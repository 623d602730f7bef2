// Tests for listener: accepting over IPv4, IPv6, Unix paths and abstract names with
// random data echoed back; SO_REUSEPORT; the Unix socket file's life; cancellation by
// close(); and running out of descriptors (EMFILE) without spinning, then recovering.
#include <zcio/listener.hpp>

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/stream.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>
#include <zcio/unique_fd.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;

// ---- helpers (coroutines take their parameters by value: see task.hpp) ----

// Writes and reads go in chunks of 1 byte to max_chunk; the echo reads up to echo_chunk.
constexpr std::size_t max_chunk = 32 * 1024;
constexpr std::size_t echo_chunk = 16 * 1024;

// Writes `total` seeded random bytes in chunks of random size, then half-closes. Each
// chunk is made from its own seed, so the bytes differ from stream_test's writer's.
task<void> write_random(stream* s, std::size_t total, std::uint64_t seed, test::side* out) {
    test::size_source sizes(seed);
    test::checksum sum;
    for (std::uint64_t chunk_no = 0; out->bytes < total; ++chunk_no) {
        const std::size_t len = std::min(total - out->bytes, sizes.between(1, max_chunk));
        const auto chunk = test::random_bytes(len, seed * 1'000'003 + chunk_no);
        sum.update(chunk);
        auto w = co_await s->write_all(chunk);
        if (!w) {
            out->error = w.error();
            out->done = true;
            co_return; // the owner may have closed `s`: do not touch it again
        }
        out->bytes += *w;
    }
    out->sum = sum.value();
    if (auto r = s->shutdown_write(); !r) {
        out->error = r.error();
    }
    out->done = true;
}

// The server end of one connection: what accept() gave and what the echo did.
struct served {
    bool accepted = false;
    endpoint peer;
    endpoint local;
    std::error_code accept_error;
    test::side echoed;
};

task<void> accept_and_echo(listener* l, std::uint64_t seed, served* out) {
    auto a = co_await l->accept();
    if (!a) {
        out->accept_error = a.error();
        out->echoed.done = true;
        co_return;
    }
    out->accepted = true;
    out->peer = a->peer;
    out->local = a->conn.local_endpoint().value_or(endpoint{});
    co_await test::echo(std::move(a->conn), seed, echo_chunk, &out->echoed);
}

endpoint must_parse(const std::string& text) {
    auto e = endpoint::parse(text);
    EXPECT_TRUE(e) << text << ": " << (e ? "" : e.error());
    return e.value_or(endpoint{});
}

bool path_is_socket(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool path_exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

class listener_test : public test::fd_leak_check {};

// ---- accept on every kind of address ----

enum class where { ipv4, ipv6, unix_path, unix_abstract };

const char* to_string(where w) {
    switch (w) {
    case where::ipv4:
        return "ipv4";
    case where::ipv6:
        return "ipv6";
    case where::unix_path:
        return "unix_path";
    case where::unix_abstract:
        return "unix_abstract";
    }
    return "?";
}

class listener_accept_test : public test::fd_leak_check,
                             public ::testing::WithParamInterface<where> {};

TEST_P(listener_accept_test, accepts_a_client_and_echoes_random_data) {
    const where w = GetParam();
    if (w == where::ipv6 && !test::ipv6_loopback_available(SOCK_STREAM)) {
        GTEST_SKIP() << "no IPv6 loopback (cannot bind [::1]:0 here)";
    }
    const std::string path = test::temp_path("listener");
    endpoint at;
    switch (w) {
    case where::ipv4:
        at = endpoint::ipv4_loopback(0);
        break;
    case where::ipv6:
        at = endpoint::ipv6_loopback(0);
        break;
    case where::unix_path:
        at = must_parse("unix:" + path);
        break;
    case where::unix_abstract:
        at = must_parse("unix:@" + path.substr(path.rfind('/') + 1));
        break;
    }

    event_loop loop;
    auto l = listener::bind(loop, at);
    ASSERT_TRUE(l) << at.to_string() << ": " << l.error().message();
    const endpoint& bound = l->local_endpoint();
    EXPECT_EQ(bound.family(), at.family());
    if (at.is_ip()) {
        EXPECT_NE(bound.port(), 0) << "local_endpoint() must report the port the kernel chose";
    } else {
        EXPECT_EQ(bound, at) << bound.to_string() << " vs " << at.to_string();
        EXPECT_EQ(bound.is_abstract(), w == where::unix_abstract);
        EXPECT_EQ(path_is_socket(path), w == where::unix_path);
    }

    constexpr std::size_t bytes = 1024 * 1024 + 3;
    served server;
    loop.spawn(accept_and_echo(&*l, 51, &server));
    auto client = loop.block_on(stream::connect(loop, bound, 5s));
    ASSERT_TRUE(client) << "connect " << bound.to_string() << ": " << client.error().message();
    test::side sent, received;
    loop.spawn(write_random(&*client, bytes, 52, &sent));
    loop.spawn(test::consume(&*client, 53, max_chunk, &received));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return sent.done && received.done && server.echoed.done; }, 20s)))
        << "sent " << sent << " echoed " << server.echoed << " received " << received;

    EXPECT_TRUE(server.accepted) << server.accept_error.message();
    EXPECT_EQ(server.local, bound);
    if (at.is_ip()) {
        // accept()'s peer is the client's own address, port included.
        EXPECT_EQ(server.peer, client->local_endpoint().value_or(endpoint{}))
            << server.peer.to_string();
    } else {
        EXPECT_TRUE(server.peer.is_unix());
    }
    EXPECT_FALSE(sent.error) << sent.error.message();
    EXPECT_FALSE(received.error) << received.error.message();
    EXPECT_FALSE(server.echoed.error) << server.echoed.error.message();
    EXPECT_EQ(sent.bytes, bytes);
    EXPECT_EQ(server.echoed.bytes, bytes);
    EXPECT_EQ(received.bytes, bytes);
    EXPECT_EQ(received.sum, sent.sum) << "the bytes that came back differ from those sent";

    client->close();
    l->close();
    EXPECT_FALSE(path_exists(path));
    EXPECT_EQ(loop.registered_count(), 0u);
}

INSTANTIATE_TEST_SUITE_P(addresses, listener_accept_test,
                         ::testing::Values(where::ipv4, where::ipv6, where::unix_path,
                                           where::unix_abstract),
                         [](const ::testing::TestParamInfo<where>& param_info) {
                             return std::string(to_string(param_info.param));
                         });

// ---- SO_REUSEPORT ----

// Accepts until the listener is closed, starting an echo for every connection.
task<void> accept_loop(event_loop* loop, listener* l, std::uint64_t seed,
                       std::deque<test::side>* echoes, std::error_code* ended) {
    while (true) {
        auto a = co_await l->accept();
        if (!a) {
            *ended = a.error();
            co_return;
        }
        echoes->emplace_back(); // a deque keeps the addresses of earlier elements
        loop->spawn(test::echo(std::move(a->conn), seed++, echo_chunk, &echoes->back()));
    }
}

// Connects `n` clients one after another; each sends random bytes and checks the echo.
task<void> clients(event_loop* loop, endpoint to, std::size_t n, std::vector<test::side>* sent,
                   std::vector<test::side>* received, std::error_code* error) {
    for (std::size_t i = 0; i < n; ++i) {
        auto c = co_await stream::connect(*loop, to, 5s);
        if (!c) {
            *error = c.error();
            co_return;
        }
        // 3 KiB fits in the socket buffers, so writing all before reading cannot stall.
        co_await write_random(&*c, 3000, 60 + i, &(*sent)[i]);
        co_await test::consume(&*c, 600 + i, max_chunk, &(*received)[i]);
    }
}

TEST_F(listener_test, reuse_port_lets_two_listeners_share_a_port_and_both_accept) {
    event_loop loop;
    listen_options shared;
    shared.reuse_port = true;
    auto a = listener::bind(loop, endpoint::ipv4_loopback(0), shared);
    ASSERT_TRUE(a) << a.error().message();
    const std::uint16_t port = a->local_endpoint().port();
    auto b = listener::bind(loop, endpoint::ipv4_loopback(port), shared);
    ASSERT_TRUE(b) << "second SO_REUSEPORT listener on port " << port << ": "
                   << b.error().message();
    EXPECT_EQ(b->local_endpoint(), a->local_endpoint());
    {
        // Without SO_REUSEPORT the port is taken.
        auto c = listener::bind(loop, endpoint::ipv4_loopback(port));
        ASSERT_FALSE(c);
        EXPECT_EQ(c.error(), std::errc::address_in_use) << c.error().message();
    }

    constexpr std::size_t n = 64;
    std::deque<test::side> echoes_a, echoes_b;
    std::error_code ended_a, ended_b, client_error;
    std::vector<test::side> sent(n), received(n);
    loop.spawn(accept_loop(&loop, &*a, 100, &echoes_a, &ended_a));
    loop.spawn(accept_loop(&loop, &*b, 200, &echoes_b, &ended_b));
    std::size_t clients_done = 0;
    loop.spawn(clients(&loop, a->local_endpoint(), n, &sent, &received, &client_error),
               [&clients_done](const std::exception_ptr&) { ++clients_done; });
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return clients_done == 1; }, 20s)));
    EXPECT_FALSE(client_error) << client_error.message();
    ASSERT_EQ(echoes_a.size() + echoes_b.size(), n);
    // The kernel hashes each 4-tuple to a listener: with 64 clients the chance that one
    // listener gets none is 2^-63.
    EXPECT_GT(echoes_a.size(), 0u);
    EXPECT_GT(echoes_b.size(), 0u);
    for (std::size_t i = 0; i < n; ++i) {
        EXPECT_FALSE(received[i].error) << i << ": " << received[i].error.message();
        EXPECT_EQ(received[i].bytes, 3000u) << i;
        EXPECT_EQ(received[i].sum, sent[i].sum) << "client " << i;
    }
    for (const auto* echoes : {&echoes_a, &echoes_b}) {
        for (const test::side& e : *echoes) {
            EXPECT_TRUE(e.done);
            EXPECT_FALSE(e.error) << e.error.message();
        }
    }

    // Closing a listener ends its pending accept with operation_canceled.
    a->close();
    b->close();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return ended_a && ended_b; }, 5s)));
    EXPECT_EQ(ended_a, std::errc::operation_canceled) << ended_a.message();
    EXPECT_EQ(ended_b, std::errc::operation_canceled) << ended_b.message();
    EXPECT_EQ(loop.spawned_count(), 0u);
    EXPECT_EQ(loop.registered_count(), 0u);
}

// ---- the Unix socket file ----

// A socket file nobody listens on, as a crashed server leaves behind.
void make_stale_socket_file(const std::string& path) {
    auto fd = sys::socket(AF_UNIX, SOCK_STREAM);
    ASSERT_TRUE(fd) << fd.error().message();
    const auto at = must_parse("unix:" + path);
    ASSERT_TRUE(sys::bind(fd->get(), at.data(), at.size())) << path;
    ASSERT_TRUE(path_is_socket(path));
}

TEST_F(listener_test, unix_path_is_removed_on_close) {
    event_loop loop;
    const std::string path = test::temp_path("listener");
    auto l = listener::bind(loop, must_parse("unix:" + path));
    ASSERT_TRUE(l) << l.error().message();
    EXPECT_TRUE(path_is_socket(path));
    l->close();
    EXPECT_FALSE(path_exists(path)) << path << " outlived its listener";
    // Closing twice (and the destructor after close) is harmless.
    l->close();
}

TEST_F(listener_test, unix_path_follows_a_moved_listener) {
    event_loop loop;
    const std::string path = test::temp_path("listener");
    auto l = listener::bind(loop, must_parse("unix:" + path));
    ASSERT_TRUE(l) << l.error().message();
    listener moved = std::move(*l);
    l->close(); // the moved-from listener owns nothing
    EXPECT_TRUE(path_is_socket(path)) << "closing a moved-from listener removed the file";
    listener assigned;
    assigned = std::move(moved);
    moved.close();
    EXPECT_TRUE(path_is_socket(path));
    assigned.close();
    EXPECT_FALSE(path_exists(path));
}

TEST_F(listener_test, stale_unix_socket_file_is_replaced_on_bind) {
    event_loop loop;
    const std::string path = test::temp_path("listener");
    make_stale_socket_file(path);
    auto l = listener::bind(loop, must_parse("unix:" + path));
    ASSERT_TRUE(l) << "bind over a stale socket file: " << l.error().message();
    l->close();
    EXPECT_FALSE(path_exists(path));
}

TEST_F(listener_test, unix_path_is_left_alone_when_unlinking_is_off_or_not_a_socket) {
    event_loop loop;
    const std::string path = test::temp_path("listener");
    make_stale_socket_file(path);
    listen_options keep;
    keep.unlink_unix_path = false;
    auto l = listener::bind(loop, must_parse("unix:" + path), keep);
    ASSERT_FALSE(l);
    EXPECT_EQ(l.error(), std::errc::address_in_use) << l.error().message();
    EXPECT_TRUE(path_is_socket(path));
    ASSERT_EQ(::unlink(path.c_str()), 0);

    // A regular file at the path is never removed, whatever the options say.
    {
        auto f = sys::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ASSERT_TRUE(f) << f.error().message();
    }
    auto m = listener::bind(loop, must_parse("unix:" + path));
    ASSERT_FALSE(m);
    EXPECT_EQ(m.error(), std::errc::address_in_use) << m.error().message();
    EXPECT_TRUE(path_exists(path)) << "bind removed a regular file";
    ::unlink(path.c_str());
}

// A socket listening at `path` that is not a listener (another server): bound and
// listening, never accepting unless the test does.
unique_fd listen_elsewhere(const std::string& path) {
    auto fd = sys::socket(AF_UNIX, SOCK_STREAM);
    EXPECT_TRUE(fd) << fd.error().message();
    if (!fd) {
        return {};
    }
    const auto at = must_parse("unix:" + path);
    EXPECT_TRUE(sys::bind(fd->get(), at.data(), at.size())) << path;
    EXPECT_TRUE(sys::listen(fd->get(), 8));
    return std::move(*fd);
}

ino_t inode_of(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// A client of the other server still gets through: its file is the one at the path.
void expect_reaches(const std::string& path, int listening_fd) {
    auto c = sys::socket(AF_UNIX, SOCK_STREAM);
    ASSERT_TRUE(c) << c.error().message();
    const auto at = must_parse("unix:" + path);
    ASSERT_TRUE(sys::connect(c->get(), at.data(), at.size())) << "connect " << path;
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    auto a = sys::accept(listening_fd, reinterpret_cast<sockaddr*>(&peer), &len);
    EXPECT_TRUE(a) << "the other server did not get the connection: "
                   << (a ? "" : a.error().message());
}

// The bug: a live socket was unlinked and taken over, cutting off the server that
// listened there; now it is "in use" and the file is untouched.
TEST_F(listener_test, live_unix_socket_is_in_use_and_left_alone) {
    event_loop loop;
    const std::string path = test::temp_path("listener");
    unique_fd other = listen_elsewhere(path);
    ASSERT_TRUE(other.valid());
    const ino_t inode = inode_of(path);
    auto l = listener::bind(loop, must_parse("unix:" + path));
    ASSERT_FALSE(l) << "bound over a live socket";
    EXPECT_EQ(l.error(), std::errc::address_in_use) << l.error().message();
    EXPECT_EQ(inode_of(path), inode) << "the live socket file was replaced";
    {
        // The liveness probe's connection waits in the other server's queue.
        sockaddr_storage peer{};
        socklen_t len = sizeof peer;
        auto probe = sys::accept(other.get(), reinterpret_cast<sockaddr*>(&peer), &len);
        EXPECT_TRUE(probe) << "the liveness probe did not reach the other server";
    }
    ASSERT_NO_FATAL_FAILURE(expect_reaches(path, other.get()));
    other.reset();
    ::unlink(path.c_str());
}

// A live server whose backlog is full refuses with EAGAIN, not ECONNREFUSED: still live.
TEST_F(listener_test, live_unix_socket_with_a_full_backlog_is_in_use) {
    event_loop loop;
    const std::string path = test::temp_path("listener");
    unique_fd other = listen_elsewhere(path);
    ASSERT_TRUE(other.valid());
    const auto at = must_parse("unix:" + path);
    std::vector<unique_fd> queued;
    bool full = false;
    for (int i = 0; i < 64 && !full; ++i) {
        auto c = sys::socket(AF_UNIX, SOCK_STREAM);
        ASSERT_TRUE(c) << c.error().message();
        auto r = sys::connect(c->get(), at.data(), at.size());
        full = !r && errno_of(r.error()) == EAGAIN;
        queued.push_back(std::move(*c));
    }
    if (!full) {
        ::unlink(path.c_str());
        GTEST_SKIP() << "64 connects did not fill a backlog of 8 here";
    }
    auto l = listener::bind(loop, at);
    ASSERT_FALSE(l) << "bound over a live socket with a full backlog";
    EXPECT_EQ(l.error(), std::errc::address_in_use) << l.error().message();
    EXPECT_TRUE(path_is_socket(path));
    queued.clear();
    other.reset();
    ::unlink(path.c_str());
}

TEST_F(listener_test, symlink_at_the_unix_path_is_never_removed) {
    event_loop loop;
    const std::string target = test::temp_path("listener-target");
    const std::string path = test::temp_path("listener");
    make_stale_socket_file(target); // stale, but the path itself is a symlink
    ASSERT_EQ(::symlink(target.c_str(), path.c_str()), 0);
    auto l = listener::bind(loop, must_parse("unix:" + path));
    ASSERT_FALSE(l);
    EXPECT_EQ(l.error(), std::errc::address_in_use) << l.error().message();
    struct stat st {};
    EXPECT_EQ(::lstat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISLNK(st.st_mode)) << "the symlink was removed";
    EXPECT_TRUE(path_is_socket(target)) << "the symlink's target was removed";
    ::unlink(path.c_str());
    ::unlink(target.c_str());
}

// Someone removed our file and another server bound the path: closing must not remove
// the new server's socket.
TEST_F(listener_test, close_leaves_a_socket_file_that_replaced_ours) {
    event_loop loop;
    const std::string path = test::temp_path("listener");
    auto l = listener::bind(loop, must_parse("unix:" + path));
    ASSERT_TRUE(l) << l.error().message();
    ASSERT_EQ(::unlink(path.c_str()), 0);
    unique_fd other = listen_elsewhere(path);
    ASSERT_TRUE(other.valid());
    const ino_t inode = inode_of(path);
    l->close();
    EXPECT_EQ(inode_of(path), inode) << "close() removed another server's socket file";
    ASSERT_NO_FATAL_FAILURE(expect_reaches(path, other.get()));
    other.reset();
    ::unlink(path.c_str());
}

// ---- running out of descriptors ----

// Runs, while descriptors are still to spare, every kind of waiter the exhausted
// phase of a test uses: an accept, a spawn, a block_on of a void task, a sleep and an
// operation-named error.
// UBSan's vptr check (-fsanitize=undefined) probes memory through a pipe the first
// time it meets a polymorphic type (sanitizer_common IsAccessibleMemoryRange), and
// without a free descriptor that probe fails and reports a false "invalid vptr".
void warm_up(event_loop& loop, listener& l) {
    served warm;
    loop.spawn(accept_and_echo(&l, 1, &warm));
    auto c = loop.block_on(stream::connect(loop, l.local_endpoint(), 5s));
    ASSERT_TRUE(c) << c.error().message();
    ASSERT_TRUE(c->shutdown_write());
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return warm.echoed.done; }, 5s)));
    EXPECT_TRUE(warm.accepted) << warm.accept_error.message();
    loop.block_on(test::pause(&loop, 1ms));
    // The error a cancelled accept() reports, so its category object exists already.
    EXPECT_EQ(op_error("accept4", ECANCELED), std::errc::operation_canceled);
}

// accept() under EMFILE must leave the client queued, back off instead of spinning
// (an edge-triggered listener gets no new edge for a client already queued), and take
// the client once descriptors are available again.
TEST_F(listener_test, accept_backs_off_when_out_of_descriptors_and_recovers) {
    event_loop loop;
    auto l = listener::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(l) << l.error().message();
    ASSERT_NO_FATAL_FAILURE(warm_up(loop, *l));
    ASSERT_EQ(l->fd_exhausted_count(), 0u);
    // The client's socket is made (and watched) while descriptors are still available.
    auto cfd = sys::socket(AF_INET, SOCK_STREAM);
    ASSERT_TRUE(cfd) << cfd.error().message();
    auto client = stream::adopt(loop, std::move(*cfd));
    ASSERT_TRUE(client) << client.error().message();

    served server;
    std::chrono::microseconds cpu{};
    clock::duration wall{};
    {
        test::fd_limit_guard limit;
        ASSERT_TRUE(limit.exhaust()) << "could not lower RLIMIT_NOFILE";
        auto probe = sys::eventfd();
        ASSERT_FALSE(probe) << "descriptors are not exhausted";
        EXPECT_EQ(probe.error(), std::errc::too_many_files_open) << probe.error().message();

        // The handshake completes in the kernel: the client waits in the accept queue.
        const endpoint& to = l->local_endpoint();
        auto c = sys::connect(client->fd(), to.data(), to.size());
        ASSERT_TRUE(c || errno_of(c.error()) == EINPROGRESS) << c.error().message();

        loop.spawn(accept_and_echo(&*l, 71, &server));
        const auto cpu_start = test::cpu_time();
        const auto wall_start = clock::now();
        loop.block_on(test::pause(&loop, 300ms));
        cpu = test::cpu_time() - cpu_start;
        wall = clock::now() - wall_start;
        limit.restore();
    }
    EXPECT_FALSE(server.accepted) << "accepted although no descriptor was available";
    EXPECT_FALSE(server.accept_error) << "accept gave up: " << server.accept_error.message();
    EXPECT_GT(l->fd_exhausted_count(), 0u);
    EXPECT_LT(static_cast<double>(cpu.count()),
              0.3 * static_cast<double>(
                        std::chrono::duration_cast<std::chrono::microseconds>(wall).count()))
        << "accept burned " << cpu.count() << " us of CPU in "
        << std::chrono::duration_cast<std::chrono::milliseconds>(wall).count() << " ms";
    const auto exhausted = l->fd_exhausted_count();

    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return server.accepted; }, 1s)))
        << "the queued client was not accepted within a second of descriptors freeing up";
    EXPECT_EQ(l->fd_exhausted_count(), exhausted);

    constexpr std::size_t bytes = 256 * 1024;
    test::side sent, received;
    loop.spawn(write_random(&*client, bytes, 72, &sent));
    loop.spawn(test::consume(&*client, 73, max_chunk, &received));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return sent.done && received.done && server.echoed.done; }, 20s)))
        << "sent " << sent << " echoed " << server.echoed << " received " << received;
    EXPECT_FALSE(sent.error) << sent.error.message();
    EXPECT_FALSE(received.error) << received.error.message();
    EXPECT_EQ(received.bytes, bytes);
    EXPECT_EQ(received.sum, sent.sum);
    EXPECT_EQ(server.peer, client->local_endpoint().value_or(endpoint{}));
}

// close() while accept() is backing off from EMFILE ends the accept with
// operation_canceled instead of touching the closed listener.
TEST_F(listener_test, close_during_emfile_back_off_cancels_the_accept) {
    event_loop loop;
    auto l = listener::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(l) << l.error().message();
    ASSERT_NO_FATAL_FAILURE(warm_up(loop, *l));
    auto client = loop.block_on(stream::connect(loop, l->local_endpoint(), 5s));
    ASSERT_TRUE(client) << client.error().message();
    served server;
    {
        test::fd_limit_guard limit;
        ASSERT_TRUE(limit.exhaust()) << "could not lower RLIMIT_NOFILE";
        loop.spawn(accept_and_echo(&*l, 81, &server));
        loop.block_on(test::pause(&loop, 20ms));
        ASSERT_GT(l->fd_exhausted_count(), 0u);
        l->close();
        loop.block_on(test::pause(&loop, 100ms)); // past the pending back-off pause
    }
    EXPECT_FALSE(server.accepted);
    EXPECT_EQ(server.accept_error, std::errc::operation_canceled) << server.accept_error.message();
    EXPECT_EQ(loop.spawned_count(), 0u);
}

} // namespace
} // namespace zcio
