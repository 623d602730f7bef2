// copy(): path selection, the splice/sendfile/copy_file_range loops and the buffer path.
#include <zcio/copy.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <limits>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace zcio {

const char* to_string(copy_path p) noexcept {
    switch (p) {
    case copy_path::automatic:
        return "auto";
    case copy_path::splice:
        return "splice";
    case copy_path::sendfile:
        return "sendfile";
    case copy_path::copy_file_range:
        return "copy_file_range";
    case copy_path::buffer:
        return "buffer";
    }
    return "?";
}

transfer_pools& transfer_pools::for_this_thread() {
    thread_local transfer_pools pools;
    return pools;
}

// ---- rate_limiter ----

rate_limiter::rate_limiter(std::uint64_t bytes_per_second, std::uint64_t burst) noexcept
    : rate_(bytes_per_second),
      burst_(static_cast<double>(burst != 0 ? burst
                                            : std::max<std::uint64_t>(bytes_per_second / 10, 1))),
      tokens_(burst_) {}

void rate_limiter::refill(clock::time_point now) noexcept {
    if (last_ == clock::time_point{}) {
        last_ = now;
        return;
    }
    const double secs = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(burst_, tokens_ + secs * static_cast<double>(rate_));
    last_ = now;
}

namespace {
// The least a limited copy waits for before it moves bytes again (capped by the
// burst). Handing out whatever trickled in since the last call (a few bytes per
// microsecond) made a limited copy spin without ever sleeping: one tiny syscall after
// another, never yielding to the loop, and at -O0 (where g++ does not turn symmetric
// transfer into a tail call) a stack that grew with every turn until it overflowed.
constexpr double rate_quantum = 64.0 * 1024;
} // namespace

std::size_t rate_limiter::allow(std::size_t want, clock::time_point now) noexcept {
    if (rate_ == 0) {
        return want;
    }
    refill(now);
    const double need = std::min({static_cast<double>(want), burst_, rate_quantum});
    const double whole = std::floor(tokens_);
    return whole < std::max(need, 1.0) ? 0 : std::min(want, static_cast<std::size_t>(whole));
}

void rate_limiter::consume(std::size_t n) noexcept {
    if (rate_ != 0) {
        tokens_ -= static_cast<double>(n);
    }
}

clock::time_point rate_limiter::ready_at(clock::time_point now) const noexcept {
    // When a whole quantum may move (see allow()), not the first byte.
    const double need = std::max(1.0, std::min(burst_, rate_quantum));
    if (rate_ == 0 || tokens_ >= need) {
        return now;
    }
    const double wait = (need - tokens_) / static_cast<double>(rate_);
    return now + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(wait));
}

namespace {

using sys::fd_kind;

// Errors that mean "this kernel or this pair of fds does not do that path" when they
// come before any byte moved; then the next path is tried.
bool refuses_path(int err) noexcept {
    switch (err) {
    case EINVAL:     // fd kinds the call does not support; splice into an O_APPEND file
    case ENOSYS:     // syscall missing, or a seccomp sandbox that filters it
    case EXDEV:      // copy_file_range across filesystems before Linux 5.19
    case EOPNOTSUPP: // filesystem or socket without splice/copy support
    case EPERM:      // seccomp policies that answer EPERM instead of ENOSYS
        return true;
    default:
        return false;
    }
}

bool is_regular(const stream& s) noexcept {
    return s.kind() == fd_kind::regular_file;
}
bool is_pipe(const stream& s) noexcept {
    return s.kind() == fd_kind::pipe;
}
bool is_socket(const stream& s) noexcept {
    return s.kind() == fd_kind::socket;
}

enum class step { done, fallback, upgrade, failed, idle };

// State shared by the path loops of one copy().
struct copier {
    stream& dst;
    stream& src;
    copy_options& opts;
    transfer_pools& pools;
    copy_result res;
    std::uint64_t remaining;
    std::size_t since_yield = 0;
    off_t src_off = 0;
    off_t dst_off = 0;

    copier(stream& d, stream& s, copy_options& o, transfer_pools& p)
        : dst(d), src(s), opts(o), pools(p),
          remaining(o.limit ? *o.limit : std::numeric_limits<std::uint64_t>::max()),
          src_off(o.src_offset.value_or(0)), dst_off(o.dst_offset.value_or(0)) {}

