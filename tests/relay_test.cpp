// Tests for relay: random data both ways with half-close for each engine; a thousand
// quiet relays that hold no coroutine frame, pipe or buffer and still work afterwards;
// a reset that ends both directions and keeps the counts; the idle timeout; cancel();
// bulk data after a quiet spell goes straight back to splice.
#include <zcio/relay.hpp>

#include <zcio/copy.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/stream.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <sys/socket.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;

const std::vector<std::byte>& data() {
    static const std::vector<std::byte> d = test::random_bytes(std::size_t{16} << 20, 0x4e1a);
    return d;
}

// A relay that records how it ended (and how often it was told).
class recorded_relay final : public relay {
public:
    using relay::relay;
    std::optional<traffic> result;
    int done_calls = 0;

protected:
    void on_done(const traffic& t) override {
        result = t;
        ++done_calls;
    }
};

// A connected pair: the relay gets `first`, the client or server `second`. Over TCP the
// relay holds the accepted ends, so they go first (test::tcp_pair puts them second).
result<test::stream_pair> make_pair(event_loop& loop, bool tcp) {
    if (!tcp) {
        return test::unix_pair(loop);
    }
    auto p = loop.block_on(test::tcp_pair(&loop));
    if (!p) {
        return fail(p.error());
    }
    return test::stream_pair{std::move(p->second), std::move(p->first)};
}

// client ⇄ [a relay b] ⇄ server: `client` and `server` are the outer ends.
struct rig {
    stream client;
    stream server;
    std::unique_ptr<recorded_relay> r;
};

result<rig> make_rig(event_loop& loop, bool tcp, const bidirectional_options& o) {
    auto left = make_pair(loop, tcp);
    auto right = make_pair(loop, tcp);
    if (!left || !right) {
        return fail(!left ? left.error() : right.error());
    }
    rig g{std::move(left->second), std::move(right->second), nullptr};
    g.r = std::make_unique<recorded_relay>(std::move(left->first), std::move(right->first), o);
    return g;
}

// produce() and consume() here move fixed-size chunks, unlike test::produce and
// test::consume, whose chunks are of random size.
task<void> produce(stream* s, std::span<const std::byte> d, std::size_t chunk, bool shut,
                   test::side* out) {
    while (out->bytes < d.size()) {
        const std::size_t len = std::min(chunk, d.size() - out->bytes);
        auto w = co_await s->write_all(d.subspan(out->bytes, len));
        if (!w) {
            out->error = w.error();
            break;
        }
        out->bytes += *w;
    }
    if (shut && !out->error) {
        (void)s->shutdown_write();
    }
    out->done = true;
}

// Reads to end of stream, or `limit` bytes.
task<void> consume(stream* s, std::optional<std::size_t> limit, test::side* out) {
    test::checksum sum;
    std::vector<std::byte> buf(std::size_t{128} << 10);
    while (!limit || out->bytes < *limit) {
        const std::size_t want = limit ? std::min(buf.size(), *limit - out->bytes) : buf.size();
        auto n = co_await s->read_some(std::span(buf).first(want));
        if (!n || *n == 0) {
            out->error = n ? std::error_code{} : n.error();
            break;
        }
        sum.update(std::span(buf).first(*n));
        out->bytes += *n;
    }
    out->sum = sum.value();
    out->done = true;
}

