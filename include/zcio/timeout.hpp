// with_timeout / with_cancel: end any task early, with timed_out or operation_canceled.
//
// Cancellation destroys the inner task where it is suspended. Every zcio awaitable
// unhooks itself from the loop in its destructor, and streams close their fds in
// theirs, so a cancelled task leaves no fd registered and no frame behind. An
// awaitable from elsewhere that a task is suspended in must offer the same guarantee.
#pragma once

#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/task.hpp>

#include <system_error>
#include <vector>

namespace zcio {

namespace detail {

template <class T>
struct interrupt_value {
    using type = result<T>;
};
template <class U>
struct interrupt_value<result<U>> {
    using type = result<U>;
};
template <>
struct interrupt_value<void> {
    using type = result<void>;
};

// Runs a task and, when triggered first (deadline or cancel), destroys it and resumes
// the awaiting coroutine with `reason`.
template <class T>
class interruptible : public coroutine_waiter<timer_node> {
public:
    using value_type = typename interrupt_value<T>::type;

    interruptible(event_loop& loop, task<T> t, std::errc reason) noexcept
        : loop_(&loop), task_(std::move(t)), reason_(reason) {}

    bool await_ready() const noexcept { return !task_.valid(); }

    std::coroutine_handle<> await_suspend(std::coroutine_handle<> outer) {
        co_ = outer;
        on_suspend();
        task_.handle().promise().continuation = outer;
        return task_.handle(); // start the inner task now (symmetric transfer)
    }

    // The trigger: the inner task is suspended (this runs from the loop), so it is
    // safe to destroy it here.
    void wake() override {
        if (finished_) {
            return;
        }
        interrupted_ = true;
        task_.reset();
        co_.resume();
    }

    value_type await_resume() {
        finished_ = true;
        disarm();
        on_resume();
        if (interrupted_ || !task_.valid()) {
            return fail(std::make_error_code(reason_));
        }
        if constexpr (std::is_void_v<T>) {
            task_.take_result();
            return {};
        } else {
            return task_.take_result();
        }
    }

protected:
    virtual void on_suspend() {}
    virtual void on_resume() noexcept {}
    event_loop& loop() const noexcept { return *loop_; }
    void arm_at(clock::time_point deadline) { arm(*loop_, deadline); }

private:
    event_loop* loop_;
    task<T> task_;
    std::errc reason_;
    bool interrupted_ = false;
    bool finished_ = false;
};

template <class T>
class deadline_awaiter final : public interruptible<T> {
public:
    deadline_awaiter(event_loop& loop, task<T> t, clock::time_point deadline) noexcept
        : interruptible<T>(loop, std::move(t), std::errc::timed_out), deadline_(deadline) {}

private:
    void on_suspend() override { this->arm_at(deadline_); }
    clock::time_point deadline_;
};

} // namespace detail

// co_await with_timeout(loop, t, 5s): t's value as a result, or timed_out after 5 s
// (t is then destroyed where it was suspended). A t that returns result<U> gives
// result<U>; void gives result<void>. Exceptions from t propagate.
template <class T>
auto with_deadline(event_loop& loop, task<T> t, clock::time_point deadline) {
    return detail::deadline_awaiter<T>(loop, std::move(t), deadline);
}
template <class T>
auto with_timeout(event_loop& loop, task<T> t, clock::duration d) {
    return with_deadline(loop, std::move(t), clock::now() + d);
}

// A loop-thread cancel switch: cancel() ends every with_cancel() that watches it with
// operation_canceled. Not thread-safe: from another thread, post() the cancel().
class cancel_source {
public:
    cancel_source() = default;
    cancel_source(const cancel_source&) = delete;
    cancel_source& operator=(const cancel_source&) = delete;
    ~cancel_source() = default;

    void cancel() {
        cancelled_ = true;
        auto watchers = std::move(watchers_);
        watchers_.clear();
        for (auto& [loop, w] : watchers) {
            loop->schedule(*w);
        }
    }
    [[nodiscard]] bool cancelled() const noexcept { return cancelled_; }

    // Used by with_cancel.
    void watch(event_loop& loop, detail::waiter& w) { watchers_.emplace_back(&loop, &w); }
    void unwatch(detail::waiter& w) noexcept {
        std::erase_if(watchers_, [&](const auto& p) { return p.second == &w; });
    }

private:
    bool cancelled_ = false;
    std::vector<std::pair<event_loop*, detail::waiter*>> watchers_;
};

namespace detail {
template <class T>
class cancel_awaiter final : public interruptible<T> {
public:
    cancel_awaiter(event_loop& loop, task<T> t, cancel_source& src) noexcept
        : interruptible<T>(loop, std::move(t), std::errc::operation_canceled), src_(&src) {}
    ~cancel_awaiter() override { src_->unwatch(*this); }
    cancel_awaiter(cancel_awaiter&&) = delete;

private:
    void on_suspend() override {
        if (src_->cancelled()) {
            this->loop().schedule(*this);
        } else {
            src_->watch(this->loop(), *this);
        }
    }
    void on_resume() noexcept override { src_->unwatch(*this); }
    cancel_source* src_;
};
} // namespace detail

// co_await with_cancel(loop, t, source): t's value as a result, or operation_canceled
// once source.cancel() is called (t is then destroyed where it was suspended).
template <class T>
auto with_cancel(event_loop& loop, task<T> t, cancel_source& source) {
    return detail::cancel_awaiter<T>(loop, std::move(t), source);
}

} // namespace zcio
