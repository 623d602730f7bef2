// Socket activation (systemd.hpp): the passed sockets go into the socket inventory,
// which every bind looks in, so a route's "systemd:NAME" is served on systemd's socket.
#include "systemd.hpp"

#include "cli_util.hpp"
#include "socket_inventory.hpp"

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace zcio::cli {

namespace {

endpoint systemd_endpoint(std::string_view name) {
    const std::string n(name);
    if (n.empty()) {
        throw usage_error("systemd:NAME: the name is missing (FileDescriptorName= of the socket)");
    }
    auto& inv = socket_inventory::instance();
    if (auto at = inv.systemd_address(n)) {
        return *at;
    }
    throw usage_error("systemd:" + n + ": systemd passed no socket of that name (passed: " +
                      inv.systemd_names() + ")");
}

} // namespace

std::size_t adopt_systemd_sockets() {
    char** names = nullptr;
    const int n = sd_listen_fds_with_names(1, &names); // 1: unset LISTEN_* for children
    if (n < 0) {
        throw runtime_failure(std::string("LISTEN_FDS: ") + std::strerror(-n));
    }
    std::string why;
    bool ok = true;
    for (int i = 0; i < n; ++i) {
        const std::string name = names != nullptr && names[i] != nullptr ? names[i] : "unknown";
        // systemd names an unnamed socket "unknown"; also reachable as its position.
        if (ok && !socket_inventory::instance().add(unique_fd(SD_LISTEN_FDS_START + i), name, true,
                                                    why)) {
            ok = false;
        }
    }
    if (names != nullptr) {
        for (int i = 0; i < n; ++i) {
            std::free(names[i]);
        }
        std::free(names);
    }
    if (!ok) {
        throw runtime_failure("LISTEN_FDS: " + why);
    }
    if (n > 0) {
        spdlog::info("systemd passed {} socket(s)", n);
        set_named_listen_resolver(&systemd_endpoint);
    }
    return static_cast<std::size_t>(n);
}

} // namespace zcio::cli
