// Tests for udp_batch and udp_socket::recv_batch / send_batch: mixed sizes over IPv4 and
// IPv6 with every datagram's content and peer checked, partial counts, echo in place,
// GSO merging rules, GRO and GSO on and off giving the same datagrams, and the split
// fallback when the kernel refuses UDP_SEGMENT.
#include <zcio/udp_batch.hpp>

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>
#include <zcio/timeout.hpp>
#include <zcio/udp_socket.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include <sys/socket.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;
using bytes = std::vector<std::byte>;

// A datagram as seen by one side.
struct seen {
    bytes data;
    endpoint peer;
    friend bool operator==(const seen&, const seen&) = default;
};

// Sends every unsent message of `b` (waiting when the socket says EAGAIN).
task<result<void>> send_all(udp_socket* s, udp_batch* b) {
    while (b->unsent() > 0) {
        auto n = co_await s->send_batch(*b);
        if (!n) {
            co_return fail(n.error());
        }
    }
    co_return result<void>{};
}

// Receives until `count` datagrams arrived (GRO buffers cut apart), each with its peer.
task<result<std::vector<seen>>> receive_datagrams(udp_socket* s, std::size_t count,
                                                  std::size_t capacity, std::size_t* messages) {
    udp_batch b(capacity);
    std::vector<seen> out;
    while (out.size() < count) {
        auto n = co_await s->recv_batch(b);
        if (!n) {
            co_return fail(n.error());
        }
        for (std::size_t i = 0; i < *n; ++i) {
            EXPECT_FALSE(b.truncated(i));
            for (std::size_t k = 0; k < b.datagram_count(i); ++k) {
                auto d = b.datagram(i, k);
                out.push_back({bytes(d.begin(), d.end()), b.peer(i)});
            }
            if (messages != nullptr) {
                ++*messages;
            }
        }
    }
    co_return out;
}

task<result<std::vector<seen>>> receive_with_limit(event_loop* loop, udp_socket* s,
                                                   std::size_t count, std::size_t capacity,
                                                   std::size_t* messages) {
    co_return co_await with_timeout(*loop, receive_datagrams(s, count, capacity, messages), 10s);
}

class udp_batch_test : public test::udp_family_test {};

TEST_P(udp_batch_test, mixed_sizes_arrive_whole_in_order_with_their_sender) {
    event_loop loop;
    auto a = udp_socket::bind(loop, any_port());
    auto b = udp_socket::bind(loop, any_port());
    ASSERT_TRUE(a && b);
    const endpoint a_at = a->local_endpoint().value_or(endpoint{});
    const endpoint b_at = b->local_endpoint().value_or(endpoint{});

    // 240 datagrams from 0 bytes to 9000, sent 24 per sendmmsg; the receiver's batch
    // (16) is smaller than a send batch, so partial counts happen. Each 24 are read
    // before the next go: 24 × 9 KiB fits in the default receive buffer.
    constexpr std::size_t count = 240;
    constexpr std::size_t per_call = 24;
    udp_batch out(per_call, 9000);
    for (std::size_t first = 0; first < count; first += per_call) {
        std::vector<seen> sent;
        out.clear();
        for (std::size_t i = first; i < first + per_call; ++i) {
            const std::size_t size = i % 7 == 0 ? 0 : test::splitmix64(i) % 9001;
            const auto data = test::random_bytes(size, 1000 + i);
            sent.push_back({data, a_at});
            ASSERT_TRUE(out.push(data, b_at));
        }
        EXPECT_EQ(out.datagram_total(), out.size()) << "no merging with GSO off";
        auto r = loop.block_on(send_all(&*a, &out));
        ASSERT_TRUE(r) << r.error().message();
        std::size_t messages = 0;
        auto got = loop.block_on(receive_with_limit(&loop, &*b, per_call, 16, &messages));
        ASSERT_TRUE(got) << got.error().message();
        ASSERT_EQ(*got, sent) << "datagrams " << first << " to " << first + per_call - 1;
        EXPECT_EQ(messages, per_call);
    }
}

