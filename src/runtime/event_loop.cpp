// event_loop: run queue, timers, cross-thread posts and the spawned-task list.
#include <zcio/event_loop.hpp>

#include "runtime/poll_backend.hpp"

#include <zcio/slab.hpp>
#include <zcio/sys.hpp>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <vector>

namespace zcio {

namespace {
thread_local event_loop* current_loop = nullptr;
} // namespace

// ---- waiters ----

namespace detail {

waiter::~waiter() {
    if (loop_ != nullptr) {
        loop_->unqueue(*this);
    }
}

timer_node::~timer_node() {
    disarm();
}

void timer_node::arm(event_loop& loop, clock::time_point deadline) {
    disarm();
    deadline_ = deadline;
    timer_loop_ = &loop;
    loop.add_timer(*this);
}

void timer_node::disarm() noexcept {
    if (timer_loop_ != nullptr) {
        timer_loop_->remove_timer(*this);
        timer_loop_ = nullptr;
    }
}

io_waiter::~io_waiter() {
    if (handle_ != nullptr) {
        handle_->unpark(this);
    }
}

void report_unhandled(const std::exception_ptr& e) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& ex) {
        std::fprintf(stderr, "zcio: a spawned task ended with an exception: %s\n", ex.what());
    } catch (...) {
        std::fprintf(stderr, "zcio: a spawned task ended with an unknown exception\n");
    }
}

} // namespace detail

// ---- io_handle ----

void io_handle::park(io_direction d, detail::io_waiter* w) noexcept {
    auto& slot = d == io_direction::read ? reader_ : writer_;
    // One waiter per direction: a second concurrent reader is a caller bug, and the
    // first one would never be woken; cancel it rather than lose it silently.
    if (slot != nullptr && slot != w) {
        slot->handle_ = nullptr;
        slot->cancel(std::errc::device_or_resource_busy);
        loop_->schedule(*slot);
    }
    slot = w;
    w->handle_ = this;
    // Readiness may have arrived between the EAGAIN and now only if something else
    // ran in between; honour the cache so such an edge is not lost.
    if (ready(d) && pollable_) {
        slot = nullptr;
        w->handle_ = nullptr;
        loop_->schedule(*w);
        return;
    }
    if (pollable_) {
        loop_->backend_->arm(*this, d);
    }
}

void io_handle::unpark(detail::io_waiter* w) noexcept {
    if (reader_ == w) {
        reader_ = nullptr;
        if (pollable_) {
            loop_->backend_->disarm(*this, io_direction::read);
        }
    }
    if (writer_ == w) {
        writer_ = nullptr;
        if (pollable_) {
            loop_->backend_->disarm(*this, io_direction::write);
        }
    }
    w->handle_ = nullptr;
}

// Two per proxied connection, idle ones included (docs/BENCHMARKS.md, idle memory).
static_assert(sizeof(io_handle) <= 32, "io_handle grew: pack new state into its bit-fields");

std::uint64_t event_loop::idle_wakeups() const noexcept {
    return backend_->idle_wakeups();
}

bool io_handle::on_event(bool readable, bool writable, bool rdhup, bool error) noexcept {
    bool woke = false;
    // An error or hang-up makes both directions "ready": the next syscall reports it.
    if (readable || rdhup || error) {
        can_read_ = true;
        if (reader_ != nullptr) {
            auto* w = std::exchange(reader_, nullptr);
            w->handle_ = nullptr;
            loop_->schedule(*w);
            woke = true;
        }
    }
    if (writable || error) {
        can_write_ = true;
        if (writer_ != nullptr) {
            auto* w = std::exchange(writer_, nullptr);
            w->handle_ = nullptr;
            loop_->schedule(*w);
            woke = true;
        }
    }
    rdhup_ = rdhup_ || rdhup;
    return woke;
}

void io_handle::forget() noexcept {
    if (fd_ < 0) {
        return;
    }
    if (loop_ == nullptr) { // unwatched(): no registration, and nothing parks on it
        fd_ = -1;
        return;
    }
    if (pollable_) {
        loop_->backend_->remove(*this);
        --loop_->registered_;
    }
    fd_ = -1;
    for (auto* w : {std::exchange(reader_, nullptr), std::exchange(writer_, nullptr)}) {
        if (w != nullptr) {
            w->handle_ = nullptr;
            w->cancel(std::errc::operation_canceled);
            if (!loop_->destroying_) {
                loop_->schedule(*w);
            }
        }
    }
}

