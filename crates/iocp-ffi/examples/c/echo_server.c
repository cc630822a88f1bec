/*
 * A classic IOCP echo server, written as on Windows: AcceptEx with a pool of pre-created accept
 * sockets, WSARecv/WSASend, worker threads in GetQueuedCompletionStatus, and a per-I/O context
 * struct with the OVERLAPPED first. Built on Linux against libiocp; docs/PORTING.md shows the
 * lines that differ from the Windows version.
 *
 *   echo_server [--addr 127.0.0.1] [--port 0] [--threads 4] [--accepts 16]
 *
 * Prints "listening on ADDR:PORT", serves until SIGINT/SIGTERM, then shuts down cleanly (closes
 * every socket, waits for every outstanding operation's packet, stops the workers, closes the
 * port) and prints "connections N bytes M".
 */
#ifdef _WIN32
#include <winsock2.h>
#include <mswsock.h>
#include <windows.h>
#else
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "iocp.h"
#include <pthread.h>
#include <signal.h>
#include <time.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_SIZE 4096
#define ADDR_LEN (sizeof(struct sockaddr_in6) + 16)
#define KEY_LISTEN 1
#define KEY_CONN 2
#define KEY_EXIT 3

typedef enum { OP_ACCEPT, OP_RECV, OP_SEND } OP_TYPE;

typedef struct IO_CONTEXT {
    OVERLAPPED ov; /* first: the LPOVERLAPPED from GQCS is the context */
    OP_TYPE op;
    SOCKET sock;
    WSABUF wsabuf;
    DWORD sent, total;
    int closed;
    struct IO_CONTEXT *prev, *next; /* live connections */
    char buf[BUF_SIZE + 2 * ADDR_LEN];
} IO_CONTEXT;

static HANDLE g_port;
static SOCKET g_listen = INVALID_SOCKET;
static LPFN_ACCEPTEX g_AcceptEx;
static LPFN_GETACCEPTEXSOCKADDRS g_GetAcceptExSockaddrs;
static volatile long g_stopping, g_outstanding, g_connections;
static volatile long long g_bytes;
static IO_CONTEXT g_live; /* list head; linked to itself in main */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static void op_started(void) { __atomic_add_fetch(&g_outstanding, 1, __ATOMIC_SEQ_CST); }
static void op_done(void) { __atomic_sub_fetch(&g_outstanding, 1, __ATOMIC_SEQ_CST); }

static IO_CONTEXT *new_context(OP_TYPE op, SOCKET s) {
    IO_CONTEXT *c = (IO_CONTEXT *)calloc(1, sizeof *c);
    if (!c) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    c->op = op;
    c->sock = s;
    return c;
}

static void close_conn(IO_CONTEXT *c) {
    pthread_mutex_lock(&g_lock);
    if (!c->closed) {
        closesocket(c->sock);
        c->closed = 1;
    }
    pthread_mutex_unlock(&g_lock);
}

static void refill_accepts(void);

static void free_conn(IO_CONTEXT *c) {
    close_conn(c);
    pthread_mutex_lock(&g_lock);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    pthread_mutex_unlock(&g_lock);
    free(c);
    refill_accepts(); /* its descriptor is free again */
}

/* AcceptEx slots that could not be posted: the process is out of descriptors (WSASocket or
 * AcceptEx said WSAEMFILE, or the accepted socket could not be associated). A connection that
 * closes gives one back, and refill_accepts() posts the missing slots again then: a server at
 * its descriptor limit stops accepting for a while; it must not lose its accept pool for good. */
static volatile long g_accepts_missing;

static int out_of_descriptors(DWORD err) {
    return err == WSAEMFILE || err == ERROR_TOO_MANY_OPEN_FILES || err == WSAENOBUFS ||
           err == ERROR_NO_SYSTEM_RESOURCES;
}

static volatile long g_accept_warned;

static void accept_missing(DWORD err) {
    __atomic_add_fetch(&g_accepts_missing, 1, __ATOMIC_SEQ_CST);
    if (__atomic_exchange_n(&g_accept_warned, 1, __ATOMIC_SEQ_CST) == 0) /* said once */
        fprintf(stderr,
                "accept: error %u (out of descriptors?); pending accepts are posted again as "
                "connections close\n",
                (unsigned)err);
}

/* Posts one AcceptEx, under g_lock so that the shutdown (which closes g_listen under it) never
 * races a post onto a closed, maybe reused, listener number. Returns -1 when stopping or when
 * the slot is counted missing. */
