// transfer: path choice, the step loop, and the splice, sendfile and buffer paths.
#include <zcio/slab.hpp>
#include <zcio/transfer.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <limits>
#include <utility>

#include <fcntl.h>

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

// What a transfer holds while bytes are in hand (transfer::hand_).
struct transfer::in_hand final : slab_allocated<in_hand> {
    pipe_lease pipe;
    buffer_lease buf;
    std::uint32_t pos = 0; // buf holds [pos, end) still to write (each read is at most
    std::uint32_t end = 0; // max_chunk())
};

transfer_pools& transfer_pools::for_this_thread() {
    thread_local transfer_pools pools;
    return pools;
}

transfer_pools& transfer_pools::shared() {
    // Leaked on purpose: a lease still out at exit (a detached thread's transfer) must
    // not give its pipe back to a destroyed pool.
    static transfer_pools* const pools = [] {
        pipe_pool_options p;
        p.synchronized = true;
        buffer_pool_options b;
        b.synchronized = true;
        return new transfer_pools{pipe_pool(std::move(p)), buffer_pool(std::move(b))};
    }();
    return *pools;
}

namespace {

using sys::fd_kind;

} // namespace

// The one table of fall-back: errors that mean "this kernel or this pair of fds does
// not do that path". Before the path moved a byte they make the next path take over.
bool transfer::refuses_path(int err) noexcept {
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

namespace {

bool is_regular(const stream& s) noexcept {
    return s.kind() == fd_kind::regular_file;
}
bool is_pipe(const stream& s) noexcept {
    return s.kind() == fd_kind::pipe;
}
bool is_socket(const stream& s) noexcept {
    return s.kind() == fd_kind::socket;
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
        // buffer (see transfer); socket→file splices through a pipe straight away.
        return is_socket(dst) ? copy_path::buffer : copy_path::splice;
    }
    return copy_path::buffer;
}

// A socket relay with default options has no extras; files (offsets, holes), pipes
// (the pause of a direct splice), a limit, explicit offsets, progress, a limiter or
// non-default sizes get them, once.
bool transfer::needs_extras(const stream& dst, const stream& src, const copy_options& o) {
    return is_regular(dst) || is_regular(src) || is_pipe(dst) || is_pipe(src) || o.limit ||
           o.src_offset || o.dst_offset || o.progress != nullptr || o.limiter != nullptr ||
           o.pipe_size != 0 || effective_max_chunk(o.max_chunk) != default_max_chunk ||
           o.yield_budget != copy_options{}.yield_budget;
}

// Two per proxied connection, idle or not: a field that makes it grow costs every one.
static_assert(sizeof(transfer) <= 48, "transfer grew: pack new state with its small fields");

transfer::transfer(const stream& dst, const stream& src, const copy_options& opts)
    : pools_(opts.pools != nullptr ? opts.pools : &transfer_pools::for_this_thread()),
      ext_(needs_extras(dst, src, opts) ? std::make_unique<extras>() : nullptr),
      path_(choose_path(dst, src, opts)), has_src_off_(opts.src_offset.has_value()),
      has_dst_off_(opts.dst_offset.has_value()), direct_(is_pipe(src) || is_pipe(dst)),
      may_upgrade_(opts.path == copy_path::automatic && path_ == copy_path::buffer &&
                   is_socket(src) && is_socket(dst)) {
    last_path_ = path_;
    if (ext_) {
        ext_->remaining = opts.limit ? *opts.limit : std::numeric_limits<std::uint64_t>::max();
        ext_->progress = opts.progress;
        ext_->limiter = opts.limiter;
        ext_->src_off = opts.src_offset.value_or(0);
        ext_->dst_off = opts.dst_offset.value_or(0);
        // 0 would copy nothing and look fine; huge lengths (SIZE_MAX) are refused with
        // EINVAL by some kernels, and the kernel moves at most about 2 GiB per call.
        ext_->max_chunk = clamp32(effective_max_chunk(opts.max_chunk));
        ext_->yield_budget = clamp32(std::max<std::size_t>(opts.yield_budget, 1));
        ext_->pipe_size = clamp32(opts.pipe_size);
    }
}

transfer::~transfer() {
    end_path(); // a cancelled file→file copy still leaves the fds' offsets right
}

transfer::wait transfer::step(stream& dst, stream& src) {
    step_bytes_ = 0;
    while (!over_) {
        const next n = run_path(dst, src);
        if (n == next::fallback || n == next::upgrade) {
            next_path();
            continue;
        }
        if (n == next::done || n == next::failed) {
            finish();
            break;
        }
        return static_cast<wait>(n);
    }
    return error() ? wait::failed : wait::done;
}

void transfer::wait_failed(std::error_code ec) {
    set_error(name_op(name_of(op_), ec));
    finish();
}

void transfer::stop(std::error_code ec) {
    if (!error()) {
        set_error(ec);
    }
    finish();
}

// Done or failed: nothing is held any more (a pipe still holding bytes after a failure
// is closed, never pooled).
void transfer::finish() {
    end_path(); // may fail: the ftruncate after a hole-skipping copy
    hand_.reset();
    over_ = true;
}

transfer::next transfer::run_path(stream& dst, stream& src) {
    if (remaining() == 0 && !holds_lease()) {
        return next::done;
    }
    if (!begun_) {
        begin_path(dst, src);
    }
    switch (path_) {
    case copy_path::automatic: // not reached: choose_path never answers automatic
    case copy_path::copy_file_range:
        return copy_file_range_step(dst, src);
    case copy_path::sendfile:
        return sendfile_step(dst, src);
    case copy_path::splice:
        return direct_ ? splice_direct(dst, src) : splice_pipe(dst, src);
    case copy_path::buffer:
        return buffer_step(dst, src);
    }
    return next::done;
}

// Each refusal moves one path down the chain (copy_file_range → sendfile → buffer,
// splice → buffer); an upgrade moves the buffer path to splice.
void transfer::next_path() {
    end_path();
    if (path_ == copy_path::buffer) {
        path_ = copy_path::splice; // the upgrade: reads fill the buffer, bulk data
    } else {
        may_upgrade_ = may_upgrade_ && path_ != copy_path::splice; // splice was refused
        path_ = path_ == copy_path::copy_file_range ? copy_path::sendfile : copy_path::buffer;
    }
    upgrade_now_ = false;
    path_moved_ = false;
}

void transfer::begin_path(stream& dst, stream& src) {
    begun_ = true;
    if (path_ == copy_path::copy_file_range) {
        holes_ = start_skipping_holes(dst, src);
    }
}

void transfer::end_path() {
    begun_ = false;
    if (holes_) {
        stop_skipping_holes();
    }
}

const char* transfer::name_of(wait_op op) noexcept {
    switch (op) {
    case wait_op::read:
        return "read";
    case wait_op::write:
        return "write";
    case wait_op::splice:
        return "splice";
    case wait_op::splice_out:
        return "splice(pipe→destination)";
    case wait_op::sendfile:
        return "sendfile";
    }
    return "?";
}

transfer::next transfer::wait_on(stream& s, io_direction d, wait_op op) noexcept {
    s.handle().clear_ready(d);
    op_ = op;
    return d == io_direction::read ? next::readable : next::writable;
}

transfer::next transfer::fail(const char* op, int err) {
    set_error(op_error(op, err));
    return next::failed;
}

transfer::next transfer::refused_or_failed(const char* op, int err, bool refused) {
    return !path_moved_ && refused ? next::fallback : fail(op, err);
}

// Length for the next call: the cap, the chunk bound and what the limit leaves.
std::size_t transfer::want(std::size_t cap) const noexcept {
    return static_cast<std::size_t>(std::min<std::uint64_t>({cap, max_chunk(), remaining()}));
}

// Cuts `len` to what the rate limiter allows now; 0 means "wait until wake_at()".
std::size_t transfer::throttle(std::size_t len) noexcept {
    rate_limiter* const lim = limiter();
    if (lim == nullptr) {
        return len;
    }
    const auto now = clock::now();
    const std::size_t ok = lim->allow(len, now);
    if (ok == 0) {
        ext_->wake_at = lim->ready_at(now);
    }
    return ok;
}

void transfer::moved(std::size_t n, copy_path p) noexcept {
    bytes_ += n;
    last_path_ = p;
    path_moved_ = true;
    step_bytes_ = clamp32(std::size_t{step_bytes_} + n);
    if (!ext_) {
        return;
    }
    ext_->remaining -= n;
    if (ext_->progress != nullptr) {
        *ext_->progress += n;
    }
    if (ext_->limiter != nullptr) {
        ext_->limiter->consume(n);
    }
}

// ---- splice ----

// One end is a pipe: splice straight between them, no pooled pipe needed.
transfer::next transfer::splice_direct(stream& dst, stream& src) {
    while (remaining() > 0) {
        if (budget_spent()) {
            return next::yield;
        }
        const std::size_t len = throttle(want(max_chunk()));
        if (len == 0) {
            return next::until;
        }
        auto n = sys::splice(src.fd(), src_offp(), dst.fd(), dst_offp(), len, SPLICE_F_NONBLOCK);
        if (n) {
            if (*n == 0) {
                return next::done;
            }
            retried_ = false;
            moved(*n, copy_path::splice);
            continue;
        }
        const int e = errno_of(n.error());
        if (e != EAGAIN) {
            return refused_or_failed("splice", e, refuses_path(e));
        }
        if (const next w = splice_eagain(dst, src); w != next::more) {
            return w;
        }
    }
    return next::done;
}

// EAGAIN from a direct splice is either end: an empty source or a full destination,
// and the source's receive queue cannot tell which: a socket whose data all sits in a
// full pipe and whose FIN has arrived has nothing queued, yet waiting for it to become
// readable would wait forever (its edge came and went). So poll(2) answers for both
// ends (it knows every kind of fd, and counts end of stream as readable): a full
// destination is waited for first, then an empty source. Both ready means the state
// changed between the calls: retry once at once, then pause briefly rather than spin.
transfer::next transfer::splice_eagain(stream& dst, stream& src) {
    const std::array<int, 2> fds{src.fd(), dst.fd()};
    std::array<sys::poll_state, 2> now{};
    if (auto p = sys::poll_now(fds, now); !p) {
        return fail("poll", errno_of(p.error()));
    }
    if (!now[1].writable || !now[0].readable) {
        retried_ = false;
        return !now[1].writable ? wait_on(dst, io_direction::write, wait_op::splice)
                                : wait_on(src, io_direction::read, wait_op::splice);
    }
    if (!retried_) {
        retried_ = true;
        return next::more;
    }
    retried_ = false;
    ext_->wake_at = clock::now() + std::chrono::milliseconds(1);
    return next::until;
}

// socket→socket, socket→file and the like: splice into a pooled pipe, then out of it.
transfer::next transfer::splice_pipe(stream& dst, stream& src) {
    while (true) {
        if (budget_spent()) {
            return next::yield;
        }
        const next n = in_pipe() > 0 ? pump(dst) : drain(src);
        if (n != next::more) {
            return n;
        }
    }
}

// Fills the pipe from the source. Invariant: the pipe is empty, so EAGAIN can only
// mean the source has nothing to read, and every wait here (for the source, or for
// the rate limit) gives the pipe back first: a waiting transfer holds no pipe.
transfer::next transfer::drain(stream& src) {
    if (remaining() == 0) {
        return next::done;
    }
    if (!src.handle().ready(io_direction::read)) {
        drop_pipe();
        return wait_on(src, io_direction::read, wait_op::splice);
    }
    const std::size_t allowed = throttle(want(max_chunk()));
    if (allowed == 0) {
        drop_pipe();
        return next::until;
    }
    if ((!hand_ || !hand_->pipe.valid()) && !lease_pipe()) {
        return next::fallback; // no pipe to be had: it is empty, buffers lose nothing
    }
    pipe_lease& pipe = hand_->pipe;
    auto n =
        sys::splice(src.fd(), src_offp(), pipe.write_fd(), nullptr,
                    std::min(want(pipe.capacity()), allowed), SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (!n) {
        const int e = errno_of(n.error());
        if (e == EAGAIN) {
            src.handle().clear_ready(io_direction::read);
            return next::more;
        }
        return refused_or_failed("splice(source→pipe)", e, refuses_path(e));
    }
    if (*n == 0) {
        return next::done; // end of stream, pipe empty
    }
    pipe.buffered += *n;
    return next::more;
}

// Empties the pipe into the destination. Invariant: the pipe holds bytes, so the
// source is neither read nor waited for until they are out; no SPLICE_F_MORE (it has
// caused 200 ms stalls on TCP elsewhere). A destination that refuses splice before
// any byte reached it falls back to the buffer path, which empties the pipe first.
transfer::next transfer::pump(stream& dst) {
    pipe_lease& pipe = hand_->pipe;
    auto m = sys::splice(pipe.read_fd(), nullptr, dst.fd(), dst_offp(), pipe.buffered,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (m) {
        pipe.buffered -= *m;
        moved(*m, copy_path::splice);
        return next::more;
    }
    const int e = errno_of(m.error());
    if (e == EAGAIN) {
        return wait_on(dst, io_direction::write, wait_op::splice_out);
    }
    return refused_or_failed("splice(pipe→destination)", e, refuses_path(e));
}

bool transfer::lease_pipe() {
    auto l = pools().pipes.lease();
    if (!l) {
        return false; // fd limit, quota, pool bound
    }
    pipe_lease& pipe = hand().pipe;
    pipe = std::move(*l);
    const std::uint32_t size = ext_ ? ext_->pipe_size : 0;
    if (size != 0 && pipe.capacity() < size) {
        (void)pipe.resize(size); // best effort, as in the pool
    }
    return true;
}

transfer::in_hand& transfer::hand() {
    if (!hand_) {
        hand_ = std::make_unique<in_hand>();
    }
    return *hand_;
}

void transfer::drop_pipe() noexcept {
    if (hand_) {
        hand_->pipe.reset();
        drop_hand_if_empty();
    }
}

void transfer::drop_hand_if_empty() noexcept {
    if (!hand_->pipe.valid() && !hand_->buf.valid()) {
        hand_.reset();
    }
}

std::size_t transfer::in_pipe() const noexcept {
    return hand_ ? hand_->pipe.buffered : 0;
}

bool transfer::buffered() const noexcept {
    return hand_ && hand_->end > hand_->pos;
}

// ---- sendfile ----

// Regular file → anything: sendfile(2).
transfer::next transfer::sendfile_step(stream& dst, stream& src) {
    // sendfile(2) has no output offset: it writes at (and moves) dst's file offset, so
    // it cannot honour an explicit dst_offset; pwrite in the buffer path can.
    if (has_dst_off_) {
        return next::fallback;
    }
    while (remaining() > 0) {
        if (budget_spent()) {
            return next::yield;
        }
        const std::size_t len = throttle(want(max_chunk()));
        if (len == 0) {
            return next::until;
        }
        auto n = sys::sendfile(dst.fd(), src.fd(), src_offp(), len);
        if (n) {
            if (*n == 0) {
                return next::done;
            }
            moved(*n, copy_path::sendfile);
            continue;
        }
        const int e = errno_of(n.error());
        if (e == EAGAIN) {
            return wait_on(dst, io_direction::write, wait_op::sendfile);
        }
        return refused_or_failed("sendfile", e, refuses_path(e));
    }
    return next::done;
}

// ---- buffer ----

// Anything → anything: read into a pooled buffer, write it out, give the buffer back.
// Invariant: a buffer is leased only while it holds bytes not yet written, so waiting
// for the source or the rate limit holds none. With may_upgrade_, a read that fills
// the whole buffer moves the transfer to splice once the buffer is written out.
transfer::next transfer::buffer_step(stream& dst, stream& src) {
    while (true) {
        if (buffered()) {
            if (const next n = write_pending(dst); n != next::more) {
                return n;
            }
        }
        if (upgrade_now_) {
            return next::upgrade;
        }
        if (remaining() == 0) {
            return next::done;
        }
        if (budget_spent()) {
            return next::yield;
        }
        if (const next n = read_chunk(src); n != next::more) {
            return n;
        }
    }
}

// Writes what the buffer holds, as much as the destination takes now.
transfer::next transfer::write_pending(stream& dst) {
    const int fd = dst.fd();
    in_hand& h = *hand_;
    while (h.pos < h.end) {
        const std::byte* p = h.buf.data().data() + h.pos;
        const std::size_t len = std::size_t{h.end} - h.pos;
        zcio::result<std::size_t> n = has_dst_off_     ? sys::pwrite(fd, p, len, ext_->dst_off)
                                      : is_socket(dst) ? sys::send(fd, p, len, MSG_NOSIGNAL)
                                                       : sys::write(fd, p, len);
        if (!n) {
            if (would_block(n)) {
                return wait_on(dst, io_direction::write, wait_op::write);
            }
            return fail(is_socket(dst) ? "send" : "write", errno_of(n.error()));
        }
        if (has_dst_off_) {
            ext_->dst_off += static_cast<off_t>(*n);
        }
        h.pos += static_cast<std::uint32_t>(*n);
        moved(*n, copy_path::buffer);
    }
    h.buf.reset();
    h.pos = h.end = 0;
    drop_hand_if_empty();
    return next::more;
}

// Reads the next chunk into a leased buffer. The lease is taken after the readiness
// check and the rate limit and given back on EAGAIN, so no wait holds a buffer.
transfer::next transfer::read_chunk(stream& src) {
    if (in_pipe() > 0) {
        return read_pipe();
    }
    drop_pipe(); // empty (a fall-back from splice): back to the pool
    if (!src.handle().ready(io_direction::read)) {
        return wait_on(src, io_direction::read, wait_op::read);
    }
    const std::size_t len = throttle(want(pools().buffers.buffer_size()));
    if (len == 0) {
        return next::until;
    }
    auto chunk = detail::lease_and_read(src.fd(), pools().buffers, len, "read",
                                        has_src_off_ ? &ext_->src_off : nullptr);
    if (!chunk) {
        if (would_block(chunk.error())) {
            return wait_on(src, io_direction::read, wait_op::read);
        }
        set_error(chunk.error()); // names the read, or the pool's refusal
        return next::failed;
    }
    if (chunk->n == 0) {
        return next::done;
    }
    if (chunk->n < len && (is_socket(src) || is_pipe(src)) && !src.handle().peer_closed()) {
        // A short read from a stream socket or pipe emptied its queue: the next read
        // would only say EAGAIN. Wait for the next edge instead (new data, or the
        // peer's close, each raises one). Not once the peer closed: that edge is
        // already spent, and the next read must see the end of stream.
        src.handle().clear_ready(io_direction::read);
    }
    upgrade_now_ = may_upgrade_ && chunk->n == chunk->lease.size();
    in_hand& h = hand();
    h.buf = std::move(chunk->lease);
    h.pos = 0;
    h.end = static_cast<std::uint32_t>(chunk->n); // at most max_chunk()
    return next::more;
}

// The destination refused splice with bytes already in the pipe (an O_APPEND file, for
// one): they are read back out of the pipe and written the ordinary way.
transfer::next transfer::read_pipe() {
    auto lease = pools().buffers.lease();
    if (!lease) {
        set_error(lease.error());
        return next::failed;
    }
    in_hand& h = *hand_;
    auto n = sys::read(h.pipe.read_fd(), lease->data().data(),
                       std::min({h.pipe.buffered, lease->size(), std::size_t{max_chunk()}}));
    if (!n || *n == 0) {
        return fail("read(pipe)", n ? EIO : errno_of(n.error()));
    }
    h.pipe.buffered -= *n;
    h.buf = std::move(*lease);
    h.pos = 0;
    h.end = clamp32(*n);
    return next::more;
}

} // namespace zcio
