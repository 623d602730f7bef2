// The `zcio serve` engine: a static file server, one event loop per thread, bodies sent
// with sendfile through copy().
#pragma once

#include <zcio/zcio.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace zcio::cli {

// An answer the program makes instead of a file (the proxy's metrics endpoint).
struct generated_response {
    int status = 200;
    std::string content_type;
    std::string body;
};

struct serve_options {
    std::string root;                  // unused (and not opened) when `generate` is set
    std::vector<endpoint> listen;      // one or more; a Unix socket alone
    std::size_t threads = 0;           // 0: one per core
    std::uint64_t max_connections = 0; // 0: no limit
    // Bind beside a process that holds the port (SO_REUSEPORT, same user): the metrics
    // of a proxy that takes over from one still running.
    bool share_port = false;
    std::size_t max_header_size = 16384; // request line + header fields, in bytes
    std::size_t max_headers = 100;       // header fields per request
    std::chrono::nanoseconds header_timeout = std::chrono::seconds(10);
    std::chrono::nanoseconds idle_timeout = std::chrono::seconds(30);
    std::chrono::nanoseconds send_timeout = std::chrono::seconds(60);
    bool listing = true;   // directories without index.html get a listing (else 403)
    bool dotfiles = false; // serve and list names starting with '.' (else 404, unlisted)
    // Set: every GET and HEAD is answered with what it returns for the request target
    // (as sent, query included), then the connection is closed; no file is served.
    // Called on the server's loops.
    std::function<generated_response(std::string_view target)> generate;
    // A client past max_connections gets a 503 (else it is closed at once).
    bool refuse_with_503 = true;
    bool access_log = true; // one info line per request
};

struct serve_state;
struct serve_loop;

class http_server {
public:
    // Opens the root directory (throws runtime_failure naming it).
    explicit http_server(serve_options opts);
    ~http_server();
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    // Binds one listener per loop and address (SO_REUSEPORT for IP addresses; a Unix
    // socket only on the first loop), starts the threads and returns the addresses
    // actually bound. With port 0 the first address picks the port and the others get
    // the same one (picked again, up to 16 times, when another address has it taken).
    // Throws runtime_failure naming the address.
    std::vector<endpoint> start();
    // Stops the loops; open connections are closed. Idempotent.
    void stop();

    [[nodiscard]] std::size_t threads() const noexcept;

private:
    // One attempt at binding every address on every loop, the address at `first` (mod
    // their number) first, so that it picks the port when port 0 was asked for; start()
    // retries it. The result is in the order of the options' addresses.
    std::vector<endpoint> bind_listeners(std::size_t first);

    std::unique_ptr<serve_state> state_;
    // Declared before the group: the loops' contexts (pools, listeners) must outlive
    // the destruction of the tasks still suspended on the loops.
    std::vector<std::unique_ptr<serve_loop>> loops_;
    std::unique_ptr<loop_group> group_;
    bool started_ = false;
};

} // namespace zcio::cli
