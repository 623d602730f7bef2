// Tests for copy(): 64 MiB of random data between every pair of fd kinds with the path
// asserted; limits and end of stream; peer resets; refused paths that fall back; file
// offsets; and pools that cannot lend a pipe. Each test uses its own transfer_pools and
// checks at the end that nothing is still leased and no descriptor leaked.
#include <zcio/copy.hpp>

#include <zcio/buffer_pool.hpp>
#include <zcio/event_loop.hpp>
#include <zcio/pipe_pool.hpp>
#include <zcio/result.hpp>
#include <zcio/stream.hpp>
#include <zcio/sys.hpp>
#include <zcio/task.hpp>
#include <zcio/timeout.hpp>

#include "test_support.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

namespace zcio {
namespace {

using namespace std::chrono_literals;

// ---- data ----

constexpr std::size_t big_size = std::size_t{64} << 20;
constexpr std::size_t small_size = (std::size_t{3} << 20) + 17;

// 64 MiB of random bytes, made once per process; every case copies a prefix of it.
const std::vector<std::byte>& big_data() {
    static const std::vector<std::byte> data = test::random_bytes(big_size, 0xc0'b1'e5);
    return data;
}

std::uint64_t sum_of(std::span<const std::byte> bytes) {
    return test::checksum_of(bytes);
}

std::uint64_t big_sum() {
    static const std::uint64_t sum = sum_of(big_data());
    return sum;
}

std::uint64_t zeros_sum(std::size_t n) {
    const std::vector<std::byte> zeros(n);
    return sum_of(zeros);
}

// Writes and reads go in chunks of 1 byte to max_chunk.
constexpr std::size_t max_chunk = 256 * 1024;

// ---- temporary files ----

// Removes its file when destroyed.
class temp_file {
public:
    explicit temp_file(std::string path) : path_(std::move(path)) {}
    temp_file(temp_file&& other) noexcept : path_(std::exchange(other.path_, {})) {}
    temp_file& operator=(temp_file&&) = delete;
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
    ~temp_file() {
        if (!path_.empty()) {
            ::unlink(path_.c_str());
        }
    }
    [[nodiscard]] const std::string& path() const noexcept { return path_; }

private:
    std::string path_;
};

// Writes `data` to a new file at `path` in chunks of random size (blocking writes).
void write_file(const std::string& path, std::span<const std::byte> data, std::uint64_t seed) {
    auto fd = sys::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC);
    ASSERT_TRUE(fd) << fd.error().message();
    test::size_source sizes(seed);
    std::size_t done = 0;
    while (done < data.size()) {
        const std::size_t len = std::min(data.size() - done, sizes.between(1, max_chunk));
        auto n = sys::write(fd->get(), data.data() + done, len);
        ASSERT_TRUE(n) << n.error().message();
        done += *n;
    }
}

std::vector<std::byte> read_file(const std::string& path) {
    std::vector<std::byte> out;
    auto fd = sys::open(path.c_str(), O_RDONLY);
    EXPECT_TRUE(fd) << fd.error().message();
    if (!fd) {
        return out;
    }
    std::vector<std::byte> buf(std::size_t{1} << 20);
    while (true) {
        auto n = sys::read(fd->get(), buf.data(), buf.size());
        EXPECT_TRUE(n) << n.error().message();
        if (!n || *n == 0) {
            return out;
        }
        out.insert(out.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(*n));
    }
}

// ---- coroutines (parameters by value or pointer: see task.hpp) ----

// Ends a stream the way its reader notices: FIN for a socket, close for a pipe.
void end_stream(stream& s) {
    if (!s.is_open()) {
        return;
    }
    if (s.kind() == sys::fd_kind::socket) {
        (void)s.shutdown_write();
    } else if (s.kind() == sys::fd_kind::pipe) {
        s.close();
    }
}

// test::produce in chunks up to max_chunk, then ends the stream (end_stream: a pipe is
// closed, not half-closed). After a failed write it stops (the other end may be gone
// on purpose).
task<void> produce(stream* s, std::span<const std::byte> data, std::uint64_t seed,
                   test::side* out) {
    co_await test::produce(s, data, seed, max_chunk, false, out);
    if (!out->error) {
        end_stream(*s);
    }
}

// Writes chunks of `data` until the copy has delivered `after` bytes, then resets the
// connection while bytes are still in flight.
task<void> produce_then_reset(stream* s, std::span<const std::byte> data, std::uint64_t seed,
                              const std::uint64_t* delivered, std::uint64_t after,
                              test::side* out) {
    test::size_source sizes(seed);
    while (*delivered < after && out->bytes < data.size()) {
        const std::size_t len = std::min(data.size() - out->bytes, sizes.between(1, max_chunk));
        auto w = co_await s->write_all(data.subspan(out->bytes, len));
        if (!w) {
            out->error = w.error();
            break;
        }
        out->bytes += *w;
    }
    test::reset_connection(*s);
    out->done = true;
}

// Reads until at least `after` bytes arrived, then resets the connection.
task<void> consume_then_reset(stream* s, std::uint64_t after, test::side* out) {
    test::checksum sum;
    std::vector<std::byte> buf(64 * 1024);
    while (out->bytes < after) {
        auto n = co_await s->read_some(buf);
        if (!n || *n == 0) {
            out->error = n ? std::error_code{} : n.error();
            break;
        }
        sum.update(std::span(buf).first(*n));
        out->bytes += *n;
    }
    out->sum = sum.value();
    test::reset_connection(*s);
    out->done = true;
}

// Runs the copies in `opts` one after another into the same pair, then ends `dst` so a
// reader on the other end sees end of stream.
task<std::vector<copy_result>> copies_then_end(stream* dst, stream* src,
                                               std::vector<copy_options> opts) {
    std::vector<copy_result> out;
    for (const copy_options& o : opts) {
        out.push_back(co_await copy(*dst, *src, o));
    }
    end_stream(*dst);
    co_return out;
}

task<copy_result> copy_then_end(stream* dst, stream* src, copy_options opts) {
    // (A braced list in a co_await expression trips g++ 12: "array used as initializer".)
    std::vector<copy_options> one;
    one.push_back(opts);
    auto r = co_await copies_then_end(dst, src, std::move(one));
    co_return r.front();
}

// ---- the ends of a copy ----

enum class end_kind { pipe, tcp, unix_socket, file, dev_zero };

bool is_stream_kind(end_kind k) {
    return k == end_kind::pipe || k == end_kind::tcp || k == end_kind::unix_socket;
}

// One end of a copy: `inner` is what copy() sees; `outer` is where a producer writes
// or a consumer reads (pipes and sockets); `file` is the temporary file, if any.
struct end {
    stream inner;
    stream outer;
    std::optional<temp_file> file;
};

// A connected pair of `kind` (pipe: first = read end, second = write end; TCP: first
// = the accepted end, second = the connecting one).
result<test::stream_pair> connected_pair(event_loop& loop, end_kind kind) {
    switch (kind) {
    case end_kind::pipe: {
        auto p = sys::pipe();
        if (!p) {
            return fail(p.error());
        }
        return test::adopt_pair(loop, std::move(p->read_end), std::move(p->write_end));
    }
    case end_kind::unix_socket: {
        auto p = sys::socketpair(AF_UNIX, SOCK_STREAM);
        if (!p) {
            return fail(p.error());
        }
        return test::adopt_pair(loop, std::move(p->first), std::move(p->second));
    }
    case end_kind::tcp: {
        auto p = loop.block_on(test::tcp_pair(&loop));
        if (!p) {
            return fail(p.error());
        }
        return test::stream_pair{std::move(p->second), std::move(p->first)};
    }
    case end_kind::file:
    case end_kind::dev_zero:
        break;
    }
    return fail(EINVAL);
}

result<end> open_file_end(event_loop& loop, temp_file file, int flags) {
    auto fd = sys::open(file.path().c_str(), flags);
    if (!fd) {
        return fail(fd.error());
    }
    auto s = stream::adopt(loop, std::move(*fd));
    if (!s) {
        return fail(s.error());
    }
    return end{std::move(*s), stream{}, std::move(file)};
}

// A source of `kind`. A file source already holds `file_data`.
result<end> make_source(event_loop& loop, end_kind kind, std::span<const std::byte> file_data,
                        std::uint64_t seed) {
    if (kind == end_kind::file) {
        temp_file f(test::temp_path("copy-src"));
        write_file(f.path(), file_data, seed);
        return open_file_end(loop, std::move(f), O_RDONLY);
    }
    if (kind == end_kind::dev_zero) {
        auto fd = sys::open("/dev/zero", O_RDONLY);
        if (!fd) {
            return fail(fd.error());
        }
        auto s = stream::adopt(loop, std::move(*fd));
        if (!s) {
            return fail(s.error());
        }
        return end{std::move(*s), stream{}, std::nullopt};
    }
    auto p = connected_pair(loop, kind);
    if (!p) {
        return fail(p.error());
    }
    // Pipe: copy() reads the read end, the producer writes the write end.
    return end{std::move(p->first), std::move(p->second), std::nullopt};
}

// A destination of `kind`. A file destination is empty, or holds `prefix` and is
// opened with `extra_flags` (O_APPEND) and its offset after the prefix.
result<end> make_dest(event_loop& loop, end_kind kind, std::span<const std::byte> prefix = {},
                      int extra_flags = 0) {
    if (kind == end_kind::file) {
        temp_file f(test::temp_path("copy-dst"));
        write_file(f.path(), prefix, 7);
        auto e = open_file_end(loop, std::move(f), O_RDWR | extra_flags);
        if (e && !prefix.empty() && (extra_flags & O_APPEND) == 0) {
            if (auto at = sys::seek(e->inner.fd(), static_cast<off_t>(prefix.size())); !at) {
                return fail(at.error());
            }
        }
        return e;
    }
    auto p = connected_pair(loop, kind);
    if (!p) {
        return fail(p.error());
    }
    // Pipe: copy() writes the write end, the consumer reads the read end.
    return end{std::move(p->second), std::move(p->first), std::nullopt};
}

// ---- fixture ----

class copy_test : public test::transfer_pools_fixture {};

// ---- 64 MiB between every pair of kinds ----

struct transfer_case {
    const char* name;
    end_kind from;
    end_kind to;
    copy_path force;  // automatic unless the case forces a path
    copy_path expect; // the path the result must report
};

class copy_transfer_test : public test::transfer_pools_fixture,
                           public ::testing::WithParamInterface<transfer_case> {};

TEST_P(copy_transfer_test, moves_64_mib_of_random_data_by_the_expected_path) {
    const transfer_case& c = GetParam();
    transfer_pools& pools = make_pools();
    const auto& data = big_data();
    event_loop loop;
    auto src = make_source(loop, c.from, data, 11);
    ASSERT_TRUE(src) << src.error().message();
    auto dst = make_dest(loop, c.to);
    ASSERT_TRUE(dst) << dst.error().message();

    test::side produced, consumed;
    produced.done = consumed.done = true;
    if (src->outer.is_open()) {
        produced.done = false;
        loop.spawn(produce(&src->outer, data, 12, &produced));
    }
    if (dst->outer.is_open()) {
        consumed.done = false;
        loop.spawn(test::consume(&dst->outer, 13, max_chunk, &consumed));
    }
    copy_options o;
    o.pools = &pools;
    o.path = c.force;
    if (c.from == end_kind::dev_zero) {
        o.limit = big_size;
    }
    const auto started = clock::now();
    const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return produced.done && consumed.done; }, 60s)))
        << "produced " << produced << " consumed " << consumed;
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - started);

    EXPECT_TRUE(r.ok()) << r.error.message();
    EXPECT_EQ(r.bytes, big_size);
    EXPECT_EQ(r.path, c.expect) << "reported " << to_string(r.path);
    EXPECT_FALSE(produced.error) << produced.error.message();
    EXPECT_FALSE(consumed.error) << consumed.error.message();
    const std::uint64_t want = c.from == end_kind::dev_zero ? zeros_sum(big_size) : big_sum();
    if (c.to == end_kind::file) {
        const auto got = read_file(dst->file->path());
        EXPECT_EQ(got.size(), big_size);
        EXPECT_EQ(sum_of(got), want) << "the file holds different bytes";
    } else {
        EXPECT_EQ(consumed.bytes, big_size);
        EXPECT_EQ(consumed.sum, want) << "the reader got different bytes";
    }
    if (c.from == end_kind::tcp && c.to == end_kind::tcp && c.force == copy_path::automatic) {
        EXPECT_GE(pools.buffers.stats().created, 1u) << "auto starts on the buffer path";
        EXPECT_GE(pools.pipes.stats().created, 1u) << "auto moved to splice for bulk data";
    }
    if (r.path == copy_path::buffer) {
        EXPECT_EQ(pools.pipes.stats().created, 0u);
    }
    RecordProperty("copy_ms", static_cast<int>(ms.count()));
}

