// Shared test helpers: random data, checksums, descriptor-leak checks.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace zcio::test {

// Deterministic pseudo-random bytes (seeded), so a failure can be reproduced.
std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed);

// A 64-bit FNV-1a checksum, streaming: feed chunks, read value().
class checksum {
public:
    void update(std::span<const std::byte> data) noexcept;
    [[nodiscard]] std::uint64_t value() const noexcept { return h_; }

private:
    std::uint64_t h_ = 1469598103934665603ULL;
};

std::uint64_t checksum_of(std::span<const std::byte> data) noexcept;

// Number of entries in /proc/self/fd.
std::size_t open_fd_count();

// A fixture whose teardown fails the test when descriptors leaked.
class fd_leak_check : public ::testing::Test {
protected:
    void SetUp() override;
    void TearDown() override;

private:
    std::size_t fds_at_start_ = 0;
    std::size_t handles_at_start_ = 0;
};

// A unique path under $TMPDIR (or /tmp) for a temporary file; nothing is created.
std::string temp_path(const std::string& stem);

} // namespace zcio::test
