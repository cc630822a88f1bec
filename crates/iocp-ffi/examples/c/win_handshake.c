/*
 * A TCP handshake benchmark written as a Windows program: one completion port, worker threads
 * in GetQueuedCompletionStatusEx, a pool of pending AcceptEx calls on a loopback listener, and
 * ConnectEx clients (reached through WSAIoctl) kept N in flight; every connection is closed as
 * soon as both ends see it. At the end (or on Ctrl-C) it closes its pending accept sockets and
 * waits for their aborted packets, as such benchmarks do. Windows API and the C library only.
 *
 *   win_handshake [connections] [in flight] [threads]
 *
 * Prints "handshakes N seconds S rate R/s connect-errors E accept-errors A" and exits 0 when
 * every started connection completed without an error (or after a clean Ctrl-C stop).
 */
#include <winsock2.h>
#include <mswsock.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

#define ACCEPTS 64
#define ADDR_SLOT (sizeof(SOCKADDR_IN6) + 16)
#define MAX_THREADS 32
#define MAX_INFLIGHT 1024
#define KEY_LISTEN 1
#define KEY_CONNECT 2

typedef struct {
    OVERLAPPED ov; /* first */
    SOCKET sock;
    BOOL in_use;
    char addrs[2 * ADDR_SLOT];
} ACCEPT_CTX;

typedef struct {
    OVERLAPPED ov; /* first */
    SOCKET sock;
    BOOL in_use;
} CONNECT_CTX;

static HANDLE g_port, g_done, g_stop;
static SOCKET g_listen;
static SOCKADDR_IN g_addr;
static LPFN_ACCEPTEX g_AcceptEx;
static LPFN_CONNECTEX g_ConnectEx;
static ACCEPT_CTX g_accepts[ACCEPTS];
static CONNECT_CTX g_connects[MAX_INFLIGHT];
static CRITICAL_SECTION g_lock;
static LONG g_total, g_started;
static volatile LONG g_stopping, g_outstanding, g_accepted, g_connected;
static volatile LONG g_connect_errors, g_accept_errors;

static BOOL WINAPI on_console(DWORD type) {
    UNREFERENCED_PARAMETER(type);
    SetEvent(g_stop);
    return TRUE;
}

static void *extension(SOCKET s, GUID id) {
    void *fn = NULL;
    DWORD bytes = 0;
    if (WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &id, sizeof id, &fn, sizeof fn, &bytes,
                 NULL, NULL) == SOCKET_ERROR) {
        printf("WSAIoctl failed: %d\n", WSAGetLastError());
        exit(1);
    }
    return fn;
}

static void post_accept(ACCEPT_CTX *a) {
    a->sock = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    ZeroMemory(&a->ov, sizeof a->ov);
    DWORD got = 0;
    InterlockedIncrement(&g_outstanding);
    a->in_use = TRUE;
    if (!g_AcceptEx(g_listen, a->sock, a->addrs, 0, ADDR_SLOT, ADDR_SLOT, &got, &a->ov) &&
        WSAGetLastError() != ERROR_IO_PENDING) {
        printf("AcceptEx failed: %d\n", WSAGetLastError());
        a->in_use = FALSE;
        closesocket(a->sock);
        InterlockedDecrement(&g_outstanding);
    }
}

/* Starts the next connection in slot `c`, if any is left to start. */
static void post_connect(CONNECT_CTX *c) {
    if (g_stopping || InterlockedIncrement(&g_started) > g_total) {
        c->in_use = FALSE;
        return;
    }
    c->sock = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    SOCKADDR_IN local;
    ZeroMemory(&local, sizeof local);
    local.sin_family = AF_INET;
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(c->sock, (SOCKADDR *)&local, sizeof local) == SOCKET_ERROR ||
        CreateIoCompletionPort((HANDLE)c->sock, g_port, KEY_CONNECT, 0) == NULL) {
        printf("bind/associate failed: %u\n", (unsigned)GetLastError());
        exit(1);
    }
    ZeroMemory(&c->ov, sizeof c->ov);
    InterlockedIncrement(&g_outstanding);
    c->in_use = TRUE;
    if (!g_ConnectEx(c->sock, (SOCKADDR *)&g_addr, sizeof g_addr, NULL, 0, NULL, &c->ov) &&
        WSAGetLastError() != ERROR_IO_PENDING) {
        printf("ConnectEx failed: %d\n", WSAGetLastError());
        InterlockedIncrement(&g_connect_errors);
        c->in_use = FALSE;
        closesocket(c->sock);
        InterlockedDecrement(&g_outstanding);
    }
}