task<result<std::size_t>> receive_once(udp_socket* s, udp_batch* b, std::size_t max) {
    co_return co_await s->recv_batch(*b, max);
}

TEST_P(udp_batch_test, a_partial_count_is_a_result_and_the_rest_waits) {
    event_loop loop;
    auto a = udp_socket::bind(loop, any_port());
    auto b = udp_socket::bind(loop, any_port());
    ASSERT_TRUE(a && b);
    const endpoint b_at = b->local_endpoint().value_or(endpoint{});
    udp_batch out(10, 100);
    for (std::size_t i = 0; i < 10; ++i) {
        ASSERT_TRUE(out.push(test::random_bytes(50 + i, i), b_at));
    }
    EXPECT_FALSE(out.push(test::random_bytes(10, 99), b_at)) << "a full batch takes no more";
    EXPECT_FALSE(udp_batch(4, 100).push(test::random_bytes(101, 1), b_at))
        << "larger than the buffer";
    ASSERT_TRUE(loop.block_on(send_all(&*a, &out)));
    EXPECT_EQ(out.sent(), 10u);

    udp_batch in(8, 100);
    auto first = loop.block_on(receive_once(&*b, &in, 3));
    ASSERT_TRUE(first) << first.error().message();
    EXPECT_EQ(*first, 3u) << "asked for 3";
    EXPECT_TRUE(b->handle().ready(io_direction::read)) << "a full count keeps readiness";
    auto second = loop.block_on(receive_once(&*b, &in, 100));
    ASSERT_TRUE(second);
    EXPECT_EQ(*second, 7u) << "the rest, capped by the batch's capacity of 8";
    EXPECT_EQ(in.size(), 7u);
    EXPECT_EQ(in.data(0).size(), 53u);
    EXPECT_FALSE(b->handle().ready(io_direction::read))
        << "a short count means the queue ran dry: readiness is cleared without EAGAIN";
}

TEST_P(udp_batch_test, a_received_batch_sent_back_is_an_echo) {
    event_loop loop;
    auto a = udp_socket::bind(loop, any_port());
    auto b = udp_socket::bind(loop, any_port());
    ASSERT_TRUE(a && b);
    const endpoint a_at = a->local_endpoint().value_or(endpoint{});
    const endpoint b_at = b->local_endpoint().value_or(endpoint{});
    udp_batch out(20, 2000);
    std::vector<seen> sent;
    for (std::size_t i = 0; i < 20; ++i) {
        auto data = test::random_bytes(test::splitmix64(i + 50) % 2000, 300 + i);
        sent.push_back({data, b_at});
        ASSERT_TRUE(out.push(data, b_at));
    }
    ASSERT_TRUE(loop.block_on(send_all(&*a, &out)));
    udp_batch echo(32);
    std::size_t got = 0;
    while (got < 20) {
        auto n = loop.block_on(receive_once(&*b, &echo, SIZE_MAX));
        ASSERT_TRUE(n) << n.error().message();
        for (std::size_t i = 0; i < *n; ++i) {
            EXPECT_EQ(echo.peer(i), a_at);
        }
        got += *n;
        ASSERT_TRUE(loop.block_on(send_all(&*b, &echo))) << "the same batch goes back";
    }
    std::size_t messages = 0;
    auto back = loop.block_on(receive_with_limit(&loop, &*a, 20, 32, &messages));
    ASSERT_TRUE(back) << back.error().message();
    EXPECT_EQ(*back, sent);
}

