// Tests for endpoint: text forms round-trip, bad text explains itself, and addresses
// read back from real sockets compare equal to what was bound.
#include <zcio/endpoint.hpp>

#include <zcio/sys.hpp>
#include <zcio/unique_fd.hpp>

#include "test_support.hpp"

#include <cstddef>
#include <cstring>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <netinet/in.h>
#include <sys/un.h>
#include <unistd.h>

namespace zcio {
namespace {

class endpoint_test : public test::fd_leak_check {};

// Parses text that must be good; fails the test (and returns an empty endpoint) if not.
endpoint must_parse(std::string_view text) {
    auto e = endpoint::parse(text);
    EXPECT_TRUE(e.has_value()) << text << ": " << (e ? "" : e.error());
    return e.value_or(endpoint{});
}

unique_fd must_socket(int domain, int type) {
    auto fd = sys::socket(domain, type);
    EXPECT_TRUE(fd.has_value()) << (fd ? "" : fd.error().message());
    return fd ? std::move(*fd) : unique_fd{};
}

void must_bind(const unique_fd& fd, const endpoint& e) {
    ASSERT_EQ(::bind(fd.get(), e.data(), e.size()), 0)
        << e.to_string() << ": " << std::strerror(errno);
}

// Every numeric form prints as itself, and parses back to an equal endpoint.
TEST_F(endpoint_test, numeric_forms_round_trip) {
    for (std::string_view text :
         {"127.0.0.1:8080", "[::1]:8080", "[::]:0", "0.0.0.0:0", "255.255.255.255:65535",
          "[2001:db8::1]:443", "[::ffff:10.0.0.1]:53", "[fe80::1%1]:80", "unix:/tmp/x.sock",
          "unix:relative/path", "unix:@abstract", "unix:@a b"}) {
        SCOPED_TRACE(text);
        endpoint e = must_parse(text);
        EXPECT_EQ(e.to_string(), text);
        auto again = endpoint::parse(e.to_string());
        ASSERT_TRUE(again.has_value()) << again.error();
        EXPECT_EQ(*again, e);
    }
}

TEST_F(endpoint_test, parsed_fields) {
    endpoint v4 = must_parse("127.0.0.1:8080");
    EXPECT_EQ(v4.family(), AF_INET);
    EXPECT_TRUE(v4.is_ip());
    EXPECT_FALSE(v4.is_unix());
    EXPECT_EQ(v4.port(), 8080);
    EXPECT_EQ(v4.size(), sizeof(sockaddr_in));
    EXPECT_EQ(v4, endpoint::ipv4_loopback(8080));
    EXPECT_NE(v4, endpoint::ipv4_loopback(8081));

    endpoint v6 = must_parse("[::1]:8080");
    EXPECT_EQ(v6.family(), AF_INET6);
    EXPECT_EQ(v6.port(), 8080);
    EXPECT_EQ(v6.size(), sizeof(sockaddr_in6));
    EXPECT_EQ(v6, endpoint::ipv6_loopback(8080));
    EXPECT_NE(v6, endpoint::ipv4_loopback(8080));

    v6.set_port(9);
    EXPECT_EQ(v6.to_string(), "[::1]:9");
    EXPECT_EQ(endpoint::ipv4_loopback(0).to_string(), "127.0.0.1:0");
    EXPECT_EQ(endpoint::ipv6_loopback(65535).to_string(), "[::1]:65535");

    // Leading zeros are accepted; the canonical form drops them.
    EXPECT_EQ(must_parse("127.0.0.1:0080").to_string(), "127.0.0.1:80");
}

TEST_F(endpoint_test, unix_path_layout) {
    endpoint e = must_parse("unix:/run/zcio.sock");
    EXPECT_TRUE(e.is_unix());
    EXPECT_FALSE(e.is_abstract());
    EXPECT_FALSE(e.is_ip());
    EXPECT_EQ(e.port(), 0);
    const auto* sun = reinterpret_cast<const sockaddr_un*>(e.data());
    EXPECT_STREQ(sun->sun_path, "/run/zcio.sock");
    EXPECT_EQ(e.size(), offsetof(sockaddr_un, sun_path) + std::strlen("/run/zcio.sock") + 1);

    // A length that leaves out the terminator names the same socket.
    endpoint shorter = e;
    shorter.set_size(e.size() - 1);
    EXPECT_EQ(shorter, e);
    EXPECT_NE(e, must_parse("unix:/run/zcio.sock2"));
    EXPECT_NE(e, must_parse("unix:@/run/zcio.sock"));
}

TEST_F(endpoint_test, abstract_layout) {
    endpoint e = must_parse("unix:@zcio-test");
    EXPECT_TRUE(e.is_unix());
    EXPECT_TRUE(e.is_abstract());
    const auto* sun = reinterpret_cast<const sockaddr_un*>(e.data());
    EXPECT_EQ(sun->sun_path[0], '\0');
    EXPECT_EQ(std::string_view(sun->sun_path + 1, 9), "zcio-test");
    // No trailing NUL: the length alone ends an abstract name.
    EXPECT_EQ(e.size(), offsetof(sockaddr_un, sun_path) + 1 + 9);
    // A name that is a prefix of another is a different socket.
    EXPECT_NE(e, must_parse("unix:@zcio-tes"));
    EXPECT_NE(e, must_parse("unix:@zcio-test2"));
}

TEST_F(endpoint_test, longest_unix_names_fit) {
    const std::size_t room = sizeof(sockaddr_un::sun_path) - 1;
    std::string path = "/" + std::string(room - 1, 'p');
    endpoint p = must_parse("unix:" + path);
    EXPECT_EQ(p.to_string(), "unix:" + path);
    EXPECT_EQ(p.size(), sizeof(sockaddr_un));

    std::string name(room, 'n');
    endpoint a = must_parse("unix:@" + name);
    EXPECT_EQ(a.to_string(), "unix:@" + name);
    EXPECT_EQ(a.size(), sizeof(sockaddr_un));
}

TEST_F(endpoint_test, default_and_unknown) {
    endpoint none;
    EXPECT_EQ(none.family(), AF_UNSPEC);
    EXPECT_EQ(none.size(), 0u);
    EXPECT_FALSE(none.is_ip());
    EXPECT_FALSE(none.is_unix());
    EXPECT_EQ(none, endpoint{});
    EXPECT_NE(none, endpoint::ipv4_loopback(0));
    EXPECT_EQ(endpoint::from_sockaddr(nullptr, 0), endpoint{});
}

TEST_F(endpoint_test, from_sockaddr_copies) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(4242);
    sin.sin_addr.s_addr = htonl(0x0a000001); // 10.0.0.1
    endpoint e = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&sin), sizeof(sin));
    EXPECT_EQ(e.to_string(), "10.0.0.1:4242");
    EXPECT_EQ(e, must_parse("10.0.0.1:4242"));
}

