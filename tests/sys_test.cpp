// Tests for sys.hpp and unique_fd.hpp against the real kernel: pipes, loopback sockets,
// temp files, eventfd, timerfd, signalfd and epoll.
#include <zcio/sys.hpp>

#include "test_support.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using namespace zcio;
using namespace std::chrono_literals;

class sys_test : public test::fd_leak_check {};

// Helpers throw on failure; GoogleTest reports the exception and fails the test.
void require(bool ok, const std::string& what) {
    if (!ok) {
        throw std::runtime_error(what);
    }
}

template <class T>
T must(result<T> r, const char* what) {
    require(r.has_value(), std::string(what) + ": " + (r ? "" : r.error().message()));
    if constexpr (!std::is_void_v<T>) {
        return std::move(*r);
    }
}

#define MUST(expr) must((expr), #expr)

// Bytes moved, with would-block counted as nothing moved.
std::size_t moved(result<std::size_t> r, const char* what) {
    return would_block(r) ? 0 : must(std::move(r), what);
}

#define MOVED(expr) moved((expr), #expr)

bool wait_for(int fd, short events) {
    pollfd p{fd, events, 0};
    return ::poll(&p, 1, 5000) == 1;
}

bool has_cloexec(int fd) {
    return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0;
}
bool has_nonblock(int fd) {
    return (::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
}

bool is_closed(int fd) {
    errno = 0;
    return ::fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

sockaddr* as_sockaddr(sockaddr_in& a) {
    return reinterpret_cast<sockaddr*>(&a);
}

sockaddr_in loopback() {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

sockaddr_in local_address(int fd) {
    sockaddr_in a{};
    socklen_t len = sizeof a;
    MUST(sys::getsockname(fd, as_sockaddr(a), &len));
    return a;
}

unique_fd bound_socket(int type) {
    auto fd = MUST(sys::socket(AF_INET, type));
    auto addr = loopback();
    MUST(sys::bind(fd.get(), as_sockaddr(addr), sizeof addr));
    return fd;
}

// A connected TCP pair on 127.0.0.1 through the non-blocking connect protocol.
std::pair<unique_fd, unique_fd> tcp_pair() {
    auto listener = bound_socket(SOCK_STREAM);
    MUST(sys::listen(listener.get(), 1));
    auto addr = local_address(listener.get());
    auto client = MUST(sys::socket(AF_INET, SOCK_STREAM));
    auto c = sys::connect(client.get(), as_sockaddr(addr), sizeof addr);
    require(c || errno_of(c.error()) == EINPROGRESS, "connect: " + c.error().message());
    require(wait_for(listener.get(), POLLIN), "listener never became readable");
    auto server = MUST(sys::accept(listener.get()));
    require(wait_for(client.get(), POLLOUT), "connect never completed");
    require(!MUST(sys::socket_error(client.get())), "SO_ERROR after connect");
    return {std::move(client), std::move(server)};
}

// An unlinked temporary file holding `data`, offset back at 0.
unique_fd temp_file(std::span<const std::byte> data) {
    std::string path = test::temp_path("sys");
    auto fd = MUST(sys::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600));
    ::unlink(path.c_str());
    for (std::size_t off = 0; off < data.size();) {
        off += MUST(sys::write(fd.get(), data.data() + off, data.size() - off));
    }
    MUST(sys::seek(fd.get(), 0));
    return fd;
}

std::uint64_t file_checksum(int fd, std::size_t size) {
    std::vector<std::byte> buf(size);
    for (std::size_t off = 0; off < size;) {
        std::size_t n = MUST(sys::pread(fd, buf.data() + off, size - off, off_t(off)));
        require(n > 0, "short file");
        off += n;
    }
    return test::checksum_of(buf);
}

// Feeds `data` into `in` (unless it is -1: the source is already full) in random
// chunks, calls `move` to carry bytes across, and drains `out` in random chunks until
// `expected` bytes came out. Fails after 5 s without progress instead of hanging.
template <class Move>
std::uint64_t push_through(std::span<const std::byte> data, int in, int out, std::size_t expected,
                           Move move) {
    std::mt19937 rng(static_cast<unsigned>(data.size()));
    std::vector<std::byte> buf(100'000);
    test::checksum sum;
    std::size_t sent = 0;
    std::size_t received = 0;
    int idle_ms = 0;
    while (received < expected) {
        std::size_t progress = 0;
        if (in >= 0 && sent < data.size()) {
            std::size_t chunk = std::min<std::size_t>(rng() % 100'000 + 1, data.size() - sent);
            std::size_t n = MOVED(sys::write(in, data.data() + sent, chunk));
            sent += n;
            progress += n;
        }
        progress += move();
        std::size_t n = MOVED(sys::read(out, buf.data(), rng() % buf.size() + 1));
        sum.update({buf.data(), n});
        received += n;
        progress += n;
        if (progress == 0) {
            require(++idle_ms < 5000, "no progress for 5 s");
            ::poll(nullptr, 0, 1);
        } else {
            idle_ms = 0;
        }
    }
    return sum.value();
}

// Blocks a signal in this thread for the test's lifetime; any instance still pending at
// the end is consumed so that unblocking it cannot kill the process.
class blocked_signal {
public:
    explicit blocked_signal(int sig) {
        sigemptyset(&mask_);
        sigaddset(&mask_, sig);
        require(::pthread_sigmask(SIG_BLOCK, &mask_, &old_) == 0, "pthread_sigmask");
    }
    ~blocked_signal() {
        timespec zero{};
        while (::sigtimedwait(&mask_, nullptr, &zero) > 0) {
        }
        ::pthread_sigmask(SIG_SETMASK, &old_, nullptr);
    }
    blocked_signal(const blocked_signal&) = delete;
    blocked_signal& operator=(const blocked_signal&) = delete;
    const sigset_t& mask() const { return mask_; }

private:
    sigset_t mask_{};
    sigset_t old_{};
};

// ---- unique_fd ----

TEST_F(sys_test, unique_fd_moves_and_closes_exactly_once) {
    auto p = MUST(sys::pipe());
    const int r = p.read_end.get();
    const int w = p.write_end.get();

    unique_fd a(std::move(p.read_end));
    EXPECT_FALSE(p.read_end.valid());
    EXPECT_EQ(a.get(), r);

    unique_fd b;
    EXPECT_FALSE(b);
    b = std::move(a);
    EXPECT_FALSE(a);
    EXPECT_EQ(b.get(), r);

    unique_fd& alias = b;
    b = std::move(alias); // self-move keeps the descriptor
    EXPECT_EQ(b.get(), r);
    EXPECT_FALSE(is_closed(r));

    b = std::move(p.write_end); // assigning over a live descriptor closes it
    EXPECT_TRUE(is_closed(r));
    EXPECT_EQ(b.get(), w);

    int raw = b.release();
    EXPECT_FALSE(b);
    EXPECT_FALSE(is_closed(raw));

    b.reset(raw);
    b.reset(raw); // re-taking the same descriptor must not close it
    EXPECT_FALSE(is_closed(raw));
    b.reset();
    EXPECT_TRUE(is_closed(raw));
    b.reset(); // nothing to close

    int scoped = -1;
    {
        unique_fd d = MUST(sys::eventfd());
        scoped = d.get();
    }
    EXPECT_TRUE(is_closed(scoped));
}

// ---- factories ----

TEST_F(sys_test, factories_set_cloexec_and_nonblock) {
    auto p = MUST(sys::pipe());
    auto s = MUST(sys::socket(AF_INET, SOCK_STREAM));
    auto sp = MUST(sys::socketpair(AF_UNIX, SOCK_STREAM));
    auto [client, server] = tcp_pair();
    auto ev = MUST(sys::eventfd());
    auto tm = MUST(sys::timerfd());
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR2);
    auto sig = MUST(sys::signalfd(mask));
    for (int fd : {p.read_end.get(), p.write_end.get(), s.get(), sp.first.get(), sp.second.get(),
                   client.get(), server.get(), ev.get(), tm.get(), sig.get()}) {
        EXPECT_TRUE(has_cloexec(fd)) << "fd " << fd;
        EXPECT_TRUE(has_nonblock(fd)) << "fd " << fd;
    }

    auto ep = MUST(sys::epoll_create());
    EXPECT_TRUE(has_cloexec(ep.get()));

    // Regular files stay blocking: the kernel never reports them "not ready".
    auto file = temp_file({});
    EXPECT_TRUE(has_cloexec(file.get()));
    EXPECT_FALSE(has_nonblock(file.get()));

    auto copy = MUST(sys::dup(p.read_end.get()));
    EXPECT_NE(copy.get(), p.read_end.get());
    EXPECT_TRUE(has_cloexec(copy.get()));
}

TEST_F(sys_test, errors_are_plain_system_errors) {
    std::byte b{};
    auto r = sys::read(-1, &b, 1);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), errno_error(EBADF));
    EXPECT_EQ(r.error().category(), std::system_category());

    auto o = sys::open("/nonexistent/zcio", O_RDONLY);
    ASSERT_FALSE(o);
    EXPECT_EQ(o.error(), std::errc::no_such_file_or_directory);
}

// ---- pipes ----

TEST_F(sys_test, pipe_would_block_both_ways) {
    auto p = MUST(sys::pipe());
    std::array<std::byte, 4096> buf{};
    EXPECT_TRUE(would_block(sys::read(p.read_end.get(), buf.data(), buf.size())));

    std::size_t total = 0;
    for (;;) {
        auto n = sys::write(p.write_end.get(), buf.data(), buf.size());
        if (would_block(n)) {
            break;
        }
        total += MUST(std::move(n));
    }
    EXPECT_EQ(total, MUST(sys::get_pipe_size(p.write_end.get())));
    EXPECT_EQ(MUST(sys::bytes_readable(p.read_end.get())), total);
}

TEST_F(sys_test, poll_now_tells_each_end_apart) {
    auto p = MUST(sys::pipe());
    auto file = MUST(sys::open("/dev/null", O_RDONLY));
    const std::array<int, 3> fds{p.read_end.get(), p.write_end.get(), file.get()};
    std::array<sys::poll_state, 3> now{};
    MUST(sys::poll_now(fds, now));
    EXPECT_FALSE(now[0].readable) << "an empty pipe with a writer is not readable";
    EXPECT_TRUE(now[1].writable);
    EXPECT_TRUE(now[2].readable) << "files are always ready";

    // A one-page pipe holding one byte is full: its write end stops being writable.
    MUST(sys::set_pipe_size(p.write_end.get(), 4096));
    const std::byte one{1};
    MUST(sys::write(p.write_end.get(), &one, 1));
    MUST(sys::poll_now(fds, now));
    EXPECT_TRUE(now[0].readable);
    EXPECT_FALSE(now[1].writable);

    // End of stream counts as readable even with nothing queued.
    std::byte got{};
    MUST(sys::read(p.read_end.get(), &got, 1));
    p.write_end.reset();
    const std::array<int, 1> reader{p.read_end.get()};
    std::array<sys::poll_state, 1> r{};
    MUST(sys::poll_now(reader, r));
    EXPECT_TRUE(r[0].readable);

    std::array<sys::poll_state, 2> wrong{};
    EXPECT_EQ(sys::poll_now(reader, wrong).error(), std::errc::invalid_argument);
}

TEST_F(sys_test, pipe_size_is_rounded_up_and_reported) {
    auto p = MUST(sys::pipe());
    EXPECT_GT(MUST(sys::get_pipe_size(p.read_end.get())), 0U);
    // fcntl(2) F_SETPIPE_SZ: the kernel rounds up to a power-of-two number of pages.
    std::size_t granted = MUST(sys::set_pipe_size(p.write_end.get(), 100'000));
    EXPECT_GE(granted, 100'000U);
    EXPECT_EQ(granted & (granted - 1), 0U);
    EXPECT_EQ(MUST(sys::get_pipe_size(p.read_end.get())), granted);
    EXPECT_EQ(sys::set_pipe_size(p.write_end.get(), std::size_t{1} << 40).error(),
              std::errc::invalid_argument);
}

TEST_F(sys_test, set_nonblocking_toggles_the_flag) {
    auto p = MUST(sys::pipe());
    MUST(sys::set_nonblocking(p.read_end.get(), false));
    EXPECT_FALSE(MUST(sys::get_status_flags(p.read_end.get())) & O_NONBLOCK);
    MUST(sys::set_nonblocking(p.read_end.get(), true));
    EXPECT_TRUE(MUST(sys::get_status_flags(p.read_end.get())) & O_NONBLOCK);
}

// ---- zero-copy paths ----

TEST_F(sys_test, splice_pipe_to_pipe) {
    auto data = test::random_bytes((1 << 20) + 333, 1);
    auto a = MUST(sys::pipe());
    auto b = MUST(sys::pipe());
    auto sum = push_through(data, a.write_end.get(), b.read_end.get(), data.size(), [&] {
        return MOVED(sys::splice(a.read_end.get(), nullptr, b.write_end.get(), nullptr, 1 << 20,
                                 SPLICE_F_NONBLOCK));
    });
    EXPECT_EQ(sum, test::checksum_of(data));
}

TEST_F(sys_test, splice_socket_to_pipe_then_eof) {
    auto data = test::random_bytes((1 << 20) + 777, 2);
    auto [client, server] = tcp_pair();
    auto p = MUST(sys::pipe());
    auto sum = push_through(data, client.get(), p.read_end.get(), data.size(), [&] {
        return MOVED(sys::splice(server.get(), nullptr, p.write_end.get(), nullptr, 1 << 20,
                                 SPLICE_F_NONBLOCK));
    });
    EXPECT_EQ(sum, test::checksum_of(data));

    MUST(sys::shutdown(client.get(), SHUT_WR));
    ASSERT_TRUE(wait_for(server.get(), POLLIN));
    EXPECT_EQ(MUST(sys::splice(server.get(), nullptr, p.write_end.get(), nullptr, 1 << 20,
                               SPLICE_F_NONBLOCK)),
              0U);
}

TEST_F(sys_test, tee_duplicates_without_consuming) {
    auto data = test::random_bytes(40'000, 3);
    auto a = MUST(sys::pipe());
    auto b = MUST(sys::pipe());
    EXPECT_TRUE(
        would_block(sys::tee(a.read_end.get(), b.write_end.get(), 1 << 16, SPLICE_F_NONBLOCK)));
    ASSERT_EQ(MUST(sys::write(a.write_end.get(), data.data(), data.size())), data.size());
    EXPECT_EQ(MUST(sys::tee(a.read_end.get(), b.write_end.get(), 1 << 16, SPLICE_F_NONBLOCK)),
              data.size());
    for (int fd : {a.read_end.get(), b.read_end.get()}) {
        std::vector<std::byte> out(data.size());
        ASSERT_EQ(MUST(sys::read(fd, out.data(), out.size())), data.size());
        EXPECT_EQ(test::checksum_of(out), test::checksum_of(data));
    }
}

TEST_F(sys_test, sendfile_file_to_socket) {
    auto data = test::random_bytes((2 << 20) + 4321, 4);
    auto file = temp_file(data);
    auto [client, server] = tcp_pair();
    off_t off = 0;
    auto sum = push_through({}, -1, server.get(), data.size(), [&] {
        return MOVED(sys::sendfile(client.get(), file.get(), &off, data.size() - std::size_t(off)));
    });
    EXPECT_EQ(sum, test::checksum_of(data));
    EXPECT_EQ(off, off_t(data.size()));
    // sendfile(2): with an offset pointer the file's own offset is left alone.
    EXPECT_EQ(MUST(sys::tell(file.get())), 0);
}

TEST_F(sys_test, copy_file_range_file_to_file) {
    auto data = test::random_bytes((3 << 20) + 12345, 5);
    auto src = temp_file(data);
    auto dst = temp_file({});
    for (std::size_t done = 0; done < data.size();) {
        auto n = sys::copy_file_range(src.get(), nullptr, dst.get(), nullptr, data.size() - done);
        if (!n && (n.error() == std::errc::function_not_supported ||
                   n.error() == std::errc::operation_not_supported ||
                   n.error() == std::errc::cross_device_link)) {
            GTEST_SKIP() << "copy_file_range unsupported here: " << n.error().message();
        }
        std::size_t moved_now = MUST(std::move(n));
        ASSERT_GT(moved_now, 0U);
        done += moved_now;
    }
    EXPECT_EQ(MUST(sys::tell(src.get())), off_t(data.size()));
    EXPECT_EQ(file_checksum(dst.get(), data.size()), test::checksum_of(data));
}

TEST_F(sys_test, pread_pwrite_seek_tell) {
    auto file = temp_file(test::random_bytes(1000, 6));
    const char text[] = "hello";
    EXPECT_EQ(MUST(sys::pwrite(file.get(), text, 5, 100)), 5U);
    char back[5] = {};
    EXPECT_EQ(MUST(sys::pread(file.get(), back, 5, 100)), 5U);
    EXPECT_EQ(std::string(back, 5), "hello");
    EXPECT_EQ(MUST(sys::tell(file.get())), 0);
    EXPECT_EQ(MUST(sys::seek(file.get(), 100)), 100);
    EXPECT_EQ(MUST(sys::read(file.get(), back, 5)), 5U);
    EXPECT_EQ(std::string(back, 5), "hello");
    EXPECT_EQ(MUST(sys::tell(file.get())), 105);
}

// ---- descriptors ----

TEST_F(sys_test, kind_of_tells_sockets_pipes_and_files_apart) {
    auto p = MUST(sys::pipe());
    auto sp = MUST(sys::socketpair(AF_UNIX, SOCK_STREAM));
    auto file = temp_file({});
    auto null = MUST(sys::open("/dev/null", O_RDWR));
    EXPECT_EQ(MUST(sys::kind_of(sp.first.get())), sys::fd_kind::socket);
    EXPECT_EQ(MUST(sys::kind_of(p.read_end.get())), sys::fd_kind::pipe);
    EXPECT_EQ(MUST(sys::kind_of(p.write_end.get())), sys::fd_kind::pipe);
    EXPECT_EQ(MUST(sys::kind_of(file.get())), sys::fd_kind::regular_file);
    EXPECT_EQ(MUST(sys::kind_of(null.get())), sys::fd_kind::other);
    EXPECT_EQ(sys::kind_of(-1).error(), std::errc::bad_file_descriptor);
    EXPECT_STREQ(sys::to_string(sys::fd_kind::socket), "socket");
    EXPECT_STREQ(sys::to_string(sys::fd_kind::pipe), "pipe");
    EXPECT_STREQ(sys::to_string(sys::fd_kind::regular_file), "regular_file");
    EXPECT_STREQ(sys::to_string(sys::fd_kind::other), "other");
}

TEST_F(sys_test, count_open_fds_follows_opens_and_closes) {
    std::size_t before = MUST(sys::count_open_fds());
    EXPECT_EQ(before, test::open_fd_count());
    {
        auto p = MUST(sys::pipe());
        EXPECT_EQ(MUST(sys::count_open_fds()), before + 2);
    }
    EXPECT_EQ(MUST(sys::count_open_fds()), before);
}

// ---- sockets ----

TEST_F(sys_test, tcp_options_names_and_half_close) {
    auto [client, server] = tcp_pair();
    MUST(sys::set_int_option(client.get(), IPPROTO_TCP, TCP_NODELAY, 1));
    EXPECT_NE(MUST(sys::get_int_option(client.get(), IPPROTO_TCP, TCP_NODELAY)), 0);
    EXPECT_FALSE(MUST(sys::socket_error(server.get())));

    sockaddr_in peer{};
    socklen_t len = sizeof peer;
    MUST(sys::getpeername(server.get(), as_sockaddr(peer), &len));
    sockaddr_in mine = local_address(client.get());
    EXPECT_EQ(peer.sin_port, mine.sin_port);
    EXPECT_EQ(peer.sin_addr.s_addr, mine.sin_addr.s_addr);

    std::array<std::byte, 16> buf{};
    EXPECT_TRUE(would_block(sys::recv(server.get(), buf.data(), buf.size(), 0)));
    EXPECT_EQ(MUST(sys::send(client.get(), "ping", 4, MSG_NOSIGNAL)), 4U);
    ASSERT_TRUE(wait_for(server.get(), POLLIN));
    EXPECT_EQ(MUST(sys::recv(server.get(), buf.data(), buf.size(), 0)), 4U);

    MUST(sys::shutdown(client.get(), SHUT_WR));
    ASSERT_TRUE(wait_for(server.get(), POLLIN));
    EXPECT_EQ(MUST(sys::recv(server.get(), buf.data(), buf.size(), 0)), 0U);
}

TEST_F(sys_test, connect_refused_is_reported) {
    // A bound socket that never listens answers a SYN with RST.
    auto closed = bound_socket(SOCK_STREAM);
    auto addr = local_address(closed.get());
    auto client = MUST(sys::socket(AF_INET, SOCK_STREAM));
    auto c = sys::connect(client.get(), as_sockaddr(addr), sizeof addr);
    ASSERT_FALSE(c);
    // connect(2) on loopback may see the RST before it returns; otherwise EINPROGRESS,
    // and the refusal arrives as SO_ERROR once the socket is writable.
    if (c.error() == std::errc::connection_refused) {
        return;
    }
    ASSERT_EQ(c.error(), std::errc::operation_in_progress);
    ASSERT_TRUE(wait_for(client.get(), POLLOUT));
    EXPECT_EQ(MUST(sys::socket_error(client.get())), std::errc::connection_refused);
}

TEST_F(sys_test, udp_mmsg_batches_keep_each_datagram) {
    auto a = bound_socket(SOCK_DGRAM);
    auto b = bound_socket(SOCK_DGRAM);
    sockaddr_in to = local_address(b.get());
    const sockaddr_in from = local_address(a.get());

    constexpr std::size_t count = 8;
    std::mt19937 rng(7);
    std::vector<std::vector<std::byte>> grams;
    std::array<iovec, count> out_iov{};
    std::array<mmsghdr, count> out{};
    for (std::size_t i = 0; i < count; ++i) {
        grams.push_back(test::random_bytes(rng() % 1400 + 1, 100 + i));
        out_iov[i] = {grams[i].data(), grams[i].size()};
        out[i].msg_hdr.msg_iov = &out_iov[i];
        out[i].msg_hdr.msg_iovlen = 1;
        out[i].msg_hdr.msg_name = &to;
        out[i].msg_hdr.msg_namelen = sizeof to;
    }
    ASSERT_EQ(MUST(sys::sendmmsg(a.get(), out, 0)), count);

    std::array<std::array<std::byte, 2048>, 2 * count> bufs{};
    std::array<iovec, 2 * count> in_iov{};
    std::array<sockaddr_in, 2 * count> senders{};
    std::array<mmsghdr, 2 * count> in{};
    for (std::size_t i = 0; i < in.size(); ++i) {
        in_iov[i] = {bufs[i].data(), bufs[i].size()};
        in[i].msg_hdr.msg_iov = &in_iov[i];
        in[i].msg_hdr.msg_iovlen = 1;
        in[i].msg_hdr.msg_name = &senders[i];
        in[i].msg_hdr.msg_namelen = sizeof senders[i];
    }
    std::size_t got = 0;
    while (got < count) {
        ASSERT_TRUE(wait_for(b.get(), POLLIN));
        got += MOVED(sys::recvmmsg(b.get(), std::span(in).subspan(got), 0));
    }
    EXPECT_TRUE(would_block(sys::recvmmsg(b.get(), std::span(in).subspan(got), 0)));
    for (std::size_t i = 0; i < count; ++i) {
        ASSERT_EQ(in[i].msg_len, grams[i].size()) << "datagram " << i;
        EXPECT_EQ(test::checksum_of({bufs[i].data(), in[i].msg_len}), test::checksum_of(grams[i]));
        EXPECT_EQ(senders[i].sin_port, from.sin_port);
    }
}

// ---- eventfd, timerfd, signalfd, epoll ----

TEST_F(sys_test, eventfd_adds_and_resets) {
    auto ev = MUST(sys::eventfd());
    std::uint64_t v = 0;
    EXPECT_TRUE(would_block(sys::read(ev.get(), &v, sizeof v)));
    for (std::uint64_t add : {3U, 4U}) {
        EXPECT_EQ(MUST(sys::write(ev.get(), &add, sizeof add)), sizeof add);
    }
    EXPECT_EQ(MUST(sys::read(ev.get(), &v, sizeof v)), sizeof v);
    EXPECT_EQ(v, 7U);
    EXPECT_TRUE(would_block(sys::read(ev.get(), &v, sizeof v)));

    auto primed = MUST(sys::eventfd(5));
    EXPECT_EQ(MUST(sys::read(primed.get(), &v, sizeof v)), sizeof v);
    EXPECT_EQ(v, 5U);
}

TEST_F(sys_test, timerfd_fires_once_and_periodically) {
    auto tm = MUST(sys::timerfd());
    std::uint64_t expirations = 0;
    EXPECT_TRUE(would_block(sys::read(tm.get(), &expirations, sizeof expirations)));

    MUST(sys::timerfd_arm(tm.get(), 0ns)); // zero means "now", not "disarm"
    ASSERT_TRUE(wait_for(tm.get(), POLLIN));
    EXPECT_EQ(MUST(sys::read(tm.get(), &expirations, sizeof expirations)), sizeof expirations);
    EXPECT_EQ(expirations, 1U);

    MUST(sys::timerfd_arm(tm.get(), 1ms, 1ms));
    for (int i = 0; i < 2; ++i) {
        ASSERT_TRUE(wait_for(tm.get(), POLLIN));
        EXPECT_EQ(MUST(sys::read(tm.get(), &expirations, sizeof expirations)), sizeof expirations);
        EXPECT_GE(expirations, 1U);
    }
}

TEST_F(sys_test, signalfd_reads_a_blocked_signal) {
    blocked_signal blocked(SIGUSR1);
    auto sig = MUST(sys::signalfd(blocked.mask()));
    EXPECT_TRUE(would_block(sys::read_signal(sig.get())));
    ASSERT_EQ(::pthread_kill(::pthread_self(), SIGUSR1), 0);
    ASSERT_TRUE(wait_for(sig.get(), POLLIN));
    EXPECT_EQ(MUST(sys::read_signal(sig.get())), SIGUSR1);
    EXPECT_TRUE(would_block(sys::read_signal(sig.get())));
}

TEST_F(sys_test, epoll_add_wait_mod_del) {
    auto ep = MUST(sys::epoll_create());
    auto ev = MUST(sys::eventfd());
    int tag = 0;
    std::array<epoll_event, 4> events{};

    MUST(sys::epoll_add(ep.get(), ev.get(), EPOLLIN | EPOLLET, &tag));
    EXPECT_EQ(sys::epoll_add(ep.get(), ev.get(), EPOLLIN, &tag).error(), std::errc::file_exists);
    EXPECT_EQ(MUST(sys::epoll_wait(ep.get(), events, 0)), 0);

    std::uint64_t one = 1;
    MUST(sys::write(ev.get(), &one, sizeof one));
    ASSERT_EQ(MUST(sys::epoll_wait(ep.get(), events, 5000)), 1);
    EXPECT_EQ(events[0].data.ptr, &tag);
    EXPECT_TRUE(events[0].events & EPOLLIN);
    // Edge-triggered: no new edge, no new event.
    EXPECT_EQ(MUST(sys::epoll_wait(ep.get(), events, 0)), 0);

    MUST(sys::epoll_mod(ep.get(), ev.get(), EPOLLOUT, nullptr));
    ASSERT_EQ(MUST(sys::epoll_wait(ep.get(), events, 5000)), 1);
    EXPECT_EQ(events[0].data.ptr, nullptr);
    EXPECT_TRUE(events[0].events & EPOLLOUT);

    MUST(sys::epoll_del(ep.get(), ev.get()));
    EXPECT_EQ(MUST(sys::epoll_wait(ep.get(), events, 0)), 0);
    EXPECT_EQ(sys::epoll_del(ep.get(), ev.get()).error(), std::errc::no_such_file_or_directory);
}

} // namespace
