// head_parser: HTTP/1.x heads through http-parser, with views into the caller's buffer.
#include "http_head.hpp"

#include "http_util.hpp"

#include <algorithm>
#include <cstring>

namespace zcio::cli::http {

namespace {

head_parser* self(http_parser* p) {
    return static_cast<head_parser*>(p->data);
}

// Joins a piece to the view it continues. Pieces of one field are consecutive in the
// caller's buffer (see the buffer contract in the header), so the join is a widening.
void join(std::string_view& v, const char* at, std::size_t len) {
    if (v.empty()) {
        v = {at, len};
    } else {
        v = {v.data(), static_cast<std::size_t>(at + len - v.data())};
    }
}

} // namespace

head_parser::head_parser(kind k, std::size_t max_headers) : kind_(k), max_headers_(max_headers) {
    headers_.reserve(std::min<std::size_t>(max_headers_, 32));
    reset();
}

void head_parser::reset() {
    http_parser_init(&p_, kind_ == kind::request ? HTTP_REQUEST : HTTP_RESPONSE);
    p_.data = this;
    target_ = {};
    reason_ = {};
    headers_.clear();
    body_.clear();
    in_value_ = false;
    head_done_ = false;
    in_trailer_ = false;
    message_done_ = false;
    too_many_ = false;
    keep_alive_ = false;
    chunked_ = false;
    content_length_.reset();
}

head_parser::status head_parser::feed(const char* data, std::size_t len, std::size_t* consumed) {
    *consumed = 0;
    if (message_done_) {
        return status::complete;
    }
    if (len == 0) {
        return status::need_more; // a length of 0 would tell http-parser "end of stream"
    }
    static const http_parser_settings s = [] {
        http_parser_settings x{};
        http_parser_settings_init(&x);
        x.on_url = &head_parser::on_url;
        x.on_status = &head_parser::on_status;
        x.on_header_field = &head_parser::on_header_field;
        x.on_header_value = &head_parser::on_header_value;
        x.on_headers_complete = &head_parser::on_headers_complete;
        x.on_body = &head_parser::on_body;
        x.on_message_complete = &head_parser::on_message_complete;
        return x;
    }();
    const std::size_t n = http_parser_execute(&p_, &s, data, len);
    if (message_done_) {
        // Paused in on_message_complete: http-parser returned just past the message.
        *consumed = n;
        return status::complete;
    }
    if (too_many_) {
        return status::too_many_headers;
    }
    if (HTTP_PARSER_ERRNO(&p_) != HPE_OK) {
        return status::error;
    }
    *consumed = n;
    return status::need_more;
}

std::optional<std::string_view> head_parser::find(std::string_view name) const noexcept {
    for (const auto& h : headers_) {
        if (iequals(h.name, name)) {
            return trim(h.value);
        }
    }
    return std::nullopt;
}

const char* head_parser::error_text() const noexcept {
    if (too_many_) {
        return "too many header fields";
    }
    // http-parser's own descriptions ("invalid constant string", "LF character
    // expected") describe its state machine, not the message: a user who pointed `zcio
    // get` at something that is not a web server should read what is wrong with it.
    const bool request = kind_ == kind::request;
    switch (HTTP_PARSER_ERRNO(&p_)) {
    // The "HTTP/" of the first line is missing, or not followed by "1.x" (Debian builds
    // http-parser non-strict, so "Hello" gets as far as the version before it fails).
    case HPE_INVALID_CONSTANT:
    case HPE_INVALID_VERSION:
        return request ? "not an HTTP/1.x request" : "not an HTTP/1.x response";
    case HPE_INVALID_STATUS:
        return "bad status code in the status line";
    case HPE_INVALID_METHOD:
        return "unknown request method";
    case HPE_INVALID_URL:
    case HPE_INVALID_HOST:
    case HPE_INVALID_PORT:
    case HPE_INVALID_PATH:
    case HPE_INVALID_QUERY_STRING:
    case HPE_INVALID_FRAGMENT:
        return "malformed request target";
    case HPE_LF_EXPECTED:
        return "a line ends in CR without LF";
    case HPE_INVALID_HEADER_TOKEN:
        return "malformed header line";
    case HPE_HEADER_OVERFLOW:
        return "header section too large";
    case HPE_INVALID_CONTENT_LENGTH:
        // http-parser reports a chunk size that overflows 64 bits with this code too
        // (it keeps the chunk's size in content_length): once the head is done, it is
        // the chunk size that is wrong, unless the parser is in the trailer.
        if (in_trailer_) {
            return "bad trailer field after the chunked body";
        }
        return head_done_ && chunked_ ? "bad chunk size (too large)" : "bad Content-Length value";
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        // http-parser checks a chunked body's trailer fields as it checks the head's.
        return in_trailer_ ? "bad trailer field after the chunked body"
                           : "conflicting Content-Length (given twice, or with chunked)";
    case HPE_INVALID_TRANSFER_ENCODING:
        return "unsupported Transfer-Encoding (chunked must come last)";
    case HPE_INVALID_CHUNK_SIZE:
        return "bad chunk size";
    case HPE_INVALID_EOF_STATE:
        return "the message ended early";
    case HPE_CLOSED_CONNECTION:
        return "data after a message that closes the connection";
    default: // callback, internal-state and strict-mode errors: no plainer name
        return "malformed HTTP message";
    }
}

int head_parser::on_url(http_parser* p, const char* at, std::size_t len) {
    join(self(p)->target_, at, len);
    return 0;
}

int head_parser::on_status(http_parser* p, const char* at, std::size_t len) {
    join(self(p)->reason_, at, len);
    return 0;
}

int head_parser::on_header_field(http_parser* p, const char* at, std::size_t len) {
    head_parser* h = self(p);
    if (h->head_done_) {
        // A trailer after a chunked body: dropped (RFC 9110 §6.5.1 allows it). Its bytes
        // may sit in a buffer that was read into again since the head (get reuses it
        // for every piece of the body), so it could not be kept as a view anyway.
        h->in_trailer_ = true;
        return 0;
    }
    if (h->in_value_ || h->headers_.empty()) {
        if (h->headers_.size() >= h->max_headers_) {
            h->too_many_ = true;
            return 1; // stops the parser
        }
        h->headers_.push_back({});
        h->in_value_ = false;
    }
    join(h->headers_.back().name, at, len);
    return 0;
}

int head_parser::on_header_value(http_parser* p, const char* at, std::size_t len) {
    head_parser* h = self(p);
    if (h->head_done_) {
        return 0; // a trailer (see on_header_field)
    }
    h->in_value_ = true;
    join(h->headers_.back().value, at, len);
    return 0;
}

int head_parser::on_headers_complete(http_parser* p) {
    head_parser* h = self(p);
    h->head_done_ = true;
    h->chunked_ = (p->flags & F_CHUNKED) != 0;
    if ((p->flags & F_CONTENTLENGTH) != 0) {
        h->content_length_ = p->content_length;
    }
    h->keep_alive_ = http_should_keep_alive(p) != 0;
    // 1 = "no body follows": http-parser then completes the message right here. A
    // request body is never read, and a length-delimited response body is the
    // caller's (copy() moves it); only a chunked response body is decoded here. A 1xx,
    // 204 or 304 response has no body even if it says chunked (RFC 9110 §6.4.1); were
    // one decoded, whether a 1xx is interim would depend on where a read ended.
    const unsigned code = p->status_code;
    const bool bodiless = code < 200 || code == 204 || code == 304;
    if (h->kind_ == kind::response && h->chunked_ && !bodiless) {
        return 0;
    }
    return 1;
}

int head_parser::on_body(http_parser* p, const char* at, std::size_t len) {
    self(p)->body_.emplace_back(at, len);
    return 0;
}

int head_parser::on_message_complete(http_parser* p) {
    self(p)->message_done_ = true;
    // Pausing makes http_parser_execute() return just past this message, so bytes of a
    // pipelined request (or of a body we move ourselves) stay with the caller.
    http_parser_pause(p, 1);
    return 0;
}

head_parser::status head_buffer::start(head_parser& p, const char* base) {
    p.reset();
    fed = 0;
    head_len = 0;
    if (have == 0) {
        return head_parser::status::need_more;
    }
    std::size_t used = 0;
    const auto st = p.feed(base, have, &used);
    head_len = used;
    fed = have;
    return st;
}

head_parser::status head_buffer::received(head_parser& p, const char* base, std::size_t n) {
    have += n;
    std::size_t used = 0;
    const auto st = p.feed(base + fed, have - fed, &used);
    head_len = fed + used;
    fed = have;
    return st;
}

void head_buffer::drop_message(char* base) {
    if (head_len < have) {
        std::memmove(base, base + head_len, have - head_len);
    }
    have -= head_len;
    head_len = 0;
    fed = 0;
}

head_parser::status skip_interim(head_parser& p, head_buffer& hb, char* base,
                                 head_parser::status st) {
    while (st == head_parser::status::complete && p.status_code() < 200) {
        // 100 Continue and friends: the real answer follows.
        hb.drop_message(base);
        st = hb.start(p, base);
    }
    return st;
}

} // namespace zcio::cli::http
