// event_loop: one per thread; readiness (through a poll backend: epoll, edge-triggered,
// today), timers, posts, spawn.
//
// Threading: everything here is for the loop's own thread, except post() and stop(),
// which any thread may call. Nothing is shared between loops.
//
// How a wait works: an awaitable first makes its system call; only on EAGAIN does it
// park itself on the fd's io_handle and suspend. Readiness is cached per fd, so an edge
// reported while nobody waited is not lost: the next operation tries the syscall.
// Every awaitable unhooks itself in its destructor, so destroying a suspended
// coroutine (cancellation) never leaves a dangling pointer in the loop.
#pragma once

#include <zcio/result.hpp>
#include <zcio/slab.hpp>
#include <zcio/task.hpp>

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <system_error>
#include <type_traits>
#include <utility>

namespace zcio {

class event_loop;
class io_handle;

using clock = std::chrono::steady_clock;

namespace detail {

class poll_backend;

// Something the loop can run: a parked coroutine, an expired timer, a spawned root.
// Intrusive, so queueing never allocates. Unlinks itself when destroyed.
class waiter {
public:
    waiter() noexcept = default;
    waiter(const waiter&) = delete;
    waiter& operator=(const waiter&) = delete;
    virtual ~waiter();

    // Called by the loop when this waiter reaches the front of the run queue.
    virtual void wake() = 0;

    [[nodiscard]] bool queued() const noexcept { return loop_ != nullptr; }

private:
    friend class zcio::event_loop;
    event_loop* loop_ = nullptr; // set while queued
    waiter* next_ = nullptr;
    waiter* prev_ = nullptr;
};

// A waiter with a deadline, kept in the loop's ordered timer set.
class timer_node : public waiter {
public:
    ~timer_node() override;

    [[nodiscard]] bool armed() const noexcept { return timer_loop_ != nullptr; }

protected:
    void arm(event_loop& loop, clock::time_point deadline);
    void disarm() noexcept;

private:
    friend class zcio::event_loop;
    friend struct timer_order;
    event_loop* timer_loop_ = nullptr;
    clock::time_point deadline_{};
    std::uint64_t seq_ = 0;
};

struct timer_order {
    bool operator()(const timer_node* a, const timer_node* b) const noexcept {
        return a->deadline_ != b->deadline_ ? a->deadline_ < b->deadline_ : a->seq_ < b->seq_;
    }
};

// Something parked on one direction of an fd. On wake-up it is either ready (error()
// empty) or cancelled: the fd was forgotten (operation_canceled) or a second waiter
// took the direction (device_or_resource_busy).
class io_waiter : public waiter {
public:
    ~io_waiter() override;

    [[nodiscard]] std::error_code error() const noexcept {
        return errno_ == 0 ? std::error_code{} : std::error_code(errno_, std::generic_category());
    }

protected:
    friend class zcio::io_handle;
    void cancel(std::errc why) noexcept { errno_ = static_cast<std::uint8_t>(why); }
    void clear_error() noexcept { errno_ = 0; }

    io_handle* handle_ = nullptr; // set while parked
    // The errno of the cancel, 0 if none: one byte, not an error_code (16), so that a
    // relay's two waiters are 48 bytes each. Both values it takes are below 256.
    std::uint8_t errno_ = 0;
};

// A waiter that resumes a coroutine (most awaitables): the handle is here, not in
// `waiter`, so that the relay's plain waiters do not carry one.
template <class Base>
class coroutine_waiter : public Base {
public:
    void wake() override { co_.resume(); }

protected:
    std::coroutine_handle<> co_;
};

} // namespace detail

enum class io_direction { read, write };

// The registration of one fd with a loop. Made by event_loop::watch(); destroying it
// (or forget()) removes the fd from the loop and resumes its waiters with
// operation_canceled. It does not own the fd: whoever owns the fd owns this too and
// must destroy it before closing the fd.
class io_handle final : public slab_allocated<io_handle> {
public:
    io_handle(const io_handle&) = delete;
    io_handle& operator=(const io_handle&) = delete;
    ~io_handle() { forget(); }

