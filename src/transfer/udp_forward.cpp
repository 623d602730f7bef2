// udp_forward: the session table, the client reader (client -> upstream) and the reply
// pump (upstream -> client), plus the PROXY v2 datagram header.
#include <zcio/udp_forward.hpp>

#include <zcio/proxy_protocol.hpp>

#include <zcio/sys.hpp>
#include <zcio/udp_batch.hpp>
#include <zcio/unique_fd.hpp>

#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <coroutine>
#include <cstring>
#include <memory>
#include <random>
#include <unordered_map>
#include <utility>

namespace zcio {

namespace {

// "\r\n\r\n\0\r\nQUIT\n" (the specification, section 2.2).
constexpr std::array<unsigned char, 12> v2_signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
constexpr std::size_t v2_fixed = 16;
constexpr unsigned char v2_dgram_ipv4 = 0x12;
constexpr unsigned char v2_dgram_ipv6 = 0x22;
constexpr std::size_t max_batch = 1024;

void put_be16(std::byte* p, std::uint16_t v) noexcept {
    p[0] = static_cast<std::byte>(v >> 8);
    p[1] = static_cast<std::byte>(v & 0xff);
}

// One writer per counter (the loop's thread): a load and a store, no locked RMW.
void bump(std::atomic<std::uint64_t>& a, std::uint64_t n = 1) noexcept {
    a.store(a.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

void drop(std::atomic<std::uint64_t>& a, std::uint64_t n = 1) noexcept {
    const auto v = a.load(std::memory_order_relaxed);
    a.store(v >= n ? v - n : 0, std::memory_order_relaxed);
}

} // namespace

// ---- PROXY v2, datagram form ----

std::size_t proxy_v2_datagram_header(const endpoint& source, const endpoint& destination,
                                     std::span<std::byte, proxy_v2_datagram_max> out) noexcept {
    std::memcpy(out.data(), v2_signature.data(), v2_signature.size());
    const bool same = source.family() == destination.family();
    if (same && source.family() == AF_INET) {
        out[12] = std::byte{0x21}; // version 2, PROXY
        out[13] = std::byte{v2_dgram_ipv4};
        put_be16(&out[14], 12);
        const auto* s = reinterpret_cast<const sockaddr_in*>(source.data());
        const auto* d = reinterpret_cast<const sockaddr_in*>(destination.data());
        std::memcpy(&out[16], &s->sin_addr, 4);
        std::memcpy(&out[20], &d->sin_addr, 4);
        std::memcpy(&out[24], &s->sin_port, 2); // already in network order
        std::memcpy(&out[26], &d->sin_port, 2);
        return v2_fixed + 12;
    }
    if (same && source.family() == AF_INET6) {
        out[12] = std::byte{0x21};
        out[13] = std::byte{v2_dgram_ipv6};
        put_be16(&out[14], 36);
        const auto* s = reinterpret_cast<const sockaddr_in6*>(source.data());
        const auto* d = reinterpret_cast<const sockaddr_in6*>(destination.data());
        std::memcpy(&out[16], &s->sin6_addr, 16);
        std::memcpy(&out[32], &d->sin6_addr, 16);
        std::memcpy(&out[48], &s->sin6_port, 2);
        std::memcpy(&out[50], &d->sin6_port, 2);
        return v2_fixed + 36;
    }
    out[12] = std::byte{0x20}; // version 2, LOCAL: the receiver uses the real addresses
    out[13] = std::byte{0x00}; // AF_UNSPEC
    put_be16(&out[14], 0);
    return v2_fixed;
}

std::optional<proxy_v2_datagram>
parse_proxy_v2_datagram(std::span<const std::byte> datagram) noexcept {
    // The stream decoder's checks (decode_proxy_header: every length against the
    // datagram, TLVs inside the length), then what a datagram needs on top: v2, and
    // with PROXY an IPv4 or IPv6 datagram family.
    const proxy_decode_result r = decode_proxy_header(datagram);
    if (r.status != proxy_decode_status::header || r.header.version != 2) {
        return std::nullopt;
    }
    proxy_v2_datagram out;
    out.header_size = r.header.size;
    if (r.header.command == proxy_command::local) {
        out.local = true; // LOCAL: whatever family and addresses follow are ignored
        return out;
    }
    if (r.header.transport != 2 || !r.header.source.is_ip()) {
        return std::nullopt; // a stream family, Unix, or UNSPEC with PROXY
    }
    out.source = r.header.source;
    out.destination = r.header.destination;
    return out;
}

std::size_t udp_default_max_sessions() noexcept {
    ::rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) {
        return std::size_t{1} << 20;
    }
    const std::size_t open = sys::count_open_fds().value_or(0);
    const std::size_t reserve = open + 64;
    return lim.rlim_cur > reserve ? static_cast<std::size_t>(lim.rlim_cur) - reserve : 1;
}

namespace {

// An IP address and port in 24 bytes (an endpoint is 132): session keys stay small.
struct packed_address {
    std::uint16_t family = 0;
    std::uint16_t port = 0; // network order
    std::uint32_t scope = 0;
    std::array<std::byte, 16> addr{};
    friend bool operator==(const packed_address&, const packed_address&) = default;
};

packed_address pack(const endpoint& e) noexcept {
    packed_address p;
    p.family = static_cast<std::uint16_t>(e.family());
    if (e.family() == AF_INET) {
        const auto* s = reinterpret_cast<const sockaddr_in*>(e.data());
        p.port = s->sin_port;
        std::memcpy(p.addr.data(), &s->sin_addr, 4);
    } else if (e.family() == AF_INET6) {
        const auto* s = reinterpret_cast<const sockaddr_in6*>(e.data());
        p.port = s->sin6_port;
        p.scope = s->sin6_scope_id; // fe80::1%eth0 and fe80::1%eth1 are two clients
        std::memcpy(p.addr.data(), &s->sin6_addr, 16);
    }
    return p;
}

endpoint unpack(const packed_address& p) noexcept {
    if (p.family == AF_INET) {
        sockaddr_in s{};
        s.sin_family = AF_INET;
        s.sin_port = p.port;
        std::memcpy(&s.sin_addr, p.addr.data(), 4);
        return endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&s), sizeof s);
    }
    sockaddr_in6 s{};
    s.sin6_family = AF_INET6;
    s.sin6_port = p.port;
    s.sin6_scope_id = p.scope;
    std::memcpy(&s.sin6_addr, p.addr.data(), 16);
    return endpoint::from_sockaddr(reinterpret_cast<sockaddr*>(&s), sizeof s);
}

// A session is its sender's address and, behind a PROXY v2 front, the original client
// that the header names (many clients arrive from the front's one address).
struct client_key {
    packed_address peer;
    packed_address source; // accept_proxy_v2 only; zero otherwise
    friend bool operator==(const client_key&, const client_key&) = default;
};

// Seeded per forwarder: client addresses are chosen by whoever sends (and can be
// spoofed), so a fixed hash would let them pile every session into one bucket.
struct key_hash {
    std::uint64_t seed = 0;
    std::size_t operator()(const client_key& k) const noexcept {
        std::array<std::uint64_t, sizeof(client_key) / 8> w{};
        static_assert(sizeof(client_key) % 8 == 0);
        std::memcpy(w.data(), &k, sizeof k);
        std::uint64_t h = seed;
        for (std::uint64_t x : w) {
            h ^= x;
            h *= 0x9e3779b97f4a7c15ULL;
            h ^= h >> 29;
        }
        return static_cast<std::size_t>(h);
    }
};

struct forwarder;

// One client's session: its connected socket, parked on the loop for replies, and a
// link in the pump's ready list. It is the waiter itself (no coroutine frame per
// session): readiness calls wake(). session_timeout is checked by a walk over the
// table (expiry_loop) rather than the library's idle_sweeper, whose entry would add 32
// bytes to every session.
class session final : public detail::io_waiter {
public:
    session(forwarder* f, unique_fd fd, io_handle_ptr watch) noexcept
        : f_(f), watch_(std::move(watch)), fd_(std::move(fd)) {}
    session(const session&) = delete;
    session& operator=(const session&) = delete;
    ~session() override {
        // Before the handle goes: forgetting it would queue this waiter to be woken.
        if (handle_ != nullptr) {
            handle_->unpark(this);
        }
        watch_.reset(); // out of the loop before the fd closes
    }

