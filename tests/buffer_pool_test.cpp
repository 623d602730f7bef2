// Tests for buffer_pool and the pooled reads: reuse, bounds, failures, and that a
// waiting read or copy holds no buffer while bytes still arrive intact.
#include <zcio/buffer_pool.hpp>
#include <zcio/copy.hpp>

#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/stream.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>
#include <zcio/timeout.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include <sys/socket.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;

class buffer_pool_test : public test::fd_leak_check {};

void expect_counters_add_up(const buffer_pool& pool) {
    auto s = pool.stats();
    EXPECT_EQ(s.created, s.leased + s.idle + s.discarded)
        << "created " << s.created << " leased " << s.leased << " idle " << s.idle << " discarded "
        << s.discarded;
}

buffer_lease must_lease(buffer_pool& pool) {
    auto l = pool.lease();
    EXPECT_TRUE(l.has_value()) << (l ? "" : l.error().message());
    return l ? std::move(*l) : buffer_lease{};
}

// ---- the pool ----

TEST_F(buffer_pool_test, a_returned_buffer_is_lent_again) {
    buffer_pool pool(buffer_pool::options{.buffer_size = 4096});
    std::byte* first = nullptr;
    {
        auto l = must_lease(pool);
        ASSERT_EQ(l.data().size(), 4096u);
        EXPECT_EQ(l.size(), 4096u);
        first = l.data().data();
        std::fill(l.data().begin(), l.data().end(), std::byte{0x5a}); // writable, all of it
        EXPECT_EQ(pool.stats().leased, 1u);
    }
    EXPECT_EQ(pool.stats().idle, 1u);
    auto again = must_lease(pool);
    EXPECT_EQ(again.data().data(), first);
    EXPECT_EQ(pool.stats().created, 1u);
    expect_counters_add_up(pool);
}

TEST_F(buffer_pool_test, max_idle_bounds_the_idle_buffers_and_frees_the_rest) {
    buffer_pool pool(buffer_pool::options{.buffer_size = 1024, .max_idle = 2});
    {
        std::vector<buffer_lease> leases;
        for (int i = 0; i < 5; ++i) {
            leases.push_back(must_lease(pool));
        }
        EXPECT_EQ(pool.stats().leased, 5u);
    }
    auto s = pool.stats();
    EXPECT_EQ(s.created, 5u);
    EXPECT_EQ(s.idle, 2u);
    EXPECT_EQ(s.discarded, 3u);
    expect_counters_add_up(pool);
    pool.clear_idle();
    EXPECT_EQ(pool.stats().idle, 0u);
    expect_counters_add_up(pool);
}

TEST_F(buffer_pool_test, a_moved_lease_returns_once) {
    buffer_pool pool(buffer_pool::options{.buffer_size = 64});
    auto a = must_lease(pool);
    std::byte* p = a.data().data();
    buffer_lease b(std::move(a));
    EXPECT_FALSE(a.valid()); // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_TRUE(a.data().empty());
    EXPECT_EQ(b.data().data(), p);
    a.reset();
    EXPECT_EQ(pool.stats().leased, 1u);
    buffer_lease c = must_lease(pool);
    c = std::move(b);
    EXPECT_EQ(c.data().data(), p);
    EXPECT_EQ(pool.stats().leased, 1u);
    EXPECT_EQ(pool.stats().idle, 1u);
    c.reset();
    EXPECT_EQ(pool.stats().leased, 0u);
    EXPECT_EQ(pool.stats().idle, 2u);
    expect_counters_add_up(pool);
}

TEST_F(buffer_pool_test, a_failing_allocation_fails_the_lease_and_is_counted) {
    buffer_pool pool(
        buffer_pool::options{.allocate = [](std::size_t) -> result<std::unique_ptr<std::byte[]>> {
            return fail(ENOMEM);
        }});
    auto l = pool.lease();
    ASSERT_FALSE(l.has_value());
    EXPECT_EQ(l.error(), std::errc::not_enough_memory);
    EXPECT_EQ(pool.stats().create_failures, 1u);
    EXPECT_EQ(pool.stats().created, 0u);
    EXPECT_EQ(pool.stats().leased, 0u);
}

