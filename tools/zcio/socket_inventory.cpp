// The inventory of inherited sockets (socket_inventory.hpp).
#include "socket_inventory.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

namespace zcio::cli {

socket_inventory& socket_inventory::instance() {
    static socket_inventory inv;
    return inv;
}

bool socket_inventory::add(unique_fd fd, std::string name, bool from_systemd, std::string& why) {
    int type = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
        why = name + ": not a socket (" + std::strerror(errno) + ")";
        return false;
    }
    auto local = local_endpoint_of(fd.get());
    if (!local || (type != SOCK_STREAM && type != SOCK_DGRAM)) {
        why = name + ": not a bound stream or datagram socket";
        return false;
    }
    // systemd's descriptors are blocking and inherited across exec: ours never are.
    if (::fcntl(fd.get(), F_SETFD, FD_CLOEXEC) != 0) {
        why = name + ": fcntl(FD_CLOEXEC): " + std::strerror(errno);
        return false;
    }
    std::lock_guard lock(mutex_);
    inherited_socket s;
    s.kind = type == SOCK_STREAM ? socket_kind::stream : socket_kind::datagram;
    s.address = *local;
    s.name = std::move(name);
    s.fd = std::move(fd);
    s.from_systemd = from_systemd;
    sockets_.push_back(std::move(s));
    return true;
}

std::vector<inherited_socket*> socket_inventory::matching(socket_kind kind, const endpoint& at) {
    std::vector<inherited_socket*> out;
    for (auto& s : sockets_) {
        if (s.kind == kind && s.fd.valid() && s.address == at) {
            out.push_back(&s);
        }
    }
    return out;
}

std::optional<unique_fd> socket_inventory::claim(socket_kind kind, const endpoint& at,
                                                 std::size_t index) {
    std::lock_guard lock(mutex_);
    auto all = matching(kind, at);
    if (all.empty()) {
        return std::nullopt;
    }
    inherited_socket& s = *all[index % all.size()];
    auto copy = sys::dup(s.fd.get()); // the original stays for extras() and reloads
    if (!copy) {
        return std::nullopt; // out of descriptors: the caller binds, and says why
    }
    s.claimed = true;
    return std::move(*copy);
}

std::vector<unique_fd> socket_inventory::extras(socket_kind kind, const endpoint& at,
                                                std::size_t loops) {
    std::lock_guard lock(mutex_);
    auto all = matching(kind, at);
    std::vector<unique_fd> out;
    for (std::size_t i = loops; i < all.size(); ++i) {
        if (auto copy = sys::dup(all[i]->fd.get())) {
            all[i]->claimed = true;
            out.push_back(std::move(*copy));
        }
    }
    return out;
}

std::optional<endpoint> socket_inventory::systemd_address(const std::string& name) const {
    std::lock_guard lock(mutex_);
    for (const auto& s : sockets_) {
        if (s.from_systemd && s.name == name) {
            return s.address;
        }
    }
    return std::nullopt;
}

std::string socket_inventory::systemd_names() const {
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& s : sockets_) {
        if (s.from_systemd) {
            out += (out.empty() ? "" : ", ") + s.name;
        }
    }
    return out.empty() ? "none" : out;
}

void socket_inventory::close_unclaimed() {
    std::lock_guard lock(mutex_);
    std::vector<endpoint> said; // one line per address, not per loop's socket
    for (auto& s : sockets_) {
        if (s.from_systemd || !s.fd.valid()) {
            continue;
        }
        const bool served = std::ranges::any_of(sockets_, [&](const inherited_socket& o) {
            return o.claimed && o.kind == s.kind && o.address == s.address;
        });
        if (!s.claimed && std::ranges::find(said, s.address) == said.end()) {
            said.push_back(s.address);
            spdlog::warn("take-over: {}{} {}: closed",
                         s.kind == socket_kind::datagram ? "udp:" : "", s.address.to_string(),
                         served ? "has more sockets than this process has loops"
                                : "is not in the new config");
            if (!served && s.address.is_unix() && !s.address.is_abstract()) {
                // The old process left its file to us: nobody listens there any more.
                const auto* un = reinterpret_cast<const sockaddr_un*>(s.address.data());
                struct stat st {};
                if (::lstat(un->sun_path, &st) == 0 && S_ISSOCK(st.st_mode)) {
                    ::unlink(un->sun_path);
                }
            }
        }
        s.fd.reset(); // claimed ones live on as the listeners' own dups
    }
}

std::size_t socket_inventory::size() const {
    std::lock_guard lock(mutex_);
    return sockets_.size();
}

} // namespace zcio::cli