const transfer_case transfer_cases[] = {
    {"pipe_to_tcp", end_kind::pipe, end_kind::tcp, copy_path::automatic, copy_path::splice},
    {"tcp_to_pipe", end_kind::tcp, end_kind::pipe, copy_path::automatic, copy_path::splice},
    {"pipe_to_pipe", end_kind::pipe, end_kind::pipe, copy_path::automatic, copy_path::splice},
    {"tcp_to_tcp_auto_upgrades_to_splice", end_kind::tcp, end_kind::tcp, copy_path::automatic,
     copy_path::splice},
    {"tcp_to_tcp_forced_splice", end_kind::tcp, end_kind::tcp, copy_path::splice,
     copy_path::splice},
    {"tcp_to_tcp_forced_buffer", end_kind::tcp, end_kind::tcp, copy_path::buffer,
     copy_path::buffer},
    {"unix_to_tcp", end_kind::unix_socket, end_kind::tcp, copy_path::automatic, copy_path::splice},
    {"tcp_to_unix", end_kind::tcp, end_kind::unix_socket, copy_path::automatic, copy_path::splice},
    {"file_to_tcp_sendfile", end_kind::file, end_kind::tcp, copy_path::automatic,
     copy_path::sendfile},
    {"file_to_unix_sendfile", end_kind::file, end_kind::unix_socket, copy_path::automatic,
     copy_path::sendfile},
    {"tcp_to_file", end_kind::tcp, end_kind::file, copy_path::automatic, copy_path::splice},
    {"unix_to_file", end_kind::unix_socket, end_kind::file, copy_path::automatic,
     copy_path::splice},
    {"file_to_file_copy_file_range", end_kind::file, end_kind::file, copy_path::automatic,
     copy_path::copy_file_range},
    {"file_to_pipe", end_kind::file, end_kind::pipe, copy_path::automatic, copy_path::splice},
    {"pipe_to_file", end_kind::pipe, end_kind::file, copy_path::automatic, copy_path::splice},
    {"dev_zero_to_tcp_by_buffer", end_kind::dev_zero, end_kind::tcp, copy_path::automatic,
     copy_path::buffer},
};

INSTANTIATE_TEST_SUITE_P(pairs, copy_transfer_test, ::testing::ValuesIn(transfer_cases),
                         [](const ::testing::TestParamInfo<transfer_case>& param_info) {
                             return std::string(param_info.param.name);
                         });

// ---- limits and end of stream ----

struct limit_kind {
    const char* name;
    end_kind from;
    end_kind to;
    copy_path force;
};

struct limit_value {
    const char* name;
    std::size_t size; // bytes the source holds
    std::optional<std::uint64_t> limit;
};

class copy_limit_test : public test::transfer_pools_fixture,
                        public ::testing::WithParamInterface<std::tuple<limit_kind, limit_value>> {
};

