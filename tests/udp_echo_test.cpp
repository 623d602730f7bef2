// Tests for udp_echo: every echo checked (content, order, the port it came from) for
// batch and simple modes, GSO on and off, IPv4 and IPv6, GSO/GRO clients, a port range
// of 10 sockets, a full queue that drops and counts while reads go on, a flood the
// server cannot keep up with, and cancellation.
#include <zcio/udp_echo.hpp>

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>
#include <zcio/timeout.hpp>
#include <zcio/udp_batch.hpp>
#include <zcio/udp_socket.hpp>

#include "test_support.hpp"

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;
using bytes = std::vector<std::byte>;

// A unique abstract Unix socket name for this process.
endpoint unix_name(const char* what) {
    static int n = 0;
    auto e = endpoint::parse("unix:@zcio-udp-echo-test-" + std::to_string(::getpid()) + "-" + what +
                             "-" + std::to_string(n++));
    return e ? *e : endpoint{};
}

struct client_report {
    std::size_t sent = 0;
    std::size_t echoed = 0;
    std::size_t bad = 0;        // an echo that differs from the datagram it answers
    std::size_t unexpected = 0; // an echo from a port with nothing outstanding
    std::error_code error;
    bool done = false;
};

struct client_plan {
    std::vector<endpoint> targets; // round-robin
    std::size_t count = 1000;
    std::size_t window = 8; // datagrams outstanding at most: no receive buffer overflows
    std::size_t max_size = 3000;
    std::uint64_t seed = 1;
    // Sends runs of `run` equal-size datagrams as one UDP_SEGMENT message (a GSO
    // client), and reads with UDP_GRO (0: a plain client).
    std::size_t run = 0;
};

// Sends plan.count datagrams of random sizes and checks every echo: it must come from
// the port the datagram went to, in order per port, with the same bytes.
task<void> windowed_client(udp_socket* s, client_plan plan, client_report* out) {
    std::vector<std::deque<bytes>> outstanding(plan.targets.size());
    std::size_t in_flight = 0;
    udp_batch tx(64, 65536);
    udp_batch rx(64, 65536);
    const bool gso = plan.run > 1;
    tx.set_gso(gso);
    if (gso) {
        auto on = s->set_gro(true);
        if (!on || !*on) {
            out->error = std::make_error_code(std::errc::not_supported);
            out->done = true;
            co_return;
        }
    }
    std::size_t next = 0;
    while (out->echoed + out->bad < plan.count) {
        tx.clear();
        while (next < plan.count && in_flight < plan.window) {
            const std::size_t t = (gso ? next / plan.run : next) % plan.targets.size();
            std::size_t size = test::splitmix64(plan.seed * 1'000'003 + next) % (plan.max_size + 1);
            if (gso) {
                size = std::max<std::size_t>(1, test::splitmix64(plan.seed * 7 + next / plan.run) %
                                                    (plan.max_size + 1));
            }
            auto data = test::random_bytes(size, plan.seed * 1'000'003 + next);
            if (!tx.push(data, plan.targets[t])) {
                break;
            }
            outstanding[t].push_back(std::move(data));
            ++next;
            ++in_flight;
        }
        while (tx.unsent() > 0) {
            auto n = co_await s->send_batch(tx);
            if (!n) {
                out->error = n.error();
                out->done = true;
                co_return;
            }
        }
        out->sent = next;
        auto n = co_await s->recv_batch(rx);
        if (!n) {
            out->error = n.error();
            out->done = true;
            co_return;
        }
        for (std::size_t i = 0; i < *n; ++i) {
            std::size_t t = 0;
            while (t < plan.targets.size() && !(plan.targets[t] == rx.peer(i))) {
                ++t;
            }
            for (std::size_t k = 0; k < rx.datagram_count(i); ++k) {
                const auto d = rx.datagram(i, k);
                if (t == plan.targets.size() || outstanding[t].empty()) {
                    ++out->unexpected;
                    continue;
                }
                const bytes& want = outstanding[t].front();
                if (d.size() == want.size() && std::equal(d.begin(), d.end(), want.begin())) {
                    ++out->echoed;
                } else {
                    ++out->bad;
                }
                outstanding[t].pop_front();
                --in_flight;
            }
        }
    }
    out->done = true;
}

