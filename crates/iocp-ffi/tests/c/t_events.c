/* OVERLAPPED completion seen with no thread dequeuing (issue 14 §2.1, cases 17 and 25 of
 * iocp-semantics.md §15): the status is written and hEvent signalled when the operation
 * completes, HasOverlappedIoCompleted and GetOverlappedResult need no GetQueuedCompletionStatus,
 * the I/O calls reset the event when they start, and an event with its low bit set suppresses
 * the packet. Written as a Windows program (the Windows headers only), built as C and C++. */
#include <winsock2.h>
#include <mswsock.h>
#include <windows.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
#define RUN(t)                                                                               \
    do {                                                                                     \
        t();                                                                                 \
        printf("ok %s\n", #t);                                                               \
        fflush(stdout);                                                                      \
    } while (0)

/* Every wait in this file is bounded by this (the tests fail rather than hang). */
#define DEADLINE_MS 10000

static SOCKET listener(struct sockaddr_in *addr) {
    SOCKET l = WSASocketA(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    CHECK(l != INVALID_SOCKET);
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(l, (struct sockaddr *)addr, sizeof *addr) == 0);
    CHECK(listen(l, 16) == 0);
    int len = sizeof *addr;
    CHECK(getsockname(l, (struct sockaddr *)addr, &len) == 0);
    return l;
}

static void tcp_pair(SOCKET *client, SOCKET *server) {
    struct sockaddr_in a;
    SOCKET l = listener(&a);
    *client = WSASocketA(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    CHECK(*client != INVALID_SOCKET);
    CHECK(connect(*client, (struct sockaddr *)&a, sizeof a) == 0);
    *server = accept(l, NULL, NULL);
    CHECK(*server != INVALID_SOCKET);
    CHECK(closesocket(l) == 0);
}

/* A receive that goes pending (nothing has arrived) on `s`, into `buf`. */
static void recv_pending(SOCKET s, char *buf, ULONG len, OVERLAPPED *ov) {
    WSABUF wb = {len, buf};
    DWORD flags = 0, got = 0;
    CHECK(WSARecv(s, &wb, 1, &got, &flags, ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
}

static void case_17_low_bit_event_completes_without_a_packet(void) {
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    CHECK(port != NULL);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, port, 17, 0) == port);
    HANDLE ev = CreateEvent(NULL, TRUE, FALSE, NULL);
    CHECK(ev != NULL);
    char buf[32];
    OVERLAPPED ov;
    ZeroMemory(&ov, sizeof ov);
    ov.hEvent = (HANDLE)((ULONG_PTR)ev | 1);
    recv_pending(s, buf, sizeof buf, &ov);
    CHECK(send(c, "seventeen", 9, 0) == 9);
    /* The event is signalled when the receive completes: nobody dequeues. */
    CHECK_EQ(WaitForSingleObject(ev, DEADLINE_MS), WAIT_OBJECT_0);
    CHECK(HasOverlappedIoCompleted(&ov));
    DWORD n = 0;
    CHECK(GetOverlappedResult((HANDLE)s, &ov, &n, FALSE));
    CHECK_EQ(n, 9);
    CHECK(memcmp(buf, "seventeen", 9) == 0);
    /* ... and no packet is queued. */
    DWORD bytes;
    ULONG_PTR key;
    OVERLAPPED *got = &ov;
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &got, 200));
    CHECK_EQ(GetLastError(), WAIT_TIMEOUT);
    CHECK(got == NULL);
    /* An in-line success with such an event: signalled, still no packet. */
    CHECK(ResetEvent(ev));
    CHECK(send(c, "again", 5, 0) == 5);
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0, now = 0;
    OVERLAPPED ov2;
    ZeroMemory(&ov2, sizeof ov2);
    ov2.hEvent = (HANDLE)((ULONG_PTR)ev | 1);
    int r = WSARecv(s, &wb, 1, &now, &flags, &ov2, NULL);
    CHECK(r == 0 || WSAGetLastError() == WSA_IO_PENDING);
    CHECK_EQ(WaitForSingleObject(ev, DEADLINE_MS), WAIT_OBJECT_0);
    CHECK(GetOverlappedResult((HANDLE)s, &ov2, &n, TRUE));
    CHECK_EQ(n, 5);
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &got, 200));
    CHECK_EQ(GetLastError(), WAIT_TIMEOUT);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(ev));
    CHECK(CloseHandle(port));
}

