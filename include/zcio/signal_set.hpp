// signal_set: receive signals as events on a loop (signalfd).
#pragma once

#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/sys.hpp>
#include <zcio/unique_fd.hpp>

#include <vector>

namespace zcio {

// Signals become readable events instead of asynchronous handlers. open() blocks the
// signals in the calling thread; threads started afterwards inherit the mask, so open
// the set before starting other threads (a thread that does not block them may still
// receive them the ordinary way, and the default action of SIGINT is to exit).
class signal_set {
public:
    static result<signal_set> open(event_loop& loop, const std::vector<int>& signals);

    // co_await set.next(): the number of the next signal (operation_canceled if the
    // set is destroyed meanwhile: do not destroy it while a next() is pending).
    auto next() {
        int fd = fd_.get();
        return io_op<int>(*handle_, io_direction::read, [fd] { return sys::read_signal(fd); });
    }

private:
    signal_set(unique_fd fd, io_handle_ptr h) noexcept
        : fd_(std::move(fd)), handle_(std::move(h)) {}
    unique_fd fd_;
    io_handle_ptr handle_; // destroyed before fd_ (members die in reverse order)
};

// Waits once for any of `signals` (by value: tasks are lazy) and returns its number.
task<result<int>> wait_signal(event_loop& loop, std::vector<int> signals);

} // namespace zcio
