// Tests for udp_forward: every reply checked (content and order per session) behind a
// udp_echo upstream, plain and GSO/GRO clients, IPv4 and IPv6, 1,000 clients from distinct
// ports, expiry freeing descriptors, responses = 1, a dead upstream, a full table,
// 0-byte and 65,507-byte datagrams, truncation, and PROXY v2 datagram headers out
// and in (malformed ones dropped and counted).
#include <zcio/udp_forward.hpp>

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/task.hpp>
#include <zcio/udp_batch.hpp>
#include <zcio/udp_echo.hpp>
#include <zcio/udp_socket.hpp>

#include "test_support.hpp"

#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace zcio {
namespace {

using namespace std::chrono_literals;
using bytes = std::vector<std::byte>;

std::uint64_t load(const std::atomic<std::uint64_t>& a) {
    return a.load(std::memory_order_relaxed);
}

struct flow_report {
    std::size_t sent = 0;
    std::size_t replies = 0;
    std::size_t bad = 0;        // a reply that differs from the datagram it answers
    std::size_t unexpected = 0; // a reply with nothing outstanding, or from elsewhere
    std::error_code error;
    bool done = false;
};

struct flow_plan {
    endpoint to;
    std::size_t count = 200;
    std::size_t window = 8;
    std::size_t min_size = 0;
    std::size_t max_size = 3000;
    std::uint64_t seed = 1;
    std::size_t run = 0; // > 1: runs of equal sizes sent as UDP_SEGMENT, read with GRO
};

// Sends plan.count datagrams of seeded random sizes and contents, at most
// plan.window outstanding, and checks that the echoes come back from plan.to in order
// with the same bytes.
task<void> flow(udp_socket* s, flow_plan plan, flow_report* out) {
    std::deque<bytes> outstanding;
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
    while (out->replies + out->bad < plan.count) {
        tx.clear();
        while (next < plan.count && outstanding.size() < plan.window) {
            const std::uint64_t key =
                gso ? plan.seed * 7 + next / plan.run : plan.seed * 1'000'003 + next;
            std::size_t size =
                plan.min_size + test::splitmix64(key) % (plan.max_size - plan.min_size + 1);
            if (gso) {
                size = std::max<std::size_t>(size, 1);
            }
            auto data = test::random_bytes(size, plan.seed * 1'000'003 + next);
            if (!tx.push(data, plan.to)) {
                break;
            }
            outstanding.push_back(std::move(data));
            ++next;
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
            for (std::size_t k = 0; k < rx.datagram_count(i); ++k) {
                const auto d = rx.datagram(i, k);
                if (!(rx.peer(i) == plan.to) || outstanding.empty()) {
                    ++out->unexpected;
                    continue;
                }
                const bytes& want = outstanding.front();
                if (d.size() == want.size() && std::equal(d.begin(), d.end(), want.begin())) {
                    ++out->replies;
                } else {
                    ++out->bad;
                }
                outstanding.pop_front();
            }
        }
    }
    out->done = true;
}

void expect_clean(const flow_report& r, std::size_t count) {
    EXPECT_TRUE(r.done);
    EXPECT_FALSE(r.error) << r.error.message();
    EXPECT_EQ(r.replies, count);
    EXPECT_EQ(r.bad, 0u);
    EXPECT_EQ(r.unexpected, 0u);
}

// A bound socket or a failed test.
udp_socket bound(event_loop& loop, const endpoint& at) {
    auto s = udp_socket::bind(loop, at);
    EXPECT_TRUE(s) << s.error().message();
    return s ? std::move(*s) : udp_socket{};
}

endpoint local_of(const udp_socket& s) {
    return s.local_endpoint().value_or(endpoint{});
}

// An upstream that echoes every datagram (udp_echo), and a forwarder in front of it.
struct rig {
    event_loop loop;
    udp_echo_counters echo_counters;
    udp_forward_counters counters;
    endpoint upstream;
    endpoint front;

