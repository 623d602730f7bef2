// A tiny HTTP endpoint that serves GET /metrics in the Prometheus text format.
#pragma once

#include <zcio/zcio.hpp>

#include <functional>
#include <string>

namespace zcio::cli {

// Listens on `at` (on `loop`) and answers GET /metrics with `render()`; anything else
// gets 404 (405 for other methods). Throws runtime_failure when it cannot listen.
// Returns the address actually bound.
endpoint start_metrics_server(event_loop& loop, const endpoint& at,
                              std::function<std::string()> render);

} // namespace zcio::cli
