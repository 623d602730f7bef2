// task<T>: the lazy coroutine every asynchronous zcio operation is written in.
//
// Lifetime rules (the compiler does not check them; reviews must):
//  - A task does nothing until it is awaited (or spawned). Destroying a task that was
//    never awaited frees its frame and its arguments.
//  - Coroutine parameters are taken BY VALUE. A reference parameter dangles as soon as
//    the caller's full expression ends, which for a lazy task is before it runs.
//  - Never write a capturing lambda that is a coroutine: the lambda object (and its
//    captures) dies before the coroutine body runs. Pass state as parameters instead.
//  - Destroying a task suspended inside a zcio awaitable is cancellation: every zcio
//    awaitable unhooks itself from the loop in its destructor, so nothing resumes a
//    destroyed frame. with_timeout() relies on this.
#pragma once

#include <atomic>
#include <coroutine>
#include <exception>
#include <optional>
#include <utility>

namespace zcio {

namespace detail {

// Frames alive right now, across all threads: tests use it to prove nothing leaks.
inline std::atomic<long> live_task_frames{0};

struct task_promise_base {
    std::coroutine_handle<> continuation;
    std::exception_ptr exception;

    task_promise_base() noexcept { live_task_frames.fetch_add(1, std::memory_order_relaxed); }
    ~task_promise_base() { live_task_frames.fetch_sub(1, std::memory_order_relaxed); }
    task_promise_base(const task_promise_base&) = delete;
    task_promise_base& operator=(const task_promise_base&) = delete;

    std::suspend_always initial_suspend() noexcept { return {}; }

    // Symmetric transfer: finishing resumes the awaiter without growing the stack.
    struct final_awaiter {
        bool await_ready() noexcept { return false; }
        template <class P>
        std::coroutine_handle<> await_suspend(std::coroutine_handle<P> self) noexcept {
            auto next = self.promise().continuation;
            return next ? next : std::noop_coroutine();
        }
        void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }

    void unhandled_exception() noexcept { exception = std::current_exception(); }
};

} // namespace detail

template <class T = void>
class [[nodiscard]] task {
public:
    struct promise_type : detail::task_promise_base {
        std::optional<T> value;

        task get_return_object() noexcept {
            return task(std::coroutine_handle<promise_type>::from_promise(*this));
        }
        template <class U>
        void return_value(U&& v) {
            value.emplace(std::forward<U>(v));
        }
    };
    using handle_type = std::coroutine_handle<promise_type>;

    task() noexcept = default;
    explicit task(handle_type h) noexcept : h_(h) {}
    task(task&& other) noexcept : h_(std::exchange(other.h_, {})) {}
    task& operator=(task&& other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, {});
        }
        return *this;
    }
    task(const task&) = delete;
    task& operator=(const task&) = delete;
    ~task() { reset(); }

    [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(h_); }
    [[nodiscard]] bool done() const noexcept { return h_ && h_.done(); }
    [[nodiscard]] handle_type handle() const noexcept { return h_; }

    // Destroys the frame wherever it is suspended (see the lifetime rules above).
    void reset() noexcept {
        if (h_) {
            std::exchange(h_, {}).destroy();
        }
    }

    // The value of a finished task; rethrows its exception.
    T take_result() {
        auto& p = h_.promise();
        if (p.exception) {
            std::rethrow_exception(p.exception);
        }
        // NOLINTNEXTLINE(bugprone-unchecked-optional-access): return_value set it
        return std::move(*p.value);
    }

    auto operator co_await() && noexcept { return awaiter{h_}; }
    auto operator co_await() & noexcept { return awaiter{h_}; }

private:
    struct awaiter {
        handle_type h;
        bool await_ready() const noexcept { return !h || h.done(); }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
            h.promise().continuation = awaiting;
            return h;
        }
        T await_resume() {
            auto& p = h.promise();
            if (p.exception) {
                std::rethrow_exception(p.exception);
            }
            // NOLINTNEXTLINE(bugprone-unchecked-optional-access): return_value set it
            return std::move(*p.value);
        }
    };

    handle_type h_;
};

template <>
class [[nodiscard]] task<void> {
public:
    struct promise_type : detail::task_promise_base {
        task get_return_object() noexcept {
            return task(std::coroutine_handle<promise_type>::from_promise(*this));
        }
        void return_void() noexcept {}
    };
    using handle_type = std::coroutine_handle<promise_type>;

    task() noexcept = default;
    explicit task(handle_type h) noexcept : h_(h) {}
    task(task&& other) noexcept : h_(std::exchange(other.h_, {})) {}
    task& operator=(task&& other) noexcept {
        if (this != &other) {
            reset();
            h_ = std::exchange(other.h_, {});
        }
        return *this;
    }
    task(const task&) = delete;
    task& operator=(const task&) = delete;
    ~task() { reset(); }

    [[nodiscard]] bool valid() const noexcept { return static_cast<bool>(h_); }
    [[nodiscard]] bool done() const noexcept { return h_ && h_.done(); }
    [[nodiscard]] handle_type handle() const noexcept { return h_; }

    void reset() noexcept {
        if (h_) {
            std::exchange(h_, {}).destroy();
        }
    }

    void take_result() {
        if (h_.promise().exception) {
            std::rethrow_exception(h_.promise().exception);
        }
    }

    auto operator co_await() && noexcept { return awaiter{h_}; }
    auto operator co_await() & noexcept { return awaiter{h_}; }

private:
    struct awaiter {
        handle_type h;
        bool await_ready() const noexcept { return !h || h.done(); }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
            h.promise().continuation = awaiting;
            return h;
        }
        void await_resume() {
            if (h.promise().exception) {
                std::rethrow_exception(h.promise().exception);
            }
        }
    };

    handle_type h_;
};

// Frames of task<> coroutines alive in this process (for leak tests).
inline long live_task_frames() noexcept {
    return detail::live_task_frames.load(std::memory_order_relaxed);
}

} // namespace zcio