static void check_done(void) {
    if (g_accepted + g_accept_errors >= g_total && g_connected + g_connect_errors >= g_total)
        SetEvent(g_done);
}

static DWORD WINAPI worker(LPVOID arg) {
    UNREFERENCED_PARAMETER(arg);
    OVERLAPPED_ENTRY entries[64];
    for (;;) {
        ULONG n = 0;
        if (!GetQueuedCompletionStatusEx(g_port, entries, 64, &n, INFINITE, FALSE)) {
            printf("GetQueuedCompletionStatusEx failed: %u\n", (unsigned)GetLastError());
            return 1;
        }
        ULONG exits = 0;
        for (ULONG i = 0; i < n; i++) {
            OVERLAPPED_ENTRY *e = &entries[i];
            if (e->lpOverlapped == NULL) { /* an exit packet */
                exits++;
                continue;
            }
            BOOL ok = (DWORD)e->Internal == 0;
            /* Under the lock the shutdown takes to close the pending sockets: neither side may
             * close a number the other already closed (and the system reused). */
            EnterCriticalSection(&g_lock);
            if (e->lpCompletionKey == KEY_LISTEN) {
                ACCEPT_CTX *a = (ACCEPT_CTX *)e->lpOverlapped;
                if (ok) {
                    setsockopt(a->sock, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&g_listen,
                               sizeof g_listen);
                    /* An abortive close (a reset, no TIME_WAIT on either end): thousands of
                     * connections a second would otherwise fill the ephemeral ports the
                     * clients bind, and a second run would fail with WSAEADDRINUSE. */
                    LINGER abort_close = {1, 0};
                    setsockopt(a->sock, SOL_SOCKET, SO_LINGER, (char *)&abort_close,
                               sizeof abort_close);
                    InterlockedIncrement(&g_accepted);
                } else if (!g_stopping) {
                    InterlockedIncrement(&g_accept_errors);
                }
                if (a->sock != INVALID_SOCKET) closesocket(a->sock);
                a->sock = INVALID_SOCKET;
                a->in_use = FALSE;
                if (!g_stopping) post_accept(a);
            } else {
                CONNECT_CTX *c = (CONNECT_CTX *)e->lpOverlapped;
                if (ok) {
                    setsockopt(c->sock, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, NULL, 0);
                    InterlockedIncrement(&g_connected);
                } else if (!g_stopping) {
                    InterlockedIncrement(&g_connect_errors);
                }
                if (c->sock != INVALID_SOCKET) closesocket(c->sock);
                c->sock = INVALID_SOCKET;
                post_connect(c);
            }
            LeaveCriticalSection(&g_lock);
            InterlockedDecrement(&g_outstanding);
            check_done();
        }
        if (exits > 0) {
            /* One exit packet per worker, but one GetQueuedCompletionStatusEx may take several:
             * hand the others back for the workers still waiting. */
            for (ULONG i = 1; i < exits; i++) PostQueuedCompletionStatus(g_port, 0, 0, NULL);
            return 0;
        }
    }
}

