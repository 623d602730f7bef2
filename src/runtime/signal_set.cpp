// signal_set: signals as readable events, through signalfd.
#include <zcio/signal_set.hpp>

#include <pthread.h>

namespace zcio {

result<signal_set> signal_set::open(event_loop& loop, const std::vector<int>& signals) {
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : signals) {
        if (sigaddset(&mask, s) != 0) {
            return fail_op("sigaddset", EINVAL);
        }
    }
    // A signalfd only sees signals that are blocked; otherwise the default action
    // (or a handler) takes them first.
    if (int err = pthread_sigmask(SIG_BLOCK, &mask, nullptr); err != 0) {
        return fail_op("pthread_sigmask", err);
    }
    auto fd = sys::signalfd(mask);
    if (!fd) {
        return fail(name_op("signalfd", fd.error()));
    }
    auto h = loop.watch(fd->get());
    if (!h) {
        return fail(h.error());
    }
    return signal_set(std::move(*fd), std::move(*h));
}

task<result<int>> wait_signal(event_loop& loop, std::vector<int> signals) {
    auto set = signal_set::open(loop, signals);
    if (!set) {
        co_return fail(set.error());
    }
    co_return co_await set->next();
}

} // namespace zcio
