// Tests for stream: random data echoed over socketpairs, TCP (IPv4/IPv6) and Unix
// sockets in chunks of random size; thousands of concurrent echoes; half-close;
// connect errors and timeouts; cancellation by close, forget and with_timeout; and
// regular files, which the kernel cannot poll.
#include <zcio/stream.hpp>

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/listener.hpp>
#include <zcio/result.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>
#include <zcio/timeout.hpp>
#include <zcio/unique_fd.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;

// ---- helpers (coroutines take their parameters by value: see task.hpp) ----

// Writes `total` seeded random bytes in chunks of random size, then half-closes. The
// data is generated a block at a time as it is sent, so thousands of writers hold
// little memory. After a failed write it no longer touches `s`: the owner may have
// closed it.
task<void> write_random(stream* s, std::size_t total, std::uint64_t seed, std::size_t max_chunk,
                        test::side* out) {
    const std::size_t block_size = std::max<std::size_t>(4 * max_chunk, 16 * 1024);
    test::size_source sizes(seed);
    test::checksum sum;
    std::vector<std::byte> block;
    std::size_t at = 0; // bytes of `block` already sent
    for (std::uint64_t block_no = 0; out->bytes < total;) {
        if (at == block.size()) {
            block = test::random_bytes(std::min(block_size, total - out->bytes),
                                       seed * 1'000'003 + block_no++);
            sum.update(block);
            at = 0;
        }
        const std::size_t len = std::min(block.size() - at, sizes.between(1, max_chunk));
        auto w = co_await s->write_all(std::span(block).subspan(at, len));
        if (!w) {
            out->error = w.error();
            out->done = true;
            co_return;
        }
        at += *w;
        out->bytes += *w;
    }
    out->sum = sum.value();
    if (auto r = s->shutdown_write(); !r) {
        out->error = r.error();
    }
    out->done = true;
}

enum class transport { socketpair, tcp_ipv4, tcp_ipv6, unix_path };

const char* to_string(transport t) {
    switch (t) {
    case transport::socketpair:
        return "socketpair";
    case transport::tcp_ipv4:
        return "tcp_ipv4";
    case transport::tcp_ipv6:
        return "tcp_ipv6";
    case transport::unix_path:
        return "unix_path";
    }
    return "?";
}

// A connected pair over `kind`: `first` is the connecting (client) end, `second` the
// accepted (server) end; for a socketpair, its two fds in order.
task<result<test::stream_pair>> open_pair(event_loop* loop, transport kind) {
    if (kind == transport::socketpair) {
        co_return test::unix_pair(*loop);
    }
    endpoint at;
    if (kind == transport::tcp_ipv4) {
        at = endpoint::ipv4_loopback(0);
    } else if (kind == transport::tcp_ipv6) {
        at = endpoint::ipv6_loopback(0);
    } else {
        auto parsed = endpoint::parse("unix:" + test::temp_path("stream"));
        if (!parsed) {
            co_return fail(std::make_error_code(std::errc::invalid_argument));
        }
        at = *parsed;
    }
    co_return co_await test::tcp_pair(loop, at);
}

class stream_test : public test::fd_leak_check {};

// ---- echo with random data, over each transport, echo on either end ----

struct echo_case {
    transport kind;
    bool echo_on_server; // false: the accepting side writes and the connecting side echoes
    std::size_t bytes;
};

class stream_echo_test : public test::fd_leak_check,
                         public ::testing::WithParamInterface<echo_case> {};

