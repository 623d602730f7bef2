// Consumer of an installed zcio: a pipe round trip through the public sys API.
#include <zcio/sys.hpp>

#include <array>
#include <cstdio>
#include <cstring>

int main() {
    auto pipe = zcio::sys::pipe();
    if (!pipe) {
        std::fprintf(stderr, "pipe: %s\n", pipe.error().message().c_str());
        return 1;
    }
    constexpr char message[] = "zcio install consumer";
    auto wrote = zcio::sys::write(pipe->write_end.get(), message, sizeof message);
    if (!wrote || *wrote != sizeof message) {
        std::fprintf(stderr, "write failed\n");
        return 1;
    }
    std::array<char, 64> buf{};
    auto got = zcio::sys::read(pipe->read_end.get(), buf.data(), buf.size());
    if (!got || *got != sizeof message || std::memcmp(buf.data(), message, sizeof message) != 0) {
        std::fprintf(stderr, "read back the wrong bytes\n");
        return 1;
    }
    // Drained: a non-blocking pipe now says "would block", as a value.
    auto empty = zcio::sys::read(pipe->read_end.get(), buf.data(), buf.size());
    if (empty || !zcio::would_block(empty.error())) {
        std::fprintf(stderr, "expected EAGAIN from an empty non-blocking pipe\n");
        return 1;
    }
    std::printf("ok: %zu bytes through a pipe\n", *got);
    return 0;
}
