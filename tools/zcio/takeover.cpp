// The take-over: the inventory of inherited sockets, and both ends of the control
// socket protocol. Messages are SOCK_SEQPACKET records (one record, one message; a
// descriptor rides with its record):
//
//   new -> old   "hello 1 PID"
//   old -> new   "socket NAME" + one descriptor, once per listening socket
//   old -> new   "end COUNT PID"          (or "error TEXT": refused, nothing changed)
//   new -> old   "started"                (it accepts on every socket it claimed)
//   old -> new   "stopped"                (it accepts no more and drains)
//
// Until "started" the old process serves as before: a new process that fails or dies
// costs nothing. After it the old one stops accepting; closing its descriptors does
// not close the sockets, which the new process holds, so their queues stay whole.
#include "takeover.hpp"

#include "cli_util.hpp"
#include "proxy_server.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <future>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace zcio::cli {

using namespace std::chrono_literals;

// ---- messages ----

namespace {

struct message {
    std::string text;
    unique_fd fd;
};

// Sends one record, with `fd` attached when it is >= 0.
bool send_message(int conn, const std::string& text, int fd = -1) {
    iovec iov{const_cast<char*>(text.data()), text.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    if (fd >= 0) {
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        cmsghdr* c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    while (true) {
        const ssize_t n = ::sendmsg(conn, &msg, MSG_NOSIGNAL);
        if (n >= 0) {
            return n == static_cast<ssize_t>(text.size());
        }
        if (errno == EAGAIN) { // many sockets: the peer reads them as they come
            pollfd p{conn, POLLOUT, 0};
            if (::poll(&p, 1, 10'000) <= 0) {
                return false;
            }
        } else if (errno != EINTR) {
            return false;
        }
    }
}

// One record within `timeout`; an error text on timeout, end of stream or failure.
std::expected<message, std::string> receive_message(int conn, std::chrono::milliseconds timeout) {
    pollfd p{conn, POLLIN, 0};
    int r;
    do {
        r = ::poll(&p, 1, static_cast<int>(timeout.count()));
    } while (r < 0 && errno == EINTR);
    if (r == 0) {
        return std::unexpected("no answer within " + std::to_string(timeout.count() / 1000) + "s");
    }
    char buf[512];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n;
    do {
        n = ::recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        return std::unexpected(std::string(std::strerror(errno)));
    }
    message m;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < count; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                unique_fd owned(fd); // more than one: all but the last are closed
                m.fd = std::move(owned);
            }
        }
    }
    if (n == 0) {
        return std::unexpected(std::string("the other process closed the control connection"));
    }
    if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) {
        return std::unexpected(std::string("a control message was cut short"));
    }
    m.text.assign(buf, static_cast<std::size_t>(n));
    return m;
}

sockaddr_un unix_address(const std::string& path) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    if (path.size() >= sizeof a.sun_path) {
        throw usage_error("control socket path is too long (at most " +
                          std::to_string(sizeof a.sun_path - 1) + " bytes): " + path);
    }
    std::memcpy(a.sun_path, path.data(), path.size());
    return a;
}

// The text after "WORD " of `text`, or nullopt when `text` is not that message.
std::optional<std::string> after(const std::string& text, std::string_view word) {
    if (text.size() > word.size() && text.compare(0, word.size(), word) == 0 &&
        text[word.size()] == ' ') {
        return text.substr(word.size() + 1);
    }
    if (text == word) {
        return std::string();
    }
    return std::nullopt;
}

} // namespace

// ---- the running process's side ----

takeover_server::takeover_server(std::string path, event_loop& main, proxy_server& server)
    : path_(std::move(path)), main_(main), server_(server) {
    const sockaddr_un a = unix_address(path_);
    auto fd = sys::socket(AF_UNIX, SOCK_SEQPACKET);
    if (!fd) {
        throw runtime_failure("--control " + path_ + ": " + fd.error().message());
    }
    // A file left by a process that died: nobody answers a connect on it.
    const int probe = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
        if (::connect(probe, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0 &&
            errno == ECONNREFUSED) {
            ::unlink(path_.c_str());
        }
        ::close(probe);
    }
    const mode_t old_mask = ::umask(077); // only the owner (root) may take the sockets
    const int b = ::bind(fd->get(), reinterpret_cast<const sockaddr*>(&a), sizeof a);
    const int bind_errno = errno;
    ::umask(old_mask);
    if (b != 0 || ::listen(fd->get(), 4) != 0) {
        throw runtime_failure("--control " + path_ +
                              ": cannot listen: " + std::strerror(b != 0 ? bind_errno : errno));
    }
    listen_fd_ = std::move(*fd);
    thread_ = std::thread([this] { run(); });
    spdlog::info("take-over control socket at {}", path_);
}

takeover_server::~takeover_server() {
    stop_.store(true);
    {
        // A take-over in progress ends now: the peer sees the connection close.
        std::lock_guard lock(mutex_);
        stopped_ = true;
        cv_.notify_all();
        if (conn_ >= 0) {
            ::shutdown(conn_, SHUT_RDWR);
        }
    }
    if (thread_.joinable()) {
        thread_.join();
    }
    if (listen_fd_.valid()) {
        ::unlink(path_.c_str());
    }
}

void takeover_server::stopped_accepting() {
    std::unique_lock lock(mutex_);
    stopped_ = true;
    cv_.notify_all();
    // A drain with nothing open ends at once: without this wait the process could exit
    // before the new one is told "stopped" (it then warns that nobody confirmed).
    cv_.wait_for(lock, 5s, [this] { return confirmed_; });
}