TEST_P(stream_echo_test, random_data_round_trips_in_random_chunks) {
    const echo_case& c = GetParam();
    if (c.kind == transport::tcp_ipv6 && !test::ipv6_loopback_available(SOCK_STREAM)) {
        GTEST_SKIP() << "no IPv6 loopback (cannot bind [::1]:0 here)";
    }
    event_loop loop;
    auto p = loop.block_on(open_pair(&loop, c.kind));
    ASSERT_TRUE(p) << p.error().message();
    // open_pair() puts the client first and the server second.
    stream& near = c.echo_on_server ? p->first : p->second;
    stream far = std::move(c.echo_on_server ? p->second : p->first);

    constexpr std::uint64_t seed = 0x5eed'0001;
    constexpr std::size_t max_chunk = 64 * 1024;
    test::side sent, echoed, received;
    loop.spawn(test::echo(std::move(far), seed + 1, max_chunk, &echoed));
    loop.spawn(write_random(&near, c.bytes, seed, max_chunk, &sent));
    loop.spawn(test::consume(&near, seed + 2, max_chunk, &received));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return sent.done && echoed.done && received.done; }, 20s)))
        << "sent " << sent << " echoed " << echoed << " received " << received;

    EXPECT_FALSE(sent.error) << sent.error.message();
    EXPECT_FALSE(echoed.error) << echoed.error.message();
    EXPECT_FALSE(received.error) << received.error.message();
    EXPECT_EQ(sent.bytes, c.bytes);
    EXPECT_EQ(echoed.bytes, c.bytes);
    EXPECT_EQ(received.bytes, c.bytes);
    EXPECT_EQ(received.sum, sent.sum) << "the bytes that came back differ from those sent";
}

std::vector<echo_case> echo_cases() {
    std::vector<echo_case> out;
    for (transport t :
         {transport::socketpair, transport::tcp_ipv4, transport::tcp_ipv6, transport::unix_path}) {
        for (bool on_server : {true, false}) {
            out.push_back({t, on_server, 4 * 1024 * 1024 + 17});
        }
    }
    return out;
}

INSTANTIATE_TEST_SUITE_P(transports, stream_echo_test, ::testing::ValuesIn(echo_cases()),
                         [](const ::testing::TestParamInfo<echo_case>& param_info) {
                             const echo_case& c = param_info.param;
                             return std::string(to_string(c.kind)) +
                                    (c.echo_on_server ? "_echo_on_server" : "_echo_on_client");
                         });

// ---- many at once ----

// 2,000 socketpairs (4,000 fds), each with an echo coroutine on one end and a writer
// and a reader coroutine on the other: 6,000 coroutines alive at once on one loop,
// each pair moving 64 KiB of its own random data and checking it came back intact.
// Spawned tasks do not start before the loop runs, so all are alive together.
TEST_F(stream_test, thousands_of_concurrent_coroutines_echo_over_socketpairs) {
    constexpr std::size_t pairs = 2000;
#if defined(__SANITIZE_THREAD__)
    // TSan instruments each byte that random_bytes() writes and checksum reads: at
    // 64 KiB a pair this one test takes ~12 s there, so move half as much.
    constexpr std::size_t bytes_each = 32 * 1024;
#else
    constexpr std::size_t bytes_each = 64 * 1024;
#endif
    constexpr std::size_t max_chunk = 4096; // small buffers: 6,000 frames hold ~50 MiB
    event_loop loop;
    const auto registered_before = loop.registered_count();
    std::vector<stream> clients;
    std::vector<test::side> sent(pairs), echoed(pairs), received(pairs);
    clients.reserve(pairs);
    std::size_t finished = 0;
    auto count = [&finished](const std::exception_ptr&) { ++finished; };
    for (std::size_t i = 0; i < pairs; ++i) {
        auto p = test::unix_pair(loop);
        ASSERT_TRUE(p) << "pair " << i << ": " << p.error().message();
        clients.push_back(std::move(p->first));
        const std::uint64_t seed = 1000 + 3 * i;
        loop.spawn(test::echo(std::move(p->second), seed, max_chunk, &echoed[i]), count);
        loop.spawn(write_random(&clients[i], bytes_each, seed + 1, max_chunk, &sent[i]), count);
        loop.spawn(test::consume(&clients[i], seed + 2, max_chunk, &received[i]), count);
    }
    EXPECT_EQ(loop.spawned_count(), 3 * pairs);
    EXPECT_EQ(loop.registered_count(), registered_before + 2 * pairs);
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return finished == 3 * pairs; }, 60s)))
        << finished << " of " << 3 * pairs << " coroutines finished";

    std::size_t bad = 0;
    for (std::size_t i = 0; i < pairs; ++i) {
        const bool ok = !sent[i].error && !echoed[i].error && !received[i].error &&
                        sent[i].bytes == bytes_each && received[i].bytes == bytes_each &&
                        echoed[i].bytes == bytes_each && received[i].sum == sent[i].sum;
        if (!ok && ++bad <= 5) {
            ADD_FAILURE() << "pair " << i << ": sent " << sent[i] << " echoed " << echoed[i]
                          << " received " << received[i];
        }
    }
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(loop.spawned_count(), 0u);
    clients.clear();
    EXPECT_EQ(loop.registered_count(), registered_before) << "a stream stayed registered";
}

