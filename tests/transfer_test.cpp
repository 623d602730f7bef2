// Tests for transfer, driven by hand: step(), then wait for exactly what it asked for
// (readiness through the loop, bounded; a time; a yield), over real sockets, pipes and
// files with checksummed random data. Each outcome is seen (readable, writable with a
// full destination, until with a rate limit, yield, done, failed with the counts), the
// fall-back from a refused splice loses nothing, and no wait for the source holds a
// pipe or a buffer.
#include <zcio/timeout.hpp>
#include <zcio/transfer.hpp>

#include "test_support.hpp"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <set>

namespace zcio {
namespace {

using namespace std::chrono_literals;
using wait = transfer::wait;

const std::vector<std::byte>& data() {
    static const std::vector<std::byte> d = test::random_bytes(std::size_t{8} << 20, 0x7a5f);
    return d;
}

// What a hand-driven transfer asked for, and whether it held a lease while it waited
// for its source.
struct drive_log {
    std::set<wait> seen;
    int leased_while_waiting_for_source = 0;
};

class transfer_test : public test::transfer_pools_fixture {
protected:
    // Steps `t` until it is done or failed (or `stop_at` is asked for), waiting for
    // each thing it asks for. Every wait is bounded: a stuck transfer fails the test.
    wait drive(event_loop& loop, transfer& t, stream& dst, stream& src, drive_log& log,
               std::optional<wait> stop_at = std::nullopt) {
        for (int turns = 0; turns < 100'000; ++turns) {
            const wait w = t.step(dst, src);
            log.seen.insert(w);
            if (w == wait::done || w == wait::failed || w == stop_at) {
                return w;
            }
            if (w == wait::readable &&
                pools_->pipes.stats().leased + pools_->buffers.stats().leased > 0) {
                ++log.leased_while_waiting_for_source;
            }
            if (!wait_for(loop, t, w == wait::readable ? src : dst, w)) {
                ADD_FAILURE() << "the transfer waited in vain";
                return wait::failed;
            }
        }
        ADD_FAILURE() << "the transfer did not end";
        return wait::failed;
    }

    // `end`: the stream the wait is for (the source for readable, else the destination).
    static bool wait_for(event_loop& loop, transfer& t, stream& end, wait w) {
        if (w == wait::until) {
            EXPECT_GT(t.wake_at(), clock::now() - 1s);
            loop.block_on(sleep_until_task(&loop, t.wake_at()));
            return true;
        }
        if (w == wait::yield) {
            loop.block_on(test::pause(&loop, 0ms));
            return true;
        }
        io_handle& h = end.handle();
        const io_direction d = w == wait::readable ? io_direction::read : io_direction::write;
        auto r = loop.block_on(bounded_wait(&loop, &h, d));
        if (!r || !*r) {
            t.wait_failed(r ? r->error() : r.error());
        }
        return r.has_value();
    }

    // The readiness wait (parked on the handle, as any driver would), at most 10 s.
    static task<result<result<void>>> bounded_wait(event_loop* loop, io_handle* h, io_direction d) {
        co_return co_await with_timeout(*loop, ready_wait(h, d), 10s);
    }
    static task<result<void>> ready_wait(io_handle* h, io_direction d) {
        co_return co_await h->wait(d);
    }

    static task<void> sleep_until_task(event_loop* loop, clock::time_point at) {
        co_await sleep_until(*loop, at);
    }
};

TEST_F(transfer_test, socket_to_socket_starts_buffered_and_moves_to_splice) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    auto in = test::unix_pair(loop);
    auto out = test::unix_pair(loop);
    ASSERT_TRUE(in && out);
    test::side produced, consumed;
    loop.spawn(test::produce(&in->second, data(), 1, 256 << 10, true, &produced));
    loop.spawn(test::consume(&out->second, 2, 128 << 10, &consumed));
    copy_options o;
    o.pools = &pools;
    drive_log log;
    {
        transfer t(out->first, in->first, o);
        EXPECT_EQ(t.path(), copy_path::buffer);
        ASSERT_EQ(drive(loop, t, out->first, in->first, log), wait::done)
            << t.result().error.message();
        EXPECT_EQ(t.result().bytes, data().size());
        EXPECT_EQ(t.result().path, copy_path::splice);
        EXPECT_FALSE(t.holds_lease());
    }
    (void)out->first.shutdown_write();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return consumed.done; }, 10s)));
    EXPECT_EQ(consumed.sum, test::checksum_of(data()));
    EXPECT_TRUE(log.seen.contains(wait::readable));
    EXPECT_EQ(log.leased_while_waiting_for_source, 0);
}

