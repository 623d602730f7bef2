// accept_loop: accept, count against the limit, hand over or refuse.
#include <zcio/accept_loop.hpp>

namespace zcio {

std::optional<connection_slot> connection_limit::try_acquire() noexcept {
    const std::uint64_t own = max_.load(std::memory_order_relaxed);
    const std::uint64_t here = open_.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t limit = own;
    std::uint64_t active = here;
    if (parent_ != nullptr) {
        const std::uint64_t there = parent_->open_.fetch_add(1, std::memory_order_relaxed);
        if (own == 0) { // the parent's maximum applies, to the parent's count
            limit = parent_->max();
            active = there;
        }
    }
    if (limit == 0 || active < limit) {
        return connection_slot(this);
    }
    release(); // counted first so that racing accepts never both take the last slot
    return std::nullopt;
}

void connection_limit::release() noexcept {
    open_.fetch_sub(1, std::memory_order_relaxed);
    if (parent_ != nullptr) {
        parent_->open_.fetch_sub(1, std::memory_order_relaxed);
    }
}

namespace {

// The slot an accepted client gets, or none when it is past the limit.
std::optional<connection_slot> admit(const accept_options& opts) {
    if (opts.limit == nullptr) {
        return connection_slot();
    }
    return opts.limit->try_acquire();
}

} // namespace

task<void> accept_loop(listener* l, const accept_options* opts, connection_handler handler) {
    unsigned in_a_row = 0;
    while (true) {
        if (opts->batch != 0 && ++in_a_row > opts->batch) {
            in_a_row = 0;
            co_await yield(l->loop()); // the clients just handed over start their work
        }
        auto a = co_await l->accept();
        if (!a) {
            if (a.error() == std::errc::operation_canceled || l->fd() < 0) {
                co_return; // the listener was closed
            }
            if (opts->failed) {
                opts->failed(a.error());
            }
            co_await sleep_for(l->loop(), opts->error_pause);
            if (l->fd() < 0) {
                co_return; // closed while this slept
            }
            continue;
        }
        auto slot = admit(*opts);
        if (!slot) {
            if (opts->refused) {
                opts->refused(std::move(*a));
            }
            continue; // otherwise `a` goes out of scope: closed at once
        }
        handler(std::move(*a), std::move(*slot));
    }
}

} // namespace zcio