// A receive lands in a 2 KiB slot first and only the rest of a longer datagram in the
// message's large buffer: sizes around that edge, and the largest, must come out whole.
TEST_P(udp_batch_test, sizes_around_the_compact_slot_and_the_largest_arrive_whole) {
    event_loop loop;
    auto a = udp_socket::bind(loop, any_port());
    auto b = udp_socket::bind(loop, any_port());
    ASSERT_TRUE(a && b);
    ASSERT_TRUE(sys::set_int_option(b->fd(), SOL_SOCKET, SO_RCVBUF, 1 << 20));
    const endpoint a_at = a->local_endpoint().value_or(endpoint{});
    const endpoint b_at = b->local_endpoint().value_or(endpoint{});
    udp_batch out(8, max_udp_payload);
    std::vector<seen> sent;
    for (std::size_t size :
         {std::size_t{2047}, std::size_t{2048}, std::size_t{2049}, std::size_t{4096},
          std::size_t{0}, std::size_t{65000}, max_udp_payload, std::size_t{1}}) {
        auto data = test::random_bytes(size, 4000 + size);
        sent.push_back({data, a_at});
        ASSERT_TRUE(out.push(data, b_at));
    }
    ASSERT_TRUE(loop.block_on(send_all(&*a, &out)));
    std::size_t messages = 0;
    auto got = loop.block_on(receive_with_limit(&loop, &*b, sent.size(), 8, &messages));
    ASSERT_TRUE(got) << got.error().message();
    EXPECT_EQ(*got, sent);
}

TEST_P(udp_batch_test, datagram_larger_than_the_buffer_is_flagged_truncated) {
    event_loop loop;
    auto a = udp_socket::bind(loop, any_port());
    auto b = udp_socket::bind(loop, any_port());
    ASSERT_TRUE(a && b);
    const endpoint b_at = b->local_endpoint().value_or(endpoint{});
    udp_batch out(2, 1000);
    const auto big = test::random_bytes(1000, 5);
    ASSERT_TRUE(out.push(big, b_at));
    ASSERT_TRUE(loop.block_on(send_all(&*a, &out)));
    udp_batch in(4, 100);
    auto n = loop.block_on(receive_once(&*b, &in, SIZE_MAX));
    ASSERT_TRUE(n);
    ASSERT_EQ(*n, 1u);
    EXPECT_TRUE(in.truncated(0));
    EXPECT_EQ(in.data(0).size(), 100u);
    EXPECT_TRUE(std::equal(in.data(0).begin(), in.data(0).end(), big.begin()));
}

INSTANTIATE_TEST_SUITE_P(families, udp_batch_test, ::testing::Values(AF_INET, AF_INET6),
                         [](const ::testing::TestParamInfo<int>& param_info) {
                             return std::string(param_info.param == AF_INET6 ? "ipv6" : "ipv4");
                         });

// ---- GSO merging rules (no system calls) ----

TEST(udp_batch_merge, runs_to_one_peer_of_one_size_become_one_segmented_message) {
    const endpoint p = endpoint::ipv4_loopback(1000);
    const endpoint q = endpoint::ipv4_loopback(1001);
    const auto d = test::random_bytes(4000, 7);
    const auto span = std::span<const std::byte>(d);
    udp_batch b(16, 4096);
    b.set_gso(true);
    ASSERT_TRUE(b.push(span.first(100), p));
    ASSERT_TRUE(b.push(span.first(100), p));
    ASSERT_TRUE(b.push(span.first(100), p));
    EXPECT_EQ(b.size(), 1u);
    EXPECT_EQ(b.segment_size(0), 100u);
    EXPECT_EQ(b.datagram_count(0), 3u);
    ASSERT_TRUE(b.push(span.first(40), p)); // shorter: joins and ends the message
    EXPECT_EQ(b.size(), 1u);
    EXPECT_EQ(b.datagram_count(0), 4u);
    EXPECT_EQ(b.datagram(0, 3).size(), 40u);
    ASSERT_TRUE(b.push(span.first(40), p)); // the message was closed by the short one
    EXPECT_EQ(b.size(), 2u);
    ASSERT_TRUE(b.push(span.first(41), p)); // longer than the segment: a new message
    EXPECT_EQ(b.size(), 3u);
    ASSERT_TRUE(b.push(span.first(41), q)); // another peer: a new message
    EXPECT_EQ(b.size(), 4u);
    ASSERT_TRUE(b.push(span.first(0), q)); // empty datagrams never merge
    EXPECT_EQ(b.size(), 5u);
    EXPECT_EQ(b.datagram_total(), 8u);

    udp_batch off(16, 4096);
    ASSERT_TRUE(off.push(span.first(100), p));
    ASSERT_TRUE(off.push(span.first(100), p));
    EXPECT_EQ(off.size(), 2u) << "GSO off: one message per datagram";
}

