// udp_batch: recvmmsg / sendmmsg batches with UDP_GRO receive and UDP_SEGMENT send.
#include <zcio/udp_batch.hpp>

#include <zcio/sys.hpp>

#include <netinet/in.h>
#include <netinet/udp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace zcio {

namespace {

// Room for one int-sized control message (UDP_GRO in, UDP_SEGMENT out) with spare.
constexpr std::size_t control_size = 64;
static_assert(CMSG_SPACE(sizeof(int)) <= control_size);

// UDP_SEGMENT takes a u16 (udp(7)).
constexpr std::size_t max_segment = 0xffff;

// Splitting a refused GSO message: one mmsghdr per datagram, on the stack.
constexpr std::size_t split_max = 128;

// Receives land in a compact slot of this many bytes first (an Ethernet-sized datagram
// fits), and only the rest of a longer one in the message's large buffer.
constexpr std::size_t compact_size = 2048;

bool unsupported_option(int e) noexcept {
    // ENOPROTOOPT: the kernel predates the option (or it is not UDP); EOPNOTSUPP and
    // EINVAL: some socket types refuse SOL_UDP options outright.
    return e == ENOPROTOOPT || e == EOPNOTSUPP || e == EINVAL;
}

} // namespace

bool udp_gso_supported(int fd) noexcept {
    int value = 0;
    socklen_t len = sizeof value;
    return sys::getsockopt(fd, SOL_UDP, UDP_SEGMENT, &value, &len).has_value();
}

result<bool> set_udp_gro(int fd, bool on) noexcept {
    auto r = sys::set_int_option(fd, SOL_UDP, UDP_GRO, on ? 1 : 0);
    if (r) {
        return true;
    }
    if (unsupported_option(errno_of(r.error()))) {
        return false;
    }
    return fail(name_op("setsockopt(UDP_GRO)", r.error()));
}

// What the batch knows about a message beyond its header.
struct udp_batch::message_state {
    std::uint32_t segment = 0; // 0: one datagram
    std::uint32_t count = 1;   // datagrams in the message
    bool closed = false;       // its last datagram was shorter: nothing may join it
    bool truncated = false;
};

udp_batch::udp_batch(std::size_t capacity, std::size_t buffer_size)
    : capacity_(std::max<std::size_t>(capacity, 1)), buffer_size_(buffer_size),
      msgs_(std::make_unique<mmsghdr[]>(capacity_)), iovs_(std::make_unique<iovec[]>(capacity_)),
      peers_(std::make_unique<endpoint[]>(capacity_)),
      state_(std::make_unique<message_state[]>(capacity_)),
      control_(std::make_unique<std::byte[]>(capacity_ * control_size)) {
    if (buffer_size_ > 0) {
        // Slots a power of two apart (64 KiB) would start in the same few cache sets,
        // so every datagram's first lines would evict each other: one spare cache line
        // per slot staggers them (the C baseline's echo-epoll-mmsg does the same).
        stride_ = ((buffer_size_ + 63) & ~std::size_t{63}) + 64;
        // Not value-initialised: pages are only faulted in when a datagram lands.
        buffers_ = std::make_unique_for_overwrite<std::byte[]>(capacity_ * stride_);
    }
    if (buffer_size_ > 2 * compact_size) {
        // Receiving straight into 64 KiB buffers puts every datagram on a page of its
        // own: the kernel's copy and ours then pay a TLB miss per datagram (measured:
        // 8-12 % more server CPU at 1400 bytes). So each receive gets two iovecs: a
        // compact 2 KiB slot (2 KiB apart, plus a cache line), then the rest of the
        // message's large buffer; a datagram longer than the slot has its head copied
        // in front of its tail, so data(i) is always contiguous.
        compact_stride_ = compact_size + 64;
        compact_ = std::make_unique_for_overwrite<std::byte[]>(capacity_ * compact_stride_);
        rx_iovs_ = std::make_unique<iovec[]>(capacity_ * 2);
    }
}

udp_batch::~udp_batch() = default;
udp_batch::udp_batch(udp_batch&&) noexcept = default;
udp_batch& udp_batch::operator=(udp_batch&&) noexcept = default;

void udp_batch::clear() noexcept {
    size_ = 0;
    sent_ = 0;
    split_done_ = 0;
}

std::span<std::byte> udp_batch::data(std::size_t i) const noexcept {
    return {static_cast<std::byte*>(iovs_[i].iov_base), iovs_[i].iov_len};
}

const endpoint& udp_batch::peer(std::size_t i) const noexcept {
    return peers_[i];
}

std::size_t udp_batch::segment_size(std::size_t i) const noexcept {
    return state_[i].segment;
}

std::size_t udp_batch::datagram_count(std::size_t i) const noexcept {
    return state_[i].count;
}

std::span<std::byte> udp_batch::datagram(std::size_t i, std::size_t k) const noexcept {
    auto all = data(i);
    const std::size_t seg = state_[i].segment;
    if (seg == 0) {
        return all;
    }
    const std::size_t at = std::min(k * seg, all.size());
    return all.subspan(at, std::min(seg, all.size() - at));
}

