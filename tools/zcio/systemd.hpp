// systemd integration of `zcio proxy` through libsystemd: socket activation
// (LISTEN_FDS / LISTEN_FDNAMES, listen addresses "systemd:NAME") and sd_notify
// (READY=1, RELOADING=1, STOPPING=1, WATCHDOG=1) for Type=notify units. Outside systemd
// (no LISTEN_PID / NOTIFY_SOCKET) every call does nothing.
#pragma once

#include <zcio/zcio.hpp>

#include <chrono>
#include <optional>

namespace zcio::cli {

// Takes the sockets systemd passed (sd_listen_fds_with_names; the variables are unset,
// so children never see them) into the socket inventory, and lets "systemd:NAME"
// listen addresses resolve to them. Throws runtime_failure on a descriptor that is not
// a bound stream or datagram socket. Returns how many were passed.
std::size_t adopt_systemd_sockets();

void notify_ready();
void notify_reloading();
void notify_stopping();

// When the unit has WatchdogSec= (WATCHDOG_USEC, for this process): WATCHDOG=1 every
// half of it from `loop`, so a stuck main loop is what systemd notices.
task<void> feed_watchdog(event_loop* loop);
[[nodiscard]] std::optional<std::chrono::microseconds> watchdog_interval();

} // namespace zcio::cli
