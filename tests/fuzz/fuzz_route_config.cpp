// The TOML route loader of `zcio proxy --config` on any file: it returns routes or
// throws usage_error ("FILE:LINE: KEY: what is wrong"), and nothing else: no other
// exception, no crash, no undefined behaviour. The input is handed over as a file
// (a memfd, by its /proc/self/fd path) because load_config_file reads a path.
#include "route_config.hpp"

#include "cli_util.hpp"
#include "fuzz_support.hpp"

#include <string>

#include <sys/mman.h>
#include <unistd.h>

namespace {

void load_one(const std::uint8_t* data, std::size_t size);

// A short input is also loaded repeated 2,000 times: "a." or "[" or "x={" then nest
// far past the loader's depth limit (a dotted key of 50,000 segments crashed toml++'s
// recursion before the limit existed; tests/fuzz/corpus/route_config/deep-*.toml).
constexpr std::size_t repeat_below = 16;
constexpr std::size_t repeats = 2000;

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    load_one(data, size);
    if (size > 0 && size < repeat_below) {
        std::string many;
        many.reserve(size * repeats);
        for (std::size_t i = 0; i < repeats; ++i) {
            many.append(reinterpret_cast<const char*>(data), size);
        }
        load_one(reinterpret_cast<const std::uint8_t*>(many.data()), many.size());
    }
    return 0;
}

namespace {

void load_one(const std::uint8_t* data, std::size_t size) {
    static const int fd = ::memfd_create("zcio-fuzz-routes.toml", MFD_CLOEXEC);
    static const std::string path = "/proc/self/fd/" + std::to_string(fd);
    ZCIO_FUZZ_CHECK(fd >= 0);
    ZCIO_FUZZ_CHECK(::ftruncate(fd, 0) == 0);
    ZCIO_FUZZ_CHECK(::pwrite(fd, data, size, 0) == static_cast<ssize_t>(size));

    zcio::cli::proxy_config cfg;
    try {
        cfg = zcio::cli::load_config_file(path);
    } catch (const zcio::cli::usage_error& e) {
        const std::string_view msg = e.what();
        ZCIO_FUZZ_CHECK(msg.starts_with(path));
        return;
    }
    ZCIO_FUZZ_CHECK(!cfg.routes.empty());
    for (const auto& r : cfg.routes) {
        ZCIO_FUZZ_CHECK(!r.listen.empty() && !r.listen_text.empty());
        ZCIO_FUZZ_CHECK(!r.upstream.empty() && r.upstream.front().family() != AF_UNSPEC);
        ZCIO_FUZZ_CHECK(r.options.connect_timeout.count() >= 0);
        // A loaded route has at least one upstream that can take a connection.
        ZCIO_FUZZ_CHECK(!r.upstreams.empty() && r.upstreams.front().addresses == r.upstream);
        bool any_weight = false;
        for (const auto& u : r.upstreams) {
            ZCIO_FUZZ_CHECK(!u.addresses.empty() && u.weight <= zcio::cli::max_upstream_weight);
            any_weight = any_weight || u.weight > 0;
        }
        ZCIO_FUZZ_CHECK(any_weight);
        ZCIO_FUZZ_CHECK(r.balance.active.rise >= 1 && r.balance.active.fall >= 1);
    }
    if (cfg.global.threads) {
        ZCIO_FUZZ_CHECK(*cfg.global.threads >= 1 && *cfg.global.threads <= 1024);
    }
}

} // namespace
