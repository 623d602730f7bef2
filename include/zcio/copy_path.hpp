// copy_path: the kernel path that moves a transfer's bytes, and its names ("auto",
// "splice", "sendfile", "copy_file_range", "buffer"): printed and parsed here only.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace zcio {

// The kernel path that moves the bytes.
enum class copy_path : std::uint8_t {
    automatic,       // choose by what the two ends are (the default)
    splice,          // splice(2), directly or through a pooled pipe
    sendfile,        // sendfile(2) from a regular file
    copy_file_range, // copy_file_range(2) between regular files
    buffer,          // read/write through a pooled buffer
};
const char* to_string(copy_path p) noexcept;

// The path named `name` exactly as to_string() prints it; nullopt for anything else.
std::optional<copy_path> parse_copy_path(std::string_view name) noexcept;

} // namespace zcio
