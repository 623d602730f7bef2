// Tests for copy_bidirectional(): half-close in both orders and with the ends swapped;
// a slow reader on one side does not stall the other direction; an error in one
// direction ends both with both counts; the idle timeout; the rate limit; 4,000 idle
// proxies that hold no pipe and no buffer until bytes arrive; and pools that cannot
// lend a pipe. Every test uses its own transfer_pools and ends with nothing leased.
#include <zcio/copy_bidirectional.hpp>

#include <zcio/buffer_pool.hpp>
#include <zcio/copy.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/pipe_pool.hpp>
#include <zcio/result.hpp>
#include <zcio/stream.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>
#include <zcio/timeout.hpp>
#include <zcio/unique_fd.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <sys/resource.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;

// ---- data and helpers ----

constexpr std::size_t data_size = std::size_t{64} << 20;

// 64 MiB of random bytes, made once; each stream sends a slice of it.
const std::vector<std::byte>& shared_data() {
    static const std::vector<std::byte> data = test::random_bytes(data_size, 0xb1d1);
    return data;
}

std::span<const std::byte> slice(std::size_t offset, std::size_t n) {
    return std::span(shared_data()).subspan(offset, n);
}

std::uint64_t sum_of(std::span<const std::byte> bytes) {
    return test::checksum_of(bytes);
}

std::string describe(const traffic& t) {
    return "{a_to_b=" + std::to_string(t.a_to_b) + " b_to_a=" + std::to_string(t.b_to_a) +
           " a_to_b_path=" + to_string(t.a_to_b_path) + " b_to_a_path=" + to_string(t.b_to_a_path) +
           " failed=" + (t.failed ? to_string(*t.failed) : "none") + " error=" + t.error.message() +
           "}";
}

// ---- coroutines (parameters by value or pointer: see task.hpp) ----

// Readers read up to this much at a time.
constexpr std::size_t read_chunk = std::size_t{256} << 10;

// Reads to end of stream, then writes `reply` and half-closes: a server that answers
// only once the request is complete.
task<void> consume_then_produce(stream* s, std::span<const std::byte> reply, std::uint64_t seed,
                                test::side* got, test::side* sent) {
    co_await test::consume(s, seed, read_chunk, got);
    if (got->error) {
        sent->done = true;
        co_return;
    }
    co_await test::produce(s, reply, seed + 1, std::size_t{256} << 10, true, sent);
}

task<void> run_bidi(stream* a, stream* b, bidirectional_options o, traffic* out, bool* done) {
    *out = co_await copy_bidirectional(*a, *b, o);
    *done = true;
}

// The same, ended early by `cancel` (the result is then operation_canceled).
task<void> run_bidi_cancellable(event_loop* loop, stream* a, stream* b, bidirectional_options o,
                                cancel_source* cancel, bool* cancelled, bool* done) {
    auto r = co_await with_cancel(*loop, copy_bidirectional(*a, *b, o), *cancel);
    *cancelled = !r.has_value();
    *done = true;
}

// ---- the four ends of a proxy: client <-> a   (copy_bidirectional)   b <-> server ----

enum class transport { tcp, unix_socketpair };

const char* to_string(transport t) {
    return t == transport::tcp ? "tcp" : "unix";
}

result<test::stream_pair> make_pair(event_loop& loop, transport t) {
    return t == transport::tcp ? loop.block_on(test::tcp_pair(&loop)) : test::unix_pair(loop);
}

struct proxy_ends {
    stream client; // talks to a
    stream a;
    stream b;
    stream server; // talks to b
};

result<proxy_ends> make_proxy(event_loop& loop, transport t) {
    auto front = make_pair(loop, t);
    if (!front) {
        return fail(front.error());
    }
    auto back = make_pair(loop, t);
    if (!back) {
        return fail(back.error());
    }
    return proxy_ends{std::move(front->first), std::move(front->second), std::move(back->first),
                      std::move(back->second)};
}

// ---- fixture ----

class bidi_test : public test::transfer_pools_fixture {};

const char* path_name(copy_path p) {
    return to_string(p);
}

// ---- half-close ----

struct half_close_case {
    transport t;
    copy_path path;
    bool swapped;      // copy_bidirectional(b, a) instead of (a, b)
    bool server_first; // the server sends and half-closes first, then the client
};

class bidi_half_close_test : public test::transfer_pools_fixture,
                             public ::testing::WithParamInterface<half_close_case> {};

