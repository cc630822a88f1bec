/*
 * An IOCP echo server written the way the Windows SDK samples are: a thread blocked in
 * WSAAccept hands each connection to the completion port, worker threads run
 * GetQueuedCompletionStatus, WSARecv and WSASend alternate on one per-connection context with
 * the OVERLAPPED first, a console control handler asks for the stop, and the shutdown closes
 * every socket and polls HasOverlappedIoCompleted before it stops the workers. Windows API
 * and the C library only: no Linux line. On Linux: -I<libiocp>/include/win32 -liocp.
 *
 *   win_echo_server [port] [threads]      (port 0 picks one; prints "listening on port N")
 *
 * Ctrl-C (SIGINT) or SIGTERM stops it; it prints "connections N bytes M" and exits 0.
 */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

#define BUF_SIZE 8192
#define MAX_THREADS 64

typedef enum { OP_RECV, OP_SEND } OP;

typedef struct CONN {
    OVERLAPPED ov; /* first: GetQueuedCompletionStatus's LPOVERLAPPED is the CONN */
    OP op;
    SOCKET sock;
    WSABUF wsabuf;
    DWORD have, sent;
    BOOL closed;
    struct CONN *next; /* every connection, freed at the end */
    char buf[BUF_SIZE];
} CONN;

static HANDLE g_port;
static HANDLE g_stop;
static SOCKET g_listen = INVALID_SOCKET;
static CRITICAL_SECTION g_lock;
static CONN *g_conns;
static volatile LONG g_stopping;
static volatile LONG g_connections;
static volatile LONG64 g_bytes;

static BOOL WINAPI on_console(DWORD type) {
    if (type == CTRL_C_EVENT || type == CTRL_BREAK_EVENT || type == CTRL_CLOSE_EVENT) {
        SetEvent(g_stop);
        return TRUE;
    }
    return FALSE;
}

static void close_conn(CONN *c) {
    EnterCriticalSection(&g_lock);
    if (!c->closed) {
        c->closed = TRUE;
        closesocket(c->sock);
    }
    LeaveCriticalSection(&g_lock);
}

static void post_recv(CONN *c) {
    DWORD flags = 0;
    ZeroMemory(&c->ov, sizeof c->ov);
    c->op = OP_RECV;
    c->wsabuf.buf = c->buf;
    c->wsabuf.len = BUF_SIZE;
    if (WSARecv(c->sock, &c->wsabuf, 1, NULL, &flags, &c->ov, NULL) == SOCKET_ERROR &&
        WSAGetLastError() != WSA_IO_PENDING) {
        close_conn(c);
    }
}

static void post_send(CONN *c) {
    ZeroMemory(&c->ov, sizeof c->ov);
    c->op = OP_SEND;
    c->wsabuf.buf = c->buf + c->sent;
    c->wsabuf.len = c->have - c->sent;
    if (WSASend(c->sock, &c->wsabuf, 1, NULL, 0, &c->ov, NULL) == SOCKET_ERROR &&
        WSAGetLastError() != WSA_IO_PENDING) {
        close_conn(c);
    }
}

static DWORD WINAPI worker(LPVOID arg) {
    UNREFERENCED_PARAMETER(arg);
    for (;;) {
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        LPOVERLAPPED ov = NULL;
        BOOL ok = GetQueuedCompletionStatus(g_port, &bytes, &key, &ov, INFINITE);
        if (ov == NULL) {
            if (ok && key == 0) break; /* the exit packet */
            printf("GetQueuedCompletionStatus failed: %u\n", (unsigned)GetLastError());
            break;
        }
        CONN *c = CONTAINING_RECORD(ov, CONN, ov);
        if (!ok || g_stopping) {
            close_conn(c);
            continue;
        }
        if (c->op == OP_RECV) {
            if (bytes == 0) { /* the peer closed */
                close_conn(c);
                continue;
            }
            InterlockedAdd64(&g_bytes, bytes);
            c->have = bytes;
            c->sent = 0;
            post_send(c);
        } else {
            c->sent += bytes;
            if (c->sent < c->have) post_send(c);
            else post_recv(c);
        }
    }
    return 0;
}

