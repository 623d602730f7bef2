// Tests for event_loop: posts across threads, timers, yield, spawn, readiness, forget.
#include <zcio/event_loop.hpp>

#include <zcio/sys.hpp>
#include <zcio/timeout.hpp>

#include "test_support.hpp"

#include <array>
#include <atomic>

#include <fcntl.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace zcio {
namespace {

using namespace std::chrono_literals;

class event_loop_test : public test::fd_leak_check {};

TEST_F(event_loop_test, million_cross_thread_posts_each_run_exactly_once) {
    event_loop loop;
    constexpr int threads = 4;
    constexpr int per_thread = 250'000;
    std::vector<std::uint8_t> ran(static_cast<std::size_t>(threads) * per_thread, 0);
    std::atomic<int> finished_posters{0};
    std::size_t total = 0;

    std::vector<std::thread> posters;
    for (int t = 0; t < threads; ++t) {
        posters.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                std::size_t slot = static_cast<std::size_t>(t) * per_thread + i;
                // Runs on the loop thread only: no synchronisation needed on `ran`.
                loop.post([&ran, &total, slot] {
                    ++ran[slot];
                    ++total;
                });
            }
            finished_posters.fetch_add(1);
        });
    }
    // A final post after all posters finished stops the loop.
    std::thread closer([&] {
        while (finished_posters.load() < threads) {
            std::this_thread::yield();
        }
        loop.post([&loop] { loop.stop(); });
    });
    ASSERT_TRUE(loop.run());
    for (auto& p : posters) {
        p.join();
    }
    closer.join();
    EXPECT_EQ(total, ran.size());
    for (std::size_t i = 0; i < ran.size(); ++i) {
        ASSERT_EQ(ran[i], 1) << "post " << i;
    }
}

TEST_F(event_loop_test, post_before_run_is_not_lost) {
    event_loop loop;
    bool ran = false;
    loop.post([&] {
        ran = true;
        loop.stop();
    });
    ASSERT_TRUE(loop.run());
    EXPECT_TRUE(ran);
}

task<void> sleeper(event_loop& loop, std::chrono::milliseconds d, int id, std::vector<int>* order) {
    co_await sleep_for(loop, d);
    order->push_back(id);
}

task<void> all_sleepers(event_loop& loop, std::vector<int>* order) {
    loop.spawn(sleeper(loop, 30ms, 3, order));
    loop.spawn(sleeper(loop, 10ms, 1, order));
    loop.spawn(sleeper(loop, 20ms, 2, order));
    loop.spawn(sleeper(loop, 20ms, 22, order)); // same deadline order: insertion order
    co_await sleep_for(loop, 60ms);
}

TEST_F(event_loop_test, timers_fire_in_deadline_order) {
    event_loop loop;
    std::vector<int> order;
    auto start = clock::now();
    loop.block_on(all_sleepers(loop, &order));
    EXPECT_GE(clock::now() - start, 60ms);
    ASSERT_EQ(order.size(), 4U);
    EXPECT_EQ(order[0], 1);
    EXPECT_EQ(order[1], 2);
    EXPECT_EQ(order[2], 22);
    EXPECT_EQ(order[3], 3);
}

task<void> never_finishes(event_loop& loop, bool* woke) {
    co_await sleep_for(loop, 10s);
    *woke = true;
}

task<result<void>> cancel_a_timer(event_loop& loop, bool* woke) {
    co_return co_await with_timeout(loop, never_finishes(loop, woke), 20ms);
}

TEST_F(event_loop_test, destroying_a_sleeping_task_cancels_its_timer) {
    event_loop loop;
    bool woke = false;
    const long frames = live_task_frames();
    auto start = clock::now();
    auto r = loop.block_on(cancel_a_timer(loop, &woke));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), std::errc::timed_out);
    EXPECT_FALSE(woke);
    EXPECT_LT(clock::now() - start, 2s);
    EXPECT_EQ(live_task_frames(), frames);
}