static int post_accept(void) {
    int r = 0;
    pthread_mutex_lock(&g_lock);
    if (g_stopping) {
        r = -1;
    } else {
        SOCKET s = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
        if (s == INVALID_SOCKET) {
            accept_missing((DWORD)WSAGetLastError());
            r = -1;
        } else {
            IO_CONTEXT *c = new_context(OP_ACCEPT, s);
            DWORD bytes = 0;
            op_started();
            if (!g_AcceptEx(g_listen, s, c->buf, 0, ADDR_LEN, ADDR_LEN, &bytes, &c->ov) &&
                WSAGetLastError() != ERROR_IO_PENDING) {
                DWORD err = (DWORD)WSAGetLastError();
                op_done();
                closesocket(s);
                free(c);
                accept_missing(err);
                r = -1;
            }
        }
    }
    pthread_mutex_unlock(&g_lock);
    return r;
}

/* Posts the slots post_accept() could not (see g_accepts_missing); stops at the first that
 * fails again (it is counted missing again). */
static void refill_accepts(void) {
    long n = __atomic_load_n(&g_accepts_missing, __ATOMIC_SEQ_CST);
    while (n > 0 && !__atomic_load_n(&g_stopping, __ATOMIC_SEQ_CST)) {
        if (!__atomic_compare_exchange_n(&g_accepts_missing, &n, n - 1, 0, __ATOMIC_SEQ_CST,
                                         __ATOMIC_SEQ_CST))
            continue; /* n was reloaded */
        if (post_accept() != 0) return;
        n = __atomic_load_n(&g_accepts_missing, __ATOMIC_SEQ_CST);
    }
}

static void post_recv(IO_CONTEXT *c) {
    DWORD flags = 0;
    c->op = OP_RECV;
    c->wsabuf.buf = c->buf;
    c->wsabuf.len = BUF_SIZE;
    memset(&c->ov, 0, sizeof c->ov);
    op_started();
    if (WSARecv(c->sock, &c->wsabuf, 1, NULL, &flags, &c->ov, NULL) == SOCKET_ERROR &&
        WSAGetLastError() != WSA_IO_PENDING) {
        op_done();
        free_conn(c);
    }
}

static void post_send(IO_CONTEXT *c) {
    c->op = OP_SEND;
    c->wsabuf.buf = c->buf + c->sent;
    c->wsabuf.len = c->total - c->sent;
    memset(&c->ov, 0, sizeof c->ov);
    op_started();
    if (WSASend(c->sock, &c->wsabuf, 1, NULL, 0, &c->ov, NULL) == SOCKET_ERROR &&
        WSAGetLastError() != WSA_IO_PENDING) {
        op_done();
        free_conn(c);
    }
}

static void on_accept(IO_CONTEXT *c, BOOL ok, DWORD err) {
    if (!ok || g_stopping) {
        closesocket(c->sock);
        free(c);
        if (g_stopping) return;
        /* Out of descriptors: posting again at once would fail again (and spin); wait for a
         * connection to close. Any other failure (the peer reset first): post again now. */
        if (out_of_descriptors(err)) accept_missing(err);
        else post_accept();
        return;
    }
    setsockopt(c->sock, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&g_listen, sizeof g_listen);
    struct sockaddr *local, *remote;
    int llen, rlen;
    g_GetAcceptExSockaddrs(c->buf, 0, ADDR_LEN, ADDR_LEN, &local, &llen, &remote, &rlen);
    if (CreateIoCompletionPort((HANDLE)c->sock, g_port, KEY_CONN, 0) == NULL) {
        DWORD e = GetLastError();
        closesocket(c->sock);
        free(c);
        if (out_of_descriptors(e)) accept_missing(e);
        else post_accept();
        return;
    }
    pthread_mutex_lock(&g_lock);
    if (g_stopping) { /* the shutdown walked the list already: this one is not on it */
        pthread_mutex_unlock(&g_lock);
        closesocket(c->sock);
        free(c);
        return;
    }
    __atomic_add_fetch(&g_connections, 1, __ATOMIC_RELAXED);
    c->next = g_live.next;
    c->prev = &g_live;
    g_live.next->prev = c;
    g_live.next = c;
    pthread_mutex_unlock(&g_lock);
    post_accept(); /* keep the pool of pending accepts full */
    post_recv(c);
}

