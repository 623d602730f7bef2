// Tests for zcio/asio.hpp: async_copy and async_copy_bidirectional on real Asio
// objects (TCP and Unix sockets, pipes and regular files by stream_descriptor), with
// checksummed random data, every completion token, half-close in both orders,
// cancellation mid-transfer (counts kept, nothing leased), strands, and a 4-thread
// io_context (run under TSan by `make test-tsan`).
#include <zcio/asio.hpp>

#include "test_support.hpp"

#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/deferred.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/connect_pair.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/read.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/use_future.hpp>
#include <asio/write.hpp>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <functional>
#include <future>
#include <thread>

namespace zcio {
namespace {

namespace net = ::asio;
using tcp = net::ip::tcp;
using unix_socket = net::local::stream_protocol::socket;
using descriptor = net::posix::stream_descriptor;
using namespace std::chrono_literals;

const std::vector<std::byte>& data(int which = 0) {
    static const std::vector<std::byte> d[2] = {test::random_bytes(std::size_t{6} << 20, 0xa510),
                                                test::random_bytes(std::size_t{3} << 20, 0xa511)};
    return d[which];
}

// Two connected TCP sockets over loopback (port 0): {the connecting end on `cex`, the
// accepted end on `aex`}.
template <class E1, class E2>
std::pair<tcp::socket, tcp::socket> tcp_pair(E1 cex, E2 aex) {
    tcp::acceptor acc(aex, tcp::endpoint(net::ip::address_v4::loopback(), 0));
    tcp::socket c(cex);
    c.connect(acc.local_endpoint());
    tcp::socket s(aex);
    acc.accept(s);
    return {std::move(c), std::move(s)};
}

template <class Executor>
std::pair<tcp::socket, tcp::socket> tcp_pair(Executor ex) {
    return tcp_pair(ex, ex);
}

template <class Executor>
std::pair<unix_socket, unix_socket> unix_pair(Executor ex) {
    unix_socket a(ex);
    unix_socket b(ex);
    net::local::connect_pair(a, b);
    return {std::move(a), std::move(b)};
}

// A pipe as two stream_descriptors: {read end, write end}.
std::pair<descriptor, descriptor> pipe_pair(net::io_context& io) {
    auto p = sys::pipe();
    EXPECT_TRUE(p.has_value());
    return {descriptor(io, p->read_end.release()), descriptor(io, p->write_end.release())};
}

// What a reader saw: bytes, checksum, how it ended.
struct sink {
    test::checksum sum;
    std::uint64_t bytes = 0;
    std::error_code ec;
    bool done = false;
    std::array<std::byte, 64 * 1024> buf{};
};

// Reads `s` to end of stream (or an error) into `k`, then calls `then`.
template <class S>
void drain(S& s, std::shared_ptr<sink> k, std::function<void()> then = {}) {
    s.async_read_some(net::buffer(k->buf), [&s, k, then](std::error_code ec, std::size_t n) {
        k->sum.update(std::span(k->buf).first(n));
        k->bytes += n;
        if (ec) {
            k->ec = ec;
            k->done = true;
            if (then) {
                then();
            }
            return;
        }
        drain(s, k, then);
    });
}

// Half-closes a socket; a pipe's write end is closed instead.
template <class S>
void end_writing(S& s) {
    std::error_code ec;
    if constexpr (requires { s.shutdown(S::shutdown_send, ec); }) {
        s.shutdown(S::shutdown_send, ec);
    } else {
        s.close(ec);
    }
}

// Writes all of `d` to `s`, then half-closes it.
template <class S>
void pour(S& s, const std::vector<std::byte>& d, std::function<void()> then = {}) {
    net::async_write(s, net::buffer(d), [&s, then](std::error_code, std::size_t) {
        end_writing(s);
        if (then) {
            then();
        }
    });
}

std::uint64_t sum_of(int which) {
    return test::checksum_of(data(which));
}

std::size_t leased() {
    const auto& p = transfer_pools::shared();
    return p.pipes.stats().leased + p.buffers.stats().leased;
}

// Runs `io` until `done()` or `limit`; true when done.
bool run_until(net::io_context& io, const std::function<bool()>& done,
               std::chrono::steady_clock::duration limit = 20s) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < end) {
        io.restart();
        io.run_for(5ms);
    }
    return done();
}

