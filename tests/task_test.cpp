// Tests for task<T>: laziness, values, exceptions, symmetric transfer depth.
#include <zcio/task.hpp>

#include <zcio/event_loop.hpp>

#include "test_support.hpp"

#include <memory>
#include <string>

namespace zcio {
namespace {

class task_test : public test::fd_leak_check {};

task<int> answer(int* started) {
    ++*started;
    co_return 42;
}

task<int> add_answers(int* started) {
    int a = co_await answer(started);
    int b = co_await answer(started);
    co_return a + b;
}

TEST_F(task_test, is_lazy_and_returns_values) {
    event_loop loop;
    int started = 0;
    auto t = add_answers(&started);
    EXPECT_EQ(started, 0);
    EXPECT_EQ(loop.block_on(std::move(t)), 84);
    EXPECT_EQ(started, 2);
}

task<std::unique_ptr<std::string>> move_only_value() {
    co_return std::make_unique<std::string>("moved");
}

TEST_F(task_test, move_only_results) {
    event_loop loop;
    auto v = loop.block_on(move_only_value());
    ASSERT_TRUE(v);
    EXPECT_EQ(*v, "moved");
}

task<void> deep(int n) {
    if (n > 0) {
        co_await deep(n - 1);
    }
}

task<int> count_down(int n) {
    if (n == 0) {
        co_return 0;
    }
    co_return 1 + co_await count_down(n - 1);
}

TEST_F(task_test, deep_nesting_completes_and_frees_every_frame) {
    // g++ turns symmetric transfer into a tail call only when optimising, so the
    // depth here stays modest enough for a -O0 stack.
    event_loop loop;
    const long frames = live_task_frames();
    EXPECT_EQ(loop.block_on(count_down(2'000)), 2'000);
    loop.block_on(deep(2'000));
    EXPECT_EQ(live_task_frames(), frames);
}

task<void> thrower() {
    throw std::logic_error("bad");
    co_return;
}

task<std::string> catcher() {
    try {
        co_await thrower();
    } catch (const std::logic_error& e) {
        co_return std::string(e.what());
    }
    co_return std::string("not thrown");
}

TEST_F(task_test, exceptions_propagate_to_the_awaiter) {
    event_loop loop;
    EXPECT_EQ(loop.block_on(catcher()), "bad");
}

TEST_F(task_test, move_assignment_destroys_the_old_frame) {
    const long frames = live_task_frames();
    int started = 0;
    auto a = answer(&started);
    auto b = answer(&started);
    EXPECT_EQ(live_task_frames(), frames + 2);
    a = std::move(b);
    EXPECT_EQ(live_task_frames(), frames + 1);
    EXPECT_FALSE(b.valid()); // NOLINT(bugprone-use-after-move): checking the moved-from state
    a.reset();
    EXPECT_EQ(live_task_frames(), frames);
    EXPECT_EQ(started, 0);
}

} // namespace
} // namespace zcio
