/*
 * An echo server on WSAEVENTs, written as a Windows program: no completion port and one
 * thread. AcceptEx with a receive buffer (the connection is reported with its first bytes),
 * GetAcceptExSockaddrs, then WSARecv/WSASend, each OVERLAPPED carrying its own event;
 * WSAWaitForMultipleEvents picks what finished and WSAGetOverlappedResult reads it. A console
 * control handler sets the stop event; the shutdown closes every socket and polls
 * HasOverlappedIoCompleted. Windows API and the C library only.
 *
 *   win_events_server [port]        (port 0 picks one; prints "listening on port N")
 *
 * Prints "connections N bytes M" and exits 0 when stopped by Ctrl-C (SIGINT).
 */
#include <winsock2.h>
#include <mswsock.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

#define SLOTS (WSA_MAXIMUM_WAIT_EVENTS - 2) /* two events: the stop and the accept */
#define BUF_SIZE 4096
#define ADDR_SLOT (sizeof(SOCKADDR_IN6) + 16)

typedef struct {
    OVERLAPPED ov; /* ov.hEvent is this connection's event */
    SOCKET sock;
    BOOL sending;
    DWORD have, sent;
    char buf[BUF_SIZE];
} SLOT;

static WSAEVENT g_stop;
static SOCKET g_listen, g_accept_sock = INVALID_SOCKET;
static OVERLAPPED g_accept_ov;
static char g_accept_buf[BUF_SIZE + 2 * ADDR_SLOT];
static LPFN_ACCEPTEX g_AcceptEx;
static LPFN_GETACCEPTEXSOCKADDRS g_GetAcceptExSockaddrs;
static SLOT *g_slots[SLOTS];
static int g_nslots;
static long g_connections;
static long long g_bytes;

static BOOL WINAPI on_console(DWORD type) {
    UNREFERENCED_PARAMETER(type);
    WSASetEvent(g_stop);
    return TRUE;
}

static BOOL post_accept(void) {
    g_accept_sock = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    WSAEVENT ev = g_accept_ov.hEvent;
    ZeroMemory(&g_accept_ov, sizeof g_accept_ov);
    g_accept_ov.hEvent = ev;
    DWORD got = 0;
    if (!g_AcceptEx(g_listen, g_accept_sock, g_accept_buf, BUF_SIZE, ADDR_SLOT, ADDR_SLOT, &got,
                    &g_accept_ov) &&
        WSAGetLastError() != ERROR_IO_PENDING) {
        printf("AcceptEx failed: %d\n", WSAGetLastError());
        return FALSE;
    }
    return TRUE;
}

static void drop_slot(int i) {
    SLOT *s = g_slots[i];
    closesocket(s->sock);
    while (!HasOverlappedIoCompleted(&s->ov)) Sleep(0);
    WSACloseEvent(s->ov.hEvent);
    HeapFree(GetProcessHeap(), 0, s);
    g_slots[i] = g_slots[--g_nslots];
}

/* Starts the slot's next operation; FALSE if the connection is over. */
static BOOL post(SLOT *s) {
    WSAEVENT ev = s->ov.hEvent;
    ZeroMemory(&s->ov, sizeof s->ov);
    s->ov.hEvent = ev;
    WSABUF wb;
    int r;
    if (s->sending) {
        wb.buf = s->buf + s->sent;
        wb.len = s->have - s->sent;
        r = WSASend(s->sock, &wb, 1, NULL, 0, &s->ov, NULL);
    } else {
        DWORD flags = 0;
        wb.buf = s->buf;
        wb.len = BUF_SIZE;
        r = WSARecv(s->sock, &wb, 1, NULL, &flags, &s->ov, NULL);
    }
    return r == 0 || WSAGetLastError() == WSA_IO_PENDING;
}