// One side sends everything and shuts down writing; the other reads to end of stream
// and only then answers. The answer arrives whole, and both directions end cleanly.
TEST_P(bidi_half_close_test, the_side_that_shut_down_writing_still_gets_the_whole_reply) {
    const half_close_case& c = GetParam();
    transfer_pools& pools = make_pools();
    const auto request = slice(0, (std::size_t{1} << 20) + 3);
    const auto reply = slice(std::size_t{5} << 20, (std::size_t{8} << 20) + 5);
    event_loop loop;
    auto ends = make_proxy(loop, c.t);
    ASSERT_TRUE(ends) << ends.error().message();

    // The "first" side sends and half-closes, the "second" answers after end of stream.
    stream& first = c.server_first ? ends->server : ends->client;
    stream& second = c.server_first ? ends->client : ends->server;
    test::side first_sent, first_got, second_got, second_sent;
    loop.spawn(test::produce(&first, request, 1, std::size_t{64} << 10, true, &first_sent));
    loop.spawn(test::consume(&first, 2, read_chunk, &first_got));
    loop.spawn(consume_then_produce(&second, reply, 3, &second_got, &second_sent));

    bidirectional_options o;
    o.path = c.path;
    o.pools = &pools;
    traffic t;
    bool done = false;
    stream* x = c.swapped ? &ends->b : &ends->a;
    stream* y = c.swapped ? &ends->a : &ends->b;
    loop.spawn(run_bidi(x, y, o, &t, &done));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop,
        [&] {
            return done && first_sent.done && first_got.done && second_got.done && second_sent.done;
        },
        30s)))
        << "traffic " << describe(t) << " first sent " << first_sent << " got " << first_got
        << "; second got " << second_got << " sent " << second_sent;

    EXPECT_TRUE(t.ok()) << describe(t);
    EXPECT_FALSE(t.failed);
    EXPECT_FALSE(first_sent.error) << first_sent.error.message();
    EXPECT_FALSE(first_got.error) << first_got.error.message();
    EXPECT_FALSE(second_got.error) << second_got.error.message();
    EXPECT_FALSE(second_sent.error) << second_sent.error.message();
    EXPECT_EQ(second_got.bytes, request.size());
    EXPECT_EQ(second_got.sum, sum_of(request));
    EXPECT_EQ(first_got.bytes, reply.size()) << "the reply did not arrive whole";
    EXPECT_EQ(first_got.sum, sum_of(reply));

    // a→b carries what the client sent; which of x/y is `a` depends on `swapped`.
    const std::uint64_t client_to_server = c.server_first ? reply.size() : request.size();
    const std::uint64_t server_to_client = c.server_first ? request.size() : reply.size();
    EXPECT_EQ(c.swapped ? t.b_to_a : t.a_to_b, client_to_server);
    EXPECT_EQ(c.swapped ? t.a_to_b : t.b_to_a, server_to_client);
    if (c.path != copy_path::automatic) {
        EXPECT_EQ(t.a_to_b_path, c.path);
        EXPECT_EQ(t.b_to_a_path, c.path);
    }
}

std::vector<half_close_case> half_close_cases() {
    std::vector<half_close_case> out;
    for (transport t : {transport::tcp, transport::unix_socketpair}) {
        for (copy_path p : {copy_path::automatic, copy_path::splice, copy_path::buffer}) {
            for (bool swapped : {false, true}) {
                for (bool server_first : {false, true}) {
                    out.push_back({t, p, swapped, server_first});
                }
            }
        }
    }
    return out;
}

INSTANTIATE_TEST_SUITE_P(cases, bidi_half_close_test, ::testing::ValuesIn(half_close_cases()),
                         [](const ::testing::TestParamInfo<half_close_case>& param_info) {
                             const auto& c = param_info.param;
                             return std::string(to_string(c.t)) + "_" + path_name(c.path) +
                                    (c.swapped ? "_swapped" : "_in_order") +
                                    (c.server_first ? "_server_closes_first"
                                                    : "_client_closes_first");
                         });

// ---- a slow reader on one side does not block the other direction ----

struct slow_case {
    transport t;
    copy_path path;
};

class bidi_slow_reader_test : public test::transfer_pools_fixture,
                              public ::testing::WithParamInterface<slow_case> {};