// ---- half-close ----

struct half_close_report {
    std::size_t eof_reads = 0;   // the peer's reads that returned 0
    std::size_t reply_bytes = 0; // what the half-closed side still received
    std::uint64_t reply_sum = 0;
    std::error_code error;
};

// `a` sends `request` and half-closes; `b` reads it to EOF and answers with `reply`
// after the EOF, proving that b can still write and a can still read; then b closes
// and a sees EOF.
task<void> half_close_dialogue(stream* a, stream* b, std::vector<std::byte> request,
                               std::vector<std::byte> reply, half_close_report* out) {
    if (auto w = co_await a->write_all(request); !w) {
        out->error = w.error();
        co_return;
    }
    if (auto r = a->shutdown_write(); !r) {
        out->error = r.error();
        co_return;
    }
    std::vector<std::byte> got;
    std::array<std::byte, 1000> buf{};
    while (true) {
        auto n = co_await b->read_some(buf);
        if (!n) {
            out->error = n.error();
            co_return;
        }
        if (*n == 0) {
            ++out->eof_reads;
            break;
        }
        got.insert(got.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(*n));
    }
    EXPECT_EQ(test::checksum_of(got), test::checksum_of(request));
    // A second read after EOF says EOF again.
    if (auto n = co_await b->read_some(buf); n && *n == 0) {
        ++out->eof_reads;
    }
    if (auto w = co_await b->write_all(reply); !w) {
        out->error = w.error();
        co_return;
    }
    b->close();
    test::checksum sum;
    while (true) {
        auto n = co_await a->read_some(buf);
        if (!n) {
            out->error = n.error();
            co_return;
        }
        if (*n == 0) {
            break;
        }
        sum.update(std::span(buf).first(*n));
        out->reply_bytes += *n;
    }
    out->reply_sum = sum.value();
}

class stream_half_close_test : public test::fd_leak_check,
                               public ::testing::WithParamInterface<transport> {};

