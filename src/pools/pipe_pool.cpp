// pipe_pool: leasing, sizing and taking back pipes; see include/zcio/pipe_pool.hpp.
#include <zcio/pipe_pool.hpp>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <new>
#include <utility>

namespace zcio {

// ---- pipe_lease ----

pipe_lease::pipe_lease(pipe_lease&& other) noexcept
    : buffered(std::exchange(other.buffered, 0)), pool_(std::exchange(other.pool_, nullptr)),
      pipe_(std::move(other.pipe_)), capacity_(std::exchange(other.capacity_, 0)) {}

pipe_lease& pipe_lease::operator=(pipe_lease&& other) noexcept {
    if (this != &other) {
        reset();
        buffered = std::exchange(other.buffered, 0);
        pool_ = std::exchange(other.pool_, nullptr);
        pipe_ = std::move(other.pipe_);
        capacity_ = std::exchange(other.capacity_, 0);
    }
    return *this;
}

void pipe_lease::reset() noexcept {
    if (pool_ != nullptr) {
        std::exchange(pool_, nullptr)
            ->give_back(std::move(pipe_), std::exchange(capacity_, 0), buffered > 0);
    }
    buffered = 0;
}

void pipe_lease::release_dirty() noexcept {
    if (pool_ != nullptr) {
        std::exchange(pool_, nullptr)
            ->give_back(std::move(pipe_), std::exchange(capacity_, 0), true);
    }
    buffered = 0;
}

result<std::size_t> pipe_lease::resize(std::size_t bytes) noexcept {
    if (pool_ == nullptr) {
        return fail_op("pipe resize", EBADF);
    }
    auto granted = sys::set_pipe_size(write_fd(), bytes);
    if (granted) {
        capacity_ = *granted;
    }
    return granted;
}

// ---- pipe_pool ----

pipe_pool::pipe_pool(options opts) : opts_(std::move(opts)) {
    if (!opts_.make_pipe) {
        opts_.make_pipe = sys::pipe;
    }
}

std::unique_lock<std::mutex> pipe_pool::guard() const noexcept {
    return opts_.synchronized ? std::unique_lock<std::mutex>(mutex_)
                              : std::unique_lock<std::mutex>();
}

pipe_pool::~pipe_pool() {
    // A lease that outlives its pool would give its pipe back to freed memory.
    assert(stats_.leased == 0 && "zcio::pipe_pool destroyed while pipes are leased");
}

result<pipe_lease> pipe_pool::lease() {
    const auto lock = guard();
    // Reserve room now for every pipe that could come back, so give_back (which runs in
    // destructors and must not throw) never allocates.
    std::size_t could_return = std::min(opts_.max_idle, stats_.leased + idle_.size() + 1);
    if (idle_.capacity() < could_return) {
        try {
            idle_.reserve(std::max(could_return, std::min(opts_.max_idle, idle_.capacity() * 2)));
        } catch (const std::bad_alloc&) {
            return fail_op("pipe_pool: reserve", ENOMEM);
        }
    }

    if (!idle_.empty()) {
        idle_pipe p = std::move(idle_.back());
        idle_.pop_back();
        ++stats_.leased;
        ++stats_.lent;
        return pipe_lease(*this, std::move(p.pipe), p.capacity);
    }
    if (stats_.leased >= opts_.max_total) {
        ++stats_.refused;
        return fail_op("pipe_pool: max_total", ENOBUFS);
    }

    auto made = opts_.make_pipe();
    if (!made) {
        ++stats_.create_failures;
        return fail(name_op("pipe2", made.error()));
    }
    ++stats_.created;

    std::size_t capacity = 0;
    bool grown = false;
    if (opts_.pipe_size != 0) {
        // F_SETPIPE_SZ may also shrink (down to one page); either way it returns the
        // size granted, rounded up to a power-of-two number of pages (fcntl(2)).
        if (auto set = sys::set_pipe_size(made->write_end.get(), opts_.pipe_size)) {
            capacity = *set;
            grown = true;
        }
        // Refused (EPERM over fs.pipe-user-pages-soft without CAP_SYS_RESOURCE;
        // EINVAL/EPERM past fs.pipe-max-size; ENOMEM): keep the pipe as it is.
    }
    if (!grown) {
        auto size = sys::get_pipe_size(made->write_end.get());
        if (!size) {
            // Cannot happen for a pipe we just made; do not lend a pipe of unknown size.
            ++stats_.discarded;
            return fail(name_op("fcntl(F_GETPIPE_SZ)", size.error()));
        }
        capacity = *size;
    }
    if (capacity < opts_.pipe_size) {
        ++stats_.undersized;
    }
    ++stats_.leased;
    ++stats_.lent;
    return pipe_lease(*this, std::move(*made), capacity);
}

void pipe_pool::give_back(sys::pipe_pair pipe, std::size_t capacity, bool dirty) noexcept {
    const auto lock = guard();
    assert(stats_.leased > 0);
    --stats_.leased;
    if (dirty) {
        // Never lend a pipe that holds bytes: the next transfer would send them.
        ++stats_.discarded;
        return; // `pipe` closes here
    }
    if (idle_.size() >= opts_.max_idle) {
        ++stats_.trimmed;
        return;
    }
    // Capacity was reserved by lease(), so this does not allocate.
    assert(idle_.size() < idle_.capacity());
    idle_.push_back(idle_pipe{std::move(pipe), capacity});
}

pipe_pool::stats_type pipe_pool::stats() const noexcept {
    const auto lock = guard();
    stats_type s = stats_;
    s.idle = idle_.size();
    return s;
}

void pipe_pool::clear_idle() noexcept {
    const auto lock = guard();
    stats_.trimmed += idle_.size();
    idle_.clear();
}

} // namespace zcio