class asio_test : public test::fd_leak_check {
protected:
    void SetUp() override {
        {
            tcp::socket warm(io, tcp::v4()); // Asio makes its reactor's fds with the first object
        }
        test::fd_leak_check::SetUp();
    }
    void TearDown() override {
        EXPECT_EQ(leased(), 0u) << "a pipe or buffer is still leased";
        transfer_pools::shared().pipes.clear_idle(); // pooled pipes are not leaks
        test::fd_leak_check::TearDown();
    }
    net::io_context io;
};

// ---- async_copy: the ends and the paths ----

TEST_F(asio_test, tcp_to_tcp_with_a_callback_moves_every_byte_and_upgrades_to_splice) {
    auto [in_w, in_r] = tcp_pair(io.get_executor());
    auto [out_w, out_r] = tcp_pair(io.get_executor());
    auto k = std::make_shared<sink>();
    std::optional<std::pair<std::error_code, copy_result>> got;
    zcio::asio::async_copy(out_w, in_r, {}, [&](std::error_code ec, copy_result r) {
        got.emplace(ec, r);
        end_writing(out_w);
    });
    EXPECT_FALSE(got) << "completed inside the initiating call";
    pour(in_w, data());
    drain(out_r, k);
    io.run_for(30s);
    ASSERT_TRUE(got);
    EXPECT_FALSE(got->first) << got->first.message();
    EXPECT_EQ(got->second.bytes, data().size());
    EXPECT_EQ(got->second.path, copy_path::splice);
    ASSERT_TRUE(k->done);
    EXPECT_EQ(k->ec, net::error::eof);
    EXPECT_EQ(k->bytes, data().size());
    EXPECT_EQ(k->sum.value(), sum_of(0));
}