static void *worker(void *arg) {
    (void)arg;
    for (;;) {
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        LPOVERLAPPED ov = NULL;
        BOOL ok = GetQueuedCompletionStatus(g_port, &bytes, &key, &ov, INFINITE);
        DWORD err = ok ? 0 : GetLastError();
        if (ov == NULL) {
            if (ok && key == KEY_EXIT) break; /* the shutdown packet */
            if (!ok) break;                   /* the port is gone */
            continue;
        }
        IO_CONTEXT *c = (IO_CONTEXT *)ov; /* CONTAINING_RECORD(ov, IO_CONTEXT, ov) */
        switch (c->op) {
        case OP_ACCEPT:
            on_accept(c, ok, err);
            break;
        case OP_RECV:
            if (!ok || bytes == 0 || g_stopping) {
                free_conn(c);
            } else {
                __atomic_add_fetch(&g_bytes, bytes, __ATOMIC_RELAXED);
                c->sent = 0;
                c->total = bytes;
                post_send(c);
            }
            break;
        case OP_SEND:
            if (!ok || g_stopping) {
                free_conn(c);
            } else {
                c->sent += bytes;
                if (c->sent < c->total)
                    post_send(c);
                else
                    post_recv(c);
            }
            break;
        }
        op_done();
    }
    return NULL;
}

static void usage(void) {
    fprintf(stderr, "usage: echo_server [--addr A] [--port P] [--threads N] [--accepts N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1";
    int port = 0, threads = 4, accepts = 16;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        if (!strcmp(argv[i], "--addr")) addr = argv[++i];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--accepts")) accepts = atoi(argv[++i]);
        else usage();
    }
    if (threads < 1 || threads > 256 || accepts < 1 || accepts > 4096) usage();

    /* SIGINT/SIGTERM are taken by sigwait in main; every thread inherits the mask. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    g_live.prev = g_live.next = &g_live;
    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) return 1;
    g_port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    if (g_port == NULL) {
        fprintf(stderr, "CreateIoCompletionPort: %u\n", GetLastError());
        return 1;
    }
    g_listen = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) usage();
    int one = 1;
    setsockopt(g_listen, SOL_SOCKET, SO_REUSEADDR, (char *)&one, sizeof one);
    if (bind(g_listen, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(g_listen, SOMAXCONN) != 0) {
        perror("bind/listen");
        return 1;
    }
    socklen_t salen = sizeof sa;
    getsockname(g_listen, (struct sockaddr *)&sa, &salen);
    if (CreateIoCompletionPort((HANDLE)g_listen, g_port, KEY_LISTEN, 0) == NULL) return 1;

    GUID gAcceptEx = WSAID_ACCEPTEX, gSockaddrs = WSAID_GETACCEPTEXSOCKADDRS;
    DWORD n;
    if (WSAIoctl(g_listen, SIO_GET_EXTENSION_FUNCTION_POINTER, &gAcceptEx, sizeof gAcceptEx,
                 &g_AcceptEx, sizeof g_AcceptEx, &n, NULL, NULL) == SOCKET_ERROR ||
        WSAIoctl(g_listen, SIO_GET_EXTENSION_FUNCTION_POINTER, &gSockaddrs, sizeof gSockaddrs,
                 &g_GetAcceptExSockaddrs, sizeof g_GetAcceptExSockaddrs, &n, NULL,
                 NULL) == SOCKET_ERROR) {
        fprintf(stderr, "WSAIoctl: %d\n", WSAGetLastError());
        return 1;
    }

    pthread_t *workers = (pthread_t *)calloc((size_t)threads, sizeof *workers);
    for (int i = 0; i < threads; i++) pthread_create(&workers[i], NULL, worker, NULL);
    for (int i = 0; i < accepts; i++) post_accept();
    printf("listening on %s:%u (backend %s, %d threads)\n", addr, ntohs(sa.sin_port),
           iocp_port_backend(g_port), threads);
    fflush(stdout);

    int sig;
    sigwait(&stop, &sig);

    /* Shutdown: stop accepting, close every connection, wait for every packet. */
    pthread_mutex_lock(&g_lock);
    __atomic_store_n(&g_stopping, 1, __ATOMIC_SEQ_CST);
    closesocket(g_listen);
    for (IO_CONTEXT *c = g_live.next; c != &g_live; c = c->next) {
        if (!c->closed) {
            closesocket(c->sock);
            c->closed = 1;
        }
    }
    pthread_mutex_unlock(&g_lock);
    for (int i = 0; i < 1000 && __atomic_load_n(&g_outstanding, __ATOMIC_SEQ_CST) > 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    long left = __atomic_load_n(&g_outstanding, __ATOMIC_SEQ_CST);
    for (int i = 0; i < threads; i++) PostQueuedCompletionStatus(g_port, 0, KEY_EXIT, NULL);
    for (int i = 0; i < threads; i++) pthread_join(workers[i], NULL);
    free(workers);
    CloseHandle(g_port);
    WSACleanup();
    printf("connections %ld bytes %lld outstanding %ld\n", g_connections, g_bytes, left);
    return left == 0 ? 0 : 1;
}