void takeover_server::run() {
    while (!stop_.load() && !handed_over_.load()) {
        pollfd p{listen_fd_.get(), POLLIN, 0};
        if (::poll(&p, 1, 200) <= 0) {
            continue;
        }
        const int conn = ::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
        if (conn < 0) {
            continue;
        }
        {
            std::lock_guard lock(mutex_);
            conn_ = conn;
        }
        serve(conn);
        std::lock_guard lock(mutex_);
        conn_ = -1;
        ::close(conn);
    }
}

// One take-over attempt. Anything short of "started" leaves this process as it was.
void takeover_server::serve(int conn) {
    auto hello = receive_message(conn, 10s);
    const auto rest = hello ? after(hello->text, "hello") : std::nullopt;
    if (!rest || rest->rfind("1 ", 0) != 0) {
        spdlog::warn("take-over refused: {}",
                     hello ? "not a zcio take-over request" : hello.error());
        send_message(conn, "error not a zcio take-over request (protocol 1)");
        return;
    }
    const int pid = std::atoi(rest->c_str() + 2);
    // Collected on the main loop: no reload is applied meanwhile. A main loop that is
    // draining (SIGTERM) does not answer: the new process is told.
    auto collected = std::make_shared<std::promise<std::vector<handed_socket>>>();
    auto future = collected->get_future();
    main_.post([this, collected] { collected->set_value(server_.listening_sockets()); });
    if (future.wait_for(5s) != std::future_status::ready) {
        send_message(conn, "error the running process is not answering (draining?)");
        spdlog::warn("take-over by pid {} refused: the main loop did not answer", pid);
        return;
    }
    const auto sockets = future.get();
    for (const auto& s : sockets) {
        if (!send_message(conn, "socket " + s.name, s.fd.get())) {
            spdlog::warn("take-over by pid {} failed: {}; still serving", pid,
                         std::strerror(errno));
            return;
        }
    }
    send_message(conn, "end " + std::to_string(sockets.size()) + " " + std::to_string(::getpid()));
    spdlog::info("take-over: {} socket(s) sent to pid {}", sockets.size(), pid);
    // The new process binds what else its config has and starts: allow it time.
    auto started = receive_message(conn, 60s);
    if (!started || started->text != "started") {
        spdlog::warn("take-over by pid {} failed: {}; still serving", pid,
                     started ? "unexpected \"" + started->text + "\"" : started.error());
        return;
    }
    new_pid_.store(pid);
    finish_handover(conn);
}

void takeover_server::finish_handover(int conn) {
    // The control path is the new process's from now on: free it before it binds.
    ::unlink(path_.c_str());
    listen_fd_.reset();
    handed_over_.store(true);
    ::kill(::getpid(), SIGUSR2); // proxy_main stops accepting, then stopped_accepting()
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, 30s, [this] { return stopped_; });
    send_message(conn, "stopped");
    confirmed_ = true;
    cv_.notify_all();
}

// ---- the new process's side ----

takeover_client::takeover_client(const std::string& path) : path_(path) {
    const sockaddr_un a = unix_address(path);
    auto fd = sys::socket(AF_UNIX, SOCK_SEQPACKET);
    if (!fd) {
        throw runtime_failure("--take-over " + path + ": " + fd.error().message());
    }
    // The socket is non-blocking: a connect to a listening Unix socket completes at once
    // or fails (EAGAIN: its backlog is full).
    if (::connect(fd->get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
        throw runtime_failure("--take-over " + path + ": no running zcio proxy there (" +
                              std::strerror(errno) + ")");
    }
    conn_ = std::move(*fd);
    const auto fail = [&](const std::string& why) {
        return runtime_failure("--take-over " + path + ": " + why +
                               " (the running process, if any, keeps serving)");
    };
    if (!send_message(conn_.get(), "hello 1 " + std::to_string(::getpid()))) {
        throw fail(std::string("cannot send: ") + std::strerror(errno));
    }
    std::size_t received = 0;
    while (true) {
        auto m = receive_message(conn_.get(), 10s);
        if (!m) {
            throw fail("hand-over cut after " + std::to_string(received) +
                       " socket(s): " + m.error());
        }
        if (auto err = after(m->text, "error")) {
            throw fail("refused: " + *err);
        }
        if (auto name = after(m->text, "socket"); name && m->fd.valid()) {
            std::string why;
            if (!socket_inventory::instance().add(std::move(m->fd), *name, false, why)) {
                throw fail(why);
            }
            ++received;
            continue;
        }
        if (auto end = after(m->text, "end")) {
            std::size_t count = 0;
            if (std::sscanf(end->c_str(), "%zu %d", &count, &old_pid_) != 2 || count != received) {
                throw fail("the hand-over ended with \"" + m->text + "\" after " +
                           std::to_string(received) + " socket(s)");
            }
            spdlog::info("take-over: {} socket(s) from pid {}", received, old_pid_);
            return;
        }
        throw fail("unexpected message \"" + m->text + "\"");
    }
}

void takeover_client::started() {
    if (!send_message(conn_.get(), "started")) {
        spdlog::warn("take-over: pid {} went away before it was told to stop ({})", old_pid_,
                     std::strerror(errno));
    } else if (auto m = receive_message(conn_.get(), 35s); !m || m->text != "stopped") {
        spdlog::warn("take-over: pid {} did not confirm that it stopped accepting: {}", old_pid_,
                     m ? m->text : m.error());
    } else {
        spdlog::info("take-over: pid {} stopped accepting and drains", old_pid_);
    }
    conn_.reset();
    socket_inventory::instance().close_unclaimed();
}

} // namespace zcio::cli
