/*
 * A blocking-socket echo client, written as a Windows program: getaddrinfo, connect, then
 * send/recv of fixed-size messages from several threads (one connection each), checking every
 * echoed byte, and a throughput report. Windows API and the C library only.
 *
 *   win_client host port [connections] [messages per connection] [message bytes]
 *
 * Prints "messages N bytes M seconds S throughput X MB/s" and exits 0 when every echo matched.
 * Ctrl-C stops it after the messages in flight ("stopped by the console"), also exit 0.
 */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CONNS 64

static volatile LONG g_stop;

static BOOL WINAPI on_console(DWORD type) {
    UNREFERENCED_PARAMETER(type);
    InterlockedExchange(&g_stop, 1);
    return TRUE;
}

typedef struct {
    const char *host, *port;
    int messages, size, index;
    LONG64 bytes;
    BOOL failed;
} JOB;

static SOCKET connect_to(const char *host, const char *port) {
    ADDRINFOA hints, *res = NULL;
    ZeroMemory(&hints, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        printf("getaddrinfo failed: %d\n", rc);
        return INVALID_SOCKET;
    }
    SOCKET s = INVALID_SOCKET;
    for (ADDRINFOA *a = res; a; a = a->ai_next) {
        s = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (s == INVALID_SOCKET) continue;
        if (connect(s, a->ai_addr, (int)a->ai_addrlen) == 0) break;
        printf("connect failed: %d\n", WSAGetLastError());
        closesocket(s);
        s = INVALID_SOCKET;
    }
    freeaddrinfo(res);
    return s;
}

static DWORD WINAPI run(LPVOID arg) {
    JOB *j = (JOB *)arg;
    SOCKET s = connect_to(j->host, j->port);
    if (s == INVALID_SOCKET) {
        j->failed = TRUE;
        return 1;
    }
    BOOL nodelay = TRUE;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, (const char *)&nodelay, sizeof nodelay);
    char *out = (char *)HeapAlloc(GetProcessHeap(), 0, (SIZE_T)j->size);
    char *in = (char *)HeapAlloc(GetProcessHeap(), 0, (SIZE_T)j->size);
    for (int m = 0; m < j->messages && !j->failed && !g_stop; m++) {
        for (int i = 0; i < j->size; i++) out[i] = (char)(i + m + j->index);
        int sent = 0;
        while (sent < j->size) {
            int n = send(s, out + sent, j->size - sent, 0);
            if (n == SOCKET_ERROR) {
                printf("send failed: %d\n", WSAGetLastError());
                j->failed = TRUE;
                break;
            }
            sent += n;
        }
        int got = 0;
        while (!j->failed && got < j->size) {
            int n = recv(s, in + got, j->size - got, 0);
            if (n == SOCKET_ERROR || n == 0) {
                printf("recv failed: %d (%d)\n", WSAGetLastError(), n);
                j->failed = TRUE;
                break;
            }
            got += n;
        }
        if (!j->failed && memcmp(in, out, (size_t)j->size) != 0) {
            printf("echo mismatch on connection %d, message %d\n", j->index, m);
            j->failed = TRUE;
        }
        if (!j->failed) j->bytes += j->size;
    }
    shutdown(s, SD_SEND);
    closesocket(s);
    HeapFree(GetProcessHeap(), 0, out);
    HeapFree(GetProcessHeap(), 0, in);
    return 0;
}

int __cdecl main(int argc, char **argv) {
    if (argc < 3) {
        printf("usage: %s host port [connections] [messages] [bytes]\n", argv[0]);
        return 2;
    }
    int conns = argc > 3 ? atoi(argv[3]) : 4;
    int messages = argc > 4 ? atoi(argv[4]) : 1000;
    int size = argc > 5 ? atoi(argv[5]) : 512;
    if (conns < 1 || conns > MAX_CONNS || messages < 1 || size < 1) {
        printf("bad arguments\n");
        return 2;
    }
    WSADATA wsa;
    if (WSAStartup(MAKEWORD(2, 2), &wsa) != 0) return 1;
    SetConsoleCtrlHandler(on_console, TRUE);
    printf("connecting %d\n", conns);
    fflush(stdout);
    JOB jobs[MAX_CONNS];
    HANDLE threads[MAX_CONNS];
    LARGE_INTEGER f, t0, t1;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&t0);
    for (int i = 0; i < conns; i++) {
        JOB j = {argv[1], argv[2], messages, size, i, 0, FALSE};
        jobs[i] = j;
        threads[i] = CreateThread(NULL, 0, run, &jobs[i], 0, NULL);
    }
    WaitForMultipleObjects((DWORD)conns, threads, TRUE, INFINITE);
    QueryPerformanceCounter(&t1);
    LONG64 total = 0;
    BOOL failed = FALSE;
    for (int i = 0; i < conns; i++) {
        CloseHandle(threads[i]);
        total += jobs[i].bytes;
        failed |= jobs[i].failed;
    }
    double secs = (double)(t1.QuadPart - t0.QuadPart) / (double)f.QuadPart;
    if (g_stop) printf("stopped by the console\n");
    printf("messages %lld bytes %lld seconds %.3f throughput %.2f MB/s\n",
           (long long)(total / size), (long long)total, secs,
           secs > 0 ? (double)total * 2 / secs / 1e6 : 0.0);
    WSACleanup();
    return failed ? 1 : 0;
}
