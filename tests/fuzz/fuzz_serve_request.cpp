// The request side of `zcio serve` without sockets: the input is what a client sends
// on one connection (pipelined requests included), replayed into a head buffer of the
// server's kind exactly as serve_connection() reads it (http::head_buffer,
// head_parser), in the read sizes a seed picks. Each complete head then goes through
// the pure parts of the answer: resolve_target() (the path beneath the root),
// parse_range() and parse_date(), and the decisions made from the head alone:
// check_head() (version, missing or duplicate Host), the preconditions (If-Match,
// If-None-Match, If-Modified-Since, If-Unmodified-Since, If-Range) and the directory
// redirect.
//
// Checks: no crash or undefined behaviour; every view the parser hands out lies inside
// the bytes of its own head; the same bytes read in one go or in small pieces give the
// same requests and the same outcome (a difference would be a bug in joining pieces of
// a field or in the pipelining bookkeeping); two Host fields are always 400; the
// preconditions give 0, 304 or 412, and 304 whenever If-None-Match names the file's
// own tag (unless If-Match or If-Unmodified-Since refuse first); a redirect target
// never starts with "//" (another host) and has no dotfile unless the path had one;
// a path that is served has no "..", "." or
// empty segment and no NUL, and is what the decoded path says; a satisfiable range lies
// within the file; a parsed date prints back to the same instant.
#include "http_head.hpp"
#include "http_request.hpp"
#include "http_util.hpp"

#include "fuzz_support.hpp"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace {

namespace http = zcio::cli::http;
using zcio::fuzz::chunker;
using zcio::fuzz::input;
using status = http::head_parser::status;

struct options {
    std::size_t cap = 0;         // the head buffer (serve: --max-header-size)
    std::size_t max_headers = 0; // --max-headers
    std::uint64_t file_size = 0; // what a Range applies to
};

bool within(std::string_view v, const char* base, std::size_t len) {
    return v.empty() || (v.data() >= base && v.data() + v.size() <= base + len);
}

void check_path(std::string_view target) {
    const auto p = http::resolve_target(target);
    ZCIO_FUZZ_CHECK(p.status == 0 || p.status == 400 || p.status == 403);
    ZCIO_FUZZ_CHECK(within(p.query, target.data(), target.size()));
    if (p.status == 400) {
        return;
    }
    ZCIO_FUZZ_CHECK(!p.decoded.empty() && p.decoded.front() == '/');
    // The segments of the decoded path, without the empty and "." ones: rel joins them.
    std::string expect;
    bool dotdot = false;
    for (std::size_t i = 1; i <= p.decoded.size();) {
        auto next = p.decoded.find('/', i);
        if (next == std::string::npos) {
            next = p.decoded.size();
        }
        const std::string_view seg(p.decoded.data() + i, next - i);
        dotdot = dotdot || seg == "..";
        if (!seg.empty() && seg != ".") {
            expect += expect.empty() ? "" : "/";
            expect += seg;
        }
        i = next + 1;
    }
    ZCIO_FUZZ_CHECK(dotdot == (p.status == 403));
    if (p.status == 403) {
        return;
    }
    ZCIO_FUZZ_CHECK(p.rel == expect);
    ZCIO_FUZZ_CHECK(p.rel.find('\0') == std::string::npos);
    ZCIO_FUZZ_CHECK(!p.rel.starts_with('/') && !p.rel.ends_with('/'));
    ZCIO_FUZZ_CHECK(p.rel.find("//") == std::string::npos);
    ZCIO_FUZZ_CHECK(p.rel != "." && p.rel != ".." && !p.rel.starts_with("../") &&
                    !p.rel.starts_with("./") && p.rel.find("/../") == std::string::npos &&
                    p.rel.find("/./") == std::string::npos && !p.rel.ends_with("/..") &&
                    !p.rel.ends_with("/."));
}

void check_redirect(std::string_view target) {
    const auto p = http::resolve_target(target);
    if (p.status != 0) {
        return;
    }
    const std::string loc = http::redirect_location(p);
    ZCIO_FUZZ_CHECK(loc.starts_with('/') && !loc.starts_with("//"));
    ZCIO_FUZZ_CHECK(loc.find('\\') == std::string::npos);
    // Visible ASCII only: a control byte or a raw byte above 0x7f in a Location header
    // is the client's to interpret.
    ZCIO_FUZZ_CHECK(std::all_of(loc.begin(), loc.end(), [](char ch) {
        const auto c = static_cast<unsigned char>(ch);
        return c > 0x20 && c < 0x7f;
    }));
    ZCIO_FUZZ_CHECK(http::has_dotfile(p.rel) ==
                    (p.rel.starts_with('.') || p.rel.find("/.") != std::string::npos));
}

// The head's own checks, and its preconditions against a file of `size` bytes.
void check_decisions(const http::head_parser& req, std::uint64_t size) {
    std::size_t hosts = 0;
    for (const auto& h : req.headers()) {
        hosts += http::iequals(h.name, "host") ? 1 : 0;
    }
    const int head = http::check_head(req);
    ZCIO_FUZZ_CHECK(head == 0 || head == 400 || head == 505);
    if (req.version_major() == 1 && hosts > 1) {
        ZCIO_FUZZ_CHECK(head == 400);
    }
    if (head == 0) {
        ZCIO_FUZZ_CHECK(req.version_major() == 1 && hosts <= 1);
    }
    const std::time_t mtime = 784111777; // Sun, 06 Nov 1994 08:49:37 GMT
    const std::string etag = http::make_etag(size, mtime, 5);
    ZCIO_FUZZ_CHECK(http::etag_matches(etag, etag, false) && http::etag_matches(etag, etag, true));
    ZCIO_FUZZ_CHECK(!http::etag_matches("W/" + etag, etag, false));
    const int pre = http::evaluate_preconditions(req, etag, mtime, mtime + 86400);
    ZCIO_FUZZ_CHECK(pre == 0 || pre == 304 || pre == 412);
    auto inm = req.find("if-none-match");
    if (inm && http::trim(*inm) == etag && !req.find("if-match") &&
        !req.find("if-unmodified-since")) {
        ZCIO_FUZZ_CHECK(pre == 304);
    }
    if (auto ir = req.find("if-range")) {
        (void)http::if_range_holds(*ir, etag, mtime);
        if (http::trim(*ir) == etag) {
            ZCIO_FUZZ_CHECK(http::if_range_holds(*ir, etag, mtime));
        }
    }
}

