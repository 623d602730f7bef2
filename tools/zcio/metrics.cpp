// A tiny HTTP endpoint that serves GET /metrics in the Prometheus text format.
#include "metrics.hpp"

#include "cli_util.hpp"

#include <spdlog/spdlog.h>

#include <array>
#include <memory>

namespace zcio::cli {

namespace {

using namespace std::chrono_literals;

std::string response(const char* status, const std::string& type, const std::string& body) {
    return std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + type +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
           body;
}

// Reads one request head (bounded at 8 KiB) and answers it; one request per connection.
task<void> serve_one(stream conn, std::function<std::string()>* render) {
    std::string head;
    std::array<std::byte, 2048> buf{};
    while (head.find("\r\n\r\n") == std::string::npos && head.size() < 8192) {
        auto n = co_await conn.read_some(buf);
        if (!n || *n == 0) {
            co_return;
        }
        head.append(reinterpret_cast<const char*>(buf.data()), *n);
    }
    std::string reply;
    if (head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?")) {
        reply = response("200 OK", "text/plain; version=0.0.4; charset=utf-8", (*render)());
    } else if (head.starts_with("GET ")) {
        reply = response("404 Not Found", "text/plain", "not found: try /metrics\n");
    } else {
        reply = response("405 Method Not Allowed", "text/plain", "only GET\n");
    }
    (void)co_await conn.write_all(std::as_bytes(std::span(reply)));
}

task<void> serve_one_bounded(event_loop* loop, stream conn, std::function<std::string()>* render) {
    // A client that connects and says nothing must not hold a task forever.
    (void)co_await with_timeout(*loop, serve_one(std::move(conn), render), 10s);
}

task<void> metrics_accept_loop(event_loop* loop, std::unique_ptr<tcp_listener> l,
                               std::unique_ptr<std::function<std::string()>> render) {
    while (true) {
        auto a = co_await l->accept();
        if (!a) {
            if (a.error() == std::errc::operation_canceled) {
                co_return;
            }
            spdlog::error("metrics accept: {}", a.error().message());
            co_await sleep_for(*loop, 100ms);
            continue;
        }
        loop->spawn(serve_one_bounded(loop, std::move(a->conn), render.get()));
    }
}

} // namespace

endpoint start_metrics_server(event_loop& loop, const endpoint& at,
                              std::function<std::string()> render) {
    auto l = tcp_listener::bind(loop, at);
    if (!l) {
        throw runtime_failure("cannot serve metrics on " + at.to_string() + ": " +
                              l.error().message());
    }
    endpoint bound = l->local_endpoint();
    loop.spawn(
        metrics_accept_loop(&loop, std::make_unique<tcp_listener>(std::move(*l)),
                            std::make_unique<std::function<std::string()>>(std::move(render))));
    return bound;
}

} // namespace zcio::cli