    [[nodiscard]] int fd() const noexcept { return fd_; }
    [[nodiscard]] event_loop& loop() const noexcept { return *loop_; }
    // Regular files (and anything epoll refuses with EPERM) are always ready.
    [[nodiscard]] bool pollable() const noexcept { return pollable_; }
    [[nodiscard]] bool forgotten() const noexcept { return fd_ < 0; }

    // Cached readiness: true until a syscall said EAGAIN, then false until an edge.
    [[nodiscard]] bool ready(io_direction d) const noexcept {
        return d == io_direction::read ? can_read_ : can_write_;
    }
    // The peer closed its writing side (EPOLLRDHUP) or the socket hung up.
    [[nodiscard]] bool peer_closed() const noexcept { return rdhup_; }

    // Records that the last syscall in direction `d` said EAGAIN.
    void clear_ready(io_direction d) noexcept {
        if (d == io_direction::read) {
            can_read_ = !pollable_;
        } else {
            can_write_ = !pollable_;
        }
    }

    // A handle that no loop watches, for an fd that another poller owns (an Asio
    // socket: stream_view). Its readiness is what clear_ready() and mark_ready() say;
    // nothing may park on it, and loop() must not be called.
    static std::unique_ptr<io_handle> unwatched(int fd, bool pollable);
    // Records that the owner's own poller saw the fd ready in direction `d`.
    void mark_ready(io_direction d) noexcept {
        if (d == io_direction::read) {
            can_read_ = true;
        } else {
            can_write_ = true;
        }
    }
    [[nodiscard]] bool watched() const noexcept { return loop_ != nullptr; }

    // Removes the fd from the loop and cancels its waiters. Idempotent.
    void forget() noexcept;

    // Suspends until the fd is ready in direction `d` (returns at once when the
    // cached readiness says so). Cancelled by forget(): then it returns
    // operation_canceled. At most one waiter per direction.
    auto wait(io_direction d) noexcept;

    // Parks `w` on direction `d`; used by the awaitables.
    void park(io_direction d, detail::io_waiter* w) noexcept;
    void unpark(detail::io_waiter* w) noexcept;

private:
    friend class event_loop;
    friend class detail::poll_backend;
    io_handle(event_loop* loop, int fd, bool pollable) noexcept
        : loop_(loop), fd_(fd), pollable_(pollable) {}

    // Called by the backend for an event on this fd. Returns whether it woke a waiter.
    bool on_event(bool readable, bool writable, bool rdhup, bool error) noexcept;

    event_loop* loop_;
    int fd_;
    // Bit-fields: with the backend's bits in the same byte a handle stays 32 bytes, and
    // there are two per proxied connection, idle ones included.
    bool pollable_ : 1;
    bool can_read_ : 1 = true;
    bool can_write_ : 1 = true;
    bool rdhup_ : 1 = false;
    // Per-handle state that only the backend interprets (epoll: the directions it
    // muted; a one-shot backend: its requests in flight). A few bits here rather than
    // a table in the backend: the hot path reads them on every event, with no lookup,
    // and a new backend gives them its own meaning without touching this class.
    std::uint8_t backend_bits_ : 4 = 0;
    detail::io_waiter* reader_ = nullptr;
    detail::io_waiter* writer_ = nullptr;
};

// Handles come from a process-wide slab (slab_allocated): an fd keeps its handle for
// as long as it is open, so packing them apart from short-lived coroutine frames lets
// the pages of those frames go back to the kernel. A forgotten handle may outlive its
// loop (a closed stream keeps its handle so late operations see operation_canceled).
using io_handle_ptr = std::unique_ptr<io_handle>;

// io_handles alive in the process (all loops): for leak checks in tests.
std::size_t io_handles_alive() noexcept;

// Sets SIGPIPE to SIG_IGN once per process if it is still at its default (every
// event_loop does; so does a stream_view, for drivers without a loop).
void ignore_sigpipe_once() noexcept;

class event_loop {
public:
    // Throws std::system_error if the kernel refuses an epoll fd or eventfd. The first
    // loop of a process sets SIGPIPE to SIG_IGN if it is still at its default, so a
    // write to a closed peer is an EPIPE error rather than the death of the process.
    event_loop();
    ~event_loop();
    event_loop(const event_loop&) = delete;
    event_loop& operator=(const event_loop&) = delete;

