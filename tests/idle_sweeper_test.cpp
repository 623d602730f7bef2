// Tests for idle_sweeper: a timeout fires between T and T + tick after the last byte of
// real traffic and not before, activity keeps resetting it, entries may leave or be
// destroyed in the middle of a sweep, and the timer stops once the list is empty.
#include <zcio/idle_sweeper.hpp>

#include <zcio/event_loop.hpp>
#include <zcio/stream.hpp>
#include <zcio/task.hpp>

#include "test_support.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <vector>

namespace zcio {
namespace {

using namespace std::chrono_literals;

class idle_sweeper_test : public test::fd_leak_check {};

// Times out once `progress` stood still for `timeout`, and then leaves.
struct idle_watch final : idle_entry {
    const std::uint64_t* progress = nullptr;
    clock::duration timeout{};
    quiet_ticks quiet;
    std::optional<clock::time_point> fired;
    int ticks = 0;

    void on_tick(clock::duration tick) override {
        ++ticks;
        if (quiet.observe(*progress, tick) >= timeout) {
            fired = clock::now();
            leave();
        }
    }
};

// What a reader saw: bytes, their checksum and when the last of them came.
struct reader_state {
    std::uint64_t bytes = 0;
    test::checksum sum;
    clock::time_point last{};
};

task<void> read_all(stream* s, reader_state* st) {
    std::vector<std::byte> buf(4096);
    while (true) {
        auto n = co_await s->read_some(std::span(buf));
        if (!n || *n == 0) {
            co_return;
        }
        st->sum.update(std::span(buf).first(*n));
        st->bytes += *n;
        st->last = clock::now();
    }
}

// Writes `data` in `pieces` pieces, `gap` apart.
task<void> write_slowly(event_loop* loop, stream* s, std::span<const std::byte> data, int pieces,
                        clock::duration gap) {
    const std::size_t step = data.size() / static_cast<std::size_t>(pieces);
    for (int i = 0; i < pieces; ++i) {
        const std::size_t len = i + 1 == pieces ? data.size() - step * i : step;
        auto w = co_await s->write_all(data.subspan(step * static_cast<std::size_t>(i), len));
        EXPECT_TRUE(w) << w.error().message();
        co_await sleep_for(*loop, gap);
    }
}

task<void> wait_until_fired(event_loop* loop, idle_watch* w, clock::duration limit) {
    const auto until = clock::now() + limit;
    while (!w->fired && clock::now() < until) {
        co_await sleep_for(*loop, 5ms);
    }
}

task<void> pause(event_loop* loop, clock::duration d) {
    co_await sleep_for(*loop, d);
}

TEST_F(idle_sweeper_test, fires_after_the_last_byte_never_during_traffic) {
    constexpr auto tick = 20ms;
    constexpr auto timeout = 100ms;
    event_loop loop;
    auto pair = test::unix_pair(loop);
    ASSERT_TRUE(pair) << pair.error().message();
    const auto data = test::random_bytes(64 * 1024, 0x51ee);
    reader_state rd;
    idle_sweeper sweeper(loop, tick);
    idle_watch w;
    w.progress = &rd.bytes;
    w.timeout = timeout;
    sweeper.add(w);

    loop.spawn(read_all(&pair->second, &rd));
    // Eight pieces 40 ms apart: traffic lasts three timeouts, and no gap reaches one.
    loop.block_on(write_slowly(&loop, &pair->first, data, 8, 40ms));
    loop.block_on(wait_until_fired(&loop, &w, 5s));

    ASSERT_TRUE(w.fired) << "no timeout within 5 s of the last byte";
    EXPECT_EQ(rd.bytes, data.size());
    EXPECT_EQ(rd.sum.value(), test::checksum_of(data));
    // Not early (activity reset it every time), and within a generous bound of T + tick.
    EXPECT_GE(*w.fired - rd.last, timeout);
    EXPECT_LT(*w.fired - rd.last, timeout + tick + 1s);
    EXPECT_FALSE(w.joined());
}

TEST_F(idle_sweeper_test, first_tick_after_joining_does_not_count) {
    quiet_ticks q;
    EXPECT_EQ(q.observe(0, 1s), 0s); // only records the counter
    EXPECT_EQ(q.observe(0, 1s), 1s);
    EXPECT_EQ(q.observe(0, 1s), 2s);
    EXPECT_EQ(q.observe(7, 1s), 0s); // progress: counting starts over
    EXPECT_EQ(q.observe(7, 1s), 1s);
    q.reset();
    EXPECT_EQ(q.observe(7, 1s), 0s);
    EXPECT_EQ(q.observe(7, 1s), 1s);
}

// Entries that, when ticked, destroy themselves and the entry the sweep visits next
// (the one joined just before them), or add a new entry.
struct chaos_entry final : idle_entry {
    std::vector<std::unique_ptr<chaos_entry>>* all = nullptr;
    idle_sweeper* sweeper = nullptr;
    std::vector<int>* ticked = nullptr;
    int id = 0;
    bool kill_next_and_self = false;
    bool add_one = false;

