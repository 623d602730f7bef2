// slab: fixed-size blocks for long-lived objects of one size (io_handles, relays).
//
// Why: a proxy that accepts a burst of connections allocates short-lived coroutine
// frames (the connect phase) and long-lived per-connection objects in turn. From the
// general heap they interleave, so once the frames are freed their pages stay pinned by
// the small objects between them and the memory cannot go back to the kernel. A slab
// keeps the long-lived objects packed in chunks of their own; the frames' pages then
// come free whole.
//
// `slab` is not thread-safe; `shared_slab` adds a mutex, and `slab_allocated<T>` gives
// a type one process-wide shared_slab. Freed blocks are kept for reuse, and a chunk is
// released only when the slab is destroyed, so a slab holds as many blocks as were ever
// live at once. Every block must be given back before the slab dies.
//
// Under AddressSanitizer the slab hands out plain heap blocks, so a use after free is
// still caught.
#pragma once

#include <cassert>
#include <cstddef>
#include <mutex>
#include <new>
#include <vector>

namespace zcio {

class slab {
public:
    // `block_size` bytes per block, rounded up to the alignment of max_align_t; at
    // least `blocks_per_chunk` blocks are allocated at a time. Chunks are mapped pages
    // of their own (mmap, the rest of the last page holds more blocks), never part of
    // the malloc heap: they do not pin heap pages that other memory freed, and pages of
    // a chunk nobody touched yet cost nothing.
    explicit slab(std::size_t block_size, std::size_t blocks_per_chunk = 64);
    ~slab();
    slab(const slab&) = delete;
    slab& operator=(const slab&) = delete;

    // A block of block_size() bytes, aligned for any object. Throws std::bad_alloc.
    [[nodiscard]] void* allocate();
    // Gives back a block that allocate() returned.
    void deallocate(void* p) noexcept;

    [[nodiscard]] std::size_t block_size() const noexcept { return block_size_; }
    // Blocks handed out and not given back.
    [[nodiscard]] std::size_t in_use() const noexcept { return in_use_; }
    // Blocks the chunks hold (in use or free).
    [[nodiscard]] std::size_t capacity() const noexcept { return chunks_.size() * per_chunk_; }

private:
    struct free_block {
        free_block* next;
    };

    std::size_t block_size_;
    std::size_t per_chunk_;
    free_block* free_ = nullptr;
    std::size_t in_use_ = 0;
    std::size_t chunk_bytes_;
    std::vector<std::byte*> chunks_; // each chunk_bytes_ long, mapped with mmap
};

// A slab shared by threads: the same, under a mutex. For objects made and destroyed
// once per connection (never per byte), where an uncontended lock costs little.
class shared_slab {
public:
    explicit shared_slab(std::size_t block_size, std::size_t blocks_per_chunk = 64)
        : slab_(block_size, blocks_per_chunk) {}

    [[nodiscard]] void* allocate() {
        const std::lock_guard lock(mutex_);
        return slab_.allocate();
    }
    void deallocate(void* p) noexcept {
        const std::lock_guard lock(mutex_);
        slab_.deallocate(p);
    }
    [[nodiscard]] std::size_t in_use() {
        const std::lock_guard lock(mutex_);
        return slab_.in_use();
    }

private:
    std::mutex mutex_;
    slab slab_;
};

// Derive T from slab_allocated<T> and `new T` / `delete` take T's blocks from one
// process-wide shared_slab. That slab is never destroyed, so an object may be freed
// at any time, on any thread, even during exit. T must be final (every block is
// sizeof(T) bytes).
template <class T>
class slab_allocated {
public:
    static void* operator new(std::size_t n) {
        assert(n <= sizeof(T));
        (void)n;
        return store().allocate();
    }
    static void operator delete(void* p) noexcept { store().deallocate(p); }
    // Objects of T alive in the process.
    static std::size_t alive() noexcept { return store().in_use(); }

private:
    static shared_slab& store() noexcept {
        static auto* s = new shared_slab(sizeof(T), 65536 / sizeof(T));
        return *s;
    }
};

} // namespace zcio
