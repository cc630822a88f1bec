/* A plain C epoll echo server: the baseline that bench/compare-echo.sh measures iocp against.
 *
 *   gcc -O2 -Wall -Wextra -o epoll_echo epoll_echo.c -lpthread
 *   ./epoll_echo --addr 127.0.0.1:7000 --threads 2
 *
 * N threads, each with its own SO_REUSEPORT listener and its own level-triggered epoll loop
 * (the kernel spreads connections over the listeners). Per readable event: one read into a
 * 64 KiB buffer, then write it back; whatever the socket does not take is kept per connection
 * and EPOLLIN is swapped for EPOLLOUT until it drains (back-pressure). SIGINT/SIGTERM exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 256

struct conn {
    int fd;
    char *pending; /* bytes read but not yet written back */
    size_t len, off;
};

static struct sockaddr_in listen_addr;

static void die(const char *what) {
    perror(what);
    exit(2);
}

static int make_listener(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("SO_REUSEADDR");
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) die("SO_REUSEPORT");
    if (bind(fd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    return fd;
}

static void close_conn(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Writes what is pending; returns -1 on error, 0 when drained, 1 when the socket is full. */
static int flush(struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = write(c->fd, c->pending + c->off, c->len - c->off);
        if (n < 0) {
            if (errno == EAGAIN) return 1;
            if (errno == EINTR) continue;
            return -1;
        }
        c->off += (size_t)n;
    }
    c->len = c->off = 0;
    return 0;
}

static void *worker(void *arg) {
    (void)arg;
    int lfd = make_listener();
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl listener");
    char *buf = malloc(BUF_SIZE);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) { /* the listener */
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                        close(fd);
                        free(nc);
                    }
                }
                continue;
            }
            if (events[i].events & EPOLLOUT) { /* draining a backlog */
                int r = flush(c);
                if (r < 0) { close_conn(ep, c); continue; }
                if (r == 0) {
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
                }
                continue;
            }
            ssize_t got = read(c->fd, buf, BUF_SIZE);
            if (got <= 0) {
                if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
                close_conn(ep, c);
                continue;
            }
            ssize_t put = write(c->fd, buf, (size_t)got);
            if (put < 0) {
                if (errno != EAGAIN) { close_conn(ep, c); continue; }
                put = 0;
            }
            if (put < got) { /* keep the rest, wait for room, stop reading meanwhile */
                size_t rest = (size_t)(got - put);
                c->pending = realloc(c->pending, rest);
                memcpy(c->pending, buf + put, rest);
                c->len = rest;
                c->off = 0;
                struct epoll_event cev = {.events = EPOLLOUT, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &cev);
            }
        }
    }
    return NULL;
}

static void on_signal(int sig) {
    (void)sig;
    _exit(0);
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1:7000";
    long threads = sysconf(_SC_NPROCESSORS_ONLN);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--addr") == 0) addr = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0) threads = atol(argv[i + 1]);
        else {
            fprintf(stderr, "usage: %s [--addr IP:PORT] [--threads N]\n", argv[0]);
            return 2;
        }
    }
    if (argc % 2 == 0) {
        fprintf(stderr, "usage: %s [--addr IP:PORT] [--threads N]\n", argv[0]);
        return 2;
    }
    if (threads < 1) threads = 1;
    char host[64];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host) {
        fprintf(stderr, "bad --addr %s\n", addr);
        return 2;
    }
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    listen_addr.sin_family = AF_INET;
    listen_addr.sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &listen_addr.sin_addr) != 1) {
        fprintf(stderr, "bad --addr %s\n", addr);
        return 2;
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    /* Bind every listener before serving, so a client that connects right after the message
     * below is accepted by some thread; the listeners are created in the threads. */
    pthread_t tids[256];
    if (threads > 256) threads = 256;
    for (long t = 0; t < threads; t++) {
        if (pthread_create(&tids[t], NULL, worker, NULL) != 0) die("pthread_create");
    }
    fprintf(stderr, "epoll_echo: listening on %s with %ld threads\n", addr, threads);
    for (long t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    return 0;
}
