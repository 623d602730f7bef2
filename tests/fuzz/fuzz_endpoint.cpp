// endpoint::parse on any text: it never crashes; what it accepts prints (to_string)
// to text that parses back to an equal endpoint; what it refuses gets a one-line error
// that starts "bad address" (the header's contract).
#include <zcio/endpoint.hpp>

#include "fuzz_support.hpp"

#include <sys/un.h>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto e = zcio::endpoint::parse(text);
    if (!e) {
        const std::string& msg = e.error();
        ZCIO_FUZZ_CHECK(msg.starts_with("bad address \""));
        ZCIO_FUZZ_CHECK(msg.find('\n') == std::string::npos);
        ZCIO_FUZZ_CHECK(msg.find('\r') == std::string::npos);
        return 0;
    }
    ZCIO_FUZZ_CHECK(e->family() == AF_INET || e->family() == AF_INET6 || e->family() == AF_UNIX);
    ZCIO_FUZZ_CHECK(e->size() > 0 && e->size() <= zcio::endpoint::capacity());
    ZCIO_FUZZ_CHECK(!e->is_unix() || e->size() <= sizeof(sockaddr_un));

    const std::string printed = e->to_string();
    auto again = zcio::endpoint::parse(printed);
    ZCIO_FUZZ_CHECK(again.has_value());
    ZCIO_FUZZ_CHECK(*again == *e);
    ZCIO_FUZZ_CHECK(again->to_string() == printed);
    ZCIO_FUZZ_CHECK(again->port() == e->port());
    ZCIO_FUZZ_CHECK(again->is_abstract() == e->is_abstract());
    return 0;
}
