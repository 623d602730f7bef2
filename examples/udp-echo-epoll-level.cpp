// udp-echo-epoll-level: a UDP echo server on level-triggered epoll(7).
//
//   udp-echo-epoll-level [--port 9000] [--queue 64]      (port 0: the kernel picks one)
//
// Step two of the progression. epoll keeps the interest list in the kernel, so a wait
// costs the ready descriptors, not all of them (select() scans and copies every fd set
// each time). Level-triggered, like select(): epoll_wait() reports a descriptor for as
// long as it is ready, so reading a few datagrams per wake-up loses nothing.
//
// The price of level triggering: a UDP socket is nearly always writable, so with
// EPOLLOUT in the interest set every epoll_wait() would return at once and the loop
// would spin. EPOLLOUT is therefore switched on (epoll_ctl MOD) only while the queue
// holds echoes that a send refused with EAGAIN, and off again once it drained: one
// extra system call per transition, which edge triggering avoids (udp-echo-epoll-edge).
//
// Reads and writes are multiplexed through a bounded outgoing queue: EPOLLIN stays on,
// so reading goes on while echoes wait; a full queue drops (and counts) new datagrams.
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
            std::fprintf(stderr, "usage: udp-echo-epoll-level [--port N] [--queue N]\n");
            return 2;
        }
    }
    struct sigaction sa {};
    sa.sa_handler = on_signal; // no SA_RESTART: epoll_pwait() returns EINTR
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
        std::perror("udp-echo-epoll-level: socket/epoll_create1");
        return 1;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        std::perror("udp-echo-epoll-level: bind");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    std::printf("udp-echo-epoll-level: listening on 127.0.0.1:%u\n", ntohs(addr.sin_port));
    std::fflush(stdout);

    epoll_event ev{};
    ev.events = EPOLLIN; // level-triggered: no EPOLLET
    ev.data.fd = fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    bool want_out = false; // EPOLLOUT currently in the interest set
    auto set_want_out = [&](bool on) {
        if (on != want_out) {
            ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
            want_out = on;
        }
    };

    std::vector<slot> queue(queue_size);
    for (auto& s : queue) {
        s.data.resize(max_datagram);
    }
    std::size_t head = 0;
    std::size_t count = 0;
    std::vector<unsigned char> scratch(max_datagram);
    unsigned long long received = 0, echoed = 0, dropped = 0;

    // Sends queued echoes until the queue is empty or the socket says EAGAIN.
    auto flush = [&] {
        while (count > 0) {
            slot& s = queue[head];
            const ssize_t put = sendto(fd, s.data.data(), s.len, 0,
                                       reinterpret_cast<sockaddr*>(&s.peer), s.peer_len);
            if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                break;
            }
            if (put >= 0) {
                ++echoed;
            } else {
                ++dropped;
            }
            head = (head + 1) % queue.size();
            --count;
        }
        set_want_out(count > 0); // ask for EPOLLOUT only while something waits
    };

    epoll_event events[8];
    while (stop_requested == 0) {
        const int n = epoll_pwait(ep, events, 8, -1, &wait_mask);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            std::perror("udp-echo-epoll-level: epoll_wait");
            return 1;
        }
        for (int e = 0; e < n; ++e) {
            if ((events[e].events & (EPOLLIN | EPOLLERR)) != 0) {
                // Up to 16 per wake-up; level triggering reports the rest next time.
                for (int k = 0; k < 16; ++k) {
                    slot* s =
                        count < queue.size() ? &queue[(head + count) % queue.size()] : nullptr;
                    sockaddr_storage peer{};
                    socklen_t peer_len = sizeof peer;
                    const ssize_t got =
                        recvfrom(fd, s != nullptr ? s->data.data() : scratch.data(), max_datagram,
                                 0, reinterpret_cast<sockaddr*>(&peer), &peer_len);
                    if (got < 0) {
                        break; // EAGAIN: drained
                    }
                    ++received;
                    if (s == nullptr) {
                        ++dropped;
                        continue;
                    }
                    s->peer = peer;
                    s->peer_len = peer_len;
                    s->len = static_cast<std::size_t>(got);
                    ++count;
                }
            }
            // Try to send right away (usually it works); only EAGAIN turns EPOLLOUT on.
            if (count > 0) {
                flush();
            }
        }
    }
    std::fprintf(stderr, "udp-echo-epoll-level: received %llu echoed %llu dropped %llu\n", received,
                 echoed, dropped);
    close(ep);
    close(fd);
    return 0;
}