TEST(udp_batch_merge, limits_segments_and_payload) {
    const endpoint p = endpoint::ipv6_loopback(1000);
    const auto d = test::random_bytes(65536, 8);
    const auto span = std::span<const std::byte>(d);
    udp_batch b(8, 65536);
    b.set_gso(true);
    for (std::size_t i = 0; i < max_gso_segments + 1; ++i) {
        ASSERT_TRUE(b.push(span.first(10), p));
    }
    EXPECT_EQ(b.size(), 2u);
    EXPECT_EQ(b.datagram_count(0), max_gso_segments);
    b.clear();
    ASSERT_TRUE(b.push(span.first(30000), p));
    ASSERT_TRUE(b.push(span.first(30000), p));
    ASSERT_TRUE(b.push(span.first(30000), p)); // 90000 > max_udp_payload
    EXPECT_EQ(b.size(), 2u);
}

TEST(udp_batch_merge, references_merge_only_when_contiguous) {
    const endpoint p = endpoint::ipv4_loopback(1000);
    const auto d = test::random_bytes(1000, 9);
    const auto span = std::span<const std::byte>(d);
    udp_batch b(8, 0);
    b.set_gso(true);
    ASSERT_TRUE(b.push_ref(span.subspan(0, 100), p));
    ASSERT_TRUE(b.push_ref(span.subspan(100, 100), p));
    EXPECT_EQ(b.size(), 1u);
    EXPECT_EQ(b.data(0).data(), d.data());
    EXPECT_EQ(b.data(0).size(), 200u);
    ASSERT_TRUE(b.push_ref(span.subspan(300, 100), p)); // a gap
    EXPECT_EQ(b.size(), 2u);
    ASSERT_TRUE(b.push_segments(span.subspan(400, 250), p, 100));
    EXPECT_EQ(b.size(), 3u);
    EXPECT_EQ(b.datagram_count(2), 3u);
    EXPECT_EQ(b.datagram(2, 2).size(), 50u);
    ASSERT_TRUE(b.push_ref(span.subspan(650, 100), p));
    EXPECT_EQ(b.size(), 4u) << "a segments message is never extended";
}

// ---- GRO and GSO on the wire ----

struct offload_case {
    const char* name;
    bool gso; // the sender merges runs into UDP_SEGMENT messages
    bool gro; // the receiver has UDP_GRO on
};

class udp_offload_test : public test::fd_leak_check,
                         public ::testing::WithParamInterface<offload_case> {};