void expect_clean(const client_report& r, std::size_t count) {
    EXPECT_FALSE(r.error) << r.error.message();
    EXPECT_EQ(r.sent, count);
    EXPECT_EQ(r.echoed, count);
    EXPECT_EQ(r.bad, 0u);
    EXPECT_EQ(r.unexpected, 0u);
}

// ---- every echo checked, across modes, offloads and families ----

struct echo_case {
    const char* name;
    udp_echo_mode mode;
    udp_offload gso;
    int family;
    std::size_t client_run; // > 1: a GSO/GRO client
};

class udp_echo_test : public test::fd_leak_check, public ::testing::WithParamInterface<echo_case> {
protected:
    void SetUp() override {
        test::fd_leak_check::SetUp();
        if (GetParam().family == AF_INET6 && !test::ipv6_loopback_available(SOCK_DGRAM)) {
            GTEST_SKIP() << "no IPv6 loopback (cannot bind [::1]:0 here)";
        }
    }
};

TEST_P(udp_echo_test, three_clients_get_every_datagram_back_unchanged) {
    const echo_case c = GetParam();
    event_loop loop;
    auto server = udp_socket::bind(loop, test::loopback(c.family));
    ASSERT_TRUE(server) << server.error().message();
    const endpoint at = server->local_endpoint().value_or(endpoint{});
    if (c.client_run > 1 && !server->gso_supported()) {
        GTEST_SKIP() << "UDP_SEGMENT is not supported by this kernel";
    }
    udp_echo_options opt;
    opt.mode = c.mode;
    opt.gso = c.gso;
    opt.batch = 32;
    udp_echo_counters counters;
    loop.spawn(udp_echo(std::move(*server), opt, &counters));

    constexpr std::size_t clients = 3;
    const std::size_t count = c.client_run > 1 ? 2048 : 1500;
    std::vector<udp_socket> socks;
    std::vector<client_report> reports(clients);
    for (std::size_t i = 0; i < clients; ++i) {
        auto s = udp_socket::bind(loop, test::loopback(c.family));
        ASSERT_TRUE(s) << s.error().message();
        socks.push_back(std::move(*s));
    }
    for (std::size_t i = 0; i < clients; ++i) {
        client_plan plan;
        plan.targets = {at};
        plan.count = count;
        plan.seed = 100 + i;
        plan.run = c.client_run;
        // A run at a time for the GSO client: 3 × 16 of up to 1000 bytes stay well under
        // a server's receive buffer even without GRO (each a separate skb then).
        plan.window = c.client_run > 1 ? c.client_run : 8;
        plan.max_size = c.client_run > 1 ? 1000 : 3000;
        loop.spawn(windowed_client(&socks[i], plan, &reports[i]));
    }
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return reports[0].done && reports[1].done && reports[2].done; }, 30s)))
        << "echoed " << reports[0].echoed << ", " << reports[1].echoed << ", " << reports[2].echoed
        << " of " << count << " each; server received " << counters.received << ", echoed "
        << counters.echoed;
    for (const auto& r : reports) {
        expect_clean(r, count);
    }
    EXPECT_EQ(counters.received, clients * count);
    EXPECT_EQ(counters.echoed, clients * count);
    EXPECT_EQ(counters.dropped, 0u);
    EXPECT_EQ(counters.send_errors, 0u);
    const bool offload = c.mode == udp_echo_mode::batch && c.gso != udp_offload::off;
    if (!offload) {
        EXPECT_FALSE(counters.gso);
    }
    if (c.mode == udp_echo_mode::simple) {
        EXPECT_EQ(counters.recv_calls, clients * count) << "one recvmsg per datagram";
    }
    if (c.client_run > 1 && counters.gro) {
        EXPECT_LT(counters.recv_calls * 4, counters.received)
            << "GRO hands over a GSO client's runs coalesced";
    }
    socks.clear();
    EXPECT_EQ(loop.registered_count(), 1u) << "only the echo's socket is left";
}