    // The loop running on this thread (null outside run()).
    static event_loop* current() noexcept;

    // Registers `fd` with the backend for both directions and peer half-close (epoll:
    // once, EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET). Regular files, which epoll refuses
    // with EPERM, get an always-ready handle.
    result<io_handle_ptr> watch(int fd);

    // Number of fds registered with the kernel right now.
    [[nodiscard]] std::size_t registered_count() const noexcept { return registered_; }
    // Waits that woke the loop for readiness nobody waited for. The backend then stops
    // watching those directions until a coroutine waits on them, so this stays small.
    [[nodiscard]] std::uint64_t idle_wakeups() const noexcept;

    // Runs until stop(). Returns an error only if the kernel fails the loop itself.
    result<void> run();
    // Any thread: makes run() return after the current iteration.
    void stop() noexcept;

    // Busy polling: after doing work, poll the kernel without sleeping for up to `d`
    // before blocking, so a reply that comes within `d` is picked up without a wake-up
    // (on virtual machines a sleeping core takes tens of microseconds to wake). Costs
    // CPU while traffic flows (up to one core per loop); an idle loop still blocks.
    // Zero (the default) turns it off. Call before run(), on the loop's thread.
    void set_busy_poll(clock::duration d) noexcept { busy_poll_ = d; }

    // Any thread: runs `fn` on the loop's thread, in order of posting. A post made
    // while the loop is busy (not waiting) still wakes it: the eventfd counter keeps
    // the wake-up until the loop reads it.
    void post(std::function<void()> fn);

    // Starts `t` on this loop (at the next iteration) and forgets it. `on_done` gets
    // the exception the task ended with, or null. Tasks still suspended when the loop
    // is destroyed are destroyed with it.
    template <class T>
    void spawn(task<T> t, std::function<void(std::exception_ptr)> on_done = {});

    // Runs the loop on this thread until `t` finishes; returns its value.
    template <class T>
    T block_on(task<T> t);

    // Number of spawned tasks that have not finished.
    [[nodiscard]] std::size_t spawned_count() const noexcept { return spawned_; }

    // Queues a waiter at the back of the run queue.
    void schedule(detail::waiter& w) noexcept;

    [[nodiscard]] clock::time_point now() const noexcept { return clock::now(); }

    // The detached coroutine behind spawn() (internal).
    struct spawned_root;

private:
    friend class detail::waiter;
    friend class detail::timer_node;
    friend class io_handle;
    struct post_queue;

    void unqueue(detail::waiter& w) noexcept;
    void add_timer(detail::timer_node& t) noexcept;
    void remove_timer(detail::timer_node& t) noexcept;
    void run_ready() noexcept;
    bool spin(int timeout_ms) noexcept;
    void expire_timers() noexcept;
    void run_posted();
    int next_timeout_ms() const noexcept;
    void add_root(spawned_root* r) noexcept;
    void remove_root(spawned_root* r) noexcept;
    static void report_exception(std::exception_ptr e) noexcept;