    void wake() override;
    // Called once a tick: whether the session was silent, both ways, for `timeout`.
    bool silent_for(clock::duration tick, clock::duration timeout) noexcept;

    // Waits for the next reply (the caller saw the socket's queue run empty).
    void wait_readable() noexcept {
        watch_->clear_ready(io_direction::read);
        watch_->park(io_direction::read, this);
    }
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }

    // Datagrams sent upstream and back (saturating: they feed `responses`), and a
    // wrapping count of batches either way that expiry_loop watches for silence.
    void sent_up(std::size_t n) noexcept {
        requests = saturate(requests, n);
        ++activity_;
    }
    void sent_back(std::size_t n) noexcept {
        replies = saturate(replies, n);
        ++activity_;
    }

    const client_key* key = nullptr; // the map's own copy
    session* next_ready = nullptr;
    session* prev_ready = nullptr;

private:
    static std::uint32_t saturate(std::uint32_t v, std::size_t n) noexcept {
        return static_cast<std::uint32_t>(
            std::min<std::uint64_t>(std::uint64_t{v} + n, UINT32_MAX));
    }

    forwarder* f_;
    io_handle_ptr watch_;
    // The 4-byte fields follow each other so the entry packs tight; fd_ is declared
    // after watch_ for that, so the destructor resets watch_ itself (the handle must
    // leave the loop before the fd closes).
    unique_fd fd_;

public:
    std::uint32_t requests = 0;
    std::uint32_t replies = 0;

private:
    std::uint32_t activity_ = 0;
    std::uint32_t seen_activity_ = 0;
    std::uint16_t idle_ticks_ = 0;

public:
    bool in_ready = false;
};

