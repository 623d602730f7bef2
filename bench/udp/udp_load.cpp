// udp_load: a closed-loop UDP echo load generator for loopback benchmarks.
//
//   udp_load --ports A[-B] [--size 64] [--seconds 3] [--window 64] [--batch 64]
//            [--gso] [--gro] [--server-pid PID] [--timeout-ms 100] [--json]
//
// One socket on 127.0.0.1 sends datagrams of --size bytes round-robin over the ports
// with sendmmsg, never more than --window outstanding, and reads the echoes with
// recvmmsg. Every echo is checked: a per-run cookie, the length, the sequence number
// and a byte pattern that depends on it. `sent = echoed + lost`: loopback keeps one
// flow (this socket, one server port) in order, so an echo of datagram N means every
// datagram sent before N to that port and not yet echoed was lost; one not echoed
// within --timeout-ms is lost too. An echo that arrives after it was counted lost is
// "late"; one whose content does not match is "bad".
//
// --gso sends runs of datagrams to one port as UDP_SEGMENT messages (up to 64 per
// message); --gro turns UDP_GRO on and cuts coalesced echoes apart. With --server-pid
// it reports the server's CPU seconds (utime + stime from /proc/PID/stat, 10 ms ticks)
// per million echoed datagrams, and the drops of the server's sockets (/proc/net/udp).
// Single-threaded: on a 2-core machine the server gets the other core.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr std::size_t header = 16; // cookie u32, size u32, seq u64
constexpr std::size_t pattern_period = 251;
constexpr std::size_t max_payload = 65507;
constexpr std::size_t max_batch = 1024;
constexpr std::size_t gso_max_segments = 64;

struct options {
    int port_first = 0, port_last = 0;
    std::size_t size = 64, window = 64, batch = 64;
    double seconds = 3;
    int timeout_ms = 100;
    long server_pid = 0;
    bool gso = false, gro = false, json = false;
};

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "udp_load: %s\n", msg.c_str());
    std::exit(2);
}

long number(const char* opt, const char* text, long lo, long hi) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < lo || v > hi) {
        die(std::string(opt) + ": expected an integer in [" + std::to_string(lo) + ", " +
            std::to_string(hi) + "], got '" + text + "'");
    }
    return v;
}

options parse(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string_view a = argv[i];
        auto value = [&]() -> const char* {
            if (i + 1 >= argc) {
                die(std::string(a) + " needs a value");
            }
            return argv[++i];
        };
        if (a == "--ports" || a == "--port") {
            std::string v = value();
            const auto dash = v.find('-');
            o.port_first = static_cast<int>(number("--ports", v.substr(0, dash).c_str(), 1, 65535));
            o.port_last = dash == std::string::npos
                              ? o.port_first
                              : static_cast<int>(number("--ports", v.substr(dash + 1).c_str(),
                                                        o.port_first, 65535));
        } else if (a == "--size") {
            o.size = static_cast<std::size_t>(number("--size", value(), header, max_payload));
        } else if (a == "--seconds") {
            const char* v = value();
            char* end = nullptr;
            o.seconds = std::strtod(v, &end);
            if (*end != '\0' || !(o.seconds >= 0.1 && o.seconds <= 3600)) {
                die("--seconds: expected 0.1 to 3600");
            }
        } else if (a == "--window") {
            o.window = static_cast<std::size_t>(number("--window", value(), 1, 1 << 20));
        } else if (a == "--batch") {
            o.batch = static_cast<std::size_t>(number("--batch", value(), 1, max_batch));
        } else if (a == "--timeout-ms") {
            o.timeout_ms = static_cast<int>(number("--timeout-ms", value(), 1, 60000));
        } else if (a == "--server-pid") {
            o.server_pid = number("--server-pid", value(), 1, 1L << 30);
        } else if (a == "--gso") {
            o.gso = true;
        } else if (a == "--gro") {
            o.gro = true;
        } else if (a == "--json") {
            o.json = true;
        } else {
            die("unknown argument '" + std::string(a) +
                "' (see the top of bench/udp/udp_load.cpp)");
        }
    }
    if (o.port_first == 0) {
        die("--ports A[-B] is required");
    }
    return o;
}

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// utime + stime + cutime + cstime of `pid`, in clock ticks; -1 when it is gone.
long long cpu_ticks(long pid) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto close = s.rfind(')');
    if (close == std::string::npos) {
        return -1;
    }
    std::istringstream in(s.substr(close + 2));
    std::string field;
    long long sum = 0;
    for (int idx = 3; idx <= 17 && in >> field; ++idx) {
        if (idx >= 14) {
            sum += std::atoll(field.c_str());
        }
    }
    return sum;
}

