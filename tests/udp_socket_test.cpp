// Tests for udp_socket: random datagrams (empty to jumbo) echoed over IPv4 and IPv6
// loopback with checksums and sender addresses checked, truncation, and cancellation.
#include <zcio/udp_socket.hpp>

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/task.hpp>
#include <zcio/timeout.hpp>

#include "test_support.hpp"

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <sys/socket.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;

// What one side of a datagram exchange saw.
struct udp_report {
    std::size_t datagrams = 0;
    std::size_t bytes = 0;
    std::uint64_t sum = 0;      // over every datagram's bytes, in order
    std::size_t mismatched = 0; // echoes that differed from what was sent
    std::size_t wrong_sender = 0;
    std::size_t truncated = 0;
    std::error_code error;
    bool done = false;
};

// Sends `count` random datagrams (sizes from 0 to `max_size`) to `peer`, one at a
// time, and checks that each comes back whole, from `peer`. One at a time, because
// UDP has no flow control: a burst could overflow the receive buffer and be dropped.
task<void> ping(udp_socket* s, endpoint peer, std::size_t count, std::size_t max_size,
                std::uint64_t seed, udp_report* sent, udp_report* echoed) {
    test::size_source sizes(seed);
    test::checksum sent_sum, echoed_sum;
    std::vector<std::byte> buf(max_size + 1); // one spare byte: a longer echo shows up
    for (std::size_t i = 0; i < count; ++i) {
        const auto data = test::random_bytes(sizes.between(0, max_size), seed * 7919 + i);
        auto n = co_await s->send_to(data, peer);
        if (!n) {
            sent->error = n.error();
            break;
        }
        EXPECT_EQ(*n, data.size()) << "a datagram is sent whole or not at all";
        sent_sum.update(data);
        sent->bytes += *n;
        ++sent->datagrams;

        auto got = co_await s->recv_from(buf);
        if (!got) {
            echoed->error = got.error();
            break;
        }
        const auto bytes = std::span(buf).first(got->size);
        echoed_sum.update(bytes);
        echoed->bytes += got->size;
        ++echoed->datagrams;
        echoed->truncated += got->truncated ? 1 : 0;
        echoed->wrong_sender += got->from == peer ? 0 : 1;
        echoed->mismatched +=
            got->size == data.size() && test::checksum_of(bytes) == test::checksum_of(data) ? 0 : 1;
    }
    sent->sum = sent_sum.value();
    echoed->sum = echoed_sum.value();
    sent->done = echoed->done = true;
}

// Sends each of `count` datagrams back to whoever sent it.
task<void> pong(udp_socket* s, std::size_t count, udp_report* out) {
    test::checksum sum;
    std::vector<std::byte> buf(64 * 1024);
    for (std::size_t i = 0; i < count; ++i) {
        auto got = co_await s->recv_from(buf);
        if (!got) {
            out->error = got.error();
            break;
        }
        const auto bytes = std::span(buf).first(got->size);
        sum.update(bytes);
        out->bytes += got->size;
        ++out->datagrams;
        out->truncated += got->truncated ? 1 : 0;
        if (auto n = co_await s->send_to(bytes, got->from); !n) {
            out->error = n.error();
            break;
        }
    }
    out->sum = sum.value();
    out->done = true;
}

class udp_socket_test : public test::udp_family_test {};

TEST_P(udp_socket_test, random_datagrams_echo_whole_with_their_sender) {
    event_loop loop;
    auto a = udp_socket::bind(loop, any_port());
    auto b = udp_socket::bind(loop, any_port());
    ASSERT_TRUE(a) << a.error().message();
    ASSERT_TRUE(b) << b.error().message();
    auto a_at = a->local_endpoint();
    auto b_at = b->local_endpoint();
    ASSERT_TRUE(a_at && b_at);
    EXPECT_NE(a_at->port(), 0) << "port 0 must become a real port";
    EXPECT_EQ(a_at->family(), GetParam());

    constexpr std::size_t count = 400;
    constexpr std::size_t max_size = 9000; // above a 1500-byte MTU: loopback's is 64 KiB
    udp_report sent, echoed, ponged;
    loop.spawn(pong(&*b, count, &ponged));
    loop.spawn(ping(&*a, *b_at, count, max_size, 91, &sent, &echoed));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return echoed.done && ponged.done; }, 20s)))
        << "sent " << sent.datagrams << ", ponged " << ponged.datagrams << ", echoed "
        << echoed.datagrams;

    EXPECT_FALSE(sent.error) << sent.error.message();
    EXPECT_FALSE(echoed.error) << echoed.error.message();
    EXPECT_FALSE(ponged.error) << ponged.error.message();
    EXPECT_EQ(sent.datagrams, count);
    EXPECT_EQ(ponged.datagrams, count);
    EXPECT_EQ(echoed.datagrams, count);
    EXPECT_EQ(ponged.bytes, sent.bytes);
    EXPECT_EQ(echoed.bytes, sent.bytes);
    EXPECT_EQ(ponged.sum, sent.sum) << "the receiver saw different bytes than were sent";
    EXPECT_EQ(echoed.sum, sent.sum) << "the echoes differ from what was sent";
    EXPECT_EQ(echoed.mismatched, 0u);
    EXPECT_EQ(echoed.wrong_sender, 0u);
    EXPECT_EQ(echoed.truncated + ponged.truncated, 0u);
}