TEST_F(endpoint_test, localhost_resolves_to_loopback) {
    endpoint e = must_parse("localhost:8080");
    ASSERT_TRUE(e.is_ip()) << e.to_string();
    EXPECT_EQ(e.port(), 8080);
    if (e.family() == AF_INET) {
        // All of 127.0.0.0/8 is loopback.
        const auto* sin = reinterpret_cast<const sockaddr_in*>(e.data());
        EXPECT_EQ(ntohl(sin->sin_addr.s_addr) >> 24, 127u) << e.to_string();
    } else {
        EXPECT_EQ(e, endpoint::ipv6_loopback(8080));
    }
}

struct bad_case {
    std::string text;
    std::string phrase; // a key phrase the error must contain
};

// Shows the case as text in failure output instead of gtest's byte dump.
void PrintTo(const bad_case& c, std::ostream* os) {
    *os << '"' << c.text << "\" expecting \"" << c.phrase << '"';
}

class endpoint_bad_test : public test::fd_leak_check,
                          public ::testing::WithParamInterface<bad_case> {};

TEST_P(endpoint_bad_test, error_quotes_input_and_says_why) {
    const bad_case& c = GetParam();
    auto e = endpoint::parse(c.text);
    ASSERT_FALSE(e.has_value()) << "parsed as " << e->to_string();
    const std::string& msg = e.error();
    EXPECT_NE(msg.find("bad address \"" + c.text + "\""), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.phrase), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
}