TEST_P(bidi_slow_reader_test, one_blocked_direction_does_not_block_the_other) {
    const slow_case& c = GetParam();
    transfer_pools& pools = make_pools();
    const auto upload = slice(0, std::size_t{32} << 20); // far more than the buffers hold
    const auto download = slice(std::size_t{40} << 20, (std::size_t{8} << 20) + 1);
    event_loop loop;
    auto ends = make_proxy(loop, c.t);
    ASSERT_TRUE(ends) << ends.error().message();

    test::side up_sent, up_got, down_sent, down_got;
    loop.spawn(test::produce(&ends->client, upload, 11, std::size_t{256} << 10, true, &up_sent));
    loop.spawn(test::consume(&ends->client, 12, read_chunk, &down_got));
    loop.spawn(
        test::produce(&ends->server, download, 13, std::size_t{256} << 10, true, &down_sent));
    // The server does not read yet: a→b fills every buffer on the way and blocks.

    bidirectional_options o;
    o.path = c.path;
    o.pools = &pools;
    traffic t;
    bool done = false;
    loop.spawn(run_bidi(&ends->a, &ends->b, o, &t, &done));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return down_got.done; }, 20s)))
        << "b→a stalled behind the blocked a→b: got " << down_got << " of " << download.size();
    EXPECT_FALSE(up_sent.done) << "a→b was never blocked; the test proves nothing";
    EXPECT_EQ(down_got.bytes, download.size());
    EXPECT_EQ(down_got.sum, sum_of(download));
    EXPECT_FALSE(down_got.error) << down_got.error.message();

    // Now the server reads, and the upload completes too.
    loop.spawn(test::consume(&ends->server, 14, read_chunk, &up_got));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return done && up_sent.done && up_got.done && down_sent.done; }, 30s)))
        << "traffic " << describe(t) << " up sent " << up_sent << " got " << up_got;
    EXPECT_TRUE(t.ok()) << describe(t);
    EXPECT_EQ(t.a_to_b, upload.size());
    EXPECT_EQ(t.b_to_a, download.size());
    EXPECT_EQ(up_got.bytes, upload.size());
    EXPECT_EQ(up_got.sum, sum_of(upload));
}

INSTANTIATE_TEST_SUITE_P(
    cases, bidi_slow_reader_test,
    ::testing::Values(slow_case{transport::tcp, copy_path::automatic},
                      slow_case{transport::tcp, copy_path::splice},
                      slow_case{transport::tcp, copy_path::buffer},
                      slow_case{transport::unix_socketpair, copy_path::automatic},
                      slow_case{transport::unix_socketpair, copy_path::splice},
                      slow_case{transport::unix_socketpair, copy_path::buffer}),
    [](const ::testing::TestParamInfo<slow_case>& param_info) {
        return std::string(to_string(param_info.param.t)) + "_" + path_name(param_info.param.path);
    });

// ---- an error in one direction ends both ----

struct error_case {
    bool client_resets; // the client resets (a→b fails reading a); else the server (b→a)
    copy_path path;
};

class bidi_error_test : public test::transfer_pools_fixture,
                        public ::testing::WithParamInterface<error_case> {};

// Both directions move some bytes and go idle with neither side closed; then one peer
// resets. The copy ends (the healthy, idle direction too), names the failed direction
// and keeps both counts.
TEST_P(bidi_error_test, an_error_in_one_direction_ends_both_and_keeps_both_counts) {
    const error_case& c = GetParam();
    transfer_pools& pools = make_pools();
    const auto up = slice(0, (std::size_t{1} << 20) + 11);
    const auto down = slice(std::size_t{2} << 20, (std::size_t{512} << 10) + 7);
    event_loop loop;
    auto ends = make_proxy(loop, transport::tcp);
    ASSERT_TRUE(ends) << ends.error().message();

    test::side up_sent, up_got, down_sent, down_got;
    loop.spawn(test::produce(&ends->client, up, 21, std::size_t{64} << 10, false, &up_sent));
    loop.spawn(test::produce(&ends->server, down, 22, std::size_t{64} << 10, false, &down_sent));
    loop.spawn(test::consume(&ends->server, 23, read_chunk, &up_got, up.size()));
    loop.spawn(test::consume(&ends->client, 24, read_chunk, &down_got, down.size()));
    bidirectional_options o;
    o.path = c.path;
    o.pools = &pools;
    traffic t;
    bool done = false;
    loop.spawn(run_bidi(&ends->a, &ends->b, o, &t, &done));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return up_sent.done && down_sent.done && up_got.done && down_got.done; },
        20s)));
    EXPECT_EQ(up_got.sum, sum_of(up));
    EXPECT_EQ(down_got.sum, sum_of(down));
    loop.block_on(test::pause(&loop, 20ms));
    EXPECT_FALSE(done) << "the copy ended although nobody closed: " << describe(t);

    test::reset_connection(c.client_resets ? ends->client : ends->server);
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return done; }, 10s)))
        << "the healthy direction kept the copy alive";
    std::printf("[   INFO   ] %s resets: %s\n", c.client_resets ? "client" : "server",
                t.error.message().c_str());
    EXPECT_FALSE(t.ok());
    ASSERT_TRUE(t.failed);
    EXPECT_EQ(*t.failed, c.client_resets ? direction::a_to_b : direction::b_to_a);
    EXPECT_EQ(errno_of(t.error), ECONNRESET) << t.error.message();
    EXPECT_EQ(t.a_to_b, up.size());
    EXPECT_EQ(t.b_to_a, down.size());
}