// Runs of equal sizes to two receivers, short last datagrams, sizes that change: with
// any combination of GSO and GRO, the receivers must see exactly the datagrams sent.
TEST_P(udp_offload_test, gso_and_gro_on_or_off_give_the_same_datagrams) {
    const offload_case c = GetParam();
    event_loop loop;
    auto a = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
    auto r1 = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
    auto r2 = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(a && r1 && r2);
    if (c.gso && !a->gso_supported()) {
        GTEST_SKIP() << "UDP_SEGMENT is not supported by this kernel";
    }
    if (c.gro) {
        auto on1 = r1->set_gro(true);
        auto on2 = r2->set_gro(true);
        ASSERT_TRUE(on1 && on2);
        if (!*on1 || !*on2) {
            GTEST_SKIP() << "UDP_GRO is not supported by this kernel";
        }
    }
    const endpoint a_at = a->local_endpoint().value_or(endpoint{});
    const endpoint to[2] = {r1->local_endpoint().value_or(endpoint{}),
                            r2->local_endpoint().value_or(endpoint{})};
    std::vector<seen> expect[2];
    udp_batch out(64, 65536);
    out.set_gso(c.gso);
    std::size_t seq = 0;
    // Runs: (receiver, size, count, last size)
    struct run {
        int to;
        std::size_t size, count, last;
    };
    const run runs[] = {{0, 64, 40, 64}, {0, 1400, 20, 100}, {1, 1400, 10, 1400}, {0, 9000, 5, 12},
                        {1, 1, 64, 1},   {0, 500, 3, 499},   {1, 700, 1, 700},    {0, 64, 70, 30}};
    for (const run& r : runs) {
        for (std::size_t k = 0; k < r.count; ++k) {
            const std::size_t size = k + 1 == r.count ? r.last : r.size;
            auto data = test::random_bytes(size, 7000 + seq++);
            expect[r.to].push_back({data, a_at});
            if (!out.push(data, to[r.to])) {
                ASSERT_TRUE(loop.block_on(send_all(&*a, &out)));
                out.clear();
                ASSERT_TRUE(out.push(data, to[r.to]));
            }
        }
        // Send after each run, so the receivers' default buffers never overflow.
        if (c.gso && r.count > 1) {
            EXPECT_LT(out.size(), out.datagram_total()) << "runs were merged";
        }
        ASSERT_TRUE(loop.block_on(send_all(&*a, &out)));
        out.clear();
        std::size_t messages = 0;
        auto got = loop.block_on(
            receive_with_limit(&loop, r.to == 0 ? &*r1 : &*r2, r.count, 64, &messages));
        ASSERT_TRUE(got) << got.error().message();
        const std::size_t first = expect[r.to].size() - r.count;
        ASSERT_EQ(got->size(), r.count);
        for (std::size_t k = 0; k < r.count; ++k) {
            ASSERT_EQ((*got)[k], expect[r.to][first + k]) << "datagram " << k << " of a run";
        }
        if (c.gso && c.gro && r.count > 2) {
            EXPECT_LT(messages, r.count) << "a GSO run reaches a GRO socket coalesced";
        }
        if (!c.gro) {
            EXPECT_EQ(messages, r.count) << "without GRO every datagram arrives alone";
        }
    }
    EXPECT_EQ(out.gso_refusals(), 0u);
}

INSTANTIATE_TEST_SUITE_P(offloads, udp_offload_test,
                         ::testing::Values(offload_case{"plain", false, false},
                                           offload_case{"gso", true, false},
                                           offload_case{"gro", false, true},
                                           offload_case{"gso_gro", true, true}),
                         [](const ::testing::TestParamInfo<offload_case>& param_info) {
                             return std::string(param_info.param.name);
                         });

// SO_NO_CHECK (no UDP checksum on send) makes udp_send_skb() refuse UDP_SEGMENT with
// EINVAL: the batch must send the message datagram by datagram and stop merging.
TEST_F(udp_offload_test, a_refused_segment_message_is_split_and_gso_turns_off) {
    event_loop loop;
    auto a = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
    auto b = udp_socket::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(a && b);
    if (!a->gso_supported()) {
        GTEST_SKIP() << "UDP_SEGMENT is not supported by this kernel";
    }
    ASSERT_TRUE(sys::set_int_option(a->fd(), SOL_SOCKET, SO_NO_CHECK, 1));
    const endpoint a_at = a->local_endpoint().value_or(endpoint{});
    const endpoint b_at = b->local_endpoint().value_or(endpoint{});
    udp_batch out(8, 65536);
    out.set_gso(true);
    std::vector<seen> expect;
    for (std::size_t i = 0; i < 30; ++i) {
        auto data = test::random_bytes(i + 1 == 30 ? 77 : 500, 9100 + i);
        expect.push_back({data, a_at});
        ASSERT_TRUE(out.push(data, b_at));
    }
    auto single = test::random_bytes(300, 9200);
    expect.push_back({single, a_at});
    ASSERT_TRUE(out.push(single, b_at));
    ASSERT_EQ(out.size(), 2u) << "30 merged (the 77-byte one closed it), then one more";
    auto r = loop.block_on(send_all(&*a, &out));
    ASSERT_TRUE(r) << r.error().message();
    EXPECT_EQ(out.gso_refusals(), 1u);
    EXPECT_FALSE(out.gso()) << "merging stops once the kernel refused";
    std::size_t messages = 0;
    auto got = loop.block_on(receive_with_limit(&loop, &*b, 31, 64, &messages));
    ASSERT_TRUE(got) << got.error().message();
    EXPECT_EQ(*got, expect);
}

} // namespace
} // namespace zcio
