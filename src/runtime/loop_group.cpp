// loop_group: one thread per event loop.
#include <zcio/loop_group.hpp>

namespace zcio {

loop_group::loop_group(std::size_t n) {
    if (n == 0) {
        n = std::max(1U, std::thread::hardware_concurrency());
    }
    loops_.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        loops_.push_back(std::make_unique<event_loop>());
    }
}

loop_group::~loop_group() {
    stop();
    join();
}

void loop_group::start(const std::function<void(std::size_t, std::error_code)>& on_error) {
    for (std::size_t i = 0; i < loops_.size(); ++i) {
        threads_.emplace_back([this, i, on_error] {
            if (auto r = loops_[i]->run(); !r && on_error) {
                on_error(i, r.error());
            }
        });
    }
}

void loop_group::stop() noexcept {
    for (auto& l : loops_) {
        l->stop();
    }
}

void loop_group::join() {
    for (auto& t : threads_) {
        if (t.joinable()) {
            t.join();
        }
    }
    threads_.clear();
}

} // namespace zcio