TEST_P(stream_half_close_test, peer_reads_eof_and_can_still_write_back) {
    if (GetParam() == transport::tcp_ipv6 && !test::ipv6_loopback_available(SOCK_STREAM)) {
        GTEST_SKIP() << "no IPv6 loopback (cannot bind [::1]:0 here)";
    }
    event_loop loop;
    auto p = loop.block_on(open_pair(&loop, GetParam()));
    ASSERT_TRUE(p) << p.error().message();
    const auto request = test::random_bytes(50'000, 11);
    const auto reply = test::random_bytes(70'000, 12);
    half_close_report report;
    loop.block_on(half_close_dialogue(&p->first, &p->second, request, reply, &report));
    EXPECT_FALSE(report.error) << report.error.message();
    EXPECT_EQ(report.eof_reads, 2u);
    EXPECT_EQ(report.reply_bytes, reply.size());
    EXPECT_EQ(report.reply_sum, test::checksum_of(reply));
}

INSTANTIATE_TEST_SUITE_P(transports, stream_half_close_test,
                         ::testing::Values(transport::socketpair, transport::tcp_ipv4,
                                           transport::tcp_ipv6, transport::unix_path),
                         [](const ::testing::TestParamInfo<transport>& param_info) {
                             return std::string(to_string(param_info.param));
                         });

// ---- connect errors ----

TEST_F(stream_test, connect_to_a_port_nobody_listens_on_is_refused) {
    event_loop loop;
    // Hold the port with a bound socket that does not listen: the kernel answers a SYN
    // with RST (so ECONNREFUSED), and no other process can start listening there.
    auto holder = sys::socket(AF_INET, SOCK_STREAM);
    ASSERT_TRUE(holder) << holder.error().message();
    const auto any_port = endpoint::ipv4_loopback(0);
    ASSERT_TRUE(sys::bind(holder->get(), any_port.data(), any_port.size()));
    auto to = local_endpoint_of(holder->get());
    ASSERT_TRUE(to) << to.error().message();
    ASSERT_NE(to->port(), 0);

    auto r = loop.block_on(stream::connect(loop, *to, 5s));
    ASSERT_FALSE(r) << "connected to " << to->to_string();
    EXPECT_EQ(r.error(), std::errc::connection_refused) << r.error().message();
    EXPECT_EQ(loop.registered_count(), 0u);
}

// Connects until one connect hangs: with the accept queue of a never-accepting
// listener full, Linux drops further SYNs (tcp_conn_request: sk_acceptq_is_full), so
// the client waits in SYN_SENT and the connect timeout must fire.
task<result<std::size_t>> connect_until_one_hangs(event_loop* loop, endpoint to,
                                                  std::vector<stream>* held) {
    for (std::size_t i = 0; i < 16; ++i) {
        auto c = co_await stream::connect(*loop, to, 200ms);
        if (!c) {
            co_return fail(c.error());
        }
        held->push_back(std::move(*c));
    }
    co_return held->size();
}

TEST_F(stream_test, connect_times_out_when_the_listener_backlog_is_full) {
    event_loop loop;
    listen_options opts;
    opts.backlog = 0;
    auto listener = listener::bind(loop, endpoint::ipv4_loopback(0), opts);
    ASSERT_TRUE(listener) << listener.error().message();
    std::vector<stream> held;
    const auto started = clock::now();
    auto r = loop.block_on(connect_until_one_hangs(&loop, listener->local_endpoint(), &held));
    const auto took = clock::now() - started;
    if (r) {
        GTEST_SKIP() << "16 connects completed against a full backlog: this kernel acks "
                        "SYNs regardless, so loopback cannot be made to hang";
    }
    if (r.error() == std::errc::connection_refused) {
        GTEST_SKIP() << "net.ipv4.tcp_abort_on_overflow is set: a full backlog refuses";
    }
    EXPECT_EQ(r.error(), std::errc::timed_out) << r.error().message();
    EXPECT_FALSE(held.empty()) << "even the first connect hung";
    EXPECT_GE(took, 200ms);
    held.clear();
    EXPECT_EQ(loop.registered_count(), 1u) << "only the listener should be registered";
}

// ---- connecting to a list of addresses (Happy Eyeballs) ----

// An address that refuses connects: a socket bound there that does not listen (the
// kernel answers a SYN with RST) holds the port, so no other process can listen on it.
struct refusing_address {
    unique_fd holder;
    endpoint at;
};

refusing_address refuse_on(int family) {
    refusing_address r;
    auto fd = sys::socket(family, SOCK_STREAM);
    EXPECT_TRUE(fd) << fd.error().message();
    if (!fd) {
        return r;
    }
    const endpoint any = test::loopback(family);
    EXPECT_TRUE(sys::bind(fd->get(), any.data(), any.size()));
    r.at = local_endpoint_of(fd->get()).value_or(endpoint{});
    r.holder = std::move(*fd);
    return r;
}

// An address whose connects hang in SYN_SENT: a listener that never accepts, with its
// accept queue filled (see connect_until_one_hangs). Empty `at` when this kernel
// cannot be made to hang a loopback connect.
struct hanging_address {
    zcio::listener listener;
    std::vector<stream> held; // the connects that filled the queue
    endpoint at;
};

hanging_address hang_on(event_loop& loop) {
    hanging_address h;
    listen_options opts;
    opts.backlog = 0;
    auto l = listener::bind(loop, endpoint::ipv4_loopback(0), opts);
    EXPECT_TRUE(l) << l.error().message();
    if (!l) {
        return h;
    }
    h.listener = std::move(*l);
    auto r = loop.block_on(connect_until_one_hangs(&loop, h.listener.local_endpoint(), &h.held));
    if (!r && r.error() == std::errc::timed_out) {
        h.at = h.listener.local_endpoint();
    }
    return h;
}

// Accepts one connection on `l` and echoes it until end of stream.
task<void> accept_one_and_echo(listener* l, test::side* out) {
    auto a = co_await l->accept();
    if (!a) {
        out->error = a.error();
        out->done = true;
        co_return;
    }
    co_await test::echo(std::move(a->conn), 7, 16 * 1024, out);
}

// Sends seeded random data over `c` to an echo and checks what comes back.
void expect_echo_through(event_loop& loop, stream& c, test::side& echoed) {
    constexpr std::size_t bytes = 512 * 1024 + 5;
    test::side sent, received;
    loop.spawn(write_random(&c, bytes, 91, 32 * 1024, &sent));
    loop.spawn(test::consume(&c, 92, 32 * 1024, &received));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return sent.done && received.done && echoed.done; }, 20s)))
        << "sent " << sent << " echoed " << echoed << " received " << received;
    EXPECT_FALSE(sent.error) << sent.error.message();
    EXPECT_FALSE(received.error) << received.error.message();
    EXPECT_EQ(received.bytes, bytes);
    EXPECT_EQ(received.sum, sent.sum) << "the bytes that came back differ from those sent";
}

