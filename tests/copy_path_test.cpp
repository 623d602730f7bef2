// Tests for copy_path's names: parse_copy_path is to_string's inverse, exactly.
#include <zcio/copy_path.hpp>

#include <gtest/gtest.h>

#include <string>

namespace zcio {
namespace {

TEST(copy_path, every_name_parses_back_to_its_path) {
    for (auto p : {copy_path::automatic, copy_path::splice, copy_path::sendfile,
                   copy_path::copy_file_range, copy_path::buffer}) {
        const auto back = parse_copy_path(to_string(p));
        ASSERT_TRUE(back) << to_string(p);
        EXPECT_EQ(*back, p) << to_string(p);
    }
    EXPECT_EQ(std::string(to_string(copy_path::automatic)), "auto");
}

TEST(copy_path, anything_else_is_no_path) {
    for (const char* bad :
         {"", "Splice", "auto ", " buffer", "copy-file-range", "?", "automatic"}) {
        EXPECT_FALSE(parse_copy_path(bad)) << '"' << bad << '"';
    }
}

} // namespace
} // namespace zcio
