// udp_batch: many datagrams per system call (recvmmsg / sendmmsg), with UDP GRO and GSO.
//
// A batch owns fixed arrays made once: message headers, iovecs, peer addresses, control
// buffers and (optionally) one data buffer per message. Nothing is allocated per
// datagram. The same batch can be received into and then sent back: after receive(),
// every message is queued for sending to the address it came from, which is an echo.
//
// Offloads, both detected at run time with the plain path as the fallback:
//  - UDP_GRO (Linux 5.0, udp(7)): the kernel may hand over several datagrams of one
//    sender in one buffer, with their size in a control message. segment_size(i) says
//    so; datagram(i, k) cuts them apart.
//  - UDP_SEGMENT (GSO, Linux 4.18): one message carries several datagrams of equal size
//    (the last may be shorter) to one destination, so the stack is crossed once per
//    message instead of once per datagram. With set_gso(true), push() and push_ref()
//    merge a datagram into the message before it when they can. If the kernel refuses a
//    segmented message (EIO: no checksum offload on the route; EINVAL: segment larger
//    than the path MTU allows), the batch sends that message one datagram at a time
//    and stops merging (gso() turns false).
#pragma once

#include <zcio/endpoint.hpp>
#include <zcio/result.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

struct mmsghdr;
struct iovec;

namespace zcio {

// Largest UDP payload over IPv4: 65535 - 20 (IP header) - 8 (UDP header).
inline constexpr std::size_t max_udp_payload = 65507;

// Most datagrams one UDP_SEGMENT message may carry: UDP_MAX_SEGMENTS was 64 until
// Linux 6.10 (then 128); the smaller value works everywhere.
inline constexpr std::size_t max_gso_segments = 64;

// Whether the kernel knows UDP_SEGMENT for this socket: getsockopt(SOL_UDP, UDP_SEGMENT)
// succeeds from Linux 4.18 on (ENOPROTOOPT before; other socket types refuse it too).
bool udp_gso_supported(int fd) noexcept;

// Turns UDP_GRO on or off. Returns false when the kernel or the socket type does not
// support it (ENOPROTOOPT, EOPNOTSUPP), an error for anything else.
result<bool> set_udp_gro(int fd, bool on) noexcept;

class udp_batch {
public:
    // Room for `capacity` messages (at least 1). Each message gets `buffer_size` bytes
    // of memory owned by the batch, used by receive() and push(); 0 makes a batch that
    // only sends memory the caller owns (push_ref). A UDP_GRO buffer can hold up to
    // 64 KiB, and so can one datagram, hence the default. The memory is not touched
    // before a datagram lands in it, so a large batch costs address space, not RAM.
    explicit udp_batch(std::size_t capacity, std::size_t buffer_size = 65536);
    ~udp_batch();
    udp_batch(udp_batch&&) noexcept;
    udp_batch& operator=(udp_batch&&) noexcept;
    udp_batch(const udp_batch&) = delete;
    udp_batch& operator=(const udp_batch&) = delete;

    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] std::size_t buffer_size() const noexcept { return buffer_size_; }
    // Messages in the batch (received, or queued for sending).
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
    [[nodiscard]] bool full() const noexcept { return size_ == capacity_; }
    // Empties the batch (the send cursor goes back to the first message too).
    void clear() noexcept;

    // ---- message i (0 <= i < size()) ----

    // Its bytes: one datagram, or several when segment_size(i) is not 0.
    [[nodiscard]] std::span<std::byte> data(std::size_t i) const noexcept;
    // Who sent it (after receive) or where it goes (when sending).
    [[nodiscard]] const endpoint& peer(std::size_t i) const noexcept;
    // 0 for a single datagram; otherwise the size of each datagram in data(i) (the last
    // one may be shorter): a UDP_GRO buffer received, or a UDP_SEGMENT message to send.
    [[nodiscard]] std::size_t segment_size(std::size_t i) const noexcept;
    // Datagrams in message i (1 unless it is segmented).
    [[nodiscard]] std::size_t datagram_count(std::size_t i) const noexcept;
    // The k-th datagram of message i.
    [[nodiscard]] std::span<std::byte> datagram(std::size_t i, std::size_t k) const noexcept;
    // The datagram was longer than the buffer and was cut (MSG_TRUNC).
    [[nodiscard]] bool truncated(std::size_t i) const noexcept;
    // Datagrams in the whole batch.
    [[nodiscard]] std::size_t datagram_total() const noexcept;