enum class end_reason { expired, refused, completed };

struct forwarder {
    forwarder(udp_socket* l, const udp_forward_options& o, udp_forward_counters* counters)
        : listener(l), loop(&l->handle().loop()), opt(o), c(counters),
          sessions(16, key_hash{std::random_device{}()}) {
        local = l->local_endpoint().value_or(endpoint{});
    }
    forwarder(const forwarder&) = delete;
    forwarder& operator=(const forwarder&) = delete;
    ~forwarder() {
        sessions.clear();
        c->sessions_active.store(0, std::memory_order_relaxed);
    }

    udp_socket* listener;
    event_loop* loop;
    endpoint local; // the destination a PROXY header names
    udp_forward_options opt;
    udp_forward_counters* c;
    std::size_t max_sessions = 1;
    bool gso = false;
    bool gro = false;
    std::unordered_map<client_key, session, key_hash> sessions;
    session* ready_head = nullptr;
    session* ready_tail = nullptr;
    std::coroutine_handle<> idle_pump; // the pump, while it waits for a ready session

    // The session of `k`, opened if new (toward the upstream chosen for `client`).
    // Null when the table is full or its socket cannot be made (counted by the caller
    // through `why`).
    session* session_for(const client_key& k, const endpoint& client,
                         std::atomic<std::uint64_t>** why) {
        if (auto it = sessions.find(k); it != sessions.end()) {
            return &it->second;
        }
        if (sessions.size() >= max_sessions) {
            *why = &c->dropped_table_full;
            return nullptr;
        }
        *why = &c->dropped_no_socket;
        const endpoint up = pick_upstream(client);
        auto fd = sys::socket(up.family(), SOCK_DGRAM);
        if (!fd) {
            return nullptr;
        }
        // connect(2) on UDP only sets the default peer: it never waits. The kernel
        // then delivers only this upstream's datagrams to the socket, and an ICMP
        // error from it comes back as ECONNREFUSED.
        if (!sys::connect(fd->get(), up.data(), up.size())) {
            return nullptr;
        }
        if (gro) {
            (void)set_udp_gro(fd->get(), true);
        }
        auto watch = loop->watch(fd->get());
        if (!watch) {
            return nullptr;
        }
        auto [it, fresh] = sessions.try_emplace(k, this, std::move(*fd), std::move(*watch));
        session& s = it->second;
        s.key = &it->first;
        s.wait_readable(); // nothing can be queued yet: nothing was sent
        bump(c->sessions_created);
        bump(c->sessions_active);
        return &s;
    }

