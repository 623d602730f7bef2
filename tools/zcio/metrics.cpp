// A tiny HTTP endpoint that serves GET /metrics in the Prometheus text format.
#include "metrics.hpp"

#include "cli_util.hpp"

#include <spdlog/spdlog.h>

#include <array>
#include <memory>

namespace zcio::cli {

namespace {

using namespace std::chrono_literals;

std::string response(const char* status, const std::string& type, const std::string& body,
                     bool with_body) {
    return std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + type +
           "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" +
           (with_body ? body : std::string());
}

// A scrape takes milliseconds: a connection is closed at most this long after it was
// accepted, answered or not, so that a slow or silent client holds its slot briefly
// (it was 10 s).
constexpr auto exchange_timeout = 2s;

// The answer to one request head. HEAD gets the headers of what GET would get.
std::string answer(std::string_view head, std::function<std::string()>& render) {
    const bool is_head = head.starts_with("HEAD ");
    if (!is_head && !head.starts_with("GET ")) {
        return response("405 Method Not Allowed", "text/plain", "only GET and HEAD\n", true);
    }
    const std::string_view target = head.substr(is_head ? 5 : 4);
    if (target.starts_with("/metrics ") || target.starts_with("/metrics?")) {
        return response("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(), !is_head);
    }
    return response("404 Not Found", "text/plain", "not found: try /metrics\n", !is_head);
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
    const std::string reply = answer(head, *render);
    (void)co_await conn.write_all(std::as_bytes(std::span(reply)));
}

// What the accept loop shares with the connections it serves.
struct metrics_state {
    event_loop* loop;
    std::function<std::string()> render;
    std::size_t open = 0; // connections being served (the loop's own)
};

task<void> serve_one_bounded(metrics_state* st, stream conn) {
    // A client that connects and says nothing must not hold a slot for long.
    (void)co_await with_timeout(*st->loop, serve_one(std::move(conn), &st->render),
                                exchange_timeout);
    --st->open;
}

task<void> metrics_accept_loop(std::unique_ptr<listener> l, std::unique_ptr<metrics_state> st) {
    while (true) {
        auto a = co_await l->accept();
        if (!a) {
            if (a.error() == std::errc::operation_canceled) {
                co_return;
            }
            spdlog::error("metrics accept: {}", a.error().message());
            co_await sleep_for(*st->loop, 100ms);
            continue;
        }
        // Past the cap a client is closed at once: held metrics connections used to take
        // the descriptors the routes' clients needed (150 of them under a limit of 128
        // made 13 of 14 proxied connections time out). The cap is inside the reserve
        // that the routes' budgets leave (descriptor_reserve).
        if (st->open >= max_metrics_connections) {
            continue; // `a` goes out of scope: closed
        }
        ++st->open;
        st->loop->spawn(serve_one_bounded(st.get(), std::move(a->conn)));
    }
}

} // namespace

endpoint start_metrics_server(event_loop& loop, const endpoint& at,
                              std::function<std::string()> render) {
    auto l = listener::bind(loop, at);
    if (!l) {
        throw runtime_failure("cannot serve metrics on " + at.to_string() + ": " +
                              l.error().message());
    }
    endpoint bound = l->local_endpoint();
    auto st = std::make_unique<metrics_state>();
    st->loop = &loop;
    st->render = std::move(render);
    loop.spawn(metrics_accept_loop(std::make_unique<listener>(std::move(*l)), std::move(st)));
    return bound;
}

} // namespace zcio::cli
