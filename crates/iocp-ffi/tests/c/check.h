/* A tiny harness for the libiocp C tests: CHECK macros that print and exit, a deadline, and
 * loopback helpers. Each test program prints "backend <name>" once (the runner checks it ran on
 * the backend it asked for through IOCP_BACKEND) and "ok <test>" per test. */
#ifndef CHECK_H
#define CHECK_H
#define _GNU_SOURCE
#include "iocp.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#define CHECK(c)                                                                             \
    do {                                                                                     \
        if (!(c)) {                                                                          \
            fprintf(stderr, "%s:%d: CHECK failed: %s (GetLastError = %u)\n", __FILE__,       \
                    __LINE__, #c, (unsigned)GetLastError());                                 \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)
#define CHECK_EQ(a, b)                                                                       \
    do {                                                                                     \
        long long a_ = (long long)(a), b_ = (long long)(b);                                  \
        if (a_ != b_) {                                                                      \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %lld, %s == %lld\n", __FILE__,    \
                    __LINE__, #a, a_, #b, b_);                                               \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)
/* IOCP_TEST_SKIP=name1,name2 skips those tests (CI skips, under valgrind on io_uring, the
 * tests where one thread must run while another blocks in io_uring_enter: valgrind serialises
 * threads and does not release its lock in that syscall). */
static inline int skipped(const char *name) {
    const char *p = getenv("IOCP_TEST_SKIP");
    size_t n = strlen(name);
    while (p && *p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0) return 1;
        p = e ? e + 1 : NULL;
    }
    return 0;
}
#define RUN(t)                                                                               \
    do {                                                                                     \
        if (skipped(#t)) {                                                                   \
            printf("skip %s\n", #t);                                                         \
            break;                                                                           \
        }                                                                                    \
        t();                                                                                 \
        printf("ok %s\n", #t);                                                               \
        fflush(stdout);                                                                      \
    } while (0)

static inline long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Every program dies after 60 s rather than hang. */
static inline void start_deadline(void) { alarm(60); }

static inline HANDLE new_port(DWORD threads) {
    HANDLE p = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, threads);
    CHECK(p != NULL);
    return p;
}

static inline void print_backend(void) {
    HANDLE p = new_port(0);
    printf("backend %s\n", iocp_port_backend(p));
    CHECK(CloseHandle(p));
}

/* Expects one packet with these values (timeout 10 s). */
static inline void expect_packet_(HANDLE port, BOOL ok, DWORD err, DWORD bytes, ULONG_PTR key,
                                  LPOVERLAPPED ov, const char *file, int line) {
    DWORD n = 0xdeadbeef;
    ULONG_PTR k = 0xdeadbeef;
    LPOVERLAPPED o = (LPOVERLAPPED)0x1;
    SetLastError(0xdeadbeef);
    BOOL r = GetQueuedCompletionStatus(port, &n, &k, &o, 10000);
    DWORD e = GetLastError();
    if (r != ok || (!ok && e != err) || n != bytes || k != key || o != ov) {
        fprintf(stderr,
                "%s:%d: packet: got (ret %d, err %u, bytes %u, key %#lx, ov %p), want (ret %d, "
                "err %u, bytes %u, key %#lx, ov %p)\n",
                file, line, r, (unsigned)e, (unsigned)n, (unsigned long)k, (void *)o, ok,
                (unsigned)err, (unsigned)bytes, (unsigned long)key, (void *)ov);
        exit(1);
    }
}
#define expect_packet(p, ok, err, bytes, key, ov) \
    expect_packet_(p, ok, err, bytes, key, ov, __FILE__, __LINE__)

/* Expects no packet within 200 ms. */
static inline void expect_quiet_(HANDLE port, const char *file, int line) {
    DWORD n = 7;
    ULONG_PTR k = 7;
    LPOVERLAPPED o = (LPOVERLAPPED)0x1;
    BOOL r = GetQueuedCompletionStatus(port, &n, &k, &o, 200);
    if (r || GetLastError() != WAIT_TIMEOUT || o != NULL) {
        fprintf(stderr, "%s:%d: unexpected packet (ret %d, err %u, bytes %u, key %#lx, ov %p)\n",
                file, line, r, (unsigned)GetLastError(), (unsigned)n, (unsigned long)k,
                (void *)o);
        exit(1);
    }
}
#define expect_quiet(p) expect_quiet_(p, __FILE__, __LINE__)

static inline SOCKET tcp_socket(void) {
    SOCKET s = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    CHECK(s != INVALID_SOCKET);
    return s;
}

static inline void loopback(struct sockaddr_in *a, unsigned short port) {
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

/* A listening socket on 127.0.0.1, ephemeral port, returned in *addr. */
static inline SOCKET make_listener(struct sockaddr_in *addr) {
    SOCKET s = tcp_socket();
    loopback(addr, 0);
    CHECK(bind(s, (struct sockaddr *)addr, sizeof *addr) == 0);
    CHECK(listen(s, 64) == 0);
    socklen_t len = sizeof *addr;
    CHECK(getsockname(s, (struct sockaddr *)addr, &len) == 0);
    return s;
}

/* A connected TCP pair (blocking connect + accept). */
static inline void tcp_pair(SOCKET *client, SOCKET *server) {
    struct sockaddr_in a;
    SOCKET l = make_listener(&a);
    *client = tcp_socket();
    CHECK(connect(*client, (struct sockaddr *)&a, sizeof a) == 0);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0);
    *server = (SOCKET)s;
    CHECK(closesocket(l) == 0);
}

static inline void send_all(SOCKET s, const void *p, size_t n) {
    const char *c = (const char *)p;
    while (n > 0) {
        ssize_t r = send(s, c, n, MSG_NOSIGNAL);
        CHECK(r > 0);
        c += r;
        n -= (size_t)r;
    }
}

/* Reads exactly n bytes (blocking, with the socket made blocking first). */
static inline void recv_all(SOCKET s, void *p, size_t n) {
    int fl = fcntl((int)s, F_GETFL);
    fcntl((int)s, F_SETFL, fl & ~O_NONBLOCK);
    char *c = (char *)p;
    while (n > 0) {
        ssize_t r = recv(s, c, n, 0);
        CHECK(r > 0);
        c += r;
        n -= (size_t)r;
    }
    fcntl((int)s, F_SETFL, fl);
}

static inline void reset_close(SOCKET s) {
    struct linger lg = {1, 0};
    CHECK(setsockopt(s, SOL_SOCKET, SO_LINGER, (const char *)&lg, sizeof lg) == 0);
    CHECK(closesocket(s) == 0);
}
#endif
