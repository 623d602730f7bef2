// Tests for the PROXY protocol encoders against the specification's examples.
#include <zcio/proxy_protocol.hpp>

#include "test_support.hpp"

#include <string>

namespace zcio {
namespace {

class proxy_protocol_test : public test::fd_leak_check {};

endpoint ep(const char* text) {
    auto e = endpoint::parse(text);
    EXPECT_TRUE(e) << text;
    return e ? *e : endpoint{};
}

TEST_F(proxy_protocol_test, v1_matches_the_specification_examples) {
    // The specification's own examples (section 2.1).
    EXPECT_EQ(proxy_header_v1(ep("192.168.0.1:56324"), ep("192.168.0.11:443")),
              "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");
    EXPECT_EQ(proxy_header_v1(ep("255.255.255.255:65535"), ep("255.255.255.255:65535")),
              "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n");
    const std::string v6 = proxy_header_v1(ep("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
                                           ep("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"));
    EXPECT_EQ(v6, "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                  "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n");
    EXPECT_EQ(v6.size(), 104U); // the specification's worst case: 107 bytes with "UNKNOWN"
    EXPECT_EQ(proxy_header_v1(ep("unix:/tmp/a"), ep("unix:/tmp/b")), "PROXY UNKNOWN\r\n");
    EXPECT_EQ(proxy_header_v1(ep("127.0.0.1:1"), ep("[::1]:2")), "PROXY UNKNOWN\r\n");
}

std::string bytes(std::initializer_list<int> v) {
    std::string s;
    for (int b : v) {
        s.push_back(static_cast<char>(b));
    }
    return s;
}

const std::string signature =
    bytes({0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A});

TEST_F(proxy_protocol_test, v2_ipv4_is_byte_exact) {
    std::string expected = signature + bytes({0x21, 0x11, 0x00, 0x0C, // PROXY, TCP4, 12 bytes
                                              192, 168, 0, 1, 192, 168, 0, 11, // addresses
                                              0xDC, 0x04, 0x01, 0xBB});        // 56324, 443
    EXPECT_EQ(proxy_header_v2(ep("192.168.0.1:56324"), ep("192.168.0.11:443")), expected);
}

TEST_F(proxy_protocol_test, v2_ipv6_is_byte_exact) {
    std::string expected = signature + bytes({0x21, 0x21, 0x00, 0x24});
    expected += bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1});
    expected += bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2});
    expected += bytes({0x30, 0x39, 0x00, 0x50}); // 12345, 80
    EXPECT_EQ(proxy_header_v2(ep("[2001:db8::1]:12345"), ep("[2001:db8::2]:80")), expected);
}

TEST_F(proxy_protocol_test, v2_unix_and_mixed_families) {
    std::string u = proxy_header_v2(ep("unix:/tmp/client"), ep("unix:/tmp/server"));
    ASSERT_EQ(u.size(), 16U + 216U);
    EXPECT_EQ(u.substr(0, 16), signature + bytes({0x21, 0x31, 0x00, 0xD8}));
    EXPECT_EQ(u.substr(16, 11), "/tmp/client");
    EXPECT_EQ(u[16 + 11], '\0');
    EXPECT_EQ(u.substr(16 + 108, 11), "/tmp/server");
    // Different families: LOCAL command, no addresses.
    EXPECT_EQ(proxy_header_v2(ep("127.0.0.1:1"), ep("[::1]:2")),
              signature + bytes({0x20, 0x00, 0x00, 0x00}));
}

} // namespace
} // namespace zcio