// ---- event_loop ----

struct event_loop::post_queue {
    unique_fd wake_fd;
    std::mutex mutex;
    std::vector<std::function<void()>> items;
    std::vector<std::function<void()>> running;
    std::atomic<bool> wake_pending{false};

    void wake() noexcept {
        // One eventfd write per batch of posts: later posts see wake_pending and skip it.
        if (!wake_pending.exchange(true, std::memory_order_acq_rel)) {
            std::uint64_t one = 1;
            (void)sys::write(wake_fd.get(), &one, sizeof one);
        }
    }
};

// Writing to a socket whose peer has gone raises SIGPIPE, which kills the process by
// default; splice and sendfile have no MSG_NOSIGNAL to avoid it. A process that runs
// a loop gets EPIPE as an error value instead. A handler the program installed itself
// is left alone.
void ignore_sigpipe_once() noexcept {
    static const bool done = [] {
        struct sigaction old {};
        if (::sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
            struct sigaction ign {};
            ign.sa_handler = SIG_IGN;
            ::sigaction(SIGPIPE, &ign, nullptr);
        }
        return true;
    }();
    (void)done;
}

event_loop::event_loop() : posts_(std::make_unique<post_queue>()) {
    ignore_sigpipe_once();
    auto efd = sys::eventfd();
    if (!efd) {
        throw std::system_error(name_op("eventfd", efd.error()));
    }
    posts_->wake_fd = std::move(*efd);
    auto backend = detail::make_epoll_backend(posts_->wake_fd.get());
    if (!backend) {
        throw std::system_error(backend.error());
    }
    backend_ = std::move(*backend);
}

event_loop::~event_loop() {
    // Destroy suspended spawned tasks first, while the backend still exists: their
    // frames own streams whose io_handles unregister from it.
    destroying_ = true;
    while (roots_ != nullptr) {
        roots_->handle().destroy(); // the promise's destructor unlinks and frees the root
    }
    while (head_ != nullptr) {
        unqueue(*head_);
    }
    for (auto* t : timers_) {
        t->timer_loop_ = nullptr;
    }
    timers_.clear();
}

event_loop* event_loop::current() noexcept {
    return current_loop;
}

std::size_t io_handles_alive() noexcept {
    return io_handle::alive();
}

io_handle_ptr io_handle::unwatched(int fd, bool pollable) {
    return io_handle_ptr(new io_handle(nullptr, fd, pollable));
}

result<io_handle_ptr> event_loop::watch(int fd) {
    io_handle_ptr h(new io_handle(this, fd, true));
    auto added = backend_->add(*h);
    if (!added) {
        h->fd_ = -1; // not registered: nothing to remove
        return fail(added.error());
    }
    h->pollable_ = *added;
    if (h->pollable_) {
        ++registered_;
    }
    return h;
}

void event_loop::schedule(detail::waiter& w) noexcept {
    if (w.loop_ != nullptr) {
        return;
    }
    w.loop_ = this;
    w.next_ = nullptr;
    w.prev_ = tail_;
    if (tail_ != nullptr) {
        tail_->next_ = &w;
    } else {
        head_ = &w;
    }
    tail_ = &w;
    ++queued_;
}

void event_loop::unqueue(detail::waiter& w) noexcept {
    if (w.prev_ != nullptr) {
        w.prev_->next_ = w.next_;
    } else {
        head_ = w.next_;
    }
    if (w.next_ != nullptr) {
        w.next_->prev_ = w.prev_;
    } else {
        tail_ = w.prev_;
    }
    w.next_ = w.prev_ = nullptr;
    w.loop_ = nullptr;
    --queued_;
}

void event_loop::add_timer(detail::timer_node& t) noexcept {
    t.seq_ = timer_seq_++;
    timers_.insert(&t);
}

void event_loop::remove_timer(detail::timer_node& t) noexcept {
    timers_.erase(&t);
}

void event_loop::run_ready() noexcept {
    // Run only what is queued now: a coroutine that yields goes to the back and runs
    // next iteration, after the poller had a look, so yielding is fair.
    for (std::size_t n = queued_; n > 0 && head_ != nullptr; --n) {
        detail::waiter* w = head_;
        unqueue(*w);
        w->wake(); // may destroy w
    }
}