    // The one place a session's upstream is chosen (the balancer's seam).
    [[nodiscard]] endpoint pick_upstream(const endpoint& client) const {
        return opt.choose_upstream ? opt.choose_upstream(client) : opt.upstream;
    }

    void end(session* s, end_reason why) {
        unready(s);
        switch (why) {
        case end_reason::expired:
            bump(c->sessions_expired);
            break;
        case end_reason::refused:
            bump(c->sessions_refused);
            break;
        case end_reason::completed:
            bump(c->sessions_completed);
            break;
        }
        drop(c->sessions_active);
        const client_key k = *s->key; // the node's own key dies in the erase
        sessions.erase(k);            // destroys s: socket closed, off the loop
    }

    // Ends the sessions silent for session_timeout. Invariant of the walk: `it` is the
    // next session to look at; erasing one hands back the iterator after it.
    void expire_silent(clock::duration tick) {
        for (auto it = sessions.begin(); it != sessions.end();) {
            session& s = it->second;
            if (!s.silent_for(tick, opt.session_timeout)) {
                ++it;
                continue;
            }
            unready(&s);
            bump(c->sessions_expired);
            drop(c->sessions_active);
            it = sessions.erase(it);
        }
    }

    void push_ready(session* s) noexcept {
        if (s->in_ready) {
            return;
        }
        s->in_ready = true;
        s->next_ready = nullptr;
        s->prev_ready = ready_tail;
        (ready_tail != nullptr ? ready_tail->next_ready : ready_head) = s;
        ready_tail = s;
    }
    void unready(session* s) noexcept {
        if (!s->in_ready) {
            return;
        }
        (s->prev_ready != nullptr ? s->prev_ready->next_ready : ready_head) = s->next_ready;
        (s->next_ready != nullptr ? s->next_ready->prev_ready : ready_tail) = s->prev_ready;
        s->in_ready = false;
        s->next_ready = s->prev_ready = nullptr;
    }
    session* pop_ready() noexcept {
        session* s = ready_head;
        unready(s);
        return s;
    }
};

// An idle session's user-space cost: its map node (key, session and the node's link; no
// cached hash, key_hash being noexcept) and its io_handle (32 bytes, from the handle
// slab): 216 bytes on x86-64, under the 256 the design aims at (the allocator's chunk
// header and the table's bucket come on top: docs/udp-proxy.md has the measured RSS).
constexpr std::size_t session_node_bytes = sizeof(client_key) + sizeof(session) + sizeof(void*);
static_assert(session_node_bytes + 32 <= 224, "an idle UDP session must stay small");

void session::wake() {
    if (error()) {
        return; // cancelled: only the session's own destructor forgets its handle
    }
    f_->push_ready(this);
    // The pump runs right here until it waits again; it may end this session, so
    // nothing below touches `this` (the loop allows a waiter to be destroyed in wake).
    if (auto h = std::exchange(f_->idle_pump, {})) {
        h.resume();
    }
}

bool session::silent_for(clock::duration tick, clock::duration timeout) noexcept {
    // A tick counts only once it passed entirely without a datagram: the first look
    // after some activity just records it. So a session ends between `timeout` and a
    // tick later (timeout + 2 ticks when it is not a multiple of the tick).
    if (activity_ != seen_activity_) {
        seen_activity_ = activity_;
        idle_ticks_ = 0;
        return false;
    }
    if (idle_ticks_ < UINT16_MAX) {
        ++idle_ticks_;
    }
    return tick * idle_ticks_ >= timeout;
}

// co_await wait_for_ready{f}: suspends the pump until a session has replies.
struct wait_for_ready {
    forwarder* f;
    bool await_ready() const noexcept { return f->ready_head != nullptr; }
    void await_suspend(std::coroutine_handle<> h) noexcept { f->idle_pump = h; }
    void await_resume() const noexcept {}
    ~wait_for_ready() { f->idle_pump = {}; }
};

bool canceled(const std::error_code& e) {
    return e == std::errc::operation_canceled;
}

// Errors a receive may report about an earlier datagram (an ICMP error queued on the
// socket, udp(7)); the next receive goes on.
bool transient_receive_error(int e) {
    return e == ECONNREFUSED || e == EHOSTUNREACH || e == ENETUNREACH || e == EHOSTDOWN ||
           e == ENETDOWN || e == EPROTO || e == ENOMEM || e == ENOBUFS;
}

