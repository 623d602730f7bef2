// Shared test helpers: random data, checksums, descriptor-leak checks, and the
// streams, producers and consumers the stream, listener, copy and relay tests share.
#pragma once

#include <zcio/copy.hpp>
#include <zcio/endpoint.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/result.hpp>
#include <zcio/stream.hpp>
#include <zcio/task.hpp>
#include <zcio/unique_fd.hpp>

#include <gtest/gtest.h>

#include <sys/resource.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace zcio::test {

// Deterministic pseudo-random bytes (seeded), so a failure can be reproduced.
std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed);

// A 64-bit FNV-1a checksum, streaming: feed chunks, read value().
class checksum {
public:
    void update(std::span<const std::byte> data) noexcept;
    [[nodiscard]] std::uint64_t value() const noexcept { return h_; }

private:
    std::uint64_t h_ = 1469598103934665603ULL;
};

std::uint64_t checksum_of(std::span<const std::byte> data) noexcept;

// Number of entries in /proc/self/fd.
std::size_t open_fd_count();

// Lowers RLIMIT_NOFILE's soft limit to the lowest free descriptor, so that the next
// descriptor of any kind fails with EMFILE, and puts it back on restore() or
// destruction, whatever the test does in between.
class fd_limit_guard {
public:
    fd_limit_guard();
    ~fd_limit_guard() { restore(); }
    fd_limit_guard(const fd_limit_guard&) = delete;
    fd_limit_guard& operator=(const fd_limit_guard&) = delete;
    // Returns whether the limit was lowered.
    bool exhaust();
    void restore() noexcept;

private:
    ::rlimit saved_{};
    bool ok_ = false;
    bool lowered_ = false;
};

// User + system CPU time of this process so far.
std::chrono::microseconds cpu_time();

// A fixture whose teardown fails the test when descriptors leaked.
class fd_leak_check : public ::testing::Test {
protected:
    void SetUp() override;
    void TearDown() override;

private:
    std::size_t fds_at_start_ = 0;
    std::size_t handles_at_start_ = 0;
};

// A unique path under $TMPDIR (or /tmp) for a temporary file; nothing is created.
std::string temp_path(const std::string& stem);

// ---- seeded sizes (stream, listener, copy and UDP tests: one generator, so the same
// seed gives the same sizes everywhere) ----

// splitmix64's step and output function: a cheap, well-mixed hash of `x`, so that
// sizes and other choices follow from a seed (and a failure can be reproduced).
constexpr std::uint64_t splitmix64_gamma = 0x9e3779b97f4a7c15ULL;
constexpr std::uint64_t splitmix64(std::uint64_t x) noexcept {
    x += splitmix64_gamma;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// Chunk (or datagram) sizes from a seed: a splitmix64 generator, small enough to live
// in every coroutine frame.
class size_source {
public:
    explicit size_source(std::uint64_t seed) noexcept : state_(seed) {}
    // A size in [lo, hi].
    std::size_t between(std::size_t lo, std::size_t hi) noexcept {
        return lo + static_cast<std::size_t>(next() % (hi - lo + 1));
    }

private:
    std::uint64_t next() noexcept {
        const std::uint64_t x = state_;
        state_ += splitmix64_gamma;
        return splitmix64(x);
    }
    std::uint64_t state_;
};

// ---- addresses (the IPv6 skip and the loopback choice, the same in every socket test) ----

// Whether [::1] can be bound here with a socket of `type` (SOCK_STREAM, SOCK_DGRAM):
// tests over IPv6 skip themselves where it cannot.
bool ipv6_loopback_available(int type);

// The loopback address of `family` (AF_INET or AF_INET6), port 0.
endpoint loopback(int family);

// A fixture for UDP tests run once per address family (the parameter: AF_INET or
// AF_INET6): the IPv6 run skips itself where [::1] cannot be bound, and any_port() is
// the family's loopback address with port 0.
class udp_family_test : public fd_leak_check, public ::testing::WithParamInterface<int> {
protected:
    void SetUp() override;
    [[nodiscard]] endpoint any_port() const { return loopback(GetParam()); }
};

// ---- connected streams (stream, copy, copy_bidirectional and relay tests) ----

// Two connected streams. For tcp_pair(), `first` is the end that connected and `second`
// the end accept() returned; for a socketpair or adopt_pair(), the fds in order.
struct stream_pair {
    stream first;
    stream second;
};

// Adopts two connected descriptors (a socketpair, or a pipe's two ends) on `loop`.
result<stream_pair> adopt_pair(event_loop& loop, unique_fd a, unique_fd b);

// An AF_UNIX SOCK_STREAM socketpair, adopted.
result<stream_pair> unix_pair(event_loop& loop);

// A pair through a listener bound at `at` (TCP, or a Unix socket path). The connect
// completes in the kernel's backlog before accept() runs, so the two steps can be
// sequential. The listener is closed (and a Unix path removed) on return; the pair
// lives on.
task<result<stream_pair>> tcp_pair(event_loop* loop, endpoint at = endpoint::ipv4_loopback(0));

// Sets SO_LINGER {on, 0} and closes: the kernel sends RST instead of FIN.
void reset_connection(stream& s);

// ---- producers and consumers: the one way the stream, listener and copy tests move and
// check seeded data (coroutines take their parameters by value: see task.hpp) ----

// What one producer or consumer did: bytes, checksum of those bytes, how it ended.
struct side {
    std::size_t bytes = 0;
    std::uint64_t sum = 0;
    std::error_code error;
    bool done = false;
};

std::ostream& operator<<(std::ostream& os, const side& s);

// Writes `data` in chunks of random size (1 to `max_chunk`, from `seed`), then
// half-closes when `shutdown_after`. Stops at the first failed write and then no
// longer touches `s`: the owner may have closed it.
task<void> produce(stream* s, std::span<const std::byte> data, std::uint64_t seed,
                   std::size_t max_chunk, bool shutdown_after, side* out);

// Reads into buffers of random size (1 to `max_chunk`, from `seed`) until end of
// stream, or until `limit` bytes when given, checksumming what arrives.
task<void> consume(stream* s, std::uint64_t seed, std::size_t max_chunk, side* out,
                   std::optional<std::size_t> limit = std::nullopt);

// Sends back everything it reads (reads of random size) until end of stream, then
// half-closes. Owns its stream: the fd is closed when the echo ends. It counts but
// does not checksum: the far end compares what came back with what it sent.
task<void> echo(stream s, std::uint64_t seed, std::size_t max_chunk, side* out);

// ---- running the loop (stream, listener, copy, relay and UDP tests) ----

// Runs the loop until `done()` holds (true) or `limit` passes (false). The predicate
// is a plain callable, not a coroutine, so capturing the test's locals is fine.
task<bool> wait_until(event_loop* loop, std::function<bool()> done, clock::duration limit);

// Sleeps for `d`: loop.block_on(pause(&loop, d)) lets the spawned tasks run that long.
task<void> pause(event_loop* loop, clock::duration d);

// ---- copies (copy and copy_bidirectional tests) ----

// A fixture for copy tests: each test makes its own transfer_pools (the copy borrows
// only from them), and teardown fails the test when a pipe or buffer is still leased
// or a descriptor leaked.
class transfer_pools_fixture : public fd_leak_check {
protected:
    transfer_pools& make_pools(pipe_pool_options p = {}, buffer_pool_options b = {});
    void TearDown() override;

    std::unique_ptr<transfer_pools> pools_;
};

} // namespace zcio::test