struct received {
    datagram_info info;
    std::vector<std::byte> bytes;
    std::error_code error;
};

task<void> send_then_receive(udp_socket* from, udp_socket* to, endpoint to_at,
                             std::vector<std::byte> data, std::size_t buffer_size, received* out) {
    if (auto n = co_await from->send_to(data, to_at); !n) {
        out->error = n.error();
        co_return;
    }
    std::vector<std::byte> buf(buffer_size);
    auto got = co_await to->recv_from(buf);
    if (!got) {
        out->error = got.error();
        co_return;
    }
    out->info = *got;
    out->bytes.assign(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(got->size));
}

TEST_P(udp_socket_test, datagram_larger_than_the_buffer_is_cut_and_flagged_truncated) {
    event_loop loop;
    auto a = udp_socket::bind(loop, any_port());
    auto b = udp_socket::bind(loop, any_port());
    ASSERT_TRUE(a && b);
    const endpoint b_at = b->local_endpoint().value_or(endpoint{});
    const endpoint a_at = a->local_endpoint().value_or(endpoint{});

    const auto big = test::random_bytes(1000, 101);
    received cut;
    loop.block_on(send_then_receive(&*a, &*b, b_at, big, 100, &cut));
    ASSERT_FALSE(cut.error) << cut.error.message();
    EXPECT_TRUE(cut.info.truncated);
    EXPECT_EQ(cut.info.size, 100u) << "size counts the bytes that fit, not the datagram";
    EXPECT_EQ(test::checksum_of(cut.bytes), test::checksum_of(std::span(big).first(100)));
    EXPECT_EQ(cut.info.from, a_at);

    // The rest of the cut datagram is gone: the next receive gets the next datagram,
    // and one that exactly fills the buffer is not truncated.
    const auto exact = test::random_bytes(100, 102);
    received whole;
    loop.block_on(send_then_receive(&*a, &*b, b_at, exact, 100, &whole));
    ASSERT_FALSE(whole.error) << whole.error.message();
    EXPECT_FALSE(whole.info.truncated);
    EXPECT_EQ(whole.info.size, exact.size());
    EXPECT_EQ(test::checksum_of(whole.bytes), test::checksum_of(exact));

    // An empty datagram is a datagram: size 0, not end of stream, not truncated.
    received empty;
    loop.block_on(send_then_receive(&*a, &*b, b_at, {}, 100, &empty));
    ASSERT_FALSE(empty.error) << empty.error.message();
    EXPECT_EQ(empty.info.size, 0u);
    EXPECT_FALSE(empty.info.truncated);
    EXPECT_EQ(empty.info.from, a_at);
}

// ---- cancellation ----

task<void> receive_once(udp_socket* s, std::error_code* error) {
    std::array<std::byte, 64> buf{};
    auto got = co_await s->recv_from(buf);
    *error = got ? std::error_code{} : got.error();
}

task<void> close_soon(event_loop* loop, udp_socket* s) {
    co_await yield(*loop); // the receiver has parked by now
    s->close();
}

TEST_P(udp_socket_test, close_from_another_coroutine_cancels_a_pending_receive) {
    event_loop loop;
    auto s = udp_socket::bind(loop, any_port());
    ASSERT_TRUE(s) << s.error().message();
    std::error_code error;
    std::size_t finished = 0;
    auto count = [&finished](const std::exception_ptr&) { ++finished; };
    loop.spawn(receive_once(&*s, &error), count);
    loop.spawn(close_soon(&loop, &*s), count);
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return finished == 2; }, 5s)));
    EXPECT_EQ(error, std::errc::operation_canceled) << error.message();
    EXPECT_EQ(loop.registered_count(), 0u);
}

// Owns the socket, so with_timeout destroying this frame closes it.
task<result<datagram_info>> receive_owned(udp_socket s) {
    std::array<std::byte, 64> buf{};
    co_return co_await s.recv_from(buf);
}

task<result<datagram_info>> receive_with_timeout(event_loop* loop, udp_socket s,
                                                 clock::duration limit) {
    co_return co_await with_timeout(*loop, receive_owned(std::move(s)), limit);
}

TEST_P(udp_socket_test, with_timeout_ends_a_receive_that_never_completes) {
    event_loop loop;
    const long frames_before = live_task_frames();
    auto s = udp_socket::bind(loop, any_port());
    ASSERT_TRUE(s) << s.error().message();
    EXPECT_EQ(loop.registered_count(), 1u);
    auto r = loop.block_on(receive_with_timeout(&loop, std::move(*s), 50ms));
    ASSERT_FALSE(r) << "received " << r->size << " bytes from nobody";
    EXPECT_EQ(r.error(), std::errc::timed_out) << r.error().message();
    EXPECT_EQ(loop.registered_count(), 0u);
    EXPECT_EQ(live_task_frames(), frames_before);
}

INSTANTIATE_TEST_SUITE_P(families, udp_socket_test, ::testing::Values(AF_INET, AF_INET6),
                         [](const ::testing::TestParamInfo<int>& param_info) {
                             return std::string(param_info.param == AF_INET6 ? "ipv6" : "ipv4");
                         });

} // namespace
} // namespace zcio