std::size_t datagrams_in(const udp_batch& b, std::size_t from, std::size_t to) {
    std::size_t n = 0;
    for (std::size_t m = from; m < to; ++m) {
        n += b.datagram_count(m);
    }
    return n;
}

// Sends what `tx` holds for session `s` on its connected socket. A socket with no room
// (EAGAIN) drops the rest, counted, rather than stall every other client behind it: a
// UDP sender's kernel would drop them too. ECONNREFUSED (an ICMP error from the
// upstream, reported on this send) ends the session; `s` is then null.
void flush_to_upstream(forwarder& f, udp_batch& tx, session*& s, std::uint64_t& refusals) {
    if (s != nullptr) {
        std::size_t sent_datagrams = 0;
        while (tx.unsent() > 0) {
            const std::size_t first = tx.sent();
            auto r = tx.send(s->fd());
            std::size_t bytes = 0;
            for (std::size_t m = first; m < tx.sent(); ++m) {
                bytes += tx.data(m).size();
            }
            sent_datagrams += datagrams_in(tx, first, tx.sent());
            bump(f.c->bytes_to_upstream, bytes);
            if (tx.gso_refusals() != refusals) {
                refusals = tx.gso_refusals();
                f.gso = false;
                f.c->gso.store(false, std::memory_order_relaxed);
            }
            if (r) {
                continue;
            }
            const int e = errno_of(r.error());
            if (e == EAGAIN || e == EWOULDBLOCK || e == ECONNREFUSED) {
                bump(f.c->dropped_send, datagrams_in(tx, tx.sent(), tx.size()));
                if (e == ECONNREFUSED) {
                    bump(f.c->datagrams_to_upstream, sent_datagrams);
                    f.end(s, end_reason::refused);
                    s = nullptr;
                    tx.clear();
                    tx.set_gso(f.gso);
                    return;
                }
                break;
            }
            bump(f.c->dropped_send, tx.datagram_count(tx.sent()));
            tx.skip();
        }
        s->sent_up(sent_datagrams);
        bump(f.c->datagrams_to_upstream, sent_datagrams);
    }
    tx.clear();
    tx.set_gso(f.gso);
}

// Makes `tx` hold datagrams for `s`: what it holds for another session (or a full
// batch) is sent first. False when that send ended `s` itself (ECONNREFUSED).
bool retarget(forwarder& f, udp_batch& tx, session*& target, session* s, std::uint64_t& refusals) {
    if (s == target && !tx.full()) {
        return true;
    }
    const bool same = s == target;
    flush_to_upstream(f, tx, target, refusals);
    if (same && target == nullptr) {
        return false;
    }
    target = s;
    return true;
}