// Exactly min(limit, size) bytes move, and the source keeps the rest: a socket or pipe
// still yields exactly the bytes after the limit, a file's offset stops at the limit.
TEST_P(copy_limit_test, moves_exactly_the_limit_and_leaves_the_rest) {
    const auto& [k, v] = GetParam();
    transfer_pools& pools = make_pools();
    const auto data = std::span(big_data()).first(v.size);
    const std::size_t moved = v.limit ? std::min<std::size_t>(*v.limit, v.size) : v.size;
    event_loop loop;
    auto src = make_source(loop, k.from, data, 21);
    ASSERT_TRUE(src) << src.error().message();
    auto dst = make_dest(loop, k.to);
    ASSERT_TRUE(dst) << dst.error().message();

    test::side produced, consumed, rest;
    produced.done = consumed.done = rest.done = true;
    if (src->outer.is_open()) {
        produced.done = false;
        loop.spawn(produce(&src->outer, data, 22, &produced));
    }
    if (dst->outer.is_open()) {
        consumed.done = false;
        loop.spawn(test::consume(&dst->outer, 23, max_chunk, &consumed));
    }
    copy_options o;
    o.pools = &pools;
    o.path = k.force;
    o.limit = v.limit;
    const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
    EXPECT_TRUE(r.ok()) << r.error.message();
    EXPECT_EQ(r.bytes, moved);
    if (is_stream_kind(k.from)) {
        rest.done = false;
        loop.spawn(test::consume(&src->inner, 24, max_chunk, &rest));
    }
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return produced.done && consumed.done && rest.done; }, 30s)))
        << "produced " << produced << " consumed " << consumed << " rest " << rest;

    const std::uint64_t want = sum_of(data.first(moved));
    if (k.to == end_kind::file) {
        const auto got = read_file(dst->file->path());
        EXPECT_EQ(got.size(), moved);
        EXPECT_EQ(sum_of(got), want);
    } else {
        EXPECT_FALSE(consumed.error) << consumed.error.message();
        EXPECT_EQ(consumed.bytes, moved);
        EXPECT_EQ(consumed.sum, want);
    }
    if (is_stream_kind(k.from)) {
        EXPECT_FALSE(rest.error) << rest.error.message();
        EXPECT_EQ(rest.bytes, v.size - moved) << "the copy read past its limit";
        EXPECT_EQ(rest.sum, sum_of(data.subspan(moved)));
    } else {
        auto at = sys::tell(src->inner.fd());
        ASSERT_TRUE(at) << at.error().message();
        EXPECT_EQ(static_cast<std::size_t>(*at), moved)
            << "the file offset is not after the last byte";
    }
}

const limit_kind limit_kinds[] = {
    {"pipe_to_tcp", end_kind::pipe, end_kind::tcp, copy_path::automatic},
    {"tcp_to_pipe", end_kind::tcp, end_kind::pipe, copy_path::automatic},
    {"tcp_to_tcp_auto", end_kind::tcp, end_kind::tcp, copy_path::automatic},
    {"tcp_to_tcp_splice", end_kind::tcp, end_kind::tcp, copy_path::splice},
    {"tcp_to_tcp_buffer", end_kind::tcp, end_kind::tcp, copy_path::buffer},
    {"unix_to_file", end_kind::unix_socket, end_kind::file, copy_path::automatic},
    {"file_to_tcp", end_kind::file, end_kind::tcp, copy_path::automatic},
    {"file_to_file", end_kind::file, end_kind::file, copy_path::automatic},
    {"file_to_pipe", end_kind::file, end_kind::pipe, copy_path::automatic},
    {"file_to_tcp_buffer", end_kind::file, end_kind::tcp, copy_path::buffer},
};

const limit_value limit_values[] = {
    {"to_eof", small_size, std::nullopt},
    {"limit_0", small_size, 0},
    {"limit_1", small_size, 1},
    {"limit_smaller", small_size, 100'003},
    {"limit_equal", small_size, small_size},
    {"limit_larger", small_size, small_size + 12'345},
    {"empty_source", 0, std::nullopt},
    {"empty_source_with_limit", 0, 10},
};

INSTANTIATE_TEST_SUITE_P(
    limits, copy_limit_test,
    ::testing::Combine(::testing::ValuesIn(limit_kinds), ::testing::ValuesIn(limit_values)),
    [](const ::testing::TestParamInfo<std::tuple<limit_kind, limit_value>>& param_info) {
        return std::string(std::get<0>(param_info.param).name) + "_" +
               std::get<1>(param_info.param).name;
    });

// max_chunk = SIZE_MAX is cut to max_chunk_limit before it reaches the kernel, which
// would refuse such a length with EINVAL on some versions: every path still moves
// every byte, and reports the path the table gives it (no silent fallback).
TEST(copy_max_chunk, zero_means_the_default_and_huge_values_are_capped) {
    EXPECT_EQ(effective_max_chunk(0), copy_options{}.max_chunk);
    EXPECT_EQ(effective_max_chunk(1), 1u);
    EXPECT_EQ(effective_max_chunk(std::size_t{64} << 10), std::size_t{64} << 10);
    EXPECT_EQ(effective_max_chunk(max_chunk_limit), max_chunk_limit);
    EXPECT_EQ(effective_max_chunk(max_chunk_limit + 1), max_chunk_limit);
    EXPECT_EQ(effective_max_chunk(SIZE_MAX), max_chunk_limit);
}

TEST_F(copy_test, a_huge_max_chunk_is_capped_on_every_path) {
    transfer_pools& pools = make_pools();
    const auto data = std::span(big_data()).first(small_size);
    for (const limit_kind& k : limit_kinds) {
        SCOPED_TRACE(k.name);
        event_loop loop;
        auto src = make_source(loop, k.from, data, 41);
        ASSERT_TRUE(src) << src.error().message();
        auto dst = make_dest(loop, k.to);
        ASSERT_TRUE(dst) << dst.error().message();
        test::side produced, consumed;
        produced.done = consumed.done = true;
        if (src->outer.is_open()) {
            produced.done = false;
            loop.spawn(produce(&src->outer, data, 42, &produced));
        }
        if (dst->outer.is_open()) {
            consumed.done = false;
            loop.spawn(test::consume(&dst->outer, 43, max_chunk, &consumed));
        }
        copy_options o;
        o.pools = &pools;
        o.path = k.force;
        o.max_chunk = SIZE_MAX;
        const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
        EXPECT_TRUE(r.ok()) << r.error.message();
        EXPECT_EQ(r.bytes, data.size());
        if (k.force != copy_path::automatic) {
            EXPECT_EQ(r.path, k.force);
        }
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return produced.done && consumed.done; }, 30s)));
        const auto got =
            k.to == end_kind::file ? read_file(dst->file->path()) : std::vector<std::byte>{};
        EXPECT_EQ(k.to == end_kind::file ? sum_of(got) : consumed.sum, sum_of(data));
    }
}

// Counts, at every suspension of the loop while a copy runs, how often a pipe or a
// buffer was leased.
task<void> sample_leases(event_loop* loop, transfer_pools* pools, const bool* stop, int* samples,
                         int* holding) {
    while (!*stop) {
        ++*samples;
        if (pools->pipes.stats().leased + pools->buffers.stats().leased > 0) {
            ++*holding;
        }
        co_await sleep_for(*loop, 2ms);
    }
}

// A rate-limited copy spends most of its time asleep in the limiter; it must hold no
// pipe and no buffer then, or a thousand throttled connections pin a thousand of each.
TEST_F(copy_test, a_throttled_copy_sleeps_holding_no_pipe_and_no_buffer) {
    const auto data = std::span(big_data()).first(std::size_t{192} << 10);
    for (copy_path forced : {copy_path::splice, copy_path::buffer}) {
        SCOPED_TRACE(to_string(forced));
        transfer_pools& pools = make_pools();
        event_loop loop;
        auto src = make_source(loop, end_kind::tcp, data, 51);
        ASSERT_TRUE(src) << src.error().message();
        auto dst = make_dest(loop, end_kind::tcp);
        ASSERT_TRUE(dst) << dst.error().message();
        test::side produced, consumed;
        loop.spawn(produce(&src->outer, data, 52, &produced));
        loop.spawn(test::consume(&dst->outer, 53, max_chunk, &consumed));
        // 192 KiB at 512 KiB/s after a 51 KiB burst: about 0.3 s, mostly asleep.
        rate_limiter limiter(std::uint64_t{512} << 10);
        copy_options o;
        o.pools = &pools;
        o.path = forced;
        o.limiter = &limiter;
        bool stop = false;
        int samples = 0;
        int holding = 0;
        loop.spawn(sample_leases(&loop, &pools, &stop, &samples, &holding));
        const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
        stop = true;
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return produced.done && consumed.done; }, 30s)));
        EXPECT_TRUE(r.ok()) << r.error.message();
        EXPECT_EQ(r.path, forced);
        EXPECT_EQ(consumed.bytes, data.size());
        EXPECT_EQ(consumed.sum, sum_of(data));
        EXPECT_GE(samples, 50) << "the copy did not sleep in the limiter";
        EXPECT_LE(holding, samples / 10)
            << holding << " of " << samples << " samples found a pipe or buffer leased";
    }
}

