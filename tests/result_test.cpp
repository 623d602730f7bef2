// Tests for result.hpp: op-named error categories, name_op, errno_of, would_block.
#include <zcio/result.hpp>

#include "test_support.hpp"

#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace zcio;

class result_test : public test::fd_leak_check {};

// An error category that is not errno-based, like a library's own codes.
class custom_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "custom"; }
    std::string message(int ev) const override { return "custom " + std::to_string(ev); }
};

const custom_category custom;

TEST_F(result_test, op_error_message_names_the_op_and_the_errno) {
    std::error_code ec = op_error("splice(socket→pipe)", ECONNRESET);
    EXPECT_EQ(ec.value(), ECONNRESET);
    EXPECT_STREQ(ec.category().name(), "splice(socket→pipe)");
    EXPECT_EQ(ec.message(), std::string("splice(socket→pipe): ") + std::strerror(ECONNRESET));
    EXPECT_EQ(ec, std::errc::connection_reset);
    EXPECT_NE(ec, std::errc::broken_pipe);
    EXPECT_EQ(ec.default_error_condition(), std::make_error_condition(std::errc::connection_reset));
}

TEST_F(result_test, one_category_per_op_string) {
    EXPECT_EQ(&op_error("read", EIO).category(), &op_error("read", EPIPE).category());
    EXPECT_NE(&op_error("read", EIO).category(), &op_error("write", EIO).category());
    EXPECT_EQ(op_error("read", EIO), op_error("read", EIO));

    // The same text at another address is the same operation.
    static char copy[] = "read";
    EXPECT_EQ(&op_error(copy, EIO).category(), &op_error("read", EIO).category());
}

TEST_F(result_test, interning_is_thread_safe) {
    static const char* const ops[] = {"race-a", "race-b", "race-c", "race-d"};
    std::vector<std::thread> threads;
    std::vector<const std::error_category*> seen(16);
    for (std::size_t i = 0; i < seen.size(); ++i) {
        threads.emplace_back([&, i] { seen[i] = &op_error(ops[i % 4], EIO).category(); });
    }
    for (auto& t : threads) {
        t.join();
    }
    for (std::size_t i = 0; i < seen.size(); ++i) {
        EXPECT_EQ(seen[i], seen[i % 4]);
        EXPECT_STREQ(seen[i]->name(), ops[i % 4]);
    }
}

TEST_F(result_test, name_op_relabels_errno_errors) {
    std::error_code plain = errno_error(EPIPE);
    std::error_code named = name_op("write(pipe)", plain);
    EXPECT_EQ(named.value(), EPIPE);
    EXPECT_STREQ(named.category().name(), "write(pipe)");
    EXPECT_EQ(named, std::errc::broken_pipe);

    std::error_code renamed = name_op("splice(pipe→socket)", named);
    EXPECT_STREQ(renamed.category().name(), "splice(pipe→socket)");
    EXPECT_EQ(renamed.value(), EPIPE);

    std::error_code generic = std::make_error_code(std::errc::timed_out);
    EXPECT_STREQ(name_op("connect", generic).category().name(), "connect");
    EXPECT_EQ(name_op("connect", generic), std::errc::timed_out);
}

TEST_F(result_test, name_op_leaves_other_errors_and_success_alone) {
    std::error_code mine{7, custom};
    EXPECT_EQ(name_op("read", mine), mine);
    EXPECT_EQ(name_op("read", std::error_code{}), std::error_code{});
    EXPECT_FALSE(name_op("read", std::error_code{}));
}

TEST_F(result_test, errno_of_reads_errno_categories_only) {
    EXPECT_EQ(errno_of(errno_error(EBADF)), EBADF);
    EXPECT_EQ(errno_of(std::make_error_code(std::errc::invalid_argument)), EINVAL);
    EXPECT_EQ(errno_of(op_error("splice", EINVAL)), EINVAL);
    EXPECT_EQ(errno_of(std::error_code{7, custom}), 0);
    EXPECT_EQ(errno_of(std::error_code{}), 0);
}

TEST_F(result_test, would_block_accepts_plain_and_named_eagain) {
    EXPECT_TRUE(would_block(errno_error(EAGAIN)));
    EXPECT_TRUE(would_block(op_error("recv", EWOULDBLOCK)));
    EXPECT_FALSE(would_block(op_error("recv", ECONNRESET)));
    EXPECT_FALSE(would_block(std::error_code{EAGAIN, custom}));

    result<int> r = fail_op("recv", EAGAIN);
    EXPECT_TRUE(would_block(r));
    EXPECT_STREQ(r.error().category().name(), "recv");
    EXPECT_FALSE(would_block(result<int>{3}));
    EXPECT_FALSE(would_block(result<int>{fail(EIO)}));
}

TEST_F(result_test, a_full_table_falls_back_to_system_category) {
    // Run in a child so the filled table does not leak into the other tests.
    EXPECT_EXIT(
        {
            static std::vector<std::string> names;
            names.reserve(400);
            bool ok = true;
            for (int i = 0; i < 400; ++i) {
                names.push_back("op-" + std::to_string(i));
                std::error_code ec = op_error(names.back().c_str(), ECONNRESET);
                ok = ok && ec == std::errc::connection_reset && errno_of(ec) == ECONNRESET &&
                     ec.message().find(std::strerror(ECONNRESET)) != std::string::npos;
            }
            ok = ok && op_error("op-399", EIO).category() == std::system_category();
            std::exit(ok ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "");
}

// A category of someone else's (as a library user's own errors would be).
class test_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "test"; }
    std::string message(int ev) const override { return "test error " + std::to_string(ev); }
};

std::error_code round_trip(std::error_code ec) {
    return {ec.value(), detail::category_at(detail::category_index(ec.category()))};
}

TEST_F(result_test, a_category_index_gives_back_the_same_category) {
    static const test_category mine;
    const std::error_code codes[] = {
        errno_error(ECONNRESET),
        std::make_error_code(std::errc::operation_canceled),
        op_error("splice(test)", EPIPE),
        {7, mine},
    };
    for (const auto& ec : codes) {
        const std::error_code back = round_trip(ec);
        EXPECT_EQ(back, ec) << ec.category().name();
        EXPECT_EQ(&back.category(), &ec.category()) << ec.category().name();
        EXPECT_EQ(back.message(), ec.message());
    }
    EXPECT_EQ(detail::category_index(mine), detail::category_index(mine)) << "interned once";
}

TEST_F(result_test, a_full_foreign_table_keeps_the_value_as_system_category) {
    EXPECT_EXIT(
        {
            static std::vector<test_category> many(100);
            bool ok = true;
            for (const auto& c : many) {
                const std::error_code back = round_trip({EIO, c});
                ok = ok && back.value() == EIO &&
                     (&back.category() == &c || back.category() == std::system_category());
            }
            // The first ones got slots; the last one did not.
            ok = ok && &round_trip({EIO, many.front()}).category() == &many.front() &&
                 round_trip({EIO, many.back()}).category() == std::system_category();
            std::exit(ok ? 0 : 1);
        },
        ::testing::ExitedWithCode(0), "");
}

} // namespace
