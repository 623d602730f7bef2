// The response side of `zcio get` without sockets: the input is what a server sends,
// replayed into a buffer as download() reads it (http::head_buffer, skip_interim() for
// 1xx answers, head_parser, the chunked body decoded piece by piece with the buffer
// reused for every read), in the read sizes a seed picks. A redirect's Location goes
// through resolve_reference() against the URL of the request.
//
// Checks: no crash or undefined behaviour; views lie inside the buffer; the same bytes
// read in one go or in small pieces give the same status, headers and body; the bytes
// that came with the head never exceed what was read; a redirect target is a URL that
// prints and parses back to itself, with a target that starts with '/' and can go in
// a request line as it is; a chunk size that fails once the head is done (an
// overflowing one included) is never blamed on Content-Length; a Content-Range that
// parses has first <= last < total.
#include "http_head.hpp"
#include "http_util.hpp"

#include "fuzz_support.hpp"

#include <cstring>
#include <string>
#include <vector>

namespace {

namespace http = zcio::cli::http;
using zcio::fuzz::chunker;
using zcio::fuzz::input;
using status = http::head_parser::status;

constexpr std::string_view bases[] = {
    "http://example.com/a/b/c?q=1",
    "http://127.0.0.1:8080/",
    "http://[::1]:81/dir/file.bin",
    "http://h/",
};

bool within(std::string_view v, const char* base, std::size_t len) {
    return v.empty() || (v.data() >= base && v.data() + v.size() <= base + len);
}

// Equal, but for an empty query: parse_url drops the '?' of "/x?", resolve_reference
// keeps it from a Location "x?"; a server sees the same resource.
bool same_url(const http::url& a, const http::url& b) {
    const auto target = [](std::string_view t) {
        return t.ends_with('?') ? t.substr(0, t.size() - 1) : t;
    };
    return a.host == b.host && a.port == b.port && target(a.target) == target(b.target);
}

// What a request line and Host header can carry as they are: no space, control byte,
// or byte outside ASCII (RFC 9112 §3.2; http-parser refuses them in a URL).
bool sendable(std::string_view s) {
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u >= 0x7f) {
            return false;
        }
    }
    return true;
}

void check_redirect(const http::url& base, std::string_view location) {
    const auto next = http::resolve_reference(base, location);
    if (!next) {
        ZCIO_FUZZ_CHECK(!next.error().message.empty());
        return;
    }
    ZCIO_FUZZ_CHECK(!next->host.empty());
    ZCIO_FUZZ_CHECK(next->target.starts_with('/'));
    ZCIO_FUZZ_CHECK(sendable(next->target) && sendable(next->authority()));
    const auto again = http::parse_url(next->text());
    ZCIO_FUZZ_CHECK(again.has_value() && same_url(*again, *next));
}

// http-parser reports an overflowing chunk size as HPE_INVALID_CONTENT_LENGTH; a
// failure in a chunked body must still name the chunk size.
void check_body_error(const http::head_parser& p) {
    if (p.head_done() && p.chunked()) {
        ZCIO_FUZZ_CHECK(std::strstr(p.error_text(), "Content-Length") == nullptr);
    }
}

void check_content_range(std::string_view header) {
    const auto r = http::parse_content_range(header);
    if (r && r->satisfied) {
        ZCIO_FUZZ_CHECK(r->first <= r->last && (!r->total || r->last < *r->total));
    } else if (r) {
        ZCIO_FUZZ_CHECK(r->total.has_value());
    }
}