TEST_F(stream_test, connect_to_a_list_skips_a_refused_address_and_carries_data) {
    // The case of "localhost" with an "::1 localhost" line and a server on 127.0.0.1
    // only; without IPv6 the refused address is another IPv4 port.
    const int dead_family = test::ipv6_loopback_available(SOCK_STREAM) ? AF_INET6 : AF_INET;
    event_loop loop;
    auto dead = refuse_on(dead_family);
    auto live = listener::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(live) << live.error().message();
    const std::vector<endpoint> to{dead.at, live->local_endpoint()};

    test::side echoed;
    loop.spawn(accept_one_and_echo(&*live, &echoed));
    std::vector<connect_failure> failed;
    auto c = loop.block_on(stream::connect(loop, to, 5s, &failed));
    ASSERT_TRUE(c) << "connect to " << to[0].to_string() << ", " << to[1].to_string() << ": "
                   << c.error().message();
    EXPECT_EQ(c->peer_endpoint().value_or(endpoint{}), live->local_endpoint());
    ASSERT_EQ(failed.size(), 1u) << to_string(failed);
    EXPECT_EQ(failed[0].to, dead.at);
    EXPECT_EQ(failed[0].error, std::errc::connection_refused) << failed[0].error.message();
    ASSERT_NO_FATAL_FAILURE(expect_echo_through(loop, *c, echoed));
    EXPECT_FALSE(echoed.error) << echoed.error.message();
}

TEST_F(stream_test, connect_to_a_list_of_dead_addresses_fails_naming_each_one) {
    event_loop loop;
    auto a = refuse_on(AF_INET);
    auto b = refuse_on(AF_INET);
    const std::vector<endpoint> to{a.at, b.at};
    std::vector<connect_failure> failed;
    auto c = loop.block_on(stream::connect(loop, to, 5s, &failed));
    ASSERT_FALSE(c) << "connected to a refusing address";
    EXPECT_EQ(c.error(), std::errc::connection_refused) << c.error().message();
    ASSERT_EQ(failed.size(), 2u) << to_string(failed);
    EXPECT_EQ(failed[0].to, a.at);
    EXPECT_EQ(failed[1].to, b.at);
    const std::string text = to_string(failed);
    EXPECT_NE(text.find(a.at.to_string() + ": connect: "), std::string::npos) << text;
    EXPECT_NE(text.find(b.at.to_string() + ": connect: "), std::string::npos) << text;
    EXPECT_EQ(loop.registered_count(), 0u);
}

TEST_F(stream_test, connect_to_an_empty_list_fails) {
    event_loop loop;
    auto c = loop.block_on(stream::connect(loop, std::span<const endpoint>{}, 1s));
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error(), std::errc::destination_address_required) << c.error().message();
}

