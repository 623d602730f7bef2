// poll_backend: the small interface between the loop and the kernel's readiness API.
// epoll today; an io_uring backend would be another implementation of this class, with
// its per-handle state in io_handle's backend bits: nothing here or in io_handle is
// epoll's.
#pragma once

#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>

namespace zcio::detail {

class poll_backend {
public:
    virtual ~poll_backend() = default;

    // Starts watching `h` for both directions. Returns false when the kernel cannot
    // poll this kind of fd (regular files): the handle is then always ready.
    virtual result<bool> add(io_handle& h) = 0;
    // Stops watching; called before the fd is closed.
    virtual void remove(io_handle& h) noexcept = 0;
    // A coroutine now waits for `h` in direction `d` (it got EAGAIN), or stopped
    // waiting. Edge-triggered epoll watches both directions from add() on and uses
    // arm() only to watch again a direction it stopped watching; a one-shot backend
    // (io_uring's poll requests) would submit or cancel its request here. Called only
    // for pollable handles.
    virtual void arm(io_handle& /*h*/, io_direction /*d*/) noexcept {}
    virtual void disarm(io_handle& /*h*/, io_direction /*d*/) noexcept {}
    // Waits up to `timeout_ms` and delivers events to their handles. Returns true when
    // the loop's wake-up fd fired.
    virtual result<bool> poll(int timeout_ms) = 0;
    // Waits that returned events nobody was waiting for (the loop woke for nothing).
    [[nodiscard]] std::uint64_t idle_wakeups() const noexcept { return idle_wakeups_; }

protected:
    // Returns whether the event woke a waiter.
    static bool deliver(io_handle& h, bool readable, bool writable, bool rdhup,
                        bool error) noexcept {
        return h.on_event(readable, writable, rdhup, error);
    }
    static bool has_reader(const io_handle& h) noexcept { return h.reader_ != nullptr; }
    static bool has_writer(const io_handle& h) noexcept { return h.writer_ != nullptr; }
    // Bits of io_handle that only the backend interprets (io_handle::backend_bits_):
    // each backend class defines their meaning; the loop never reads them.
    static constexpr unsigned backend_bit_count = 4;
    static std::uint8_t backend_bits(const io_handle& h) noexcept { return h.backend_bits_; }
    static void set_backend_bits(io_handle& h, std::uint8_t bits) noexcept {
        h.backend_bits_ = bits & ((1U << backend_bit_count) - 1U) & 0xffU;
    }

    std::uint64_t idle_wakeups_ = 0;
};

// The epoll edge-triggered backend. `wake_fd` is watched for readability and reported
// through poll()'s return value.
result<std::unique_ptr<poll_backend>> make_epoll_backend(int wake_fd);

} // namespace zcio::detail
