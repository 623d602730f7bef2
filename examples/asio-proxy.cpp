// asio-proxy: a TCP proxy written the Asio way (co_spawn, use_awaitable), with zcio
// moving the bytes: splice between the two sockets, no buffer held while idle.
//
//   asio-proxy LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [THREADS]
#include <zcio/asio.hpp>

#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/use_awaitable.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
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
    server.set_option(tcp::no_delay(true));
    auto [ec, t] = co_await zcio::asio::async_copy_bidirectional(client, server, use_tuple);
    (void)ec; // t.a_to_b, t.b_to_a: the bytes each way, also after an error
}

asio::awaitable<void> listen(tcp::acceptor acceptor, tcp::resolver::results_type upstream) {
    for (;;) {
        auto [ec, client] = co_await acceptor.async_accept(use_tuple);
        if (!ec) {
            client.set_option(tcp::no_delay(true));
            asio::co_spawn(acceptor.get_executor(), serve(std::move(client), upstream),
                           asio::detached);
        }
    }
}

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT [THREADS]\n",
                     argv[0]);
        return 2;
    }
    const int threads = argc > 4 ? std::atoi(argv[4]) : 1;
    asio::io_context io(threads);
    auto upstream = tcp::resolver(io).resolve(argv[2], argv[3]);
    tcp::acceptor acceptor(io, {tcp::v4(), static_cast<unsigned short>(std::atoi(argv[1]))});
    asio::co_spawn(io, listen(std::move(acceptor), upstream), asio::detached);
    std::vector<std::thread> pool;
    for (int i = 1; i < threads; ++i) {
        pool.emplace_back([&io] { io.run(); });
    }
    io.run();
    for (auto& t : pool) {
        t.join();
    }
}