// A destination nobody reads: the transfer asks for writable and keeps the bytes it
// holds (the pipe or the buffer); once the reader comes, everything arrives.
TEST_F(transfer_test, a_full_destination_asks_for_writable_and_loses_nothing) {
    for (copy_path forced : {copy_path::splice, copy_path::buffer}) {
        SCOPED_TRACE(to_string(forced));
        transfer_pools& pools = make_pools();
        event_loop loop;
        auto in = test::unix_pair(loop);
        auto out = test::unix_pair(loop);
        ASSERT_TRUE(in && out);
        const auto d = std::span(data()).first(std::size_t{4} << 20);
        test::side produced, consumed;
        loop.spawn(test::produce(&in->second, d, 3, 256 << 10, true, &produced));
        copy_options o;
        o.pools = &pools;
        o.path = forced;
        transfer t(out->first, in->first, o);
        drive_log log;
        ASSERT_EQ(drive(loop, t, out->first, in->first, log, wait::writable), wait::writable);
        EXPECT_GT(t.result().bytes, 0u);
        EXPECT_LT(t.result().bytes, d.size());
        EXPECT_TRUE(t.holds_lease()) << "the bytes read are held until they are written";
        loop.spawn(test::consume(&out->second, 4, 128 << 10, &consumed));
        ASSERT_EQ(drive(loop, t, out->first, in->first, log), wait::done)
            << t.result().error.message();
        EXPECT_EQ(t.result().bytes, d.size());
        EXPECT_EQ(t.result().path, forced);
        (void)out->first.shutdown_write();
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return consumed.done; }, 10s)));
        EXPECT_EQ(consumed.sum, test::checksum_of(d));
        EXPECT_EQ(log.leased_while_waiting_for_source, 0);
    }
}

// A rate limit makes the transfer ask for a time, holding nothing while it sleeps.
TEST_F(transfer_test, a_rate_limit_asks_for_a_time_holding_nothing) {
    for (copy_path forced : {copy_path::splice, copy_path::buffer}) {
        SCOPED_TRACE(to_string(forced));
        transfer_pools& pools = make_pools();
        event_loop loop;
        auto in = test::unix_pair(loop);
        auto out = test::unix_pair(loop);
        ASSERT_TRUE(in && out);
        const auto d = std::span(data()).first(std::size_t{160} << 10);
        test::side produced, consumed;
        loop.spawn(test::produce(&in->second, d, 5, 64 << 10, true, &produced));
        loop.spawn(test::consume(&out->second, 6, 64 << 10, &consumed));
        rate_limiter limiter(std::uint64_t{1} << 20);
        copy_options o;
        o.pools = &pools;
        o.path = forced;
        o.limiter = &limiter;
        transfer t(out->first, in->first, o);
        drive_log log;
        ASSERT_EQ(drive(loop, t, out->first, in->first, log, wait::until), wait::until);
        EXPECT_GT(t.wake_at(), clock::now() - 1ms);
        EXPECT_FALSE(t.holds_lease()) << "a throttled transfer sleeps holding nothing";
        ASSERT_EQ(drive(loop, t, out->first, in->first, log), wait::done)
            << t.result().error.message();
        EXPECT_EQ(t.result().bytes, d.size());
        (void)out->first.shutdown_write();
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return consumed.done; }, 10s)));
        EXPECT_EQ(consumed.sum, test::checksum_of(d));
    }
}

