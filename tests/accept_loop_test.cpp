// Tests for accept_loop and connection_limit: random data echoed through a handler
// and checksummed, the limit honoured (refused clients closed, a freed slot reused),
// the parent rule of connection_limit, and EMFILE: no spinning, then recovery.
#include <zcio/accept_loop.hpp>

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/stream.hpp>
#include <zcio/sys.hpp>

#include "test_support.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include <sys/resource.h>
#include <sys/time.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;

class accept_loop_test : public test::fd_leak_check {};

// The slot lives in the echo's frame: freed when the connection ends.
task<void> echo_holding(stream s, connection_slot slot, std::uint64_t seed, test::side* out) {
    co_await test::echo(std::move(s), seed, 16 * 1024, out);
    slot.release();
}

// A client that sends `bytes` random bytes, half-closes and reads the echo back.
struct client_run {
    std::vector<std::byte> data;
    test::side sent, received;
};

void start_client(event_loop& loop, stream* c, client_run* run, std::size_t bytes,
                  std::uint64_t seed) {
    run->data = test::random_bytes(bytes, seed);
    loop.spawn(test::produce(c, run->data, seed + 1, 32 * 1024, true, &run->sent));
    loop.spawn(test::consume(c, seed + 2, 32 * 1024, &run->received));
}

TEST(connection_limit, the_nearest_maximum_applies_and_the_parent_counts_all) {
    connection_limit budget(3);
    connection_limit own(1, &budget);    // limited by itself only
    connection_limit shared(0, &budget); // limited by the budget
    auto a = own.try_acquire();
    ASSERT_TRUE(a);
    EXPECT_FALSE(own.try_acquire()) << "own maximum 1 exceeded";
    EXPECT_EQ(own.open(), 1u);
    EXPECT_EQ(budget.open(), 1u);
    auto b = shared.try_acquire();
    auto c = shared.try_acquire();
    ASSERT_TRUE(b && c);
    EXPECT_FALSE(shared.try_acquire()) << "the budget of 3 is full";
    EXPECT_EQ(shared.open(), 2u);
    EXPECT_EQ(budget.open(), 3u);
    a.reset();
    EXPECT_EQ(budget.open(), 2u);
    EXPECT_TRUE(shared.try_acquire()) << "a freed slot of the budget is taken again";
    connection_limit none;
    std::vector<connection_slot> many;
    for (int i = 0; i < 100; ++i) {
        auto s = none.try_acquire();
        ASSERT_TRUE(s);
        many.push_back(std::move(*s));
    }
    EXPECT_EQ(none.open(), 100u);
    many.clear();
    EXPECT_EQ(none.open(), 0u);
}

TEST_F(accept_loop_test, handlers_echo_random_data_and_free_their_slots) {
    event_loop loop;
    auto l = listener::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(l) << l.error().message();
    connection_limit limit;
    accept_options opts;
    opts.limit = &limit;
    std::deque<test::side> echoed;
    loop.spawn(accept_loop(&*l, &opts, [&](accepted a, connection_slot slot) {
        echoed.emplace_back();
        loop.spawn(echo_holding(std::move(a.conn), std::move(slot), echoed.size(), &echoed.back()));
    }));
    constexpr int clients = 4;
    std::deque<stream> conns;
    std::deque<client_run> runs(clients);
    for (int i = 0; i < clients; ++i) {
        auto c = loop.block_on(stream::connect(loop, l->local_endpoint(), 5s));
        ASSERT_TRUE(c) << c.error().message();
        conns.push_back(std::move(*c));
        start_client(loop, &conns.back(), &runs[i], 300'000 + 1'000 * i, 100 + 10 * i);
    }
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop,
        [&] {
            for (auto& r : runs) {
                if (!r.received.done) {
                    return false;
                }
            }
            return limit.open() == 0;
        },
        20s)))
        << "open slots " << limit.open();
    for (auto& r : runs) {
        EXPECT_FALSE(r.received.error) << r.received.error.message();
        EXPECT_EQ(r.received.bytes, r.data.size());
        EXPECT_EQ(r.received.sum, test::checksum_of(r.data));
    }
    EXPECT_EQ(echoed.size(), static_cast<std::size_t>(clients));
    l->close();
    loop.block_on(test::pause(&loop, 1ms));
    EXPECT_EQ(loop.spawned_count(), 0u) << "the accept loop did not end on close";
}

// Reads until end of stream or error: whether the server closed the connection.
task<void> read_to_end(stream* s, bool* ended) {
    std::array<std::byte, 256> buf{};
    while (true) {
        auto n = co_await s->read_some(buf);
        if (!n || *n == 0) {
            *ended = true;
            co_return;
        }
    }
}