void check_range(std::string_view header, std::uint64_t size) {
    const auto r = http::parse_range(header, size);
    if (r.k == http::byte_range::kind::satisfiable) {
        ZCIO_FUZZ_CHECK(r.first <= r.last && r.last < size);
    }
}

void check_date(std::string_view text) {
    const auto t = http::parse_date(text);
    if (!t) {
        return;
    }
    const std::string printed = http::format_date(*t);
    const auto again = http::parse_date(printed);
    ZCIO_FUZZ_CHECK(again.has_value() && *again == *t);
}

// One request as the server saw it: its head's fields copied out of the buffer.
std::string describe(const http::head_parser& req) {
    std::string d;
    d += std::to_string(req.method()) + ' ';
    d += req.target();
    d += ' ' + std::to_string(req.version_major()) + '.' + std::to_string(req.version_minor());
    d += req.keep_alive() ? " keep" : " close";
    d += req.chunked() ? " chunked" : "";
    d += req.content_length() ? " len=" + std::to_string(*req.content_length()) : "";
    for (const auto& h : req.headers()) {
        d += '\n';
        d += h.name;
        d += ": ";
        d += h.value;
    }
    return d;
}

// Replays `bytes` as serve_connection() reads them and returns what it saw, one line
// per request plus how the connection ended.
std::string serve(std::string_view bytes, const options& o, chunker reads) {
    std::vector<char> buf(o.cap);
    char* base = buf.data();
    http::head_parser req(http::head_parser::kind::request, o.max_headers);
    http::head_buffer hb;
    std::size_t pos = 0; // bytes of the input "received" so far
    std::string seen;
    for (int requests = 0; requests < 64; ++requests) {
        auto st = hb.start(req, base);
        bool too_large = false;
        while (st == status::need_more) {
            if (hb.have == o.cap) {
                too_large = true;
                break;
            }
            if (pos == bytes.size()) {
                return seen + "end of stream\n";
            }
            const std::size_t n = reads.next(std::min(o.cap - hb.have, bytes.size() - pos));
            std::memcpy(base + hb.have, bytes.data() + pos, n);
            pos += n;
            st = hb.received(req, base, n);
            ZCIO_FUZZ_CHECK(hb.fed == hb.have && hb.head_len <= hb.have);
        }
        // 431 or 400, and the connection closes. Which one may depend on the reads: a
        // head with too many fields and a bad byte is 431 when a read ends inside the
        // extra field's name (the parser reports the name then), 400 otherwise.
        if (too_large || st == status::too_many_headers || st == status::error) {
            ZCIO_FUZZ_CHECK(req.error_text() != nullptr);
            return seen + "refused\n";
        }
        ZCIO_FUZZ_CHECK(st == status::complete && req.head_done());
        ZCIO_FUZZ_CHECK(hb.head_len > 0 && hb.head_len <= hb.have);
        // Every view points into this request's own bytes.
        ZCIO_FUZZ_CHECK(within(req.target(), base, hb.head_len));
        for (const auto& h : req.headers()) {
            ZCIO_FUZZ_CHECK(within(h.name, base, hb.head_len));
            ZCIO_FUZZ_CHECK(within(h.value, base, hb.head_len));
        }
        ZCIO_FUZZ_CHECK(req.headers().size() <= o.max_headers);
        seen += describe(req) + "\n";

        check_path(req.target());
        check_redirect(req.target());
        check_decisions(req, o.file_size);
        if (auto r = req.find("range")) {
            check_range(*r, o.file_size);
        }
        for (const char* name : {"if-modified-since", "if-unmodified-since", "if-range"}) {
            if (auto d = req.find(name)) {
                check_date(*d);
            }
        }
        // serve closes after a request whose body it would not read, and when the
        // client asked for it; otherwise the next request follows in the buffer.
        if (!req.keep_alive() || req.has_body() || http::check_head(req) != 0) {
            return seen + "close\n";
        }
        hb.drop_message(base);
        ZCIO_FUZZ_CHECK(hb.fed == 0 && hb.head_len == 0);
    }
    return seen;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    input in(data, size);
    options o;
    o.cap = 16 + in.u16() % 4096;
    o.max_headers = 1 + in.byte() % 32;
    const std::uint8_t s = in.byte();
    o.file_size = s < 128 ? s : std::uint64_t{1} << (s % 64);
    const std::uint32_t seed = in.u16();
    const std::string_view bytes = in.rest();

    // Ranges and dates also straight from the input, whatever the parser lets through.
    check_range(bytes.substr(0, 64), o.file_size);
    check_date(bytes.substr(0, 64));

    const std::string whole = serve(bytes, o, chunker::whole());
    const std::string pieces = serve(bytes, o, chunker(seed));
    if (whole != pieces) {
        std::fprintf(stderr, "in one read:\n%s\nin pieces:\n%s\n", whole.c_str(), pieces.c_str());
    }
    ZCIO_FUZZ_CHECK(whole == pieces);
    return 0;
}
