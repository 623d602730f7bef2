// upstream_set: the servers of one proxied route, their health, and the balancer that
// picks one for each new connection.
//
// Threading: an upstream_set is not synchronised. A proxy that shares one between
// threads holds a lock around choose() and the report_* calls (they are a few dozen
// nanoseconds). The per-server counters in upstream_state are atomics, so a metrics
// reader needs no lock for them.
#pragma once

#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace zcio {

enum class balance_policy {
    round_robin,       // smooth weighted round-robin (as nginx's)
    least_connections, // fewest open connections per unit of weight; ties in turn
    client_hash,       // consistent hash ring of the client address (virtual nodes)
    random_two,        // power of two choices: two weighted random picks, the less loaded
};

// "round-robin", "least-connections", "client-hash", "random-two".
std::optional<balance_policy> parse_balance_policy(std::string_view text) noexcept;
const char* to_string(balance_policy p) noexcept;

// One server as configured: its addresses (a name's every address, tried with Happy
// Eyeballs by stream::connect) are one server for balancing and health.
struct upstream_server {
    endpoint_list address;
    unsigned weight = 1; // 0: no new connections (as drain)
    bool backup = false; // used only while no primary server is up
    bool drain = false;  // no new connections; open ones finish
};

// Passive health, with nginx's semantics: `max_fails` failed connects within
// `fail_timeout` mark a server down for `fail_timeout`; 0 turns the accounting off, and
// so does a set of one server (as nginx: leaving out the only server helps no one).
struct passive_health {
    unsigned max_fails = 1;
    clock::duration fail_timeout = std::chrono::seconds(10);
};

// Active health checks, with HAProxy's semantics: a server that is up goes down after
// `fall` failed checks in a row, one that is down comes up after `rise` passed ones.
struct active_health {
    unsigned rise = 2;
    unsigned fall = 3;
};

// What one server has been through. Kept by shared_ptr so that a new set made by a
// reload (inherit()) keeps it for the servers that stay, and so that a connection can
// count itself out of the server it went to after the set was replaced.
struct upstream_state {
    // Counters: relaxed atomics, read by metrics without the set's lock.
    std::atomic<std::uint64_t> active{0};   // open connections
    std::atomic<std::uint64_t> connects{0}; // connects that succeeded
    std::atomic<std::uint64_t> connect_failures{0};
    std::atomic<std::uint64_t> bytes_to_server{0};
    std::atomic<std::uint64_t> bytes_from_server{0};

    // Health: under the owner's lock.
    unsigned fails = 0;               // failed connects in the current window
    clock::time_point window_start{}; // when the first of them failed
    clock::time_point down_until{};   // passive: no connects before this
    bool checked_down = false;        // active checks say down
    unsigned check_streak = 0;        // checks in a row against the current state
};

// What an active check changed.
enum class check_change { none, went_down, came_up };

class upstream_set {
public:
    upstream_set() = default;
    upstream_set(std::vector<upstream_server> servers, balance_policy policy,
                 passive_health passive = {});

    [[nodiscard]] std::size_t size() const noexcept { return servers_.size(); }
    [[nodiscard]] const upstream_server& server(std::size_t i) const noexcept {
        return servers_[i].config;
    }
    [[nodiscard]] upstream_state& state(std::size_t i) const noexcept { return *servers_[i].state; }
    [[nodiscard]] const std::shared_ptr<upstream_state>& state_ptr(std::size_t i) const noexcept {
        return servers_[i].state;
    }
    [[nodiscard]] balance_policy policy() const noexcept { return policy_; }

    // Takes the health state and counters of every server of `old` with the same
    // address: a reload forgets nothing about the servers it keeps.
    void inherit(const upstream_set& old);

    // The server for a new connection, or none when no server can take one. Skips
    // the servers in `exclude` (already tried by this connection), drained ones,
    // weight 0 and those down; backups only when no primary is left.
    // `client_hash` is only read by client_hash (hash_client() of the peer).
    std::optional<std::size_t> choose(std::uint64_t client_hash,
                                      std::span<const std::size_t> exclude,
                                      clock::time_point now = clock::now());

    // Passive health: a connect to server `i` failed (refused, timeout, unreachable)
    // or succeeded.
    void report_failure(std::size_t i, clock::time_point now = clock::now());
    void report_success(std::size_t i) noexcept;

    // An active check of server `i` passed or failed; says when that changed its state.
    check_change report_check(std::size_t i, bool passed, const active_health& rules);

    // Up for new connections now (health only; drain and weight aside).
    [[nodiscard]] bool is_up(std::size_t i, clock::time_point now = clock::now()) const noexcept;

private:
    struct entry {
        upstream_server config;
        std::shared_ptr<upstream_state> state;
        std::int64_t current = 0; // smooth round-robin's running weight
    };
    struct ring_point {
        std::uint64_t hash;
        std::uint32_t server;
    };

    bool usable(std::size_t i, std::span<const std::size_t> exclude, bool backup,
                clock::time_point now) const noexcept;
    std::optional<std::size_t> pick(std::uint64_t client_hash, std::span<const std::size_t> exclude,
                                    bool backup, clock::time_point now);
    std::optional<std::size_t> pick_round_robin(const std::vector<std::size_t>& c);
    std::optional<std::size_t> pick_least(const std::vector<std::size_t>& c);
    std::optional<std::size_t> pick_random_two(const std::vector<std::size_t>& c);
    std::optional<std::size_t> pick_hash(std::uint64_t h, std::span<const std::size_t> exclude,
                                         bool backup, clock::time_point now) const;
    std::size_t weighted_random(const std::vector<std::size_t>& c);
    void build_ring();

    std::vector<entry> servers_;
    balance_policy policy_ = balance_policy::round_robin;
    passive_health passive_;
    std::vector<ring_point> ring_; // client_hash only
    std::uint64_t turn_ = 0;       // least_connections' tie break
    std::uint64_t rng_ = 0x9e3779b97f4a7c15ULL;
    std::vector<std::size_t> scratch_; // candidates, reused so choose() does not allocate
};

// Virtual nodes of a weight-1 server on the client_hash ring: with 256, the share of
// each of three servers stays within a few percent of a third (the ring of three is
// 768 points, 12 KiB).
inline constexpr unsigned ring_points_per_weight = 256;
// The ring's size at most (16 MiB): beyond it each unit of weight gets fewer points.
inline constexpr std::uint64_t ring_points_max = 1 << 20;

// A stable 64-bit hash of the client's address without its port (a client reconnects
// from a new port), for client_hash. Unix peers hash to 0.
std::uint64_t hash_client(const endpoint& peer) noexcept;

} // namespace zcio
