// asio-proxy: a TCP proxy written the Asio way (co_spawn, use_awaitable), with zcio
// moving the bytes: splice between the two sockets, no buffer held while idle.
//
//   asio-proxy LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [THREADS]
//
// LISTEN_PORT 0 takes a free port; the port listened on is printed on stdout.
#include <zcio/asio.hpp>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/use_awaitable.hpp>

#include <charconv>
#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using asio::ip::tcp;
constexpr auto use_tuple = asio::experimental::as_tuple(asio::use_awaitable);

asio::awaitable<void> serve(tcp::socket client, tcp::resolver::results_type upstream) {
    tcp::socket server(client.get_executor());
    auto [cec, ep] = co_await asio::async_connect(server, upstream, use_tuple);
    if (cec) {
        co_return; // the client's socket closes here
    }
    std::error_code ignored; // the error_code overloads: a throw here would end io.run()
    client.set_option(tcp::no_delay(true), ignored);
    server.set_option(tcp::no_delay(true), ignored);
    auto [ec, t] = co_await zcio::asio::async_copy_bidirectional(client, server, use_tuple);
    (void)ec; // t.a_to_b, t.b_to_a: the bytes each way, also after an error
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

// A whole decimal number in [lo, hi], or nothing.
std::optional<int> number(std::string_view s, int lo, int hi) {
    int v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || v < lo || v > hi) {
        return std::nullopt;
    }
    return v;
}

// The error_code overloads, stopping at the first failure (bind's, not listen's).
bool open_listener(tcp::acceptor& a, unsigned short port, std::error_code& ec) {
    const tcp::endpoint at(tcp::v4(), port);
    a.open(at.protocol(), ec);
    if (!ec) {
        a.set_option(tcp::acceptor::reuse_address(true), ec);
    }
    if (!ec) {
        a.bind(at, ec);
    }
    if (!ec) {
        a.listen(asio::socket_base::max_listen_connections, ec);
    }
    return !ec;
}

int usage(const char* argv0, const std::string& why) {
    std::fprintf(stderr, "asio-proxy: %s\n", why.c_str());
    std::fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [THREADS 1-64]\n",
                 argv0);
    return 2;
}

int main(int argc, char** argv) {
    if (argc < 4 || argc > 5) {
        return usage(argv[0], "expected 3 or 4 arguments, got " + std::to_string(argc - 1));
    }
    const std::string host = argv[2];
    auto port = number(argv[1], 0, 65535);
    auto upstream_port = number(argv[3], 1, 65535);
    auto threads = argc > 4 ? number(argv[4], 1, 64) : 1;
    if (!port) {
        return usage(argv[0], "bad listen port '" + std::string(argv[1]) + "' (0-65535)");
    }
    if (host.empty() || !upstream_port) {
        return usage(argv[0], "bad upstream '" + host + ":" + argv[3] + "' (port 1-65535)");
    }
    if (!threads) {
        return usage(argv[0], "bad thread count '" + std::string(argv[4]) + "' (1-64)");
    }
    asio::io_context io(*threads);
    std::error_code ec;
    auto upstream = tcp::resolver(io).resolve(argv[2], argv[3], ec);
    if (ec) {
        return usage(argv[0], "cannot resolve '" + host + "': " + ec.message());
    }
    tcp::acceptor acceptor(io);
    if (!open_listener(acceptor, static_cast<unsigned short>(*port), ec)) {
        std::fprintf(stderr, "asio-proxy: cannot listen on port %d: %s\n", *port,
                     ec.message().c_str());
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