// The client -> upstream leg: one recvmmsg on the listening socket, then runs of
// datagrams for one session go out in one sendmmsg on its socket (a GRO buffer of one
// client becomes one UDP_SEGMENT message).
task<result<void>> client_reader(forwarder* f) {
    const auto& opt = f->opt;
    udp_batch rx(opt.batch, opt.datagram_buffer);
    // With a PROXY header to add, each datagram is copied behind its header.
    udp_batch tx(opt.batch, opt.send_proxy_v2 ? max_udp_payload + proxy_v2_datagram_max : 0);
    std::unique_ptr<std::byte[]> scratch;
    if (opt.send_proxy_v2) {
        scratch =
            std::make_unique_for_overwrite<std::byte[]>(max_udp_payload + proxy_v2_datagram_max);
    }
    tx.set_gso(f->gso);
    const endpoint connected; // no address: the session socket's own peer
    std::uint64_t refusals = 0;
    std::size_t since_yield = 0;
    event_loop& loop = *f->loop;
    while (true) {
        auto n = co_await f->listener->recv_batch(rx);
        if (!n) {
            if (canceled(n.error()) || !transient_receive_error(errno_of(n.error()))) {
                co_return fail(n.error());
            }
            continue;
        }
        session* target = nullptr; // the session tx holds datagrams for
        for (std::size_t i = 0; i < *n; ++i) {
            const std::size_t count = rx.datagram_count(i);
            since_yield += count;
            if (rx.truncated(i)) {
                bump(f->c->dropped_truncated, count);
                continue;
            }
            const endpoint& peer = rx.peer(i);
            if (!opt.accept_proxy_v2 && !opt.send_proxy_v2) {
                // The whole message goes to one session: a GRO buffer is one sender's.
                std::atomic<std::uint64_t>* why = nullptr;
                session* s = f->session_for(client_key{pack(peer), {}}, peer, &why);
                if (s == nullptr) {
                    bump(*why, count);
                    continue;
                }
                if (!retarget(*f, tx, target, s, refusals)) {
                    bump(f->c->dropped_send, count);
                    continue;
                }
                const std::size_t seg = rx.segment_size(i);
                (void)(seg > 0 ? tx.push_segments(rx.data(i), connected, seg)
                               : tx.push_ref(rx.data(i), connected));
                continue;
            }
            for (std::size_t k = 0; k < count; ++k) {
                auto payload = rx.datagram(i, k);
                endpoint source = peer;
                endpoint destination = f->local;
                client_key key{pack(peer), {}};
                if (opt.accept_proxy_v2) {
                    auto h = parse_proxy_v2_datagram(payload);
                    if (!h) {
                        bump(f->c->dropped_proxy_header);
                        continue;
                    }
                    if (!h->local) {
                        source = h->source;
                        destination = h->destination;
                    }
                    key.source = pack(source);
                    payload = payload.subspan(h->header_size);
                }
                std::atomic<std::uint64_t>* why = nullptr;
                session* s = f->session_for(key, source, &why);
                if (s == nullptr) {
                    bump(*why);
                    continue;
                }
                if (!retarget(*f, tx, target, s, refusals)) {
                    bump(f->c->dropped_send);
                    continue;
                }
                if (!opt.send_proxy_v2) {
                    (void)tx.push_ref(payload, connected);
                    continue;
                }
                const std::size_t hl =
                    proxy_v2_datagram_header(source, destination,
                                             std::span<std::byte, proxy_v2_datagram_max>(
                                                 scratch.get(), proxy_v2_datagram_max));
                if (!payload.empty()) {
                    std::memcpy(scratch.get() + hl, payload.data(), payload.size());
                }
                if (!tx.push(std::span(scratch.get(), hl + payload.size()), connected)) {
                    bump(f->c->dropped_send); // no room for header and payload in one datagram
                }
            }
        }
        flush_to_upstream(*f, tx, target, refusals);
        if (since_yield >= opt.yield_after) {
            since_yield = 0;
            co_await yield(loop);
        }
    }
}