    std::unique_ptr<detail::poll_backend> backend_;
    std::unique_ptr<post_queue> posts_;
    detail::waiter* head_ = nullptr;
    detail::waiter* tail_ = nullptr;
    std::set<detail::timer_node*, detail::timer_order> timers_;
    std::uint64_t timer_seq_ = 0;
    clock::duration busy_poll_{};
    clock::time_point last_work_{};
    bool posts_woke_ = false; // spin() consumed the wake-up of a post
    std::size_t queued_ = 0;
    std::size_t registered_ = 0;
    std::size_t spawned_ = 0;
    spawned_root* roots_ = nullptr;
    std::atomic<bool> stop_{false};
    bool destroying_ = false;
};

// ---- awaitables ----

namespace detail {

struct ready_wait final : coroutine_waiter<io_waiter> {
    io_handle* h;
    io_direction dir;
    ready_wait(io_handle* handle, io_direction d) noexcept : h(handle), dir(d) {}
    bool await_ready() const noexcept { return h->forgotten() || h->ready(dir); }
    void await_suspend(std::coroutine_handle<> co) noexcept {
        co_ = co;
        h->park(dir, this);
    }
    result<void> await_resume() noexcept {
        // The error first: after a cancel the handle itself may already be gone.
        if (!error() && h->forgotten()) {
            cancel(std::errc::operation_canceled);
        }
        if (error()) {
            return fail(error());
        }
        return {};
    }
};

struct sleep_awaiter final : coroutine_waiter<timer_node> {
    event_loop* loop;
    clock::time_point deadline;
    sleep_awaiter(event_loop& l, clock::time_point d) noexcept : loop(&l), deadline(d) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> co) {
        co_ = co;
        arm(*loop, deadline);
    }
    void await_resume() const noexcept {}
};

struct yield_awaiter final : coroutine_waiter<waiter> {
    event_loop* loop;
    explicit yield_awaiter(event_loop& l) noexcept : loop(&l) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> co) noexcept {
        co_ = co;
        loop->schedule(*this);
    }
    void await_resume() const noexcept {}
};

// Makes a non-blocking syscall `op` (returning result<R>) and, while it says EAGAIN,
// parks on the fd and retries when the fd becomes ready. The syscall runs first;
// the coroutine suspends only on EAGAIN. Cancelled by forget(): operation_canceled.
// The caller's buffers must stay valid until the co_await completes (or the frame is
// destroyed, which unparks the operation; no syscall runs after that).
template <class R, class Op>
class io_operation final : public coroutine_waiter<io_waiter> {
public:
    io_operation(io_handle& h, io_direction d, Op op) : h_(&h), dir_(d), op_(std::move(op)) {}

    bool await_ready() {
        if (h_->forgotten()) {
            res_ = fail(std::make_error_code(std::errc::operation_canceled));
            return true;
        }
        if (h_->ready(dir_)) {
            res_ = op_();
            if (!would_block(res_)) {
                return true;
            }
            h_->clear_ready(dir_);
            if (!h_->pollable()) {
                return true; // nothing will ever wake us: report EAGAIN as it is
            }
        }
        return false;
    }
    void await_suspend(std::coroutine_handle<> co) noexcept {
        co_ = co;
        h_->park(dir_, this);
    }
    void wake() override {
        if (!error()) {
            res_ = op_();
            if (would_block(res_)) {
                h_->clear_ready(dir_);
                h_->park(dir_, this); // spurious wake-up: wait for the next edge
                return;
            }
        } else {
            res_ = fail(error());
        }
        co_.resume();
    }
    result<R> await_resume() { return std::move(res_); }

private:
    io_handle* h_;
    io_direction dir_;
    Op op_;
    result<R> res_{fail(std::make_error_code(std::errc::operation_canceled))};
};

} // namespace detail

inline auto io_handle::wait(io_direction d) noexcept {
    return detail::ready_wait{this, d};
}

// co_await readable(h) / writable(h): waits for readiness (see io_handle::wait).
inline auto readable(io_handle& h) noexcept {
    return h.wait(io_direction::read);
}
inline auto writable(io_handle& h) noexcept {
    return h.wait(io_direction::write);
}

// co_await io_op<size_t>(h, io_direction::read, [&] { return sys::read(...); })
template <class R, class Op>
auto io_op(io_handle& h, io_direction d, Op op) {
    return detail::io_operation<R, Op>(h, d, std::move(op));
}

// Suspends until `deadline` / for `d`. Destroying the waiting frame cancels the timer.
inline auto sleep_until(event_loop& loop, clock::time_point deadline) noexcept {
    return detail::sleep_awaiter{loop, deadline};
}
inline auto sleep_for(event_loop& loop, clock::duration d) noexcept {
    return detail::sleep_awaiter{loop, clock::now() + d};
}