    // While set (a hole-skipping copy_file_range loop), src_off and dst_off are the
    // positions even without explicit offsets; the fds' own offsets are set at the end.
    bool own_offsets = false;

    off_t* src_offp() noexcept { return opts.src_offset || own_offsets ? &src_off : nullptr; }
    off_t* dst_offp() noexcept { return opts.dst_offset || own_offsets ? &dst_off : nullptr; }
    event_loop& loop() const noexcept { return src.loop(); }

    // Length for the next call: the cap, the chunk bound and what the limit leaves.
    [[nodiscard]] std::size_t want(std::size_t cap) const noexcept {
        return static_cast<std::size_t>(std::min<std::uint64_t>({cap, opts.max_chunk, remaining}));
    }

    void moved(std::size_t n, copy_path p) noexcept {
        res.bytes += n;
        res.path = p;
        remaining -= n;
        since_yield += n;
        if (opts.progress != nullptr) {
            *opts.progress += n;
        }
        if (opts.limiter != nullptr) {
            opts.limiter->consume(n);
        }
    }

    // A hole of `n` bytes skipped in the source and left as a hole in the destination:
    // it reads back as the zeros it stands for, so it counts as copied. It costs no I/O,
    // so the rate limiter and the yield budget do not see it.
    void skipped(std::size_t n) noexcept {
        res.bytes += n;
        res.path = copy_path::copy_file_range;
        remaining -= n;
        src_off += static_cast<off_t>(n);
        dst_off += static_cast<off_t>(n);
        if (opts.progress != nullptr) {
            *opts.progress += n;
        }
    }

    [[nodiscard]] bool should_yield() noexcept {
        if (since_yield < opts.yield_budget) {
            return false;
        }
        since_yield = 0;
        return true;
    }