INSTANTIATE_TEST_SUITE_P(
    cases, bidi_error_test,
    ::testing::Values(error_case{true, copy_path::automatic}, error_case{true, copy_path::splice},
                      error_case{true, copy_path::buffer}, error_case{false, copy_path::automatic},
                      error_case{false, copy_path::splice}, error_case{false, copy_path::buffer}),
    [](const ::testing::TestParamInfo<error_case>& param_info) {
        return std::string(param_info.param.client_resets ? "client_resets_" : "server_resets_") +
               path_name(param_info.param.path);
    });

// ---- both ends already closed ----

// Both peers half-closed before the copy started: both directions read end of stream
// at once (possibly before the copy first suspends), pass it on and end cleanly.
TEST_F(bidi_test, both_ends_at_end_of_stream_finish_at_once) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    auto ends = make_proxy(loop, transport::tcp);
    ASSERT_TRUE(ends) << ends.error().message();
    ASSERT_TRUE(ends->client.shutdown_write());
    ASSERT_TRUE(ends->server.shutdown_write());
    loop.block_on(test::pause(&loop, 10ms)); // let the FINs land
    test::side client_got, server_got;
    loop.spawn(test::consume(&ends->client, 71, read_chunk, &client_got));
    loop.spawn(test::consume(&ends->server, 72, read_chunk, &server_got));
    bidirectional_options o;
    o.pools = &pools;
    traffic t;
    bool done = false;
    loop.spawn(run_bidi(&ends->a, &ends->b, o, &t, &done));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return done && client_got.done && server_got.done; }, 5s)));
    EXPECT_TRUE(t.ok()) << describe(t);
    EXPECT_EQ(t.a_to_b, 0u);
    EXPECT_EQ(t.b_to_a, 0u);
    EXPECT_EQ(client_got.bytes, 0u);
    EXPECT_FALSE(client_got.error) << client_got.error.message();
    EXPECT_EQ(server_got.bytes, 0u);
    EXPECT_FALSE(server_got.error) << server_got.error.message();
}

// ---- idle timeout ----

TEST_F(bidi_test, idle_timeout_ends_a_copy_that_never_moved_a_byte) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    auto ends = make_proxy(loop, transport::tcp);
    ASSERT_TRUE(ends) << ends.error().message();
    bidirectional_options o;
    o.pools = &pools;
    o.idle_timeout = 100ms;
    traffic t;
    bool done = false;
    const auto start = clock::now();
    loop.spawn(run_bidi(&ends->a, &ends->b, o, &t, &done));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return done; }, 5s)));
    const auto took = clock::now() - start;
    EXPECT_EQ(t.error, std::errc::timed_out) << describe(t);
    EXPECT_FALSE(t.failed) << "a timeout is not a direction's failure";
    EXPECT_EQ(t.a_to_b, 0u);
    EXPECT_EQ(t.b_to_a, 0u);
    EXPECT_GE(took, 100ms);
    EXPECT_LT(took, 1s);
}

// Both peers close while the loop is not running, and the idle period runs out in the
// meantime: the loop sees both ends of stream and the expired timer in the same turn.
// The copy finished cleanly and must say so, not "timed out".
TEST_F(bidi_test, a_copy_that_ends_as_the_idle_timer_expires_is_not_a_timeout) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    auto ends = make_proxy(loop, transport::tcp);
    ASSERT_TRUE(ends) << ends.error().message();
    bidirectional_options o;
    o.pools = &pools;
    o.idle_timeout = 50ms;
    traffic t;
    bool done = false;
    loop.spawn(run_bidi(&ends->a, &ends->b, o, &t, &done));
    loop.block_on(test::pause(&loop, 10ms)); // both directions now wait for bytes
    ASSERT_FALSE(done);
    ASSERT_TRUE(ends->client.shutdown_write());
    ASSERT_TRUE(ends->server.shutdown_write());
    std::this_thread::sleep_for(80ms); // the loop does not run: the timer expires unseen
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return done; }, 5s)));
    EXPECT_TRUE(t.ok()) << describe(t);
    EXPECT_EQ(t.a_to_b, 0u);
    EXPECT_EQ(t.b_to_a, 0u);
}

// Small messages every 20 ms for ~400 ms, then silence: only the silence ends it.
task<void> trickle(event_loop* loop, stream* s, std::span<const std::byte> data, int messages,
                   test::side* out) {
    for (int i = 0; i < messages; ++i) {
        auto w = co_await s->write_all(data.subspan(static_cast<std::size_t>(i) * 100, 100));
        if (!w) {
            out->error = w.error();
            break;
        }
        out->bytes += *w;
        co_await sleep_for(*loop, 20ms);
    }
    out->done = true;
}

