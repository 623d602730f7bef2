// head_parser: HTTP/1.x request and response heads through Debian's http-parser (2.9),
// without copying: every string it hands out points into the caller's buffer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include <http_parser.h>

namespace zcio::cli::http {

struct header_field {
    std::string_view name;
    std::string_view value;
};

// Feeds an HTTP/1.x message head to http-parser and stops right after it.
//
// Buffer contract: the bytes given to successive feed() calls of one message must be
// consecutive bytes of one buffer that does not move until the caller is done with the
// head, because the method, target, headers and body pieces are views into it. (The
// parser reports a header in pieces when it spans two reads; contiguity lets the pieces
// be joined without a copy.)
//
// Bodies: a request's body is never read (the parser stops after the head, and
// has_body() says whether one follows). A response whose body is chunked is decoded
// here: body pieces collect in body_pieces() as they are parsed, until complete. Any
// other response body (Content-Length, or until the end of the stream) is left to the
// caller, who can then move it with copy() instead of through this parser. Trailer
// fields after a chunked body are dropped: headers() holds the head's fields only.
class head_parser {
public:
    enum class kind { request, response };
    enum class status {
        need_more, // feed more bytes
        complete,  // the head (and a chunked response body) is complete: see consumed
        error,     // malformed: see error_text(); a server answers 400
        too_many_headers,
    };

    head_parser(kind k, std::size_t max_headers);
    head_parser(const head_parser&) = delete;
    head_parser& operator=(const head_parser&) = delete;

    // Forgets the previous message; the next feed() starts a new one.
    void reset();

    // Parses `data`. On complete, *consumed is the number of bytes of `data` that
    // belonged to the message (the rest is the next message, or a body left to the
    // caller); otherwise every byte was consumed.
    status feed(const char* data, std::size_t len, std::size_t* consumed);

    // True once the whole head was parsed (for a chunked response, before the body is).
    [[nodiscard]] bool head_done() const noexcept { return head_done_; }

    // Request line.
    [[nodiscard]] http_method method() const noexcept {
        return static_cast<http_method>(p_.method);
    }
    [[nodiscard]] std::string_view target() const noexcept { return target_; }
    // Status line.
    [[nodiscard]] int status_code() const noexcept { return static_cast<int>(p_.status_code); }
    [[nodiscard]] std::string_view reason() const noexcept { return reason_; }

    [[nodiscard]] unsigned version_major() const noexcept { return p_.http_major; }
    [[nodiscard]] unsigned version_minor() const noexcept { return p_.http_minor; }
    // Whether the connection may carry another message after this one.
    [[nodiscard]] bool keep_alive() const noexcept { return keep_alive_; }
    [[nodiscard]] bool chunked() const noexcept { return chunked_; }
    // Content-Length when the message had one.
    [[nodiscard]] std::optional<std::uint64_t> content_length() const noexcept {
        return content_length_;
    }
    // A request announced a body (Content-Length > 0 or chunked).
    [[nodiscard]] bool has_body() const noexcept {
        return chunked_ || (content_length_ && *content_length_ > 0);
    }

    [[nodiscard]] std::span<const header_field> headers() const noexcept { return headers_; }
    // The first header of that name (case-insensitive), trimmed.
    [[nodiscard]] std::optional<std::string_view> find(std::string_view name) const noexcept;

    // Chunked response body pieces decoded by the last feed() calls; clear them once used.
    std::vector<std::string_view>& body_pieces() noexcept { return body_; }

    // What is wrong with the message after status::error or too_many_headers, as a short
    // phrase for a user ("not an HTTP/1.x response", "malformed header line").
    [[nodiscard]] const char* error_text() const noexcept;

private:
    static int on_url(http_parser* p, const char* at, std::size_t len);
    static int on_status(http_parser* p, const char* at, std::size_t len);
    static int on_header_field(http_parser* p, const char* at, std::size_t len);
    static int on_header_value(http_parser* p, const char* at, std::size_t len);
    static int on_headers_complete(http_parser* p);
    static int on_body(http_parser* p, const char* at, std::size_t len);
    static int on_message_complete(http_parser* p);

    kind kind_;
    std::size_t max_headers_;
    http_parser p_{};
    std::string_view target_;
    std::string_view reason_;
    std::vector<header_field> headers_;
    std::vector<std::string_view> body_;
    bool in_value_ = false;
    bool head_done_ = false;
    bool in_trailer_ = false; // a field after a chunked body was seen
    bool message_done_ = false;
    bool too_many_ = false;
    bool keep_alive_ = false;
    bool chunked_ = false;
    std::optional<std::uint64_t> content_length_;
};

// The bookkeeping of message heads read into one buffer, shared by `serve` (pipelined
// requests) and `get` (interim responses): the first `have` bytes of the buffer came
// from the connection, the parser has seen the first `fed` of them, and the first
// `head_len` belong to the current message (all of it once feed() said complete).
// `base` is the start of that buffer, which must hold the bytes the parser's views
// point into (see head_parser's buffer contract).
struct head_buffer {
    std::size_t have = 0;
    std::size_t fed = 0;
    std::size_t head_len = 0;

    // Resets the parser for the next message and feeds it the bytes already held (the
    // start of a pipelined request, or what followed an interim response). `base` is
    // not read when nothing is held.
    head_parser::status start(head_parser& p, const char* base);
    // `n` more bytes were read at base + have: counts them and feeds them.
    head_parser::status received(head_parser& p, const char* base, std::size_t n);
    // Forgets the current message's head_len bytes, moving what follows them to base.
    void drop_message(char* base);
};

// `get`: while `st` says a complete interim (1xx) response, drops it and parses what
// followed it as the next response. Returns the status of the real response so far.
head_parser::status skip_interim(head_parser& p, head_buffer& hb, char* base,
                                 head_parser::status st);

} // namespace zcio::cli::http