// A limit on an endless source (a character device) ends the copy there.
TEST_F(copy_test, a_limit_ends_a_copy_from_an_endless_device) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    auto src = make_source(loop, end_kind::dev_zero, {}, 0);
    ASSERT_TRUE(src) << src.error().message();
    auto dst = make_dest(loop, end_kind::pipe);
    ASSERT_TRUE(dst) << dst.error().message();
    test::side consumed;
    loop.spawn(test::consume(&dst->outer, 31, max_chunk, &consumed));
    copy_options o;
    o.pools = &pools;
    o.limit = 100'001;
    const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return consumed.done; }, 10s)));
    EXPECT_TRUE(r.ok()) << r.error.message();
    EXPECT_EQ(r.bytes, 100'001u);
    EXPECT_EQ(consumed.bytes, 100'001u);
    EXPECT_EQ(consumed.sum, zeros_sum(100'001));
    std::printf("[   INFO   ] /dev/zero -> pipe went by %s\n", to_string(r.path));
}

// /dev/urandom can be polled (always readable) but answers FIONREAD with EINVAL: when
// the pipe it splices into fills, the copy must wait for the pipe, not the device.
TEST_F(copy_test, a_limit_ends_a_copy_from_a_pollable_endless_device) {
    transfer_pools& pools = make_pools();
    event_loop loop;
    auto fd = sys::open("/dev/urandom", O_RDONLY);
    ASSERT_TRUE(fd) << fd.error().message();
    auto src = stream::adopt(loop, std::move(*fd));
    ASSERT_TRUE(src) << src.error().message();
    auto dst = make_dest(loop, end_kind::pipe);
    ASSERT_TRUE(dst) << dst.error().message();
    test::side consumed;
    loop.spawn(test::consume(&dst->outer, 32, max_chunk, &consumed));
    copy_options o;
    o.pools = &pools;
    o.limit = std::uint64_t{4} << 20; // many times what the pipe holds
    const copy_result r = loop.block_on(copy_then_end(&dst->inner, &*src, o));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return consumed.done; }, 10s)));
    EXPECT_TRUE(r.ok()) << r.error.message();
    EXPECT_EQ(r.bytes, *o.limit);
    // Random bytes have no known checksum: the count is all there is to check.
    EXPECT_EQ(consumed.bytes, *o.limit);
    std::printf("[   INFO   ] /dev/urandom -> pipe went by %s\n", to_string(r.path));
}

// A source whose last bytes sit in a full pipe and whose end of stream has already
// arrived has nothing queued, so its receive queue looks like "wait for data" while the
// real wait is for the pipe. A one-slot pipe makes every splice fill it; the reader
// runs only once the copy is parked. (This hung CI once: the copy waited for a
// readiness edge its source had already delivered.)
class copy_full_pipe_at_eof_test : public test::transfer_pools_fixture,
                                   public ::testing::WithParamInterface<end_kind> {};

task<result<copy_result>> copy_within(event_loop* loop, stream* dst, stream* src, copy_options o,
                                      clock::duration limit) {
    co_return co_await with_timeout(*loop, copy_then_end(dst, src, o), limit);
}

TEST_P(copy_full_pipe_at_eof_test, ends_once_the_reader_drains_the_pipe) {
    transfer_pools& pools = make_pools();
    const auto data = std::span(big_data()).first(200'000);
    event_loop loop;
    auto src = make_source(loop, GetParam(), {}, 0);
    ASSERT_TRUE(src) << src.error().message();
    auto dst = make_dest(loop, end_kind::pipe);
    ASSERT_TRUE(dst) << dst.error().message();
    auto granted = sys::set_pipe_size(dst->inner.fd(), 4096);
    ASSERT_TRUE(granted) << granted.error().message();

    // Everything, then the end of stream, is queued before the copy starts.
    test::side produced;
    loop.block_on(produce(&src->outer, data, 41, &produced));
    ASSERT_TRUE(produced.done && !produced.error) << produced;

    test::side consumed;
    loop.spawn(test::consume(&dst->outer, 42, max_chunk, &consumed));
    copy_options o;
    o.pools = &pools;
    auto r = loop.block_on(copy_within(&loop, &dst->inner, &src->inner, o, 10s));
    ASSERT_TRUE(r) << "the copy did not end: " << r.error().message();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return consumed.done; }, 10s)));
    EXPECT_TRUE(r->ok()) << r->error.message();
    EXPECT_EQ(r->bytes, data.size());
    EXPECT_EQ(r->path, copy_path::splice);
    EXPECT_EQ(consumed.bytes, data.size());
    EXPECT_EQ(consumed.sum, sum_of(data));
}

INSTANTIATE_TEST_SUITE_P(sources, copy_full_pipe_at_eof_test,
                         ::testing::Values(end_kind::tcp, end_kind::unix_socket),
                         [](const ::testing::TestParamInfo<end_kind>& param_info) {
                             return std::string(param_info.param == end_kind::tcp ? "tcp" : "unix");
                         });

// ---- peer resets ----

enum class reset_side { source_peer, destination_peer };

struct reset_case {
    const char* name;
    end_kind from;
    end_kind to;
    copy_path force;
    reset_side who;
};

class copy_reset_test : public test::transfer_pools_fixture,
                        public ::testing::WithParamInterface<reset_case> {};

// A reset in the middle ends the copy with an error and the bytes moved so far. When
// the source's peer resets, every byte the copy counted reached the reader, intact.
TEST_P(copy_reset_test, ends_with_an_error_and_the_bytes_moved_so_far) {
    const reset_case& c = GetParam();
    transfer_pools& pools = make_pools();
    const auto& data = big_data();
    constexpr std::uint64_t reset_after = std::uint64_t{2} << 20;
    event_loop loop;
    auto src = make_source(loop, c.from, data, 41);
    ASSERT_TRUE(src) << src.error().message();
    auto dst = make_dest(loop, c.to);
    ASSERT_TRUE(dst) << dst.error().message();

    std::uint64_t delivered = 0;
    test::side produced, consumed;
    produced.done = consumed.done = true;
    if (src->outer.is_open()) {
        produced.done = false;
        if (c.who == reset_side::source_peer) {
            loop.spawn(
                produce_then_reset(&src->outer, data, 42, &delivered, reset_after, &produced));
        } else {
            loop.spawn(produce(&src->outer, data, 42, &produced));
        }
    }
    if (dst->outer.is_open()) {
        consumed.done = false;
        if (c.who == reset_side::destination_peer) {
            loop.spawn(consume_then_reset(&dst->outer, reset_after, &consumed));
        } else {
            loop.spawn(test::consume(&dst->outer, 43, max_chunk, &consumed));
        }
    }
    copy_options o;
    o.pools = &pools;
    o.path = c.force;
    o.progress = &delivered;
    const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
    // The producer may be stuck on a full socket now: closing the source frees it.
    src->inner.close();
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return produced.done && consumed.done; }, 30s)))
        << "produced " << produced << " consumed " << consumed;

    ASSERT_FALSE(r.ok()) << "the copy ended without error after " << r.bytes << " bytes";
    const int e = errno_of(r.error);
    std::printf("[   INFO   ] %s: %s after %llu bytes by %s\n", c.name, r.error.message().c_str(),
                static_cast<unsigned long long>(r.bytes), to_string(r.path));
    EXPECT_GT(r.bytes, 0u);
    EXPECT_LT(r.bytes, big_size);
    EXPECT_EQ(r.bytes, delivered) << "progress and result disagree";
    if (c.who == reset_side::source_peer) {
        EXPECT_EQ(e, ECONNRESET) << r.error.message();
        EXPECT_LE(r.bytes, produced.bytes);
        if (c.to == end_kind::file) {
            const auto got = read_file(dst->file->path());
            EXPECT_EQ(got.size(), r.bytes);
            EXPECT_EQ(sum_of(got), sum_of(std::span(data).first(got.size())));
        } else {
            EXPECT_EQ(consumed.bytes, r.bytes) << "the reader did not get every counted byte";
            EXPECT_EQ(consumed.sum, sum_of(std::span(data).first(consumed.bytes)));
        }
    } else {
        // The first write after the RST reports ECONNRESET; later ones EPIPE.
        EXPECT_TRUE(e == ECONNRESET || e == EPIPE) << r.error.message();
        EXPECT_GE(r.bytes, consumed.bytes);
        EXPECT_GE(consumed.bytes, reset_after);
        EXPECT_EQ(consumed.sum, sum_of(std::span(data).first(consumed.bytes)));
    }
}

