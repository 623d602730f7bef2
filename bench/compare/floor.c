// floor: the least a splicing TCP relay can do, as a yardstick for `make compare`.
//
// One thread per direction per connection, blocking splice(2) through a 1 MiB pipe,
// no event loop, no timeouts, no limits, no logging. It is not a proxy anyone should
// run (a thread pair per connection, no error handling beyond giving up); it shows
// what the kernel charges for moving the bytes, so the other rows can be read as
// "kernel cost" plus "proxy overhead".
//
//   floor LISTEN_PORT UPSTREAM_PORT [PIPE_BYTES] [rw]
// Listens on 127.0.0.1:LISTEN_PORT and forwards to 127.0.0.1:UPSTREAM_PORT. With "rw"
// it copies through a user-space buffer of PIPE_BYTES with read(2)/write(2) instead.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static size_t chunk = 1 << 20;
static int use_rw;

struct direction {
    int from, to;
};

// Moves bytes one way until end of stream or an error, then passes the end on.
static void* pump(void* arg) {
    struct direction d = *(struct direction*)arg;
    free(arg);
    if (use_rw) {
        char* buf = malloc(chunk);
        ssize_t n;
        while (buf != NULL && (n = read(d.from, buf, chunk)) > 0) {
            for (char* p = buf; n > 0;) {
                ssize_t w = write(d.to, p, (size_t)n);
                if (w <= 0) {
                    goto out_rw;
                }
                p += w;
                n -= w;
            }
        }
    out_rw:
        free(buf);
    } else {
        int p[2];
        if (pipe(p) == 0) {
            fcntl(p[1], F_SETPIPE_SZ, (int)chunk); // best effort
            ssize_t n;
            while ((n = splice(d.from, NULL, p[1], NULL, chunk, SPLICE_F_MOVE)) > 0) {
                while (n > 0) {
                    ssize_t w = splice(p[0], NULL, d.to, NULL, (size_t)n, SPLICE_F_MOVE);
                    if (w <= 0) {
                        goto out_splice;
                    }
                    n -= w;
                }
            }
        out_splice:
            close(p[0]);
            close(p[1]);
        }
    }
    shutdown(d.to, SHUT_WR);
    shutdown(d.from, SHUT_RD);
    return NULL;
}

static int start(int from, int to) {
    struct direction* d = malloc(sizeof *d);
    if (d == NULL) {
        return -1;
    }
    d->from = from;
    d->to = to;
    pthread_t t;
    if (pthread_create(&t, NULL, pump, d) != 0) {
        free(d);
        return -1;
    }
    pthread_detach(t);
    return 0;
}

int main(int argc, char** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: floor LISTEN_PORT UPSTREAM_PORT [PIPE_BYTES] [rw]\n");
        return 2;
    }
    if (argc > 3) {
        chunk = strtoul(argv[3], NULL, 10);
    }
    use_rw = argc > 4 && strcmp(argv[4], "rw") == 0;
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in up = a;
    a.sin_port = htons((unsigned short)atoi(argv[1]));
    up.sin_port = htons((unsigned short)atoi(argv[2]));
    int one = 1;
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr*)&a, sizeof a) != 0 || listen(l, 4096) != 0) {
        perror("floor: listen");
        return 1;
    }
    for (;;) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            continue;
        }
        int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (u < 0 || connect(u, (struct sockaddr*)&up, sizeof up) != 0) {
            close(c);
            if (u >= 0) {
                close(u);
            }
            continue;
        }
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        // The sockets are never closed: the process is stopped after each measurement.
        if (start(c, u) != 0 || start(u, c) != 0) {
            perror("floor: thread"); // a yardstick that cannot keep up must say so
            return 1;
        }
    }
}
