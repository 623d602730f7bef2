// Helpers shared by the libFuzzer targets: a check that aborts (so libFuzzer keeps the
// input as a crash), and a reader that takes parameters from the front of an input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace zcio::fuzz {

// Like assert(), but never compiled out: a broken invariant is a finding.
#define ZCIO_FUZZ_CHECK(cond)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);          \
            std::abort();                                                                          \
        }                                                                                          \
    } while (0)

// Reads small parameters from the front of the input; the rest is the payload. Reading
// past the end gives zeros, so every input is usable.
class input {
public:
    input(const std::uint8_t* data, std::size_t size) noexcept
        : p_(reinterpret_cast<const char*>(data)), n_(size) {}

    std::uint8_t byte() noexcept {
        if (n_ == 0) {
            return 0;
        }
        --n_;
        return static_cast<std::uint8_t>(*p_++);
    }
    std::uint16_t u16() noexcept { return static_cast<std::uint16_t>(byte() << 8 | byte()); }
    std::string_view take(std::size_t k) noexcept {
        k = k < n_ ? k : n_;
        std::string_view out(p_, k);
        p_ += k;
        n_ -= k;
        return out;
    }
    [[nodiscard]] std::string_view rest() const noexcept { return {p_, n_}; }

private:
    const char* p_;
    std::size_t n_;
};

// Read sizes for replaying a byte stream as a connection delivers it: taken from a
// separate seed so the payload stays readable; 0 means "everything that fits".
class chunker {
public:
    explicit chunker(std::uint32_t seed) noexcept : state_(seed | 1) {}
    std::size_t next(std::size_t room) noexcept {
        if (state_ == 0 || room == 0) {
            return room;
        }
        // xorshift32: cheap, and the same seed gives the same reads.
        state_ ^= state_ << 13;
        state_ ^= state_ >> 17;
        state_ ^= state_ << 5;
        const std::size_t n = 1 + state_ % 23;
        return n < room ? n : room;
    }
    static chunker whole() noexcept {
        chunker c(0);
        c.state_ = 0;
        return c;
    }

private:
    std::uint32_t state_;
};

} // namespace zcio::fuzz