const reset_case reset_cases[] = {
    {"tcp_to_tcp_auto_source_reset", end_kind::tcp, end_kind::tcp, copy_path::automatic,
     reset_side::source_peer},
    {"tcp_to_tcp_splice_source_reset", end_kind::tcp, end_kind::tcp, copy_path::splice,
     reset_side::source_peer},
    {"tcp_to_tcp_buffer_source_reset", end_kind::tcp, end_kind::tcp, copy_path::buffer,
     reset_side::source_peer},
    {"tcp_to_pipe_source_reset", end_kind::tcp, end_kind::pipe, copy_path::automatic,
     reset_side::source_peer},
    {"tcp_to_file_source_reset", end_kind::tcp, end_kind::file, copy_path::automatic,
     reset_side::source_peer},
    {"tcp_to_tcp_auto_destination_reset", end_kind::tcp, end_kind::tcp, copy_path::automatic,
     reset_side::destination_peer},
    {"tcp_to_tcp_splice_destination_reset", end_kind::tcp, end_kind::tcp, copy_path::splice,
     reset_side::destination_peer},
    {"tcp_to_tcp_buffer_destination_reset", end_kind::tcp, end_kind::tcp, copy_path::buffer,
     reset_side::destination_peer},
    {"pipe_to_tcp_destination_reset", end_kind::pipe, end_kind::tcp, copy_path::automatic,
     reset_side::destination_peer},
    {"unix_to_tcp_destination_reset", end_kind::unix_socket, end_kind::tcp, copy_path::automatic,
     reset_side::destination_peer},
    {"file_to_tcp_sendfile_destination_reset", end_kind::file, end_kind::tcp, copy_path::automatic,
     reset_side::destination_peer},
};

INSTANTIATE_TEST_SUITE_P(resets, copy_reset_test, ::testing::ValuesIn(reset_cases),
                         [](const ::testing::TestParamInfo<reset_case>& param_info) {
                             return std::string(param_info.param.name);
                         });

// ---- a path the kernel refuses falls back before any byte is lost ----

struct refused_case {
    const char* name;
    end_kind from;
    end_kind to;
    bool append; // the destination file is O_APPEND (splice, sendfile and
                 // copy_file_range all refuse it)
    copy_path force;
};

class copy_refused_test : public test::transfer_pools_fixture,
                          public ::testing::WithParamInterface<refused_case> {};

TEST_P(copy_refused_test, falls_back_to_the_buffer_path_and_moves_every_byte) {
    const refused_case& c = GetParam();
    transfer_pools& pools = make_pools();
    const auto data = std::span(big_data()).first(std::size_t{8} << 20);
    const auto header = std::span(big_data()).last(100);
    event_loop loop;
    auto src = make_source(loop, c.from, data, 51);
    ASSERT_TRUE(src) << src.error().message();
    auto dst = c.append ? make_dest(loop, c.to, header, O_APPEND) : make_dest(loop, c.to);
    ASSERT_TRUE(dst) << dst.error().message();

    test::side produced, consumed;
    produced.done = consumed.done = true;
    if (src->outer.is_open()) {
        produced.done = false;
        loop.spawn(produce(&src->outer, data, 52, &produced));
    }
    if (dst->outer.is_open()) {
        consumed.done = false;
        loop.spawn(test::consume(&dst->outer, 53, max_chunk, &consumed));
    }
    copy_options o;
    o.pools = &pools;
    o.path = c.force;
    const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return produced.done && consumed.done; }, 30s)))
        << "produced " << produced << " consumed " << consumed;

    EXPECT_TRUE(r.ok()) << r.error.message();
    EXPECT_EQ(r.bytes, data.size());
    EXPECT_EQ(r.path, copy_path::buffer) << "reported " << to_string(r.path);
    if (c.to == end_kind::file) {
        const auto got = read_file(dst->file->path());
        const std::size_t skip = c.append ? header.size() : 0;
        ASSERT_EQ(got.size(), skip + data.size());
        EXPECT_EQ(sum_of(std::span(got).first(skip)), sum_of(header.first(skip)));
        EXPECT_EQ(sum_of(std::span(got).subspan(skip)), sum_of(data));
    } else {
        EXPECT_EQ(consumed.bytes, data.size());
        EXPECT_EQ(consumed.sum, sum_of(data));
    }
}

const refused_case refused_cases[] = {
    {"pipe_to_append_file_splice", end_kind::pipe, end_kind::file, true, copy_path::splice},
    {"pipe_to_append_file_auto", end_kind::pipe, end_kind::file, true, copy_path::automatic},
    {"tcp_to_append_file_splice", end_kind::tcp, end_kind::file, true, copy_path::splice},
    {"tcp_to_append_file_auto", end_kind::tcp, end_kind::file, true, copy_path::automatic},
    {"file_to_append_file_auto", end_kind::file, end_kind::file, true, copy_path::automatic},
    {"file_to_append_file_copy_file_range", end_kind::file, end_kind::file, true,
     copy_path::copy_file_range},
    {"file_to_append_file_sendfile", end_kind::file, end_kind::file, true, copy_path::sendfile},
    {"file_to_append_file_splice", end_kind::file, end_kind::file, true, copy_path::splice},
    {"tcp_to_tcp_copy_file_range", end_kind::tcp, end_kind::tcp, false, copy_path::copy_file_range},
    {"pipe_to_tcp_copy_file_range", end_kind::pipe, end_kind::tcp, false,
     copy_path::copy_file_range},
};

INSTANTIATE_TEST_SUITE_P(refused, copy_refused_test, ::testing::ValuesIn(refused_cases),
                         [](const ::testing::TestParamInfo<refused_case>& param_info) {
                             return std::string(param_info.param.name);
                         });

// ---- file offsets ----

struct offset_case {
    const char* name;
    end_kind to;
    copy_path force;
};

class copy_offset_test : public test::transfer_pools_fixture,
                         public ::testing::WithParamInterface<offset_case> {};