INSTANTIATE_TEST_SUITE_P(
    cases, udp_echo_test,
    ::testing::Values(
        echo_case{"batch_gso_auto_ipv4", udp_echo_mode::batch, udp_offload::automatic, AF_INET, 0},
        echo_case{"batch_gso_off_ipv4", udp_echo_mode::batch, udp_offload::off, AF_INET, 0},
        echo_case{"batch_gso_auto_ipv6", udp_echo_mode::batch, udp_offload::automatic, AF_INET6, 0},
        echo_case{"simple_ipv4", udp_echo_mode::simple, udp_offload::off, AF_INET, 0},
        echo_case{"simple_ipv6", udp_echo_mode::simple, udp_offload::off, AF_INET6, 0},
        echo_case{"batch_gso_auto_gso_client", udp_echo_mode::batch, udp_offload::automatic,
                  AF_INET, 16},
        echo_case{"batch_gso_off_gso_client", udp_echo_mode::batch, udp_offload::off, AF_INET, 16},
        echo_case{"simple_gso_client", udp_echo_mode::simple, udp_offload::off, AF_INET, 16}),
    [](const ::testing::TestParamInfo<echo_case>& param_info) {
        return std::string(param_info.param.name);
    });

// ---- a port range ----

class udp_echo_misc_test : public test::fd_leak_check {};

TEST_F(udp_echo_misc_test, a_range_of_ten_sockets_echoes_on_every_port) {
    event_loop loop;
    constexpr std::size_t ports = 10;
    std::vector<endpoint> targets;
    std::vector<udp_echo_counters> counters(ports);
    for (std::size_t i = 0; i < ports; ++i) {
        auto s = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
        ASSERT_TRUE(s) << s.error().message();
        targets.push_back(s->local_endpoint().value_or(endpoint{}));
        loop.spawn(udp_echo(std::move(*s), udp_echo_options{}, &counters[i]));
    }
    auto client = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(client);
    client_plan plan;
    plan.targets = targets;
    plan.count = 2000;
    plan.window = 20;
    plan.max_size = 1500;
    client_report report;
    loop.spawn(windowed_client(&*client, plan, &report));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return report.done; }, 30s)))
        << "echoed " << report.echoed;
    expect_clean(report, plan.count);
    for (std::size_t i = 0; i < ports; ++i) {
        EXPECT_EQ(counters[i].received, plan.count / ports) << "port " << targets[i].port();
        EXPECT_EQ(counters[i].echoed, plan.count / ports) << "port " << targets[i].port();
    }
    EXPECT_EQ(loop.spawned_count(), ports) << "the client ended; every echo still runs";
}

// ---- a full queue drops and counts, and reads go on ----

task<void> send_all_then_count(udp_socket* s, endpoint to, std::size_t count,
                               std::vector<bytes>* sent, std::error_code* error) {
    for (std::size_t i = 0; i < count; ++i) {
        auto data = test::random_bytes(8 + test::splitmix64(i) % 300, 5000 + i);
        auto n = co_await s->send_to(data, to);
        if (!n) {
            *error = n.error();
            co_return;
        }
        sent->push_back(std::move(data));
    }
}

task<result<datagram_info>> receive_one(udp_socket* s, std::span<std::byte> buf) {
    co_return co_await s->recv_from(buf);
}

