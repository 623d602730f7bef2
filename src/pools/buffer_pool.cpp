// buffer_pool: leasing and taking back buffers, pooled_read.
#include <zcio/buffer_pool.hpp>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <new>
#include <utility>

namespace zcio {

// ---- buffer_lease ----

buffer_lease::buffer_lease(buffer_lease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), buf_(std::move(other.buf_)),
      size_(std::exchange(other.size_, 0)) {}

buffer_lease& buffer_lease::operator=(buffer_lease&& other) noexcept {
    if (this != &other) {
        reset();
        pool_ = std::exchange(other.pool_, nullptr);
        buf_ = std::move(other.buf_);
        size_ = std::exchange(other.size_, 0);
    }
    return *this;
}

void buffer_lease::reset() noexcept {
    if (pool_ != nullptr) {
        std::exchange(pool_, nullptr)->give_back(std::move(buf_));
    }
    size_ = 0;
}

// ---- buffer_pool ----

buffer_pool::buffer_pool(options opts) : opts_(std::move(opts)) {}

std::unique_lock<std::mutex> buffer_pool::guard() const noexcept {
    return opts_.synchronized ? std::unique_lock<std::mutex>(mutex_)
                              : std::unique_lock<std::mutex>();
}

buffer_pool::~buffer_pool() {
    // A lease that outlives its pool would give its buffer back to freed memory.
    assert(stats_.leased == 0 && "zcio::buffer_pool destroyed while buffers are leased");
}

result<buffer_lease> buffer_pool::lease() {
    const auto lock = guard();
    // Reserve room now for every buffer that could come back, so give_back (which runs
    // in destructors and must not throw) never allocates.
    std::size_t could_return = std::min(opts_.max_idle, stats_.leased + idle_.size() + 1);
    if (idle_.capacity() < could_return) {
        try {
            idle_.reserve(std::max(could_return, std::min(opts_.max_idle, idle_.capacity() * 2)));
        } catch (const std::bad_alloc&) {
            return fail_op("buffer_pool: reserve", ENOMEM);
        }
    }

    if (!idle_.empty()) {
        auto buf = std::move(idle_.back());
        idle_.pop_back();
        ++stats_.leased;
        ++stats_.lent;
        return buffer_lease(*this, std::move(buf), opts_.buffer_size);
    }
    if (stats_.leased >= opts_.max_total) {
        ++stats_.refused;
        return fail_op("buffer_pool: max_total", ENOBUFS);
    }

    std::unique_ptr<std::byte[]> buf;
    if (opts_.allocate) {
        auto made = opts_.allocate(opts_.buffer_size);
        if (!made) {
            ++stats_.create_failures;
            return fail(name_op("buffer_pool: allocate", made.error()));
        }
        buf = std::move(*made);
    } else {
        try {
            // No value-initialisation: every byte is written by a read before it is used.
            buf = std::make_unique_for_overwrite<std::byte[]>(opts_.buffer_size);
        } catch (const std::bad_alloc&) {
            ++stats_.create_failures;
            return fail_op("buffer_pool: allocate", ENOMEM);
        }
    }
    ++stats_.created;
    ++stats_.leased;
    ++stats_.lent;
    return buffer_lease(*this, std::move(buf), opts_.buffer_size);
}

void buffer_pool::give_back(std::unique_ptr<std::byte[]> buf) noexcept {
    const auto lock = guard();
    assert(stats_.leased > 0);
    --stats_.leased;
    if (idle_.size() >= opts_.max_idle) {
        ++stats_.discarded;
        return; // `buf` is freed here
    }
    // Capacity was reserved by lease(), so this does not allocate.
    assert(idle_.size() < idle_.capacity());
    idle_.push_back(std::move(buf));
}

buffer_pool::stats_type buffer_pool::stats() const noexcept {
    const auto lock = guard();
    stats_type s = stats_;
    s.idle = idle_.size();
    return s;
}

void buffer_pool::clear_idle() noexcept {
    const auto lock = guard();
    stats_.discarded += idle_.size();
    idle_.clear();
}

// ---- pooled reads ----

namespace detail {

result<pooled_chunk> lease_and_read(int fd, buffer_pool& pool, std::size_t max, const char* op,
                                    off_t* offset) {
    auto lease = pool.lease();
    if (!lease) {
        return fail(lease.error());
    }
    auto buf = lease->data().first(std::min(max, lease->size()));
    if (buf.empty()) {
        return fail_op(op, EINVAL); // a zero-byte read would be taken for end of stream
    }
    auto n = offset != nullptr ? sys::pread(fd, buf.data(), buf.size(), *offset)
                               : sys::read(fd, buf.data(), buf.size());
    if (!n) {
        // EAGAIN keeps its meaning for io_op (wait and retry); the lease returns here.
        return fail(would_block(n) ? n.error() : name_op(op, n.error()));
    }
    if (offset != nullptr) {
        *offset += static_cast<off_t>(*n);
    }
    return pooled_chunk{std::move(*lease), *n};
}

} // namespace detail

task<result<std::vector<std::byte>>> pooled_read(stream& s, buffer_pool& pool, std::size_t max) {
    std::vector<std::byte> out;
    // The callback copies out while the bytes are still in the pool's buffer; the
    // vector is the only allocation, sized to what was read.
    auto n = co_await pooled_read_with(s, pool, max, [&out](std::span<const std::byte> bytes) {
        out.assign(bytes.begin(), bytes.end());
    });
    if (!n) {
        co_return fail(n.error()); // already names the operation that failed
    }
    co_return out;
}

} // namespace zcio