// From a file whose offset is at N, copy() starts at N and leaves the offset after the
// last byte; a second copy goes on from there. With src_offset the fd's offset stays.
TEST_P(copy_offset_test, a_file_source_starts_at_its_offset_and_leaves_it_after_the_last_byte) {
    const offset_case& c = GetParam();
    transfer_pools& pools = make_pools();
    const auto data = std::span(big_data()).first(small_size);
    constexpr off_t start = 12'345;
    constexpr std::uint64_t limit = (std::uint64_t{1} << 20) + 3;
    constexpr off_t explicit_at = 777;
    constexpr off_t parked_at = 5;
    event_loop loop;
    auto src = make_source(loop, end_kind::file, data, 61);
    ASSERT_TRUE(src) << src.error().message();
    auto dst = make_dest(loop, c.to);
    ASSERT_TRUE(dst) << dst.error().message();
    test::side consumed;
    consumed.done = true;
    if (dst->outer.is_open()) {
        consumed.done = false;
        loop.spawn(test::consume(&dst->outer, 62, max_chunk, &consumed));
    }
    ASSERT_TRUE(sys::seek(src->inner.fd(), start));

    copy_options o;
    o.pools = &pools;
    o.path = c.force;
    o.limit = limit;
    // 1: from `start`, `limit` bytes. 2: on to the end of the file.
    auto first = loop.block_on(copies_then_end(&dst->inner, &src->inner, {o}));
    ASSERT_EQ(first.size(), 1u);
    EXPECT_TRUE(first[0].ok()) << first[0].error.message();
    EXPECT_EQ(first[0].bytes, limit);
    auto at = sys::tell(src->inner.fd());
    ASSERT_TRUE(at);
    EXPECT_EQ(*at, start + static_cast<off_t>(limit));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return consumed.done; }, 30s)));
    if (c.to == end_kind::file) {
        const auto got = read_file(dst->file->path());
        EXPECT_EQ(got.size(), limit);
        EXPECT_EQ(sum_of(got), sum_of(data.subspan(start, limit)));
    } else {
        EXPECT_EQ(consumed.bytes, limit);
        EXPECT_EQ(consumed.sum, sum_of(data.subspan(start, limit)));
    }

    // The rest, and then an explicit offset, into a fresh destination.
    auto dst2 = make_dest(loop, c.to);
    ASSERT_TRUE(dst2) << dst2.error().message();
    test::side consumed2;
    consumed2.done = true;
    if (dst2->outer.is_open()) {
        consumed2.done = false;
        loop.spawn(test::consume(&dst2->outer, 63, max_chunk, &consumed2));
    }
    copy_options rest = o;
    rest.limit.reset();
    copy_options explicit_offset = o;
    explicit_offset.src_offset = explicit_at;
    auto results = loop.block_on(copies_then_end(&dst2->inner, &src->inner, {rest}));
    ASSERT_EQ(results.size(), 1u);
    EXPECT_TRUE(results[0].ok()) << results[0].error.message();
    EXPECT_EQ(results[0].bytes, data.size() - static_cast<std::size_t>(start) - limit);
    at = sys::tell(src->inner.fd());
    ASSERT_TRUE(at);
    EXPECT_EQ(*at, static_cast<off_t>(data.size()));

    // Explicit offset: the fd's own offset does not move.
    ASSERT_TRUE(sys::seek(src->inner.fd(), parked_at));
    auto dst3 = make_dest(loop, c.to);
    ASSERT_TRUE(dst3) << dst3.error().message();
    test::side consumed3;
    consumed3.done = true;
    if (dst3->outer.is_open()) {
        consumed3.done = false;
        loop.spawn(test::consume(&dst3->outer, 64, max_chunk, &consumed3));
    }
    auto third = loop.block_on(copies_then_end(&dst3->inner, &src->inner, {explicit_offset}));
    ASSERT_EQ(third.size(), 1u);
    EXPECT_TRUE(third[0].ok()) << third[0].error.message();
    EXPECT_EQ(third[0].bytes, limit);
    at = sys::tell(src->inner.fd());
    ASSERT_TRUE(at);
    EXPECT_EQ(*at, parked_at) << "an explicit src_offset moved the fd's offset";
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return consumed2.done && consumed3.done; }, 30s)));

    const auto tail = data.subspan(static_cast<std::size_t>(start) + limit);
    const auto window = data.subspan(static_cast<std::size_t>(explicit_at), limit);
    if (c.to == end_kind::file) {
        EXPECT_EQ(sum_of(read_file(dst2->file->path())), sum_of(tail));
        EXPECT_EQ(sum_of(read_file(dst3->file->path())), sum_of(window));
    } else {
        EXPECT_EQ(consumed2.bytes, tail.size());
        EXPECT_EQ(consumed2.sum, sum_of(tail));
        EXPECT_EQ(consumed3.bytes, window.size());
        EXPECT_EQ(consumed3.sum, sum_of(window));
    }
}

const offset_case offset_cases[] = {
    {"to_tcp_sendfile", end_kind::tcp, copy_path::automatic},
    {"to_tcp_splice", end_kind::tcp, copy_path::splice},
    {"to_tcp_buffer", end_kind::tcp, copy_path::buffer},
    {"to_pipe_splice", end_kind::pipe, copy_path::automatic},
    {"to_file_copy_file_range", end_kind::file, copy_path::automatic},
    {"to_file_sendfile", end_kind::file, copy_path::sendfile},
    {"to_file_splice", end_kind::file, copy_path::splice},
    {"to_file_buffer", end_kind::file, copy_path::buffer},
};

INSTANTIATE_TEST_SUITE_P(offsets, copy_offset_test, ::testing::ValuesIn(offset_cases),
                         [](const ::testing::TestParamInfo<offset_case>& param_info) {
                             return std::string(param_info.param.name);
                         });

struct dst_offset_case {
    const char* name;
    end_kind from;
    copy_path force;
};

class copy_dst_offset_test : public test::transfer_pools_fixture,
                             public ::testing::WithParamInterface<dst_offset_case> {};

// Into a file whose offset is at N (after a prefix), copy() writes from N on and leaves
// the offset after the last byte; with dst_offset the fd's offset stays where it was.
TEST_P(copy_dst_offset_test, a_file_destination_is_written_at_its_offset) {
    const dst_offset_case& c = GetParam();
    transfer_pools& pools = make_pools();
    const auto data = std::span(big_data()).first(small_size);
    const auto prefix = std::span(big_data()).last(1000);
    constexpr off_t explicit_at = 500;
    event_loop loop;

    // 1: at the fd's offset (after the prefix).
    {
        auto src = make_source(loop, c.from, data, 71);
        ASSERT_TRUE(src) << src.error().message();
        auto dst = make_dest(loop, end_kind::file, prefix);
        ASSERT_TRUE(dst) << dst.error().message();
        test::side produced;
        produced.done = true;
        if (src->outer.is_open()) {
            produced.done = false;
            loop.spawn(produce(&src->outer, data, 72, &produced));
        }
        copy_options o;
        o.pools = &pools;
        o.path = c.force;
        const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return produced.done; }, 30s)));
        EXPECT_TRUE(r.ok()) << r.error.message();
        EXPECT_EQ(r.bytes, data.size());
        auto at = sys::tell(dst->inner.fd());
        ASSERT_TRUE(at);
        EXPECT_EQ(*at, static_cast<off_t>(prefix.size() + data.size()));
        const auto got = read_file(dst->file->path());
        ASSERT_EQ(got.size(), prefix.size() + data.size());
        EXPECT_EQ(sum_of(std::span(got).first(prefix.size())), sum_of(prefix));
        EXPECT_EQ(sum_of(std::span(got).subspan(prefix.size())), sum_of(data));
    }
    // 2: at an explicit offset inside the prefix; the fd's offset stays at 0.
    {
        auto src = make_source(loop, c.from, data, 73);
        ASSERT_TRUE(src) << src.error().message();
        auto dst = make_dest(loop, end_kind::file, prefix);
        ASSERT_TRUE(dst) << dst.error().message();
        ASSERT_TRUE(sys::seek(dst->inner.fd(), 0));
        test::side produced;
        produced.done = true;
        if (src->outer.is_open()) {
            produced.done = false;
            loop.spawn(produce(&src->outer, data, 74, &produced));
        }
        copy_options o;
        o.pools = &pools;
        o.path = c.force;
        o.dst_offset = explicit_at;
        const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
        ASSERT_TRUE(loop.block_on(test::wait_until(
            &loop, [&] { return produced.done; }, 30s)));
        EXPECT_TRUE(r.ok()) << r.error.message();
        EXPECT_EQ(r.bytes, data.size());
        auto at = sys::tell(dst->inner.fd());
        ASSERT_TRUE(at);
        EXPECT_EQ(*at, 0) << "an explicit dst_offset moved the fd's offset";
        const auto got = read_file(dst->file->path());
        ASSERT_EQ(got.size(), static_cast<std::size_t>(explicit_at) + data.size());
        EXPECT_EQ(sum_of(std::span(got).first(explicit_at)), sum_of(prefix.first(explicit_at)));
        EXPECT_EQ(sum_of(std::span(got).subspan(explicit_at)), sum_of(data));
    }
}

const dst_offset_case dst_offset_cases[] = {
    {"from_tcp_splice", end_kind::tcp, copy_path::automatic},
    {"from_tcp_buffer", end_kind::tcp, copy_path::buffer},
    {"from_pipe_splice", end_kind::pipe, copy_path::automatic},
    {"from_file_copy_file_range", end_kind::file, copy_path::automatic},
    {"from_file_sendfile", end_kind::file, copy_path::sendfile},
    {"from_file_buffer", end_kind::file, copy_path::buffer},
};

