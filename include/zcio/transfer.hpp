// transfer: one direction of a copy as a plain object that any driver can run.
//
// A transfer owns everything one direction needs between system calls: the path (with
// the automatic choice, the fall-back and the buffer→splice upgrade), the pipe or
// buffer lease, the counts, the remaining limit, the rate limiter and the file offsets.
// step() makes system calls until it must wait and says what for; the driver waits
// however it likes (copy() with co_await, relay with plain waiters) and calls step()
// again. No coroutine and no allocation per call: leases come from the pools and are
// held only while bytes are in hand, so a transfer waiting for its source holds nothing.
#pragma once

#include <zcio/buffer_pool.hpp>
#include <zcio/copy_path.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/pipe_pool.hpp>
#include <zcio/stream.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <system_error>

#include <sys/types.h>

namespace zcio {

// The two pools a copy borrows from. One per event loop; never shared across threads.
struct transfer_pools {
    pipe_pool pipes;
    buffer_pool buffers;

    // The calling thread's pools (made on first use with default options).
    static transfer_pools& for_this_thread();
    // One process-wide pair of synchronized pools (default sizes), never destroyed:
    // for drivers whose steps may run on any thread, such as zcio/asio.hpp on an
    // io_context that several threads run. A lease may end on another thread than the
    // one that took it.
    static transfer_pools& shared();
};

// Token bucket for rate limits in bytes per second: the next read or splice is cut to
// what the bucket allows, and the copy sleeps when it is empty. Works with every path.
class rate_limiter {
public:
    // Unlimited (not explicit, so arrays of limiters can be value-initialized).
    rate_limiter() noexcept : rate_limiter(0) {}
    // `bytes_per_second` 0 means unlimited. `burst` defaults to a tenth of a second.
    explicit rate_limiter(std::uint64_t bytes_per_second, std::uint64_t burst = 0) noexcept;

    [[nodiscard]] bool unlimited() const noexcept { return rate_ == 0; }
    // How many of `want` bytes may move now (0: wait until ready_at()).
    std::size_t allow(std::size_t want, clock::time_point now) noexcept;
    // Records `n` bytes that moved.
    void consume(std::size_t n) noexcept;
    // When the next quantum (min of the request, the burst and 64 KiB) may move.
    [[nodiscard]] clock::time_point ready_at(clock::time_point now) const noexcept;

private:
    void refill(clock::time_point now) noexcept;
    std::uint64_t rate_;
    double burst_;
    double tokens_;
    clock::time_point last_{};
};

// copy_options::max_chunk: its default, and the largest length copy() passes to one
// system call.
inline constexpr std::size_t default_max_chunk = std::size_t{1} << 20;
inline constexpr std::size_t max_chunk_limit = std::size_t{1} << 30;

// The length bound copy() really uses for a requested max_chunk: 0 means the default
// (1 MiB), anything above max_chunk_limit is cut to it.
constexpr std::size_t effective_max_chunk(std::size_t requested) noexcept {
    if (requested == 0) {
        return default_max_chunk;
    }
    return requested < max_chunk_limit ? requested : max_chunk_limit;
}

struct copy_options {
    // Bytes to copy at most; std::nullopt = until end of stream. 0 copies nothing.
    std::optional<std::uint64_t> limit{};
    // Force a path (tests, benchmarks). A refused path still falls back to the buffer
    // path as long as no byte has moved.
    copy_path path = copy_path::automatic;
    // Size asked of pooled pipes; 0 = the pool's size.
    std::size_t pipe_size = 0;
    // Upper bound for one splice/sendfile/copy_file_range call. Larger values are cut
    // to max_chunk_limit (1 GiB): some kernels reject huge lengths such as SIZE_MAX
    // with EINVAL. 0 means the default.
    std::size_t max_chunk = default_max_chunk;
    // After this many bytes the copy yields to the loop even if both fds stay ready,
    // so one busy connection cannot starve the others under edge triggering.
    std::size_t yield_budget = std::size_t{4} << 20;
    // Explicit file offsets (pread/pwrite style: the fd's own offset is not moved).
    // Without them a file is read or written at its current offset, which is left
    // after the last byte, as read(2)/write(2) would.
    std::optional<off_t> src_offset{};
    std::optional<off_t> dst_offset{};
    // Optional: bytes are added here as they move (metrics, idle detection). Must
    // outlive the copy.
    std::uint64_t* progress = nullptr;
    // Optional rate limit (must outlive the copy).
    rate_limiter* limiter = nullptr;
    // Pools to borrow from; null = transfer_pools::for_this_thread().
    transfer_pools* pools = nullptr;
};

struct copy_result {
    std::uint64_t bytes = 0;               // bytes written to dst, also on error
    copy_path path = copy_path::automatic; // path that moved the bytes (the last one)
    std::error_code error;                 // empty on success (end of stream or limit)

