// buffer_pool: bounded, per-loop reuse of I/O buffers, and reads that borrow them only
// while bytes are in hand (pooled_read, pooled_read_with; copy() on the buffer path is
// the pooled copy).
//
// Why: a connection that waits for data should hold no memory. These operations wait
// for readiness first, borrow a buffer only for the read (and the write that follows),
// and give it back at once, so an idle connection holds zero buffers (the
// async_io_bufpool idea; DESIGN.md, "memory follows data").
//
// Threading: one pool per event loop; nothing here is synchronised unless
// options::synchronized asks for a mutex.
#pragma once

#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/stream.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace zcio {

class buffer_pool;

struct buffer_pool_options {
    // Bytes in every buffer.
    std::size_t buffer_size = std::size_t{64} << 10;
    // Free buffers kept for reuse; a buffer given back beyond this is freed.
    std::size_t max_idle = 64;
    // Cap on buffers leased plus idle. 0 means the pool hands out none.
    std::size_t max_total = SIZE_MAX;
    // How a buffer of n bytes is allocated. Tests replace it to make allocation fail;
    // empty means std::make_unique_for_overwrite<std::byte[]>(n) (bad_alloc → ENOMEM).
    // (The `{}` lets `options{.buffer_size = n}` pass -Wmissing-field-initializers.)
    std::function<result<std::unique_ptr<std::byte[]>>(std::size_t)> allocate{};
    // Lock a mutex in lease(), in give-backs and in stats(), so that leases may be
    // taken and returned on any thread (transfer_pools::shared(), for drivers whose
    // steps move between threads). Off: one pool per loop, nothing synchronised.
    bool synchronized = false;
};

// Counters, for tests and metrics. Every buffer ever created is, at any moment, exactly
// one of: leased, idle or discarded (created == leased + idle + discarded).
struct buffer_pool_stats {
    std::uint64_t created = 0;         // buffers allocated
    std::size_t leased = 0;            // held by leases now
    std::uint64_t lent = 0;            // leases handed out, ever (activity)
    std::size_t idle = 0;              // in the pool now
    std::uint64_t discarded = 0;       // freed on return because max_idle were already idle
    std::uint64_t create_failures = 0; // allocation failed
    std::uint64_t refused = 0;         // lease() failed because of max_total
};

// One buffer borrowed from a pool. Move-only; an empty lease (default-constructed or
// moved from) owns nothing and data() is empty. Its bytes are uninitialised when
// leased (and may hold an earlier user's bytes: do not send what you did not write).
// The pool must outlive its leases (asserted in debug builds by ~buffer_pool).
class buffer_lease {
public:
    buffer_lease() noexcept = default;
    buffer_lease(buffer_lease&& other) noexcept;
    buffer_lease& operator=(buffer_lease&& other) noexcept;
    buffer_lease(const buffer_lease&) = delete;
    buffer_lease& operator=(const buffer_lease&) = delete;
    ~buffer_lease() { reset(); }

    [[nodiscard]] bool valid() const noexcept { return pool_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }

    [[nodiscard]] std::span<std::byte> data() const noexcept { return {buf_.get(), size_}; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }

    // Ends the lease now, as the destructor would: back to the pool (or freed).
    void reset() noexcept;

private:
    friend class buffer_pool;
    buffer_lease(buffer_pool& pool, std::unique_ptr<std::byte[]> buf, std::size_t size) noexcept
        : pool_(&pool), buf_(std::move(buf)), size_(size) {}

    buffer_pool* pool_ = nullptr;
    std::unique_ptr<std::byte[]> buf_;
    std::size_t size_ = 0;
};

// A bounded pool of equal-sized buffers. Not copyable or movable: leases point back
// at it. Must outlive every lease it handed out.
class buffer_pool {
public:
    using options = buffer_pool_options;
    using stats_type = buffer_pool_stats;

    buffer_pool() : buffer_pool(options{}) {}
    explicit buffer_pool(options opts);
    buffer_pool(const buffer_pool&) = delete;
    buffer_pool& operator=(const buffer_pool&) = delete;
    ~buffer_pool();

