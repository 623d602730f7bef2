// decode_proxy_header on whatever a peer may send: it never reads past its input, it
// is stateless (a verdict on N bytes does not change when more bytes follow, except
// that need_more may become a verdict), a header it accepts re-encodes (when it names
// IP addresses) to a header that decodes to the same addresses, and the UDP datagram
// parser built on it agrees with it.
#include <zcio/proxy_protocol.hpp>
#include <zcio/udp_forward.hpp>

#include "fuzz_support.hpp"

#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

using zcio::proxy_decode_status;

zcio::proxy_decode_result decode(const std::byte* p, std::size_t n) {
    // An exact-size heap copy: ASan catches a read one byte past the end.
    auto copy = std::make_unique<std::byte[]>(n == 0 ? 1 : n);
    std::memcpy(copy.get(), p, n);
    return zcio::decode_proxy_header(std::span<const std::byte>(copy.get(), n));
}

void check_one_line(const char* reason) {
    ZCIO_FUZZ_CHECK(reason != nullptr && *reason != '\0');
    ZCIO_FUZZ_CHECK(std::strchr(reason, '\n') == nullptr);
}

void check_reencodes(const zcio::proxy_header_info& h) {
    if (!h.source.is_ip() || h.command != zcio::proxy_command::proxy) {
        return;
    }
    ZCIO_FUZZ_CHECK(h.destination.family() == h.source.family());
    const std::string again = h.version == 1 ? zcio::proxy_header_v1(h.source, h.destination)
                                             : zcio::proxy_header_v2(h.source, h.destination);
    const auto r = zcio::decode_proxy_header(std::as_bytes(std::span(again)));
    ZCIO_FUZZ_CHECK(r.status == proxy_decode_status::header);
    ZCIO_FUZZ_CHECK(r.header.size == again.size());
    ZCIO_FUZZ_CHECK(r.header.source == h.source && r.header.destination == h.destination);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto* bytes = reinterpret_cast<const std::byte*>(data);
    const auto whole = decode(bytes, size);
    switch (whole.status) {
    case proxy_decode_status::header: {
        const std::size_t n = whole.header.size;
        ZCIO_FUZZ_CHECK(n <= size && n >= 15);
        ZCIO_FUZZ_CHECK(n <= (whole.header.version == 1 ? zcio::proxy_v1_max : zcio::proxy_v2_max));
        // The header alone gives the same verdict; one byte less needs more.
        const auto exact = decode(bytes, n);
        ZCIO_FUZZ_CHECK(exact.status == proxy_decode_status::header && exact.header.size == n);
        ZCIO_FUZZ_CHECK(exact.header.source == whole.header.source);
        ZCIO_FUZZ_CHECK(decode(bytes, n - 1).status == proxy_decode_status::need_more);
        check_reencodes(whole.header);
        break;
    }
    case proxy_decode_status::malformed:
        check_one_line(whole.reason);
        break;
    case proxy_decode_status::need_more:
        ZCIO_FUZZ_CHECK(size < zcio::proxy_v2_max);
        break;
    }
    // A prefix's verdict: need_more, or the same verdict as the whole input.
    const std::size_t half = size / 2;
    const auto part = decode(bytes, half);
    if (part.status != proxy_decode_status::need_more) {
        ZCIO_FUZZ_CHECK(part.status == whole.status);
        if (part.status == proxy_decode_status::header) {
            ZCIO_FUZZ_CHECK(part.header.size == whole.header.size);
        }
    }
    // The datagram parser takes only what the stream decoder accepts as v2.
    const auto dgram = zcio::parse_proxy_v2_datagram(std::span(bytes, size));
    if (dgram) {
        ZCIO_FUZZ_CHECK(whole.status == proxy_decode_status::header && whole.header.version == 2);
        ZCIO_FUZZ_CHECK(dgram->header_size == whole.header.size);
    }
    return 0;
}