const std::string long_path(sizeof(sockaddr_un::sun_path), 'x');

INSTANTIATE_TEST_SUITE_P(
    forms, endpoint_bad_test,
    ::testing::Values(
        bad_case{"", "empty"}, bad_case{"127.0.0.1", "missing port"},
        bad_case{"127.0.0.1:", "missing port"},
        bad_case{"1.2.3.4:99999", "port 99999 is out of range (0-65535)"},
        bad_case{"1.2.3.4:99999999999999999999999", "out of range"},
        bad_case{"1.2.3.4:65536", "out of range"},
        bad_case{"1.2.3.4:x1", "port \"x1\" is not a number"},
        bad_case{"1.2.3.4:-1", "is not a number"},
        bad_case{"1.2.3.4:80x", "unexpected \"x\" after port 80"},
        bad_case{"1.2.3.4:80 ", "unexpected"}, bad_case{"unix:", "empty Unix socket path"},
        bad_case{"unix:@", "empty abstract socket name"},
        bad_case{"unix:/" + long_path, "too long"}, bad_case{"unix:@" + long_path, "too long"},
        bad_case{"[::1", "missing \"]\""}, bad_case{"[::1]", "missing port"},
        bad_case{"[::1]80", "unexpected \"80\" after \"]\""}, bad_case{"[::1]:80x", "unexpected"},
        bad_case{"[::1]:", "missing port"}, bad_case{"[]:80", "empty IPv6 address"},
        bad_case{"[127.0.0.1]:80", "is not an IPv6 address"}, bad_case{"[::1%]:80", "empty zone"},
        bad_case{"[::1%no-such-if0]:80", "no network interface"},
        bad_case{"::1:80", "use [::1]:80"}, bad_case{"1:2:3", "brackets"},
        bad_case{":80", "empty host"}, bad_case{"1.2.3:80", "not a valid IPv4 address"},
        bad_case{"256.1.1.1:80", "not a valid IPv4 address"},
        bad_case{"no-such-host.invalid:80", "does not resolve"}),
    [](const ::testing::TestParamInfo<bad_case>& param) {
        return "case_" + std::to_string(param.index);
    });

