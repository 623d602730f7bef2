// buffer_pool: leasing and taking back buffers, pooled_read and pooled_copy.
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

buffer_pool::~buffer_pool() {
    // A lease that outlives its pool would give its buffer back to freed memory.
    assert(stats_.leased == 0 && "zcio::buffer_pool destroyed while buffers are leased");
}

result<buffer_lease> buffer_pool::lease() {
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
    stats_type s = stats_;
    s.idle = idle_.size();
    return s;
}

void buffer_pool::clear_idle() noexcept {
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

task<result<std::uint64_t>> pooled_copy(stream& src, stream& dst, buffer_pool& pool,
                                        pooled_copy_options opts) {
    if (!src.is_open() || !dst.is_open()) {
        co_return fail_op("pooled_copy", EBADF);
    }
    std::uint64_t copied = 0;
    std::size_t since_yield = 0;
    // Invariant: a buffer is held only between a read that returned bytes and the end
    // of the write of those bytes; every wait for readability holds none (the read
    // step gives its lease back on EAGAIN before io_op parks).
    const int src_fd = src.fd();
    buffer_pool* p = &pool;
    while (!opts.limit || copied < *opts.limit) {
        std::size_t want = pool.buffer_size();
        if (opts.limit) {
            want = static_cast<std::size_t>(std::min<std::uint64_t>(want, *opts.limit - copied));
        }
        auto chunk = co_await io_op<detail::pooled_chunk>(
            src.handle(), io_direction::read, [src_fd, p, want] {
                return detail::lease_and_read(src_fd, *p, want, "pooled_copy: read");
            });
        if (!chunk) {
            co_return fail(chunk.error());
        }
        if (chunk->n == 0) {
            break; // end of stream
        }
        // write_some rather than write_all so the count is exact after a failed write.
        for (auto rest = chunk->lease.data().first(chunk->n); !rest.empty();) {
            auto w = co_await dst.write_some(rest);
            if (!w) {
                co_return fail(name_op("pooled_copy: write", w.error()));
            }
            rest = rest.subspan(*w);
            copied += *w;
            if (opts.progress != nullptr) {
                *opts.progress += *w;
            }
        }
        since_yield += chunk->n;
        chunk->lease.reset();
        if (opts.yield_budget != 0 && since_yield >= opts.yield_budget) {
            since_yield = 0;
            co_await yield(src.loop());
        }
    }
    co_return copied;
}

} // namespace zcio