    [[nodiscard]] bool ok() const noexcept { return !error; }
};

// The path copy() would try first for these two fds (automatic selection).
copy_path choose_path(const stream& dst, const stream& src, const copy_options& opts);

// One direction: `src` to `dst`, by the rules of copy() (see copy.hpp). Both streams,
// the pools and the limiter must outlive it. Not movable: a driver keeps it in place.
class transfer {
public:
    // What step() stopped for.
    enum class wait : std::uint8_t {
        readable, // the source has nothing now: wait for src.handle() readable
        writable, // the destination is full: wait for dst.handle() writable
        until,    // the rate limit: call again at wake_at()
        yield,    // the byte budget is spent: let others run, then call again
        done,     // end of stream or limit; result() is final
        failed,   // result().error says why; the counts are kept
    };

    // The ends are looked at (their kinds choose the path), not kept.
    transfer(const stream& dst, const stream& src, const copy_options& opts);
    transfer(const transfer&) = delete;
    transfer& operator=(const transfer&) = delete;
    ~transfer();

    // Makes system calls until the transfer must wait, ends or fails (after done or
    // failed it keeps answering the same).
    // The same two streams on every call: a transfer does not keep pointers to its
    // ends (a relay holds them already, and two pointers per direction are 32 bytes
    // on every idle proxied connection).
    wait step(stream& dst, stream& src);
    // The driver's wait for readable/writable failed (the stream was closed or
    // forgotten): the transfer ends with that error, named after the operation.
    void wait_failed(std::error_code ec);
    // The driver ends the transfer (a cancel, a timeout, the other direction's error):
    // leases go back, the counts stay, result().error becomes `ec` unless it already
    // holds one.
    void stop(std::error_code ec);

    [[nodiscard]] copy_result result() const noexcept {
        return {bytes_, bytes_ > 0 ? last_path_ : path_, error()};
    }
    [[nodiscard]] clock::time_point wake_at() const noexcept {
        return ext_ ? ext_->wake_at : clock::time_point{};
    }
    // The path in use now (it changes on fall-back and on the upgrade to splice).
    [[nodiscard]] copy_path path() const noexcept { return path_; }
    // Bytes written to the destination so far.
    [[nodiscard]] std::uint64_t bytes() const noexcept { return bytes_; }
    // A pipe or buffer is leased (only while bytes are in hand, or between calls).
    [[nodiscard]] bool holds_lease() const noexcept { return hand_ != nullptr; }

private:
    struct in_hand; // see hand_
    // What a path's step ends with: a wait, or a change of path, or "go on".
    enum class next : std::uint8_t {
        readable,
        writable,
        until,
        yield,
        done,
        failed,
        fallback,
        upgrade,
        more
    };

    static bool refuses_path(int err) noexcept;
    next run_path(stream& dst, stream& src);
    void next_path();
    void begin_path(stream& dst, stream& src);
    void end_path();
    void finish();
    next splice_direct(stream& dst, stream& src);
    next splice_eagain(stream& dst, stream& src);
    next splice_pipe(stream& dst, stream& src);
    next drain(stream& src);
    next pump(stream& dst);
    next sendfile_step(stream& dst, stream& src);
    next copy_file_range_step(stream& dst, stream& src);
    next buffer_step(stream& dst, stream& src);
    next write_pending(stream& dst);
    next read_chunk(stream& src);
    next read_pipe();
    // What a wait is for, by name (names the error of a failed wait); one byte, not a
    // pointer.
    enum class wait_op : std::uint8_t { read, write, splice, splice_out, sendfile };
    static const char* name_of(wait_op op) noexcept;
    next wait_on(stream& s, io_direction d, wait_op op) noexcept;
    next fail(const char* op, int err);
    next refused_or_failed(const char* op, int err, bool refused);
    [[nodiscard]] std::size_t want(std::size_t cap) const noexcept;
    std::size_t throttle(std::size_t len) noexcept;
    void moved(std::size_t n, copy_path p) noexcept;
    void skipped(std::size_t n) noexcept;
    [[nodiscard]] bool budget_spent() const noexcept { return step_bytes_ >= yield_budget(); }
    static std::uint32_t clamp32(std::size_t n) noexcept {
        return n < UINT32_MAX ? static_cast<std::uint32_t>(n) : UINT32_MAX;
    }
    [[nodiscard]] bool lease_pipe();
    in_hand& hand();
    void drop_pipe() noexcept;
    void drop_hand_if_empty() noexcept;
    [[nodiscard]] std::size_t in_pipe() const noexcept;
    [[nodiscard]] bool buffered() const noexcept;
    [[nodiscard]] bool src_has_bytes_at(const stream& src) const;
    bool start_skipping_holes(stream& dst, stream& src);
    void skip_hole();
    void stop_skipping_holes();
    off_t* src_offp() noexcept { return has_src_off_ || holes_ ? &ext_->src_off : nullptr; }
    off_t* dst_offp() noexcept { return has_dst_off_ || holes_ ? &ext_->dst_off : nullptr; }

