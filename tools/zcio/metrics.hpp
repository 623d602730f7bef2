// The proxy's metrics endpoint: GET /metrics in the Prometheus text format, answered by
// the HTTP code of `zcio serve` (http_server) on a thread of its own.
#pragma once

#include "http_server.hpp"

#include <zcio/zcio.hpp>

#include <functional>
#include <memory>
#include <string>

namespace zcio::cli {

// Connections the metrics endpoint serves at once; more are closed at once. A client
// has 2 s to send its request head and 2 s to read the answer.
inline constexpr std::size_t max_metrics_connections = 8;

struct metrics_endpoint {
    std::unique_ptr<http_server> server; // stops (and closes its connections) when freed
    endpoint bound;                      // the address actually bound
};

// Listens on `at` and answers GET /metrics with `render()` (called on the endpoint's
// thread; HEAD: the same headers, no body); other paths get 404, other methods 405.
// Throws runtime_failure when it cannot listen.
// `share_port`: beside the process this one takes over from (serve_options).
metrics_endpoint start_metrics_server(const endpoint& at, std::function<std::string()> render,
                                      bool share_port = false);

} // namespace zcio::cli
