// decode_proxy_header: the encoders' headers decode back, every strict prefix needs
// more, and malformed headers (many kinds) are refused with a reason.
#include <zcio/proxy_protocol.hpp>
#include <zcio/udp_forward.hpp>

#include "test_support.hpp"

#include <string>

namespace zcio {
namespace {

endpoint ep(const char* text) {
    auto e = endpoint::parse(text);
    EXPECT_TRUE(e) << text;
    return e ? *e : endpoint{};
}

proxy_decode_result decode(const std::string& s) {
    return decode_proxy_header(std::as_bytes(std::span(s)));
}

std::string raw(std::initializer_list<int> v) {
    std::string s;
    for (int b : v) {
        s.push_back(static_cast<char>(b));
    }
    return s;
}

const std::string sig =
    raw({0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A});

// Every strict prefix of a valid header asks for more bytes (never malformed, never
// a header), and the whole header with trailing data decodes to the same size.
void expect_prefixes_need_more(const std::string& h) {
    for (std::size_t n = 0; n < h.size(); ++n) {
        EXPECT_EQ(decode(h.substr(0, n)).status, proxy_decode_status::need_more) << n;
    }
    auto r = decode(h + "GET / HTTP/1.1\r\n");
    ASSERT_EQ(r.status, proxy_decode_status::header);
    EXPECT_EQ(r.header.size, h.size());
}

TEST(proxy_decode, encoder_headers_round_trip_v1_and_v2) {
    for (auto [s, d] : {std::pair{"192.0.2.1:56324", "192.0.2.11:443"},
                        std::pair{"[2001:db8::1]:1", "[2001:db8::2]:65535"},
                        std::pair{"0.0.0.0:0", "255.255.255.255:65535"}}) {
        const endpoint src = ep(s);
        const endpoint dst = ep(d);
        for (int v : {1, 2}) {
            const std::string h = v == 1 ? proxy_header_v1(src, dst) : proxy_header_v2(src, dst);
            auto r = decode(h);
            ASSERT_EQ(r.status, proxy_decode_status::header) << h;
            EXPECT_EQ(r.header.version, v);
            EXPECT_EQ(r.header.command, proxy_command::proxy);
            EXPECT_EQ(r.header.size, h.size());
            EXPECT_EQ(r.header.source, src) << s;
            EXPECT_EQ(r.header.destination, dst) << d;
            expect_prefixes_need_more(h);
        }
    }
}

TEST(proxy_decode, unix_v2_and_unknown_local_unspec_carry_no_ip) {
    auto u = decode(proxy_header_v2(ep("unix:/run/a.sock"), ep("unix:/run/b.sock")));
    ASSERT_EQ(u.status, proxy_decode_status::header);
    EXPECT_EQ(u.header.size, 16u + 216u);
    EXPECT_EQ(u.header.source, ep("unix:/run/a.sock"));
    EXPECT_EQ(u.header.destination, ep("unix:/run/b.sock"));

    for (const std::string& h :
         {std::string("PROXY UNKNOWN\r\n"),
          std::string("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), // ignored after UNKNOWN
          proxy_header_v2(ep("127.0.0.1:1"), ep("[::1]:2"))}) { // mixed: LOCAL
        auto r = decode(h);
        ASSERT_EQ(r.status, proxy_decode_status::header) << h;
        EXPECT_EQ(r.header.size, h.size());
        EXPECT_EQ(r.header.source.family(), AF_UNSPEC);
        expect_prefixes_need_more(h);
    }
    // LOCAL with a body (ignored, TLVs unchecked) and PROXY with UNSPEC.
    auto local = decode(sig + raw({0x20, 0x11, 0x00, 0x03, 0xff, 0xff, 0xff}));
    ASSERT_EQ(local.status, proxy_decode_status::header);
    EXPECT_EQ(local.header.command, proxy_command::local);
    EXPECT_EQ(local.header.size, 19u);
    auto unspec = decode(sig + raw({0x21, 0x00, 0x00, 0x00}));
    ASSERT_EQ(unspec.status, proxy_decode_status::header);
    EXPECT_EQ(unspec.header.command, proxy_command::proxy);
    EXPECT_EQ(unspec.header.source.family(), AF_UNSPEC);
}

TEST(proxy_decode, tlvs_inside_the_length_are_skipped) {
    // IPv4 addresses, then two TLVs: ALPN "h2" and an empty NOOP.
    std::string h = proxy_header_v2(ep("10.1.2.3:4000"), ep("10.9.9.9:80"));
    const std::string tlvs = raw({0x01, 0x00, 0x02, 'h', '2', 0x04, 0x00, 0x00});
    h[15] = static_cast<char>(12 + tlvs.size());
    h += tlvs;
    auto r = decode(h);
    ASSERT_EQ(r.status, proxy_decode_status::header);
    EXPECT_EQ(r.header.size, h.size());
    EXPECT_EQ(r.header.source, ep("10.1.2.3:4000"));
    expect_prefixes_need_more(h);
}

TEST(proxy_decode, malformed_v1_is_refused_with_a_reason) {
    const char* cases[] = {
        "GET / HTTP/1.1\r\n",                                    // not PROXY
        "PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n",                    // signature
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",                    // case
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",                    // protocol
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",                      // 4 fields
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",                  // 6 fields
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",                   // two spaces
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",                   // trailing space
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",                   // leading zero
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",                // port range
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",                   // sign
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 0x10\r\n",                 // hex
        "PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n",                   // octet leading zero
        "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",                      // short address
        "PROXY TCP4 ::1 ::1 1 2\r\n",                            // v6 under TCP4
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",                    // v4 under TCP6
        "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",                   // scope
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",                     // CR without LF
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",                      // LF alone
        "PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",                   // tab
        "PROXY \r\n",                                            // empty
        "PROXY UNKNOWNX\r\n",                                    // UNKNOWN glued
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xc3\xa9\r\n",            // non-ASCII
        "PROXY TCP4 1.2.3.4 5.6.7.8 99999999999999999999 2\r\n", // long port
    };
    for (const char* c : cases) {
        auto r = decode(c);
        EXPECT_EQ(r.status, proxy_decode_status::malformed) << c;
        ASSERT_NE(r.reason, nullptr) << c;
        EXPECT_EQ(std::string(r.reason).find('\n'), std::string::npos);
    }
    // A NUL inside; 106 bytes without CR (its CRLF would end past 107, the longest
    // legal header); a 108-byte line (found by fuzz_proxy_accept).
    EXPECT_EQ(decode(std::string("PROXY TCP4 1.2.3.4\0", 19)).status,
              proxy_decode_status::malformed);
    EXPECT_EQ(decode("PROXY UNKNOWN " + std::string(92, 'a')).status,
              proxy_decode_status::malformed);
    EXPECT_EQ(decode("PROXY UNKNOWN " + std::string(92, 'a') + "\r\n").status,
              proxy_decode_status::malformed);
    EXPECT_EQ(decode("PROXY UNKNOWN " + std::string(91, 'a')).status,
              proxy_decode_status::need_more);
    auto longest = decode("PROXY UNKNOWN " + std::string(91, 'a') + "\r\n");
    ASSERT_EQ(longest.status, proxy_decode_status::header);
    EXPECT_EQ(longest.header.size, proxy_v1_max);
}

TEST(proxy_decode, malformed_v2_is_refused_with_a_reason) {
    const std::string v4 = proxy_header_v2(ep("10.0.0.1:1"), ep("10.0.0.2:2"));
    struct change {
        std::size_t at;
        int value;
        const char* why;
    };
    for (const change& c :
         {change{0, 0x0E, "signature first byte"}, change{6, 0x00, "signature middle"},
          change{11, 0x0B, "signature last"}, change{12, 0x11, "version 1"},
          change{12, 0x31, "version 3"}, change{12, 0x22, "command 2"},
          change{12, 0x2f, "command 15"}, change{13, 0x41, "family 4"},
          change{13, 0x13, "transport 3"}, change{13, 0x10, "INET with UNSPEC transport"},
          change{13, 0x01, "UNSPEC family with STREAM"}, change{13, 0x21, "INET6, 12 bytes"},
          change{13, 0x31, "UNIX, 12 bytes"}, change{15, 11, "addresses cut"},
          change{15, 13, "1 byte of TLV"}, change{15, 14, "2 bytes of TLV"}}) {
        std::string d = v4;
        d[c.at] = static_cast<char>(c.value);
        d.resize(
            std::max(d.size(), 16 + static_cast<std::size_t>(static_cast<unsigned char>(d[15]))));
        auto r = decode(d);
        EXPECT_EQ(r.status, proxy_decode_status::malformed) << c.why;
        EXPECT_NE(r.reason, nullptr) << c.why;
    }
    // A TLV whose length runs past the header's.
    std::string tlv = v4 + raw({0x04, 0x00, 0x05, 1, 2});
    tlv[15] = static_cast<char>(12 + 5);
    EXPECT_EQ(decode(tlv).status, proxy_decode_status::malformed);
    // A length past proxy_v2_max is refused at once, before its bytes arrive.
    std::string huge = sig + raw({0x21, 0x11, 0xff, 0xff});
    auto r = decode(huge);
    EXPECT_EQ(r.status, proxy_decode_status::malformed);
    std::string edge = sig + raw({0x21, 0x11, 0x0f, 0xf0}); // 16 + 4080 = 4096: allowed
    EXPECT_EQ(decode(edge).status, proxy_decode_status::need_more);
    edge[15] = static_cast<char>(0xf1);
    EXPECT_EQ(decode(edge).status, proxy_decode_status::malformed);
}

bool signature(const std::string& s) {
    return starts_with_proxy_signature(std::as_bytes(std::span(s)));
}

TEST(proxy_decode, second_signature_detection) {
    EXPECT_TRUE(signature("PROXY x"));
    EXPECT_TRUE(signature(sig));
    EXPECT_FALSE(signature("PROXY"));
    EXPECT_FALSE(signature("POST /"));
    EXPECT_FALSE(signature(sig.substr(0, 11)));
}

} // namespace
} // namespace zcio