// The upstream -> client leg: takes the sessions whose sockets have replies, one
// recvmmsg each in turn, and sends the replies from the listening socket toward their
// clients, waiting while that socket has no room (the sessions' replies wait in their
// own sockets meanwhile, bounded by the kernel's receive buffers).
task<void> reply_pump(forwarder* f) {
    udp_batch rx(f->opt.batch, 65536);
    udp_batch tx(f->opt.batch, 0); // refers to rx
    tx.set_gso(f->gso);
    std::uint64_t refusals = 0;
    std::size_t since_yield = 0;
    const std::uint64_t responses = f->opt.responses;
    while (true) {
        co_await wait_for_ready{f};
        session* s = f->pop_ready();
        auto n = rx.receive(s->fd());
        if (!n) {
            const int e = errno_of(n.error());
            if (e == EAGAIN || e == EWOULDBLOCK) {
                s->wait_readable();
            } else if (e == ECONNREFUSED) {
                f->end(s, end_reason::refused);
            } else {
                f->push_ready(s); // another ICMP error, about one datagram: go on
            }
            continue;
        }
        // The session's fate is settled before any wait below: it may be gone after.
        const endpoint client = unpack(s->key->peer);
        for (std::size_t i = 0; i < *n; ++i) {
            const std::size_t count = rx.datagram_count(i);
            if (rx.truncated(i)) {
                bump(f->c->dropped_truncated, count);
                continue;
            }
            std::size_t take = count;
            if (responses > 0) {
                const std::uint64_t allowed = responses * s->requests;
                take = static_cast<std::size_t>(std::min<std::uint64_t>(
                    count, allowed > s->replies ? allowed - s->replies : 0));
                bump(f->c->dropped_after_responses, count - take);
            }
            if (take == 0) {
                continue;
            }
            s->sent_back(take);
            const std::size_t seg = rx.segment_size(i);
            if (seg > 0 && take > 1) {
                auto data = rx.data(i);
                const auto last = rx.datagram(i, take - 1);
                const auto len = static_cast<std::size_t>(last.data() + last.size() - data.data());
                (void)tx.push_segments(data.first(len), client, seg);
            } else {
                (void)tx.push_ref(rx.datagram(i, 0), client);
            }
        }
        if (responses > 0 && s->replies >= responses * s->requests) {
            f->end(s, end_reason::completed);
        } else if (*n < rx.capacity()) {
            s->wait_readable(); // its queue ran empty (see udp_batch::receive)
        } else {
            f->push_ready(s); // more may wait: back of the line, after the others
        }
        s = nullptr;
        while (tx.unsent() > 0) {
            const std::size_t first = tx.sent();
            auto r = co_await f->listener->send_batch(tx);
            std::size_t bytes = 0;
            for (std::size_t m = first; m < tx.sent(); ++m) {
                bytes += tx.data(m).size();
            }
            const std::size_t moved = datagrams_in(tx, first, tx.sent());
            bump(f->c->datagrams_to_client, moved);
            bump(f->c->bytes_to_client, bytes);
            since_yield += moved;
            if (tx.gso_refusals() != refusals) {
                refusals = tx.gso_refusals();
                f->gso = false;
                f->c->gso.store(false, std::memory_order_relaxed);
            }
            if (!r) {
                if (canceled(r.error())) {
                    co_return;
                }
                bump(f->c->dropped_send, tx.datagram_count(tx.sent()));
                tx.skip();
            }
        }
        tx.clear();
        tx.set_gso(f->gso);
        if (since_yield >= f->opt.yield_after) {
            since_yield = 0;
            co_await yield(*f->loop);
        }
    }
}

// How often the table is walked for silent sessions: a quarter of the timeout, between
// 10 ms and 1 s (one walk a second over 10,000 sessions is a few hundred microseconds).
clock::duration sweep_tick(clock::duration timeout) {
    using namespace std::chrono_literals;
    return std::clamp<clock::duration>(timeout / 4, 10ms, 1s);
}

task<void> expiry_loop(forwarder* f) {
    const clock::duration tick = sweep_tick(f->opt.session_timeout);
    while (true) {
        co_await sleep_for(*f->loop, tick);
        f->expire_silent(tick);
    }
}

} // namespace

task<result<void>> udp_forward(udp_socket listener, udp_forward_options options,
                               udp_forward_counters* counters) {
    options.batch = std::clamp<std::size_t>(options.batch, 1, max_batch);
    options.yield_after = std::max<std::size_t>(options.yield_after, 1);
    options.datagram_buffer = std::clamp<std::size_t>(options.datagram_buffer, 1, 65536);
    forwarder f(&listener, options, counters);
    f.max_sessions = options.max_sessions > 0 ? options.max_sessions : udp_default_max_sessions();

    if (options.gso != udp_offload::off) {
        const bool gso = listener.gso_supported();
        // GRO hands over up to 64 KiB at once: a smaller buffer would cut it.
        auto gro =
            gso && options.datagram_buffer >= 65536 ? listener.set_gro(true) : result<bool>(false);
        if (!gro) {
            co_return fail(gro.error());
        }
        if (options.gso == udp_offload::on && (!gso || !*gro)) {
            co_return fail_op(gso ? "setsockopt(UDP_GRO)" : "getsockopt(UDP_SEGMENT)", ENOPROTOOPT);
        }
        f.gso = gso;
        f.gro = *gro;
        counters->gso.store(f.gso, std::memory_order_relaxed);
        counters->gro.store(f.gro, std::memory_order_relaxed);
    }

    // The pump starts here and waits at once for a ready session; the sessions wake it.
    // Declared after f, so it is destroyed first (cancellation unhooks it from f).
    task<void> pump = reply_pump(&f);
    pump.handle().resume();
    // Likewise the expiry walk, which sleeps at once (only with a timeout).
    task<void> expiry = expiry_loop(&f);
    if (options.session_timeout > clock::duration::zero()) {
        expiry.handle().resume();
    }
    co_return co_await client_reader(&f);
}

} // namespace zcio
