// copy_bidirectional(): a relay in the caller's frame, and an awaitable join.
#include <zcio/copy_bidirectional.hpp>
#include <zcio/relay.hpp>

#include <algorithm>
#include <coroutine>
#include <optional>
#include <utility>

namespace zcio {

const char* to_string(direction d) noexcept {
    return d == direction::a_to_b ? "a→b" : "b→a";
}

namespace {

// The relay, holding the caller's streams while the copy runs; its end wakes the join.
class joined_relay final : public relay {
public:
    using relay::relay;
    std::optional<traffic> result;
    detail::waiter* parent = nullptr;

protected:
    void on_done(const traffic& t) override {
        result = t;
        if (parent != nullptr) {
            a().loop().schedule(*parent); // through the queue: never inside the relay
        }
    }
};

// The copy_bidirectional() frame, parked until the relay is done.
struct join final : detail::coroutine_waiter<detail::waiter> {
    joined_relay* r;
    explicit join(joined_relay* relay) noexcept : r(relay) {}
    bool await_ready() const noexcept { return r->result.has_value(); }
    void await_suspend(std::coroutine_handle<> co) noexcept {
        co_ = co;
        r->parent = this;
    }
    void await_resume() noexcept { r->parent = nullptr; }
};

// Gives the streams back to the caller however the copy ends (cancellation included).
struct give_back {
    stream& a;
    stream& b;
    joined_relay& r;
    ~give_back() {
        a = std::move(r.a());
        b = std::move(r.b());
    }
};

} // namespace

task<traffic> copy_bidirectional(stream& a, stream& b, bidirectional_options opts) {
    // The idle timeout: a sweep of this one relay four times a period, so it fires
    // between T and T + T/4 after the last byte.
    std::optional<relay_set> sweep;
    if (opts.idle_timeout) {
        sweep.emplace(a.loop(), std::max<clock::duration>(*opts.idle_timeout / 4,
                                                          std::chrono::milliseconds(1)));
    }
    joined_relay r(std::move(a), std::move(b), opts);
    give_back back{a, b, r};
    if (sweep) {
        sweep->add(r);
    }
    r.start();
    co_await join{&r};
    co_return *r.result;
}

} // namespace zcio
