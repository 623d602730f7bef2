// loop_group: N threads, one event_loop each (one loop per core, nothing shared).
#pragma once

#include <zcio/event_loop.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

namespace zcio {

// Owns N loops and, once started, one thread running each. Work reaches a loop by
// spawn() before start() or by post() from any thread. Threads inherit the signal
// mask of the thread that calls start(): block SIGINT/SIGTERM there first (see
// signal_set) if one loop should own them.
class loop_group {
public:
    // `n` = 0 means one loop per core (std::thread::hardware_concurrency()).
    explicit loop_group(std::size_t n = 0);
    ~loop_group();
    loop_group(const loop_group&) = delete;
    loop_group& operator=(const loop_group&) = delete;

    [[nodiscard]] std::size_t size() const noexcept { return loops_.size(); }
    [[nodiscard]] event_loop& loop(std::size_t i) noexcept { return *loops_[i]; }

    // Starts one thread per loop. A loop whose run() fails reports it through
    // `on_error` (on its thread) and its thread ends.
    void start(const std::function<void(std::size_t, std::error_code)>& on_error = {});
    // Asks every loop to stop; join() waits for the threads.
    void stop() noexcept;
    void join();

private:
    std::vector<std::unique_ptr<event_loop>> loops_;
    std::vector<std::thread> threads_;
};

} // namespace zcio
