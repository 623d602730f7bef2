// The four balancers of upstream_set and its passive and active health.
#include <zcio/balancer.hpp>

#include <netinet/in.h>

#include <algorithm>
#include <cstring>

namespace zcio {

namespace {

// FNV-1a, then a 64-bit finaliser (murmur3's fmix64): FNV alone spreads short keys
// that differ in their last bytes (the points of one server) poorly around the ring.
std::uint64_t mix(std::uint64_t h) noexcept {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

std::uint64_t hash_bytes(const void* data, std::size_t n,
                         std::uint64_t h = 0xcbf29ce484222325ULL) noexcept {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i) {
        h = (h ^ p[i]) * 0x100000001b3ULL;
    }
    return mix(h);
}

bool excluded(std::span<const std::size_t> exclude, std::size_t i) noexcept {
    return std::ranges::find(exclude, i) != exclude.end();
}

} // namespace

std::optional<balance_policy> parse_balance_policy(std::string_view text) noexcept {
    if (text == "round-robin") {
        return balance_policy::round_robin;
    }
    if (text == "least-connections") {
        return balance_policy::least_connections;
    }
    if (text == "client-hash") {
        return balance_policy::client_hash;
    }
    if (text == "random-two") {
        return balance_policy::random_two;
    }
    return std::nullopt;
}

const char* to_string(balance_policy p) noexcept {
    switch (p) {
    case balance_policy::round_robin:
        return "round-robin";
    case balance_policy::least_connections:
        return "least-connections";
    case balance_policy::client_hash:
        return "client-hash";
    case balance_policy::random_two:
        return "random-two";
    }
    return "?";
}

std::uint64_t hash_client(const endpoint& peer) noexcept {
    if (peer.family() == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(peer.data());
        return hash_bytes(&a->sin_addr, sizeof a->sin_addr);
    }
    if (peer.family() == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(peer.data());
        return hash_bytes(&a->sin6_addr, sizeof a->sin6_addr);
    }
    return 0;
}

upstream_set::upstream_set(std::vector<upstream_server> servers, balance_policy policy,
                           passive_health passive)
    : policy_(policy), passive_(passive) {
    servers_.reserve(servers.size());
    for (auto& s : servers) {
        servers_.push_back({std::move(s), std::make_shared<upstream_state>(), 0});
    }
    scratch_.reserve(servers_.size());
    if (policy_ == balance_policy::client_hash) {
        build_ring();
    }
}

// Each server with weight > 0 and not drained gets weight x ring_points_per_weight
// points (fewer when the ring would pass ring_points_max), placed by the hash of its address and
// the point's number: a server's points depend on nothing else, so removing one server moves only
// its own clients.
void upstream_set::build_ring() {
    ring_.clear();
    std::uint64_t total_weight = 0;
    for (const auto& e : servers_) {
        total_weight += e.config.drain ? 0 : e.config.weight;
    }
    // At most ring_points_max points in all: many heavy servers get fewer per weight.
    const std::uint64_t per_weight = std::clamp<std::uint64_t>(
        ring_points_max / std::max<std::uint64_t>(total_weight, 1), 1, ring_points_per_weight);
    for (std::size_t i = 0; i < servers_.size(); ++i) {
        const auto& c = servers_[i].config;
        if (c.weight == 0 || c.drain) {
            continue;
        }
        const std::string key = c.address.to_string();
        const std::uint64_t base = hash_bytes(key.data(), key.size());
        const std::uint64_t points = std::uint64_t{c.weight} * per_weight;
        for (std::uint64_t p = 0; p < points; ++p) {
            ring_.push_back({hash_bytes(&p, sizeof p, base), static_cast<std::uint32_t>(i)});
        }
    }
    std::ranges::sort(ring_, {}, &ring_point::hash);
}

void upstream_set::inherit(const upstream_set& old) {
    for (auto& mine : servers_) {
        for (const auto& theirs : old.servers_) {
            if (theirs.config.address == mine.config.address) {
                mine.state = theirs.state;
                mine.current = theirs.current;
                break;
            }
        }
    }
}

bool upstream_set::is_up(std::size_t i, clock::time_point now) const noexcept {
    const auto& st = *servers_[i].state;
    return !st.checked_down && now >= st.down_until;
}

bool upstream_set::usable(std::size_t i, std::span<const std::size_t> exclude, bool backup,
                          clock::time_point now) const noexcept {
    const auto& c = servers_[i].config;
    return c.backup == backup && c.weight > 0 && !c.drain && is_up(i, now) && !excluded(exclude, i);
}

std::optional<std::size_t> upstream_set::choose(std::uint64_t client_hash,
                                                std::span<const std::size_t> exclude,
                                                clock::time_point now) {
    if (auto i = pick(client_hash, exclude, false, now)) {
        return i;
    }
    return pick(client_hash, exclude, true, now);
}

std::optional<std::size_t> upstream_set::pick(std::uint64_t client_hash,
                                              std::span<const std::size_t> exclude, bool backup,
                                              clock::time_point now) {
    if (policy_ == balance_policy::client_hash) {
        return pick_hash(client_hash, exclude, backup, now);
    }
    scratch_.clear();
    for (std::size_t i = 0; i < servers_.size(); ++i) {
        if (usable(i, exclude, backup, now)) {
            scratch_.push_back(i);
        }
    }
    if (scratch_.empty()) {
        return std::nullopt;
    }
    switch (policy_) {
    case balance_policy::least_connections:
        return pick_least(scratch_);
    case balance_policy::random_two:
        return pick_random_two(scratch_);
    default:
        return pick_round_robin(scratch_);
    }
}

// nginx's smooth weighted round-robin: every candidate gains its weight, the one with
// the most is chosen and loses the sum. Weights 5,1,1 give a a b a c a a, not
// a a a a a b c, and a server that was down rejoins the rotation at once.
std::optional<std::size_t> upstream_set::pick_round_robin(const std::vector<std::size_t>& c) {
    std::int64_t total = 0;
    entry* best = nullptr;
    std::size_t best_i = 0;
    for (std::size_t i : c) {
        auto& e = servers_[i];
        e.current += e.config.weight;
        total += e.config.weight;
        if (best == nullptr || e.current > best->current) {
            best = &e;
            best_i = i;
        }
    }
    best->current -= total;
    return best_i;
}

// Fewest open connections per unit of weight (compared as active_a x weight_b <
// active_b x weight_a, no division); equal ones in turn, so that a burst of new
// connections while all are idle is spread instead of going to the first server.
std::optional<std::size_t> upstream_set::pick_least(const std::vector<std::size_t>& c) {
    const std::size_t start = turn_++ % c.size();
    std::size_t best = c[start];
    for (std::size_t k = 1; k < c.size(); ++k) {
        const std::size_t i = c[(start + k) % c.size()];
        const auto ai = servers_[i].state->active.load(std::memory_order_relaxed);
        const auto ab = servers_[best].state->active.load(std::memory_order_relaxed);
        if (ai * servers_[best].config.weight < ab * servers_[i].config.weight) {
            best = i;
        }
    }
    return best;
}

std::size_t upstream_set::weighted_random(const std::vector<std::size_t>& c) {
    std::uint64_t total = 0;
    for (std::size_t i : c) {
        total += servers_[i].config.weight;
    }
    // xorshift64*: quality enough for spreading load, and no lock or state to share.
    rng_ ^= rng_ >> 12;
    rng_ ^= rng_ << 25;
    rng_ ^= rng_ >> 27;
    std::uint64_t r = (rng_ * 0x2545f4914f6cdd1dULL) % total;
    for (std::size_t i : c) {
        if (r < servers_[i].config.weight) {
            return i;
        }
        r -= servers_[i].config.weight;
    }
    return c.back();
}

// Two weighted random picks, the one with fewer connections per weight wins: close
// to least-connections without its herd on the one idle server after a burst.
std::optional<std::size_t> upstream_set::pick_random_two(const std::vector<std::size_t>& c) {
    const std::size_t a = weighted_random(c);
    if (c.size() == 1) {
        return a;
    }
    std::size_t b = a;
    for (int tries = 0; tries < 4 && b == a; ++tries) {
        b = weighted_random(c);
    }
    const auto aa = servers_[a].state->active.load(std::memory_order_relaxed);
    const auto ab = servers_[b].state->active.load(std::memory_order_relaxed);
    return ab * servers_[a].config.weight < aa * servers_[b].config.weight ? b : a;
}

// The first point at or after the client's hash whose server can take it, walking the
// ring once around: a server that is down or tried already passes its clients to the
// next points, and gets them back when it is up again.
std::optional<std::size_t> upstream_set::pick_hash(std::uint64_t h,
                                                   std::span<const std::size_t> exclude,
                                                   bool backup, clock::time_point now) const {
    if (ring_.empty()) {
        return std::nullopt;
    }
    const auto first = std::ranges::lower_bound(ring_, h, {}, &ring_point::hash) - ring_.begin();
    for (std::size_t k = 0; k < ring_.size(); ++k) {
        const auto& p = ring_[(static_cast<std::size_t>(first) + k) % ring_.size()];
        if (usable(p.server, exclude, backup, now)) {
            return p.server;
        }
    }
    return std::nullopt;
}

// nginx: failures count within a window of fail_timeout from the first; reaching
// max_fails in it takes the server out for fail_timeout. After that one connect may
// try it again: a failure takes it out once more, a success clears the count.
void upstream_set::report_failure(std::size_t i, clock::time_point now) {
    auto& st = *servers_[i].state;
    st.connect_failures.fetch_add(1, std::memory_order_relaxed);
    if (passive_.max_fails == 0 || servers_.size() == 1) {
        return;
    }
    if (st.fails == 0 || now - st.window_start > passive_.fail_timeout) {
        st.fails = 0;
        st.window_start = now;
    }
    if (++st.fails >= passive_.max_fails) {
        st.down_until = now + passive_.fail_timeout;
        st.fails = 0;
    }
}

void upstream_set::report_success(std::size_t i) noexcept {
    auto& st = *servers_[i].state;
    st.connects.fetch_add(1, std::memory_order_relaxed);
    st.fails = 0;
    st.down_until = {};
}

check_change upstream_set::report_check(std::size_t i, bool passed, const active_health& rules) {
    auto& st = *servers_[i].state;
    const bool against = st.checked_down ? passed : !passed;
    if (!against) {
        st.check_streak = 0;
        return check_change::none;
    }
    const unsigned need = st.checked_down ? rules.rise : rules.fall;
    if (++st.check_streak < std::max(need, 1U)) {
        return check_change::none;
    }
    st.check_streak = 0;
    st.checked_down = !st.checked_down;
    if (!st.checked_down) {
        // A passing check also ends a passive timeout: the server answers again.
        st.down_until = {};
        st.fails = 0;
    }
    return st.checked_down ? check_change::went_down : check_change::came_up;
}

} // namespace zcio
