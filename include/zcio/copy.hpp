// copy(): move bytes from one fd to another by the cheapest path the kernel offers.
// It is a short coroutine over one transfer (transfer.hpp), which holds the options,
// paths and counts; drive a transfer yourself to copy without a coroutine.
//
// What users must know:
//  - A file sent with sendfile or splice is referenced from the page cache, not copied:
//    if the file changes before the data leaves the socket buffer, the new bytes can be
//    sent. Do not modify a file while it is being served.
//  - A completed splice or sendfile means the bytes reached the destination socket's
//    send buffer, not the peer. Close or shut down the socket to learn about failures.
//  - copy() counts bytes even when it fails: the result always says how many bytes
//    were written to `dst` and by which path.
//  - Regular file → regular file (the copy_file_range path) keeps the holes of a sparse
//    source, as cp(1) does, when `dst` holds nothing from where the copy writes on (a
//    new or truncated file): only the data extents are copied, a hole at the end is
//    made by ftruncate. Holes count as copied bytes; they cost no I/O, so a rate limit
//    does not apply to them.
#pragma once

#include <zcio/stream.hpp>
#include <zcio/task.hpp>
#include <zcio/transfer.hpp>

namespace zcio {

// Copies from `src` to `dst` until end of stream, the limit, or an error.
// `dst` and `src` must outlive the copy (co_await it where you call it).
// Cancellation (destroying the awaiting task) is safe: a pipe still holding bytes is
// closed, never returned to its pool.
task<copy_result> copy(stream& dst, stream& src, copy_options opts = {});

} // namespace zcio
