// rate_limiter: the token bucket behind copy_options::limiter.
#include <zcio/transfer.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>

namespace zcio {

rate_limiter::rate_limiter(std::uint64_t bytes_per_second, std::uint64_t burst) noexcept
    : rate_(bytes_per_second),
      burst_(static_cast<double>(burst != 0 ? burst
                                            : std::max<std::uint64_t>(bytes_per_second / 10, 1))),
      tokens_(burst_) {}

void rate_limiter::refill(clock::time_point now) noexcept {
    if (last_ == clock::time_point{}) {
        last_ = now;
        return;
    }
    const double secs = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min(burst_, tokens_ + secs * static_cast<double>(rate_));
    last_ = now;
}

namespace {
// The least a limited copy waits for before it moves bytes again (capped by the
// burst). Handing out whatever trickled in since the last call (a few bytes per
// microsecond) made a limited copy spin without ever sleeping: one tiny syscall after
// another, never yielding to the loop, and at -O0 (where g++ does not turn symmetric
// transfer into a tail call) a stack that grew with every turn until it overflowed.
constexpr double rate_quantum = 64.0 * 1024;
} // namespace

std::size_t rate_limiter::allow(std::size_t want, clock::time_point now) noexcept {
    if (rate_ == 0) {
        return want;
    }
    refill(now);
    const double need = std::min({static_cast<double>(want), burst_, rate_quantum});
    const double whole = std::floor(tokens_);
    return whole < std::max(need, 1.0) ? 0 : std::min(want, static_cast<std::size_t>(whole));
}

void rate_limiter::consume(std::size_t n) noexcept {
    if (rate_ != 0) {
        tokens_ -= static_cast<double>(n);
    }
}

clock::time_point rate_limiter::ready_at(clock::time_point now) const noexcept {
    // When a whole quantum may move (see allow()), not the first byte.
    const double need = std::max(1.0, std::min(burst_, rate_quantum));
    if (rate_ == 0 || tokens_ >= need) {
        return now;
    }
    const double wait = (need - tokens_) / static_cast<double>(rate_);
    return now + std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(wait));
}

} // namespace zcio
