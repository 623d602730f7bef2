// parse_copy_path: the inverse of to_string(copy_path), over the same names.
#include <zcio/copy_path.hpp>

namespace zcio {

std::optional<copy_path> parse_copy_path(std::string_view name) noexcept {
    for (auto p : {copy_path::automatic, copy_path::splice, copy_path::sendfile,
                   copy_path::copy_file_range, copy_path::buffer}) {
        if (name == to_string(p)) {
            return p;
        }
    }
    return std::nullopt;
}

} // namespace zcio