task<void> counter_task(event_loop& loop, int id, int rounds, std::vector<int>* trace) {
    for (int i = 0; i < rounds; ++i) {
        trace->push_back(id);
        co_await yield(loop);
    }
}

task<void> two_yielders(event_loop& loop, std::vector<int>* trace) {
    loop.spawn(counter_task(loop, 1, 3, trace));
    loop.spawn(counter_task(loop, 2, 3, trace));
    co_await sleep_for(loop, 5ms);
}

TEST_F(event_loop_test, yield_interleaves_ready_tasks) {
    event_loop loop;
    std::vector<int> trace;
    loop.block_on(two_yielders(loop, &trace));
    EXPECT_EQ(trace, (std::vector<int>{1, 2, 1, 2, 1, 2}));
    EXPECT_EQ(loop.spawned_count(), 0U);
}

task<int> throws_after_sleep(event_loop& loop) {
    co_await sleep_for(loop, 1ms);
    throw std::runtime_error("boom");
}

TEST_F(event_loop_test, exceptions_reach_the_awaiter_and_spawn_hook) {
    event_loop loop;
    EXPECT_THROW(loop.block_on(throws_after_sleep(loop)), std::runtime_error);

    std::string seen;
    loop.spawn(throws_after_sleep(loop), [&](std::exception_ptr e) {
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            seen = ex.what();
        }
        loop.stop();
    });
    ASSERT_TRUE(loop.run());
    EXPECT_EQ(seen, "boom");
}

task<result<std::size_t>> read_pipe(io_handle* h, int fd, std::vector<std::byte>* out) {
    std::array<std::byte, 4096> buf{};
    while (true) {
        auto n = co_await io_op<std::size_t>(*h, io_direction::read,
                                             [&] { return sys::read(fd, buf.data(), buf.size()); });
        if (!n || *n == 0) {
            co_return n ? result<std::size_t>(out->size()) : n;
        }
        out->insert(out->end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(*n));
    }
}

task<void> write_later(event_loop& loop, int fd, std::vector<std::byte> data) {
    for (std::size_t off = 0; off < data.size(); off += 1000) {
        co_await sleep_for(loop, 1ms);
        std::size_t len = std::min<std::size_t>(1000, data.size() - off);
        auto w = sys::write(fd, data.data() + off, len);
        EXPECT_TRUE(w && *w == len);
    }
}

TEST_F(event_loop_test, readiness_wakes_a_parked_reader_and_edges_are_not_lost) {
    event_loop loop;
    auto p = sys::pipe();
    ASSERT_TRUE(p);
    auto h = loop.watch(p->read_end.get());
    ASSERT_TRUE(h);
    EXPECT_EQ(loop.registered_count(), 1U);
    auto data = test::random_bytes(20'000, 7);
    std::vector<std::byte> got;
    int wfd = p->write_end.get();
    loop.spawn(write_later(loop, wfd, data), [&](std::exception_ptr) { p->write_end.reset(); });
    auto n = loop.block_on(read_pipe(h->get(), p->read_end.get(), &got));
    ASSERT_TRUE(n);
    EXPECT_EQ(test::checksum_of(got), test::checksum_of(data));
    h->reset();
    EXPECT_EQ(loop.registered_count(), 0U);
}

task<void> forget_soon(event_loop& loop, io_handle* h) {
    co_await sleep_for(loop, 5ms);
    h->forget();
}

task<result<void>> wait_forever(io_handle* h) {
    co_return co_await readable(*h);
}

task<result<void>> forget_while_waiting(event_loop& loop, io_handle* h) {
    loop.spawn(forget_soon(loop, h));
    co_return co_await wait_forever(h);
}

TEST_F(event_loop_test, forget_resumes_waiters_with_operation_canceled) {
    event_loop loop;
    auto p = sys::pipe();
    ASSERT_TRUE(p);
    auto h = loop.watch(p->read_end.get());
    ASSERT_TRUE(h);
    (*h)->clear_ready(io_direction::read);
    auto r = loop.block_on(forget_while_waiting(loop, h->get()));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), std::errc::operation_canceled);
    EXPECT_EQ(loop.registered_count(), 0U);
}