    void on_tick(clock::duration /*tick*/) override;
};

void chaos_entry::on_tick(clock::duration /*tick*/) {
    ticked->push_back(id);
    if (add_one) {
        add_one = false;
        auto e = std::make_unique<chaos_entry>();
        e->all = all;
        e->sweeper = sweeper;
        e->ticked = ticked;
        e->id = static_cast<int>(all->size());
        sweeper->add(*e);
        all->push_back(std::move(e));
    }
    if (kill_next_and_self) {
        auto& self = (*all)[static_cast<std::size_t>(id)];
        (*all)[static_cast<std::size_t>(id - 1)].reset(); // next in the sweep
        self.reset();                                     // destroys this: return at once
    }
}

task<void> wait_for_sweeps(event_loop* loop, idle_sweeper* s, std::uint64_t n) {
    const auto until = clock::now() + 5s;
    while (s->sweeps() < n && clock::now() < until) {
        co_await sleep_for(*loop, 5ms);
    }
}

TEST_F(idle_sweeper_test, entries_destroyed_or_added_mid_sweep_are_safe) {
    event_loop loop;
    idle_sweeper sweeper(loop, 10ms);
    std::vector<std::unique_ptr<chaos_entry>> all;
    std::vector<int> ticked;
    for (int i = 0; i < 6; ++i) {
        auto e = std::make_unique<chaos_entry>();
        e->all = &all;
        e->sweeper = &sweeper;
        e->ticked = &ticked;
        e->id = i;
        sweeper.add(*e);
        all.push_back(std::move(e));
    }
    // Sweep order is newest first: 5 4 3 2 1 0. Entry 4 destroys 3 and itself; entry 1
    // adds entry 6, which waits for the next sweep.
    all[4]->kill_next_and_self = true;
    all[1]->add_one = true;
    loop.block_on(wait_for_sweeps(&loop, &sweeper, 2));

    const std::vector<int> expected{5, 4, 2, 1, 0, /* second sweep */ 6, 5, 2, 1, 0};
    ASSERT_GE(ticked.size(), expected.size());
    ticked.resize(expected.size());
    EXPECT_EQ(ticked, expected);
    EXPECT_EQ(sweeper.size(), 5U);
}

TEST_F(idle_sweeper_test, timer_stops_once_the_list_is_empty) {
    constexpr auto tick = 10ms;
    event_loop loop;
    idle_sweeper sweeper(loop, tick);
    EXPECT_FALSE(sweeper.running()); // no entry: no timer
    std::uint64_t progress = 0;
    {
        idle_watch w;
        w.progress = &progress;
        w.timeout = 3 * tick;
        sweeper.add(w);
        EXPECT_TRUE(sweeper.running());
        loop.block_on(wait_until_fired(&loop, &w, 5s));
        ASSERT_TRUE(w.fired);
        EXPECT_EQ(w.ticks, 4); // one to record, three quiet
    }
    EXPECT_TRUE(sweeper.empty());
    // At most one more sweep finds the list empty; then nothing wakes the loop for it.
    loop.block_on(pause(&loop, 30 * tick));
    const std::uint64_t after = sweeper.sweeps();
    EXPECT_FALSE(sweeper.running());
    loop.block_on(pause(&loop, 10 * tick));
    EXPECT_EQ(sweeper.sweeps(), after);
    EXPECT_LE(after, 5U);

    // A new entry starts it again.
    idle_watch again;
    again.progress = &progress;
    again.timeout = tick;
    sweeper.add(again);
    EXPECT_TRUE(sweeper.running());
    loop.block_on(wait_until_fired(&loop, &again, 5s));
    EXPECT_TRUE(again.fired);
}

TEST_F(idle_sweeper_test, entries_outliving_their_sweeper_are_let_go) {
    event_loop loop;
    std::uint64_t progress = 0;
    idle_watch a;
    idle_watch b;
    a.progress = b.progress = &progress;
    {
        idle_sweeper s1(loop, 10ms);
        idle_sweeper s2(loop, 10ms);
        s1.add(a);
        s1.add(b);
        s2.add(b); // moves: leaves s1 first
        EXPECT_EQ(s1.size(), 1U);
        EXPECT_EQ(s2.size(), 1U);
        a.leave();
        a.leave(); // idempotent
        EXPECT_TRUE(s1.empty());
        EXPECT_FALSE(a.joined());
        EXPECT_TRUE(b.joined());
    }
    EXPECT_FALSE(b.joined()); // destroying b now touches no freed sweeper
}

TEST_F(idle_sweeper_test, a_tick_that_is_not_positive_is_refused) {
    event_loop loop;
    EXPECT_THROW(idle_sweeper(loop, 0s), std::invalid_argument);
    EXPECT_THROW(idle_sweeper(loop, -1s), std::invalid_argument);
}

} // namespace
} // namespace zcio