// The first address hangs: the second attempt must start after the attempt delay
// (not only when the first gives up at the timeout), win, and the hanging socket
// must be closed (the fixture checks that no descriptor is left).
TEST_F(stream_test, connect_to_a_list_starts_the_next_attempt_while_the_first_hangs) {
    event_loop loop;
    auto hang = hang_on(loop);
    if (hang.at.family() == AF_UNSPEC) {
        GTEST_SKIP() << "this kernel does not hang a connect to a full accept queue";
    }
    auto live = listener::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(live) << live.error().message();
    const std::vector<endpoint> to{hang.at, live->local_endpoint()};
    const std::size_t registered_before = loop.registered_count();

    test::side echoed;
    loop.spawn(accept_one_and_echo(&*live, &echoed));
    std::vector<connect_failure> failed;
    const auto started = clock::now();
    auto c = loop.block_on(stream::connect(loop, to, 10s, &failed));
    const auto took = clock::now() - started;
    ASSERT_TRUE(c) << c.error().message() << " (" << to_string(failed) << ")";
    EXPECT_EQ(c->peer_endpoint().value_or(endpoint{}), live->local_endpoint());
    EXPECT_TRUE(failed.empty()) << "the hanging attempt was closed, not failed: "
                                << to_string(failed);
    // A lower bound cannot flake: the second attempt may not start before the delay.
    EXPECT_GE(took, stream::connect_attempt_delay - 10ms);
    // Far below the 10 s timeout: the second attempt did not wait for the first to end.
    EXPECT_LT(took, 5s);
    ASSERT_NO_FATAL_FAILURE(expect_echo_through(loop, *c, echoed));
    // The echo has closed its end: of the two attempts only the winner is left.
    EXPECT_EQ(loop.registered_count(), registered_before + 1);
}

TEST_F(stream_test, connect_to_a_list_is_bounded_by_one_timeout_for_all_attempts) {
    event_loop loop;
    auto hang = hang_on(loop);
    if (hang.at.family() == AF_UNSPEC) {
        GTEST_SKIP() << "this kernel does not hang a connect to a full accept queue";
    }
    const std::size_t registered_before = loop.registered_count();
    const std::vector<endpoint> to{hang.at, hang.at, hang.at, hang.at, hang.at, hang.at};
    std::vector<connect_failure> failed;
    const auto started = clock::now();
    auto c = loop.block_on(stream::connect(loop, to, 1s, &failed));
    const auto took = clock::now() - started;
    ASSERT_FALSE(c) << "connected to a full accept queue";
    EXPECT_EQ(c.error(), std::errc::timed_out) << c.error().message();
    // Attempts 250 ms apart: four fit in 1 s (fewer on a loaded machine whose loop wakes
    // late, never all six), and each one started was still in flight at the deadline.
    EXPECT_GE(failed.size(), 2u) << to_string(failed);
    EXPECT_LE(failed.size(), 4u) << to_string(failed);
    for (const auto& f : failed) {
        EXPECT_EQ(f.to, hang.at);
        EXPECT_EQ(f.error, std::errc::timed_out) << f.error.message();
    }
    EXPECT_GE(took, 1s);
    EXPECT_LT(took, 5s) << "the timeout is for the whole connect, not per attempt";
    EXPECT_EQ(loop.registered_count(), registered_before);
}

// A 10 s connect to `to` cut short by with_timeout after `limit`. The list lives in
// this frame, so the span the connect holds stays valid.
task<result<stream>> connect_cut_short(event_loop* loop, std::vector<endpoint> to,
                                       clock::duration limit) {
    co_return co_await with_timeout(*loop, stream::connect(*loop, to, 10s), limit);
}