INSTANTIATE_TEST_SUITE_P(offsets, copy_dst_offset_test, ::testing::ValuesIn(dst_offset_cases),
                         [](const ::testing::TestParamInfo<dst_offset_case>& param_info) {
                             return std::string(param_info.param.name);
                         });

// ---- no pipe to be had ----

enum class no_pipe { pool_of_size_0, pipe_creation_fails };

struct no_pipe_case {
    const char* name;
    end_kind from;
    end_kind to;
    copy_path force;
};

class copy_no_pipe_test : public test::transfer_pools_fixture,
                          public ::testing::WithParamInterface<std::tuple<no_pipe, no_pipe_case>> {
};

// When the pool cannot lend a pipe, the copy moves every byte through buffers.
TEST_P(copy_no_pipe_test, moves_every_byte_through_the_buffer_path) {
    const auto& [why, c] = GetParam();
    pipe_pool_options po;
    if (why == no_pipe::pool_of_size_0) {
        po.max_total = 0;
    } else {
        po.make_pipe = []() -> result<sys::pipe_pair> { return fail_op("pipe2", EMFILE); };
    }
    transfer_pools& pools = make_pools(std::move(po));
    const auto data = std::span(big_data()).first(std::size_t{16} << 20);
    event_loop loop;
    auto src = make_source(loop, c.from, data, 81);
    ASSERT_TRUE(src) << src.error().message();
    auto dst = make_dest(loop, c.to);
    ASSERT_TRUE(dst) << dst.error().message();
    test::side produced, consumed;
    produced.done = consumed.done = true;
    if (src->outer.is_open()) {
        produced.done = false;
        loop.spawn(produce(&src->outer, data, 82, &produced));
    }
    if (dst->outer.is_open()) {
        consumed.done = false;
        loop.spawn(test::consume(&dst->outer, 83, max_chunk, &consumed));
    }
    copy_options o;
    o.pools = &pools;
    o.path = c.force;
    const copy_result r = loop.block_on(copy_then_end(&dst->inner, &src->inner, o));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return produced.done && consumed.done; }, 30s)))
        << "produced " << produced << " consumed " << consumed;

    EXPECT_TRUE(r.ok()) << r.error.message();
    EXPECT_EQ(r.bytes, data.size());
    EXPECT_EQ(r.path, copy_path::buffer) << "reported " << to_string(r.path);
    if (c.to == end_kind::file) {
        const auto got = read_file(dst->file->path());
        EXPECT_EQ(got.size(), data.size());
        EXPECT_EQ(sum_of(got), sum_of(data));
    } else {
        EXPECT_EQ(consumed.bytes, data.size());
        EXPECT_EQ(consumed.sum, sum_of(data));
    }
    const auto ps = pools.pipes.stats();
    EXPECT_EQ(ps.created, 0u);
    if (why == no_pipe::pool_of_size_0) {
        EXPECT_GE(ps.refused, 1u);
    } else {
        EXPECT_GE(ps.create_failures, 1u);
    }
}

const no_pipe_case no_pipe_cases[] = {
    {"tcp_to_tcp_auto", end_kind::tcp, end_kind::tcp, copy_path::automatic},
    {"tcp_to_tcp_splice", end_kind::tcp, end_kind::tcp, copy_path::splice},
    {"unix_to_unix_auto", end_kind::unix_socket, end_kind::unix_socket, copy_path::automatic},
    {"tcp_to_file_auto", end_kind::tcp, end_kind::file, copy_path::automatic},
    {"file_to_tcp_splice", end_kind::file, end_kind::tcp, copy_path::splice},
};

INSTANTIATE_TEST_SUITE_P(
    pools, copy_no_pipe_test,
    ::testing::Combine(::testing::Values(no_pipe::pool_of_size_0, no_pipe::pipe_creation_fails),
                       ::testing::ValuesIn(no_pipe_cases)),
    [](const ::testing::TestParamInfo<std::tuple<no_pipe, no_pipe_case>>& param_info) {
        return std::string(std::get<0>(param_info.param) == no_pipe::pool_of_size_0
                               ? "pool_of_size_0_"
                               : "pipe_creation_fails_") +
               std::get<1>(param_info.param).name;
    });

// ---- small things ----

TEST(copy_path_names, every_path_has_a_name) {
    EXPECT_STREQ(to_string(copy_path::automatic), "auto");
    EXPECT_STREQ(to_string(copy_path::splice), "splice");
    EXPECT_STREQ(to_string(copy_path::sendfile), "sendfile");
    EXPECT_STREQ(to_string(copy_path::copy_file_range), "copy_file_range");
    EXPECT_STREQ(to_string(copy_path::buffer), "buffer");
}

TEST_F(copy_test, choose_path_follows_the_table_in_design_md) {
    event_loop loop;
    auto pipe_end = make_dest(loop, end_kind::pipe);
    auto tcp_end = make_dest(loop, end_kind::tcp);
    auto unix_end = make_dest(loop, end_kind::unix_socket);
    auto file_end = make_dest(loop, end_kind::file);
    auto dev = make_source(loop, end_kind::dev_zero, {}, 0);
    ASSERT_TRUE(pipe_end && tcp_end && unix_end && file_end && dev);
    const copy_options o;
    const stream& p = pipe_end->inner;
    const stream& t = tcp_end->inner;
    const stream& u = unix_end->inner;
    const stream& f = file_end->inner;
    const stream& d = dev->inner;
    EXPECT_EQ(choose_path(t, p, o), copy_path::splice);
    EXPECT_EQ(choose_path(p, t, o), copy_path::splice);
    EXPECT_EQ(choose_path(p, f, o), copy_path::splice);
    EXPECT_EQ(choose_path(f, p, o), copy_path::splice);
    EXPECT_EQ(choose_path(t, u, o), copy_path::buffer) << "socket→socket starts buffered";
    EXPECT_EQ(choose_path(f, t, o), copy_path::splice);
    EXPECT_EQ(choose_path(t, f, o), copy_path::sendfile);
    EXPECT_EQ(choose_path(f, f, o), copy_path::copy_file_range);
    EXPECT_EQ(choose_path(t, d, o), copy_path::buffer);
    copy_options forced;
    forced.path = copy_path::buffer;
    EXPECT_EQ(choose_path(t, p, forced), copy_path::buffer);
}

// ---- sparse files: holes stay holes ----

// A sparse file's layout: `extents` data extents of random length (1 byte to 256 KiB) at
// random offsets, one per equal slot of `size` bytes, holes between them.
struct sparse_case {
    const char* name;
    std::size_t size;
    int extents;
    bool data_first;                    // the first extent starts at offset 0
    bool data_last;                     // the last extent ends at `size` (no trailing hole)
    std::optional<std::uint64_t> limit; // copy_options::limit
    std::optional<off_t> src_offset;    // copy_options::src_offset
};

// Writes a sparse file (pwrite of each extent into a file of `c.size` made by
// ftruncate) and returns its content, zeros in the holes.
std::vector<std::byte> write_sparse_file(const std::string& path, const sparse_case& c,
                                         std::uint64_t seed) {
    std::vector<std::byte> content(c.size);
    auto fd = sys::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC);
    EXPECT_TRUE(fd) << fd.error().message();
    if (!fd || ::ftruncate(fd->get(), static_cast<off_t>(c.size)) != 0) {
        ADD_FAILURE() << "cannot make " << path;
        return content;
    }
    test::size_source sizes(seed);
    const std::size_t slot = c.size / static_cast<std::size_t>(c.extents);
    for (int i = 0; i < c.extents; ++i) {
        const std::size_t len = sizes.between(1, std::size_t{256} << 10);
        std::size_t at = static_cast<std::size_t>(i) * slot + sizes.between(0, slot - len);
        if (i == 0 && c.data_first) {
            at = 0;
        }
        if (i == c.extents - 1 && c.data_last) {
            at = c.size - len;
        }
        const auto data = test::random_bytes(len, seed + static_cast<std::uint64_t>(i));
        std::copy(data.begin(), data.end(), content.begin() + static_cast<std::ptrdiff_t>(at));
        auto n = sys::pwrite(fd->get(), data.data(), len, static_cast<off_t>(at));
        EXPECT_TRUE(n && *n == len);
    }
    return content;
}