static void event_is_reset_at_start_and_signalled_with_the_packet(void) {
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, port, 5, 0) == port);
    WSAEVENT ev = WSACreateEvent();
    CHECK(ev != WSA_INVALID_EVENT);
    CHECK(WSASetEvent(ev));
    char buf[16];
    OVERLAPPED ov;
    ZeroMemory(&ov, sizeof ov);
    ov.hEvent = ev;
    recv_pending(s, buf, sizeof buf, &ov);
    /* Starting the I/O cleared the event. */
    CHECK_EQ(WSAWaitForMultipleEvents(1, &ev, FALSE, 0, FALSE), WSA_WAIT_TIMEOUT);
    CHECK(send(c, "ev", 2, 0) == 2);
    CHECK_EQ(WSAWaitForMultipleEvents(1, &ev, FALSE, DEADLINE_MS, FALSE), WSA_WAIT_EVENT_0);
    /* Without the low bit the packet comes too, once. */
    DWORD bytes = 0;
    ULONG_PTR key = 0;
    OVERLAPPED *got = NULL;
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &got, DEADLINE_MS));
    CHECK(got == &ov);
    CHECK_EQ(bytes, 2);
    CHECK_EQ(key, 5);
    CHECK(memcmp(buf, "ev", 2) == 0);
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &got, 100));
    CHECK_EQ(GetLastError(), WAIT_TIMEOUT);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(WSACloseEvent(ev));
    CHECK(CloseHandle(port));
}

static void has_overlapped_io_completed_turns_true_without_a_dequeue(void) {
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, port, 1, 0) == port);
    char buf[16];
    OVERLAPPED ov;
    ZeroMemory(&ov, sizeof ov);
    recv_pending(s, buf, sizeof buf, &ov);
    CHECK(!HasOverlappedIoCompleted(&ov));
    CHECK(send(c, "spin", 4, 0) == 4);
    /* The shutdown loop of the SDK servers: no thread is in GetQueuedCompletionStatus. */
    ULONGLONG until = GetTickCount64() + DEADLINE_MS;
    while (!HasOverlappedIoCompleted(&ov) && GetTickCount64() < until) Sleep(0);
    CHECK(HasOverlappedIoCompleted(&ov));
    CHECK_EQ(ov.Internal, 0);
    CHECK_EQ(ov.InternalHigh, 4);
    CHECK(memcmp(buf, "spin", 4) == 0);
    /* The packet is still queued, once, with the same result. */
    DWORD bytes = 0;
    ULONG_PTR key = 0;
    OVERLAPPED *got = NULL;
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &got, DEADLINE_MS));
    CHECK(got == &ov);
    CHECK_EQ(bytes, 4);
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &got, 100));
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(port));
}

static void getoverlappedresult_waits_alone(void) {
    /* One thread, no GetQueuedCompletionStatus: the wait itself drives the port. */
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, port, 1, 0) == port);
    for (int i = 0; i < 200; i++) {
        char buf[8];
        OVERLAPPED ov;
        ZeroMemory(&ov, sizeof ov);
        recv_pending(s, buf, sizeof buf, &ov);
        DWORD n = 99;
        CHECK(!GetOverlappedResult((HANDLE)s, &ov, &n, FALSE));
        CHECK_EQ(GetLastError(), ERROR_IO_INCOMPLETE);
        CHECK(send(c, "x", 1, 0) == 1);
        CHECK(GetOverlappedResult((HANDLE)s, &ov, &n, TRUE));
        CHECK_EQ(n, 1);
        CHECK(buf[0] == 'x');
    }
    /* 200 packets are queued, in order. */
    for (int i = 0; i < 200; i++) {
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        OVERLAPPED *got = NULL;
        CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &got, DEADLINE_MS));
        CHECK_EQ(bytes, 1);
    }
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(port));
}

static void acceptex_with_data_signals_its_wsaevent(void) {
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    struct sockaddr_in a;
    SOCKET l = listener(&a);
    CHECK(CreateIoCompletionPort((HANDLE)l, port, 2, 0) == port);
    SOCKET as = WSASocketA(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    char out[64 + 2 * (sizeof(struct sockaddr_in6) + 16)];
    DWORD got = 0;
    OVERLAPPED ov;
    ZeroMemory(&ov, sizeof ov);
    WSAEVENT ev = WSACreateEvent();
    ov.hEvent = ev;
    BOOL r = AcceptEx(l, as, out, 64, sizeof(struct sockaddr_in6) + 16,
                      sizeof(struct sockaddr_in6) + 16, &got, &ov);
    CHECK(r || WSAGetLastError() == WSA_IO_PENDING);
    SOCKET c = WSASocketA(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(send(c, "first bytes", 11, 0) == 11);
    CHECK_EQ(WSAWaitForMultipleEvents(1, &ev, TRUE, DEADLINE_MS, FALSE), WSA_WAIT_EVENT_0);
    DWORD n = 0, flags = 0;
    CHECK(WSAGetOverlappedResult(l, &ov, &n, FALSE, &flags));
    CHECK_EQ(n, 11);
    CHECK(memcmp(out, "first bytes", 11) == 0);
    /* The connection is on the accept socket already. */
    CHECK(send(as, "back", 4, 0) == 4);
    char back[4];
    CHECK(recv(c, back, 4, MSG_WAITALL) == 4);
    DWORD bytes = 0;
    ULONG_PTR key = 0;
    OVERLAPPED *o = NULL;
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &o, DEADLINE_MS));
    CHECK(o == &ov && key == 2 && bytes == 11);
    CHECK(closesocket(c) == 0 && closesocket(as) == 0 && closesocket(l) == 0);
    CHECK(WSACloseEvent(ev));
    CHECK(CloseHandle(port));
}