    // Lends a buffer of buffer_size bytes: the most recently returned idle one, else a
    // new one. Fails when max_total buffers are already out or idle (ENOBUFS,
    // "buffer_pool: max_total") or when allocation fails (ENOMEM).
    result<buffer_lease> lease();

    [[nodiscard]] stats_type stats() const noexcept;
    [[nodiscard]] const options& config() const noexcept { return opts_; }
    [[nodiscard]] std::size_t buffer_size() const noexcept { return opts_.buffer_size; }

    // Frees every idle buffer.
    void clear_idle() noexcept;

private:
    friend class buffer_lease;
    void give_back(std::unique_ptr<std::byte[]> buf) noexcept;

    // Held when opts_.synchronized, else an empty lock.
    [[nodiscard]] std::unique_lock<std::mutex> guard() const noexcept;

    options opts_;
    mutable std::mutex mutex_;
    std::vector<std::unique_ptr<std::byte[]>> idle_; // LIFO: the warmest buffer first
    stats_type stats_;
};

// ---- pooled reads ----
//
// Lifetime: these coroutines take the stream and the pool by reference, against the
// rule in task.hpp, because they are meant to be awaited at once
// (`co_await pooled_read(s, pool, n)`): the caller's stream and pool then outlive the
// call. Do not store the task to await later unless both surely outlive it.
//
// Cancellation: destroying a suspended call (with_timeout) holds no buffer while
// waiting for readability. Nothing is read after the frame is gone.
//
// Errors: `max` of 0 is EINVAL (a read of 0 bytes would look like end of stream); a
// closed stream is EBADF; closing it while a call waits ends that call with
// operation_canceled.
// A pool that refuses a lease (max_total, ENOMEM) fails the call: these functions
// never allocate a buffer outside the pool.

// Waits until `s` is readable holding no buffer, then reads at most
// min(max, buffer_size) bytes into a leased buffer and returns a copy of them; an
// empty vector means end of stream. The buffer is back in the pool when this returns.
task<result<std::vector<std::byte>>> pooled_read(stream& s, buffer_pool& pool, std::size_t max);

namespace detail {

// Bytes just read into a leased buffer: the first `n` bytes of `lease.data()`.
struct pooled_chunk {
    buffer_lease lease;
    std::size_t n = 0;
};

// Leases a buffer and reads at most `max` bytes from `fd` into it; read errors other
// than EAGAIN are named `op` (a literal). On any failure, EAGAIN included, the buffer
// is already back in the pool when this returns: that is what lets a parked read hold
// nothing. Used as the syscall step of an io_op, and by copy()'s buffer path. With
// `offset`, reads there (pread) and advances it by the bytes read.
result<pooled_chunk> lease_and_read(int fd, buffer_pool& pool, std::size_t max, const char* op,
                                    off_t* offset = nullptr);

} // namespace detail

// Like pooled_read, but lends the bytes to `fn(std::span<const std::byte>)` while they
// are still in the pool's buffer, so nothing is allocated. `fn` runs synchronously,
// must not keep the span, and is not called at end of stream. Returns the number of
// bytes read (0 = end of stream). An exception from `fn` propagates through the task.
template <class F>
task<result<std::size_t>> pooled_read_with(stream& s, buffer_pool& pool, std::size_t max, F fn) {
    if (max == 0) {
        co_return fail_op("pooled_read_with", EINVAL);
    }
    if (!s.is_open()) {
        co_return fail_op("pooled_read_with", EBADF);
    }
    // io_op makes the read first and parks only on EAGAIN; the lease is taken inside
    // the syscall step and given back on EAGAIN, so no buffer is held while parked.
    int fd = s.fd();
    buffer_pool* p = &pool;
    auto chunk = co_await io_op<detail::pooled_chunk>(s.handle(), io_direction::read, [fd, p, max] {
        return detail::lease_and_read(fd, *p, max, "pooled_read: read");
    });
    if (!chunk) {
        co_return fail(chunk.error());
    }
    if (chunk->n > 0) {
        fn(std::span<const std::byte>(chunk->lease.data().first(chunk->n)));
    }
    co_return chunk->n; // the buffer goes back as `chunk` dies, before the caller resumes
}

} // namespace zcio
