// udp-echo-epoll-edge: a UDP echo server on edge-triggered epoll(7) (EPOLLET).
//
//   udp-echo-epoll-edge [--port 9000] [--queue 64]      (port 0: the kernel picks one)
//
// Step three of the progression, and the model zcio's event loop starts from. Here the
// socket is registered once, for EPOLLIN | EPOLLOUT | EPOLLET, and never modified
// again: no epoll_ctl per state change (compare udp-echo-epoll-level). zcio's loop goes
// one step further and does modify a registration, rarely: when a wake-up brings only
// events that no coroutine waits for, it takes those directions out of the interest
// set (EPOLL_CTL_MOD, "muting"), and puts one back (MOD again) when a coroutine parks
// on it after EAGAIN (src/runtime/epoll_backend.cpp, docs/ARCHITECTURE.md). The price is
// that an edge is reported once: "the socket became readable". If the program reads
// one datagram and goes back to epoll_wait(), the others sit in the socket until some
// new datagram arrives and makes a new edge. So it keeps its own readiness flags,
// `readable` and `writable`, which the edges set and only EAGAIN clears: it reads until
// recvfrom() says EAGAIN, and sends until sendto() says EAGAIN or the queue is empty.
//
// Reading until EAGAIN has a trap: under a flood, the socket never runs dry, so a loop
// that reads until EAGAIN never returns to epoll_wait(), and with several sockets every
// other socket starves (and so does this socket's sending). This program caps a turn at
// `budget` datagrams; if the socket is still readable after that, it goes on with the
// sends and then asks epoll_wait() with a zero timeout, so other descriptors get their
// turn, and comes back to the socket right after without waiting for a new edge.
// (zcio's loop does the same: a task that used its budget yields and is resumed after
// the poller had a look.)
//
// Reads and writes are multiplexed through a bounded outgoing queue; a full queue drops
// (and counts) new datagrams, so reading goes on while echoes wait.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

namespace {

volatile std::sig_atomic_t stop_requested = 0;
void on_signal(int) {
    stop_requested = 1;
}

constexpr std::size_t max_datagram = 65536;
constexpr int budget = 64; // datagrams read per turn before others get a look

struct slot {
    sockaddr_storage peer;
    socklen_t peer_len;
    std::size_t len;
    std::vector<unsigned char> data;
};

bool parse_number(const char* text, unsigned long max, unsigned long* out) {
    char* end = nullptr;
    errno = 0;
    const unsigned long v = std::strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v > max) {
        return false;
    }
    *out = v;
    return true;
}

} // namespace

int main(int argc, char** argv) {
    unsigned long port = 9000;
    unsigned long queue_size = 64;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--port" && i + 1 < argc && parse_number(argv[i + 1], 65535, &port)) {
            ++i;
        } else if (a == "--queue" && i + 1 < argc &&
                   parse_number(argv[i + 1], 1 << 16, &queue_size) && queue_size > 0) {
            ++i;
        } else {
            std::fprintf(stderr, "usage: udp-echo-epoll-edge [--port N] [--queue N]\n");
            return 2;
        }
    }
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    // The signals stay blocked except inside epoll_pwait(), which unblocks them
    // atomically for the wait, so one that lands just before the wait is not missed.
    sigset_t blocked;
    sigset_t wait_mask;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGTERM);
    sigprocmask(SIG_BLOCK, &blocked, &wait_mask);

    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    const int ep = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0 || ep < 0) {
        std::perror("udp-echo-epoll-edge: socket/epoll_create1");
        return 1;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        std::perror("udp-echo-epoll-edge: bind");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    std::printf("udp-echo-epoll-edge: listening on 127.0.0.1:%u\n", ntohs(addr.sin_port));
    std::fflush(stdout);

    // Registered once for both directions; the edges only set the flags below.
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLET;
    ev.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    bool readable = false; // set by an edge, cleared only by EAGAIN
    bool writable = false;

    std::vector<slot> queue(queue_size);
    for (auto& s : queue) {
        s.data.resize(max_datagram);
    }
    std::size_t head = 0;
    std::size_t count = 0;
    std::vector<unsigned char> scratch(max_datagram);
    unsigned long long received = 0, echoed = 0, dropped = 0;

    epoll_event events[8];
    while (stop_requested == 0) {
        // Block only when there is nothing left to do; with work left over (the budget
        // ran out) just collect new edges and come back.
        const bool work_left = readable || (writable && count > 0);
        const int n = epoll_pwait(ep, events, 8, work_left ? 0 : -1, &wait_mask);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            std::perror("udp-echo-epoll-edge: epoll_wait");
            return 1;
        }
        for (int e = 0; e < n; ++e) {
            if ((events[e].events & (EPOLLIN | EPOLLERR)) != 0) {
                readable = true;
            }
            if ((events[e].events & (EPOLLOUT | EPOLLERR)) != 0) {
                writable = true;
            }
        }
        // Invariant: `readable` is false only after recvfrom() said EAGAIN, so a new
        // datagram is guaranteed to raise a new edge.
        for (int k = 0; readable && k < budget; ++k) {
            slot* s = count < queue.size() ? &queue[(head + count) % queue.size()] : nullptr;
            sockaddr_storage peer{};
            socklen_t peer_len = sizeof peer;
            const ssize_t got =
                recvfrom(fd, s != nullptr ? s->data.data() : scratch.data(), max_datagram, 0,
                         reinterpret_cast<sockaddr*>(&peer), &peer_len);
            if (got < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                    readable = false;
                }
                break;
            }
            ++received;
            if (s == nullptr) {
                ++dropped; // queue full: the datagram is read and dropped, reading goes on
                continue;
            }
            s->peer = peer;
            s->peer_len = peer_len;
            s->len = static_cast<std::size_t>(got);
            ++count;
        }
        // Same invariant for `writable`: cleared only by EAGAIN, so the next EPOLLOUT
        // edge (space freed in the socket's send buffer) is the one to wait for.
        while (writable && count > 0) {
            slot& s = queue[head];
            const ssize_t put = sendto(fd, s.data.data(), s.len, 0,
                                       reinterpret_cast<sockaddr*>(&s.peer), s.peer_len);
            if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                writable = false;
                break;
            }
            if (put < 0 && errno == EINTR) {
                continue;
            }
            if (put >= 0) {
                ++echoed;
            } else {
                ++dropped;
            }
            head = (head + 1) % queue.size();
            --count;
        }
    }
    std::fprintf(stderr, "udp-echo-epoll-edge: received %llu echoed %llu dropped %llu\n", received,
                 echoed, dropped);
    close(ep);
    close(fd);
    return 0;
}