TEST_F(endpoint_test, control_bytes_are_escaped_in_errors) {
    auto e = endpoint::parse(std::string_view("bad\nhost\"", 9));
    ASSERT_FALSE(e.has_value());
    EXPECT_NE(e.error().find(R"("bad\x0ahost\"")"), std::string::npos) << e.error();
    EXPECT_EQ(e.error().find('\n'), std::string::npos);
}

// Found by tests/fuzz (fuzz_endpoint): the hints after the reason quoted the input raw.
TEST_F(endpoint_test, control_bytes_are_escaped_in_hints) {
    using namespace std::string_view_literals;
    for (std::string_view text :
         {":\r127.0.0.1"sv, "::1:8\n0"sv, "::1\0\r:80"sv, "::1\0\0\r\0"sv}) {
        auto e = endpoint::parse(text);
        ASSERT_FALSE(e.has_value()) << e->to_string();
        const std::string& msg = e.error();
        EXPECT_EQ(msg.find_first_of("\r\n"sv), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\0'), std::string::npos) << msg;
    }
}

TEST_F(endpoint_test, tcp_bind_to_port_zero_gets_a_port) {
    unique_fd fd = must_socket(AF_INET, SOCK_STREAM);
    ASSERT_TRUE(fd.valid());
    endpoint want = must_parse("127.0.0.1:0");
    must_bind(fd, want);
    auto got = local_endpoint_of(fd.get());
    ASSERT_TRUE(got.has_value()) << got.error().message();
    EXPECT_NE(got->port(), 0);
    EXPECT_EQ(got->size(), sizeof(sockaddr_in));
    want.set_port(got->port());
    EXPECT_EQ(*got, want);
    EXPECT_EQ(endpoint::parse(got->to_string()).value_or(endpoint{}), *got);
}

TEST_F(endpoint_test, peer_of_connected_tcp_socket) {
    unique_fd server = must_socket(AF_INET, SOCK_STREAM);
    ASSERT_TRUE(server.valid());
    must_bind(server, endpoint::ipv4_loopback(0));
    ASSERT_EQ(::listen(server.get(), 1), 0);
    auto addr = local_endpoint_of(server.get());
    ASSERT_TRUE(addr.has_value());

    unique_fd client = must_socket(AF_INET, SOCK_STREAM);
    ASSERT_TRUE(client.valid());
    // Non-blocking connect to loopback: EINPROGRESS, or done at once.
    int rc = ::connect(client.get(), addr->data(), addr->size());
    ASSERT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);
    auto accepted = sys::accept(server.get());
    for (int i = 0; i < 1000 && !accepted && would_block(accepted); ++i) {
        ::usleep(1000);
        accepted = sys::accept(server.get());
    }
    ASSERT_TRUE(accepted.has_value()) << accepted.error().message();

    auto peer = peer_endpoint_of(client.get());
    ASSERT_TRUE(peer.has_value()) << peer.error().message();
    EXPECT_EQ(*peer, *addr);
    auto client_local = local_endpoint_of(client.get());
    auto server_side_peer = peer_endpoint_of(accepted->get());
    ASSERT_TRUE(client_local && server_side_peer);
    EXPECT_EQ(*client_local, *server_side_peer);
}

TEST_F(endpoint_test, errors_name_the_operation) {
    auto l = local_endpoint_of(-1);
    ASSERT_FALSE(l.has_value());
    EXPECT_EQ(errno_of(l.error()), EBADF);
    EXPECT_NE(l.error().message().find("getsockname"), std::string::npos) << l.error().message();

    // An unconnected socket has no peer.
    unique_fd fd = must_socket(AF_INET, SOCK_STREAM);
    ASSERT_TRUE(fd.valid());
    auto p = peer_endpoint_of(fd.get());
    ASSERT_FALSE(p.has_value());
    EXPECT_EQ(errno_of(p.error()), ENOTCONN);
    EXPECT_NE(p.error().message().find("getpeername"), std::string::npos) << p.error().message();
}

TEST_F(endpoint_test, unix_path_bind_reads_back_equal) {
    std::string path = test::temp_path("ep") + ".sock";
    endpoint want = must_parse("unix:" + path);
    {
        unique_fd fd = must_socket(AF_UNIX, SOCK_STREAM);
        ASSERT_TRUE(fd.valid());
        must_bind(fd, want);
        auto got = local_endpoint_of(fd.get());
        ::unlink(path.c_str());
        ASSERT_TRUE(got.has_value()) << got.error().message();
        EXPECT_FALSE(got->is_abstract());
        EXPECT_EQ(*got, want);
        EXPECT_EQ(got->to_string(), "unix:" + path);
    }
    ::unlink(path.c_str());
}

TEST_F(endpoint_test, abstract_bind_reads_back_equal) {
    // The pid keeps parallel runs of this test from colliding in the shared namespace.
    endpoint want = must_parse("unix:@zcio-endpoint-test-" + std::to_string(::getpid()));
    unique_fd fd = must_socket(AF_UNIX, SOCK_STREAM);
    ASSERT_TRUE(fd.valid());
    must_bind(fd, want);
    auto got = local_endpoint_of(fd.get());
    ASSERT_TRUE(got.has_value()) << got.error().message();
    EXPECT_TRUE(got->is_abstract());
    EXPECT_EQ(got->size(), want.size());
    EXPECT_EQ(*got, want);
    EXPECT_EQ(got->to_string(), want.to_string());
}

TEST_F(endpoint_test, unnamed_unix_socket) {
    auto pair = sys::socketpair(AF_UNIX, SOCK_STREAM);
    ASSERT_TRUE(pair.has_value()) << pair.error().message();
    auto got = local_endpoint_of(pair->first.get());
    ASSERT_TRUE(got.has_value()) << got.error().message();
    EXPECT_TRUE(got->is_unix());
    EXPECT_FALSE(got->is_abstract());
    EXPECT_EQ(got->to_string(), "unix:(unnamed)");
    EXPECT_FALSE(endpoint::parse(got->to_string()).has_value() &&
                 *endpoint::parse(got->to_string()) == *got);
}

// ---- endpoint_list ----

TEST_F(endpoint_test, interleave_families_alternates_starting_with_the_first_family) {
    const endpoint v6a = must_parse("[::1]:80");
    const endpoint v6b = must_parse("[2001:db8::1]:80");
    const endpoint v6c = must_parse("[2001:db8::2]:80");
    const endpoint v4a = must_parse("127.0.0.1:80");
    const endpoint v4b = must_parse("192.0.2.1:80");
    EXPECT_EQ(interleave_families(std::vector{v6a, v6b, v6c, v4a, v4b}),
              (std::vector{v6a, v4a, v6b, v4b, v6c}));
    EXPECT_EQ(interleave_families(std::vector{v4a, v4b, v6a}), (std::vector{v4a, v6a, v4b}));
    EXPECT_EQ(interleave_families(std::vector{v4a, v4b}), (std::vector{v4a, v4b}));
    // Duplicates (an address from /etc/hosts and from DNS) are tried once.
    EXPECT_EQ(interleave_families(std::vector{v6a, v4a, v6a, v4a, v4b}),
              (std::vector{v6a, v4a, v4b}));
    EXPECT_TRUE(interleave_families(std::vector<endpoint>{}).empty());
}

TEST_F(endpoint_test, endpoint_list_of_a_literal_or_unix_address_is_that_address) {
    for (std::string_view text : {"127.0.0.1:8080", "[::1]:8080", "unix:/run/x.sock", "unix:@x"}) {
        auto list = endpoint_list::resolve(text);
        ASSERT_TRUE(list) << text << ": " << list.error();
        ASSERT_EQ(list->size(), 1u) << text;
        EXPECT_EQ(list->front(), must_parse(text)) << text;
        EXPECT_EQ(list->to_string(), list->front().to_string()) << text;
    }
    auto v4 = endpoint_list::resolve("127.0.0.1:8080");
    ASSERT_TRUE(v4);
    EXPECT_TRUE(v4->is_ip());
    EXPECT_EQ(v4->port(), 8080);
    const endpoint_list one = must_parse("[::1]:9");
    EXPECT_EQ(one.size(), 1u);
    EXPECT_EQ(one.to_string(), "[::1]:9");
}

TEST_F(endpoint_test, endpoint_list_of_a_name_keeps_every_address_and_the_name) {
    auto list = endpoint_list::resolve("localhost:8080");
    ASSERT_TRUE(list) << list.error();
    ASSERT_FALSE(list->empty());
    EXPECT_EQ(list->to_string(), "localhost:8080");
    EXPECT_EQ(list->front(), must_parse("localhost:8080")) << "parse() keeps the first answer";
    for (const endpoint& e : *list) {
        EXPECT_TRUE(e.is_ip()) << e.to_string();
        EXPECT_EQ(e.port(), 8080) << e.to_string();
    }
    EXPECT_EQ(*list, endpoint_list("localhost:8080", interleave_families(*list)))
        << "already interleaved and without duplicates: " << list->addresses_text();
}

TEST_F(endpoint_test, endpoint_list_errors_are_those_of_parse) {
    for (std::string_view text : {"", "unix:", "localhost", "1.2.3:80", "[::1]"}) {
        auto list = endpoint_list::resolve(text);
        auto one = endpoint::parse(text);
        ASSERT_FALSE(list) << text;
        ASSERT_FALSE(one) << text;
        EXPECT_EQ(list.error(), one.error()) << text;
    }
}

} // namespace
} // namespace zcio
