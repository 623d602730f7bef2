// accept_loop: the one accept loop of the library. It takes connections from a
// listener, counts them against a connection_limit (refusing the ones past it) and
// hands each admitted one to a handler with the slot it holds until it ends.
#pragma once

#include <zcio/listener.hpp>
#include <zcio/task.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <system_error>
#include <utility>

namespace zcio {

class connection_slot;

// Connections open at once against a maximum. Thread-safe (relaxed atomics): the
// accept loops of several event loops may share one. A limit may have a parent that
// also counts every connection taken here (one level): the proxy's routes count in
// the process's budget. The maximum that applies is this one's, or, when it has none
// (0), the parent's; with neither there is no limit.
class connection_limit {
public:
    explicit connection_limit(std::uint64_t max = 0, connection_limit* parent = nullptr) noexcept
        : max_(max), parent_(parent) {}
    connection_limit(const connection_limit&) = delete;
    connection_limit& operator=(const connection_limit&) = delete;

    void set_max(std::uint64_t max) noexcept { max_.store(max, std::memory_order_relaxed); }
    [[nodiscard]] std::uint64_t max() const noexcept {
        return max_.load(std::memory_order_relaxed);
    }
    [[nodiscard]] std::uint64_t open() const noexcept {
        return open_.load(std::memory_order_relaxed);
    }
    // The maximum that applies: this one's, else the parent's (0: none).
    [[nodiscard]] std::uint64_t applied_max() const noexcept {
        const std::uint64_t own = max();
        return own != 0 || parent_ == nullptr ? own : parent_->max();
    }

    // One more connection, counted here and in the parent, or none (nothing counted)
    // when the maximum that applies is reached.
    [[nodiscard]] std::optional<connection_slot> try_acquire() noexcept;

private:
    friend class connection_slot;
    void release() noexcept;

    std::atomic<std::uint64_t> open_{0};
    std::atomic<std::uint64_t> max_;
    connection_limit* parent_;
};

// One connection counted in a connection_limit until the slot is destroyed (or
// release()d). Move-only; one pointer.
class connection_slot {
public:
    connection_slot() noexcept = default;
    connection_slot(connection_slot&& o) noexcept : limit_(std::exchange(o.limit_, nullptr)) {}
    connection_slot& operator=(connection_slot&& o) noexcept {
        if (this != &o) {
            release();
            limit_ = std::exchange(o.limit_, nullptr);
        }
        return *this;
    }
    ~connection_slot() { release(); }

    void release() noexcept {
        if (auto* l = std::exchange(limit_, nullptr)) {
            l->release();
        }
    }
    [[nodiscard]] bool held() const noexcept { return limit_ != nullptr; }

private:
    friend class connection_limit;
    explicit connection_slot(connection_limit* l) noexcept : limit_(l) {}
    connection_limit* limit_ = nullptr;
};

// How accept_loop admits and reports. Read at every accept: the owner may change it
// between accepts (from the listener's loop), and it must outlive the loop.
struct accept_options {
    // Counts admitted connections; past its maximum a client is refused. None: every
    // client is admitted (with a slot that counts nothing).
    connection_limit* limit = nullptr;
    // A client past the limit: given here (to answer it, to count it) or, when empty,
    // closed at once.
    std::function<void(accepted)> refused;
    // An accept error other than the listener's close (which ends the loop). The loop
    // pauses `error_pause` after it, so a lasting error does not spin.
    std::function<void(const std::error_code&)> failed;
    std::chrono::milliseconds error_pause{100};
    // After this many accepts the accept loop yields to the rest of its loop (0:
    // never). Without it a full accept queue is drained in one go: the other
    // connections wait, and every client accepted meanwhile holds its connect-phase
    // coroutine frames at once (a burst of 5,000 clients held 4.4 MB of them; the
    // pages that stay pinned afterwards cost every idle connection ~40 bytes).
    unsigned batch = 64;
};

using connection_handler = std::function<void(accepted, connection_slot)>;

// Accepts on `l` until it is closed, giving each admitted client to `handler` (which
// typically spawns a task that keeps the slot until the connection ends). Running out
// of descriptors backs off inside listener::accept (EMFILE/ENFILE: 1 ms growing to
// 1 s), so neither that nor an error makes this loop spin. `l` and `opts` must
// outlive the task.
task<void> accept_loop(listener* l, const accept_options* opts, connection_handler handler);

} // namespace zcio