// Lets every other ready coroutine and the poller run once before continuing: a copy
// loop calls it after a byte budget so one busy fd cannot starve the rest.
inline auto yield(event_loop& loop) noexcept {
    return detail::yield_awaiter{loop};
}

// ---- spawn and block_on ----

namespace detail {

// Prints what a spawned task without an on_done hook ended with.
void report_unhandled(const std::exception_ptr& e) noexcept;

template <class T>
using block_on_value = std::conditional_t<std::is_void_v<T>, bool, T>;

template <class T>
task<void> run_then_stop(event_loop& loop, task<T> inner, std::optional<block_on_value<T>>* out,
                         std::exception_ptr* error) {
    try {
        if constexpr (std::is_void_v<T>) {
            co_await std::move(inner);
            out->emplace(true);
        } else {
            out->emplace(co_await std::move(inner));
        }
    } catch (...) {
        *error = std::current_exception();
    }
    loop.stop();
}

} // namespace detail

// The detached coroutine behind spawn(): it owns the user's task, reports how it ended
// and frees itself. The loop keeps a list of them to destroy what is still suspended
// when the loop itself goes away.
struct event_loop::spawned_root final : detail::coroutine_waiter<detail::waiter> {
    struct promise_type {
        event_loop* loop;
        spawned_root* root = nullptr;

        template <class... A>
        explicit promise_type(event_loop& l, A&&... /*unused*/) noexcept : loop(&l) {}
        struct ref {
            using promise_type = event_loop::spawned_root::promise_type;
            spawned_root* root;
        };
        ref get_return_object() {
            root = new spawned_root(std::coroutine_handle<promise_type>::from_promise(*this));
            return ref{root};
        }
        std::suspend_always initial_suspend() noexcept { return {}; }
        std::suspend_never final_suspend() noexcept { return {}; }
        void return_void() noexcept {}
        void unhandled_exception() noexcept { std::terminate(); } // the body catches all
        ~promise_type() {
            loop->remove_root(root);
            delete root;
        }
    };

    explicit spawned_root(std::coroutine_handle<> h) noexcept { co_ = h; }
    [[nodiscard]] std::coroutine_handle<> handle() const noexcept { return co_; }

    spawned_root* next = nullptr;
    spawned_root* prev = nullptr;
};

namespace detail {
template <class T>
event_loop::spawned_root::promise_type::ref
run_spawned(event_loop& /*loop*/, task<T> t, std::function<void(std::exception_ptr)> on_done) {
    std::exception_ptr error;
    try {
        co_await t; // by reference: t still owns the frame, freed below
    } catch (...) {
        error = std::current_exception();
    }
    t.reset(); // free the task's frame before reporting
    if (on_done) {
        on_done(error);
    } else if (error) {
        report_unhandled(error);
    }
}
} // namespace detail

template <class T>
void event_loop::spawn(task<T> t, std::function<void(std::exception_ptr)> on_done) {
    spawned_root* root = detail::run_spawned<T>(*this, std::move(t), std::move(on_done)).root;
    add_root(root);
    schedule(*root);
}

template <class T>
T event_loop::block_on(task<T> t) {
    std::optional<detail::block_on_value<T>> out;
    std::exception_ptr error;
    task<void> wrapper = detail::run_then_stop<T>(*this, std::move(t), &out, &error);
    struct kick final : detail::coroutine_waiter<detail::waiter> {
        explicit kick(std::coroutine_handle<> h) noexcept { co_ = h; }
    } start{wrapper.handle()};
    schedule(start);
    if (auto ran = run(); !ran) {
        throw std::system_error(ran.error());
    }
    if (error) {
        std::rethrow_exception(error);
    }
    if (!out) {
        throw std::logic_error(
            "zcio::event_loop::block_on: the loop stopped before the task ended");
    }
    if constexpr (!std::is_void_v<T>) {
        return std::move(*out);
    }
}

} // namespace zcio
