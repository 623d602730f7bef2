// Consumer of an installed zcio/asio.hpp: 4 MiB of pseudo-random bytes written into a
// pipe, moved by zcio::asio::async_copy into one end of a Unix socket pair, read back
// from the other end and compared byte for byte.
#include <zcio/asio.hpp>

#include <asio/io_context.hpp>
#include <asio/local/connect_pair.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/read.hpp>
#include <asio/write.hpp>

#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include <unistd.h>

int main() {
    std::vector<char> sent(4 << 20);
    std::mt19937_64 rng(17);
    for (auto& c : sent) {
        c = static_cast<char>(rng());
    }
    int fds[2];
    if (::pipe(fds) != 0) {
        std::perror("pipe");
        return 1;
    }
    asio::io_context io;
    asio::posix::stream_descriptor from(io, fds[0]);
    asio::posix::stream_descriptor feed(io, fds[1]);
    asio::local::stream_protocol::socket to(io);
    asio::local::stream_protocol::socket out(io);
    asio::local::connect_pair(to, out);

    asio::async_write(feed, asio::buffer(sent), [&](std::error_code, std::size_t) {
        feed.close(); // end of stream for the copy
    });
    std::error_code copy_ec;
    zcio::copy_result copied;
    zcio::asio::async_copy(to, from, {}, [&](std::error_code ec, zcio::copy_result r) {
        copy_ec = ec;
        copied = r;
        to.shutdown(asio::socket_base::shutdown_send, ec);
    });
    std::vector<char> got;
    std::error_code read_ec;
    asio::async_read(out, asio::dynamic_buffer(got),
                     [&](std::error_code ec, std::size_t) { read_ec = ec; });
    io.run();

    if (copy_ec || copied.bytes != sent.size() || read_ec != asio::error::eof || got != sent) {
        std::fprintf(stderr, "async_copy: %s, %llu of %zu bytes copied, %zu read back (%s)\n",
                     copy_ec.message().c_str(), static_cast<unsigned long long>(copied.bytes),
                     sent.size(), got.size(), got == sent ? "same" : "different");
        return 1;
    }
    std::printf("ok: %zu bytes through async_copy (%s)\n", got.size(),
                zcio::to_string(copied.path));
    return 0;
}
