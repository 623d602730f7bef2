// listener: a listening TCP or Unix stream socket that accepts streams.
#pragma once

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/stream.hpp>
#include <zcio/task.hpp>
#include <zcio/unique_fd.hpp>

#include <chrono>
#include <cstdint>

namespace zcio {

struct listen_options {
    int backlog = 1024;
    // SO_REUSEPORT: one listener per loop on the same port, the kernel spreads clients.
    bool reuse_port = false;
    // For Unix paths: remove a stale socket file before bind, and our socket file on
    // close. A socket file is stale when a connect to it is refused (ECONNREFUSED: no
    // one listens); a live one (the connect is accepted or the backlog is full) and
    // anything that is not a socket (lstat, so a symlink is not followed) are left
    // alone, and bind fails with EADDRINUSE. The probe connect is closed at once: the
    // server there sees a connection that ends without data. On close the path is
    // removed only if it is still the socket this listener bound (same device and
    // inode), not one another process put there since.
    bool unlink_unix_path = true;
};

struct accepted {
    stream conn;
    endpoint peer;
};

class listener {
public:
    listener() noexcept = default;
    listener(listener&&) noexcept = default;
    listener& operator=(listener&&) noexcept;
    ~listener();

    // socket + SO_REUSEADDR (+ SO_REUSEPORT) + bind + listen, watched on `loop`.
    static result<listener> bind(event_loop& loop, const endpoint& at, listen_options opts = {});

    // A socket that already listens (handed over by another process, or by systemd),
    // made non-blocking and watched on `loop`. A Unix path socket's file is removed on
    // close like a bound one's when `own_unix_path` (it is still that socket's file).
    static result<listener> adopt(event_loop& loop, unique_fd fd, bool own_unix_path = true);

    // Waits for and accepts one connection. When the process is out of descriptors
    // (EMFILE/ENFILE) the pending client stays in the backlog; accept backs off with
    // a growing pause (1 ms to 1 s) instead of spinning, counts it, and retries, so
    // the listener recovers by itself once descriptors free up.
    task<result<accepted>> accept();

    // The address actually bound (the real port when port 0 was asked for).
    [[nodiscard]] const endpoint& local_endpoint() const noexcept { return local_; }
    [[nodiscard]] int fd() const noexcept { return fd_.get(); }
    // The loop it was bound on (bound listeners only).
    [[nodiscard]] event_loop& loop() const noexcept { return *loop_; }
    [[nodiscard]] std::uint64_t fd_exhausted_count() const noexcept { return fd_exhausted_; }

    void close() noexcept;
    // close() will leave the socket file alone: another process serves it now.
    void keep_unix_path() noexcept { owns_unix_path_ = false; }

private:
    result<void> watch_on(event_loop& loop);
    event_loop* loop_ = nullptr;
    unique_fd fd_;
    io_handle_ptr handle_;
    endpoint local_;
    bool owns_unix_path_ = false;
    // The socket file bind() made (lstat right after), to recognise it on close.
    std::uint64_t unix_dev_ = 0;
    std::uint64_t unix_ino_ = 0;
    std::uint64_t fd_exhausted_ = 0;
};

} // namespace zcio