bool udp_batch::truncated(std::size_t i) const noexcept {
    return state_[i].truncated;
}

std::size_t udp_batch::datagram_total() const noexcept {
    std::size_t n = 0;
    for (std::size_t i = 0; i < size_; ++i) {
        n += state_[i].count;
    }
    return n;
}

// ---- building ----

void udp_batch::set_segment(std::size_t i, std::size_t segment) noexcept {
    state_[i].segment = static_cast<std::uint32_t>(segment);
    msghdr& m = msgs_[i].msg_hdr;
    if (segment == 0) {
        m.msg_control = nullptr;
        m.msg_controllen = 0;
        return;
    }
    m.msg_control = control_.get() + i * control_size;
    m.msg_controllen = CMSG_SPACE(sizeof(std::uint16_t));
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(std::uint16_t));
    const auto seg = static_cast<std::uint16_t>(segment);
    std::memcpy(CMSG_DATA(c), &seg, sizeof seg);
}

void udp_batch::start_message(const std::byte* data, std::size_t len, const endpoint& to) noexcept {
    const std::size_t i = size_++;
    peers_[i] = to;
    iovs_[i].iov_base = const_cast<std::byte*>(data); // sendmsg never writes through it
    iovs_[i].iov_len = len;
    msghdr& m = msgs_[i].msg_hdr;
    m.msg_name = peers_[i].data();
    m.msg_namelen = peers_[i].size();
    m.msg_iov = &iovs_[i];
    m.msg_iovlen = 1;
    m.msg_flags = 0;
    state_[i] = message_state{};
    set_segment(i, 0);
}

bool udp_batch::can_merge(std::size_t last, std::size_t len, const endpoint& to) const noexcept {
    const message_state& s = state_[last];
    const std::size_t have = iovs_[last].iov_len;
    // The message's datagram size: its segment, or its one datagram's length.
    const std::size_t seg = s.count > 1 ? s.segment : have;
    return gso_ && !s.closed && len > 0 && len <= seg && seg <= max_segment &&
           s.count < max_gso_segments && have + len <= max_udp_payload && peers_[last] == to;
}

bool udp_batch::push(std::span<const std::byte> data, const endpoint& to) {
    if (size_ > 0 && sent_ < size_ && buffer_size_ > 0) {
        const std::size_t last = size_ - 1;
        auto* base = buffers_.get() + last * stride_;
        // Only a message built in its own buffer can grow in place.
        if (iovs_[last].iov_base == base && iovs_[last].iov_len + data.size() <= buffer_size_ &&
            can_merge(last, data.size(), to)) {
            std::memcpy(base + iovs_[last].iov_len, data.data(), data.size());
            const std::size_t seg =
                state_[last].count > 1 ? state_[last].segment : iovs_[last].iov_len;
            iovs_[last].iov_len += data.size();
            ++state_[last].count;
            state_[last].closed = data.size() < seg;
            set_segment(last, seg);
            return true;
        }
    }
    if (size_ == capacity_ || data.size() > buffer_size_) {
        return false;
    }
    auto* slot = buffers_.get() + size_ * stride_;
    if (!data.empty()) {
        std::memcpy(slot, data.data(), data.size());
    }
    start_message(slot, data.size(), to);
    return true;
}

bool udp_batch::push_ref(std::span<const std::byte> data, const endpoint& to) {
    if (size_ > 0 && sent_ < size_) {
        const std::size_t last = size_ - 1;
        const auto* end = static_cast<const std::byte*>(iovs_[last].iov_base) + iovs_[last].iov_len;
        if (data.data() == end && can_merge(last, data.size(), to)) {
            const std::size_t seg =
                state_[last].count > 1 ? state_[last].segment : iovs_[last].iov_len;
            iovs_[last].iov_len += data.size();
            ++state_[last].count;
            state_[last].closed = data.size() < seg;
            set_segment(last, seg);
            return true;
        }
    }
    if (size_ == capacity_) {
        return false;
    }
    start_message(data.data(), data.size(), to);
    return true;
}

bool udp_batch::push_segments(std::span<const std::byte> data, const endpoint& to,
                              std::size_t segment) {
    if (segment == 0 || segment >= data.size()) {
        if (size_ == capacity_) {
            return false;
        }
        start_message(data.data(), data.size(), to);
        state_[size_ - 1].closed = true;
        return true;
    }
    if (size_ == capacity_ || segment > max_segment) {
        return false;
    }
    start_message(data.data(), data.size(), to);
    const std::size_t i = size_ - 1;
    state_[i].count = static_cast<std::uint32_t>((data.size() + segment - 1) / segment);
    state_[i].closed = true;
    set_segment(i, segment);
    return true;
}

void udp_batch::skip() noexcept {
    if (sent_ < size_) {
        ++sent_;
        split_done_ = 0;
    }
}

// ---- system calls ----

