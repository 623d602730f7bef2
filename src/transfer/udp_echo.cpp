// udp_echo: a reader and a writer on one UDP socket, joined by a bounded queue.
#include <zcio/udp_echo.hpp>

#include <zcio/event_loop.hpp>
#include <zcio/udp_batch.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <coroutine>
#include <cstring>
#include <memory>
#include <utility>

namespace zcio {

namespace {

constexpr std::size_t max_batch = 1024;

// The datagrams waiting to be echoed: a byte ring plus a ring of entries. A datagram's
// bytes are contiguous (a record that would cross the end of the ring starts again at
// its beginning), so consecutive datagrams usually follow each other in memory, which
// lets one UDP_SEGMENT message send a run of them with a single iovec. Memory is
// allocated on the first datagram, so an idle socket of a large port range costs none.
class echo_queue {
public:
    struct entry {
        std::uint64_t start = 0; // position in the byte ring (grows forever; % capacity)
        std::uint32_t len = 0;
        std::uint32_t segment = 0; // GRO buffer: its datagrams' size; 0: one datagram
        std::uint32_t count = 0;   // datagrams
        endpoint peer;
    };

    echo_queue(std::size_t max_datagrams, std::size_t max_bytes) noexcept
        : max_datagrams_(std::max<std::size_t>(max_datagrams, 1)),
          max_bytes_(std::max<std::size_t>(max_bytes, 1)) {}

    [[nodiscard]] bool empty() const noexcept { return entries_ == 0; }
    [[nodiscard]] std::size_t size() const noexcept { return entries_; }

    // Copies one datagram (or GRO buffer) in; false when it does not fit.
    bool push(std::span<const std::byte> data, const endpoint& peer, std::size_t segment,
              std::size_t count) {
        if (datagrams_ + count > max_datagrams_ || data.size() > max_bytes_) {
            return false;
        }
        if (!bytes_) {
            bytes_ = std::make_unique_for_overwrite<std::byte[]>(max_bytes_);
            ring_ = std::make_unique<entry[]>(max_datagrams_);
        }
        std::uint64_t at = tail_pos_;
        const std::size_t phys = at % max_bytes_;
        if (phys + data.size() > max_bytes_) {
            at += max_bytes_ - phys; // skip to the start: a record never wraps
        }
        if (at + data.size() - head_pos_ > max_bytes_) {
            return false;
        }
        if (!data.empty()) {
            std::memcpy(bytes_.get() + at % max_bytes_, data.data(), data.size());
        }
        entry& e = ring_[(first_ + entries_) % max_datagrams_];
        e.start = at;
        e.len = static_cast<std::uint32_t>(data.size());
        e.segment = static_cast<std::uint32_t>(segment);
        e.count = static_cast<std::uint32_t>(count);
        e.peer = peer;
        ++entries_;
        datagrams_ += count;
        tail_pos_ = at + data.size();
        return true;
    }

    // The k-th waiting entry (0 = the oldest).
    [[nodiscard]] const entry& at(std::size_t k) const noexcept {
        return ring_[(first_ + k) % max_datagrams_];
    }
    [[nodiscard]] std::span<const std::byte> bytes(const entry& e) const noexcept {
        return {bytes_.get() + e.start % max_bytes_, e.len};
    }

    // Drops the oldest entry; returns its datagram count.
    std::size_t pop() noexcept {
        const std::size_t count = ring_[first_].count;
        first_ = (first_ + 1) % max_datagrams_;
        --entries_;
        datagrams_ -= count;
        if (entries_ == 0) {
            head_pos_ = tail_pos_ = 0; // empty: start over at the beginning
        } else {
            head_pos_ = ring_[first_].start;
        }
        return count;
    }

private:
    std::size_t max_datagrams_;
    std::size_t max_bytes_;
    std::unique_ptr<std::byte[]> bytes_;
    std::unique_ptr<entry[]> ring_;
    std::size_t first_ = 0;   // ring index of the oldest entry
    std::size_t entries_ = 0; // entries waiting
    std::size_t datagrams_ = 0;
    std::uint64_t head_pos_ = 0; // byte position of the oldest entry
    std::uint64_t tail_pos_ = 0; // where the next record goes (before skipping)
};

// Everything the reader and the writer share; it lives in udp_echo()'s frame, which
// outlives both (the writer task is a local declared after it).
struct echo_state {
    udp_socket* sock;
    udp_echo_options opt;
    udp_echo_counters* c;
    echo_queue queue;
    // The writer, while it waits for the queue to have something.
    std::coroutine_handle<> idle_writer;
    bool gso = false;

