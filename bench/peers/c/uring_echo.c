/* A plain C io_uring echo server (liburing): the completion-based baseline for
 * bench/compare-echo.sh.
 *
 *   gcc -O2 -Wall -Wextra -o uring_echo uring_echo.c -luring -lpthread
 *   ./uring_echo --addr 127.0.0.1:7000 --threads 2
 *
 * N threads, each with its own ring and its own SO_REUSEPORT listener. Per connection one
 * 16 KiB buffer and one operation in flight: recv, then send of what arrived (re-sent until all
 * of it is gone), then recv again. One io_uring_submit_and_wait per batch of completions.
 * SIGINT/SIGTERM exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 16384
#define RING_ENTRIES 4096

enum op { OP_ACCEPT = 0, OP_RECV = 1, OP_SEND = 2 };

struct conn {
    int fd;
    size_t len, off; /* bytes to echo, bytes of them sent */
    char buf[BUF_SIZE];
};

static struct sockaddr_in listen_addr;

static void die(const char *what, int err) {
    fprintf(stderr, "uring_echo: %s: %s\n", what, strerror(err));
    exit(2);
}

static struct io_uring_sqe *sqe_get(struct io_uring *ring) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    while (sqe == NULL) { /* the SQ is full: hand what is queued to the kernel */
        io_uring_submit(ring);
        sqe = io_uring_get_sqe(ring);
    }
    return sqe;
}

static void tag(struct io_uring_sqe *sqe, void *p, enum op op) {
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)p | (uint64_t)op);
}

static void arm_accept(struct io_uring *ring, int lfd) {
    struct io_uring_sqe *sqe = sqe_get(ring);
    io_uring_prep_accept(sqe, lfd, NULL, NULL, SOCK_CLOEXEC);
    tag(sqe, NULL, OP_ACCEPT);
}

static void arm_recv(struct io_uring *ring, struct conn *c) {
    struct io_uring_sqe *sqe = sqe_get(ring);
    io_uring_prep_recv(sqe, c->fd, c->buf, BUF_SIZE, 0);
    tag(sqe, c, OP_RECV);
}

static void arm_send(struct io_uring *ring, struct conn *c) {
    struct io_uring_sqe *sqe = sqe_get(ring);
    io_uring_prep_send(sqe, c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
    tag(sqe, c, OP_SEND);
}

static void *worker(void *arg) {
    (void)arg;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket", errno);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) die("SO_REUSEPORT", errno);
    if (bind(lfd, (struct sockaddr *)&listen_addr, sizeof listen_addr) < 0) die("bind", errno);
    if (listen(lfd, 4096) < 0) die("listen", errno);

    struct io_uring ring;
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = RING_ENTRIES * 4;
    int r = io_uring_queue_init_params(RING_ENTRIES, &ring, &params);
    if (r < 0) die("io_uring_queue_init", -r);
    arm_accept(&ring, lfd);
    for (;;) {
        r = io_uring_submit_and_wait(&ring, 1);
        if (r < 0 && r != -EINTR) die("io_uring_submit_and_wait", -r);
        struct io_uring_cqe *cqe;
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            uint64_t data = io_uring_cqe_get_data64(cqe);
            enum op op = (enum op)(data & 3);
            struct conn *c = (struct conn *)(uintptr_t)(data & ~(uint64_t)3);
            int res = cqe->res;
            if (op == OP_ACCEPT) {
                if (res >= 0) {
                    setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = malloc(sizeof *nc);
                    nc->fd = res;
                    nc->len = nc->off = 0;
                    arm_recv(&ring, nc);
                }
                arm_accept(&ring, lfd);
            } else if (op == OP_RECV) {
                if (res <= 0) {
                    close(c->fd);
                    free(c);
                    continue;
                }
                c->len = (size_t)res;
                c->off = 0;
                arm_send(&ring, c);
            } else {
                if (res < 0) {
                    close(c->fd);
                    free(c);
                    continue;
                }
                c->off += (size_t)res;
                if (c->off < c->len) arm_send(&ring, c);
                else arm_recv(&ring, c);
            }
        }
        io_uring_cq_advance(&ring, seen);
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
    if (argc % 2 == 0) {
        fprintf(stderr, "usage: %s [--addr IP:PORT] [--threads N]\n", argv[0]);
        return 2;
    }
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--addr") == 0) addr = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0) threads = atol(argv[i + 1]);
        else {
            fprintf(stderr, "usage: %s [--addr IP:PORT] [--threads N]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1) threads = 1;
    if (threads > 256) threads = 256;
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
    pthread_t tids[256];
    for (long t = 0; t < threads; t++) {
        if (pthread_create(&tids[t], NULL, worker, NULL) != 0) die("pthread_create", errno);
    }
    fprintf(stderr, "uring_echo: listening on %s with %ld threads\n", addr, threads);
    for (long t = 0; t < threads; t++) pthread_join(tids[t], NULL);
    return 0;
}
