// unique_fd: closing a descriptor exactly once.
#include <zcio/unique_fd.hpp>

#include <unistd.h>

namespace zcio {

void unique_fd::reset(int fd) noexcept {
    int old = std::exchange(fd_, fd);
    // close(2): on Linux the descriptor is released even when close fails with EINTR,
    // so retrying could close a descriptor another thread has just been given.
    if (old >= 0 && old != fd) {
        ::close(old);
    }
}

} // namespace zcio
