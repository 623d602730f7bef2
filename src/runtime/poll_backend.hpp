// poll_backend: the small interface between the loop and the kernel's readiness API.
// epoll today; an io_uring backend would be another implementation of this class.
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
    // waiting. Edge-triggered epoll watches both directions from add() on, so these do
    // nothing there; a one-shot backend (io_uring's poll requests) submits or cancels
    // its request here. Called only for pollable handles.
    virtual void arm(io_handle& /*h*/, io_direction /*d*/) noexcept {}
    virtual void disarm(io_handle& /*h*/, io_direction /*d*/) noexcept {}
    // Waits up to `timeout_ms` and delivers events to their handles. Returns true when
    // the loop's wake-up fd fired.
    virtual result<bool> poll(int timeout_ms) = 0;

protected:
    static void deliver(io_handle& h, bool readable, bool writable, bool rdhup,
                        bool error) noexcept {
        h.on_event(readable, writable, rdhup, error);
    }
};

// The epoll edge-triggered backend. `wake_fd` is watched for readability and reported
// through poll()'s return value.
result<std::unique_ptr<poll_backend>> make_epoll_backend(int wake_fd);

} // namespace zcio::detail