// Destroying a connect that waits on several attempts (with_timeout does) unhooks its
// waiters and timer and closes every socket.
TEST_F(stream_test, with_timeout_ends_a_connect_to_a_list_and_leaves_nothing_behind) {
    event_loop loop;
    auto hang = hang_on(loop);
    if (hang.at.family() == AF_UNSPEC) {
        GTEST_SKIP() << "this kernel does not hang a connect to a full accept queue";
    }
    const std::size_t registered_before = loop.registered_count();
    const std::vector<endpoint> to{hang.at, hang.at};
    auto c = loop.block_on(connect_cut_short(&loop, to, 400ms));
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error(), std::errc::timed_out) << c.error().message();
    EXPECT_EQ(loop.registered_count(), registered_before);
    loop.block_on(test::pause(&loop, 300ms)); // no stale timer or waiter fires
    EXPECT_EQ(loop.spawned_count(), 0u);
}

// ---- cancellation ----

task<void> read_once(stream* s, std::error_code* error) {
    std::array<std::byte, 64> buf{};
    auto n = co_await s->read_some(buf);
    *error = n ? std::error_code{} : n.error();
}

task<void> close_soon(event_loop* loop, stream* s, bool forget_only) {
    co_await yield(*loop); // the reader has parked by now
    if (forget_only) {
        s->handle().forget();
    } else {
        s->close();
    }
}

TEST_F(stream_test, read_pending_when_another_coroutine_closes_the_stream_is_cancelled) {
    event_loop loop;
    auto p = test::unix_pair(loop);
    ASSERT_TRUE(p) << p.error().message();
    std::error_code error;
    std::size_t finished = 0;
    auto count = [&finished](const std::exception_ptr&) { ++finished; };
    loop.spawn(read_once(&p->first, &error), count);
    loop.spawn(close_soon(&loop, &p->first, false), count);
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return finished == 2; }, 5s)));
    EXPECT_EQ(error, std::errc::operation_canceled) << error.message();
    EXPECT_FALSE(p->first.is_open());
    EXPECT_EQ(loop.registered_count(), 1u);
}

TEST_F(stream_test, read_pending_when_another_coroutine_forgets_the_fd_is_cancelled) {
    event_loop loop;
    auto p = test::unix_pair(loop);
    ASSERT_TRUE(p) << p.error().message();
    std::error_code error;
    std::size_t finished = 0;
    auto count = [&finished](const std::exception_ptr&) { ++finished; };
    loop.spawn(read_once(&p->first, &error), count);
    loop.spawn(close_soon(&loop, &p->first, true), count);
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return finished == 2; }, 5s)));
    EXPECT_EQ(error, std::errc::operation_canceled) << error.message();
    EXPECT_TRUE(p->first.is_open()) << "forget() unregisters but does not close";
    EXPECT_EQ(loop.registered_count(), 1u);
    // Later operations on a forgotten fd fail at once, without a syscall.
    std::error_code again;
    loop.block_on(read_once(&p->first, &again));
    EXPECT_EQ(again, std::errc::operation_canceled) << again.message();
}

// The documented one-reader rule: a second concurrent read cancels the first with
// device_or_resource_busy (instead of leaving it parked forever), and the second
// gets the data.
task<void> read_into(stream* s, std::vector<std::byte>* got, std::error_code* error) {
    std::array<std::byte, 256> buf{};
    auto n = co_await s->read_some(buf);
    if (!n) {
        *error = n.error();
        co_return;
    }
    got->assign(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(*n));
}

task<void> write_soon(event_loop* loop, stream* s, std::vector<std::byte> data) {
    co_await yield(*loop);
    auto w = co_await s->write_all(data);
    EXPECT_TRUE(w) << w.error().message();
}

TEST_F(stream_test, second_concurrent_read_cancels_the_first_with_busy) {
    event_loop loop;
    auto p = test::unix_pair(loop);
    ASSERT_TRUE(p) << p.error().message();
    const auto data = test::random_bytes(200, 21);
    std::vector<std::byte> first_got, second_got;
    std::error_code first_error, second_error;
    std::size_t finished = 0;
    auto count = [&finished](const std::exception_ptr&) { ++finished; };
    loop.spawn(read_into(&p->first, &first_got, &first_error), count);
    loop.spawn(read_into(&p->first, &second_got, &second_error), count);
    loop.spawn(write_soon(&loop, &p->second, data), count);
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return finished == 3; }, 5s)));
    EXPECT_EQ(first_error, std::errc::device_or_resource_busy) << first_error.message();
    EXPECT_FALSE(second_error) << second_error.message();
    EXPECT_EQ(test::checksum_of(second_got), test::checksum_of(data));
}