    // ---- building a batch to send ----

    // With GSO on, push() and push_ref() merge a datagram into the message before it
    // when it goes to the same peer, the message's datagrams all have this datagram's
    // size (or this one is shorter, which then ends the message), the total stays
    // within max_udp_payload and max_gso_segments, and (push_ref) its bytes follow the
    // message's bytes in memory. Off by default; the sender checks udp_gso_supported().
    void set_gso(bool on) noexcept { gso_ = on; }
    [[nodiscard]] bool gso() const noexcept { return gso_; }
    // Segmented messages the kernel refused and the batch sent one datagram at a time.
    [[nodiscard]] std::uint64_t gso_refusals() const noexcept { return gso_refusals_; }

    // Appends one datagram for `to`, copied into the batch's memory. Returns false, and
    // adds nothing, when it does not fit (no message left, or larger than buffer_size).
    bool push(std::span<const std::byte> data, const endpoint& to);
    // Appends one datagram for `to` without copying: `data` must stay valid and
    // unchanged until the message is sent or the batch is cleared. False when full.
    bool push_ref(std::span<const std::byte> data, const endpoint& to);
    // Appends `data` as one message of datagrams of `segment` bytes each (the last may
    // be shorter), without copying: a UDP_GRO buffer going back out. Never merged.
    // With GSO off it is still one message here, sent one datagram at a time.
    bool push_segments(std::span<const std::byte> data, const endpoint& to, std::size_t segment);

    // ---- the send cursor ----

    // Messages sent so far by send(); messages from sent() to size() are still to go.
    [[nodiscard]] std::size_t sent() const noexcept { return sent_; }
    [[nodiscard]] std::size_t unsent() const noexcept { return size_ - sent_; }
    // Gives up on the next unsent message (after send() reported an error for it).
    void skip() noexcept;

    // ---- system calls (non-blocking; EAGAIN comes back as an error value) ----

    // One recvmmsg of up to min(max, capacity()) datagrams into the batch, which is
    // cleared first; the messages are then queued for sending back to their senders.
    // Returns the number received. recvmmsg(2) returns fewer than asked (without
    // error) only when the socket's queue ran empty, which callers may use as EAGAIN.
    result<std::size_t> receive(int fd, std::size_t max = SIZE_MAX);
    // One sendmmsg of the unsent messages; returns how many were sent completely (a
    // partial count is a result: the cursor moves past them, call again for the rest).
    // It may return 0 after sending part of a segmented message that the kernel
    // refused, which it then sends datagram by datagram (call again). An error is about
    // the first unsent message: EAGAIN (call again when writable) or why it cannot go
    // (skip() it to go on with the next).
    result<std::size_t> send(int fd);

private:
    struct message_state;
    bool can_merge(std::size_t last, std::size_t len, const endpoint& to) const noexcept;
    void start_message(const std::byte* data, std::size_t len, const endpoint& to) noexcept;
    void set_segment(std::size_t i, std::size_t segment) noexcept;
    result<std::size_t> send_split(int fd);

    std::size_t capacity_ = 0;
    std::size_t buffer_size_ = 0;
    std::size_t stride_ = 0; // bytes from one message's buffer to the next
    std::size_t compact_stride_ = 0;
    std::size_t size_ = 0;
    std::size_t sent_ = 0;
    std::size_t split_done_ = 0; // bytes of message sent_ already sent one by one
    bool gso_ = false;
    std::uint64_t gso_refusals_ = 0;
    std::unique_ptr<mmsghdr[]> msgs_;
    std::unique_ptr<iovec[]> iovs_;
    std::unique_ptr<endpoint[]> peers_;
    std::unique_ptr<message_state[]> state_;
    std::unique_ptr<std::byte[]> control_;
    std::unique_ptr<std::byte[]> buffers_;
    std::unique_ptr<std::byte[]> compact_; // receive slots for short datagrams
    std::unique_ptr<iovec[]> rx_iovs_;     // two per message while receiving
};

} // namespace zcio