TEST_F(bidi_test, idle_timeout_counts_from_the_last_byte) {
    transfer_pools& pools = make_pools();
    const auto data = slice(0, 100 * 20);
    event_loop loop;
    auto ends = make_proxy(loop, transport::tcp);
    ASSERT_TRUE(ends) << ends.error().message();
    test::side sent, got;
    loop.spawn(trickle(&loop, &ends->client, data, 20, &sent));
    loop.spawn(test::consume(&ends->server, 31, read_chunk, &got));
    bidirectional_options o;
    o.pools = &pools;
    o.idle_timeout = 250ms; // messages come every 20 ms: a wide margin for a busy machine
    traffic t;
    bool done = false;
    const auto start = clock::now();
    loop.spawn(run_bidi(&ends->a, &ends->b, o, &t, &done));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return done; }, 5s)));
    const auto took = clock::now() - start;
    EXPECT_TRUE(sent.done) << "timed out while bytes were still moving";
    EXPECT_GE(took, 400ms);
    EXPECT_EQ(t.error, std::errc::timed_out) << describe(t);
    EXPECT_EQ(t.a_to_b, data.size());
    EXPECT_EQ(t.b_to_a, 0u);
    // The server never sees end of stream (a timeout is not a half-close): close it.
    ends->server.close();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return got.done; }, 5s)));
    EXPECT_EQ(got.bytes, data.size());
    EXPECT_EQ(got.sum, sum_of(data));
}

// A direction stuck behind a reader that never reads is idle too. The timeout cancels
// it while its pipe (or buffer) still holds bytes: the pipe is closed, not pooled.
TEST_F(bidi_test, idle_timeout_ends_a_stalled_copy_and_discards_its_full_pipe) {
    transfer_pools& pools = make_pools();
    const auto upload = slice(0, std::size_t{32} << 20);
    event_loop loop;
    auto ends = make_proxy(loop, transport::tcp);
    ASSERT_TRUE(ends) << ends.error().message();
    test::side sent;
    loop.spawn(test::produce(&ends->client, upload, 41, std::size_t{256} << 10, true, &sent));
    bidirectional_options o;
    o.pools = &pools;
    o.path = copy_path::splice;
    o.idle_timeout = 200ms;
    traffic t;
    bool done = false;
    loop.spawn(run_bidi(&ends->a, &ends->b, o, &t, &done));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return done; }, 10s)));
    EXPECT_EQ(t.error, std::errc::timed_out) << describe(t);
    EXPECT_GT(t.a_to_b, 0u);
    EXPECT_LT(t.a_to_b, upload.size());
    EXPECT_EQ(pools.pipes.stats().leased, 0u);
    EXPECT_GE(pools.pipes.stats().discarded, 1u) << "a pipe holding bytes went back to the pool";
    ends->client.close(); // frees the blocked producer
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return sent.done; }, 5s)));
}

// ---- rate limit ----

class bidi_rate_test : public test::transfer_pools_fixture,
                       public ::testing::WithParamInterface<copy_path> {};