static void closesocket_signals_the_events_of_aborted_operations(void) {
    HANDLE port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, port, 3, 0) == port);
    HANDLE ev = CreateEvent(NULL, TRUE, FALSE, NULL);
    char buf[8];
    OVERLAPPED ov;
    ZeroMemory(&ov, sizeof ov);
    ov.hEvent = ev;
    recv_pending(s, buf, sizeof buf, &ov);
    CHECK(closesocket(s) == 0);
    CHECK_EQ(WaitForSingleObject(ev, DEADLINE_MS), WAIT_OBJECT_0);
    DWORD n = 0;
    CHECK(!GetOverlappedResult((HANDLE)s, &ov, &n, TRUE));
    CHECK_EQ(GetLastError(), ERROR_OPERATION_ABORTED);
    DWORD bytes = 0;
    ULONG_PTR key = 0;
    OVERLAPPED *o = NULL;
    CHECK(!GetQueuedCompletionStatus(port, &bytes, &key, &o, DEADLINE_MS));
    CHECK_EQ(GetLastError(), ERROR_OPERATION_ABORTED);
    CHECK(o == &ov);
    CHECK(closesocket(c) == 0);
    CHECK(CloseHandle(ev));
    CHECK(CloseHandle(port));
}

static void case_25_file_event_with_skip_set_event_on_handle(void) {
    char path[64];
    sprintf_s(path, sizeof path, "/tmp/iocp-t-events-%u", GetCurrentProcessId());
    HANDLE w = CreateFileA(path, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, 0, NULL);
    CHECK(w != INVALID_HANDLE_VALUE);
    DWORD wrote = 0;
    CHECK(WriteFile(w, "file bytes", 10, &wrote, NULL) && wrote == 10);
    CHECK(CloseHandle(w));
    HANDLE f = CreateFileA(path, GENERIC_READ, 0, NULL, OPEN_EXISTING, FILE_FLAG_OVERLAPPED, NULL);
    CHECK(f != INVALID_HANDLE_VALUE);
    HANDLE port = CreateIoCompletionPort(f, NULL, 25, 0);
    CHECK(port != NULL);
    CHECK(SetFileCompletionNotificationModes(f, FILE_SKIP_SET_EVENT_ON_HANDLE));
    HANDLE ev = CreateEvent(NULL, TRUE, FALSE, NULL);
    char buf[16];
    OVERLAPPED ov;
    ZeroMemory(&ov, sizeof ov);
    ov.hEvent = ev;
    BOOL r = ReadFile(f, buf, sizeof buf, NULL, &ov);
    CHECK(r || GetLastError() == ERROR_IO_PENDING);
    /* The OVERLAPPED's own event is still signalled. */
    CHECK_EQ(WaitForSingleObject(ev, DEADLINE_MS), WAIT_OBJECT_0);
    DWORD n = 0;
    CHECK(GetOverlappedResult(f, &ov, &n, FALSE));
    CHECK_EQ(n, 10);
    CHECK(memcmp(buf, "file bytes", 10) == 0);
    DWORD bytes = 0;
    ULONG_PTR key = 0;
    OVERLAPPED *o = NULL;
    CHECK(GetQueuedCompletionStatus(port, &bytes, &key, &o, DEADLINE_MS));
    CHECK(o == &ov && key == 25 && bytes == 10);
    CHECK(CloseHandle(f));
    CHECK(CloseHandle(ev));
    CHECK(CloseHandle(port));
    CHECK(DeleteFileA(path));
}

int main(void) {
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    HANDLE p = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    printf("backend %s\n", iocp_port_backend(p));
    CHECK(CloseHandle(p));
    RUN(case_17_low_bit_event_completes_without_a_packet);
    RUN(event_is_reset_at_start_and_signalled_with_the_packet);
    RUN(has_overlapped_io_completed_turns_true_without_a_dequeue);
    RUN(getoverlappedresult_waits_alone);
    RUN(acceptex_with_data_signals_its_wsaevent);
    RUN(closesocket_signals_the_events_of_aborted_operations);
    RUN(case_25_file_event_with_skip_set_event_on_handle);
    WSACleanup();
    printf("all passed\n");
    return 0;
}
