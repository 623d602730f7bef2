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

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
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
        return 0;
    }
    ZCIO_FUZZ_CHECK(!cfg.routes.empty());
    for (const auto& r : cfg.routes) {
        ZCIO_FUZZ_CHECK(!r.listen.empty() && !r.listen_text.empty());
        ZCIO_FUZZ_CHECK(!r.upstream.empty() && r.upstream.front().family() != AF_UNSPEC);
        ZCIO_FUZZ_CHECK(r.options.connect_timeout.count() >= 0);
    }
    if (cfg.global.threads) {
        ZCIO_FUZZ_CHECK(*cfg.global.threads >= 1 && *cfg.global.threads <= 1024);
    }
    return 0;
}