    step fail_with(const char* op, int err) {
        res.error = op_error(op, err);
        return step::failed;
    }
};

// Cuts `len` to what the rate limiter allows, sleeping while it allows nothing.
task<std::size_t> throttle(copier* c, std::size_t len) {
    while (true) {
        const auto now = clock::now();
        if (std::size_t ok = c->opts.limiter->allow(len, now); ok > 0) {
            co_return ok;
        }
        co_await sleep_until(c->loop(), c->opts.limiter->ready_at(now));
    }
}

// Waits for readiness; a forgotten/closed stream ends the copy with its error.
#define ZCIO_WAIT(c, s, dir, op)                                                                   \
    do {                                                                                           \
        (s).handle().clear_ready(dir);                                                             \
        if (auto w_ = co_await (s).handle().wait(dir); !w_) {                                      \
            (c)->res.error = name_op(op, w_.error());                                              \
            co_return step::failed;                                                                \
        }                                                                                          \
    } while (0)

// One end is a pipe: splice straight between them, no pooled pipe needed.
task<step> splice_direct(copier* c) {
    std::uint64_t here = 0;
    bool retried = false; // the last EAGAIN found both ends ready (see below)
    while (c->remaining > 0) {
        std::size_t len = c->want(c->opts.max_chunk);
        if (c->opts.limiter != nullptr) {
            len = co_await throttle(c, len);
        }
        auto n = sys::splice(c->src.fd(), c->src_offp(), c->dst.fd(), c->dst_offp(), len,
                             SPLICE_F_NONBLOCK);
        if (n) {
            if (*n == 0) {
                co_return step::done;
            }
            here += *n;
            retried = false;
            c->moved(*n, copy_path::splice);
            if (c->should_yield()) {
                co_await yield(c->loop());
            }
            continue;
        }
        const int e = errno_of(n.error());
        if (e == EAGAIN) {
            // EAGAIN is either end: an empty source or a full destination, and the
            // source's receive queue cannot tell which: a socket whose data all sits in
            // a full pipe and whose FIN has arrived has nothing queued, yet waiting for
            // it to become readable would wait forever (its edge came and went). So
            // ask poll(2) about both ends: it answers for every kind of fd (files and
            // /dev/zero, which epoll refuses, are always ready) and counts end of
            // stream as readable. A full destination is waited for first; then an
            // empty source. Both ready means the state changed between the calls (a
            // writer refilled the source, a reader drained the pipe): retry once at
            // once, and after that pause briefly rather than spin or wait for an edge
            // that may never come.
            const std::array<int, 2> fds{c->src.fd(), c->dst.fd()};
            std::array<sys::poll_state, 2> now{};
            if (auto p = sys::poll_now(fds, now); !p) {
                co_return c->fail_with("poll", errno_of(p.error()));
            }
            if (!now[1].writable) {
                retried = false;
                ZCIO_WAIT(c, c->dst, io_direction::write, "splice");
            } else if (!now[0].readable) {
                retried = false;
                if (c->opts.return_when_idle) {
                    c->src.handle().clear_ready(io_direction::read);
                    co_return step::idle;
                }
                ZCIO_WAIT(c, c->src, io_direction::read, "splice");
            } else if (!retried) {
                retried = true;
            } else {
                retried = false;
                co_await sleep_for(c->loop(), std::chrono::milliseconds(1));
            }
            continue;
        }
        if (here == 0 && refuses_path(e)) {
            co_return step::fallback;
        }
        co_return c->fail_with("splice", e);
    }
    co_return step::done;
}

// Writes `data` to dst with write/send/pwrite, waiting as needed; counts as it goes.
// Writes as much of `data` as the destination takes now, counting it. Returns EAGAIN
// (as would_block) when bytes are left, another error when the write failed, or
// success when everything is written. A plain function, so the common case (the whole
// chunk fits in the socket buffer) costs no coroutine frame.
result<void> write_now(copier* c, std::span<const std::byte>& data, copy_path p) {
    while (!data.empty()) {
        result<std::size_t> n =
            c->opts.dst_offset  ? sys::pwrite(c->dst.fd(), data.data(), data.size(), c->dst_off)
            : is_socket(c->dst) ? sys::send(c->dst.fd(), data.data(), data.size(), MSG_NOSIGNAL)
                                : sys::write(c->dst.fd(), data.data(), data.size());
        if (!n) {
            return fail(n.error());
        }
        if (c->opts.dst_offset) {
            c->dst_off += static_cast<off_t>(*n);
        }
        c->moved(*n, p);
        data = data.subspan(*n);
    }
    return {};
}

// Writes the rest of `data` after write_now() said EAGAIN: waits for the destination
// first (trying again at once would only repeat the EAGAIN), then writes.
task<step> write_out(copier* c, std::span<const std::byte> data, copy_path p) {
    while (true) {
        ZCIO_WAIT(c, c->dst, io_direction::write, "write");
        auto r = write_now(c, data, p);
        if (r) {
            co_return step::done;
        }
        if (!would_block(r.error())) {
            co_return c->fail_with(is_socket(c->dst) ? "send" : "write", errno_of(r.error()));
        }
    }
}

// Writes `data`; only a full destination takes the coroutine path.
#define ZCIO_WRITE_ALL(c, data, p)                                                                 \
    do {                                                                                           \
        std::span<const std::byte> rest_ = (data);                                                 \
        auto now_ = write_now((c), rest_, (p));                                                    \
        if (!now_ && !would_block(now_.error())) {                                                 \
            co_return (c)->fail_with(is_socket((c)->dst) ? "send" : "write",                       \
                                     errno_of(now_.error()));                                      \
        }                                                                                          \
        if (!now_) {                                                                               \
            if (auto s_ = co_await write_out((c), rest_, (p)); s_ != step::done) {                 \
                co_return s_;                                                                      \
            }                                                                                      \
        }                                                                                          \
    } while (0)

// Bytes were spliced into the pipe but the destination refuses splice before any
// byte reached it (an O_APPEND file, for one): read them back out of the pipe and
// write them the ordinary way, so nothing is lost and the buffer path can take over.
task<step> flush_pipe_by_buffer(copier* c, pipe_lease* pipe) {
    auto buf = c->pools.buffers.lease();
    if (!buf) {
        c->res.error = buf.error();
        co_return step::failed;
    }
    while (pipe->buffered > 0) {
        auto n =
            sys::read(pipe->read_fd(), buf->data().data(), std::min(pipe->buffered, buf->size()));
        if (!n || *n == 0) {
            co_return c->fail_with("read(pipe)", n ? EIO : errno_of(n.error()));
        }
        pipe->buffered -= *n;
        ZCIO_WRITE_ALL(c, buf->data().first(*n), copy_path::buffer);
    }
    co_return step::fallback;
}

// socket→socket, socket→file and the like: splice into a pooled pipe, then out of it.
// The pipe is borrowed only once the source is readable and given back as soon as it
// is empty, so a waiting copy holds no pipe.
task<step> splice_through_pipe(copier* c) {
    std::uint64_t here = 0;
    pipe_lease pipe;
    std::size_t pipe_cap = 0;
    while (true) {
        if (pipe.buffered == 0) {
            // Drain side. Invariant: the pipe is empty here, so EAGAIN from the splice
            // below can only mean the source has nothing to read.
            if (c->remaining == 0) {
                co_return step::done;
            }
            if (!c->src.handle().ready(io_direction::read)) {
                pipe.reset(); // wait holding nothing
                if (c->opts.return_when_idle) {
                    co_return step::idle;
                }
                if (auto w = co_await c->src.handle().wait(io_direction::read); !w) {
                    c->res.error = name_op("splice", w.error());
                    co_return step::failed;
                }
            }
            std::size_t allowed = c->want(c->opts.max_chunk);
            if (c->opts.limiter != nullptr) {
                // A throttled copy sleeps holding no pipe: it is empty here, so giving
                // it back loses nothing.
                if (c->opts.limiter->allow(allowed, clock::now()) == 0) {
                    pipe.reset();
                }
                allowed = co_await throttle(c, allowed);
            }
            if (!pipe) {
                auto l = c->pools.pipes.lease();
                if (!l) {
                    // No pipe to be had (fd limit, quota, pool bound): the pipe is
                    // empty, so switching to buffers now loses and repeats nothing.
                    co_return step::fallback;
                }
                pipe = std::move(*l);
                pipe_cap = pipe.capacity();
                if (c->opts.pipe_size != 0 && pipe_cap < c->opts.pipe_size) {
                    // Best effort, as in the pool: a refused size keeps the pipe it has.
                    if (auto sz = pipe.resize(c->opts.pipe_size)) {
                        pipe_cap = *sz;
                    }
                }
            }
            const std::size_t len = std::min(c->want(pipe_cap), allowed);
            auto n = sys::splice(c->src.fd(), c->src_offp(), pipe.write_fd(), nullptr, len,
                                 SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (!n) {
                const int e = errno_of(n.error());
                if (e == EAGAIN) {
                    c->src.handle().clear_ready(io_direction::read);
                    continue;
                }
                if (here == 0 && refuses_path(e)) {
                    co_return step::fallback;
                }
                co_return c->fail_with("splice(source→pipe)", e);
            }
            if (*n == 0) {
                co_return step::done; // end of stream, pipe empty
            }
            pipe.buffered += *n;
        }
        // Pump side: the pipe holds data; never wait for source readability now, and
        // no SPLICE_F_MORE (it has caused 200 ms stalls on TCP elsewhere).
        auto m = sys::splice(pipe.read_fd(), nullptr, c->dst.fd(), c->dst_offp(), pipe.buffered,
                             SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
        if (m) {
            pipe.buffered -= *m;
            here += *m;
            c->moved(*m, copy_path::splice);
            if (c->should_yield()) {
                co_await yield(c->loop());
            }
            continue;
        }
        const int e = errno_of(m.error());
        if (e == EAGAIN) {
            ZCIO_WAIT(c, c->dst, io_direction::write, "splice(pipe→destination)");
            continue;
        }
        if (here == 0 && refuses_path(e)) {
            co_return co_await flush_pipe_by_buffer(c, &pipe);
        }
        co_return c->fail_with("splice(pipe→destination)", e);
    }
}

// Regular file → anything: sendfile(2).
task<step> sendfile_loop(copier* c) {
    // sendfile(2) has no output offset: it writes at (and moves) dst's file offset, so
    // it cannot honour an explicit dst_offset. Nothing moved yet: let the next path
    // (pwrite in the buffer path) take it.
    if (c->opts.dst_offset) {
        co_return step::fallback;
    }
    std::uint64_t here = 0;
    while (c->remaining > 0) {
        std::size_t len = c->want(c->opts.max_chunk);
        if (c->opts.limiter != nullptr) {
            len = co_await throttle(c, len);
        }
        auto n = sys::sendfile(c->dst.fd(), c->src.fd(), c->src_offp(), len);
        if (n) {
            if (*n == 0) {
                co_return step::done;
            }
            here += *n;
            c->moved(*n, copy_path::sendfile);
            if (c->should_yield()) {
                co_await yield(c->loop());
            }
            continue;
        }
        const int e = errno_of(n.error());
        if (e == EAGAIN) {
            ZCIO_WAIT(c, c->dst, io_direction::write, "sendfile");
            continue;
        }
        if (here == 0 && refuses_path(e)) {
            co_return step::fallback;
        }
        co_return c->fail_with("sendfile", e);
    }
    co_return step::done;
}

bool src_has_bytes_at(copier* c) {
    struct stat st {};
    const off_t off = c->src_offp() != nullptr ? c->src_off : sys::tell(c->src.fd()).value_or(0);
    return ::fstat(c->src.fd(), &st) == 0 && st.st_size > off;
}

// ---- holes of sparse files ----
//
// copy_file_range(2) writes the holes of its source out as zeros unless the file system
// shares extents (ext4 and tmpfs do not), so the copy of a 1 GiB file holding 4 KiB of
// data would take 1 GiB of disk. Like cp(1), the file→file loop finds the data with
// lseek(SEEK_DATA/SEEK_HOLE) (lseek(2), Linux 3.1; a file system without hole
// information reports the whole file as data), copies only the data extents and leaves
// the holes as holes: unwritten bytes past a file's end read as zeros.

constexpr off_t no_hole_known = std::numeric_limits<off_t>::max();

// Where a hole-skipping loop stands: the end of the current data extent, and the
// source fd's own offset from before the loop (lseek(SEEK_DATA) moves it).
struct hole_skipping {
    off_t data_end = 0;
    off_t src_fd_was = 0;
};

// Starts skipping holes when that is worth it and safe: both ends are regular files,
// the source has fewer blocks than its size needs (a dense file costs two fstat calls
// and nothing more), and the destination holds nothing from where the copy writes on
// (a skipped range reads as zeros only past its end of file). From then on the loop
// passes explicit positions to copy_file_range: the caller's offsets, or the fds' own.
bool start_skipping_holes(copier* c, hole_skipping* h) {
    struct stat src {};
    struct stat dst {};
    if (::fstat(c->src.fd(), &src) != 0 || ::fstat(c->dst.fd(), &dst) != 0 ||
        !S_ISREG(src.st_mode) || !S_ISREG(dst.st_mode)) {
        return false;
    }
    constexpr off_t block = 512; // st_blocks counts 512-byte units (stat(2))
    if (src.st_blocks * block >= src.st_size) {
        return false;
    }
    auto src_at = sys::tell(c->src.fd());
    auto dst_at = c->opts.dst_offset ? result<off_t>(c->dst_off) : sys::tell(c->dst.fd());
    if (!src_at || !dst_at || dst.st_size > *dst_at) {
        return false;
    }
    h->src_fd_was = *src_at;
    h->data_end = 0; // look for data at once
    c->src_off = c->opts.src_offset ? c->src_off : *src_at;
    c->dst_off = *dst_at;
    c->own_offsets = true;
    return true;
}

// At a hole of the source (or past the current data extent): jumps to the next data
// and notes where it ends. When only a hole is left up to the end of the file, jumps
// to the end of the file. The jumps count as copied (copier::skipped).
void skip_hole(copier* c, hole_skipping* h) {
    const int fd = c->src.fd();
    const off_t at = c->src_off;
    off_t data = ::lseek(fd, at, SEEK_DATA);
    if (data < 0) {
        struct stat st {};
        if (errno != ENXIO || ::fstat(fd, &st) != 0 || st.st_size <= at) {
            // No hole information, or at the end: copy_file_range finds the end.
            h->data_end = no_hole_known;
            return;
        }
        // ENXIO: nothing but a hole from `at` to the end. Once there, copy_file_range
        // finds the end (or data appended meanwhile).
        c->skipped(static_cast<std::size_t>(
            std::min<std::uint64_t>(static_cast<std::uint64_t>(st.st_size - at), c->remaining)));
        h->data_end = no_hole_known;
        return;
    }
    if (data > at) {
        c->skipped(static_cast<std::size_t>(
            std::min<std::uint64_t>(static_cast<std::uint64_t>(data - at), c->remaining)));
    }
    const off_t hole = c->remaining > 0 ? ::lseek(fd, c->src_off, SEEK_HOLE) : -1;
    h->data_end = hole > c->src_off ? hole : no_hole_known;
}

// Ends a hole-skipping loop: the destination gets the size the copy reached (a skipped
// hole at its end wrote nothing), each fd's offset goes where copy() promises (after the
// last byte, or where it was with an explicit offset), and the copier's positions are
// the caller's again.
void stop_skipping_holes(copier* c, const hole_skipping& h) {
    struct stat dst {};
    if (::fstat(c->dst.fd(), &dst) == 0 && dst.st_size < c->dst_off) {
        if (::ftruncate(c->dst.fd(), c->dst_off) != 0 && c->res.ok()) {
            c->res.error = op_error("ftruncate", errno);
        }
    }
    (void)sys::seek(c->src.fd(), c->opts.src_offset ? h.src_fd_was : c->src_off);
    if (!c->opts.dst_offset) {
        (void)sys::seek(c->dst.fd(), c->dst_off);
    }
    c->own_offsets = false;
}

// Regular file → regular file: copy_file_range(2), which may share extents (reflink)
// or copy inside the kernel. With `holes`, only the data extents of a sparse source.
task<step> copy_file_range_extents(copier* c, hole_skipping* holes) {
    std::uint64_t here = 0;
    while (c->remaining > 0) {
        if (holes != nullptr && c->src_off >= holes->data_end) {
            skip_hole(c, holes);
            if (c->remaining == 0) {
                break;
            }
        }
        std::size_t len = c->want(c->opts.max_chunk);
        if (holes != nullptr && holes->data_end != no_hole_known) {
            len = static_cast<std::size_t>(std::min<std::uint64_t>(
                len, static_cast<std::uint64_t>(holes->data_end - c->src_off)));
        }
        if (c->opts.limiter != nullptr) {
            len = co_await throttle(c, len);
        }
        auto n = sys::copy_file_range(c->src.fd(), c->src_offp(), c->dst.fd(), c->dst_offp(), len);
        if (n) {
            if (*n == 0) {
                // 0 before any byte from a file that has bytes: files such as those in
                // /proc and /sys report size 0 to this call; let sendfile try.
                if (here == 0 && src_has_bytes_at(c)) {
                    co_return step::fallback;
                }
                co_return step::done;
            }
            here += *n;
            c->moved(*n, copy_path::copy_file_range);
            if (c->should_yield()) {
                co_await yield(c->loop());
            }
            continue;
        }
        const int e = errno_of(n.error());
        // EBADF also comes for an O_APPEND destination, which the other paths handle.
        if (here == 0 && (refuses_path(e) || e == EBADF)) {
            co_return step::fallback;
        }
        co_return c->fail_with("copy_file_range", e);
    }
    co_return step::done;
}

// Calls stop_skipping_holes() once, also when the copy is destroyed mid-way.
struct hole_skipping_guard {
    copier* c;
    const hole_skipping* h;
    void stop() {
        if (copier* owner = std::exchange(c, nullptr); owner != nullptr) {
            stop_skipping_holes(owner, *h);
        }
    }
    ~hole_skipping_guard() { stop(); }
};

task<step> copy_file_range_loop(copier* c) {
    hole_skipping holes;
    if (!start_skipping_holes(c, &holes)) {
        co_return co_await copy_file_range_extents(c, nullptr);
    }
    hole_skipping_guard guard{c, &holes};
    const step s = co_await copy_file_range_extents(c, &holes);
    guard.stop();
    co_return s == step::done && !c->res.ok() ? step::failed : s; // ftruncate failed
}

// Anything → anything: read into a pooled buffer, write it out, give the buffer back.
// With `upgrade`, a read that fills the whole buffer ends this loop with step::upgrade
// (bulk data: splice will do better), after the buffer was written out.
task<step> buffer_loop(copier* c, bool upgrade) {
    while (c->remaining > 0) {
        if (!c->src.handle().ready(io_direction::read)) {
            if (c->opts.return_when_idle) {
                co_return step::idle;
            }
            if (auto w = co_await c->src.handle().wait(io_direction::read); !w) {
                c->res.error = name_op("read", w.error());
                co_return step::failed;
            }
        }
        // The pooled read (as pooled_read/pooled_copy do it): lease, read, and on EAGAIN
        // the buffer is back in the pool before we wait. The rate limiter runs first,
        // so a throttled copy sleeps holding no buffer.
        std::size_t len = c->want(c->pools.buffers.buffer_size());
        if (c->opts.limiter != nullptr) {
            len = co_await throttle(c, len);
        }
        auto chunk = detail::lease_and_read(c->src.fd(), c->pools.buffers, len, "read",
                                            c->opts.src_offset ? &c->src_off : nullptr);
        if (!chunk) {
            if (would_block(chunk.error())) {
                c->src.handle().clear_ready(io_direction::read);
                continue;
            }
            c->res.error = chunk.error(); // names the read, or the pool's refusal
            co_return step::failed;
        }
        const std::size_t n = chunk->n;
        if (n == 0) {
            co_return step::done;
        }
        if (n < len && (is_socket(c->src) || is_pipe(c->src)) && !c->src.handle().peer_closed()) {
            // A short read from a stream socket or pipe emptied its queue: the next read
            // would only say EAGAIN. Wait for the next edge instead (new data, or the
            // peer's close, each raises one). Not done once the peer closed: that edge
            // is already spent, and the next read must see the end of stream.
            c->src.handle().clear_ready(io_direction::read);
        }
        ZCIO_WRITE_ALL(c, chunk->lease.data().first(n), copy_path::buffer);
        if (upgrade && n == chunk->lease.size()) {
            co_return step::upgrade;
        }
        if (c->should_yield()) {
            co_await yield(c->loop());
        }
    }
    co_return step::done;
}

bool has_append_flag(const stream& s) {
    auto fl = sys::get_status_flags(s.fd());
    return fl && (*fl & O_APPEND) != 0;
}

} // namespace

copy_path choose_path(const stream& dst, const stream& src, const copy_options& opts) {
    if (opts.path != copy_path::automatic) {
        return opts.path;
    }
    if (is_regular(src) && is_regular(dst)) {
        return has_append_flag(dst) ? copy_path::sendfile : copy_path::copy_file_range;
    }
    if (is_pipe(src) || is_pipe(dst)) {
        return copy_path::splice;
    }
    if (is_regular(src)) {
        return copy_path::sendfile;
    }
    if (is_socket(src)) {
        // socket→socket starts buffered and moves to splice once reads fill the
        // buffer (see copy()); socket→file splices through a pipe straight away.
        return is_socket(dst) ? copy_path::buffer : copy_path::splice;
    }
    return copy_path::buffer;
}

task<copy_result> copy(stream& dst, stream& src, copy_options opts) {
    transfer_pools& pools = opts.pools != nullptr ? *opts.pools : transfer_pools::for_this_thread();
    // 0 would copy nothing and look fine; huge lengths (SIZE_MAX) are refused with
    // EINVAL by some kernels, and the kernel moves at most about 2 GiB per call anyway.
    opts.max_chunk = effective_max_chunk(opts.max_chunk);
    copier c(dst, src, opts, pools);
    const copy_path first = choose_path(dst, src, opts);
    c.res.path = first;
    if (c.remaining == 0) {
        co_return c.res;
    }
    const bool chatty_auto = opts.path == copy_path::automatic && first == copy_path::buffer &&
                             is_socket(src) && is_socket(dst);
    const bool direct = is_pipe(src) || is_pipe(dst);

    step s = step::fallback;
    copy_path attempt = first;
    bool splice_refused = false;
    // Each refusal moves one path down the chain; the buffer path is the last resort.
    while (s == step::fallback || s == step::upgrade) {
        c.res.path = c.res.bytes > 0 ? c.res.path : attempt;
        switch (attempt) {
        case copy_path::automatic: // not reached: choose_path never answers automatic
        case copy_path::copy_file_range:
            s = co_await copy_file_range_loop(&c);
            attempt = copy_path::sendfile;
            break;
        case copy_path::sendfile:
            s = co_await sendfile_loop(&c);
            attempt = copy_path::buffer;
            break;
        case copy_path::splice:
            s = direct ? co_await splice_direct(&c) : co_await splice_through_pipe(&c);
            splice_refused = s == step::fallback;
            attempt = copy_path::buffer;
            break;
        case copy_path::buffer:
            s = co_await buffer_loop(&c, chatty_auto && !splice_refused);
            attempt = s == step::upgrade ? copy_path::splice : copy_path::buffer;
            if (s == step::fallback) {
                s = step::done; // the buffer path has nowhere to fall back to
            }
            break;
        }
    }
    c.res.idle = s == step::idle;
    co_return c.res;
}

} // namespace zcio