void event_loop::expire_timers() noexcept {
    const auto now = clock::now();
    while (!timers_.empty()) {
        detail::timer_node* t = *timers_.begin();
        if (t->deadline_ > now) {
            break;
        }
        timers_.erase(timers_.begin());
        t->timer_loop_ = nullptr;
        schedule(*t);
    }
}

int event_loop::next_timeout_ms() const noexcept {
    if (head_ != nullptr || stop_.load(std::memory_order_relaxed)) {
        return 0;
    }
    if (timers_.empty()) {
        return -1;
    }
    auto left = (*timers_.begin())->deadline_ - clock::now();
    if (left <= clock::duration::zero()) {
        return 0;
    }
    // Round up: waking a little late is fine, waking early just spins once more.
    auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
    return ms > 1'000'000 ? 1'000'000 : static_cast<int>(ms);
}

void event_loop::run_posted() {
    // Clear the flag before taking the batch: a post that lands after the swap then
    // writes the eventfd again, so it is never stranded.
    std::uint64_t count = 0;
    (void)sys::read(posts_->wake_fd.get(), &count, sizeof count);
    posts_->wake_pending.store(false, std::memory_order_release);
    {
        std::lock_guard lock(posts_->mutex);
        posts_->running.swap(posts_->items);
    }
    for (auto& fn : posts_->running) {
        try {
            fn();
        } catch (...) {
            detail::report_unhandled(std::current_exception());
        }
    }
    posts_->running.clear();
}

void event_loop::post(std::function<void()> fn) {
    {
        std::lock_guard lock(posts_->mutex);
        posts_->items.push_back(std::move(fn));
    }
    posts_->wake();
}

void event_loop::stop() noexcept {
    stop_.store(true, std::memory_order_release);
    posts_->wake();
}

result<void> event_loop::run() {
    event_loop* outer = std::exchange(current_loop, this);
    result<void> out;
    while (true) {
        if (head_ != nullptr && busy_poll_ != clock::duration::zero()) {
            last_work_ = clock::now(); // only spin() reads it
        }
        run_ready();
        if (stop_.load(std::memory_order_acquire)) {
            break;
        }
        int timeout = next_timeout_ms();
        if (timeout != 0 && spin(timeout)) {
            timeout = 0; // something came while spinning: collect the rest, do not block
        }
        auto woke = backend_->poll(timeout);
        if (!woke) {
            out = fail(woke.error());
            break;
        }
        expire_timers();
        if (*woke || std::exchange(posts_woke_, false)) {
            run_posted();
        }
    }
    stop_.store(false, std::memory_order_relaxed);
    current_loop = outer;
    return out;
}

bool event_loop::spin(int timeout_ms) noexcept {
    if (busy_poll_ == clock::duration::zero()) {
        return false;
    }
    // Only right after work: an idle loop blocks at once, so busy polling costs CPU
    // only while traffic flows (at most busy_poll_ after each burst of work), and
    // never past the next timer.
    auto until = last_work_ + busy_poll_;
    if (timeout_ms > 0) {
        until = std::min(until, clock::now() + std::chrono::milliseconds(timeout_ms));
    }
    while (clock::now() < until && !stop_.load(std::memory_order_relaxed)) {
        auto woke = backend_->poll(0);
        if (woke && *woke) {
            // The wake-up fd is read: the posts must run now, as no poll reports it again.
            posts_woke_ = true;
        }
        if (!woke || *woke || head_ != nullptr) {
            return true; // an error is reported by the poll that follows
        }
    }
    return false;
}

void event_loop::add_root(spawned_root* r) noexcept {
    ++spawned_;
    r->next = roots_;
    r->prev = nullptr;
    if (roots_ != nullptr) {
        roots_->prev = r;
    }
    roots_ = r;
}

void event_loop::remove_root(spawned_root* r) noexcept {
    if (r->prev != nullptr) {
        r->prev->next = r->next;
    } else if (roots_ == r) {
        roots_ = r->next;
    } else {
        return; // never added
    }
    if (r->next != nullptr) {
        r->next->prev = r->prev;
    }
    --spawned_;
}

} // namespace zcio