int __cdecl main(int argc, char **argv) {
    g_total = argc > 1 ? atol(argv[1]) : 10000;
    LONG inflight = argc > 2 ? atol(argv[2]) : 64;
    DWORD threads = argc > 3 ? (DWORD)atoi(argv[3]) : 2;
    if (g_total < 1 || inflight < 1 || inflight > MAX_INFLIGHT || threads < 1 ||
        threads > MAX_THREADS) {
        printf("bad arguments\n");
        return 2;
    }
    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) return 1;
    InitializeCriticalSection(&g_lock);
    g_done = CreateEvent(NULL, TRUE, FALSE, NULL);
    g_stop = CreateEvent(NULL, TRUE, FALSE, NULL);
    SetConsoleCtrlHandler(on_console, TRUE);
    g_port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, threads);

    g_listen = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    ZeroMemory(&g_addr, sizeof g_addr);
    g_addr.sin_family = AF_INET;
    g_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int len = sizeof g_addr;
    if (bind(g_listen, (SOCKADDR *)&g_addr, sizeof g_addr) == SOCKET_ERROR ||
        listen(g_listen, SOMAXCONN) == SOCKET_ERROR ||
        getsockname(g_listen, (SOCKADDR *)&g_addr, &len) == SOCKET_ERROR ||
        CreateIoCompletionPort((HANDLE)g_listen, g_port, KEY_LISTEN, 0) == NULL) {
        printf("listener setup failed: %d\n", WSAGetLastError());
        return 1;
    }
    GUID acceptex = WSAID_ACCEPTEX, connectex = WSAID_CONNECTEX;
    g_AcceptEx = (LPFN_ACCEPTEX)extension(g_listen, acceptex);
    g_ConnectEx = (LPFN_CONNECTEX)extension(g_listen, connectex);
    printf("listening on port %u, %ld connections, %ld in flight, %u threads\n",
           (unsigned)ntohs(g_addr.sin_port), (long)g_total, (long)inflight, (unsigned)threads);
    fflush(stdout);

    HANDLE workers[MAX_THREADS];
    for (DWORD i = 0; i < threads; i++) workers[i] = CreateThread(NULL, 0, worker, NULL, 0, NULL);
    LARGE_INTEGER f, t0, t1;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&t0);
    for (int i = 0; i < ACCEPTS; i++) post_accept(&g_accepts[i]);
    for (LONG i = 0; i < inflight; i++) post_connect(&g_connects[i]);

    HANDLE ends[2] = {g_done, g_stop};
    DWORD why = WaitForMultipleObjects(2, ends, FALSE, INFINITE);
    QueryPerformanceCounter(&t1);
    if (why == WAIT_OBJECT_0 + 1) printf("stopped by the console\n");

    /* Close the pending accept sockets (and any connect in flight): each operation completes
     * aborted; wait for every packet, then stop the workers. */
    EnterCriticalSection(&g_lock);
    InterlockedExchange(&g_stopping, 1);
    for (int i = 0; i < ACCEPTS; i++) {
        if (g_accepts[i].in_use && g_accepts[i].sock != INVALID_SOCKET) {
            closesocket(g_accepts[i].sock);
            g_accepts[i].sock = INVALID_SOCKET;
        }
    }
    for (LONG i = 0; i < inflight; i++) {
        if (g_connects[i].in_use && g_connects[i].sock != INVALID_SOCKET) {
            closesocket(g_connects[i].sock);
            g_connects[i].sock = INVALID_SOCKET;
        }
    }
    LeaveCriticalSection(&g_lock);
    ULONGLONG until = GetTickCount64() + 10000;
    while (g_outstanding > 0 && GetTickCount64() < until) Sleep(1);
    LONG left = g_outstanding;
    for (DWORD i = 0; i < threads; i++) PostQueuedCompletionStatus(g_port, 0, 0, NULL);
    WaitForMultipleObjects(threads, workers, TRUE, INFINITE);
    for (DWORD i = 0; i < threads; i++) CloseHandle(workers[i]);
    closesocket(g_listen);
    CloseHandle(g_port);

    double secs = (double)(t1.QuadPart - t0.QuadPart) / (double)f.QuadPart;
    LONG hs = g_accepted < g_connected ? g_accepted : g_connected;
    printf("handshakes %ld seconds %.3f rate %.0f/s connect-errors %ld accept-errors %ld "
           "outstanding %ld\n",
           (long)hs, secs, secs > 0 ? hs / secs : 0.0, (long)g_connect_errors,
           (long)g_accept_errors, (long)left);
    WSACleanup();
    if (left != 0) return 1;
    if (why == WAIT_OBJECT_0 && (g_connect_errors || g_accept_errors || hs != g_total)) return 1;
    return 0;
}