// A limit ends the transfer (done) exactly there; the byte budget makes it yield.
TEST_F(transfer_test, a_limit_ends_it_and_the_budget_makes_it_yield) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    const std::string path = test::temp_path("transfer-src");
    {
        unique_fd f(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        ASSERT_TRUE(f.valid());
        ASSERT_EQ(::write(f.get(), data().data(), data().size()),
                  static_cast<ssize_t>(data().size()));
    }
    auto file = stream::adopt(loop, unique_fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)));
    ::unlink(path.c_str());
    ASSERT_TRUE(file);
    auto out = test::unix_pair(loop);
    ASSERT_TRUE(out);
    const std::size_t limit = std::size_t{3} << 20;
    test::side consumed;
    loop.spawn(test::consume(&out->second, 7, 128 << 10, &consumed));
    copy_options o;
    o.pools = &pools;
    o.limit = limit;
    o.yield_budget = 256 << 10;
    transfer t(out->first, *file, o);
    EXPECT_EQ(t.path(), copy_path::sendfile);
    drive_log log;
    ASSERT_EQ(drive(loop, t, out->first, *file, log), wait::done) << t.result().error.message();
    EXPECT_EQ(t.result().bytes, limit);
    EXPECT_EQ(t.step(out->first, *file), wait::done) << "done stays done";
    EXPECT_TRUE(log.seen.contains(wait::yield));
    (void)out->first.shutdown_write();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return consumed.done; }, 10s)));
    EXPECT_EQ(consumed.sum, test::checksum_of(std::span(data()).first(limit)));
}

// The reader goes away: failed, with the bytes that did reach the socket counted.
TEST_F(transfer_test, a_vanished_reader_fails_it_and_the_counts_are_kept) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    auto in = test::unix_pair(loop);
    auto out = test::unix_pair(loop);
    ASSERT_TRUE(in && out);
    test::side produced, consumed;
    loop.spawn(test::produce(&in->second, data(), 8, 256 << 10, true, &produced));
    loop.spawn(test::consume(&out->second, 9, 64 << 10, &consumed, std::size_t{256} << 10));
    copy_options o;
    o.pools = &pools;
    transfer t(out->first, in->first, o);
    drive_log log;
    ASSERT_EQ(drive(loop, t, out->first, in->first, log, wait::writable), wait::writable);
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return consumed.done; }, 10s)));
    out->second.close();
    ASSERT_EQ(drive(loop, t, out->first, in->first, log), wait::failed);
    EXPECT_EQ(t.result().error, std::errc::broken_pipe) << t.result().error.message();
    EXPECT_GE(t.result().bytes, consumed.bytes);
    EXPECT_EQ(t.step(out->first, in->first), wait::failed) << "failed stays failed";
    in->second.close();
}

// A driver's wait that fails (the stream was closed) ends the transfer with it.
TEST_F(transfer_test, a_failed_wait_ends_it_with_that_error) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    auto in = test::unix_pair(loop);
    auto out = test::unix_pair(loop);
    ASSERT_TRUE(in && out);
    copy_options o;
    o.pools = &pools;
    transfer t(out->first, in->first, o);
    ASSERT_EQ(t.step(out->first, in->first), wait::readable);
    t.wait_failed(std::make_error_code(std::errc::operation_canceled));
    EXPECT_EQ(t.step(out->first, in->first), wait::failed);
    EXPECT_EQ(t.result().error, std::errc::operation_canceled);
    EXPECT_EQ(t.result().bytes, 0u);
}

// splice into an O_APPEND file is refused (EINVAL) after bytes are already in the
// pipe: the buffer path takes them out of the pipe first, and nothing is lost.
TEST_F(transfer_test, a_refused_splice_falls_back_to_buffers_losing_nothing) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    auto in = test::unix_pair(loop);
    ASSERT_TRUE(in);
    const std::string path = test::temp_path("transfer-append");
    auto file = stream::adopt(
        loop,
        unique_fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600)));
    ASSERT_TRUE(file);
    const auto d = std::span(data()).first(std::size_t{2} << 20);
    test::side produced;
    loop.spawn(test::produce(&in->second, d, 10, 256 << 10, true, &produced));
    copy_options o;
    o.pools = &pools;
    o.path = copy_path::splice;
    drive_log log;
    {
        transfer t(*file, in->first, o);
        ASSERT_EQ(drive(loop, t, *file, in->first, log), wait::done) << t.result().error.message();
        EXPECT_EQ(t.result().bytes, d.size());
        EXPECT_EQ(t.result().path, copy_path::buffer);
    }
    std::vector<std::byte> back(d.size() + 1);
    EXPECT_EQ(::pread(file->fd(), back.data(), back.size(), 0), static_cast<ssize_t>(d.size()));
    back.resize(d.size());
    EXPECT_EQ(test::checksum_of(back), test::checksum_of(d));
    ::unlink(path.c_str());
}

} // namespace
} // namespace zcio
