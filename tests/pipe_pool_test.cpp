// Tests for pipe_pool: reuse, the idle bound, dirty pipes never returned, sizing,
// creation failures and the max_total cap, with counters that always add up.
#include <zcio/pipe_pool.hpp>

#include <zcio/result.hpp>
#include <zcio/sys.hpp>

#include "test_support.hpp"

#include <cerrno>
#include <cstddef>
#include <optional>
#include <random>
#include <utility>
#include <vector>

#include <fcntl.h>

namespace zcio {
namespace {

class pipe_pool_test : public test::fd_leak_check {};

// created == leased + idle + discarded + trimmed, whatever happened before.
void expect_counters_add_up(const pipe_pool& pool) {
    auto s = pool.stats();
    EXPECT_EQ(s.created, s.leased + s.idle + s.discarded + s.trimmed)
        << "created " << s.created << " leased " << s.leased << " idle " << s.idle << " discarded "
        << s.discarded << " trimmed " << s.trimmed;
}

pipe_lease must_lease(pipe_pool& pool) {
    auto l = pool.lease();
    EXPECT_TRUE(l.has_value()) << (l ? "" : l.error().message());
    return l ? std::move(*l) : pipe_lease{};
}

// Writes `data` into the lease's pipe and records it as buffered.
void fill(pipe_lease& l, std::span<const std::byte> data) {
    auto n = sys::write(l.write_fd(), data.data(), data.size());
    ASSERT_TRUE(n.has_value()) << n.error().message();
    ASSERT_EQ(*n, data.size());
    l.buffered += *n;
}

TEST_F(pipe_pool_test, a_returned_pipe_is_lent_again) {
    pipe_pool pool;
    int rfd = -1;
    int wfd = -1;
    {
        auto l = must_lease(pool);
        ASSERT_TRUE(l.valid());
        rfd = l.read_fd();
        wfd = l.write_fd();
        EXPECT_EQ(pool.stats().leased, 1u);
        EXPECT_EQ(pool.stats().idle, 0u);
    }
    EXPECT_EQ(pool.stats().leased, 0u);
    EXPECT_EQ(pool.stats().idle, 1u);
    auto again = must_lease(pool);
    EXPECT_EQ(again.read_fd(), rfd);
    EXPECT_EQ(again.write_fd(), wfd);
    EXPECT_EQ(pool.stats().created, 1u);
    expect_counters_add_up(pool);
}

TEST_F(pipe_pool_test, pipes_are_nonblocking_and_cloexec_and_carry_bytes) {
    pipe_pool pool;
    auto l = must_lease(pool);
    for (int fd : {l.read_fd(), l.write_fd()}) {
        auto fl = sys::get_status_flags(fd);
        ASSERT_TRUE(fl.has_value());
        EXPECT_NE(*fl & O_NONBLOCK, 0);
        EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    }
    auto data = test::random_bytes(40'000, 7);
    fill(l, data);
    std::vector<std::byte> back(data.size());
    auto n = sys::read(l.read_fd(), back.data(), back.size());
    ASSERT_TRUE(n.has_value());
    ASSERT_EQ(*n, data.size());
    l.buffered -= *n;
    EXPECT_EQ(test::checksum_of(back), test::checksum_of(data));
    l.reset();
    EXPECT_EQ(pool.stats().idle, 1u);
    EXPECT_EQ(pool.stats().discarded, 0u);
}

TEST_F(pipe_pool_test, max_idle_bounds_the_idle_pipes_and_closes_the_rest) {
    const std::size_t fds_before = test::open_fd_count();
    pipe_pool pool(pipe_pool::options{.pipe_size = 0, .max_idle = 2});
    {
        std::vector<pipe_lease> leases;
        for (int i = 0; i < 5; ++i) {
            leases.push_back(must_lease(pool));
        }
        EXPECT_EQ(test::open_fd_count(), fds_before + 10);
        EXPECT_EQ(pool.stats().leased, 5u);
    }
    auto s = pool.stats();
    EXPECT_EQ(s.created, 5u);
    EXPECT_EQ(s.idle, 2u);
    EXPECT_EQ(s.trimmed, 3u);
    EXPECT_EQ(s.discarded, 0u);
    EXPECT_EQ(test::open_fd_count(), fds_before + 4) << "only the idle pipes stay open";
    expect_counters_add_up(pool);
    pool.clear_idle();
    EXPECT_EQ(pool.stats().idle, 0u);
    EXPECT_EQ(test::open_fd_count(), fds_before);
    expect_counters_add_up(pool);
}

TEST_F(pipe_pool_test, max_idle_zero_keeps_nothing) {
    pipe_pool pool(pipe_pool::options{.pipe_size = 0, .max_idle = 0});
    must_lease(pool).reset();
    EXPECT_EQ(pool.stats().idle, 0u);
    EXPECT_EQ(pool.stats().trimmed, 1u);
}

TEST_F(pipe_pool_test, a_pipe_holding_bytes_is_closed_not_returned) {
    pipe_pool pool;
    int rfd = -1;
    {
        auto l = must_lease(pool);
        rfd = l.read_fd();
        auto data = test::random_bytes(1000, 1);
        fill(l, data);
    }
    auto s = pool.stats();
    EXPECT_EQ(s.discarded, 1u);
    EXPECT_EQ(s.idle, 0u);
    EXPECT_EQ(s.leased, 0u);
    // The next lease is a fresh pipe and has nothing in it.
    auto l = must_lease(pool);
    EXPECT_EQ(pool.stats().created, 2u);
    auto waiting = sys::bytes_readable(l.read_fd());
    ASSERT_TRUE(waiting.has_value());
    EXPECT_EQ(*waiting, 0u);
    (void)rfd; // the number may be reused by the new pipe; the content check is what counts
    expect_counters_add_up(pool);
}

TEST_F(pipe_pool_test, release_dirty_closes_even_an_empty_pipe) {
    pipe_pool pool;
    auto l = must_lease(pool);
    l.release_dirty();
    EXPECT_FALSE(l.valid());
    EXPECT_EQ(l.read_fd(), -1);
    EXPECT_EQ(pool.stats().discarded, 1u);
    EXPECT_EQ(pool.stats().idle, 0u);
    l.reset(); // a second end is a no-op
    l.release_dirty();
    EXPECT_EQ(pool.stats().discarded, 1u);
    expect_counters_add_up(pool);
}

TEST_F(pipe_pool_test, a_moved_lease_returns_once) {
    pipe_pool pool;
    auto a = must_lease(pool);
    auto data = test::random_bytes(10, 2);
    fill(a, data);
    pipe_lease b(std::move(a));
    EXPECT_FALSE(a.valid()); // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_EQ(a.buffered, 0u);
    EXPECT_EQ(b.buffered, 10u);
    a.reset();
    EXPECT_EQ(pool.stats().leased, 1u);

    pipe_lease c = must_lease(pool);
    c = std::move(b); // c's clean pipe goes back; b's dirty one moves in
    EXPECT_EQ(pool.stats().leased, 1u);
    EXPECT_EQ(pool.stats().idle, 1u);
    c.reset();
    EXPECT_EQ(pool.stats().discarded, 1u);
    EXPECT_EQ(pool.stats().leased, 0u);
    expect_counters_add_up(pool);
}

TEST_F(pipe_pool_test, granted_size_is_at_least_the_request_or_counted_undersized) {
    for (std::size_t want : {std::size_t{4096}, std::size_t{65536}, std::size_t{1} << 20}) {
        SCOPED_TRACE(want);
        pipe_pool pool(pipe_pool::options{.pipe_size = want});
        auto l = must_lease(pool);
        auto actual = sys::get_pipe_size(l.write_fd());
        ASSERT_TRUE(actual.has_value());
        EXPECT_EQ(l.capacity(), *actual);
        if (pool.stats().undersized == 0) {
            EXPECT_GE(l.capacity(), want);
        } else {
            EXPECT_LT(l.capacity(), want);
        }
        expect_counters_add_up(pool);
    }
}

// A lease grown with resize() reports the new size, and keeps it when the pool lends
// the same pipe again; a refused size leaves the capacity as it was.
TEST_F(pipe_pool_test, resize_keeps_the_capacity_true_across_leases) {
    pipe_pool pool(pipe_pool::options{.pipe_size = 4096});
    auto l = must_lease(pool);
    const std::size_t before = l.capacity();
    auto grown = l.resize(std::size_t{64} << 10);
    ASSERT_TRUE(grown) << grown.error().message();
    EXPECT_EQ(l.capacity(), *grown);
    EXPECT_EQ(sys::get_pipe_size(l.write_fd()).value_or(0), *grown);
    EXPECT_GE(*grown, before);
    EXPECT_FALSE(l.resize(std::size_t{1} << 32)); // over what F_SETPIPE_SZ accepts
    EXPECT_EQ(l.capacity(), *grown);
    const int rfd = l.read_fd();
    l.reset();
    auto again = must_lease(pool);
    ASSERT_EQ(again.read_fd(), rfd);
    EXPECT_EQ(again.capacity(), *grown);
    EXPECT_FALSE(pipe_lease{}.resize(65536)); // an empty lease has no pipe
}

// F_SETPIPE_SZ takes an int and the kernel rejects sizes above 2^31 (round_pipe_size
// returns 0 → EINVAL), even for root, so 4 GiB is refused on every system: the pipe is
// kept at its default size and counted, and the lease still works.
TEST_F(pipe_pool_test, a_refused_size_keeps_the_smaller_pipe) {
    pipe_pool pool(pipe_pool::options{.pipe_size = std::size_t{1} << 32});
    auto l = must_lease(pool);
    ASSERT_TRUE(l.valid());
    EXPECT_EQ(pool.stats().undersized, 1u);
    EXPECT_GT(l.capacity(), 0u);
    EXPECT_LT(l.capacity(), std::size_t{1} << 32);
    auto data = test::random_bytes(100, 3);
    fill(l, data);
    std::vector<std::byte> back(100);
    ASSERT_EQ(sys::read(l.read_fd(), back.data(), back.size()).value_or(0), 100u);
    l.buffered = 0;
    EXPECT_EQ(back, data);
}

TEST_F(pipe_pool_test, a_failing_make_pipe_fails_the_lease_and_is_counted) {
    int calls = 0;
    pipe_pool pool(pipe_pool::options{.make_pipe = [&calls]() -> result<sys::pipe_pair> {
        ++calls;
        return fail(EMFILE);
    }});
    auto l = pool.lease();
    ASSERT_FALSE(l.has_value());
    EXPECT_EQ(errno_of(l.error()), EMFILE);
    EXPECT_EQ(l.error(), std::errc::too_many_files_open);
    EXPECT_EQ(pool.lease().error(), std::errc::too_many_files_open);
    auto s = pool.stats();
    EXPECT_EQ(calls, 2);
    EXPECT_EQ(s.create_failures, 2u);
    EXPECT_EQ(s.created, 0u);
    EXPECT_EQ(s.leased, 0u);
}

TEST_F(pipe_pool_test, max_total_zero_hands_out_nothing) {
    pipe_pool pool(pipe_pool::options{.max_total = 0});
    auto l = pool.lease();
    ASSERT_FALSE(l.has_value());
    EXPECT_EQ(l.error(), std::errc::no_buffer_space);
    EXPECT_EQ(pool.stats().refused, 1u);
    EXPECT_EQ(pool.stats().created, 0u);
}

TEST_F(pipe_pool_test, max_total_caps_leased_plus_idle) {
    pipe_pool pool(pipe_pool::options{.pipe_size = 0, .max_total = 2});
    auto a = must_lease(pool);
    auto b = must_lease(pool);
    EXPECT_FALSE(pool.lease().has_value());
    a.reset();
    auto c = must_lease(pool); // the idle one, not a third pipe
    EXPECT_EQ(pool.stats().created, 2u);
    EXPECT_FALSE(pool.lease().has_value());
    EXPECT_EQ(pool.stats().refused, 2u);
    // A discarded pipe frees its place under the cap.
    fill(c, test::random_bytes(1, 4));
    c.reset();
    auto d = must_lease(pool);
    EXPECT_EQ(pool.stats().created, 3u);
    expect_counters_add_up(pool);
}

// A random walk of leases, clean and dirty returns: the counters and the descriptors
// always agree with what is out and what is idle.
TEST_F(pipe_pool_test, counters_and_descriptors_agree_under_random_use) {
    const std::size_t fds_before = test::open_fd_count();
    pipe_pool pool(pipe_pool::options{.pipe_size = 8192, .max_idle = 3, .max_total = 6});
    std::vector<pipe_lease> out;
    std::mt19937_64 rng(42);
    for (int step = 0; step < 2000; ++step) {
        switch (rng() % 4) {
        case 0:
        case 1:
            if (auto l = pool.lease()) {
                out.push_back(std::move(*l));
            } else {
                EXPECT_EQ(out.size(), 6u);
                EXPECT_EQ(l.error(), std::errc::no_buffer_space);
            }
            break;
        case 2:
            if (!out.empty()) {
                std::size_t i = rng() % out.size();
                if (rng() % 2 == 0) {
                    fill(out[i], test::random_bytes(1 + rng() % 4096, step));
                }
                out.erase(out.begin() + static_cast<std::ptrdiff_t>(i));
            }
            break;
        default:
            if (!out.empty()) {
                out[rng() % out.size()].release_dirty();
            }
            std::erase_if(out, [](const pipe_lease& l) { return !l.valid(); });
            break;
        }
        auto s = pool.stats();
        ASSERT_EQ(s.leased, out.size());
        ASSERT_LE(s.idle, 3u);
        ASSERT_LE(s.leased + s.idle, 6u);
        ASSERT_EQ(s.created, s.leased + s.idle + s.discarded + s.trimmed);
        ASSERT_EQ(test::open_fd_count(), fds_before + 2 * (s.leased + s.idle));
    }
}

#ifndef NDEBUG
class pipe_pool_death_test : public test::fd_leak_check {};

TEST_F(pipe_pool_death_test, destroying_a_pool_with_leases_out_asserts) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EXPECT_DEATH(
        {
            auto* pool = new pipe_pool;
            auto l = pool->lease();
            delete pool;
        },
        "destroyed while pipes are leased");
}
#endif

} // namespace
} // namespace zcio
