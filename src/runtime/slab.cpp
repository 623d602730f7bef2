// slab: see include/zcio/slab.hpp.
#include <zcio/slab.hpp>

#include <cassert>
#include <cstddef>
#include <new>

#include <sys/mman.h>

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

constexpr std::size_t page = 4096;

} // namespace

slab::slab(std::size_t block_size, std::size_t blocks_per_chunk)
    : block_size_(round_up(block_size < sizeof(free_block) ? sizeof(free_block) : block_size,
                           alignof(std::max_align_t))),
      per_chunk_(0), chunk_bytes_(0) {
    chunk_bytes_ = round_up(block_size_ * (blocks_per_chunk == 0 ? 1 : blocks_per_chunk), page);
    per_chunk_ = chunk_bytes_ / block_size_;
}

slab::~slab() {
    // Blocks still out would dangle once their chunk goes.
    assert(in_use_ == 0 && "slab destroyed with blocks still in use");
    for (std::byte* c : chunks_) {
        ::munmap(c, chunk_bytes_);
    }
}

void* slab::allocate() {
#ifdef ZCIO_SLAB_PLAIN_HEAP
    void* p = ::operator new(block_size_);
    ++in_use_;
    return p;
#else
    if (free_ == nullptr) {
        // The chunk is page-aligned (mmap) and block_size_ a multiple of max_align_t's
        // alignment, so every block is aligned for any object.
        chunks_.reserve(chunks_.size() + 1); // before mapping: nothing leaks if this throws
        void* m = ::mmap(nullptr, chunk_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                         -1, 0);
        if (m == MAP_FAILED) {
            throw std::bad_alloc();
        }
        chunks_.push_back(static_cast<std::byte*>(m));
        std::byte* base = chunks_.back();
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
