// result<T> and errors that name the operation that failed.
#pragma once

#include <cerrno>
#include <cstdint>
#include <expected>
#include <string>
#include <system_error>

namespace zcio {

// Every fallible library call returns result<T>. EAGAIN is a value, not an exception.
template <class T>
using result = std::expected<T, std::error_code>;

// An error_code whose category is named for the operation ("splice(socket→pipe)"),
// so the message reads "splice(socket→pipe): Connection reset by peer" while the code
// still compares equal to std::errc values (the category maps to generic_category).
// `op` must be a string with static storage duration (a literal).
std::error_code op_error(const char* op, int err) noexcept;

// Re-labels an error with the operation name, keeping the errno value. Errors that
// are not errno values (for example our own category) are returned unchanged.
std::error_code name_op(const char* op, std::error_code ec) noexcept;

// The errno value of an error_code: 0 when it is not an errno-style error.
int errno_of(std::error_code ec) noexcept;

namespace detail {
// An error_code's category as one byte, for objects kept by the thousand: a transfer
// stores its error as the value plus this index (5 bytes that pack with its other
// small fields) rather than an error_code (16). Covers system and generic, every
// op_error() category and 64 others; past those a category is stored as
// system_category (the value is kept, the name is lost).
std::uint8_t category_index(const std::error_category& cat) noexcept;
const std::error_category& category_at(std::uint8_t index) noexcept;
} // namespace detail

inline std::error_code errno_error(int err) noexcept {
    return {err, std::system_category()};
}

inline std::error_code last_error() noexcept {
    return errno_error(errno);
}

inline bool would_block(std::error_code ec) noexcept {
    int e = errno_of(ec);
    return e == EAGAIN || e == EWOULDBLOCK;
}

template <class T>
bool would_block(const result<T>& r) noexcept {
    return !r && would_block(r.error());
}

inline std::unexpected<std::error_code> fail(std::error_code ec) noexcept {
    return std::unexpected(ec);
}

inline std::unexpected<std::error_code> fail(int err) noexcept {
    return std::unexpected(errno_error(err));
}

inline std::unexpected<std::error_code> fail_op(const char* op, int err) noexcept {
    return std::unexpected(op_error(op, err));
}

} // namespace zcio