// Replays `bytes` as download() reads them; returns what it made of them.
std::string get(std::string_view bytes, std::size_t cap, const http::url& base, chunker reads) {
    std::vector<char> buf(cap);
    char* b = buf.data();
    http::head_parser parser(http::head_parser::kind::response, 256);
    http::head_buffer hb;
    std::size_t pos = 0;
    auto read_more = [&](std::size_t at) {
        const std::size_t n = reads.next(std::min(cap - at, bytes.size() - pos));
        std::memcpy(b + at, bytes.data() + pos, n);
        pos += n;
        return n;
    };

    // ---- the head ----
    auto st = hb.start(parser, b);
    while (true) {
        if (hb.have == cap) {
            return "failed";
        }
        if (pos == bytes.size()) {
            return "failed";
        }
        st = hb.received(parser, b, read_more(hb.have));
        st = http::skip_interim(parser, hb, b, st);
        ZCIO_FUZZ_CHECK(hb.head_len <= hb.have && hb.have <= cap);
        if (st == status::error || st == status::too_many_headers) {
            ZCIO_FUZZ_CHECK(parser.error_text() != nullptr);
            if (st == status::error) {
                check_body_error(parser);
            }
            // A download that fails says why, and why may depend on where a read
            // ends: a head with too many fields and a bad byte gives either error, and
            // a bad chunk in the head's read is a bad response, in a later read a bad
            // body. Any failure is a failure here.
            return "failed";
        }
        if (parser.head_done()) {
            break;
        }
    }
    ZCIO_FUZZ_CHECK(parser.status_code() >= 200 || st != status::complete);
    std::string seen = std::to_string(parser.status_code()) + " ";
    seen += parser.reason();
    ZCIO_FUZZ_CHECK(within(parser.reason(), b, hb.have));
    for (const auto& h : parser.headers()) {
        ZCIO_FUZZ_CHECK(within(h.name, b, hb.have) && within(h.value, b, hb.have));
        seen += '\n';
        seen += h.name;
        seen += ": ";
        seen += h.value;
    }
    seen += '\n';
    if (auto loc = parser.find("location")) {
        check_redirect(base, *loc);
    }
    if (auto cr = parser.find("content-range")) {
        check_content_range(*cr);
    }

    // ---- the body ----
    const std::size_t fields = parser.headers().size();
    if (parser.chunked()) {
        std::string body;
        while (true) {
            for (auto piece : parser.body_pieces()) {
                ZCIO_FUZZ_CHECK(within(piece, b, cap));
                body += piece;
            }
            parser.body_pieces().clear();
            // Trailers are dropped: their bytes do not outlive the next read.
            ZCIO_FUZZ_CHECK(parser.headers().size() == fields);
            if (st == status::complete) {
                return seen + "chunked body: " + body;
            }
            if (st == status::error) {
                check_body_error(parser);
            }
            if (st != status::need_more || pos == bytes.size()) {
                return "failed";
            }
            std::size_t used = 0;
            const std::size_t n = read_more(0);
            st = parser.feed(b, n, &used);
            ZCIO_FUZZ_CHECK(used <= n);
        }
    }
    // Length-delimited or until the end: what came with the head, then the rest.
    std::uint64_t extra = hb.have - hb.head_len;
    const auto total = parser.content_length();
    if (total) {
        extra = std::min<std::uint64_t>(extra, *total);
    }
    ZCIO_FUZZ_CHECK(hb.head_len + extra <= hb.have);
    std::string body(b + hb.head_len, extra);
    const std::size_t rest = bytes.size() - pos;
    body += bytes.substr(pos, total ? std::min<std::uint64_t>(*total - extra, rest) : rest);
    return seen + "body: " + body;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    input in(data, size);
    const std::size_t cap = 16 + in.u16() % 4096;
    const auto base = http::parse_url(bases[in.byte() % std::size(bases)]);
    ZCIO_FUZZ_CHECK(base.has_value());
    const std::uint32_t seed = in.u16();
    const std::string_view bytes = in.rest();

    // Location values straight from the input too, whatever http-parser lets through.
    check_redirect(*base, bytes.substr(0, bytes.find('\n')));
    check_content_range(bytes.substr(0, bytes.find('\n')));

    const std::string whole = get(bytes, cap, *base, chunker::whole());
    const std::string pieces = get(bytes, cap, *base, chunker(seed));
    if (whole != pieces) {
        std::fprintf(stderr, "in one read:\n%s\nin pieces:\n%s\n", whole.c_str(), pieces.c_str());
    }
    ZCIO_FUZZ_CHECK(whole == pieces);
    return 0;
}
