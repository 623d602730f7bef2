// Request targets of `zcio serve`: percent-decoded, split, checked.
#include "http_request.hpp"

#include "http_util.hpp"

#include <http_parser.h>

#include <cctype>
#include <cstdio>

namespace zcio::cli::http {

request_path resolve_target(std::string_view target) {
    request_path out;
    http_parser_url u;
    http_parser_url_init(&u);
    if (target.empty() || target.size() > 65000 ||
        http_parser_parse_url(target.data(), target.size(), 0, &u) != 0 ||
        (u.field_set & (1 << UF_PATH)) == 0) {
        out.status = 400;
        return out;
    }
    const auto raw_path = target.substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    if ((u.field_set & (1 << UF_QUERY)) != 0) {
        out.query = target.substr(u.field_data[UF_QUERY].off, u.field_data[UF_QUERY].len);
    }
    auto decoded = percent_decode(raw_path);
    if (!decoded || decoded->empty() || decoded->front() != '/') {
        out.status = 400;
        return out;
    }
    out.decoded = std::move(*decoded);
    const std::string& d = out.decoded;
    for (std::size_t i = 1; i <= d.size();) {
        auto next = d.find('/', i);
        if (next == std::string::npos) {
            next = d.size();
        }
        const std::string_view seg(d.data() + i, next - i);
        if (seg == "..") {
            out.status = 403;
            out.rel.clear();
            return out;
        }
        if (!seg.empty() && seg != ".") {
            if (!out.rel.empty()) {
                out.rel += '/';
            }
            out.rel += seg;
        }
        i = next + 1;
    }
    return out;
}

int check_head(const head_parser& req) {
    if (req.version_major() != 1) {
        return 505;
    }
    std::size_t hosts = 0;
    for (const auto& h : req.headers()) {
        hosts += iequals(h.name, "host") ? 1 : 0;
    }
    if (hosts > 1 || (hosts == 0 && req.version_minor() != 0)) {
        return 400;
    }
    return 0;
}

std::string redirect_location(const request_path& p) {
    std::string loc = "/" + percent_encode_path(p.rel);
    if (!p.rel.empty()) {
        loc += '/';
    }
    if (!p.query.empty()) {
        loc += '?';
        // RFC 3986's query characters (and '%', already an escape) are kept; a
        // backslash (read as '/' by browsers), a control byte or one above 0x7f is not.
        loc += percent_encode(p.query, "-._~!$&'()*+,;=:@/?%");
    }
    return loc;
}

bool has_dotfile(std::string_view rel) noexcept {
    for (std::size_t i = 0; i < rel.size(); ++i) {
        if (rel[i] == '.' && (i == 0 || rel[i - 1] == '/')) {
            return true;
        }
    }
    return false;
}

std::string make_etag(std::uint64_t size, std::int64_t mtime_sec, std::int64_t mtime_nsec) {
    char buf[64];
    const int n = std::snprintf(
        buf, sizeof buf, "\"%llx.%llx-%llx\"", static_cast<unsigned long long>(mtime_sec),
        static_cast<unsigned long long>(mtime_nsec), static_cast<unsigned long long>(size));
    return {buf, static_cast<std::size_t>(n)};
}

bool etag_matches(std::string_view list, std::string_view etag, bool weak) noexcept {
    if (trim(list) == "*") {
        return true;
    }
    while (!list.empty()) {
        auto comma = list.find(',');
        std::string_view tag = trim(list.substr(0, comma));
        list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
        if (tag.starts_with("W/")) {
            if (!weak) {
                continue; // strong comparison: a weak tag matches nothing
            }
            tag.remove_prefix(2);
        }
        if (tag == etag) {
            return true;
        }
    }
    return false;
}

int evaluate_preconditions(const head_parser& req, std::string_view etag, std::time_t mtime,
                           std::time_t now) {
    if (auto im = req.find("if-match")) {
        if (!etag_matches(*im, etag, false)) {
            return 412;
        }
    } else if (auto ius = req.find("if-unmodified-since")) {
        if (auto t = parse_date(*ius); t && mtime > *t) {
            return 412;
        }
    }
    if (auto inm = req.find("if-none-match")) {
        return etag_matches(*inm, etag, true) ? 304 : 0;
    }
    if (auto ims = req.find("if-modified-since")) {
        if (auto t = parse_date(*ims); t && *t <= now && mtime <= *t) {
            return 304;
        }
    }
    return 0;
}

bool if_range_holds(std::string_view if_range, std::string_view etag, std::time_t mtime) {
    const std::string_view v = trim(if_range);
    if (v.starts_with('"') || v.starts_with("W/")) {
        return v == etag; // strong comparison: a weak tag never keeps the range
    }
    auto t = parse_date(v);
    return t && *t == mtime;
}

} // namespace zcio::cli::http