// Sum of the drops column of /proc/net/udp for local ports in [lo, hi].
unsigned long long udp_drops(int lo, int hi) {
    std::ifstream f("/proc/net/udp");
    std::string line;
    std::getline(f, line);
    unsigned long long sum = 0;
    while (std::getline(f, line)) {
        unsigned port = 0;
        if (std::sscanf(line.c_str(), " %*d: %*8x:%4x", &port) != 1 ||
            static_cast<int>(port) < lo || static_cast<int>(port) > hi) {
            continue;
        }
        const auto last = line.find_last_not_of(' ');
        const auto start = line.find_last_of(' ', last);
        sum += std::strtoull(line.c_str() + start + 1, nullptr, 10);
    }
    return sum;
}

double own_cpu() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

volatile std::sig_atomic_t interrupted = 0;
void on_signal(int) {
    interrupted = 1;
}

} // namespace

int main(int argc, char** argv) {
    const options o = parse(argc, argv);
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);

    const int ports = o.port_last - o.port_first + 1;
    std::vector<sockaddr_in> targets(static_cast<std::size_t>(ports));
    for (int i = 0; i < ports; ++i) {
        targets[static_cast<std::size_t>(i)] = sockaddr_in{};
        targets[static_cast<std::size_t>(i)].sin_family = AF_INET;
        targets[static_cast<std::size_t>(i)].sin_port =
            htons(static_cast<std::uint16_t>(o.port_first + i));
        targets[static_cast<std::size_t>(i)].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    }
    const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        die(std::string("socket: ") + std::strerror(errno));
    }
    // A big receive buffer, so echoes are never dropped on this side.
    int rcvbuf = 16 << 20;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    }
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) < 0) {
        die(std::string("bind: ") + std::strerror(errno));
    }
    if (o.gro) {
        int one = 1;
        if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) < 0) {
            die(std::string("UDP_GRO: ") + std::strerror(errno));
        }
    }
    std::size_t segs = 1;
    if (o.gso) {
        segs = std::min(gso_max_segments, max_payload / o.size);
        if (segs < 2) {
            die("--gso: --size leaves room for one datagram per message");
        }
    }

    const auto cookie =
        static_cast<std::uint32_t>(now_ns() ^ (static_cast<std::int64_t>(getpid()) << 16)) | 1U;
    std::vector<unsigned char> pattern(pattern_period + o.size);
    for (std::size_t i = 0; i < pattern.size(); ++i) {
        pattern[i] = static_cast<unsigned char>(i * 131 + (i >> 8) * 7 + 17);
    }
    auto fill = [&](unsigned char* p, std::uint64_t seq) {
        const auto n = static_cast<std::uint32_t>(o.size);
        std::memcpy(p, &cookie, 4);
        std::memcpy(p + 4, &n, 4);
        std::memcpy(p + 8, &seq, 8);
        std::memcpy(p + header, pattern.data() + seq % pattern_period, o.size - header);
    };

    // Outstanding datagrams per port, oldest first: a ring of (seq, sent_ns) each.
    struct pending {
        std::uint64_t seq;
        std::int64_t sent_ns;
    };
    struct flow {
        std::vector<pending> ring;
        std::size_t head = 0, count = 0;
    };
    std::vector<flow> flows(static_cast<std::size_t>(ports));
    for (auto& f : flows) {
        f.ring.resize(o.window);
    }
    std::size_t outstanding = 0;
    std::uint64_t next_seq = 0;
    unsigned long long sent = 0, echoed = 0, lost = 0, late = 0, bad = 0;
    unsigned long long send_calls = 0, recv_calls = 0, polls = 0;

    std::vector<mmsghdr> txm(o.batch), rxm(o.batch);
    std::vector<iovec> txv(o.batch), rxv(o.batch);
    std::vector<sockaddr_in> from(o.batch);
    std::vector<unsigned char> txbuf(o.batch * o.size);
    const std::size_t rx_len = o.gro ? 65536 : o.size + 1; // one spare byte shows MSG_TRUNC
    std::vector<unsigned char> rxbuf(o.batch * rx_len);
    union control {
        char buf[CMSG_SPACE(sizeof(int))];
        cmsghdr align;
    };
    std::vector<control> txc(o.batch), rxc(o.batch);
    unsigned rr = 0;

    auto on_echo = [&](const unsigned char* p, std::size_t len, int port) {
        std::uint32_t c = 0, n = 0;
        std::uint64_t seq = 0;
        if (len != o.size || (std::memcpy(&c, p, 4), c != cookie)) {
            ++bad;
            return;
        }
        std::memcpy(&n, p + 4, 4);
        std::memcpy(&seq, p + 8, 8);
        if (n != o.size || seq >= next_seq ||
            std::memcmp(p + header, pattern.data() + seq % pattern_period, o.size - header) != 0) {
            ++bad;
            return;
        }
        const int idx = port - o.port_first;
        if (idx < 0 || idx >= ports) {
            ++bad;
            return;
        }
        flow& f = flows[static_cast<std::size_t>(idx)];
        // In order per flow: everything older than `seq` still waiting was lost.
        while (f.count > 0 && f.ring[f.head].seq < seq) {
            f.head = (f.head + 1) % f.ring.size();
            --f.count;
            --outstanding;
            ++lost;
        }
        if (f.count > 0 && f.ring[f.head].seq == seq) {
            f.head = (f.head + 1) % f.ring.size();
            --f.count;
            --outstanding;
            ++echoed;
        } else {
            ++late;
        }
    };

    const long long server0 = o.server_pid != 0 ? cpu_ticks(o.server_pid) : 0;
    if (o.server_pid != 0 && server0 < 0) {
        die("--server-pid " + std::to_string(o.server_pid) + ": no such process");
    }
    const unsigned long long drops0 = udp_drops(o.port_first, o.port_last);
    const double cpu0 = own_cpu();
    const std::int64_t start = now_ns();
    const std::int64_t end = start + static_cast<std::int64_t>(o.seconds * 1e9);
    const std::int64_t timeout = static_cast<std::int64_t>(o.timeout_ms) * 1'000'000;
    std::int64_t now = start;

    while (interrupted == 0) {
        now = now_ns();
        const bool sending = now < end;
        if (!sending && (outstanding == 0 || now >= end + timeout)) {
            break;
        }
        // Time out the oldest datagram of each flow.
        for (auto& f : flows) {
            while (f.count > 0 && now - f.ring[f.head].sent_ns > timeout) {
                f.head = (f.head + 1) % f.ring.size();
                --f.count;
                --outstanding;
                ++lost;
            }
        }
        std::size_t moved = 0;
        // Receive what is there.
        for (int round = 0; round < 4; ++round) {
            for (std::size_t i = 0; i < o.batch; ++i) {
                rxv[i] = {rxbuf.data() + i * rx_len, rx_len};
                rxm[i].msg_hdr = msghdr{};
                rxm[i].msg_hdr.msg_name = &from[i];
                rxm[i].msg_hdr.msg_namelen = sizeof from[i];
                rxm[i].msg_hdr.msg_iov = &rxv[i];
                rxm[i].msg_hdr.msg_iovlen = 1;
                rxm[i].msg_hdr.msg_control = o.gro ? rxc[i].buf : nullptr;
                rxm[i].msg_hdr.msg_controllen = o.gro ? sizeof rxc[i].buf : 0;
            }
            ++recv_calls;
            const int r =
                recvmmsg(fd, rxm.data(), static_cast<unsigned>(o.batch), MSG_DONTWAIT, nullptr);
            if (r <= 0) {
                break;
            }
            for (int i = 0; i < r; ++i) {
                const auto* p =
                    static_cast<const unsigned char*>(rxv[static_cast<std::size_t>(i)].iov_base);
                const std::size_t len = rxm[static_cast<std::size_t>(i)].msg_len;
                const int port = ntohs(from[static_cast<std::size_t>(i)].sin_port);
                if ((rxm[static_cast<std::size_t>(i)].msg_hdr.msg_flags & MSG_TRUNC) != 0) {
                    ++bad;
                    continue;
                }
                std::size_t seg = len;
                msghdr* m = &rxm[static_cast<std::size_t>(i)].msg_hdr;
                for (cmsghdr* c = CMSG_FIRSTHDR(m); o.gro && c != nullptr; c = CMSG_NXTHDR(m, c)) {
                    if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                        int g = 0;
                        std::memcpy(&g, CMSG_DATA(c), sizeof g);
                        seg = g > 0 ? static_cast<std::size_t>(g) : len;
                    }
                }
                for (std::size_t off = 0; off < len; off += seg) {
                    on_echo(p + off, std::min(seg, len - off), port);
                    ++moved;
                }
            }
            if (static_cast<std::size_t>(r) < o.batch) {
                break;
            }
        }
        // Fill the window: one sendmmsg of up to --batch datagrams.
        if (sending && outstanding < o.window) {
            const std::size_t want = std::min(o.batch, o.window - outstanding);
            std::size_t n = 0, nmsg = 0;
            std::vector<std::size_t> port_of; // per message
            while (n < want) {
                const std::size_t pidx = rr++ % static_cast<unsigned>(ports);
                const std::size_t k = std::min(segs, want - n);
                unsigned char* base = txbuf.data() + n * o.size;
                for (std::size_t j = 0; j < k; ++j) {
                    fill(base + j * o.size, next_seq + n + j);
                }
                txv[nmsg] = {base, k * o.size};
                msghdr& m = txm[nmsg].msg_hdr;
                m = msghdr{};
                m.msg_name = &targets[pidx];
                m.msg_namelen = sizeof targets[pidx];
                m.msg_iov = &txv[nmsg];
                m.msg_iovlen = 1;
                if (k > 1) {
                    m.msg_control = txc[nmsg].buf;
                    m.msg_controllen = CMSG_SPACE(sizeof(std::uint16_t));
                    cmsghdr* c = CMSG_FIRSTHDR(&m);
                    c->cmsg_level = SOL_UDP;
                    c->cmsg_type = UDP_SEGMENT;
                    c->cmsg_len = CMSG_LEN(sizeof(std::uint16_t));
                    const auto seg = static_cast<std::uint16_t>(o.size);
                    std::memcpy(CMSG_DATA(c), &seg, sizeof seg);
                }
                port_of.push_back(pidx);
                n += k;
                ++nmsg;
            }
            ++send_calls;
            const int r = sendmmsg(fd, txm.data(), static_cast<unsigned>(nmsg), MSG_DONTWAIT);
            if (r < 0 && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED) {
                die(std::string("sendmmsg: ") + std::strerror(errno));
            }
            for (int i = 0; i < std::max(r, 0); ++i) {
                const std::size_t k = txv[static_cast<std::size_t>(i)].iov_len / o.size;
                flow& f = flows[port_of[static_cast<std::size_t>(i)]];
                for (std::size_t j = 0; j < k; ++j) {
                    if (f.count == f.ring.size()) { // cannot happen: window bounds it
                        break;
                    }
                    f.ring[(f.head + f.count) % f.ring.size()] = {next_seq, now};
                    ++f.count;
                    ++next_seq;
                    ++outstanding;
                    ++sent;
                    ++moved;
                }
            }
            if (r >= 0 && static_cast<std::size_t>(r) < nmsg) {
                rr -= static_cast<unsigned>(nmsg - static_cast<std::size_t>(r));
            }
        }
        if (moved > 0) {
            continue;
        }
        // Nothing to do: sleep until an echo arrives or a datagram times out.
        pollfd p{fd, POLLIN, 0};
        ++polls;
        poll(&p, 1, 1);
    }
    now = now_ns();
    lost += outstanding;
    const double elapsed = static_cast<double>(now - start) / 1e9;
    const double client_cpu = own_cpu() - cpu0;
    const long long server1 = o.server_pid != 0 ? cpu_ticks(o.server_pid) : 0;
    const bool alive = o.server_pid == 0 || server1 >= 0;
    const double server_cpu =
        o.server_pid != 0 && alive
            ? static_cast<double>(server1 - server0) / static_cast<double>(sysconf(_SC_CLK_TCK))
            : -1;
    const unsigned long long drops = udp_drops(o.port_first, o.port_last) - drops0;
    const double rate = elapsed > 0 ? static_cast<double>(echoed) / elapsed : 0;
    const double per_m = echoed > 0 ? 1e6 / static_cast<double>(echoed) : 0;
    if (o.json) {
        std::printf("{\"size\": %zu, \"window\": %zu, \"batch\": %zu, \"gso\": %s, \"gro\": %s, "
                    "\"seconds\": %.3f, \"sent\": %llu, \"echoed\": %llu, \"lost\": %llu, "
                    "\"late\": %llu, \"bad\": %llu, \"echoed_per_s\": %.1f, "
                    "\"server_alive\": %s, \"server_cpu_s\": %.2f, "
                    "\"server_cpu_s_per_m\": %.4f, \"client_cpu_s\": %.3f, "
                    "\"server_socket_drops\": %llu, \"send_calls\": %llu, \"recv_calls\": %llu, "
                    "\"polls\": %llu}\n",
                    o.size, o.window, o.batch, o.gso ? "true" : "false", o.gro ? "true" : "false",
                    elapsed, sent, echoed, lost, late, bad, rate, alive ? "true" : "false",
                    server_cpu, server_cpu >= 0 ? server_cpu * per_m : -1.0, client_cpu, drops,
                    send_calls, recv_calls, polls);
    } else {
        std::printf("127.0.0.1:%d-%d size %zu window %zu%s%s: %.2f s\n", o.port_first, o.port_last,
                    o.size, o.window, o.gso ? " gso" : "", o.gro ? " gro" : "", elapsed);
        std::printf("sent %llu echoed %llu lost %llu late %llu bad %llu\n", sent, echoed, lost,
                    late, bad);
        std::printf("echoed %.0f datagrams/s\n", rate);
        if (o.server_pid != 0) {
            if (alive) {
                std::printf("server cpu %.2f s = %.3f s per million datagrams\n", server_cpu,
                            server_cpu * per_m);
            } else {
                std::printf("server exited during the run\n");
            }
        }
        std::printf("client cpu %.2f s = %.3f s per million; server socket drops %llu\n",
                    client_cpu, client_cpu * per_m, drops);
    }
    return bad > 0 ? 1 : 0;
}