TEST_F(buffer_pool_test, max_total_zero_hands_out_nothing) {
    buffer_pool pool(buffer_pool::options{.max_total = 0});
    auto l = pool.lease();
    ASSERT_FALSE(l.has_value());
    EXPECT_EQ(l.error(), std::errc::no_buffer_space);
    EXPECT_EQ(pool.stats().refused, 1u);
    EXPECT_EQ(pool.stats().created, 0u);
}

TEST_F(buffer_pool_test, max_total_caps_leased_plus_idle) {
    buffer_pool pool(buffer_pool::options{.buffer_size = 16, .max_total = 2});
    auto a = must_lease(pool);
    auto b = must_lease(pool);
    EXPECT_FALSE(pool.lease().has_value());
    a.reset();
    auto c = must_lease(pool);
    EXPECT_EQ(pool.stats().created, 2u);
    EXPECT_EQ(pool.stats().refused, 1u);
    expect_counters_add_up(pool);
}

#ifndef NDEBUG
class buffer_pool_death_test : public test::fd_leak_check {};

TEST_F(buffer_pool_death_test, destroying_a_pool_with_leases_out_asserts) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            auto* pool = new buffer_pool;
            auto l = pool->lease();
            delete pool;
        },
        "destroyed while buffers are leased");
}
#endif

// ---- pooled reads over real sockets ----

struct stream_pair {
    stream a;
    stream b;
};

stream_pair make_socketpair(event_loop& loop) {
    auto fds = sys::socketpair(AF_UNIX, SOCK_STREAM);
    EXPECT_TRUE(fds.has_value());
    auto a = stream::adopt(loop, std::move(fds->first));
    auto b = stream::adopt(loop, std::move(fds->second));
    EXPECT_TRUE(a.has_value() && b.has_value());
    return {std::move(*a), std::move(*b)};
}