static void on_accepted(void) {
    DWORD bytes = 0, flags = 0;
    BOOL ok = WSAGetOverlappedResult(g_listen, &g_accept_ov, &bytes, FALSE, &flags);
    SOCKET s = g_accept_sock;
    g_accept_sock = INVALID_SOCKET;
    if (!ok || g_nslots == SLOTS) {
        closesocket(s);
    } else {
        setsockopt(s, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&g_listen, sizeof g_listen);
        SOCKADDR *local = NULL, *remote = NULL;
        int llen = 0, rlen = 0;
        g_GetAcceptExSockaddrs(g_accept_buf, BUF_SIZE, ADDR_SLOT, ADDR_SLOT, &local, &llen,
                               &remote, &rlen);
        SLOT *c = (SLOT *)HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, sizeof *c);
        c->sock = s;
        c->ov.hEvent = WSACreateEvent();
        /* Echo the bytes that came with the connection first. */
        memcpy(c->buf, g_accept_buf, bytes);
        c->have = bytes;
        c->sending = TRUE;
        g_bytes += bytes;
        g_connections++;
        g_slots[g_nslots++] = c;
        if (rlen == 0 || !post(c)) drop_slot(g_nslots - 1);
    }
    post_accept();
}

static void on_slot(int i) {
    SLOT *s = g_slots[i];
    DWORD bytes = 0, flags = 0;
    if (!WSAGetOverlappedResult(s->sock, &s->ov, &bytes, FALSE, &flags) ||
        (!s->sending && bytes == 0)) {
        drop_slot(i); /* an error, or the peer closed */
        return;
    }
    if (s->sending) {
        s->sent += bytes;
        if (s->sent == s->have) s->sending = FALSE;
    } else {
        g_bytes += bytes;
        s->have = bytes;
        s->sent = 0;
        s->sending = TRUE;
    }
    if (!post(s)) drop_slot(i);
}

int __cdecl main(int argc, char **argv) {
    unsigned short port = (unsigned short)(argc > 1 ? atoi(argv[1]) : 5150);
    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) return 1;
    g_stop = WSACreateEvent();
    SetConsoleCtrlHandler(on_console, TRUE);
    g_listen = WSASocket(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    SOCKADDR_IN addr;
    ZeroMemory(&addr, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    int alen = sizeof addr;
    if (bind(g_listen, (SOCKADDR *)&addr, sizeof addr) == SOCKET_ERROR ||
        listen(g_listen, SOMAXCONN) == SOCKET_ERROR ||
        getsockname(g_listen, (SOCKADDR *)&addr, &alen) == SOCKET_ERROR) {
        printf("bind/listen failed: %d\n", WSAGetLastError());
        return 1;
    }
    GUID acceptex = WSAID_ACCEPTEX, sockaddrs = WSAID_GETACCEPTEXSOCKADDRS;
    DWORD n = 0;
    WSAIoctl(g_listen, SIO_GET_EXTENSION_FUNCTION_POINTER, &acceptex, sizeof acceptex,
             &g_AcceptEx, sizeof g_AcceptEx, &n, NULL, NULL);
    WSAIoctl(g_listen, SIO_GET_EXTENSION_FUNCTION_POINTER, &sockaddrs, sizeof sockaddrs,
             &g_GetAcceptExSockaddrs, sizeof g_GetAcceptExSockaddrs, &n, NULL, NULL);
    g_accept_ov.hEvent = WSACreateEvent();
    if (!g_AcceptEx || !g_GetAcceptExSockaddrs || !post_accept()) return 1;
    printf("listening on port %u\n", (unsigned)ntohs(addr.sin_port));
    fflush(stdout);

    for (;;) {
        WSAEVENT events[WSA_MAXIMUM_WAIT_EVENTS];
        events[0] = g_stop;
        events[1] = g_accept_ov.hEvent;
        for (int i = 0; i < g_nslots; i++) events[2 + i] = g_slots[i]->ov.hEvent;
        DWORD r = WSAWaitForMultipleEvents((DWORD)(2 + g_nslots), events, FALSE, WSA_INFINITE,
                                           FALSE);
        if (r == WSA_WAIT_FAILED) {
            printf("WSAWaitForMultipleEvents failed: %d\n", WSAGetLastError());
            return 1;
        }
        DWORD i = r - WSA_WAIT_EVENT_0;
        if (i == 0) break;
        if (i == 1) on_accepted();
        else on_slot((int)i - 2);
    }

    /* Shutdown: close the listener and the pending accept socket, then every connection,
     * waiting for each one's operation to end. */
    closesocket(g_listen);
    closesocket(g_accept_sock);
    while (!HasOverlappedIoCompleted(&g_accept_ov)) Sleep(0);
    while (g_nslots > 0) drop_slot(g_nslots - 1);
    WSACloseEvent(g_accept_ov.hEvent);
    WSACloseEvent(g_stop);
    printf("connections %ld bytes %lld\n", g_connections, g_bytes);
    WSACleanup();
    return 0;
}