// Owns its stream, so destroying this frame (what with_timeout does) closes the fd.
task<result<std::size_t>> read_owned(stream s) {
    std::array<std::byte, 64> buf{};
    co_return co_await s.read_some(buf);
}

task<result<std::size_t>> read_with_timeout(event_loop* loop, stream s, clock::duration limit) {
    co_return co_await with_timeout(*loop, read_owned(std::move(s)), limit);
}

TEST_F(stream_test, with_timeout_ends_a_read_that_never_completes_and_leaves_nothing_behind) {
    event_loop loop;
    auto fds = sys::socketpair(AF_UNIX, SOCK_STREAM);
    ASSERT_TRUE(fds) << fds.error().message();
    const unique_fd silent_peer = std::move(fds->second); // open, and never writes
    const auto registered_before = loop.registered_count();
    const long frames_before = live_task_frames();
    const auto fds_before = test::open_fd_count();

    auto s = stream::adopt(loop, std::move(fds->first));
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ(loop.registered_count(), registered_before + 1);
    auto r = loop.block_on(read_with_timeout(&loop, std::move(*s), 50ms));
    ASSERT_FALSE(r) << "read " << *r << " bytes from a silent peer";
    EXPECT_EQ(r.error(), std::errc::timed_out) << r.error().message();
    EXPECT_EQ(loop.registered_count(), registered_before) << "the cancelled stream is registered";
    EXPECT_EQ(live_task_frames(), frames_before) << "a cancelled frame was not freed";
    EXPECT_EQ(test::open_fd_count(), fds_before - 1) << "the cancelled stream's fd is open";
}

// A read that finishes first is not disturbed by the timer, which is disarmed.
TEST_F(stream_test, with_timeout_passes_through_a_read_that_completes_in_time) {
    event_loop loop;
    auto fds = sys::socketpair(AF_UNIX, SOCK_STREAM);
    ASSERT_TRUE(fds) << fds.error().message();
    const auto data = test::random_bytes(40, 31);
    ASSERT_TRUE(sys::write(fds->second.get(), data.data(), data.size()));
    const long frames_before = live_task_frames();
    auto s = stream::adopt(loop, std::move(fds->first));
    ASSERT_TRUE(s) << s.error().message();
    auto r = loop.block_on(read_with_timeout(&loop, std::move(*s), 10s));
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(*r, data.size());
    EXPECT_EQ(live_task_frames(), frames_before);
    EXPECT_EQ(loop.registered_count(), 0u);
}

// ---- regular files ----

TEST_F(stream_test, adopted_regular_file_is_always_ready_and_reads_whole) {
    const std::string path = test::temp_path("stream-file");
    const auto data = test::random_bytes(3 * 1024 * 1024 + 5, 41);
    {
        auto out = sys::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ASSERT_TRUE(out) << out.error().message();
        std::size_t done = 0;
        while (done < data.size()) {
            auto n = sys::write(out->get(), data.data() + done, data.size() - done);
            ASSERT_TRUE(n) << n.error().message();
            done += *n;
        }
    }
    event_loop loop;
    auto in = sys::open(path.c_str(), O_RDONLY);
    ASSERT_TRUE(in) << in.error().message();
    auto s = stream::adopt(loop, std::move(*in));
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ(s->kind(), sys::fd_kind::regular_file);
    EXPECT_FALSE(s->handle().pollable()) << "epoll cannot watch a regular file";
    EXPECT_EQ(loop.registered_count(), 0u);

    test::side got;
    loop.block_on(test::consume(&*s, 42, 100'000, &got));
    EXPECT_FALSE(got.error) << got.error.message();
    EXPECT_EQ(got.bytes, data.size());
    EXPECT_EQ(got.sum, test::checksum_of(data));
    s->close();
    ::unlink(path.c_str());
}

} // namespace
} // namespace zcio
