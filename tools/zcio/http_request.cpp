// Request targets of `zcio serve`: percent-decoded, split, checked.
#include "http_request.hpp"

#include "http_util.hpp"

#include <http_parser.h>

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

} // namespace zcio::cli::http
