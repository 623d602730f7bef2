// pipe_pool: bounded, per-loop reuse of kernel pipes for splice, leased RAII-style.
//
// Why pool pipes: splice between two sockets needs a pipe in the middle, and making
// one costs pipe2() plus fcntl(F_SETPIPE_SZ) plus two descriptors. A pool keeps a few
// empty pipes for the next transfer, and a lease gives a pipe back only when it is
// empty, so bytes of one transfer can never leak into another (Go `putPipe`, HAProxy
// `put_pipe` in src/pipe.c).
//
// Threading: one pool per event loop; nothing here is synchronised unless
// options::synchronized asks for a mutex.
#pragma once

#include <zcio/result.hpp>
#include <zcio/sys.hpp>
#include <zcio/unique_fd.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

namespace zcio {

class pipe_pool;

struct pipe_pool_options {
    // Size asked of F_SETPIPE_SZ for every new pipe; 0 keeps the kernel's default
    // (16 pages). The kernel rounds up to a power-of-two number of pages.
    std::size_t pipe_size = std::size_t{1} << 20;
    // Empty pipes kept for reuse; a clean pipe given back beyond this is closed.
    std::size_t max_idle = 64;
    // Cap on pipes leased plus idle. 0 means the pool hands out none (every lease()
    // fails, so callers take their buffered path).
    std::size_t max_total = SIZE_MAX;
    // How a pipe is made. Tests replace it to make creation fail; empty means sys::pipe.
    std::function<result<sys::pipe_pair>()> make_pipe = sys::pipe;
    // Lock a mutex in lease(), in give-backs and in stats(), so that leases may be
    // taken and returned on any thread (transfer_pools::shared(), for drivers whose
    // steps move between threads). Off: one pool per loop, nothing synchronised.
    bool synchronized = false;
};

// Counters, for tests and metrics. Every pipe ever created is, at any moment, exactly
// one of: leased, idle, discarded or trimmed (created == leased + idle + discarded + trimmed).
struct pipe_pool_stats {
    std::uint64_t created = 0;         // pipes made with make_pipe
    std::size_t leased = 0;            // held by leases now
    std::uint64_t lent = 0;            // leases handed out, ever (activity)
    std::size_t idle = 0;              // empty, in the pool now
    std::uint64_t discarded = 0;       // closed while holding bytes (or release_dirty())
    std::uint64_t trimmed = 0;         // closed empty because max_idle were already idle
    std::uint64_t undersized = 0;      // created smaller than pipe_size (kernel refused)
    std::uint64_t create_failures = 0; // make_pipe (pipe2) failed: EMFILE, ENFILE, ...
    std::uint64_t refused = 0;         // lease() failed because of max_total
};

// One pipe borrowed from a pool. Move-only; an empty lease (default-constructed or
// moved from) owns nothing.
//
// The user keeps `buffered` equal to the bytes now in the pipe: += n after a splice
// into write_fd(), -= n after a splice out of read_fd(). On destruction (or reset()),
// an empty pipe goes back to the pool; a pipe with bytes in it is closed and counted
// as discarded, because whoever leases it next would read someone else's bytes.
//
// The pool must outlive its leases (asserted in debug builds by ~pipe_pool).
class pipe_lease {
public:
    pipe_lease() noexcept = default;
    pipe_lease(pipe_lease&& other) noexcept;
    pipe_lease& operator=(pipe_lease&& other) noexcept;
    pipe_lease(const pipe_lease&) = delete;
    pipe_lease& operator=(const pipe_lease&) = delete;
    ~pipe_lease() { reset(); }

    // Bytes now in the pipe, kept up to date by the user of the lease.
    std::size_t buffered = 0;

    [[nodiscard]] bool valid() const noexcept { return pool_ != nullptr; }
    explicit operator bool() const noexcept { return valid(); }

    [[nodiscard]] int read_fd() const noexcept { return pipe_.read_end.get(); }
    [[nodiscard]] int write_fd() const noexcept { return pipe_.write_end.get(); }
    // The size the kernel granted (F_GETPIPE_SZ), which may be below the pool's
    // pipe_size when the kernel refused to grow it.
    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    // Asks the kernel for a pipe of `bytes` (F_SETPIPE_SZ) and keeps capacity() true to
    // what it granted, also once the pipe is back in the pool. Fails as the kernel does
    // (EPERM over pipe-max-size or the user's quota, EBUSY below what the pipe holds).
    result<std::size_t> resize(std::size_t bytes) noexcept;

    // Ends the lease now, as the destructor would: back to the pool when empty,
    // closed and counted as discarded when `buffered` > 0.
    void reset() noexcept;

    // Ends the lease by closing the pipe whatever it holds (after an error, when the
    // bytes in it are lost anyway or `buffered` cannot be trusted). Counted as discarded.
    void release_dirty() noexcept;

private:
    friend class pipe_pool;
    pipe_lease(pipe_pool& pool, sys::pipe_pair pipe, std::size_t capacity) noexcept
        : pool_(&pool), pipe_(std::move(pipe)), capacity_(capacity) {}

    pipe_pool* pool_ = nullptr;
    sys::pipe_pair pipe_;
    std::size_t capacity_ = 0;
};

// A bounded pool of empty, non-blocking, CLOEXEC pipes. Not copyable or movable:
// leases point back at it. Must outlive every lease it handed out.
class pipe_pool {
public:
    using options = pipe_pool_options;
    using stats_type = pipe_pool_stats;

    pipe_pool() : pipe_pool(options{}) {}
    explicit pipe_pool(options opts);
    pipe_pool(const pipe_pool&) = delete;
    pipe_pool& operator=(const pipe_pool&) = delete;
    ~pipe_pool();

    // Lends an empty pipe: the most recently returned idle one, else a new one.
    // Fails when max_total pipes are already out or idle (ENOBUFS, "pipe_pool: max_total")
    // or when the pipe cannot be made ("pipe2": EMFILE, ENFILE, ...). Any failure means
    // "no pipe now": the caller falls back to its buffered path.
    //
    // Growing a new pipe to pipe_size is best effort: the kernel refuses with EPERM when
    // the user is over fs.pipe-user-pages-soft (without CAP_SYS_RESOURCE) and with
    // EINVAL/EPERM past fs.pipe-max-size; the smaller pipe is kept, counted as undersized.
    result<pipe_lease> lease();

    [[nodiscard]] stats_type stats() const noexcept;
    [[nodiscard]] const options& config() const noexcept { return opts_; }

    // Closes every idle pipe (for example under descriptor pressure).
    void clear_idle() noexcept;

private:
    friend class pipe_lease;
    struct idle_pipe {
        sys::pipe_pair pipe;
        std::size_t capacity;
    };

    // Called by a lease that ends; `dirty` when the pipe may hold bytes.
    void give_back(sys::pipe_pair pipe, std::size_t capacity, bool dirty) noexcept;

    // Held when opts_.synchronized, else an empty lock.
    [[nodiscard]] std::unique_lock<std::mutex> guard() const noexcept;

    options opts_;
    mutable std::mutex mutex_;
    std::vector<idle_pipe> idle_; // LIFO: the warmest pipe is reused first
    stats_type stats_;
};

} // namespace zcio
