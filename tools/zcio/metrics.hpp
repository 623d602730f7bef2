// A tiny HTTP endpoint that serves GET /metrics in the Prometheus text format.
#pragma once

#include <zcio/zcio.hpp>

#include <functional>
#include <string>

namespace zcio::cli {

// Connections the metrics endpoint serves at once; more are closed at once. Each is
// closed at most 2 s after it was accepted, answered or not.
inline constexpr std::size_t max_metrics_connections = 8;

// Listens on `at` (on `loop`) and answers GET /metrics with `render()` (HEAD: the same
// headers, no body); other paths get 404, other methods 405. Throws runtime_failure
// when it cannot listen. Returns the address actually bound.
endpoint start_metrics_server(event_loop& loop, const endpoint& at,
                              std::function<std::string()> render);

} // namespace zcio::cli