// User + system CPU seconds this process used so far.
double cpu_seconds() {
    ::rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// A sample of a progress counter and when it was actually taken: on a loaded machine
// (CI runs TSan tests two at a time) the timer fires late, and the rate must be computed
// over the time that really passed, not the time asked for.
struct sample {
    std::uint64_t bytes = 0;
    clock::time_point at{};
};

task<void> sample_at(event_loop* loop, clock::time_point when, const std::uint64_t* counter,
                     sample* out) {
    co_await sleep_until(*loop, when);
    *out = {*counter, clock::now()};
}

double per_second(const sample& from, const sample& to) {
    const std::chrono::duration<double> took = to.at - from.at;
    return static_cast<double>(to.bytes - from.bytes) / took.count();
}

// Each direction is held to the rate (loosely: ±20% over about one second, after the
// first half second has used up the initial burst).
TEST_P(bidi_rate_test, each_direction_moves_about_the_rate) {
    const copy_path path = GetParam();
    transfer_pools& pools = make_pools();
    // Low enough that checking what arrived costs little CPU even under TSan (at 4 MiB/s
    // it took 0.6 s of the 0.8 allowed there), high enough for many quanta per second.
    constexpr std::uint64_t rate = std::uint64_t{1} << 20;
    const auto up = slice(0, std::size_t{16} << 20);
    const auto down = slice(std::size_t{20} << 20, std::size_t{16} << 20);
    event_loop loop;
    auto ends = make_proxy(loop, transport::tcp);
    ASSERT_TRUE(ends) << ends.error().message();
    test::side up_sent, up_got, down_sent, down_got;
    loop.spawn(test::produce(&ends->client, up, 51, std::size_t{64} << 10, true, &up_sent));
    loop.spawn(test::produce(&ends->server, down, 52, std::size_t{64} << 10, true, &down_sent));
    loop.spawn(test::consume(&ends->server, 53, read_chunk, &up_got));
    loop.spawn(test::consume(&ends->client, 54, read_chunk, &down_got));

    std::uint64_t up_progress = 0;
    std::uint64_t down_progress = 0;
    bidirectional_options o;
    o.pools = &pools;
    o.path = path;
    o.rate_limit = rate;
    o.a_to_b_progress = &up_progress;
    o.b_to_a_progress = &down_progress;
    cancel_source cancel;
    bool cancelled = false;
    bool done = false;
    const auto start = clock::now();
    sample up0, up1, down0, down1;
    loop.spawn(sample_at(&loop, start + 500ms, &up_progress, &up0));
    loop.spawn(sample_at(&loop, start + 500ms, &down_progress, &down0));
    loop.spawn(sample_at(&loop, start + 1500ms, &up_progress, &up1));
    loop.spawn(sample_at(&loop, start + 1500ms, &down_progress, &down1));
    const double cpu_before = cpu_seconds();
    loop.spawn(run_bidi_cancellable(&loop, &ends->a, &ends->b, o, &cancel, &cancelled, &done));
    loop.block_on(test::pause(&loop, 1600ms));
    // A copy that spun while waiting for its quantum would burn the whole 1.6 s; one
    // that sleeps uses a little. CPU time, unlike wall-clock ticks, does not depend on
    // how busy the machine is.
    const double cpu = cpu_seconds() - cpu_before;
    cancel.cancel();
    EXPECT_LT(cpu, 0.8) << "the rate-limited copy spun instead of sleeping";
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return done; }, 5s)));
    EXPECT_TRUE(cancelled);

    const double lo = 0.8 * static_cast<double>(rate);
    const double hi = 1.2 * static_cast<double>(rate);
    const double up_rate = per_second(up0, up1);
    const double down_rate = per_second(down0, down1);
    std::printf("[   INFO   ] %s: a→b %.2f MiB/s, b→a %.2f MiB/s (limit %.2f), %.2f s CPU\n",
                path_name(path), up_rate / (1 << 20), down_rate / (1 << 20),
                static_cast<double>(rate) / (1 << 20), cpu);
    EXPECT_GE(up_rate, lo);
    EXPECT_LE(up_rate, hi);
    EXPECT_GE(down_rate, lo);
    EXPECT_LE(down_rate, hi);
    // What moved arrived intact (a prefix: the cancel cut the rest off).
    ends->client.close();
    ends->server.close();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return up_sent.done && down_sent.done && up_got.done && down_got.done; },
        5s)));
    EXPECT_EQ(up_got.sum, sum_of(up.first(up_got.bytes)));
    EXPECT_EQ(down_got.sum, sum_of(down.first(down_got.bytes)));
    EXPECT_LE(up_got.bytes, up_progress);
    EXPECT_LE(down_got.bytes, down_progress);
}

INSTANTIATE_TEST_SUITE_P(paths, bidi_rate_test,
                         ::testing::Values(copy_path::automatic, copy_path::splice,
                                           copy_path::buffer),
                         [](const ::testing::TestParamInfo<copy_path>& param_info) {
                             return std::string(path_name(param_info.param));
                         });

// ---- memory follows data: thousands of idle proxies hold nothing ----

// The full count runs under ASan+UBSan too (about 13 s there, 10 s in Debug). Under
// TSan it took 78 s of the test's 300 s in CI (two tests at a time on two cores): a
// quarter of the proxies still need 2,000 connections, far more than the pools hold.
#if defined(__SANITIZE_THREAD__)
constexpr std::size_t proxies = 1000;
#else
constexpr std::size_t proxies = 4000;
#endif
constexpr std::size_t bytes_each_way = std::size_t{1} << 20;

// Reads exactly `n` bytes through the readers' own buffer pool and compares them with
// `expect` as they arrive (byte for byte: a cheaper and stricter check than a checksum
// at 8 GiB in total), counting a mismatch as an error.
task<void> read_and_compare(stream* s, buffer_pool* pool, std::span<const std::byte> expect,
                            test::side* out) {
    bool same = true;
    while (out->bytes < expect.size()) {
        const std::size_t at = out->bytes;
        auto n = co_await pooled_read_with(
            *s, *pool, expect.size() - at, [&same, expect, at](std::span<const std::byte> got) {
                same = same && std::memcmp(got.data(), expect.data() + at, got.size()) == 0;
            });
        if (!n) {
            out->error = n.error();
            break;
        }
        if (*n == 0) {
            out->error = std::make_error_code(std::errc::connection_aborted);
            break;
        }
        out->bytes += *n;
    }
    if (!same) {
        out->error = std::make_error_code(std::errc::illegal_byte_sequence);
    }
    out->done = true;
}