TEST_F(asio_test, a_regular_file_to_tcp_uses_sendfile_with_use_future) {
    const std::string path = test::temp_path("asio-src");
    {
        unique_fd f(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
        ASSERT_TRUE(f.valid());
        ASSERT_EQ(::write(f.get(), data().data(), data().size()),
                  static_cast<ssize_t>(data().size()));
    }
    descriptor file(io, ::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ::unlink(path.c_str());
    auto [w, r] = tcp_pair(io.get_executor());
    auto k = std::make_shared<sink>();
    auto fut = zcio::asio::async_copy(w, file, {}, net::use_future);
    drain(r, k);
    std::thread runner([this] { io.run_for(30s); });
    const copy_result res = fut.get(); // throws system_error on an error
    end_writing(w);
    runner.join();
    EXPECT_EQ(res.bytes, data().size());
    EXPECT_EQ(res.path, copy_path::sendfile);
    EXPECT_EQ(k->bytes, data().size());
    EXPECT_EQ(k->sum.value(), sum_of(0));
}

TEST_F(asio_test, a_pipe_to_a_unix_socket_and_back_to_a_file_with_use_awaitable) {
    auto [pr, pw] = pipe_pair(io);
    auto [ua, ub] = unix_pair(io.get_executor());
    const std::string path = test::temp_path("asio-dst");
    descriptor file(io, ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    ::unlink(path.c_str());
    copy_result first;
    copy_result second;
    auto body = [&]() -> net::awaitable<void> {
        copy_options opts;
        first = co_await zcio::asio::async_copy(ua, pr, opts, net::use_awaitable);
        end_writing(ua);
    };
    auto to_file = [&]() -> net::awaitable<void> {
        copy_options opts;
        second = co_await zcio::asio::async_copy(file, ub, opts, net::use_awaitable);
    };
    net::co_spawn(io, body(), net::detached);
    net::co_spawn(io, to_file(), net::detached);
    pour(pw, data(1));
    io.run_for(30s);
    EXPECT_EQ(first.bytes, data(1).size());
    EXPECT_EQ(first.path, copy_path::splice) << "a pipe end splices directly";
    EXPECT_EQ(second.bytes, data(1).size());
    std::vector<std::byte> back(data(1).size());
    ASSERT_EQ(::pread(file.native_handle(), back.data(), back.size(), 0),
              static_cast<ssize_t>(back.size()));
    EXPECT_EQ(test::checksum_of(back), sum_of(1));
}

TEST_F(asio_test, deferred_starts_when_invoked_and_a_limit_stops_it) {
    auto [in_w, in_r] = unix_pair(io.get_executor());
    auto [out_w, out_r] = unix_pair(io.get_executor());
    copy_options opts;
    opts.limit = 1000;
    auto op = zcio::asio::async_copy(out_w, in_r, opts, net::experimental::deferred);
    pour(in_w, data());
    io.run_for(50ms);
    EXPECT_EQ(leased(), 0u);
    std::optional<copy_result> got;
    std::move(op)([&](std::error_code ec, copy_result r) {
        EXPECT_FALSE(ec);
        got = r;
        end_writing(out_w);
    });
    auto k = std::make_shared<sink>();
    drain(out_r, k);
    ASSERT_TRUE(run_until(io, [&] { return got && k->done; }));
    EXPECT_EQ(got->bytes, 1000u);
    EXPECT_EQ(k->bytes, 1000u);
    EXPECT_EQ(k->sum.value(), test::checksum_of(std::span(data()).first(1000)));
}

TEST_F(asio_test, a_closed_object_fails_at_once_with_ebadf) {
    tcp::socket closed(io);
    auto [w, r] = tcp_pair(io.get_executor());
    std::error_code got;
    zcio::asio::async_copy(w, closed, {}, [&](std::error_code ec, copy_result) { got = ec; });
    io.run_for(5s);
    EXPECT_EQ(got.value(), EBADF) << got.message();
}

// ---- cancellation ----

// The destination is never read: the copy fills the socket buffers and waits to write
// with bytes in hand (a lease). The cancel ends it, with the counts, holding nothing.
TEST_F(asio_test, cancel_mid_transfer_returns_the_counts_and_gives_the_lease_back) {
    auto [in_w, in_r] = tcp_pair(io.get_executor());
    auto [out_w, out_r] = tcp_pair(io.get_executor());
    net::cancellation_signal cancel;
    std::uint64_t progress = 0;
    copy_options opts;
    opts.progress = &progress;
    std::optional<std::pair<std::error_code, copy_result>> got;
    zcio::asio::async_copy(
        out_w, in_r, opts,
        net::bind_cancellation_slot(
            cancel.slot(), [&](std::error_code ec, copy_result r) { got.emplace(ec, r); }));
    pour(in_w, data());
    for (int i = 0; i < 200 && (progress == 0 || leased() == 0); ++i) {
        io.run_for(10ms);
    }
    ASSERT_GT(progress, 0u);
    EXPECT_GT(leased(), 0u) << "expected a lease while waiting for a full destination";
    EXPECT_FALSE(got);
    cancel.emit(net::cancellation_type::terminal);
    io.run_for(1s);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->first, net::error::operation_aborted);
    EXPECT_EQ(got->second.error, net::error::operation_aborted);
    EXPECT_EQ(got->second.bytes, progress);
    EXPECT_EQ(leased(), 0u);
    // What was written is exactly what the counts say, and it is a prefix of the data.
    end_writing(out_w);
    auto k = std::make_shared<sink>();
    drain(out_r, k);
    ASSERT_TRUE(run_until(io, [&] { return k->done; }));
    EXPECT_EQ(k->bytes, got->second.bytes) << k->ec.message();
    EXPECT_EQ(k->sum.value(), test::checksum_of(std::span(data()).first(k->bytes)));
}

TEST_F(asio_test, cancel_while_waiting_for_the_source_holds_nothing_and_counts_zero) {
    auto [in_w, in_r] = unix_pair(io.get_executor());
    auto [out_w, out_r] = unix_pair(io.get_executor());
    net::cancellation_signal cancel;
    std::error_code got;
    std::uint64_t bytes = 1;
    zcio::asio::async_copy(
        out_w, in_r, {},
        net::bind_cancellation_slot(cancel.slot(), [&](std::error_code ec, copy_result r) {
            got = ec;
            bytes = r.bytes;
        }));
    io.run_for(50ms);
    EXPECT_EQ(leased(), 0u) << "an idle copy holds no pipe and no buffer";
    cancel.emit(net::cancellation_type::terminal);
    io.run_for(1s);
    EXPECT_EQ(got, net::error::operation_aborted);
    EXPECT_EQ(bytes, 0u);
}

// ---- async_copy_bidirectional ----

// client ↔ a | proxy | b ↔ server.
struct proxied {
    // Every socket on `ex`.
    template <class Executor>
    explicit proxied(Executor ex) : proxied(tcp_pair(ex), tcp_pair(ex)) {}
    // The peers on `peers`, the proxy's two sockets on `proxy`.
    template <class P, class Q>
    proxied(P peers, Q proxy) : proxied(tcp_pair(peers, proxy), tcp_pair(proxy, peers)) {}
    proxied(std::pair<tcp::socket, tcp::socket> front, std::pair<tcp::socket, tcp::socket> back)
        : client(std::move(front.first)), a(std::move(front.second)), b(std::move(back.first)),
          server(std::move(back.second)) {}
    tcp::socket client;
    tcp::socket a;
    tcp::socket b;
    tcp::socket server;
};

// Half-close in the order given: the first side sends its data and half-closes, the
// other reads to end of stream and only then sends its own.
void half_close_case(bool client_first) {
    net::io_context io;
    proxied p(io.get_executor());
    auto at_client = std::make_shared<sink>();
    auto at_server = std::make_shared<sink>();
    std::optional<traffic> got;
    zcio::asio::async_copy_bidirectional(p.a, p.b, [&](std::error_code ec, traffic t) {
        EXPECT_FALSE(ec) << ec.message();
        got = t;
    });
    if (client_first) {
        pour(p.client, data(0));
        drain(p.server, at_server, [&] { pour(p.server, data(1)); });
        drain(p.client, at_client);
    } else {
        pour(p.server, data(1));
        drain(p.client, at_client, [&] { pour(p.client, data(0)); });
        drain(p.server, at_server);
    }
    io.run_for(30s);
    ASSERT_TRUE(got);
    EXPECT_TRUE(got->ok());
    EXPECT_EQ(got->a_to_b, data(0).size());
    EXPECT_EQ(got->b_to_a, data(1).size());
    EXPECT_EQ(got->a_to_b_path, copy_path::splice);
    EXPECT_EQ(at_server->sum.value(), sum_of(0));
    EXPECT_EQ(at_client->sum.value(), sum_of(1));
    EXPECT_EQ(at_server->ec, net::error::eof);
    EXPECT_EQ(at_client->ec, net::error::eof);
}

TEST_F(asio_test, bidirectional_half_close_client_first) {
    half_close_case(true);
}

TEST_F(asio_test, bidirectional_half_close_server_first) {
    half_close_case(false);
}

// A rate limit parks on a steady_timer, which each direction makes only when it first
// waits for its limiter: both directions get their bytes intact, and no faster than the
// limit lets them (the burst is a tenth of a second of it).
TEST_F(asio_test, bidirectional_rate_limit_waits_on_timers_and_moves_every_byte) {
    const auto to_b = test::random_bytes(std::size_t{192} << 10, 0xa512);
    const auto to_a = test::random_bytes(std::size_t{128} << 10, 0xa513);
    proxied p(io.get_executor());
    auto at_client = std::make_shared<sink>();
    auto at_server = std::make_shared<sink>();
    bidirectional_options o;
    o.rate_limit = std::uint64_t{1} << 20; // 1 MiB/s each way: 192 KiB take >= 0.08 s
    std::optional<traffic> got;
    const auto began = std::chrono::steady_clock::now();
    zcio::asio::async_copy_bidirectional(p.a, p.b, o, [&](std::error_code ec, traffic t) {
        EXPECT_FALSE(ec) << ec.message();
        got = t;
    });
    pour(p.client, to_b);
    pour(p.server, to_a);
    drain(p.server, at_server);
    drain(p.client, at_client);
    ASSERT_TRUE(run_until(io, [&] { return got && at_server->done && at_client->done; }));
    EXPECT_GE(std::chrono::steady_clock::now() - began, 80ms);
    EXPECT_EQ(got->a_to_b, to_b.size());
    EXPECT_EQ(got->b_to_a, to_a.size());
    EXPECT_EQ(at_server->sum.value(), test::checksum_of(to_b));
    EXPECT_EQ(at_client->sum.value(), test::checksum_of(to_a));
}

// async_copy with a limiter: the same lazily made timer, one direction.
TEST_F(asio_test, a_rate_limited_async_copy_moves_every_byte) {
    const auto d = test::random_bytes(std::size_t{192} << 10, 0xa514);
    auto [in_w, in_r] = tcp_pair(io.get_executor());
    auto [out_w, out_r] = tcp_pair(io.get_executor());
    auto k = std::make_shared<sink>();
    rate_limiter limit(std::uint64_t{1} << 20);
    copy_options o;
    o.limiter = &limit;
    std::optional<copy_result> got;
    const auto began = std::chrono::steady_clock::now();
    zcio::asio::async_copy(out_w, in_r, o, [&](std::error_code ec, copy_result r) {
        EXPECT_FALSE(ec) << ec.message();
        got = r;
        end_writing(out_w);
    });
    pour(in_w, d);
    drain(out_r, k);
    ASSERT_TRUE(run_until(io, [&] { return got && k->done; }));
    EXPECT_GE(std::chrono::steady_clock::now() - began, 80ms);
    EXPECT_EQ(got->bytes, d.size());
    EXPECT_EQ(k->bytes, d.size());
    EXPECT_EQ(k->sum.value(), test::checksum_of(d));
}

TEST_F(asio_test, bidirectional_with_use_awaitable_and_as_tuple) {
    proxied p(io.get_executor());
    auto at_client = std::make_shared<sink>();
    auto at_server = std::make_shared<sink>();
    traffic got;
    auto relay = [&]() -> net::awaitable<void> {
        auto [ec, t] = co_await zcio::asio::async_copy_bidirectional(
            p.a, p.b, net::experimental::as_tuple(net::use_awaitable));
        EXPECT_FALSE(ec);
        got = t;
    };
    net::co_spawn(io, relay(), net::detached);
    pour(p.client, data(0));
    pour(p.server, data(1));
    drain(p.server, at_server);
    drain(p.client, at_client);
    io.run_for(30s);
    EXPECT_EQ(got.a_to_b, data(0).size());
    EXPECT_EQ(got.b_to_a, data(1).size());
    EXPECT_EQ(at_server->sum.value(), sum_of(0));
    EXPECT_EQ(at_client->sum.value(), sum_of(1));
}

TEST_F(asio_test, bidirectional_cancel_ends_both_with_the_counts_and_no_lease) {
    proxied p(io.get_executor());
    net::cancellation_signal cancel;
    std::uint64_t progress = 0;
    bidirectional_options opts;
    opts.a_to_b_progress = &progress;
    std::optional<std::pair<std::error_code, traffic>> got;
    zcio::asio::async_copy_bidirectional(
        p.a, p.b, opts,
        net::bind_cancellation_slot(cancel.slot(),
                                    [&](std::error_code ec, traffic t) { got.emplace(ec, t); }));
    pour(p.client, data(0)); // the server never reads: a→b ends up waiting to write
    for (int i = 0; i < 200 && (progress == 0 || leased() == 0); ++i) {
        io.run_for(10ms);
    }
    ASSERT_GT(progress, 0u);
    cancel.emit(net::cancellation_type::terminal);
    io.run_for(1s);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->first, net::error::operation_aborted);
    EXPECT_FALSE(got->second.failed);
    EXPECT_EQ(got->second.a_to_b, progress);
    EXPECT_EQ(got->second.b_to_a, 0u);
    EXPECT_EQ(leased(), 0u);
}

TEST_F(asio_test, bidirectional_reset_by_the_server_fails_the_direction_that_read_it) {
    proxied p(io.get_executor());
    std::optional<traffic> got;
    zcio::asio::async_copy_bidirectional(p.a, p.b, [&](std::error_code, traffic t) { got = t; });
    io.run_for(20ms);
    p.server.set_option(net::socket_base::linger(true, 0));
    p.server.close(); // RST
    io.run_for(5s);
    ASSERT_TRUE(got);
    EXPECT_FALSE(got->ok());
    EXPECT_EQ(got->failed, direction::b_to_a) << got->error.message();
}

TEST_F(asio_test, bidirectional_idle_connections_hold_nothing) {
    std::vector<std::unique_ptr<proxied>> conns;
    int finished = 0;
    for (int i = 0; i < 20; ++i) {
        conns.push_back(std::make_unique<proxied>(io.get_executor()));
        zcio::asio::async_copy_bidirectional(conns.back()->a, conns.back()->b,
                                             [&](std::error_code, traffic) { ++finished; });
    }
    io.run_for(50ms);
    EXPECT_EQ(leased(), 0u);
    for (auto& c : conns) {
        end_writing(c->client);
        end_writing(c->server);
    }
    io.run_for(5s);
    EXPECT_EQ(finished, 20);
}

// ---- executors and threads ----

TEST_F(asio_test, completions_run_on_the_sockets_strand) {
    auto strand = net::make_strand(io);
    auto [in_w, in_r] = tcp_pair(strand);
    auto [out_w, out_r] = tcp_pair(strand);
    bool on_strand = false;
    std::uint64_t bytes = 0;
    zcio::asio::async_copy(out_w, in_r, {}, [&](std::error_code, copy_result r) {
        on_strand = strand.running_in_this_thread();
        bytes = r.bytes;
        end_writing(out_w);
    });
    pour(in_w, data(1));
    auto k = std::make_shared<sink>();
    drain(out_r, k);
    io.run_for(30s);
    EXPECT_TRUE(on_strand);
    EXPECT_EQ(bytes, data(1).size());
    EXPECT_EQ(k->sum.value(), sum_of(1));
}

// Eight proxied connections and four one-way copies at once on an io_context that four
// threads run. The test's own peers use one strand each; the adapter needs none.
TEST_F(asio_test, four_threads_many_copies_every_byte_checked) {
    constexpr int relays = 8;
    constexpr int copies = 4;
    std::atomic<int> finished{0};
    std::vector<std::unique_ptr<proxied>> conns;
    std::vector<std::shared_ptr<sink>> sinks;
    std::vector<std::atomic<std::uint64_t>> moved(relays * 2 + copies);
    for (int i = 0; i < relays; ++i) {
        // The peers on a strand each; the sockets the relay drives on the plain executor.
        conns.push_back(std::make_unique<proxied>(net::make_strand(io), io.get_executor()));
        auto& c = *conns.back();
        zcio::asio::async_copy_bidirectional(c.a, c.b, [&, i](std::error_code ec, traffic t) {
            EXPECT_FALSE(ec) << ec.message();
            moved[2 * i] = t.a_to_b;
            moved[2 * i + 1] = t.b_to_a;
            ++finished;
        });
        sinks.push_back(std::make_shared<sink>());
        sinks.push_back(std::make_shared<sink>());
        auto* cp = &c;
        net::dispatch(c.client.get_executor(), [cp, k = sinks[sinks.size() - 2]] {
            pour(cp->client, data(0));
            drain(cp->client, k);
        });
        net::dispatch(c.server.get_executor(), [cp, k = sinks.back()] {
            pour(cp->server, data(1));
            drain(cp->server, k);
        });
    }
    std::vector<std::pair<unix_socket, unix_socket>> ins;
    std::vector<std::pair<unix_socket, unix_socket>> outs;
    for (int i = 0; i < copies; ++i) {
        ins.push_back(unix_pair(net::make_strand(io)));
        outs.push_back(unix_pair(net::make_strand(io)));
    }
    for (int i = 0; i < copies; ++i) {
        auto& out_w = outs[i].first;
        zcio::asio::async_copy(out_w, ins[i].second, {}, [&, i](std::error_code ec, copy_result r) {
            EXPECT_FALSE(ec);
            moved[relays * 2 + i] = r.bytes;
            end_writing(out_w);
            ++finished;
        });
        sinks.push_back(std::make_shared<sink>());
        net::dispatch(ins[i].first.get_executor(), [s = &ins[i].first] { pour(*s, data(1)); });
        net::dispatch(outs[i].second.get_executor(),
                      [s = &outs[i].second, k = sinks.back()] { drain(*s, k); });
    }
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([this] { io.run_for(60s); });
    }
    for (auto& t : threads) {
        t.join();
    }
    EXPECT_EQ(finished.load(), relays + copies);
    for (int i = 0; i < relays; ++i) {
        EXPECT_EQ(moved[2 * i].load(), data(0).size());
        EXPECT_EQ(moved[2 * i + 1].load(), data(1).size());
        EXPECT_EQ(sinks[2 * i + 1]->sum.value(), sum_of(0)) << "server of relay " << i;
        EXPECT_EQ(sinks[2 * i]->sum.value(), sum_of(1)) << "client of relay " << i;
    }
    for (int i = 0; i < copies; ++i) {
        EXPECT_EQ(moved[relays * 2 + i].load(), data(1).size());
        EXPECT_EQ(sinks[relays * 2 + i]->sum.value(), sum_of(1)) << "copy " << i;
    }
}

} // namespace
} // namespace zcio