    echo_state(udp_socket* s, const udp_echo_options& o, udp_echo_counters* counters,
               std::size_t queue_bytes)
        : sock(s), opt(o), c(counters), queue(o.queue, queue_bytes) {}

    // Called by the reader after it queued something. The idle writer runs right here,
    // inside the reader's turn, until it waits again (queue empty, or EAGAIN on the
    // socket, where the loop takes over): no trip through the run queue, no extra
    // epoll_wait between reading a batch and echoing it.
    void wake_writer() {
        if (auto h = std::exchange(idle_writer, {})) {
            h.resume();
        }
    }
};

// co_await wait_for_work{st}: suspends the writer until the queue is not empty.
// Destroying the suspended writer (cancellation) unhooks it.
struct wait_for_work {
    echo_state* st;
    bool await_ready() const noexcept { return !st->queue.empty(); }
    void await_suspend(std::coroutine_handle<> h) noexcept { st->idle_writer = h; }
    void await_resume() const noexcept {}
    ~wait_for_work() { st->idle_writer = {}; }
};

bool canceled(const std::error_code& e) {
    return e == std::errc::operation_canceled;
}

// Errors a UDP receive may report about one earlier datagram (an ICMP error queued on
// the socket, udp(7)); the next receive goes on with the next datagram.
bool transient_receive_error(int e) {
    return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN ||
           e == ENETDOWN || e == EPROTO || e == ENOMEM || e == ENOBUFS;
}

// ---- batch mode ----

// Sends from the queue in batches: runs of datagrams to one peer with one size become
// one UDP_SEGMENT message while GSO is on.
task<void> batch_writer(echo_state* st) {
    udp_batch tx(st->opt.batch, 0);
    std::array<std::uint32_t, max_batch> entries_in{}; // queue entries per message
    std::uint64_t refusals = 0;
    while (true) {
        co_await wait_for_work{st};
        if (tx.unsent() == 0) {
            // Build from the oldest waiting datagrams. Entries stay queued (their bytes
            // referenced by tx) until the kernel took them.
            tx.clear();
            tx.set_gso(st->gso);
            for (std::size_t k = 0; k < st->queue.size(); ++k) {
                const auto& e = st->queue.at(k);
                const std::size_t before = tx.size();
                const bool ok = e.segment > 0
                                    ? tx.push_segments(st->queue.bytes(e), e.peer, e.segment)
                                    : tx.push_ref(st->queue.bytes(e), e.peer);
                if (!ok) {
                    break;
                }
                if (tx.size() > before) {
                    entries_in[tx.size() - 1] = 1;
                } else {
                    ++entries_in[tx.size() - 1];
                }
            }
        }
        const std::size_t first = tx.sent();
        auto n = co_await st->sock->send_batch(tx);
        ++st->c->send_calls;
        if (tx.gso_refusals() != refusals) {
            // The kernel refused UDP_SEGMENT: stop merging, and stop GRO too, so no
            // more coalesced buffers arrive that would have to be split.
            refusals = tx.gso_refusals();
            st->gso = false;
            st->c->gso = false;
            if (st->c->gro) {
                (void)st->sock->set_gro(false);
                st->c->gro = false;
            }
        }
        if (!n) {
            if (canceled(n.error())) {
                co_return;
            }
            // The next message cannot go (no route, too big...): drop it, so one bad
            // peer cannot stall the queue.
            for (std::uint32_t k = 0; k < entries_in[tx.sent()]; ++k) {
                st->c->send_errors += st->queue.pop();
            }
            tx.skip();
            continue;
        }
        for (std::size_t m = first; m < tx.sent(); ++m) {
            for (std::uint32_t k = 0; k < entries_in[m]; ++k) {
                st->c->echoed += st->queue.pop();
            }
        }
    }
}

task<result<void>> batch_reader(echo_state* st) {
    udp_batch rx(st->opt.batch, 65536);
    event_loop& loop = st->sock->handle().loop();
    std::size_t since_yield = 0;
    while (true) {
        auto n = co_await st->sock->recv_batch(rx);
        if (!n) {
            if (canceled(n.error()) || !transient_receive_error(errno_of(n.error()))) {
                co_return fail(n.error());
            }
            continue;
        }
        ++st->c->recv_calls;
        for (std::size_t i = 0; i < *n; ++i) {
            const std::size_t count = rx.datagram_count(i);
            st->c->received += count;
            since_yield += count;
            if (!st->queue.push(rx.data(i), rx.peer(i), rx.segment_size(i), count)) {
                st->c->dropped += count;
            }
        }
        st->wake_writer();
        if (since_yield >= st->opt.yield_after) {
            since_yield = 0;
            co_await yield(loop);
        }
    }
}

// ---- simple mode ----

task<void> simple_writer(echo_state* st) {
    while (true) {
        co_await wait_for_work{st};
        const auto& e = st->queue.at(0);
        auto n = co_await st->sock->send_to(st->queue.bytes(e), e.peer);
        ++st->c->send_calls;
        if (!n) {
            if (canceled(n.error())) {
                co_return;
            }
            st->c->send_errors += st->queue.pop();
            continue;
        }
        st->c->echoed += st->queue.pop();
    }
}

task<result<void>> simple_reader(echo_state* st) {
    // One datagram at a time, up to the largest UDP payload (IPv6 allows 65527).
    auto buf = std::make_unique_for_overwrite<std::byte[]>(65536);
    event_loop& loop = st->sock->handle().loop();
    std::size_t since_yield = 0;
    while (true) {
        auto got = co_await st->sock->recv_from(std::span(buf.get(), 65536));
        if (!got) {
            if (canceled(got.error()) || !transient_receive_error(errno_of(got.error()))) {
                co_return fail(got.error());
            }
            continue;
        }
        ++st->c->recv_calls;
        ++st->c->received;
        if (!st->queue.push(std::span(buf.get(), got->size), got->from, 0, 1)) {
            ++st->c->dropped;
        }
        st->wake_writer();
        if (++since_yield >= st->opt.yield_after) {
            since_yield = 0;
            co_await yield(loop);
        }
    }
}

} // namespace

task<result<void>> udp_echo(udp_socket sock, udp_echo_options options,
                            udp_echo_counters* counters) {
    options.batch = std::clamp<std::size_t>(options.batch, 1, max_batch);
    options.queue = std::max<std::size_t>(options.queue, 1);
    options.yield_after = std::max<std::size_t>(options.yield_after, 1);
    std::size_t queue_bytes = options.queue_bytes;
    if (queue_bytes == 0) {
        queue_bytes =
            std::max<std::size_t>(options.queue * std::size_t{2048}, std::size_t{256} * 1024);
    }
    echo_state st(&sock, options, counters, queue_bytes);

    if (options.mode == udp_echo_mode::batch && options.gso != udp_offload::off) {
        const bool gso = sock.gso_supported();
        auto gro = gso ? sock.set_gro(true) : result<bool>(false);
        if (!gro) {
            co_return fail(gro.error());
        }
        if (options.gso == udp_offload::on && (!gso || !*gro)) {
            co_return fail_op(gso ? "setsockopt(UDP_GRO)" : "getsockopt(UDP_SEGMENT)", ENOPROTOOPT);
        }
        // GRO without GSO would hand us buffers we could only echo one by one.
        if (*gro && !gso) {
            (void)sock.set_gro(false);
        }
        st.gso = gso && *gro;
        counters->gso = counters->gro = st.gso;
    }

    // The writer starts here and waits at once for the queue; from then on the reader
    // wakes it (wake_writer) and the loop resumes it when the socket turns writable.
    // Declared after st, so it is destroyed first (cancellation unhooks it from st).
    task<void> writer =
        options.mode == udp_echo_mode::batch ? batch_writer(&st) : simple_writer(&st);
    writer.handle().resume();
    if (options.mode == udp_echo_mode::batch) {
        co_return co_await batch_reader(&st);
    }
    co_return co_await simple_reader(&st);
}

} // namespace zcio