static DWORD WINAPI acceptor(LPVOID arg) {
    UNREFERENCED_PARAMETER(arg);
    for (;;) {
        SOCKADDR_IN peer;
        int len = sizeof peer;
        SOCKET s = WSAAccept(g_listen, (SOCKADDR *)&peer, &len, NULL, 0);
        if (s == INVALID_SOCKET) {
            if (g_stopping) break; /* closesocket(g_listen) woke us */
            /* Out of descriptors: the connection waits in the backlog and the next WSAAccept
             * would fail at once again; back off instead of spinning. */
            int err = WSAGetLastError();
            if (err == WSAEMFILE || err == WSAENOBUFS) Sleep(10);
            continue;
        }
        CONN *c = (CONN *)HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, sizeof *c);
        if (!c) {
            closesocket(s);
            continue;
        }
        c->sock = s;
        if (CreateIoCompletionPort((HANDLE)s, g_port, (ULONG_PTR)c, 0) == NULL) {
            printf("CreateIoCompletionPort failed: %u\n", (unsigned)GetLastError());
            closesocket(s);
            HeapFree(GetProcessHeap(), 0, c);
            continue;
        }
        EnterCriticalSection(&g_lock);
        c->next = g_conns;
        g_conns = c;
        if (g_stopping) c->closed = TRUE, closesocket(s);
        LeaveCriticalSection(&g_lock);
        InterlockedIncrement(&g_connections);
        if (!c->closed) post_recv(c);
    }
    return 0;
}

int __cdecl main(int argc, char **argv) {
    unsigned short port = (unsigned short)(argc > 1 ? atoi(argv[1]) : 5150);
    SYSTEM_INFO si;
    GetSystemInfo(&si);
    DWORD threads = argc > 2 ? (DWORD)atoi(argv[2]) : si.dwNumberOfProcessors * 2;
    if (threads < 1 || threads > MAX_THREADS) threads = 4;

    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) {
        printf("WSAStartup failed\n");
        return 1;
    }
    InitializeCriticalSection(&g_lock);
    g_stop = CreateEvent(NULL, TRUE, FALSE, NULL);
    if (!SetConsoleCtrlHandler(on_console, TRUE)) {
        printf("SetConsoleCtrlHandler failed: %u\n", (unsigned)GetLastError());
        return 1;
    }
    g_port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    if (g_port == NULL) {
        printf("CreateIoCompletionPort failed: %u\n", (unsigned)GetLastError());
        return 1;
    }

    g_listen = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    SOCKADDR_IN addr;
    ZeroMemory(&addr, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    if (bind(g_listen, (SOCKADDR *)&addr, sizeof addr) == SOCKET_ERROR ||
        listen(g_listen, SOMAXCONN) == SOCKET_ERROR) {
        printf("bind/listen failed: %d\n", WSAGetLastError());
        return 1;
    }
    int alen = sizeof addr;
    getsockname(g_listen, (SOCKADDR *)&addr, &alen);
    printf("listening on port %u with %u threads\n", (unsigned)ntohs(addr.sin_port),
           (unsigned)threads);
    fflush(stdout);

    HANDLE workers[MAX_THREADS];
    for (DWORD i = 0; i < threads; i++) workers[i] = CreateThread(NULL, 0, worker, NULL, 0, NULL);
    HANDLE accept_thread = CreateThread(NULL, 0, acceptor, NULL, 0, NULL);

    WaitForSingleObject(g_stop, INFINITE);

    /* Shutdown: no new connections, close every socket, wait until each connection's
     * operation has completed, then stop the workers. */
    InterlockedExchange(&g_stopping, 1);
    closesocket(g_listen);
    WaitForSingleObject(accept_thread, INFINITE);
    CloseHandle(accept_thread);
    EnterCriticalSection(&g_lock);
    for (CONN *c = g_conns; c; c = c->next) {
        if (!c->closed) {
            c->closed = TRUE;
            closesocket(c->sock);
        }
    }
    LeaveCriticalSection(&g_lock);
    for (CONN *c = g_conns; c; c = c->next) {
        while (!HasOverlappedIoCompleted(&c->ov)) Sleep(0);
    }
    for (DWORD i = 0; i < threads; i++) PostQueuedCompletionStatus(g_port, 0, 0, NULL);
    WaitForMultipleObjects(threads, workers, TRUE, INFINITE);
    for (DWORD i = 0; i < threads; i++) CloseHandle(workers[i]);
    CloseHandle(g_port);
    while (g_conns) {
        CONN *next = g_conns->next;
        HeapFree(GetProcessHeap(), 0, g_conns);
        g_conns = next;
    }
    printf("connections %ld bytes %lld\n", (long)g_connections, (long long)g_bytes);
    CloseHandle(g_stop);
    DeleteCriticalSection(&g_lock);
    WSACleanup();
    return 0;
}