result<std::size_t> udp_batch::receive(int fd, std::size_t max) {
    clear();
    const std::size_t n = std::min(max, capacity_);
    if (n == 0 || buffer_size_ == 0) {
        return fail(EINVAL);
    }
    for (std::size_t i = 0; i < n; ++i) {
        msghdr& m = msgs_[i].msg_hdr;
        if (compact_) {
            iovec* v = &rx_iovs_[2 * i];
            v[0].iov_base = compact_.get() + i * compact_stride_;
            v[0].iov_len = compact_size;
            v[1].iov_base = buffers_.get() + i * stride_ + compact_size;
            v[1].iov_len = buffer_size_ - compact_size;
            m.msg_iov = v;
            m.msg_iovlen = 2;
        } else {
            iovs_[i].iov_base = buffers_.get() + i * stride_;
            iovs_[i].iov_len = buffer_size_;
            m.msg_iov = &iovs_[i];
            m.msg_iovlen = 1;
        }
        m.msg_name = peers_[i].data();
        m.msg_namelen = endpoint::capacity();
        m.msg_control = control_.get() + i * control_size;
        m.msg_controllen = control_size;
        m.msg_flags = 0;
    }
    auto got = sys::recvmmsg(fd, std::span(msgs_.get(), n), 0);
    if (!got) {
        return fail(name_op("recvmmsg", got.error()));
    }
    for (std::size_t i = 0; i < *got; ++i) {
        msghdr& m = msgs_[i].msg_hdr;
        peers_[i].set_size(m.msg_namelen);
        m.msg_namelen = peers_[i].size();
        const std::size_t len = msgs_[i].msg_len;
        if (compact_) {
            std::byte* head = compact_.get() + i * compact_stride_;
            if (len <= compact_size) {
                iovs_[i].iov_base = head;
            } else {
                std::byte* whole = buffers_.get() + i * stride_;
                std::memcpy(whole, head, compact_size); // the tail is already behind it
                iovs_[i].iov_base = whole;
            }
            m.msg_iov = &iovs_[i];
            m.msg_iovlen = 1;
        }
        iovs_[i].iov_len = len;
        message_state s;
        s.truncated = (m.msg_flags & MSG_TRUNC) != 0;
        // UDP_GRO: several datagrams in one buffer, cut every gso_size bytes (udp(7)).
        std::size_t seg = 0;
        for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                int g = 0;
                std::memcpy(&g, CMSG_DATA(c), sizeof g);
                seg = g > 0 ? static_cast<std::size_t>(g) : 0;
            }
        }
        m.msg_flags = 0;
        state_[i] = s;
        if (seg > 0 && seg < len) {
            state_[i].count = static_cast<std::uint32_t>((len + seg - 1) / seg);
            state_[i].closed = true;
            set_segment(i, seg); // a send of this batch echoes it as one GSO message
        } else {
            set_segment(i, 0);
        }
    }
    size_ = *got;
    return *got;
}

result<std::size_t> udp_batch::send(int fd) {
    if (sent_ >= size_) {
        return std::size_t{0};
    }
    if (!gso_ && state_[sent_].segment > 0) {
        return send_split(fd);
    }
    // Without GSO, a segmented message ends the run that goes in one call.
    std::size_t end = size_;
    if (!gso_) {
        for (std::size_t i = sent_ + 1; i < size_; ++i) {
            if (state_[i].segment > 0) {
                end = i;
                break;
            }
        }
    }
    auto n = sys::sendmmsg(fd, std::span(msgs_.get() + sent_, end - sent_), MSG_NOSIGNAL);
    if (!n) {
        const int e = errno_of(n.error());
        if (state_[sent_].segment > 0 && (e == EIO || e == EINVAL || e == EOPNOTSUPP)) {
            // udp_send_skb(): EIO when the route cannot offload the checksum, EINVAL
            // when segment + headers exceed the path MTU or the count is over the
            // limit. Send this message datagram by datagram and stop merging.
            gso_ = false;
            ++gso_refusals_;
            return send_split(fd);
        }
        return fail(name_op("sendmmsg", n.error()));
    }
    sent_ += *n;
    return *n;
}

result<std::size_t> udp_batch::send_split(int fd) {
    const std::size_t i = sent_;
    const std::size_t seg = state_[i].segment;
    const auto all = data(i);
    mmsghdr parts[split_max];
    iovec vecs[split_max];
    std::size_t n = 0;
    for (std::size_t at = split_done_; at < all.size() && n < split_max; at += seg, ++n) {
        vecs[n].iov_base = all.data() + at;
        vecs[n].iov_len = std::min(seg, all.size() - at);
        parts[n] = mmsghdr{};
        parts[n].msg_hdr.msg_name = peers_[i].data();
        parts[n].msg_hdr.msg_namelen = peers_[i].size();
        parts[n].msg_hdr.msg_iov = &vecs[n];
        parts[n].msg_hdr.msg_iovlen = 1;
    }
    auto r = sys::sendmmsg(fd, std::span(parts, n), MSG_NOSIGNAL);
    if (!r) {
        return fail(name_op("sendmmsg", r.error()));
    }
    for (std::size_t k = 0; k < *r; ++k) {
        split_done_ += vecs[k].iov_len;
    }
    if (split_done_ >= all.size()) {
        ++sent_;
        split_done_ = 0;
        return std::size_t{1};
    }
    return std::size_t{0};
}

} // namespace zcio
