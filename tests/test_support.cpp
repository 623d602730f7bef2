// Shared test helpers: random data, checksums, descriptor-leak checks.
#include "test_support.hpp"

#include <zcio/event_loop.hpp>

#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <random>

namespace zcio::test {

std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed) {
    std::vector<std::byte> out(n);
    std::mt19937_64 rng(seed);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        std::uint64_t v = rng();
        for (int k = 0; k < 8; ++k) {
            out[i + k] = static_cast<std::byte>(v >> (8 * k));
        }
    }
    for (; i < n; ++i) {
        out[i] = static_cast<std::byte>(rng());
    }
    return out;
}

void checksum::update(std::span<const std::byte> data) noexcept {
    for (std::byte b : data) {
        h_ ^= static_cast<std::uint8_t>(b);
        h_ *= 1099511628211ULL;
    }
}

std::uint64_t checksum_of(std::span<const std::byte> data) noexcept {
    checksum c;
    c.update(data);
    return c.value();
}

std::size_t open_fd_count() {
    std::size_t n = 0;
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) {
        return 0;
    }
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] != '.') {
            ++n;
        }
    }
    ::closedir(d);
    return n - 1; // the DIR's own descriptor
}

void fd_leak_check::SetUp() {
    fds_at_start_ = open_fd_count();
    handles_at_start_ = io_handles_alive();
}

void fd_leak_check::TearDown() {
    EXPECT_EQ(open_fd_count(), fds_at_start_) << "descriptors leaked by this test";
    EXPECT_EQ(io_handles_alive(), handles_at_start_) << "io_handles leaked by this test";
}

std::string temp_path(const std::string& stem) {
    static std::atomic<int> counter{0};
    const char* dir = std::getenv("TMPDIR");
    std::string base = dir != nullptr ? dir : "/tmp";
    return base + "/zcio-" + stem + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(counter.fetch_add(1));
}

} // namespace zcio::test