// Reads until nothing arrived for 300 ms.
task<void> read_until_quiet(event_loop* loop, udp_socket* s, std::vector<bytes>* got) {
    std::vector<std::byte> buf(65536);
    while (true) {
        auto r = co_await with_timeout(*loop, receive_one(s, buf), 300ms);
        if (!r) {
            co_return;
        }
        got->emplace_back(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(r->size));
    }
}

task<void> echo_until_cancelled(event_loop* loop, udp_socket s, udp_echo_options opt,
                                udp_echo_counters* c, cancel_source* stop) {
    (void)co_await with_cancel(*loop, udp_echo(std::move(s), opt, c), *stop);
}

// On loopback a UDP send never says EAGAIN (loopback_xmit() orphans the skb at once,
// so the sender's buffer never fills); a Unix datagram socket does, once the peer's
// queue holds net.unix.max_dgram_qlen datagrams. The client sends 3000 and reads
// nothing until the server read them all: the server's sends wait, its queue fills, and
// it must go on reading, dropping and counting.
TEST_F(udp_echo_misc_test, a_full_queue_drops_and_counts_while_reads_go_on) {
    event_loop loop;
    auto client = udp_socket::bind(loop, unix_name("client"));
    ASSERT_TRUE(client) << client.error().message();
    for (auto mode : {udp_echo_mode::batch, udp_echo_mode::simple}) {
        SCOPED_TRACE(mode == udp_echo_mode::batch ? "batch" : "simple");
        auto srv = udp_socket::bind(loop, unix_name("server"));
        ASSERT_TRUE(srv) << srv.error().message();
        const endpoint srv_at = srv->local_endpoint().value_or(endpoint{});
        udp_echo_options opt;
        opt.mode = mode;
        opt.batch = 8;
        opt.queue = 32;
        udp_echo_counters counters;
        cancel_source stop;
        loop.spawn(echo_until_cancelled(&loop, std::move(*srv), opt, &counters, &stop));

        constexpr std::size_t count = 3000;
        std::vector<bytes> sent;
        std::error_code send_error;
        loop.spawn(send_all_then_count(&*client, srv_at, count, &sent, &send_error));
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return counters.received == count; }, 20s)))
            << "the server read " << counters.received << " of " << count
            << " while its sends were blocked: reads stopped";
        EXPECT_FALSE(send_error) << send_error.message();
        EXPECT_EQ(sent.size(), count);
        EXPECT_GT(counters.dropped, 0u) << "a queue of 32 cannot hold 3000";
        EXPECT_FALSE(counters.gso) << "no UDP offloads on a Unix socket: the plain path";

        std::vector<bytes> got;
        loop.block_on(read_until_quiet(&loop, &*client, &got));
        EXPECT_EQ(got.size(), counters.echoed);
        EXPECT_EQ(counters.echoed + counters.dropped, count);
        EXPECT_EQ(counters.send_errors, 0u);
        EXPECT_GE(got.size(), 32u) << "what the queue held went out once the client read";
        // The echoes are the datagrams sent, in order, with the dropped ones missing.
        std::size_t k = 0;
        for (const auto& e : got) {
            while (k < sent.size() && sent[k] != e) {
                ++k;
            }
            ASSERT_LT(k, sent.size()) << "an echo that was never sent, or out of order";
            ++k;
        }
        stop.cancel();
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return loop.spawned_count() == 0; }, 5s)));
    }
}

// ---- a flood ----