struct file_blocks {
    off_t size = 0;
    blkcnt_t blocks = 0; // 512-byte units
};

file_blocks blocks_of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return {st.st_size, st.st_blocks};
}

void PrintTo(const sparse_case& c, std::ostream* os) {
    *os << c.name;
}

class copy_sparse_test : public test::transfer_pools_fixture,
                         public ::testing::WithParamInterface<sparse_case> {};

// A file with a few data extents between large holes: the copy has the same bytes and
// about as many blocks as the source, not blocks for every byte of its size (copy_file_range
// alone writes each hole out as zeros on ext4 and tmpfs). The fds' offsets end where
// copy() promises, as for a dense file.
TEST_P(copy_sparse_test, keeps_the_holes_of_a_sparse_source) {
    const sparse_case& c = GetParam();
    transfer_pools& pools = make_pools();
    temp_file src_file(test::temp_path("copy-sparse-src"));
    const auto content = write_sparse_file(src_file.path(), c, 0x5ba45e);
    const file_blocks src_blocks = blocks_of(src_file.path());
    if (src_blocks.blocks * 512 >= src_blocks.size) {
        GTEST_SKIP() << "the file system under " << src_file.path() << " keeps no holes";
    }
    event_loop loop;
    auto src = open_file_end(loop, std::move(src_file), O_RDONLY);
    ASSERT_TRUE(src) << src.error().message();
    auto dst = make_dest(loop, end_kind::file);
    ASSERT_TRUE(dst) << dst.error().message();

    copy_options o;
    o.pools = &pools;
    o.limit = c.limit;
    o.src_offset = c.src_offset;
    const copy_result r = loop.block_on(copy(dst->inner, src->inner, o));
    ASSERT_TRUE(r.ok()) << r.error.message();
    const std::size_t from = static_cast<std::size_t>(c.src_offset.value_or(0));
    const std::size_t expect =
        std::min<std::uint64_t>(content.size() - from, c.limit.value_or(content.size()));
    EXPECT_EQ(r.bytes, expect);
    EXPECT_EQ(r.path, copy_path::copy_file_range);

    const auto got = read_file(dst->file->path());
    ASSERT_EQ(got.size(), expect);
    EXPECT_EQ(sum_of(got), sum_of(std::span(content).subspan(from, expect)));
    const file_blocks dst_blocks = blocks_of(dst->file->path());
    // The same extents, give or take a block at each end of each (a shifted start
    // moves them across block boundaries) and some file system metadata.
    const blkcnt_t slack = 2 * 8 * c.extents + 64;
    EXPECT_LE(dst_blocks.blocks, src_blocks.blocks + slack)
        << "holes were written out: " << dst_blocks.blocks * 512 << " bytes on disk for " << expect
        << " bytes of which at most " << src_blocks.blocks * 512 << " are data";

    auto src_at = sys::tell(src->inner.fd());
    auto dst_at = sys::tell(dst->inner.fd());
    ASSERT_TRUE(src_at && dst_at);
    EXPECT_EQ(*src_at, c.src_offset ? 0 : static_cast<off_t>(expect))
        << "an explicit src_offset moved the fd's offset, or the offset is not after the last byte";
    EXPECT_EQ(*dst_at, static_cast<off_t>(expect));
}

constexpr std::size_t sparse_size = std::size_t{24} << 20;

const sparse_case sparse_cases[] = {
    {"holes_between_and_at_both_ends", sparse_size, 4, false, false, std::nullopt, std::nullopt},
    {"data_at_both_ends", sparse_size, 5, true, true, std::nullopt, std::nullopt},
    {"a_limit_that_ends_in_a_hole", sparse_size, 3, true, false, (std::uint64_t{1} << 20) + 5,
     std::nullopt},
    {"a_limit_that_ends_in_data", sparse_size, 2, true, true, sparse_size - 100, std::nullopt},
    {"an_explicit_source_offset_in_a_hole", sparse_size, 4, false, true, std::nullopt, off_t{4097}},
};

INSTANTIATE_TEST_SUITE_P(sparse, copy_sparse_test, ::testing::ValuesIn(sparse_cases),
                         [](const ::testing::TestParamInfo<sparse_case>& param_info) {
                             return std::string(param_info.param.name);
                         });

// A destination that already holds bytes where the holes go (opened without O_TRUNC):
// skipping would leave its old bytes there, so every hole is written as zeros.
TEST_F(copy_test, a_sparse_source_over_old_bytes_writes_its_holes_as_zeros) {
    transfer_pools& pools = make_pools();
    const sparse_case layout{"", std::size_t{8} << 20, 3, false, false, std::nullopt, std::nullopt};
    temp_file src_file(test::temp_path("copy-sparse-src"));
    const auto content = write_sparse_file(src_file.path(), layout, 0x01d);
    event_loop loop;
    auto src = open_file_end(loop, std::move(src_file), O_RDONLY);
    ASSERT_TRUE(src) << src.error().message();
    const auto old = std::span(big_data()).first(layout.size + 1000);
    auto dst = make_dest(loop, end_kind::file, old);
    ASSERT_TRUE(dst) << dst.error().message();
    ASSERT_TRUE(sys::seek(dst->inner.fd(), 0));

    copy_options o;
    o.pools = &pools;
    const copy_result r = loop.block_on(copy(dst->inner, src->inner, o));
    ASSERT_TRUE(r.ok()) << r.error.message();
    EXPECT_EQ(r.bytes, content.size());
    const auto got = read_file(dst->file->path());
    ASSERT_EQ(got.size(), old.size()) << "copy() does not truncate";
    EXPECT_EQ(sum_of(std::span(got).first(content.size())), sum_of(content));
    EXPECT_EQ(sum_of(std::span(got).subspan(content.size())), sum_of(old.subspan(content.size())));
}

// Two copies on one loop, both always ready: the yield budget lets them take turns.
task<void> copy_into(stream* dst, stream* src, copy_options o, copy_result* out, bool* done) {
    *out = co_await copy(*dst, *src, o);
    *done = true;
}

task<void> sample_progress(event_loop* loop, const std::uint64_t* a, const std::uint64_t* b,
                           std::uint64_t* a_when_b_started) {
    while (*b == 0) {
        co_await yield(*loop);
    }
    *a_when_b_started = *a;
}

TEST_F(copy_test, the_yield_budget_lets_another_copy_run) {
    transfer_pools& pools = make_pools();
    const auto data = std::span(big_data()).first(std::size_t{32} << 20);
    event_loop loop;
    auto src1 = make_source(loop, end_kind::file, data, 91);
    auto src2 = make_source(loop, end_kind::file, data, 92);
    auto dst1 = make_dest(loop, end_kind::file);
    auto dst2 = make_dest(loop, end_kind::file);
    ASSERT_TRUE(src1 && src2 && dst1 && dst2);
    std::uint64_t p1 = 0;
    std::uint64_t p2 = 0;
    std::uint64_t p1_when_2_started = 0;
    copy_options o;
    o.pools = &pools;
    o.path = copy_path::buffer;
    o.yield_budget = std::size_t{1} << 20;
    copy_result r1, r2;
    bool d1 = false;
    bool d2 = false;
    o.progress = &p1;
    loop.spawn(copy_into(&dst1->inner, &src1->inner, o, &r1, &d1));
    o.progress = &p2;
    loop.spawn(copy_into(&dst2->inner, &src2->inner, o, &r2, &d2));
    loop.spawn(sample_progress(&loop, &p1, &p2, &p1_when_2_started));
    ASSERT_TRUE(loop.block_on(test::wait_until(
        &loop, [&] { return d1 && d2; }, 30s)));
    EXPECT_TRUE(r1.ok() && r2.ok());
    EXPECT_EQ(r1.bytes, data.size());
    EXPECT_EQ(r2.bytes, data.size());
    EXPECT_LT(p1_when_2_started, data.size() / 2) << "the first copy starved the second";
    EXPECT_EQ(sum_of(read_file(dst1->file->path())), sum_of(data));
    EXPECT_EQ(sum_of(read_file(dst2->file->path())), sum_of(data));
}

} // namespace
} // namespace zcio