    explicit rig(int family, udp_forward_options opt = {}, bool start_echo = true) {
        if (start_echo) {
            auto up = bound(loop, test::loopback(family));
            upstream = local_of(up);
            udp_echo_options eo;
            eo.queue = 4096;
            loop.spawn(udp_echo(std::move(up), eo, &echo_counters));
        }
        if (opt.upstream.size() == 0) {
            opt.upstream = upstream;
        }
        auto l = bound(loop, test::loopback(family));
        front = local_of(l);
        loop.spawn(udp_forward(std::move(l), std::move(opt), &counters));
    }

    bool run_until(const std::function<bool()>& done, clock::duration limit = 20s) {
        return loop.block_on(test::wait_until(&loop, done, limit));
    }
};

std::string describe(const udp_forward_counters& c) {
    return "sessions " + std::to_string(load(c.sessions_active)) + " active, " +
           std::to_string(load(c.sessions_created)) + " created; datagrams " +
           std::to_string(load(c.datagrams_to_upstream)) + " up, " +
           std::to_string(load(c.datagrams_to_client)) + " back; dropped: full " +
           std::to_string(load(c.dropped_table_full)) + ", send " +
           std::to_string(load(c.dropped_send)) + ", socket " +
           std::to_string(load(c.dropped_no_socket)) + ", truncated " +
           std::to_string(load(c.dropped_truncated));
}

class udp_forward_test : public test::udp_family_test {};

// ---- content and order ----

TEST_P(udp_forward_test, replies_come_back_unchanged_and_in_order) {
    for (const auto offload : {udp_offload::automatic, udp_offload::off}) {
        udp_forward_options opt;
        opt.gso = offload;
        opt.batch = 32;
        rig r(GetParam(), opt);
        auto c = bound(r.loop, any_port());
        flow_report rep;
        flow_plan plan;
        plan.to = r.front;
        plan.count = 2000;
        plan.seed = 11;
        r.loop.spawn(flow(&c, plan, &rep));
        ASSERT_TRUE(r.run_until([&] { return rep.done; }));
        expect_clean(rep, plan.count);
        EXPECT_EQ(load(r.counters.sessions_created), 1u);
        EXPECT_EQ(load(r.counters.datagrams_to_upstream), plan.count);
        EXPECT_EQ(load(r.counters.datagrams_to_client), plan.count);
        EXPECT_EQ(load(r.counters.bytes_to_upstream), load(r.counters.bytes_to_client));
    }
}

TEST_P(udp_forward_test, gso_client_gets_every_segment_back_in_order) {
    rig r(GetParam());
    auto c = bound(r.loop, any_port());
    if (!c.gso_supported()) {
        GTEST_SKIP() << "UDP_SEGMENT is not supported by this kernel";
    }
    flow_report rep;
    flow_plan plan;
    plan.to = r.front;
    plan.count = 4096;
    plan.window = 64; // two runs in flight: within the sockets' default buffers
    plan.run = 32;
    plan.min_size = 1;
    plan.max_size = 1400;
    plan.seed = 5;
    r.loop.spawn(flow(&c, plan, &rep));
    ASSERT_TRUE(r.run_until([&] { return rep.done; })) << describe(r.counters);
    if (rep.error == std::errc::not_supported) {
        GTEST_SKIP() << "UDP_GRO is not supported by this kernel";
    }
    expect_clean(rep, plan.count);
    EXPECT_TRUE(r.counters.gso.load());
}

TEST_P(udp_forward_test, zero_and_largest_datagrams_pass) {
    rig r(GetParam());
    auto c = bound(r.loop, any_port());
    for (std::size_t size : {std::size_t{0}, max_udp_payload}) {
        flow_report rep;
        flow_plan plan;
        plan.to = r.front;
        plan.count = 3;
        plan.window = 1;
        plan.min_size = plan.max_size = size;
        plan.seed = 40 + size;
        r.loop.spawn(flow(&c, plan, &rep));
        ASSERT_TRUE(r.run_until([&] { return rep.done; })) << size;
        expect_clean(rep, plan.count);
    }
}

TEST_P(udp_forward_test, truncated_datagram_is_counted_and_never_forwarded) {
    udp_forward_options opt;
    opt.datagram_buffer = 1000;
    rig r(GetParam(), opt);
    auto c = bound(r.loop, any_port());
    auto big = test::random_bytes(1500, 1);
    ASSERT_TRUE(udp_socket::send(c.fd(), big, r.front));
    flow_report rep;
    flow_plan plan;
    plan.to = r.front;
    plan.count = 10;
    plan.max_size = 1000;
    r.loop.spawn(flow(&c, plan, &rep));
    ASSERT_TRUE(r.run_until([&] { return rep.done; }));
    expect_clean(rep, plan.count); // the cut datagram never came back
    EXPECT_EQ(load(r.counters.dropped_truncated), 1u);
    EXPECT_EQ(r.echo_counters.received, plan.count);
}

// ---- sessions ----

TEST_P(udp_forward_test, a_thousand_clients_each_get_only_their_replies) {
    constexpr std::size_t clients = 1000;
    ::rlimit lim{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
    if (lim.rlim_cur < 3 * clients) {
        GTEST_SKIP() << "RLIMIT_NOFILE " << lim.rlim_cur << " is below " << 3 * clients;
    }
    rig r(GetParam());
    std::vector<udp_socket> socks;
    std::vector<flow_report> reps(clients);
    for (std::size_t i = 0; i < clients; ++i) {
        socks.push_back(bound(r.loop, any_port()));
    }
    // In waves of 100 clients, all of them open at once at the end: 1,000 datagrams in
    // one burst would overflow the sockets' default receive buffers (UDP drops them).
    constexpr std::size_t wave = 100;
    for (std::size_t first = 0; first < clients; first += wave) {
        for (std::size_t i = first; i < first + wave; ++i) {
            flow_plan plan;
            plan.to = r.front;
            plan.count = 5;
            plan.window = 1;
            plan.max_size = 600;
            plan.seed = 1000 + i; // every client's bytes differ: a misrouted reply is caught
            r.loop.spawn(flow(&socks[i], plan, &reps[i]));
        }
        ASSERT_TRUE(r.run_until([&] {
            return std::all_of(reps.begin() + static_cast<std::ptrdiff_t>(first),
                               reps.begin() + static_cast<std::ptrdiff_t>(first + wave),
                               [](const flow_report& x) { return x.done; });
        })) << "wave "
            << first << ": " << describe(r.counters);
    }
    for (const auto& rep : reps) {
        expect_clean(rep, 5);
    }
    EXPECT_EQ(load(r.counters.sessions_created), clients);
    EXPECT_EQ(load(r.counters.sessions_active), clients);
}

TEST_P(udp_forward_test, idle_sessions_expire_and_free_their_descriptors) {
    udp_forward_options opt;
    opt.session_timeout = 200ms;
    rig r(GetParam(), opt);
    std::vector<udp_socket> socks;
    for (int i = 0; i < 20; ++i) {
        socks.push_back(bound(r.loop, any_port()));
    }
    const std::size_t fds_before = test::open_fd_count();
    std::vector<flow_report> reps(socks.size());
    for (std::size_t i = 0; i < socks.size(); ++i) {
        flow_plan plan;
        plan.to = r.front;
        plan.count = 3;
        plan.seed = 70 + i;
        r.loop.spawn(flow(&socks[i], plan, &reps[i]));
    }
    ASSERT_TRUE(r.run_until(
        [&] { return std::ranges::all_of(reps, [](const flow_report& x) { return x.done; }); }));
    EXPECT_EQ(test::open_fd_count(), fds_before + socks.size()); // a socket per session
    ASSERT_TRUE(r.run_until([&] { return load(r.counters.sessions_active) == 0; }, 10s));
    EXPECT_EQ(load(r.counters.sessions_expired), socks.size());
    EXPECT_EQ(test::open_fd_count(), fds_before);
    for (const auto& rep : reps) {
        expect_clean(rep, 3);
    }
}

// Reads datagrams until the socket closes, counting those equal to `want` and others.
task<void> count_replies(udp_socket* s, bytes want, std::size_t* same, std::size_t* other) {
    std::vector<std::byte> buf(65536);
    while (true) {
        auto got = co_await s->recv_from(buf);
        if (!got) {
            co_return;
        }
        const bool equal =
            got->size == want.size() && std::equal(want.begin(), want.end(), buf.begin());
        ++*(equal ? same : other);
    }
}

// An upstream that answers every datagram three times.
task<void> triple_upstream(udp_socket* s) {
    std::vector<std::byte> buf(65536);
    while (true) {
        auto got = co_await s->recv_from(buf);
        if (!got) {
            co_return;
        }
        for (int i = 0; i < 3; ++i) {
            (void)co_await s->send_to(std::span(buf.data(), got->size), got->from);
        }
    }
}

TEST_P(udp_forward_test, responses_one_ends_the_session_after_one_reply) {
    event_loop loop;
    auto up = bound(loop, any_port());
    loop.spawn(triple_upstream(&up));
    udp_forward_options opt;
    opt.upstream = local_of(up);
    opt.responses = 1;
    auto l = bound(loop, any_port());
    const endpoint front = local_of(l);
    udp_forward_counters counters;
    loop.spawn(udp_forward(std::move(l), opt, &counters));
    auto c = bound(loop, any_port());
    const auto query = test::random_bytes(100, 3);
    std::size_t replies = 0;
    std::size_t bad = 0;
    loop.spawn(count_replies(&c, query, &replies, &bad));
    for (std::size_t round = 1; round <= 2; ++round) {
        ASSERT_TRUE(udp_socket::send(c.fd(), query, front));
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return load(counters.sessions_completed) == round; }, 10s)));
        EXPECT_EQ(load(counters.sessions_active), 0u);
    }
    // Wait a little for any stray reply: none may come.
    loop.block_on(test::pause(&loop, 100ms));
    EXPECT_EQ(replies, 2u);
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(load(counters.sessions_created), 2u);
    EXPECT_EQ(load(counters.datagrams_to_client), 2u);
}

