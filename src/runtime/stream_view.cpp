// stream_view: an unwatched stream over a borrowed fd; see include/zcio/stream_view.hpp.
#include <zcio/stream_view.hpp>

#include <utility>

namespace zcio {

result<stream_view> stream_view::of(int fd) {
    auto kind = sys::kind_of(fd);
    if (!kind) {
        return fail(name_op("fstat", kind.error()));
    }
    ignore_sigpipe_once();
    // Regular files are always ready, as a loop's watch() would find (epoll refuses them).
    const bool pollable = *kind != sys::fd_kind::regular_file;
    return stream_view(stream(unique_fd(fd), io_handle::unwatched(fd, pollable), *kind));
}

// The fd is borrowed: forget the handle and let go of the fd before ~stream closes it.
void stream_view::release() noexcept {
    if (s_.handle_) {
        s_.handle_->forget();
    }
    (void)s_.fd_.release();
}

} // namespace zcio
