// The proxy's metrics endpoint: an http_server whose answers are generated.
#include "metrics.hpp"

#include "cli_util.hpp"

#include <chrono>
#include <string_view>

namespace zcio::cli {

namespace {

using namespace std::chrono_literals;

// A scrape takes milliseconds: a slow or silent client holds its slot briefly (it
// was 10 s; 150 silent clients under a limit of 128 descriptors took the routes').
constexpr auto exchange_timeout = 2s;

generated_response answer(std::string_view target, const std::function<std::string()>& render) {
    if (target == "/metrics" || target.starts_with("/metrics?")) {
        return {200, "text/plain; version=0.0.4; charset=utf-8", render()};
    }
    return {404, "text/plain", "not found: try /metrics\n"};
}

serve_options metrics_options(const endpoint& at, std::function<std::string()> render) {
    serve_options o;
    o.listen = {at};
    o.threads = 1;
    // Past the cap a client is closed at once: held metrics connections used to take
    // the descriptors the routes' clients needed (150 of them under a limit of 128
    // made 13 of 14 proxied connections time out). The cap is inside the reserve
    // that the routes' budgets leave (descriptor_reserve).
    o.max_connections = max_metrics_connections;
    o.refuse_with_503 = false;
    o.max_header_size = 8192;
    o.header_timeout = exchange_timeout;
    o.idle_timeout = exchange_timeout;
    o.send_timeout = exchange_timeout;
    o.access_log = false;
    o.generate = [render = std::move(render)](std::string_view target) {
        return answer(target, render);
    };
    return o;
}

} // namespace

metrics_endpoint start_metrics_server(const endpoint& at, std::function<std::string()> render,
                                      bool share_port) {
    metrics_endpoint m;
    auto opts = metrics_options(at, std::move(render));
    opts.share_port = share_port;
    m.server = std::make_unique<http_server>(std::move(opts));
    try {
        m.bound = m.server->start().front();
    } catch (const runtime_failure& e) {
        throw runtime_failure("metrics: " + std::string(e.what()));
    }
    return m;
}

} // namespace zcio::cli