TEST_P(udp_forward_test, upstream_down_is_counted_and_ends_the_session) {
    endpoint dead;
    {
        event_loop scratch;
        auto s = bound(scratch, any_port());
        dead = local_of(s);
    } // closed: datagrams to it get ICMP port unreachable
    udp_forward_options opt;
    opt.upstream = dead;
    rig r(GetParam(), opt, false);
    auto c = bound(r.loop, any_port());
    const auto d = test::random_bytes(64, 9);
    for (std::uint64_t round = 1; round <= 2; ++round) {
        ASSERT_TRUE(udp_socket::send(c.fd(), d, r.front));
        ASSERT_TRUE(r.run_until([&] { return load(r.counters.sessions_refused) == round; }, 10s));
        EXPECT_EQ(load(r.counters.sessions_active), 0u);
    }
    EXPECT_EQ(load(r.counters.sessions_created), 2u);
}

TEST_P(udp_forward_test, full_table_drops_new_clients_and_keeps_the_old) {
    udp_forward_options opt;
    opt.max_sessions = 2;
    rig r(GetParam(), opt);
    std::vector<udp_socket> socks;
    for (int i = 0; i < 3; ++i) {
        socks.push_back(bound(r.loop, any_port()));
    }
    std::vector<flow_report> reps(2);
    for (std::size_t i = 0; i < 2; ++i) {
        flow_plan plan;
        plan.to = r.front;
        plan.count = 50;
        plan.seed = 300 + i;
        r.loop.spawn(flow(&socks[i], plan, &reps[i]));
    }
    ASSERT_TRUE(r.run_until([&] { return reps[0].done && reps[1].done; }));
    const auto d = test::random_bytes(10, 1);
    for (int i = 0; i < 5; ++i) {
        ASSERT_TRUE(udp_socket::send(socks[2].fd(), d, r.front));
    }
    ASSERT_TRUE(r.run_until([&] { return load(r.counters.dropped_table_full) == 5; }, 10s));
    // The old sessions still work.
    for (std::size_t i = 0; i < 2; ++i) {
        reps[i] = {};
        flow_plan plan;
        plan.to = r.front;
        plan.count = 20;
        plan.seed = 400 + i;
        r.loop.spawn(flow(&socks[i], plan, &reps[i]));
    }
    ASSERT_TRUE(r.run_until([&] { return reps[0].done && reps[1].done; }));
    expect_clean(reps[0], 20);
    expect_clean(reps[1], 20);
    EXPECT_EQ(load(r.counters.sessions_created), 2u);
    EXPECT_EQ(load(r.counters.sessions_active), 2u);
    auto got = udp_socket::receive(socks[2].fd(), std::span<std::byte>());
    EXPECT_FALSE(got); // nothing ever came back to the third client
}