// The server reads the whole request, then answers and half-closes.
task<void> serve_once(stream* s, std::span<const std::byte> reply, test::side* got,
                      test::side* sent) {
    co_await consume(s, std::nullopt, got);
    co_await produce(s, reply, 100'003, true, sent);
}

class relay_fixture : public test::fd_leak_check {
protected:
    transfer_pools pools{pipe_pool(pipe_pool_options{}), buffer_pool(buffer_pool_options{})};

    void TearDown() override {
        EXPECT_EQ(pools.pipes.stats().leased, 0u);
        EXPECT_EQ(pools.buffers.stats().leased, 0u);
        pools.pipes.clear_idle();
        test::fd_leak_check::TearDown();
    }
};

class relay_engine_test : public relay_fixture, public ::testing::WithParamInterface<copy_path> {};

TEST_P(relay_engine_test, moves_random_data_both_ways_and_passes_the_half_close_on) {
    event_loop loop;
    bidirectional_options o;
    o.path = GetParam();
    o.pools = &pools;
    auto g = make_rig(loop, true, o);
    ASSERT_TRUE(g) << g.error().message();
    const auto request = std::span(data()).first(std::size_t{6} << 20);
    const auto reply = std::span(data()).subspan(std::size_t{7} << 20, (std::size_t{5} << 20) + 11);

    test::side sent, got, reply_sent, reply_got;
    g->r->start();
    loop.spawn(produce(&g->client, request, 70'001, true, &sent));
    loop.spawn(serve_once(&g->server, reply, &got, &reply_sent));
    loop.spawn(consume(&g->client, std::nullopt, &reply_got));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return g->r->result && reply_got.done && reply_sent.done; }, 60s)));

    const traffic& t = *g->r->result;
    EXPECT_TRUE(t.ok()) << t.error.message();
    EXPECT_EQ(t.a_to_b, request.size());
    EXPECT_EQ(t.b_to_a, reply.size());
    EXPECT_EQ(got.bytes, request.size());
    EXPECT_EQ(got.sum, test::checksum_of(request)) << "the server got different bytes";
    EXPECT_EQ(reply_got.bytes, reply.size());
    EXPECT_EQ(reply_got.sum, test::checksum_of(reply)) << "the client got different bytes";
    if (GetParam() == copy_path::buffer) {
        EXPECT_EQ(pools.pipes.stats().created, 0u);
        EXPECT_EQ(t.a_to_b_path, copy_path::buffer);
    } else {
        EXPECT_EQ(t.a_to_b_path, copy_path::splice) << to_string(t.a_to_b_path);
    }
}

INSTANTIATE_TEST_SUITE_P(engines, relay_engine_test,
                         ::testing::Values(copy_path::automatic, copy_path::splice,
                                           copy_path::buffer),
                         [](const ::testing::TestParamInfo<copy_path>& p) {
                             return std::string(to_string(p.param));
                         });

class relay_test : public relay_fixture {};

// Writes `msg` to every client, reads it at every server, and back.
task<void> ping_all(std::vector<rig>* rigs, std::span<const std::byte> msg, test::side* errors) {
    std::vector<std::byte> buf(msg.size());
    for (auto& g : *rigs) {
        for (auto [from, to] : {std::pair{&g.client, &g.server}, std::pair{&g.server, &g.client}}) {
            if (auto w = co_await from->write_all(msg); !w) {
                errors->error = w.error();
                co_return;
            }
            std::size_t have = 0;
            while (have < msg.size()) {
                auto n = co_await to->read_some(std::span(buf).subspan(have));
                if (!n || *n == 0) {
                    errors->error = n ? make_error_code(std::errc::connection_aborted) : n.error();
                    co_return;
                }
                have += *n;
            }
            if (!std::equal(buf.begin(), buf.end(), msg.begin())) {
                errors->bytes += 1;
            }
        }
    }
}

TEST_F(relay_test, quiet_relays_hold_no_coroutine_frame_pipe_or_buffer) {
    constexpr int count = 1000; // four descriptors each
    event_loop loop;
    bidirectional_options o;
    o.pools = &pools;
    o.idle_timeout = 60s;
    std::vector<rig> rigs;
    for (int i = 0; i < count; ++i) {
        auto g = make_rig(loop, false, o);
        ASSERT_TRUE(g) << g.error().message();
        rigs.push_back(std::move(*g));
        rigs.back().r->start();
    }
    const auto msg = std::span(data()).first(300);
    test::side errors;
    loop.block_on(ping_all(&rigs, msg, &errors));
    ASSERT_FALSE(errors.error) << errors.error.message();
    EXPECT_EQ(errors.bytes, 0u) << "messages arrived changed";

    // Everything is quiet now: no frame of any kind, nothing leased, nothing running.
    EXPECT_EQ(live_task_frames(), 0) << "quiet relays still hold coroutine frames";
    EXPECT_EQ(pools.pipes.stats().leased, 0u);
    EXPECT_EQ(pools.buffers.stats().leased, 0u);
    int running = 0;
    for (auto& g : rigs) {
        running += g.r->running();
        EXPECT_EQ(g.r->a_to_b(), msg.size());
        EXPECT_EQ(g.r->b_to_a(), msg.size());
    }
    EXPECT_EQ(running, 0);

    // They wake up again, and end cleanly when the clients and servers hang up.
    loop.block_on(ping_all(&rigs, std::span(data()).subspan(1000, 4000), &errors));
    ASSERT_FALSE(errors.error) << errors.error.message();
    EXPECT_EQ(errors.bytes, 0u);
    for (auto& g : rigs) {
        (void)g.client.shutdown_write();
        (void)g.server.shutdown_write();
    }
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop,
        [&] { return std::all_of(rigs.begin(), rigs.end(), [](rig& g) { return g.r->result; }); },
        30s)));
    for (auto& g : rigs) {
        EXPECT_TRUE(g.r->result->ok()) << g.r->result->error.message();
        EXPECT_EQ(g.r->result->a_to_b, 4300u);
        EXPECT_EQ(g.r->result->b_to_a, 4300u);
    }
}

