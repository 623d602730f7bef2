// transfer: the copy_file_range path between regular files, and the holes of sparse files.
//
// copy_file_range(2) writes the holes of its source out as zeros unless the file system
// shares extents (ext4 and tmpfs do not), so the copy of a 1 GiB file holding 4 KiB of
// data would take 1 GiB of disk. Like cp(1), the file→file path finds the data with
// lseek(SEEK_DATA/SEEK_HOLE) (lseek(2), Linux 3.1; a file system without hole
// information reports the whole file as data), copies only the data extents and leaves
// the holes as holes: unwritten bytes past a file's end read as zeros.
#include <zcio/transfer.hpp>

#include <algorithm>
#include <limits>

#include <sys/stat.h>
#include <unistd.h>

namespace zcio {

namespace {
constexpr off_t no_hole_known = std::numeric_limits<off_t>::max();
} // namespace

// Regular file → regular file: copy_file_range(2), which may share extents (reflink)
// or copy inside the kernel. While skipping holes, only the data extents.
transfer::next transfer::copy_file_range_step(stream& dst, stream& src) {
    while (remaining() > 0) {
        if (holes_ && ext_->src_off >= ext_->data_end) {
            skip_hole();
            if (remaining() == 0) {
                break;
            }
        }
        if (budget_spent()) {
            return next::yield;
        }
        std::size_t len = want(max_chunk());
        if (holes_ && ext_->data_end != no_hole_known) {
            len = static_cast<std::size_t>(std::min<std::uint64_t>(
                len, static_cast<std::uint64_t>(ext_->data_end - ext_->src_off)));
        }
        if (len = throttle(len); len == 0) {
            return next::until;
        }
        auto n = sys::copy_file_range(src.fd(), src_offp(), dst.fd(), dst_offp(), len);
        if (!n) {
            // EBADF also comes for an O_APPEND destination, which the other paths handle.
            const int e = errno_of(n.error());
            return refused_or_failed("copy_file_range", e, refuses_path(e) || e == EBADF);
        }
        if (*n == 0) {
            // 0 before any byte from a file that has bytes: files such as those in
            // /proc and /sys report size 0 to this call; let sendfile try.
            return !path_moved_ && src_has_bytes_at(src) ? next::fallback : next::done;
        }
        moved(*n, copy_path::copy_file_range);
    }
    return next::done;
}

bool transfer::src_has_bytes_at(const stream& src) const {
    struct stat st {};
    const off_t off = has_src_off_ || holes_ ? ext_->src_off : sys::tell(src.fd()).value_or(0);
    return ::fstat(src.fd(), &st) == 0 && st.st_size > off;
}

// A hole of `n` bytes skipped in the source and left as a hole in the destination: it
// reads back as the zeros it stands for, so it counts as copied. It costs no I/O, so
// the rate limiter and the yield budget do not see it, nor the fall-back rule.
void transfer::skipped(std::size_t n) noexcept {
    bytes_ += n;
    last_path_ = copy_path::copy_file_range;
    ext_->remaining -= n;
    ext_->src_off += static_cast<off_t>(n);
    ext_->dst_off += static_cast<off_t>(n);
    if (ext_->progress != nullptr) {
        *ext_->progress += n;
    }
}

// Starts skipping holes when that is worth it and safe: both ends are regular files,
// the source has fewer blocks than its size needs (a dense file costs two fstat calls
// and nothing more), and the destination holds nothing from where the copy writes on
// (a skipped range reads as zeros only past its end of file). From then on the path
// passes explicit positions to copy_file_range: the caller's offsets, or the fds' own.
bool transfer::start_skipping_holes(stream& dst, stream& src) {
    struct stat src_st {};
    struct stat dst_st {};
    if (::fstat(src.fd(), &src_st) != 0 || ::fstat(dst.fd(), &dst_st) != 0 ||
        !S_ISREG(src_st.st_mode) || !S_ISREG(dst_st.st_mode)) {
        return false;
    }
    constexpr off_t block = 512; // st_blocks counts 512-byte units (stat(2))
    if (src_st.st_blocks * block >= src_st.st_size) {
        return false;
    }
    auto src_at = sys::tell(src.fd());
    auto dst_at = has_dst_off_ ? zcio::result<off_t>(ext_->dst_off) : sys::tell(dst.fd());
    if (!src_at || !dst_at || dst_st.st_size > *dst_at) {
        return false;
    }
    ext_->src_fd_was = *src_at;
    ext_->src_fd = src.fd(); // for stop_skipping_holes(), which may run without the ends
    ext_->dst_fd = dst.fd();
    ext_->data_end = 0; // look for data at once
    ext_->src_off = has_src_off_ ? ext_->src_off : *src_at;
    ext_->dst_off = *dst_at;
    return true;
}

// At a hole of the source (or past the current data extent): jumps to the next data
// and notes where it ends. When only a hole is left up to the end of the file, jumps
// to the end of the file. The jumps count as copied (skipped()).
void transfer::skip_hole() {
    const int fd = ext_->src_fd;
    const off_t at = ext_->src_off;
    const off_t data = ::lseek(fd, at, SEEK_DATA);
    if (data < 0) {
        struct stat st {};
        ext_->data_end = no_hole_known; // copy_file_range finds the end (or data appended)
        if (errno == ENXIO && ::fstat(fd, &st) == 0 && st.st_size > at) {
            // ENXIO: nothing but a hole from `at` to the end of the file.
            skipped(static_cast<std::size_t>(
                std::min<std::uint64_t>(static_cast<std::uint64_t>(st.st_size - at), remaining())));
        }
        return;
    }
    if (data > at) {
        skipped(static_cast<std::size_t>(
            std::min<std::uint64_t>(static_cast<std::uint64_t>(data - at), remaining())));
    }
    const off_t hole = remaining() > 0 ? ::lseek(fd, ext_->src_off, SEEK_HOLE) : -1;
    ext_->data_end = hole > ext_->src_off ? hole : no_hole_known;
}

// Ends hole skipping: the destination gets the size the copy reached (a skipped hole
// at its end wrote nothing), each fd's offset goes where copy() promises (after the
// last byte, or where it was with an explicit offset), and the positions are the
// caller's again.
void transfer::stop_skipping_holes() {
    holes_ = false;
    struct stat st {};
    if (::fstat(ext_->dst_fd, &st) == 0 && st.st_size < ext_->dst_off) {
        if (::ftruncate(ext_->dst_fd, ext_->dst_off) != 0 && !error()) {
            set_error(op_error("ftruncate", errno));
        }
    }
    (void)sys::seek(ext_->src_fd, has_src_off_ ? ext_->src_fd_was : ext_->src_off);
    if (!has_dst_off_) {
        (void)sys::seek(ext_->dst_fd, ext_->dst_off);
    }
}

} // namespace zcio