// ---- PROXY v2, datagram form ----

// An upstream that checks the PROXY header of every datagram against `client` and
// `front` and echoes the payload alone.
task<void> proxy_checking_upstream(udp_socket* s, endpoint client, endpoint front,
                                   std::size_t* good, std::size_t* bad) {
    std::vector<std::byte> buf(70000);
    while (true) {
        auto got = co_await s->recv_from(buf);
        if (!got) {
            co_return;
        }
        auto h = parse_proxy_v2_datagram(std::span(buf.data(), got->size));
        if (!h || h->local || !(h->source == client) || !(h->destination == front)) {
            ++*bad;
            continue;
        }
        ++*good;
        (void)co_await s->send_to(
            std::span(buf.data() + h->header_size, got->size - h->header_size), got->from);
    }
}

TEST_P(udp_forward_test, proxy_v2_header_names_the_client_on_every_datagram) {
    event_loop loop;
    auto up = bound(loop, any_port());
    auto c = bound(loop, any_port());
    auto l = bound(loop, any_port());
    const endpoint front = local_of(l);
    std::size_t good = 0;
    std::size_t bad = 0;
    loop.spawn(proxy_checking_upstream(&up, local_of(c), front, &good, &bad));
    udp_forward_options opt;
    opt.upstream = local_of(up);
    opt.send_proxy_v2 = true;
    udp_forward_counters counters;
    loop.spawn(udp_forward(std::move(l), opt, &counters));
    flow_report rep;
    flow_plan plan;
    plan.to = front;
    plan.count = 500;
    plan.seed = 8;
    loop.spawn(flow(&c, plan, &rep));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return rep.done; }, 20s)));
    expect_clean(rep, plan.count);
    EXPECT_EQ(good, plan.count);
    EXPECT_EQ(bad, 0u);
}