TEST_F(event_loop_test, regular_files_are_always_ready) {
    event_loop loop;
    auto path = test::temp_path("loop");
    auto f = sys::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC);
    ASSERT_TRUE(f);
    auto h = loop.watch(f->get());
    ASSERT_TRUE(h);
    EXPECT_FALSE((*h)->pollable());
    EXPECT_EQ(loop.registered_count(), 0U);
    (*h)->clear_ready(io_direction::read);
    EXPECT_TRUE((*h)->ready(io_direction::read));
    ::unlink(path.c_str());
}

struct arg_probe {
    int* alive;
    explicit arg_probe(int* a) : alive(a) { ++*alive; }
    arg_probe(arg_probe&& o) noexcept : alive(o.alive) { ++*alive; }
    arg_probe(const arg_probe&) = delete;
    arg_probe& operator=(const arg_probe&) = delete;
    arg_probe& operator=(arg_probe&&) = delete;
    ~arg_probe() { --*alive; }
};

task<int> takes_probe(arg_probe p) {
    co_return *p.alive;
}

TEST_F(event_loop_test, a_never_awaited_task_frees_its_arguments) {
    int alive = 0;
    const long frames = live_task_frames();
    {
        auto t = takes_probe(arg_probe(&alive));
        EXPECT_EQ(alive, 1); // the frame's copy
        EXPECT_EQ(live_task_frames(), frames + 1);
    }
    EXPECT_EQ(alive, 0);
    EXPECT_EQ(live_task_frames(), frames);
}

task<void> sleeps_long(event_loop& loop) {
    co_await sleep_for(loop, 1h);
}

TEST_F(event_loop_test, destroying_the_loop_frees_suspended_spawned_tasks) {
    const long frames = live_task_frames();
    {
        event_loop loop;
        for (int i = 0; i < 100; ++i) {
            loop.spawn(sleeps_long(loop));
        }
        loop.post([&loop] { loop.stop(); });
        ASSERT_TRUE(loop.run());
        EXPECT_EQ(loop.spawned_count(), 100U);
    }
    EXPECT_EQ(live_task_frames(), frames);
}

TEST_F(event_loop_test, stop_from_another_thread_ends_run) {
    event_loop loop;
    std::thread t([&] {
        std::this_thread::sleep_for(20ms);
        loop.stop();
    });
    auto start = clock::now();
    ASSERT_TRUE(loop.run());
    t.join();
    EXPECT_LT(clock::now() - start, 5s);
}

} // namespace
} // namespace zcio

