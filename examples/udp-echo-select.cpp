// udp-echo-select: a UDP echo server on select(2), the oldest readiness API.
//
//   udp-echo-select [--port 9000] [--queue 64]      (port 0: the kernel picks one)
//
// The first step of the progression (select → epoll level → epoll edge → our loop):
// raw system calls only. select() is level-triggered: it reports a descriptor every
// time it is called while the descriptor is ready, so the program can read one
// datagram per wake-up and still never miss one. Its costs: the fd_sets are rebuilt
// and copied into the kernel on every call, the kernel scans every descriptor up to the
// highest number given, and no descriptor may be >= FD_SETSIZE (1024).
//
// Reads and writes are multiplexed: datagrams read wait in a bounded outgoing queue and
// go out when the socket is writable. The socket is always in the read set, so reading
// goes on while echoes wait; when the queue is full a datagram is read and dropped (and
// counted), so memory never grows past the queue.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/select.h>
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

// One queued echo: the datagram and whom it goes back to.
struct slot {
    sockaddr_storage peer;
    socklen_t peer_len;
    std::size_t len;
    std::vector<unsigned char> data; // max_datagram bytes, allocated once
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
            std::fprintf(stderr, "usage: udp-echo-select [--port N] [--queue N]\n");
            return 2;
        }
    }

    // No SA_RESTART: a signal makes the wait fail with EINTR, and the loop looks at
    // the flag. The signals stay blocked except inside pselect(), which unblocks them
    // atomically for the wait: a signal that lands between the flag check and a plain
    // select() would otherwise be noticed only after the next datagram.
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
    sigset_t blocked;
    sigset_t wait_mask;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGINT);
    sigaddset(&blocked, SIGTERM);
    sigprocmask(SIG_BLOCK, &blocked, &wait_mask);

    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        std::perror("udp-echo-select: socket");
        return 1;
    }
    if (fd >= FD_SETSIZE) { // select() cannot watch it: FD_SET would write out of bounds
        std::fprintf(stderr, "udp-echo-select: descriptor %d is beyond FD_SETSIZE\n", fd);
        return 1;
    }
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        std::perror("udp-echo-select: bind");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    std::printf("udp-echo-select: listening on 127.0.0.1:%u\n", ntohs(addr.sin_port));
    std::fflush(stdout);

    // The queue: a ring of slots, head = oldest, count = how many wait.
    std::vector<slot> queue(queue_size);
    for (auto& s : queue) {
        s.data.resize(max_datagram);
    }
    std::size_t head = 0;
    std::size_t count = 0;
    std::vector<unsigned char> scratch(max_datagram); // where dropped datagrams land
    unsigned long long received = 0, echoed = 0, dropped = 0;

    while (stop_requested == 0) {
        fd_set readable;
        fd_set writable;
        FD_ZERO(&readable);
        FD_ZERO(&writable);
        FD_SET(fd, &readable); // always: reads never wait for writes
        if (count > 0) {
            FD_SET(fd, &writable); // only with something to send, or select() never sleeps
        }
        // A one-second timeout as a backstop: ThreadSanitizer runs signal handlers only
        // at calls it intercepts as blocking, and pselect() is not one of them, so
        // under TSan the flag is seen when the timeout returns.
        timespec backstop{1, 0};
        const int n = pselect(fd + 1, &readable, &writable, nullptr, &backstop, &wait_mask);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            std::perror("udp-echo-select: select");
            return 1;
        }
        if (FD_ISSET(fd, &readable)) {
            // Level-triggered: reading a few and leaving the rest is safe, select()
            // reports the socket again. Up to 16 per turn, so the sends get their turn.
            for (int k = 0; k < 16; ++k) {
                slot* s = count < queue.size() ? &queue[(head + count) % queue.size()] : nullptr;
                sockaddr_storage peer{};
                socklen_t peer_len = sizeof peer;
                const ssize_t got =
                    recvfrom(fd, s != nullptr ? s->data.data() : scratch.data(), max_datagram, 0,
                             reinterpret_cast<sockaddr*>(&peer), &peer_len);
                if (got < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                        std::perror("udp-echo-select: recvfrom");
                    }
                    break;
                }
                ++received;
                if (s == nullptr) {
                    ++dropped; // the queue is full: read anyway, so reading never stalls
                    continue;
                }
                s->peer = peer;
                s->peer_len = peer_len;
                s->len = static_cast<std::size_t>(got);
                ++count;
            }
        }
        if (count > 0 && FD_ISSET(fd, &writable)) {
            while (count > 0) {
                slot& s = queue[head];
                const ssize_t put = sendto(fd, s.data.data(), s.len, 0,
                                           reinterpret_cast<sockaddr*>(&s.peer), s.peer_len);
                if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                    break; // try again when select() says writable
                }
                if (put >= 0) {
                    ++echoed;
                } else {
                    ++dropped; // cannot be sent to that peer at all: give up on it
                }
                head = (head + 1) % queue.size();
                --count;
            }
        }
    }
    std::fprintf(stderr, "udp-echo-select: received %llu echoed %llu dropped %llu\n", received,
                 echoed, dropped);
    close(fd);
    return 0;
}
