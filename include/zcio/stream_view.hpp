// stream_view: a zcio::stream over an fd that something else owns and polls.
//
// A transfer takes stream& ends, and a stream normally owns its fd and its loop
// registration. A driver with its own poller (the Asio adapter in zcio/asio.hpp, whose
// sockets Asio's reactor watches) needs neither: a view borrows the fd, registers it
// nowhere, and leaves it open when it dies. Readiness lives in the view's unwatched
// io_handle: the transfer's EAGAINs clear it and the driver's poller marks it again
// (mark_ready) before the next step().
#pragma once

#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/stream.hpp>
#include <zcio/sys.hpp>

namespace zcio {

class stream_view {
public:
    // A view of `fd`, whose kind (socket, pipe, regular file) fstat tells. The fd is
    // not changed (the driver makes it non-blocking) and must outlive the view. Also
    // sets SIGPIPE to SIG_IGN if it is at its default, as an event_loop would: splice
    // and sendfile to a closed socket raise it.
    static result<stream_view> of(int fd);

    stream_view(stream_view&&) noexcept = default;
    stream_view& operator=(stream_view&&) = delete;
    stream_view(const stream_view&) = delete;
    stream_view& operator=(const stream_view&) = delete;
    ~stream_view() { release(); }

    // The stream to pass to a transfer. Its loop() must not be called, and nothing may
    // co_await its operations: no loop watches it.
    [[nodiscard]] stream& get() noexcept { return s_; }
    [[nodiscard]] int fd() const noexcept { return s_.fd(); }
    [[nodiscard]] sys::fd_kind kind() const noexcept { return s_.kind(); }
    // False for regular files: always ready, there is nothing to wait for.
    [[nodiscard]] bool pollable() const noexcept { return s_.handle().pollable(); }
    // The driver's poller saw the fd ready in direction `d`.
    void mark_ready(io_direction d) noexcept { s_.handle().mark_ready(d); }

private:
    explicit stream_view(stream s) noexcept : s_(std::move(s)) {}
    void release() noexcept;
    stream s_;
};

} // namespace zcio