namespace zcio {
namespace {

double thread_cpu_seconds() {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// A loop with busy polling still carries every byte (a ping-pong with another thread
// over a socketpair, checked byte by byte) and, once idle, blocks instead of spinning.
TEST_F(event_loop_test, busy_polling_carries_data_and_an_idle_loop_still_sleeps) {
    auto fds = sys::socketpair(AF_UNIX, SOCK_STREAM);
    ASSERT_TRUE(fds) << fds.error().message();
    event_loop loop;
    loop.set_busy_poll(200us);
    auto h = loop.watch(fds->first.get());
    ASSERT_TRUE(h) << h.error().message();
    const int peer = fds->second.get();
    std::thread echo([peer] { // blocking echo of 1,000 one-byte messages
        (void)sys::set_nonblocking(peer, false);
        for (int i = 0; i < 1000; ++i) {
            std::byte b{};
            if (sys::read(peer, &b, 1).value_or(0) != 1 ||
                sys::write(peer, &b, 1).value_or(0) != 1) {
                return;
            }
        }
    });
    auto ping = [](io_handle* handle, int fd) -> task<int> {
        int good = 0;
        for (int i = 0; i < 1000; ++i) {
            const auto out = static_cast<std::byte>(i * 7);
            if (sys::write(fd, &out, 1).value_or(0) != 1) {
                break;
            }
            std::byte in{};
            while (true) {
                auto n = sys::read(fd, &in, 1);
                if (n && *n == 1) {
                    break;
                }
                handle->clear_ready(io_direction::read);
                if (auto w = co_await handle->wait(io_direction::read); !w) {
                    co_return good;
                }
            }
            good += in == out ? 1 : 0;
        }
        co_return good;
    };
    EXPECT_EQ(loop.block_on(ping(h->get(), fds->first.get())), 1000);
    echo.join();

    // Idle: 300 ms with nothing but a timer at the end. Spinning would burn ~0.3 s.
    auto idle = [](event_loop* l) -> task<double> {
        const double before = thread_cpu_seconds();
        co_await sleep_for(*l, 300ms);
        co_return thread_cpu_seconds() - before;
    };
    const double cpu = loop.block_on(idle(&loop));
    EXPECT_LT(cpu, 0.1) << "an idle loop with busy polling kept spinning";
    h->reset();
}

// Posts that arrive while the loop busy-polls run: the spin reads the wake-up fd, and
// the posts must not wait for a wake-up that was already consumed.
TEST_F(event_loop_test, posts_run_while_the_loop_busy_polls) {
    event_loop loop;
    loop.set_busy_poll(5ms);
    std::atomic<bool> done{false};
    std::atomic<int> ran{0};
    // Timers every millisecond keep the loop working, so it spins between them.
    auto ticker = [](event_loop* l, std::atomic<bool>* stop) -> task<void> {
        while (!stop->load()) {
            co_await sleep_for(*l, 1ms);
        }
    };
    loop.spawn(ticker(&loop, &done));
    constexpr int posts = 20'000;
    std::thread poster([&] {
        for (int i = 0; i < posts; ++i) {
            loop.post([&ran] { ran.fetch_add(1); });
            if (i % 1000 == 0) {
                std::this_thread::sleep_for(1ms); // let the loop go back to spinning
            }
        }
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (ran.load() < posts && std::chrono::steady_clock::now() < deadline) {
            std::this_thread::sleep_for(1ms);
        }
        done.store(true);
        loop.stop();
    });
    ASSERT_TRUE(loop.run());
    poster.join();
    EXPECT_EQ(ran.load(), posts) << "posts were stranded by busy polling";
}

} // namespace
} // namespace zcio

namespace zcio {
namespace {

// ---- muting: readiness nobody waits for wakes the loop once, and is not lost ----

task<void> nap(event_loop* loop, clock::duration d) {
    co_await sleep_for(*loop, d);
}

// Reads what `fd` holds (the cache may say ready after muting), then, with the cache
// at "not ready" and the direction muted, has `more` written to it: no edge will come
// for those bytes, so only arm()'s re-check (EPOLL_CTL_MOD) can wake the wait.
task<std::vector<std::byte>> drain_then_wait(io_handle* h, int fd, int peer,
                                             std::vector<std::byte> more) {
    std::vector<std::byte> got;
    std::array<std::byte, 4096> buf{};
    auto take_all = [&] {
        while (true) {
            auto n = sys::read(fd, buf.data(), buf.size());
            if (!n || *n == 0) {
                h->clear_ready(io_direction::read);
                return;
            }
            got.insert(got.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(*n));
        }
    };
    take_all();
    EXPECT_TRUE(sys::write(peer, more.data(), more.size()));
    if (auto w = co_await h->wait(io_direction::read); !w) {
        ADD_FAILURE() << w.error().message();
        co_return got;
    }
    take_all();
    co_return got;
}

task<result<std::vector<std::byte>>> within(event_loop* loop, task<std::vector<std::byte>> t,
                                            clock::duration d) {
    co_return co_await with_timeout(*loop, std::move(t), d);
}

TEST_F(event_loop_test, readiness_nobody_waits_for_wakes_the_loop_once_and_is_not_lost) {
    auto fds = sys::socketpair(AF_UNIX, SOCK_STREAM);
    ASSERT_TRUE(fds) << fds.error().message();
    event_loop loop;
    auto h = loop.watch(fds->first.get());
    ASSERT_TRUE(h) << h.error().message();
    const int peer = fds->second.get();
    const auto data = test::random_bytes(10'000, 11);
    // Ten messages 20 ms apart reach a socket nobody reads while the loop sleeps on a
    // timer: each used to wake the loop for nothing.
    std::thread writer([&] {
        for (std::size_t off = 0; off < data.size(); off += 1000) {
            std::this_thread::sleep_for(20ms);
            EXPECT_TRUE(sys::write(peer, data.data() + off, 1000));
        }
    });
    loop.block_on(nap(&loop, 300ms));
    writer.join();
    // One for the registration's "writable", one for the first message; the other
    // nine came while reading was muted.
    EXPECT_LE(loop.idle_wakeups(), 2U);

    const auto more = test::random_bytes(3000, 12);
    auto got =
        loop.block_on(within(&loop, drain_then_wait(h->get(), fds->first.get(), peer, more), 2s));
    ASSERT_TRUE(got) << "a reader parked on a muted direction was never woken";
    std::vector<std::byte> want = data;
    want.insert(want.end(), more.begin(), more.end());
    EXPECT_EQ(got->size(), want.size());
    EXPECT_EQ(test::checksum_of(*got), test::checksum_of(want));
    h->reset();
}

// Fills `fd` until EAGAIN, waits for writability (the direction was muted), writes
// `tail` and half-closes. Returns what it wrote.
task<std::vector<std::byte>> fill_wait_write(io_handle* h, int fd, std::vector<std::byte> tail) {
    std::vector<std::byte> sent;
    const auto block = test::random_bytes(4096, 13);
    while (true) {
        auto n = sys::write(fd, block.data(), block.size());
        if (!n) {
            h->clear_ready(io_direction::write);
            break;
        }
        sent.insert(sent.end(), block.begin(), block.begin() + static_cast<std::ptrdiff_t>(*n));
    }
    if (auto w = co_await h->wait(io_direction::write); !w) {
        ADD_FAILURE() << w.error().message();
        co_return sent;
    }
    std::size_t off = 0;
    while (off < tail.size()) {
        auto n = sys::write(fd, tail.data() + off, tail.size() - off);
        if (!n) {
            h->clear_ready(io_direction::write);
            if (!co_await h->wait(io_direction::write)) {
                break;
            }
            continue;
        }
        off += *n;
    }
    sent.insert(sent.end(), tail.begin(), tail.end());
    ::shutdown(fd, SHUT_WR);
    co_return sent;
}

TEST_F(event_loop_test, a_writer_parked_on_a_muted_direction_is_woken) {
    auto fds = sys::socketpair(AF_UNIX, SOCK_STREAM);
    ASSERT_TRUE(fds) << fds.error().message();
    event_loop loop;
    auto h = loop.watch(fds->first.get());
    ASSERT_TRUE(h) << h.error().message();
    // The registration reports "writable" with no writer: that wake-up mutes writing.
    loop.block_on(nap(&loop, 30ms));
    EXPECT_EQ(loop.idle_wakeups(), 1U);

    const int peer = fds->second.get();
    std::vector<std::byte> received;
    std::thread reader([&] { // starts draining only after the writer has parked
        std::this_thread::sleep_for(100ms);
        (void)sys::set_nonblocking(peer, false);
        std::array<std::byte, 65536> buf{};
        while (true) {
            auto n = sys::read(peer, buf.data(), buf.size());
            if (!n || *n == 0) {
                return;
            }
            received.insert(received.end(), buf.begin(),
                            buf.begin() + static_cast<std::ptrdiff_t>(*n));
        }
    });
    auto sent = loop.block_on(within(
        &loop, fill_wait_write(h->get(), fds->first.get(), test::random_bytes(5000, 14)), 5s));
    if (!sent) {
        ::shutdown(fds->first.get(), SHUT_RDWR); // lets the reader see the end and stop
    }
    reader.join();
    ASSERT_TRUE(sent) << "a writer parked on a muted direction was never woken";
    EXPECT_EQ(received.size(), sent->size());
    EXPECT_EQ(test::checksum_of(received), test::checksum_of(*sent));
    h->reset();
}

} // namespace
} // namespace zcio
