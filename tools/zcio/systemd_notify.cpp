// sd_notify of `zcio proxy` (systemd.hpp). Type=notify: READY=1 once every listener is
// bound, RELOADING=1 and READY=1 around a SIGHUP reload (systemctl reload), STOPPING=1
// when it drains; WATCHDOG=1 from the main loop.
#include "systemd.hpp"

#include <systemd/sd-daemon.h>

namespace zcio::cli {

void notify_ready() {
    sd_notify(0, "READY=1\nSTATUS=serving");
}

void notify_reloading() {
    sd_notify(0, "RELOADING=1\nSTATUS=reloading the config");
}

void notify_stopping() {
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
}

std::optional<std::chrono::microseconds> watchdog_interval() {
    std::uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
        return std::nullopt;
    }
    return std::chrono::microseconds(usec / 2);
}

task<void> feed_watchdog(event_loop* loop) {
    const auto every = watchdog_interval();
    if (!every) {
        co_return;
    }
    while (true) {
        sd_notify(0, "WATCHDOG=1");
        co_await sleep_for(*loop, *every);
    }
}

} // namespace zcio::cli
