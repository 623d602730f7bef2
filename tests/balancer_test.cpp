// Tests for upstream_set: the share each balancer gives each server, backups, drain,
// exclusion of servers tried already, passive and active health, and what a reload
// (inherit) keeps.
#include <zcio/balancer.hpp>

#include <gtest/gtest.h>

#include <netinet/in.h>

#include <algorithm>

#include <map>
#include <string>
#include <vector>

namespace zcio {
namespace {

using namespace std::chrono_literals;

upstream_server srv(std::uint16_t port, unsigned weight = 1, bool backup = false,
                    bool drain = false) {
    return {endpoint::ipv4_loopback(port), weight, backup, drain};
}

std::vector<upstream_server> three(unsigned w0 = 1, unsigned w1 = 1, unsigned w2 = 1) {
    return {srv(9001, w0), srv(9002, w1), srv(9003, w2)};
}

// How many of `n` choices each server got (the hash is the pick's number).
std::vector<int> shares(upstream_set& set, int n) {
    std::vector<int> got(set.size(), 0);
    for (int k = 0; k < n; ++k) {
        auto i = set.choose(static_cast<std::uint64_t>(k) * 0x9e3779b97f4a7c15ULL, {});
        EXPECT_TRUE(i.has_value());
        if (i) {
            ++got[*i];
        }
    }
    return got;
}

TEST(balancer, policy_names_round_trip) {
    for (auto p : {balance_policy::round_robin, balance_policy::least_connections,
                   balance_policy::client_hash, balance_policy::random_two}) {
        EXPECT_EQ(parse_balance_policy(to_string(p)), p);
    }
    EXPECT_FALSE(parse_balance_policy("roundrobin").has_value());
    EXPECT_FALSE(parse_balance_policy("").has_value());
}

TEST(balancer, round_robin_equal_weights_is_exact) {
    upstream_set set(three(), balance_policy::round_robin);
    EXPECT_EQ(shares(set, 3000), (std::vector<int>{1000, 1000, 1000}));
}

TEST(balancer, round_robin_follows_weights_smoothly) {
    upstream_set set(three(5, 1, 1), balance_policy::round_robin);
    // nginx's example: a a b a c a a, never five a's in a row.
    std::string order;
    for (int k = 0; k < 7; ++k) {
        order += static_cast<char>('a' + *set.choose(0, {}));
    }
    EXPECT_EQ(order, "aabacaa");
    EXPECT_EQ(shares(set, 7000), (std::vector<int>{5000, 1000, 1000}));
}

TEST(balancer, least_connections_goes_to_the_least_loaded_per_weight) {
    upstream_set set(three(1, 1, 2), balance_policy::least_connections);
    set.state(0).active = 3;
    set.state(1).active = 1;
    set.state(2).active = 3; // 1.5 per weight
    EXPECT_EQ(set.choose(0, {}), 1U);
    set.state(1).active = 2; // 2 per weight: server 2 now has the fewest per weight
    EXPECT_EQ(set.choose(0, {}), 2U);
}

TEST(balancer, least_connections_spreads_ties) {
    upstream_set set(three(), balance_policy::least_connections);
    std::vector<int> got(3, 0);
    for (int k = 0; k < 300; ++k) {
        auto i = *set.choose(0, {});
        ++got[i];
        set.state(i).active.fetch_add(1); // connections that stay open
    }
    EXPECT_EQ(got, (std::vector<int>{100, 100, 100}));
}

TEST(balancer, random_two_stays_within_ten_percent_and_prefers_idle) {
    upstream_set set(three(), balance_policy::random_two);
    auto got = shares(set, 30000);
    for (int g : got) {
        EXPECT_NEAR(g, 10000, 1000);
    }
    set.state(0).active = 100;
    set.state(1).active = 100;
    int to_idle = 0;
    for (int k = 0; k < 300; ++k) {
        to_idle += *set.choose(0, {}) == 2 ? 1 : 0;
    }
    // Server 2 wins whenever it is one of the two picks: 5/9 of the time for
    // independent picks, more with the redraw of equal ones.
    EXPECT_GT(to_idle, 150);
}

TEST(balancer, client_hash_sticks_and_moves_about_a_third_when_one_goes) {
    upstream_set set(three(), balance_policy::client_hash);
    std::vector<std::size_t> first;
    std::vector<int> per(3, 0);
    for (std::uint32_t a = 0; a < 1000; ++a) {
        auto ep = endpoint::ipv4_loopback(1);
        reinterpret_cast<sockaddr_in*>(ep.data())->sin_addr.s_addr = htonl(0x7f000100 + a);
        const auto h = hash_client(ep);
        first.push_back(*set.choose(h, {}));
        ++per[first.back()];
        EXPECT_EQ(set.choose(h, {}), first.back()); // sticky
    }
    for (int p : per) {
        EXPECT_NEAR(p, 333, 80);
    }
    // Server 9002 removed (a reload without it): only its clients move.
    upstream_set two({srv(9001), srv(9003)}, balance_policy::client_hash);
    int moved = 0;
    for (std::uint32_t a = 0; a < 1000; ++a) {
        auto ep = endpoint::ipv4_loopback(1);
        reinterpret_cast<sockaddr_in*>(ep.data())->sin_addr.s_addr = htonl(0x7f000100 + a);
        const auto now = two.server(*two.choose(hash_client(ep), {})).address;
        const auto before = set.server(first[a]).address;
        moved += now == before ? 0 : 1;
        if (first[a] != 1) {
            EXPECT_EQ(now, before);
        }
    }
    EXPECT_LE(moved, 400);
    EXPECT_EQ(moved, per[1]);
}

TEST(balancer, hash_client_ignores_the_port) {
    auto a = endpoint::ipv4_loopback(1000);
    auto b = endpoint::ipv4_loopback(2000);
    EXPECT_EQ(hash_client(a), hash_client(b));
    EXPECT_NE(hash_client(a), hash_client(endpoint::ipv6_loopback(1000)));
}

TEST(balancer, exclude_skips_servers_tried_already) {
    for (auto p : {balance_policy::round_robin, balance_policy::least_connections,
                   balance_policy::client_hash, balance_policy::random_two}) {
        upstream_set set(three(), p);
        std::vector<std::size_t> tried;
        for (int k = 0; k < 3; ++k) {
            auto i = set.choose(42, tried);
            ASSERT_TRUE(i.has_value()) << to_string(p);
            EXPECT_EQ(std::ranges::count(tried, *i), 0) << to_string(p);
            tried.push_back(*i);
        }
        EXPECT_FALSE(set.choose(42, tried).has_value()) << to_string(p);
    }
}

TEST(balancer, backups_only_when_no_primary_is_up) {
    for (auto p : {balance_policy::round_robin, balance_policy::client_hash}) {
        upstream_set set({srv(9001), srv(9002), srv(9003, 1, true)}, p, passive_health{1, 10s});
        const auto t0 = clock::now();
        for (int k = 0; k < 10; ++k) {
            EXPECT_NE(set.choose(k, {}, t0), 2U);
        }
        set.report_failure(0, t0);
        set.report_failure(1, t0);
        EXPECT_EQ(set.choose(7, {}, t0), 2U) << to_string(p);
        // After fail_timeout the primaries are tried again.
        EXPECT_NE(set.choose(7, {}, t0 + 11s), 2U) << to_string(p);
    }
}

TEST(balancer, drain_and_weight_zero_take_no_new_connections) {
    upstream_set set({srv(9001, 0), srv(9002, 1, false, true), srv(9003)},
                     balance_policy::round_robin);
    for (int k = 0; k < 10; ++k) {
        EXPECT_EQ(set.choose(0, {}), 2U);
    }
    upstream_set none({srv(9001, 0), srv(9002, 1, false, true)}, balance_policy::client_hash);
    EXPECT_FALSE(none.choose(0, {}).has_value());
}

TEST(balancer, passive_health_counts_within_fail_timeout) {
    upstream_set set(three(), balance_policy::round_robin, passive_health{3, 10s});
    const auto t0 = clock::now();
    set.report_failure(0, t0);
    set.report_failure(0, t0 + 1s);
    EXPECT_TRUE(set.is_up(0, t0 + 1s));
    // The window of the first failure is over: these two start a new count.
    set.report_failure(0, t0 + 12s);
    set.report_failure(0, t0 + 13s);
    EXPECT_TRUE(set.is_up(0, t0 + 13s));
    set.report_failure(0, t0 + 14s);
    EXPECT_FALSE(set.is_up(0, t0 + 14s));
    EXPECT_FALSE(set.is_up(0, t0 + 23s));
    EXPECT_TRUE(set.is_up(0, t0 + 24s));
    EXPECT_EQ(set.state(0).connect_failures.load(), 5U);
    // A success clears the count.
    set.report_failure(1, t0);
    set.report_failure(1, t0);
    set.report_success(1);
    set.report_failure(1, t0);
    EXPECT_TRUE(set.is_up(1, t0));
}

TEST(balancer, a_single_server_is_never_left_out) {
    // As nginx: with one server, leaving it out would only fail every client.
    upstream_set set({srv(9001)}, balance_policy::round_robin, passive_health{1, 10s});
    const auto t0 = clock::now();
    set.report_failure(0, t0);
    EXPECT_TRUE(set.is_up(0, t0));
    EXPECT_EQ(set.choose(0, {}, t0), 0U);
    EXPECT_EQ(set.state(0).connect_failures.load(), 1U);
}

TEST(balancer, max_fails_zero_never_marks_down) {
    upstream_set set(three(), balance_policy::round_robin, passive_health{0, 10s});
    const auto t0 = clock::now();
    for (int k = 0; k < 100; ++k) {
        set.report_failure(0, t0);
    }
    EXPECT_TRUE(set.is_up(0, t0));
}

TEST(balancer, active_checks_fall_and_rise) {
    upstream_set set(three(), balance_policy::round_robin);
    const active_health rules{2, 3};
    EXPECT_EQ(set.report_check(0, false, rules), check_change::none);
    EXPECT_EQ(set.report_check(0, false, rules), check_change::none);
    EXPECT_EQ(set.report_check(0, true, rules), check_change::none); // streak broken
    EXPECT_EQ(set.report_check(0, false, rules), check_change::none);
    EXPECT_EQ(set.report_check(0, false, rules), check_change::none);
    EXPECT_EQ(set.report_check(0, false, rules), check_change::went_down);
    EXPECT_FALSE(set.is_up(0));
    EXPECT_EQ(set.report_check(0, false, rules), check_change::none);
    for (int k = 0; k < 10; ++k) {
        EXPECT_NE(set.choose(0, {}), 0U);
    }
    EXPECT_EQ(set.report_check(0, true, rules), check_change::none);
    EXPECT_EQ(set.report_check(0, true, rules), check_change::came_up);
    EXPECT_TRUE(set.is_up(0));
}

TEST(balancer, inherit_keeps_state_of_servers_that_stay) {
    upstream_set old(three(), balance_policy::round_robin, passive_health{1, 60s});
    const auto t0 = clock::now();
    old.report_failure(1, t0);
    old.state(2).active = 7;
    upstream_set next({srv(9002), srv(9003), srv(9004)}, balance_policy::least_connections,
                      passive_health{1, 60s});
    next.inherit(old);
    EXPECT_FALSE(next.is_up(0, t0));                // 9002 is still down
    EXPECT_EQ(next.state(1).active.load(), 7U);     // 9003's connections still count
    EXPECT_EQ(next.state_ptr(1), old.state_ptr(2)); // one state, shared
    EXPECT_EQ(next.state(2).active.load(), 0U);     // 9004 is new
    EXPECT_EQ(next.choose(0, {}, t0), 2U);
}

} // namespace
} // namespace zcio
