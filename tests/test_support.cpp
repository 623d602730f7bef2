// Shared test helpers: random data, checksums, descriptor-leak checks, and the
// streams, producers and consumers the stream, listener, copy and relay tests share.
#include "test_support.hpp"

#include <zcio/event_loop.hpp>
#include <zcio/listener.hpp>
#include <zcio/sys.hpp>

#include <dirent.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <random>
#include <utility>

namespace zcio::test {

using namespace std::chrono_literals;

std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed) {
    std::vector<std::byte> out(n);
    std::mt19937_64 rng(seed);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        std::uint64_t v = rng();
        for (int k = 0; k < 8; ++k) {
            out[i + k] = static_cast<std::byte>(v >> (8 * k));
        }
    }
    for (; i < n; ++i) {
        out[i] = static_cast<std::byte>(rng());
    }
    return out;
}

void checksum::update(std::span<const std::byte> data) noexcept {
    for (std::byte b : data) {
        h_ ^= static_cast<std::uint8_t>(b);
        h_ *= 1099511628211ULL;
    }
}

std::uint64_t checksum_of(std::span<const std::byte> data) noexcept {
    checksum c;
    c.update(data);
    return c.value();
}

std::size_t open_fd_count() {
    std::size_t n = 0;
    DIR* d = ::opendir("/proc/self/fd");
    if (d == nullptr) {
        return 0;
    }
    while (dirent* e = ::readdir(d)) {
        if (e->d_name[0] != '.') {
            ++n;
        }
    }
    ::closedir(d);
    return n - 1; // the DIR's own descriptor
}

fd_limit_guard::fd_limit_guard() {
    ok_ = ::getrlimit(RLIMIT_NOFILE, &saved_) == 0;
}

// The kernel hands out the lowest free number, so every fd below it is in use: with the
// soft limit there, the next descriptor of any kind fails with EMFILE.
bool fd_limit_guard::exhaust() {
    if (!ok_) {
        return false;
    }
    auto probe = sys::eventfd();
    if (!probe) {
        return false;
    }
    ::rlimit low = saved_;
    low.rlim_cur = static_cast<rlim_t>(probe->get());
    probe->reset();
    lowered_ = ::setrlimit(RLIMIT_NOFILE, &low) == 0;
    return lowered_;
}

void fd_limit_guard::restore() noexcept {
    if (lowered_) {
        lowered_ = ::setrlimit(RLIMIT_NOFILE, &saved_) != 0;
    }
}

std::chrono::microseconds cpu_time() {
    ::rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    auto us = [](const timeval& tv) {
        return std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec);
    };
    return us(ru.ru_utime) + us(ru.ru_stime);
}

void fd_leak_check::SetUp() {
    fds_at_start_ = open_fd_count();
    handles_at_start_ = io_handles_alive();
}

void fd_leak_check::TearDown() {
    EXPECT_EQ(open_fd_count(), fds_at_start_) << "descriptors leaked by this test";
    EXPECT_EQ(io_handles_alive(), handles_at_start_) << "io_handles leaked by this test";
}

std::string temp_path(const std::string& stem) {
    static std::atomic<int> counter{0};
    const char* dir = std::getenv("TMPDIR");
    std::string base = dir != nullptr ? dir : "/tmp";
    return base + "/zcio-" + stem + "-" + std::to_string(::getpid()) + "-" +
           std::to_string(counter.fetch_add(1));
}

bool ipv6_loopback_available(int type) {
    auto fd = sys::socket(AF_INET6, type);
    if (!fd) {
        return false;
    }
    const auto at = endpoint::ipv6_loopback(0);
    return sys::bind(fd->get(), at.data(), at.size()).has_value();
}

endpoint loopback(int family) {
    return family == AF_INET6 ? endpoint::ipv6_loopback(0) : endpoint::ipv4_loopback(0);
}

void udp_family_test::SetUp() {
    fd_leak_check::SetUp();
    if (GetParam() == AF_INET6 && !ipv6_loopback_available(SOCK_DGRAM)) {
        GTEST_SKIP() << "no IPv6 loopback (cannot bind [::1]:0 here)";
    }
}

result<stream_pair> adopt_pair(event_loop& loop, unique_fd a, unique_fd b) {
    auto sa = stream::adopt(loop, std::move(a));
    if (!sa) {
        return fail(sa.error());
    }
    auto sb = stream::adopt(loop, std::move(b));
    if (!sb) {
        return fail(sb.error());
    }
    return stream_pair{std::move(*sa), std::move(*sb)};
}