TEST_F(relay_test, a_reset_ends_both_directions_and_keeps_the_counts) {
    event_loop loop;
    bidirectional_options o;
    o.pools = &pools;
    auto g = make_rig(loop, true, o);
    ASSERT_TRUE(g) << g.error().message();
    g->r->start();
    test::side sent, got;
    const auto request = std::span(data()).first(std::size_t{4} << 20);
    loop.spawn(produce(&g->client, request, 65'536, false, &sent));
    loop.spawn(consume(&g->server, std::size_t{1} << 20, &got));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return got.done; }, 30s)));
    ::linger lg{1, 0};
    ASSERT_TRUE(sys::setsockopt(g->server.fd(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    g->server.close(); // RST toward the relay's b side
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return g->r->result.has_value(); }, 30s)));
    const traffic& t = *g->r->result;
    EXPECT_FALSE(t.ok());
    ASSERT_TRUE(t.failed.has_value()) << t.error.message();
    EXPECT_GE(t.a_to_b, got.bytes) << "the count lost bytes the server did read";
    EXPECT_LE(t.a_to_b, request.size());
    g->client.close(); // the producer may still wait on a full socket
    (void)loop.block_on(test::wait_until(
        &loop, [&] { return sent.done; }, 10s));
}

// The first direction fails inside start() (its destination is already gone): the
// relay ends once, with that error, and on_done() comes exactly once.
TEST_F(relay_test, a_direction_that_fails_at_start_ends_the_relay_once) {
    event_loop loop;
    bidirectional_options o;
    o.pools = &pools;
    auto g = make_rig(loop, false, o);
    ASSERT_TRUE(g) << g.error().message();
    const auto msg = std::span(data()).first(1000);
    ASSERT_EQ(sys::write(g->client.fd(), msg.data(), msg.size()).value_or(0), msg.size());
    g->server.close(); // a→b now fails with EPIPE at its first send
    g->r->start();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return g->r->result.has_value(); }, 10s)));
    loop.block_on(test::pause(&loop, 20ms)); // a second on_done() would come by now
    EXPECT_EQ(g->r->done_calls, 1);
    ASSERT_TRUE(g->r->result->failed.has_value());
    EXPECT_EQ(*g->r->result->failed, direction::a_to_b);
    EXPECT_EQ(g->r->result->error, std::errc::broken_pipe) << g->r->result->error.message();
}

// The upstream neither reads nor writes; the client fills every buffer on the way, so
// its direction waits to write, and then resets. Nothing waits on the client socket at
// that point: the idle sweep must find the reset long before the idle timeout.
TEST_F(relay_test, a_reset_source_of_a_direction_stuck_writing_ends_the_relay) {
    event_loop loop;
    bidirectional_options o;
    o.pools = &pools;
    o.idle_timeout = 30s;
    auto g = make_rig(loop, true, o);
    ASSERT_TRUE(g) << g.error().message();
    relay_set set(loop, 100ms);
    set.add(*g->r);
    g->r->start();
    test::side sent;
    const auto request = std::span(data()).first(std::size_t{16} << 20);
    loop.spawn(produce(&g->client, request, 65'536, false, &sent));
    // Wait until the relay moved what it could and stopped (the server reads nothing).
    std::uint64_t last = 0;
    auto stalled = [&] {
        const bool same = g->r->a_to_b() == last && last > 0;
        last = g->r->a_to_b();
        return same;
    };
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return stalled() && g->r->running() > 0; }, 10s)));
    loop.block_on(test::pause(&loop, 200ms));
    ASSERT_FALSE(g->r->result.has_value()) << g->r->result->error.message();
    ::linger lg{1, 0};
    ASSERT_TRUE(sys::setsockopt(g->client.fd(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    const auto cut = clock::now();
    g->client.close(); // RST toward the relay's a side
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return g->r->result.has_value(); }, 5s)))
        << "the reset went unnoticed (the idle timeout is 30 s)";
    EXPECT_LT(clock::now() - cut, 2s);
    const traffic& t = *g->r->result;
    ASSERT_TRUE(t.failed.has_value());
    EXPECT_EQ(*t.failed, direction::a_to_b);
    EXPECT_EQ(t.error, std::errc::connection_reset) << t.error.message();
    EXPECT_GT(t.a_to_b, 0u);
    g->r.reset();
}

