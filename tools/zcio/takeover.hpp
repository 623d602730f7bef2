// Restart without loss: a running `zcio proxy` hands its listening sockets to a new
// one over a Unix control socket (SCM_RIGHTS), as HAProxy's -x and Envoy's hot restart
// do; the new one finds them in the socket_inventory when it binds.
#pragma once

#include "socket_inventory.hpp"

#include <zcio/zcio.hpp>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace zcio::cli {

class proxy_server;

// The running proxy's side: listens on `path` (SOCK_SEQPACKET, mode 0600) on a thread
// of its own and hands the listening sockets to one `zcio proxy --take-over` at a time.
// The collection runs on `main` (where reloads are applied, so none interleaves).
class takeover_server {
public:
    takeover_server(std::string path, event_loop& main, proxy_server& server);
    ~takeover_server();
    takeover_server(const takeover_server&) = delete;
    takeover_server& operator=(const takeover_server&) = delete;

    // The new process accepts on the sockets: this one must stop accepting and drain.
    // Set before SIGUSR2 is raised to tell the main loop.
    [[nodiscard]] bool handed_over() const noexcept { return handed_over_; }
    [[nodiscard]] int new_pid() const noexcept { return new_pid_; }
    // Called once this process no longer accepts: the new one is told (this waits up to
    // 5 s until it was), and may then close the sockets it did not claim and bind the
    // control path.
    void stopped_accepting();

private:
    void run();
    void serve(int conn);
    void finish_handover(int conn);

    std::string path_;
    event_loop& main_;
    proxy_server& server_;
    unique_fd listen_fd_;
    std::atomic<bool> stop_{false};
    std::atomic<bool> handed_over_{false};
    std::atomic<int> new_pid_{0};
    std::mutex mutex_;
    std::condition_variable cv_;
    bool stopped_ = false;   // guarded by mutex_
    bool confirmed_ = false; // "stopped" sent to the new process; guarded by mutex_
    int conn_ = -1;          // the take-over being served; guarded by mutex_
    std::thread thread_;
};

// The new process's side: connects to `path`, receives every socket into the
// inventory. Throws runtime_failure with one line when there is no process there or
// it goes away mid-way (the old one, if alive, keeps serving).
class takeover_client {
public:
    explicit takeover_client(const std::string& path);
    // This process accepts on the sockets now; waits (bounded) until the old one says it
    // stopped accepting, then closes the sockets no route claimed.
    void started();
    [[nodiscard]] int old_pid() const noexcept { return old_pid_; }

private:
    std::string path_;
    unique_fd conn_;
    int old_pid_ = 0;
};

} // namespace zcio::cli
