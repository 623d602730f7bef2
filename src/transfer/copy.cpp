// copy(): a coroutine that drives one transfer, waiting where it asks.
#include <zcio/copy.hpp>

namespace zcio {

// The waits are awaited here, in copy()'s own frame: a wait allocates nothing.
task<copy_result> copy(stream& dst, stream& src, copy_options opts) {
    using wait = transfer::wait;
    transfer t(dst, src, opts);
    event_loop& loop = src.loop();
    for (wait w = t.step(dst, src); w != wait::done && w != wait::failed; w = t.step(dst, src)) {
        if (w == wait::until) {
            co_await sleep_until(loop, t.wake_at());
        } else if (w == wait::yield) {
            co_await yield(loop);
        } else if (auto r =
                       co_await (w == wait::readable ? src : dst)
                           .handle()
                           .wait(w == wait::readable ? io_direction::read : io_direction::write);
                   !r) {
            t.wait_failed(r.error()); // a closed or forgotten stream
        }
    }
    co_return t.result();
}

} // namespace zcio