TEST_F(accept_loop_test, clients_past_the_limit_are_refused_until_a_slot_frees) {
    event_loop loop;
    auto l = listener::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(l) << l.error().message();
    connection_limit limit(2);
    accept_options opts;
    opts.limit = &limit;
    int refused = 0;
    opts.refused = [&](accepted) { ++refused; }; // dropped: closed at once
    std::deque<std::pair<stream, connection_slot>> held;
    loop.spawn(accept_loop(&*l, &opts, [&](accepted a, connection_slot slot) {
        held.emplace_back(std::move(a.conn), std::move(slot));
    }));
    auto connect = [&] {
        auto c = loop.block_on(stream::connect(loop, l->local_endpoint(), 5s));
        EXPECT_TRUE(c) << c.error().message();
        return c ? std::move(*c) : stream{};
    };
    stream c1 = connect(), c2 = connect(), c3 = connect();
    bool ended[3] = {false, false, false};
    loop.spawn(read_to_end(&c1, &ended[0]));
    loop.spawn(read_to_end(&c2, &ended[1]));
    loop.spawn(read_to_end(&c3, &ended[2]));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return ended[2]; }, 5s)))
        << "the third client was not closed";
    EXPECT_EQ(refused, 1);
    EXPECT_EQ(held.size(), 2u);
    EXPECT_EQ(limit.open(), 2u);
    EXPECT_FALSE(ended[0] || ended[1]) << "an admitted client was closed";

    held.pop_front(); // its connection ends: the slot frees
    EXPECT_EQ(limit.open(), 1u);
    stream c4 = connect();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return held.size() == 2; }, 5s)));
    EXPECT_EQ(refused, 1);
    EXPECT_EQ(limit.open(), 2u);
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return ended[0]; }, 5s)));
    held.clear();
    c1.close();
    c2.close();
    c3.close();
    c4.close();
    l->close();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return loop.spawned_count() == 0; }, 5s)));
    EXPECT_EQ(limit.open(), 0u);
}

// Out of descriptors, the loop neither spins (CPU well under the wall time, few loop
// wake-ups) nor gives up, and serves the queued client once descriptors free up.
TEST_F(accept_loop_test, emfile_backs_off_without_spinning_then_serves) {
    event_loop loop;
    auto l = listener::bind(loop, endpoint::ipv4_loopback(0));
    ASSERT_TRUE(l) << l.error().message();
    connection_limit limit;
    accept_options opts;
    opts.limit = &limit;
    int failures = 0;
    opts.failed = [&](const std::error_code&) { ++failures; };
    test::side echoed;
    int handled = 0;
    loop.spawn(accept_loop(&*l, &opts, [&](accepted a, connection_slot slot) {
        ++handled;
        loop.spawn(echo_holding(std::move(a.conn), std::move(slot), 7, &echoed));
    }));
    // Warm-up while descriptors are to spare (see listener_test's warm_up: sanitizers
    // need a descriptor the first time they meet some paths).
    {
        auto w = loop.block_on(stream::connect(loop, l->local_endpoint(), 5s));
        ASSERT_TRUE(w) << w.error().message();
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return handled == 1; }, 5s)));
    }
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return echoed.done; }, 5s)));
    echoed = {};
    auto cfd = sys::socket(AF_INET, SOCK_STREAM);
    ASSERT_TRUE(cfd) << cfd.error().message();
    auto client = stream::adopt(loop, std::move(*cfd));
    ASSERT_TRUE(client) << client.error().message();
    const auto exhausted_before = l->fd_exhausted_count();
    std::chrono::microseconds cpu{};
    clock::duration wall{};
    {
        test::fd_limit_guard none;
        ASSERT_TRUE(none.exhaust()) << "could not lower RLIMIT_NOFILE";
        const endpoint& to = l->local_endpoint();
        auto c = sys::connect(client->fd(), to.data(), to.size());
        ASSERT_TRUE(c || errno_of(c.error()) == EINPROGRESS) << c.error().message();
        const auto cpu_start = test::cpu_time();
        const auto wall_start = clock::now();
        loop.block_on(test::pause(&loop, 300ms));
        cpu = test::cpu_time() - cpu_start;
        wall = clock::now() - wall_start;
        none.restore();
    }
    EXPECT_EQ(handled, 1) << "handled a client although no descriptor was available";
    EXPECT_EQ(failures, 0) << "EMFILE reached the error path instead of the back-off";
    const auto backoffs = l->fd_exhausted_count() - exhausted_before;
    EXPECT_GT(backoffs, 0u);
    // 1 ms doubling: about 9 tries in 300 ms; a spinning loop would make thousands.
    EXPECT_LT(backoffs, 50u) << "accept retried " << backoffs << " times in 300 ms";
    const double wall_us = std::chrono::duration<double, std::micro>(wall).count();
    EXPECT_LT(static_cast<double>(cpu.count()), 0.3 * wall_us)
        << "the accept loop burned " << cpu.count() << " us of CPU";

    client_run run;
    start_client(loop, &*client, &run, 200'000, 300);
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return run.received.done && limit.open() == 0; }, 10s)))
        << "the queued client was not served once descriptors freed up";
    EXPECT_EQ(handled, 2);
    EXPECT_EQ(run.received.sum, test::checksum_of(run.data));
    EXPECT_EQ(run.received.bytes, run.data.size());
    client->close();
    l->close();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return loop.spawned_count() == 0; }, 5s)));
}

} // namespace
} // namespace zcio
