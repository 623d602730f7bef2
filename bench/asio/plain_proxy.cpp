// asio-plain-proxy: the baseline for examples/asio-proxy.cpp. The same Asio TCP proxy
// written the way Asio programs copy today: co_spawn, and per direction a coroutine
// with a 16 KiB buffer looping async_read_some + async_write, shutdown(send) at end
// of stream. Same arguments, same output, same socket options as asio-proxy.
//
//   asio-plain-proxy LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [THREADS]
#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>

#include <array>
#include <charconv>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using asio::ip::tcp;
using namespace asio::experimental::awaitable_operators;
constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

// One direction: the buffer lives in the coroutine frame, as long as the connection.
asio::awaitable<void> pump(tcp::socket& from, tcp::socket& to) {
    std::array<char, 16384> buf;
    std::error_code ignored;
    for (;;) {
        auto [rec, n] = co_await from.async_read_some(asio::buffer(buf), use_tuple);
        if (rec) {
            break; // end of stream, or an error: pass the half-close on
        }
        auto [wec, m] = co_await asio::async_write(to, asio::buffer(buf.data(), n), use_tuple);
        if (wec) {
            from.shutdown(tcp::socket::shutdown_receive, ignored);
            co_return;
        }
    }
    to.shutdown(tcp::socket::shutdown_send, ignored);
}

asio::awaitable<void> serve(tcp::socket client, tcp::resolver::results_type upstream) {
    tcp::socket server(client.get_executor());
    auto [cec, ep] = co_await asio::async_connect(server, upstream, use_tuple);
    if (cec) {
        co_return;
    }
    std::error_code ignored;
    client.set_option(tcp::no_delay(true), ignored);
    server.set_option(tcp::no_delay(true), ignored);
    co_await (pump(client, server) && pump(server, client));
}

asio::awaitable<void> listen(tcp::acceptor acceptor, tcp::resolver::results_type upstream) {
    for (;;) {
        auto [ec, client] = co_await acceptor.async_accept(use_tuple);
        if (!ec) {
            asio::co_spawn(acceptor.get_executor(), serve(std::move(client), upstream),
                           asio::detached);
        }
    }
}

std::optional<int> number(std::string_view s, int lo, int hi) {
    int v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || v < lo || v > hi) {
        return std::nullopt;
    }
    return v;
}

int main(int argc, char** argv) {
    auto port = argc >= 4 && argc <= 5 ? number(argv[1], 0, 65535) : std::nullopt;
    auto threads = argc > 4 ? number(argv[4], 1, 64) : 1;
    if (!port || !threads || !number(argv[3], 1, 65535)) {
        std::fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [THREADS 1-64]\n",
                     argv[0]);
        return 2;
    }
    asio::io_context io(*threads);
    std::error_code ec;
    auto upstream = tcp::resolver(io).resolve(argv[2], argv[3], ec);
    tcp::acceptor acceptor(io);
    const tcp::endpoint at(tcp::v4(), static_cast<unsigned short>(*port));
    if (!ec) {
        acceptor.open(at.protocol(), ec);
    }
    if (!ec) {
        acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    }
    if (!ec) {
        acceptor.bind(at, ec);
    }
    if (!ec) {
        acceptor.listen(asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        std::fprintf(stderr, "asio-plain-proxy: %s\n", ec.message().c_str());
        return 1;
    }
    std::printf("listening on port %u\n", acceptor.local_endpoint().port());
    std::fflush(stdout);
    asio::co_spawn(io, listen(std::move(acceptor), upstream), asio::detached);
    std::vector<std::thread> pool;
    for (int i = 1; i < *threads; ++i) {
        pool.emplace_back([&io] { io.run(); });
    }
    io.run();
    for (auto& t : pool) {
        t.join();
    }
}
