// Tests for slab: blocks are distinct, aligned, reused after deallocate, and counted;
// objects made with make_in are constructed and destroyed once.
#include <zcio/slab.hpp>

#include <zcio/event_loop.hpp>
#include <zcio/sys.hpp>
#include <zcio/unique_fd.hpp>

#include "test_support.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

namespace zcio {
namespace {

class slab_test : public test::fd_leak_check {};

TEST_F(slab_test, blocks_are_distinct_aligned_and_writable) {
    slab s(40, 8);
    EXPECT_GE(s.block_size(), 40u);
    EXPECT_EQ(s.block_size() % alignof(std::max_align_t), 0u);
    std::vector<void*> got;
    std::set<std::uintptr_t> seen;
    for (int i = 0; i < 100; ++i) {
        void* p = s.allocate();
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % alignof(std::max_align_t), 0u);
        std::memset(p, i, s.block_size());
        EXPECT_TRUE(seen.insert(reinterpret_cast<std::uintptr_t>(p)).second) << "block lent twice";
        got.push_back(p);
    }
    EXPECT_EQ(s.in_use(), 100u);
    for (int i = 0; i < 100; ++i) { // every block kept what was written into it
        const auto* b = static_cast<const unsigned char*>(got[static_cast<std::size_t>(i)]);
        for (std::size_t k = 0; k < s.block_size(); ++k) {
            ASSERT_EQ(b[k], static_cast<unsigned char>(i));
        }
    }
    for (void* p : got) {
        s.deallocate(p);
    }
    EXPECT_EQ(s.in_use(), 0u);
}

#if !defined(__SANITIZE_ADDRESS__)
// (Under ASan the slab uses the plain heap, so there is no reuse to see.)
TEST_F(slab_test, freed_blocks_are_reused_and_capacity_follows_the_peak) {
    slab s(64, 16);
    std::vector<void*> first;
    for (int i = 0; i < 40; ++i) {
        first.push_back(s.allocate());
    }
    // Chunks are whole pages: 16 blocks of 64 bytes round up to one page of 64.
    EXPECT_EQ(s.capacity(), 64u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(first.front()) % 4096, 0u)
        << "chunk not page-aligned";
    std::set<void*> old(first.begin(), first.end());
    for (void* p : first) {
        s.deallocate(p);
    }
    std::vector<void*> second;
    for (int i = 0; i < 40; ++i) {
        void* p = s.allocate();
        EXPECT_TRUE(old.count(p) == 1) << "a new chunk was made while free blocks waited";
        second.push_back(p);
    }
    EXPECT_EQ(s.capacity(), 64u);
    for (void* p : second) {
        s.deallocate(p);
    }
}
#endif

struct counted final : slab_allocated<counted> {
    static inline int constructed = 0;
    std::uint64_t value;
    explicit counted(std::uint64_t v) : value(v) { ++constructed; }
    ~counted() { --constructed; }
};

struct throws_on_make final : slab_allocated<throws_on_make> {
    std::uint64_t pad[3]{};
    explicit throws_on_make(int) { throw std::runtime_error("no"); }
};

// `new` and `delete` of a slab_allocated type pair up in its slab, whatever the order.
TEST_F(slab_test, new_and_delete_of_a_slab_allocated_type_pair_up_under_random_use) {
    const std::size_t before = counted::alive();
    std::mt19937_64 rng(5);
    std::vector<counted*> live;
    for (int step = 0; step < 20'000; ++step) {
        if (live.empty() || rng() % 3 != 0) {
            live.push_back(new counted(rng()));
        } else {
            const std::size_t i = rng() % live.size();
            delete live[i];
            live[i] = live.back();
            live.pop_back();
        }
        ASSERT_EQ(static_cast<std::size_t>(counted::constructed), live.size());
        ASSERT_EQ(counted::alive(), before + live.size());
    }
    for (counted* c : live) {
        delete c;
    }
    EXPECT_EQ(counted::constructed, 0);
    EXPECT_EQ(counted::alive(), before);
    EXPECT_THROW((void)new throws_on_make(1), std::runtime_error);
    EXPECT_EQ(throws_on_make::alive(), 0u) << "a constructor that threw kept its block";
}

// The loops make their io_handles in the slab and take them back when they die, even
// when a forgotten handle outlives its loop.
TEST_F(slab_test, io_handles_come_from_the_loop_and_go_back) {
    const std::size_t before = io_handles_alive();
    auto loop_ptr = std::make_unique<event_loop>();
    event_loop& loop = *loop_ptr;
    std::vector<io_handle_ptr> handles;
    std::vector<unique_fd> fds;
    for (int i = 0; i < 100; ++i) {
        auto p = sys::pipe();
        ASSERT_TRUE(p) << p.error().message();
        auto h = loop.watch(p->read_end.get());
        ASSERT_TRUE(h) << h.error().message();
        handles.push_back(std::move(*h));
        fds.push_back(std::move(p->read_end));
        fds.push_back(std::move(p->write_end));
    }
    EXPECT_EQ(loop.registered_count(), 100u);
    EXPECT_EQ(io_handles_alive(), before + 100);
    handles[0]->forget(); // forgotten, still alive
    EXPECT_EQ(loop.registered_count(), 99u);
    EXPECT_EQ(io_handles_alive(), before + 100);
    io_handle_ptr outliving = std::move(handles[0]);
    handles.clear();
    EXPECT_EQ(loop.registered_count(), 0u);
    loop_ptr.reset();
    EXPECT_EQ(io_handles_alive(), before + 1);
    outliving.reset(); // after its loop: must not touch it
    EXPECT_EQ(io_handles_alive(), before);
}

} // namespace
} // namespace zcio