TEST_F(bidi_test, thousands_of_idle_proxies_hold_no_pipe_and_no_buffer) {
    // 4 descriptors per proxy, plus the pipes the pool may lend at once.
    constexpr std::size_t pipe_cap = 512;
    const rlim_t need = proxies * 4 + pipe_cap * 2 + 64;
    ::rlimit lim{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
    if (lim.rlim_cur < need && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lim), 0);
    }
    if (lim.rlim_cur < need) {
        GTEST_SKIP() << "needs " << need << " descriptors; RLIMIT_NOFILE allows " << lim.rlim_cur;
    }

    pipe_pool_options po;
    po.max_total = pipe_cap; // past it a direction takes the buffer path
    po.pipe_size = std::size_t{256} << 10;
    transfer_pools& pools = make_pools(std::move(po));
    const std::size_t max_idle_pipes = pools.pipes.config().max_idle;
    const std::size_t max_idle_buffers = pools.buffers.config().max_idle;
    buffer_pool reader_pool; // the test's readers borrow here, not from the copies' pool
    event_loop loop;

    struct proxy {
        stream client, a, b, server;
        traffic t;
        bool done = false;
        test::side up_sent, up_got, down_sent, down_got;
    };
    std::vector<std::unique_ptr<proxy>> ps;
    ps.reserve(proxies);
    for (std::size_t i = 0; i < proxies; ++i) {
        auto ends = make_proxy(loop, transport::unix_socketpair);
        ASSERT_TRUE(ends) << "proxy " << i << ": " << ends.error().message();
        auto p = std::make_unique<proxy>();
        p->client = std::move(ends->client);
        p->a = std::move(ends->a);
        p->b = std::move(ends->b);
        p->server = std::move(ends->server);
        ps.push_back(std::move(p));
    }
    bidirectional_options o;
    o.pools = &pools;
    for (auto& p : ps) {
        loop.spawn(run_bidi(&p->a, &p->b, o, &p->t, &p->done));
    }
    loop.block_on(test::pause(&loop, 200ms));

    // Idle: every copy waits for readiness holding nothing.
    EXPECT_EQ(pools.pipes.stats().leased, 0u);
    EXPECT_EQ(pools.buffers.stats().leased, 0u);
    EXPECT_EQ(pools.pipes.stats().created, 0u) << "idle copies made pipes";
    EXPECT_LE(pools.buffers.stats().created, max_idle_buffers) << "idle copies made buffers";
    EXPECT_EQ(std::count_if(ps.begin(), ps.end(), [](const auto& p) { return p->done; }), 0);

    // Each moves 1 MiB each way (slices at different offsets, so bytes that reached the
    // wrong proxy would not compare equal), without closing anything.
    const auto start = clock::now();
    for (std::size_t i = 0; i < proxies; ++i) {
        proxy& p = *ps[i];
        const std::size_t up_at = (i * 7919) % (data_size - bytes_each_way);
        const std::size_t down_at = (i * 104729 + 4099) % (data_size - bytes_each_way);
        loop.spawn(test::produce(&p.client, slice(up_at, bytes_each_way), 1000 + i,
                                 std::size_t{64} << 10, false, &p.up_sent));
        loop.spawn(test::produce(&p.server, slice(down_at, bytes_each_way), 9000 + i,
                                 std::size_t{64} << 10, false, &p.down_sent));
        loop.spawn(
            read_and_compare(&p.server, &reader_pool, slice(up_at, bytes_each_way), &p.up_got));
        loop.spawn(
            read_and_compare(&p.client, &reader_pool, slice(down_at, bytes_each_way), &p.down_got));
    }
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop,
        [&] {
            return std::all_of(ps.begin(), ps.end(), [](const auto& p) {
                return p->up_sent.done && p->down_sent.done && p->up_got.done && p->down_got.done;
            });
        },
        240s)));
    const auto moved_in =
        std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start);
    std::size_t bad = 0;
    for (std::size_t i = 0; i < proxies; ++i) {
        const proxy& p = *ps[i];
        if (p.up_sent.error || p.down_sent.error || p.up_got.error || p.down_got.error ||
            p.up_got.bytes != bytes_each_way || p.down_got.bytes != bytes_each_way) {
            if (++bad <= 5) {
                ADD_FAILURE() << "proxy " << i << ": up sent " << p.up_sent << " got " << p.up_got
                              << "; down sent " << p.down_sent << " got " << p.down_got;
            }
        }
    }
    EXPECT_EQ(bad, 0u);
    loop.block_on(test::pause(&loop, 100ms));
    const auto busy_pipes = pools.pipes.stats();
    const auto busy_buffers = pools.buffers.stats();
    std::printf("[   INFO   ] %zu proxies moved %zu MiB each way in %lld ms; pipes created %llu "
                "(refused %llu), buffers created %llu\n",
                proxies, bytes_each_way >> 20, static_cast<long long>(moved_in.count()),
                static_cast<unsigned long long>(busy_pipes.created),
                static_cast<unsigned long long>(busy_pipes.refused),
                static_cast<unsigned long long>(busy_buffers.created));

    // Idle again, all still open: leases are back, idle pipes and buffers within bounds.
    EXPECT_EQ(busy_pipes.leased, 0u);
    EXPECT_EQ(busy_buffers.leased, 0u);
    EXPECT_LE(busy_pipes.idle, max_idle_pipes);
    EXPECT_LE(busy_buffers.idle, max_idle_buffers);
    EXPECT_EQ(std::count_if(ps.begin(), ps.end(), [](const auto& p) { return p->done; }), 0);

    // Half-close both ways: every copy ends cleanly with 1 MiB counted each way.
    for (auto& p : ps) {
        EXPECT_TRUE(p->client.shutdown_write());
        EXPECT_TRUE(p->server.shutdown_write());
    }
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop,
        [&] { return std::all_of(ps.begin(), ps.end(), [](const auto& p) { return p->done; }); },
        60s)));
    bad = 0;
    for (std::size_t i = 0; i < proxies; ++i) {
        const proxy& p = *ps[i];
        if (!p.t.ok() || p.t.a_to_b != bytes_each_way || p.t.b_to_a != bytes_each_way) {
            if (++bad <= 5) {
                ADD_FAILURE() << "proxy " << i << ": " << describe(p.t);
            }
        }
    }
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(pools.pipes.stats().leased, 0u);
    EXPECT_EQ(pools.buffers.stats().leased, 0u);
    EXPECT_LE(pools.pipes.stats().idle, max_idle_pipes);
    EXPECT_LE(pools.buffers.stats().idle, max_idle_buffers);
}