TEST_P(udp_forward_test, accept_proxy_strips_the_header_and_drops_bad_ones) {
    udp_forward_options opt;
    opt.accept_proxy_v2 = true;
    rig r(GetParam(), opt);
    auto c = bound(r.loop, any_port());
    const endpoint origin = local_of(c);
    // Two "original clients" behind one sender: two sessions.
    endpoint a = origin;
    a.set_port(1111);
    endpoint b = origin;
    b.set_port(2222);
    std::size_t replies = 0;
    std::size_t wrong = 0;
    const auto payload = test::random_bytes(300, 4);
    r.loop.spawn(count_replies(&c, payload, &replies, &wrong));
    for (const endpoint& who : {a, b, a}) {
        std::array<std::byte, proxy_v2_datagram_max> h{};
        const std::size_t hl = proxy_v2_datagram_header(who, r.front, h);
        bytes d(h.begin(), h.begin() + static_cast<std::ptrdiff_t>(hl));
        d.insert(d.end(), payload.begin(), payload.end());
        ASSERT_TRUE(udp_socket::send(c.fd(), d, r.front));
    }
    // Malformed: the payload alone, a cut header, version 1, a stream family, and a
    // length past the end.
    std::array<std::byte, proxy_v2_datagram_max> good{};
    const std::size_t gl = proxy_v2_datagram_header(a, r.front, good);
    std::vector<bytes> broken;
    broken.push_back(payload);
    broken.emplace_back(good.begin(), good.begin() + 10);
    bytes v1(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(gl));
    v1[12] = std::byte{0x11};
    broken.push_back(v1);
    bytes stream(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(gl));
    stream[13] = std::byte{static_cast<unsigned char>(GetParam() == AF_INET ? 0x11 : 0x21)};
    broken.push_back(stream);
    bytes longer(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(gl));
    longer[15] = std::byte{0xff};
    broken.push_back(longer);
    for (const auto& d : broken) {
        ASSERT_TRUE(udp_socket::send(c.fd(), d, r.front));
    }
    ASSERT_TRUE(r.run_until(
        [&] { return replies == 3 && load(r.counters.dropped_proxy_header) == broken.size(); }));
    EXPECT_EQ(wrong, 0u);
    EXPECT_EQ(load(r.counters.sessions_created), 2u);
    EXPECT_EQ(r.echo_counters.received, 3u);
}