TEST_F(relay_test, the_idle_timeout_ends_a_quiet_relay_but_not_a_busy_one) {
    event_loop loop;
    bidirectional_options o;
    o.pools = &pools;
    o.idle_timeout = 300ms;
    auto quiet = make_rig(loop, false, o);
    auto busy = make_rig(loop, false, o);
    ASSERT_TRUE(quiet && busy);
    relay_set set(loop, 50ms); // the timeout fires 300-350 ms after the last byte
    set.add(*quiet->r);
    set.add(*busy->r);
    EXPECT_EQ(set.size(), 2u);
    const auto started = clock::now();
    quiet->r->start();
    busy->r->start();
    std::vector<rig> busy_only;
    busy_only.push_back(std::move(*busy));
    test::side errors;
    // A message every 50 ms for a second keeps the busy one alive.
    while (clock::now() - started < 1s) {
        loop.block_on(ping_all(&busy_only, std::span(data()).first(10), &errors));
        loop.block_on(test::pause(&loop, 50ms));
    }
    ASSERT_FALSE(errors.error) << errors.error.message();
    ASSERT_TRUE(quiet->r->result.has_value()) << "the quiet relay was not timed out";
    EXPECT_EQ(quiet->r->result->error, std::errc::timed_out);
    EXPECT_FALSE(quiet->r->result->failed.has_value());
    quiet->r.reset(); // leaves the set
    EXPECT_EQ(set.size(), 1u);
    EXPECT_FALSE(busy_only[0].r->result.has_value()) << "the busy relay was timed out";
    set.cancel_all();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return busy_only[0].r->result.has_value(); }, 5s)));
    EXPECT_EQ(busy_only[0].r->result->error, std::errc::operation_canceled);
    EXPECT_EQ(busy_only[0].r->result->a_to_b, busy_only[0].r->a_to_b());
    EXPECT_GT(busy_only[0].r->result->a_to_b, 0u);
    busy_only.clear();
    EXPECT_TRUE(set.empty());
}

TEST_F(relay_test, cancel_ends_a_relay_in_the_middle_of_a_transfer) {
    event_loop loop;
    bidirectional_options o;
    o.pools = &pools;
    auto g = make_rig(loop, true, o);
    ASSERT_TRUE(g);
    g->r->start();
    test::side sent;
    // Nobody reads the server side: the relay fills it and waits to write.
    loop.spawn(
        produce(&g->client, std::span(data()).first(std::size_t{16} << 20), 1 << 20, false, &sent));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return g->r->a_to_b() > 0; }, 10s)));
    loop.block_on(test::pause(&loop, 100ms));
    g->r->cancel();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return g->r->result.has_value(); }, 5s)));
    EXPECT_EQ(g->r->result->error, std::errc::operation_canceled);
    EXPECT_GT(g->r->result->a_to_b, 0u);
    g->client.close();
    (void)loop.block_on(test::wait_until(
        &loop, [&] { return sent.done; }, 10s));
}

TEST_F(relay_test, bulk_data_after_a_quiet_spell_goes_back_to_splice) {
    event_loop loop;
    bidirectional_options o;
    o.pools = &pools;
    auto g = make_rig(loop, true, o);
    ASSERT_TRUE(g);
    g->r->start();
    const auto first = std::span(data()).first(std::size_t{4} << 20);
    const auto second = std::span(data()).subspan(std::size_t{5} << 20, std::size_t{4} << 20);
    test::side s1, r1, s2, r2;
    loop.spawn(produce(&g->client, first, 1 << 20, false, &s1));
    loop.spawn(consume(&g->server, first.size(), &r1));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return r1.done; }, 30s)));
    EXPECT_EQ(r1.sum, test::checksum_of(first));
    EXPECT_EQ(g->r->running(), 0);
    const auto buffers_before = pools.buffers.stats().created;
    loop.spawn(produce(&g->client, second, 1 << 20, true, &s2));
    loop.spawn(consume(&g->server, std::nullopt, &r2));
    (void)g->server.shutdown_write();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return g->r->result && r2.done; }, 30s)));
    EXPECT_EQ(r2.sum, test::checksum_of(second));
    EXPECT_TRUE(g->r->result->ok()) << g->r->result->error.message();
    EXPECT_EQ(g->r->result->a_to_b, first.size() + second.size());
    EXPECT_EQ(g->r->result->a_to_b_path, copy_path::splice);
    EXPECT_GE(pools.pipes.stats().created, 1u);
    EXPECT_EQ(pools.buffers.stats().created, buffers_before)
        << "the second burst started on the buffer path again";
}

} // namespace
} // namespace zcio