// ---- no pipe to be had ----

enum class no_pipe { pool_of_size_0, pipe_creation_fails };

class bidi_no_pipe_test : public test::transfer_pools_fixture,
                          public ::testing::WithParamInterface<std::tuple<no_pipe, copy_path>> {};

TEST_P(bidi_no_pipe_test, moves_every_byte_through_buffers) {
    const auto& [why, path] = GetParam();
    pipe_pool_options po;
    if (why == no_pipe::pool_of_size_0) {
        po.max_total = 0;
    } else {
        po.make_pipe = []() -> result<sys::pipe_pair> { return fail_op("pipe2", EMFILE); };
    }
    transfer_pools& pools = make_pools(std::move(po));
    const auto up = slice(0, (std::size_t{8} << 20) + 1);
    const auto down = slice(std::size_t{10} << 20, (std::size_t{8} << 20) + 2);
    event_loop loop;
    auto ends = make_proxy(loop, transport::tcp);
    ASSERT_TRUE(ends) << ends.error().message();
    test::side up_sent, up_got, down_sent, down_got;
    loop.spawn(test::produce(&ends->client, up, 61, std::size_t{256} << 10, true, &up_sent));
    loop.spawn(test::produce(&ends->server, down, 62, std::size_t{256} << 10, true, &down_sent));
    loop.spawn(test::consume(&ends->server, 63, read_chunk, &up_got));
    loop.spawn(test::consume(&ends->client, 64, read_chunk, &down_got));
    bidirectional_options o;
    o.pools = &pools;
    o.path = path;
    traffic t;
    bool done = false;
    loop.spawn(run_bidi(&ends->a, &ends->b, o, &t, &done));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop,
        [&] { return done && up_sent.done && down_sent.done && up_got.done && down_got.done; },
        30s)))
        << describe(t);
    EXPECT_TRUE(t.ok()) << describe(t);
    EXPECT_EQ(t.a_to_b, up.size());
    EXPECT_EQ(t.b_to_a, down.size());
    EXPECT_EQ(t.a_to_b_path, copy_path::buffer);
    EXPECT_EQ(t.b_to_a_path, copy_path::buffer);
    EXPECT_EQ(up_got.sum, sum_of(up));
    EXPECT_EQ(down_got.sum, sum_of(down));
    EXPECT_EQ(pools.pipes.stats().created, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    pools, bidi_no_pipe_test,
    ::testing::Combine(::testing::Values(no_pipe::pool_of_size_0, no_pipe::pipe_creation_fails),
                       ::testing::Values(copy_path::automatic, copy_path::splice)),
    [](const ::testing::TestParamInfo<std::tuple<no_pipe, copy_path>>& param_info) {
        return std::string(std::get<0>(param_info.param) == no_pipe::pool_of_size_0
                               ? "pool_of_size_0_"
                               : "pipe_creation_fails_") +
               path_name(std::get<1>(param_info.param));
    });

TEST(direction_names, both_directions_have_names) {
    EXPECT_STREQ(to_string(direction::a_to_b), "a→b");
    EXPECT_STREQ(to_string(direction::b_to_a), "b→a");
}

} // namespace
} // namespace zcio