// Writes `data` in random chunk sizes, then shuts down writing.
task<void> write_chunks(stream* s, std::span<const std::byte> data, std::uint64_t seed,
                        bool* done) {
    std::mt19937_64 rng(seed);
    std::size_t off = 0;
    while (off < data.size()) {
        std::size_t n = std::min<std::size_t>(data.size() - off, 1 + rng() % 100'000);
        auto w = co_await s->write_all(data.subspan(off, n));
        EXPECT_TRUE(w.has_value()) << w.error().message();
        if (!w) {
            break;
        }
        off += n;
    }
    EXPECT_TRUE(s->shutdown_write().has_value());
    *done = true;
}

// Reads to end of stream with ordinary reads, checksumming what arrives.
task<void> read_to_end(stream* s, test::checksum* sum, std::uint64_t* total, bool* done) {
    std::vector<std::byte> buf(64 * 1024);
    for (;;) {
        auto n = co_await s->read_some(buf);
        EXPECT_TRUE(n.has_value()) << n.error().message();
        if (!n || *n == 0) {
            break;
        }
        sum->update(std::span(buf).first(*n));
        *total += *n;
    }
    *done = true;
}

task<void> until(event_loop& loop, const bool* flag) {
    while (!*flag) {
        co_await sleep_for(loop, 1ms);
    }
}

TEST_F(buffer_pool_test, pooled_read_returns_every_byte_and_then_eof) {
    event_loop loop;
    buffer_pool pool(buffer_pool::options{.buffer_size = 16 * 1024});
    auto [a, b] = make_socketpair(loop);
    const auto data = test::random_bytes(3 * 1024 * 1024 + 17, 11);
    bool written = false;

    auto reader = [](event_loop* l, stream* s, buffer_pool* p, test::checksum* sum,
                     std::uint64_t* total, const bool* writer_done) -> task<void> {
        std::mt19937_64 rng(5);
        for (;;) {
            auto got = co_await pooled_read(*s, *p, 1 + rng() % 40'000);
            EXPECT_TRUE(got.has_value()) << got.error().message();
            // Between reads nothing is borrowed.
            EXPECT_EQ(p->stats().leased, 0u);
            if (!got || got->empty()) {
                break;
            }
            EXPECT_LE(got->size(), p->buffer_size());
            sum->update(*got);
            *total += got->size();
        }
        co_await until(*l, writer_done);
    };
    test::checksum sum;
    std::uint64_t total = 0;
    loop.spawn(write_chunks(&b, data, 12, &written));
    loop.block_on(reader(&loop, &a, &pool, &sum, &total, &written));
    EXPECT_EQ(total, data.size());
    EXPECT_EQ(sum.value(), test::checksum_of(data));
    EXPECT_EQ(pool.stats().leased, 0u);
    EXPECT_LE(pool.stats().created, 1u) << "one reader never needs two buffers";
    expect_counters_add_up(pool);
}

TEST_F(buffer_pool_test, a_waiting_pooled_read_holds_no_buffer) {
    event_loop loop;
    buffer_pool pool(buffer_pool::options{.buffer_size = 4096});
    auto [a, b] = make_socketpair(loop);
    const auto data = test::random_bytes(1000, 21);
    std::optional<result<std::vector<std::byte>>> got;
    bool finished = false;

    auto wait_read = [](stream* s, buffer_pool* p,
                        std::optional<result<std::vector<std::byte>>>* out,
                        bool* done) -> task<void> {
        out->emplace(co_await pooled_read(*s, *p, 4096));
        *done = true;
    };
    auto driver = [](event_loop* l, buffer_pool* p, stream* writer,
                     std::span<const std::byte> bytes, const bool* done) -> task<void> {
        co_await sleep_for(*l, 20ms);
        EXPECT_FALSE(*done) << "nothing was written yet";
        auto s = p->stats();
        EXPECT_EQ(s.leased, 0u) << "a read waiting for data must not hold a buffer";
        EXPECT_EQ(s.idle, s.created);
        auto w = co_await writer->write_all(bytes);
        EXPECT_TRUE(w.has_value());
        co_await until(*l, done);
    };
    loop.spawn(wait_read(&a, &pool, &got, &finished));
    loop.block_on(driver(&loop, &pool, &b, data, &finished));
    ASSERT_TRUE(got.has_value());
    ASSERT_TRUE(got->has_value()) << got->error().message();
    EXPECT_EQ(**got, data);
    EXPECT_EQ(pool.stats().leased, 0u);
}

TEST_F(buffer_pool_test, closing_the_stream_cancels_a_waiting_pooled_read) {
    event_loop loop;
    buffer_pool pool;
    auto [a, b] = make_socketpair(loop);
    std::optional<result<std::vector<std::byte>>> got;
    bool finished = false;

    auto wait_read = [](stream* s, buffer_pool* p,
                        std::optional<result<std::vector<std::byte>>>* out,
                        bool* done) -> task<void> {
        out->emplace(co_await pooled_read(*s, *p, 100));
        *done = true;
    };
    auto driver = [](event_loop* l, stream* s, const bool* done) -> task<void> {
        co_await sleep_for(*l, 5ms);
        s->close();
        co_await until(*l, done);
    };
    loop.spawn(wait_read(&a, &pool, &got, &finished));
    loop.block_on(driver(&loop, &a, &finished));
    ASSERT_TRUE(got.has_value());
    ASSERT_FALSE(got->has_value());
    EXPECT_EQ(got->error(), std::errc::operation_canceled);
    EXPECT_EQ(pool.stats().leased, 0u);
}

TEST_F(buffer_pool_test, pooled_read_rejects_max_zero_and_a_closed_stream) {
    event_loop loop;
    buffer_pool pool;
    auto [a, b] = make_socketpair(loop);
    auto zero = loop.block_on(pooled_read(a, pool, 0));
    ASSERT_FALSE(zero.has_value());
    EXPECT_EQ(zero.error(), std::errc::invalid_argument);
    a.close();
    auto closed = loop.block_on(pooled_read(a, pool, 10));
    ASSERT_FALSE(closed.has_value());
    EXPECT_EQ(closed.error(), std::errc::bad_file_descriptor);
}

TEST_F(buffer_pool_test, pooled_read_fails_when_the_pool_refuses) {
    event_loop loop;
    buffer_pool pool(buffer_pool::options{.max_total = 0});
    auto [a, b] = make_socketpair(loop);
    auto got = loop.block_on(pooled_read(a, pool, 10));
    ASSERT_FALSE(got.has_value());
    EXPECT_EQ(got.error(), std::errc::no_buffer_space);
}

TEST_F(buffer_pool_test, pooled_read_with_lends_the_bytes_without_copying) {
    event_loop loop;
    buffer_pool pool(buffer_pool::options{.buffer_size = 8192});
    auto [a, b] = make_socketpair(loop);
    const auto data = test::random_bytes(2 * 1024 * 1024 + 3, 31);
    bool written = false;

    auto reader = [](event_loop* l, stream* s, buffer_pool* p, test::checksum* sum,
                     std::uint64_t* total, const bool* writer_done) -> task<void> {
        std::mt19937_64 rng(6);
        const std::byte* pool_buffer = nullptr;
        int calls_at_eof = -1;
        int calls = 0;
        for (;;) {
            std::size_t max = 1 + rng() % 20'000;
            auto n = co_await pooled_read_with(*s, *p, max, [&](std::span<const std::byte> bytes) {
                ++calls;
                // The span points into the pool's (one) buffer, not into a copy.
                if (pool_buffer == nullptr) {
                    pool_buffer = bytes.data();
                }
                EXPECT_EQ(bytes.data(), pool_buffer);
                EXPECT_LE(bytes.size(), max);
                EXPECT_EQ(p->stats().leased, 1u);
                sum->update(bytes);
            });
            EXPECT_TRUE(n.has_value()) << n.error().message();
            EXPECT_EQ(p->stats().leased, 0u);
            if (!n || *n == 0) {
                calls_at_eof = calls;
                break;
            }
            *total += *n;
        }
        EXPECT_GT(calls_at_eof, 0);
        co_await until(*l, writer_done);
    };
    test::checksum sum;
    std::uint64_t total = 0;
    loop.spawn(write_chunks(&b, data, 32, &written));
    loop.block_on(reader(&loop, &a, &pool, &sum, &total, &written));
    EXPECT_EQ(total, data.size());
    EXPECT_EQ(sum.value(), test::checksum_of(data));
    EXPECT_EQ(pool.stats().created, 1u);
    EXPECT_EQ(pool.stats().leased, 0u);
}

// The pooled copy is copy() on the buffer path (pooled_copy() was a second loop).
transfer_pools pools_with_buffers(std::size_t size) {
    return {pipe_pool(pipe_pool_options{}), buffer_pool(buffer_pool::options{.buffer_size = size})};
}

// 8 MiB of random data, src pair → pooled copy → dst pair, checksummed at the far end.
TEST_F(buffer_pool_test, pooled_copy_moves_8_mib_intact_and_returns_its_buffer) {
    event_loop loop;
    transfer_pools pools = pools_with_buffers(32 * 1024);
    buffer_pool& pool = pools.buffers;
    auto [src_in, src_out] = make_socketpair(loop);
    auto [dst_in, dst_out] = make_socketpair(loop);
    const auto data = test::random_bytes(8 * 1024 * 1024, 41);
    bool written = false;
    bool read_done = false;
    test::checksum sum;
    std::uint64_t received = 0;
    std::uint64_t progress = 0;

    auto driver = [](event_loop* l, stream* from, stream* to, transfer_pools* p,
                     std::uint64_t* prog, const bool* w_done,
                     const bool* r_done) -> task<copy_result> {
        auto copied =
            co_await copy(*to, *from, {.path = copy_path::buffer, .progress = prog, .pools = p});
        EXPECT_EQ(p->buffers.stats().leased, 0u);
        EXPECT_TRUE(to->shutdown_write().has_value());
        co_await until(*l, w_done);
        co_await until(*l, r_done);
        co_return copied;
    };
    loop.spawn(write_chunks(&src_in, data, 42, &written));
    loop.spawn(read_to_end(&dst_out, &sum, &received, &read_done));
    auto copied =
        loop.block_on(driver(&loop, &src_out, &dst_in, &pools, &progress, &written, &read_done));
    ASSERT_TRUE(copied.ok()) << copied.error.message();
    EXPECT_EQ(copied.bytes, data.size());
    EXPECT_EQ(progress, data.size());
    EXPECT_EQ(received, data.size());
    EXPECT_EQ(sum.value(), test::checksum_of(data));
    auto s = pool.stats();
    EXPECT_EQ(s.leased, 0u);
    EXPECT_EQ(s.created, 1u) << "one copy never needs two buffers";
    expect_counters_add_up(pool);
}

TEST_F(buffer_pool_test, pooled_copy_stops_at_its_limit) {
    event_loop loop;
    transfer_pools pools = pools_with_buffers(1000);
    buffer_pool& pool = pools.buffers;
    auto [src_in, src_out] = make_socketpair(loop);
    auto [dst_in, dst_out] = make_socketpair(loop);
    const auto data = test::random_bytes(10'000, 51);
    ASSERT_EQ(sys::write(src_in.fd(), data.data(), data.size()).value_or(0), data.size());

    for (std::uint64_t limit : {0u, 1u, 999u, 1000u, 2500u}) {
        SCOPED_TRACE(limit);
        auto copied = loop.block_on(
            copy(dst_in, src_out, {.limit = limit, .path = copy_path::buffer, .pools = &pools}));
        ASSERT_TRUE(copied.ok()) << copied.error.message();
        EXPECT_EQ(copied.bytes, limit);
    }
    // What arrived is exactly the first 4500 bytes, in order.
    std::vector<std::byte> got(10'000);
    auto n = sys::read(dst_out.fd(), got.data(), got.size());
    ASSERT_TRUE(n.has_value());
    ASSERT_EQ(*n, 4500u);
    got.resize(*n);
    EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin()));
    EXPECT_EQ(pool.stats().leased, 0u);
}

// A copy blocked writing to a full destination holds its buffer (the bytes are in
// flight); cancelling it gives the buffer back and `progress` tells what moved.
TEST_F(buffer_pool_test, cancelling_a_blocked_pooled_copy_returns_its_buffer) {
    event_loop loop;
    transfer_pools pools = pools_with_buffers(64 * 1024);
    buffer_pool& pool = pools.buffers;
    auto [src_in, src_out] = make_socketpair(loop);
    auto [dst_in, dst_out] = make_socketpair(loop);
    const auto data = test::random_bytes(4 * 1024 * 1024, 61);
    bool written = false;
    std::uint64_t progress = 0;

    auto driver = [](event_loop* l, stream* from, stream* to, transfer_pools* p,
                     std::uint64_t* prog) -> task<result<copy_result>> {
        auto r = co_await with_timeout(
            *l, copy(*to, *from, {.path = copy_path::buffer, .progress = prog, .pools = p}), 100ms);
        EXPECT_EQ(p->buffers.stats().leased, 0u);
        co_return r;
    };
    loop.spawn(write_chunks(&src_in, data, 62, &written));
    auto r = loop.block_on(driver(&loop, &src_out, &dst_in, &pools, &progress));
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error(), std::errc::timed_out);
    EXPECT_GT(progress, 0u);
    EXPECT_LT(progress, data.size());
    EXPECT_EQ(pool.stats().leased, 0u);
    // Nobody reads dst_out, so the writer is still blocked; its frame is destroyed with
    // the loop at the end of the test.
    EXPECT_EQ(sys::bytes_readable(dst_out.fd()).value_or(0), progress);
}

} // namespace
} // namespace zcio