// Blasts from another thread with blocking sendmmsg, never reading, for at most
// `limit` or `max_datagrams`.
void flood(endpoint to, std::chrono::milliseconds limit, std::size_t max_datagrams,
           std::atomic<std::size_t>* sent) {
    auto fd = sys::socket(AF_INET, SOCK_DGRAM);
    if (!fd || !sys::set_nonblocking(fd->get(), false)) {
        return;
    }
    std::vector<std::byte> payload(64);
    mmsghdr msgs[64]{};
    iovec iov{payload.data(), payload.size()};
    for (auto& m : msgs) {
        m.msg_hdr.msg_name = const_cast<sockaddr*>(to.data());
        m.msg_hdr.msg_namelen = to.size();
        m.msg_hdr.msg_iov = &iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    const auto deadline = clock::now() + limit;
    std::size_t n = 0;
    while (n < max_datagrams && clock::now() < deadline) {
        auto r = sys::sendmmsg(fd->get(), msgs, 0);
        if (!r) {
            break;
        }
        n += *r;
    }
    sent->store(n);
}

TEST_F(udp_echo_misc_test, a_flood_it_cannot_keep_up_with_leaves_it_alive_and_echoing) {
    event_loop loop;
    auto server = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(server);
    const endpoint at = server->local_endpoint().value_or(endpoint{});
    udp_echo_options opt;
    opt.queue = 256;
    udp_echo_counters counters;
    loop.spawn(udp_echo(std::move(*server), opt, &counters));

    std::atomic<std::size_t> sent[3]{};
    std::vector<std::thread> flooders;
    for (auto& s : sent) {
        flooders.emplace_back(flood, at, 700ms, 2'000'000, &s);
    }
    // The loop runs while the threads flood; then it must still echo everything.
    loop.block_on(test::pause(&loop, 800ms));
    for (auto& t : flooders) {
        t.join();
    }
    const std::size_t flooded = sent[0] + sent[1] + sent[2];
    EXPECT_GT(counters.received, 0u);
    EXPECT_LE(counters.received, flooded);

    auto client = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(client);
    const std::uint64_t before = counters.received;
    client_plan plan;
    plan.targets = {at};
    plan.count = 500;
    client_report report;
    loop.spawn(windowed_client(&*client, plan, &report));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return report.done; }, 20s)))
        << "after a flood of " << flooded << " datagrams the server echoed only " << report.echoed
        << " of " << plan.count;
    expect_clean(report, plan.count);
    EXPECT_GE(counters.received, before + plan.count);
    std::printf("flood: %zu datagrams sent by 3 threads, %llu read (%llu dropped from the "
                "queue), %llu echoed\n",
                flooded, static_cast<unsigned long long>(counters.received),
                static_cast<unsigned long long>(counters.dropped),
                static_cast<unsigned long long>(counters.echoed));
}

// ---- options, cancellation ----

task<result<void>> echo_for(event_loop* loop, udp_socket s, udp_echo_options opt,
                            udp_echo_counters* c, clock::duration d) {
    co_return co_await with_timeout(*loop, udp_echo(std::move(s), opt, c), d);
}

TEST_F(udp_echo_misc_test, cancellation_closes_the_socket_and_frees_every_frame) {
    event_loop loop;
    const long frames_before = live_task_frames();
    for (auto mode : {udp_echo_mode::batch, udp_echo_mode::simple}) {
        auto s = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
        ASSERT_TRUE(s);
        EXPECT_EQ(loop.registered_count(), 1u);
        udp_echo_options opt;
        opt.mode = mode;
        udp_echo_counters c;
        auto r = loop.block_on(echo_for(&loop, std::move(*s), opt, &c, 30ms));
        ASSERT_FALSE(r);
        EXPECT_EQ(r.error(), std::errc::timed_out);
        EXPECT_EQ(loop.registered_count(), 0u);
        EXPECT_EQ(live_task_frames(), frames_before);
    }
}

TEST_F(udp_echo_misc_test, gso_on_fails_at_once_where_the_kernel_has_no_udp_offloads) {
    event_loop loop;
    auto s = udp_socket::bind(loop, unix_name("gso-on"));
    ASSERT_TRUE(s) << s.error().message();
    udp_echo_options opt;
    opt.gso = udp_offload::on;
    udp_echo_counters c;
    auto r = loop.block_on(echo_for(&loop, std::move(*s), opt, &c, 5s));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), std::errc::no_protocol_option) << r.error().message();
}

} // namespace
} // namespace zcio
