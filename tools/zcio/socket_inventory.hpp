// Listening sockets a `zcio proxy` did not bind itself: handed over by the process it
// takes over from (--take-over, takeover.hpp) or passed by systemd (LISTEN_FDS,
// systemd_activation.cpp). Binding an address first looks here, so a socket that
// arrived is served, with its accept queue, instead of a fresh one beside it.
#pragma once

#include <zcio/zcio.hpp>

#include <cstddef>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace zcio::cli {

enum class socket_kind { stream, datagram };

struct inherited_socket {
    socket_kind kind = socket_kind::stream;
    endpoint address; // getsockname of the socket itself
    std::string name; // systemd's FileDescriptorName, or the sender's label
    unique_fd fd;
    bool from_systemd = false; // kept for the life of the process (reloads claim again)
    bool claimed = false;
};

// Process-wide: filled before the proxy starts, read by its binds (any loop thread).
//
// Sockets per loop: the old process sends every listener of every loop (with
// SO_REUSEPORT each loop has its own socket, hence its own accept queue). For one
// address with K sockets and M loops, loop i serves socket i % K (a dup when K < M: a
// listening socket watched by several loops, each accept taken by one of them), and
// sockets K > M are served by loops round-robin too (extras()): none is closed, so no
// queue is lost. systemd passes one socket per address: every loop watches it.
class socket_inventory {
public:
    static socket_inventory& instance();

    // Takes `fd` (kind and address read from the socket); false if it is neither a
    // stream nor a datagram socket (it is closed, and `why` says so).
    bool add(unique_fd fd, std::string name, bool from_systemd, std::string& why);

    // A socket of `kind` bound to `at` for loop `index`, if one arrived.
    std::optional<unique_fd> claim(socket_kind kind, const endpoint& at, std::size_t index);
    // Sockets of `at` beyond the first `loops` (none when fewer arrived).
    std::vector<unique_fd> extras(socket_kind kind, const endpoint& at, std::size_t loops);
    // The address of the systemd socket named `name`, or nullopt.
    std::optional<endpoint> systemd_address(const std::string& name) const;
    // Names of the systemd sockets (for an error line).
    std::string systemd_names() const;
    // Closes the handed-over sockets no route claimed, one log line each.
    void close_unclaimed();
    [[nodiscard]] std::size_t size() const;

private:
    std::vector<inherited_socket*> matching(socket_kind kind, const endpoint& at);

    mutable std::mutex mutex_;
    std::vector<inherited_socket> sockets_;
};

} // namespace zcio::cli
