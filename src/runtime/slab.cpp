// slab: see include/zcio/slab.hpp.
#include <zcio/slab.hpp>

#include <cassert>
#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define ZCIO_SLAB_PLAIN_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ZCIO_SLAB_PLAIN_HEAP 1
#endif
#endif

namespace zcio {

namespace {

constexpr std::size_t round_up(std::size_t n, std::size_t to) noexcept {
    return (n + to - 1) / to * to;
}

} // namespace

slab::slab(std::size_t block_size, std::size_t blocks_per_chunk)
    : block_size_(round_up(block_size < sizeof(free_block) ? sizeof(free_block) : block_size,
                           alignof(std::max_align_t))),
      per_chunk_(blocks_per_chunk == 0 ? 1 : blocks_per_chunk) {}

slab::~slab() {
    // Blocks still out would dangle once their chunk goes.
    assert(in_use_ == 0 && "slab destroyed with blocks still in use");
}

void* slab::allocate() {
#ifdef ZCIO_SLAB_PLAIN_HEAP
    void* p = ::operator new(block_size_);
    ++in_use_;
    return p;
#else
    if (free_ == nullptr) {
        // operator new[] of std::byte is aligned for max_align_t, and block_size_ is a
        // multiple of it, so every block is too.
        chunks_.emplace_back(new std::byte[block_size_ * per_chunk_]);
        std::byte* base = chunks_.back().get();
        for (std::size_t i = per_chunk_; i-- > 0;) {
            free_ = ::new (base + i * block_size_) free_block{free_};
        }
    }
    free_block* b = free_;
    free_ = b->next;
    ++in_use_;
    return b;
#endif
}

void slab::deallocate(void* p) noexcept {
    if (p == nullptr) {
        return;
    }
    assert(in_use_ > 0);
    --in_use_;
#ifdef ZCIO_SLAB_PLAIN_HEAP
    ::operator delete(p);
#else
    free_ = ::new (p) free_block{free_};
#endif
}

} // namespace zcio