INSTANTIATE_TEST_SUITE_P(families, udp_forward_test, ::testing::Values(AF_INET, AF_INET6),
                         [](const ::testing::TestParamInfo<int>& param_info) {
                             return std::string(param_info.param == AF_INET6 ? "ipv6" : "ipv4");
                         });

// ---- the header codec alone ----

TEST(proxy_v2_datagram, round_trips_ipv4_and_ipv6_with_the_datagram_family) {
    for (const char* pair :
         {"192.0.2.1:5353|198.51.100.7:53", "[2001:db8::1]:4000|[2001:db8::2]:53"}) {
        const std::string text(pair);
        const auto bar = text.find('|');
        const auto src = endpoint::parse(text.substr(0, bar));
        const auto dst = endpoint::parse(text.substr(bar + 1));
        ASSERT_TRUE(src && dst);
        std::array<std::byte, proxy_v2_datagram_max> h{};
        const std::size_t n = proxy_v2_datagram_header(*src, *dst, h);
        EXPECT_EQ(n, src->family() == AF_INET ? 28u : 52u);
        EXPECT_EQ(h[13],
                  std::byte{static_cast<unsigned char>(src->family() == AF_INET ? 0x12 : 0x22)});
        auto p = parse_proxy_v2_datagram(std::span(h.data(), n));
        ASSERT_TRUE(p);
        EXPECT_FALSE(p->local);
        EXPECT_EQ(p->header_size, n);
        EXPECT_EQ(p->source, *src);
        EXPECT_EQ(p->destination, *dst);
    }
}

TEST(proxy_v2_datagram, mixed_families_give_local_and_tlvs_are_skipped) {
    std::array<std::byte, proxy_v2_datagram_max> h{};
    const std::size_t n =
        proxy_v2_datagram_header(endpoint::ipv4_loopback(1), endpoint::ipv6_loopback(2), h);
    EXPECT_EQ(n, 16u);
    auto p = parse_proxy_v2_datagram(std::span(h.data(), n));
    ASSERT_TRUE(p);
    EXPECT_TRUE(p->local);
    // A v4 header with a 5-byte TLV after the addresses, then the payload.
    const std::size_t m =
        proxy_v2_datagram_header(endpoint::ipv4_loopback(1), endpoint::ipv4_loopback(2), h);
    bytes d(h.begin(), h.begin() + static_cast<std::ptrdiff_t>(m));
    d[15] = std::byte{12 + 5};
    for (int b : {0x04, 0x00, 0x02, 0xab, 0xcd}) { // PP2_TYPE_NOOP, 2 bytes of value
        d.push_back(std::byte(b));
    }
    d.push_back(std::byte{'x'});
    auto q = parse_proxy_v2_datagram(d);
    ASSERT_TRUE(q);
    EXPECT_EQ(q->header_size, m + 5);
    // Every shorter prefix of the header is refused, never read past.
    for (std::size_t cut = 0; cut < m + 5; ++cut) {
        EXPECT_FALSE(parse_proxy_v2_datagram(std::span(d.data(), cut))) << cut;
    }
}

TEST(proxy_v2_datagram, refuses_what_is_not_a_datagram_header) {
    std::array<std::byte, proxy_v2_datagram_max> h{};
    const std::size_t n =
        proxy_v2_datagram_header(endpoint::ipv4_loopback(1), endpoint::ipv4_loopback(2), h);
    struct change {
        std::size_t at;
        unsigned char value;
        const char* why;
    };
    for (const change& c : {change{0, 0x00, "signature"}, change{12, 0x11, "version 1"},
                            change{12, 0x22, "command 2"}, change{13, 0x11, "stream"},
                            change{13, 0x32, "unix"}, change{13, 0x00, "unspec with PROXY"},
                            change{15, 11, "addresses cut"}, change{15, 13, "length past end"}}) {
        auto d = h;
        d[c.at] = std::byte{c.value};
        EXPECT_FALSE(parse_proxy_v2_datagram(std::span(d.data(), n))) << c.why;
    }
}

} // namespace
} // namespace zcio