result<stream_pair> unix_pair(event_loop& loop) {
    auto fds = sys::socketpair(AF_UNIX, SOCK_STREAM);
    if (!fds) {
        return fail(fds.error());
    }
    return adopt_pair(loop, std::move(fds->first), std::move(fds->second));
}

task<result<stream_pair>> tcp_pair(event_loop* loop, endpoint at) {
    auto listener = listener::bind(*loop, at);
    if (!listener) {
        co_return fail(listener.error());
    }
    auto client = co_await stream::connect(*loop, listener->local_endpoint(), 5s);
    if (!client) {
        co_return fail(client.error());
    }
    auto server = co_await listener->accept();
    if (!server) {
        co_return fail(server.error());
    }
    co_return stream_pair{std::move(*client), std::move(server->conn)};
}

void reset_connection(stream& s) {
    ::linger lg{1, 0};
    EXPECT_TRUE(sys::setsockopt(s.fd(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    s.close();
}

std::ostream& operator<<(std::ostream& os, const side& s) {
    return os << "{bytes=" << s.bytes << " done=" << s.done << " error=" << s.error.message()
              << "}";
}

task<void> produce(stream* s, std::span<const std::byte> data, std::uint64_t seed,
                   std::size_t max_chunk, bool shutdown_after, side* out) {
    size_source sizes(seed);
    while (out->bytes < data.size()) {
        const std::size_t len = std::min(data.size() - out->bytes, sizes.between(1, max_chunk));
        auto w = co_await s->write_all(data.subspan(out->bytes, len));
        if (!w) {
            out->error = w.error();
            out->done = true;
            co_return;
        }
        out->bytes += *w;
    }
    if (shutdown_after) {
        if (auto r = s->shutdown_write(); !r) {
            out->error = r.error();
        }
    }
    out->done = true;
}

task<void> consume(stream* s, std::uint64_t seed, std::size_t max_chunk, side* out,
                   std::optional<std::size_t> limit) {
    size_source sizes(seed);
    checksum sum;
    std::vector<std::byte> buf(max_chunk);
    while (!limit || out->bytes < *limit) {
        std::size_t want = sizes.between(1, buf.size());
        if (limit) {
            want = std::min(want, *limit - out->bytes);
        }
        auto n = co_await s->read_some(std::span(buf).first(want));
        if (!n) {
            out->error = n.error();
            break;
        }
        if (*n == 0) {
            break;
        }
        sum.update(std::span(buf).first(*n));
        out->bytes += *n;
    }
    out->sum = sum.value();
    out->done = true;
}

task<void> echo(stream s, std::uint64_t seed, std::size_t max_chunk, side* out) {
    size_source sizes(seed);
    std::vector<std::byte> buf(max_chunk);
    while (true) {
        auto n = co_await s.read_some(std::span(buf).first(sizes.between(1, buf.size())));
        if (!n) {
            out->error = n.error();
            out->done = true;
            co_return;
        }
        if (*n == 0) {
            break;
        }
        auto w = co_await s.write_all(std::span(buf).first(*n));
        if (!w) {
            out->error = w.error();
            out->done = true;
            co_return;
        }
        out->bytes += *n;
    }
    if (auto r = s.shutdown_write(); !r) {
        out->error = r.error();
    }
    out->done = true;
}

task<bool> wait_until(event_loop* loop, std::function<bool()> done, clock::duration limit) {
    const auto deadline = clock::now() + limit;
    while (!done()) {
        if (clock::now() >= deadline) {
            co_return false;
        }
        co_await sleep_for(*loop, 1ms);
    }
    co_return true;
}

task<void> pause(event_loop* loop, clock::duration d) {
    co_await sleep_for(*loop, d);
}

transfer_pools& transfer_pools_fixture::make_pools(pipe_pool_options p, buffer_pool_options b) {
    pools_.reset(new transfer_pools{pipe_pool(std::move(p)), buffer_pool(std::move(b))});
    return *pools_;
}

void transfer_pools_fixture::TearDown() {
    if (pools_) {
        EXPECT_EQ(pools_->pipes.stats().leased, 0u) << "a pipe is still leased";
        EXPECT_EQ(pools_->buffers.stats().leased, 0u) << "a buffer is still leased";
        pools_.reset(); // idle pipes are descriptors too
    }
    fd_leak_check::TearDown();
}

} // namespace zcio::test