    // What only some transfers need, allocated once by the constructor when the options
    // or the fds ask for it (never by step()): a quiet socket relay has none.
    struct extras {
        std::uint64_t* progress = nullptr;
        rate_limiter* limiter = nullptr;
        off_t src_off = 0;
        off_t dst_off = 0;
        off_t data_end = 0;          // hole skipping: the end of the current data extent
        off_t src_fd_was = 0;        // hole skipping: the source fd's offset before it began
        int src_fd = -1;             // hole skipping: the two fds, for its end (finish() runs
        int dst_fd = -1;             // from wait_failed() and stop() too, without the ends)
        std::uint64_t remaining = 0; // what the limit leaves
        clock::time_point wake_at{}; // with wait::until: when to call step() again
        std::uint32_t max_chunk = 0; // at most max_chunk_limit (1 GiB)
        std::uint32_t yield_budget = 0;
        std::uint32_t pipe_size = 0;
    };
    static bool needs_extras(const stream& dst, const stream& src, const copy_options& o);
    [[nodiscard]] transfer_pools& pools() const noexcept { return *pools_; }
    [[nodiscard]] std::uint32_t max_chunk() const noexcept {
        return ext_ ? ext_->max_chunk : static_cast<std::uint32_t>(default_max_chunk);
    }
    [[nodiscard]] std::uint32_t yield_budget() const noexcept {
        return ext_ ? ext_->yield_budget : static_cast<std::uint32_t>(copy_options{}.yield_budget);
    }
    [[nodiscard]] rate_limiter* limiter() const noexcept { return ext_ ? ext_->limiter : nullptr; }
    [[nodiscard]] std::uint64_t remaining() const noexcept {
        return ext_ ? ext_->remaining : UINT64_MAX;
    }

    // The error as its value and a category index (result.hpp): 5 bytes that pack with
    // the small fields below, where an error_code would take 16.
    [[nodiscard]] std::error_code error() const noexcept {
        return err_ == 0 ? std::error_code{} : std::error_code(err_, detail::category_at(err_cat_));
    }
    void set_error(std::error_code ec) noexcept {
        err_ = ec.value();
        err_cat_ = detail::category_index(ec.category());
    }

    // 48 bytes on x86-64 (every idle proxied connection has two): the pools, the
    // extras, the count, the lease slot, the error and the packed small fields.
    transfer_pools* pools_; // kept here: the proxy always names its loop's pools
    std::unique_ptr<extras> ext_;
    std::uint64_t bytes_ = 0; // written to the destination, also on error
    // The leases and the bytes still to write, only while bytes are in hand: made with
    // the first lease and freed with the last (from a slab), so a transfer that waits
    // for its source spends 8 bytes here instead of 64.
    std::unique_ptr<in_hand> hand_;
    std::int32_t err_ = 0;         // error(): 0 while there is none
    std::uint32_t step_bytes_ = 0; // moved in this step() call (the yield budget)
    copy_path path_;
    copy_path last_path_;        // the path that moved the last bytes
    wait_op op_ = wait_op::read; // what the current wait is for
    std::uint8_t err_cat_ = 0;   // error(): detail::category_index()
    bool has_src_off_ : 1;
    bool has_dst_off_ : 1;
    bool direct_ : 1;      // one end is a pipe: splice without a pooled pipe
    bool may_upgrade_ : 1; // automatic socket→socket: buffer until a read fills it
    bool upgrade_now_ : 1 = false;
    bool holes_ : 1 = false;      // copying only the data extents of a sparse source
    bool begun_ : 1 = false;      // begin_path(dst, src) ran for path_
    bool retried_ : 1 = false;    // the last direct-splice EAGAIN found both ends ready
    bool path_moved_ : 1 = false; // the current path moved bytes: no fall-back now
    bool over_ : 1 = false;       // done or failed
};

} // namespace zcio
