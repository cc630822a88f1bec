/* Sockets: the one-packet rule, failures through the port, cancel and close, OVERLAPPED
 * results, and the Winsock extensions reached through WSAIoctl (cases 12, 18, 19, 22, 29-32,
 * 34, 36, 48, 52-58 of iocp-semantics.md §15). */
#include "check.h"
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

static LPFN_ACCEPTEX pAcceptEx;
static LPFN_GETACCEPTEXSOCKADDRS pGetAcceptExSockaddrs;
static LPFN_CONNECTEX pConnectEx;
static LPFN_DISCONNECTEX pDisconnectEx;
static LPFN_TRANSMITFILE pTransmitFile;

static void *extension(SOCKET s, GUID g) {
    void *f = NULL;
    DWORD n = 0;
    CHECK(WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &g, sizeof g, &f, sizeof f, &n, NULL,
                   NULL) == 0);
    CHECK_EQ(n, sizeof f);
    CHECK(f != NULL);
    return f;
}

static void extensions_through_wsaioctl(void) {
    SOCKET s = tcp_socket();
    GUID a = WSAID_ACCEPTEX, g = WSAID_GETACCEPTEXSOCKADDRS, c = WSAID_CONNECTEX,
         d = WSAID_DISCONNECTEX, t = WSAID_TRANSMITFILE;
    pAcceptEx = (LPFN_ACCEPTEX)extension(s, a);
    pGetAcceptExSockaddrs = (LPFN_GETACCEPTEXSOCKADDRS)extension(s, g);
    pConnectEx = (LPFN_CONNECTEX)extension(s, c);
    pDisconnectEx = (LPFN_DISCONNECTEX)extension(s, d);
    pTransmitFile = (LPFN_TRANSMITFILE)extension(s, t);
    CHECK(pAcceptEx == AcceptEx && pConnectEx == ConnectEx);
    GUID bogus = {1, 2, 3, {4}};
    void *f = NULL;
    DWORD n;
    CHECK(WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, &bogus, sizeof bogus, &f, sizeof f, &n,
                   NULL, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAEINVAL);
    CHECK(WSAIoctl(s, 0x12345, &bogus, sizeof bogus, &f, sizeof f, &n, NULL, NULL) ==
          SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAEOPNOTSUPP);
    CHECK(closesocket(s) == 0);
}

static void wait_readable(SOCKET s) {
    struct pollfd p = {(int)s, POLLIN, 0};
    CHECK(poll(&p, 1, 10000) == 1);
}

static void case_18_data_waiting_gives_exactly_one_packet(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 18, 0) == p);
    send_all(c, "hello", 5);
    wait_readable(s);
    char buf[64];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 7, got = 0;
    OVERLAPPED ov = {0};
    CHECK(WSARecv(s, &wb, 1, &got, &flags, &ov, NULL) == 0); /* completed in line */
    CHECK_EQ(got, 5);
    CHECK_EQ(flags, 0);
    CHECK(HasOverlappedIoCompleted(&ov));
    expect_packet(p, TRUE, 0, 5, 18, &ov); /* ... and still exactly one packet */
    CHECK(memcmp(buf, "hello", 5) == 0);
    CHECK_EQ(ov.Internal, 0);
    CHECK_EQ(ov.InternalHigh, 5);
    expect_quiet(p);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void case_19_peer_closed_gives_one_zero_byte_packet(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 19, 0) == p);
    CHECK(closesocket(c) == 0);
    wait_readable(s);
    char buf[16];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0, got = 99;
    OVERLAPPED ov = {0};
    CHECK(WSARecv(s, &wb, 1, &got, &flags, &ov, NULL) == 0);
    CHECK_EQ(got, 0);
    expect_packet(p, TRUE, 0, 0, 19, &ov);
    expect_quiet(p);
    CHECK(closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void case_20_reset_fails_in_line_without_packet(void) {
    HANDLE p = new_port(0);
    for (int send_first = 0; send_first < 2; send_first++) {
        SOCKET c, s;
        tcp_pair(&c, &s);
        CHECK(CreateIoCompletionPort((HANDLE)s, p, 20, 0) == p);
        reset_close(c);
        struct pollfd pf = {(int)s, POLLIN, 0};
        CHECK(poll(&pf, 1, 10000) == 1); /* the RST arrived */
        char buf[8] = "abc";
        WSABUF wb = {3, buf};
        DWORD flags = 0;
        OVERLAPPED ov = {0};
        int r = send_first ? WSASend(s, &wb, 1, NULL, 0, &ov, NULL)
                           : WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL);
        CHECK_EQ(r, SOCKET_ERROR);
        CHECK_EQ(WSAGetLastError(), WSAECONNRESET);
        CHECK_EQ(ov.Internal, STATUS_CONNECTION_RESET);
        expect_quiet(p);
        CHECK(closesocket(s) == 0);
    }
    CHECK(CloseHandle(p));
}

static void case_21_unconnected_recv_fails_in_line(void) {
    HANDLE p = new_port(0);
    SOCKET s = tcp_socket();
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 21, 0) == p);
    char buf[8];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0;
    OVERLAPPED ov = {0};
    CHECK_EQ(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL), SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAENOTCONN);
    expect_quiet(p);
    CHECK(closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void case_23_24_skip_mode(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    /* Set before the association: it applies once associated. */
    CHECK(SetFileCompletionNotificationModes((HANDLE)s, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS));
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 23, 0) == p);
    send_all(c, "abc", 3);
    wait_readable(s);
    char buf[8];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0, got = 0;
    OVERLAPPED ov = {0};
    CHECK(WSARecv(s, &wb, 1, &got, &flags, &ov, NULL) == 0);
    CHECK_EQ(got, 3);
    CHECK(GetOverlappedResult((HANDLE)s, &ov, &got, FALSE));
    CHECK_EQ(got, 3);
    expect_quiet(p); /* immediate success: no packet */
    /* Pending: one packet. */
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    send_all(c, "de", 2);
    expect_packet(p, TRUE, 0, 2, 23, &ov);
    /* Case 24: modes cannot be cleared. */
    CHECK(SetFileCompletionNotificationModes((HANDLE)s, 0));
    WSABUF sb = {2, (char *)"xy"};
    CHECK(WSASend(s, &sb, 1, &got, 0, &ov, NULL) == 0);
    CHECK_EQ(got, 2);
    expect_quiet(p);
    CHECK(!SetFileCompletionNotificationModes((HANDLE)s, 0x80));
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    /* A pending ConnectEx on a skip-mode socket still queues its packet. */
    struct sockaddr_in a;
    SOCKET l = make_listener(&a);
    SOCKET k = tcp_socket();
    struct sockaddr_in any;
    loopback(&any, 0);
    CHECK(bind(k, (struct sockaddr *)&any, sizeof any) == 0);
    CHECK(CreateIoCompletionPort((HANDLE)k, p, 24, 0) == p);
    CHECK(SetFileCompletionNotificationModes((HANDLE)k, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS));
    CHECK(!pConnectEx(k, (struct sockaddr *)&a, sizeof a, NULL, 0, NULL, &ov));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    expect_packet(p, TRUE, 0, 0, 24, &ov);
    CHECK(closesocket(k) == 0 && closesocket(l) == 0);
    CHECK(CloseHandle(p));
}

static void stream_order_holds_with_pending_and_inline_receives(void) {
    /* A receive pending in the core, then more WSARecvs: no in-line receive may overtake it. */
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 25, 0) == p);
    char b1[1], b2[1];
    WSABUF w1 = {1, b1}, w2 = {1, b2};
    DWORD flags = 0;
    OVERLAPPED o1 = {0}, o2 = {0};
    CHECK(WSARecv(s, &w1, 1, NULL, &flags, &o1, NULL) == SOCKET_ERROR);
    send_all(c, "12", 2);
    wait_readable(s);
    int r = WSARecv(s, &w2, 1, NULL, &flags, &o2, NULL);
    CHECK(r == SOCKET_ERROR && WSAGetLastError() == WSA_IO_PENDING);
    for (int i = 0; i < 2; i++) {
        DWORD n;
        ULONG_PTR k;
        LPOVERLAPPED o;
        CHECK(GetQueuedCompletionStatus(p, &n, &k, &o, 10000));
        CHECK_EQ(n, 1);
    }
    CHECK(b1[0] == '1' && b2[0] == '2');
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void case_27_synchronous_calls_queue_nothing(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)c, p, 27, 0) == p);
    CHECK(shutdown(c, SD_RECEIVE) == 0);
    CHECK(pDisconnectEx(c, NULL, 0, 0)); /* NULL overlapped: synchronous */
    char eof;
    CHECK(recv(s, &eof, 1, 0) == 0); /* the peer saw the FIN */
    expect_quiet(p);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

#define N22 8
static void case_22_n_receives_n_packets(void) {
    HANDLE p = new_port(0);
    SOCKET c[N22], s[N22];
    OVERLAPPED ov[N22];
    char buf[N22][4];
    int got[N22] = {0};
    for (int i = 0; i < N22; i++) {
        tcp_pair(&c[i], &s[i]);
        CHECK(CreateIoCompletionPort((HANDLE)s[i], p, 100 + i, 0) == p);
        WSABUF wb = {sizeof buf[i], buf[i]};
        DWORD flags = 0;
        memset(&ov[i], 0, sizeof ov[i]);
        CHECK(WSARecv(s[i], &wb, 1, NULL, &flags, &ov[i], NULL) == SOCKET_ERROR);
        CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    }
    for (int i = 0; i < N22; i++) send_all(c[i], "x", 1);
    for (int i = 0; i < N22; i++) {
        DWORD n;
        ULONG_PTR k;
        LPOVERLAPPED o;
        CHECK(GetQueuedCompletionStatus(p, &n, &k, &o, 10000));
        CHECK(k >= 100 && k < 100 + N22);
        CHECK(o == &ov[k - 100]);
        CHECK_EQ(n, 1);
        got[k - 100]++;
    }
    for (int i = 0; i < N22; i++) CHECK_EQ(got[i], 1);
    expect_quiet(p);
    for (int i = 0; i < N22; i++) CHECK(closesocket(c[i]) == 0 && closesocket(s[i]) == 0);
    CHECK(CloseHandle(p));
}

static void case_29_reset_is_netname_deleted(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 29, 0) == p);
    char buf[16];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0;
    OVERLAPPED ov = {0};
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    reset_close(c);
    expect_packet(p, FALSE, ERROR_NETNAME_DELETED, 0, 29, &ov);
    CHECK_EQ(ov.Internal, STATUS_CONNECTION_RESET);
    CHECK(closesocket(s) == 0);
    /* The same through GQCSEx: TRUE, and the entry's Internal carries the status. */
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 30, 0) == p);
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    reset_close(c);
    OVERLAPPED_ENTRY e[2];
    ULONG n = 0;
    CHECK(GetQueuedCompletionStatusEx(p, e, 2, &n, 10000, FALSE));
    CHECK_EQ(n, 1);
    CHECK_EQ(e[0].Internal, STATUS_CONNECTION_RESET);
    CHECK(e[0].lpOverlapped == &ov);
    CHECK_EQ(e[0].lpCompletionKey, 30);
    CHECK(closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void case_30_connectex_refused(void) {
    HANDLE p = new_port(0);
    struct sockaddr_in dead;
    SOCKET l = make_listener(&dead);
    CHECK(closesocket(l) == 0); /* nothing listens there now */
    SOCKET s = tcp_socket();
    struct sockaddr_in any;
    loopback(&any, 0);
    CHECK(bind(s, (struct sockaddr *)&any, sizeof any) == 0);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 31, 0) == p);
    OVERLAPPED ov = {0};
    CHECK(!pConnectEx(s, (struct sockaddr *)&dead, sizeof dead, NULL, 0, NULL, &ov));
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    expect_packet(p, FALSE, ERROR_CONNECTION_REFUSED, 0, 31, &ov);
    CHECK(closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void case_31_cancelioex_one(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 31, 0) == p);
    char buf[16];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0;
    OVERLAPPED r = {0};
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &r, NULL) == SOCKET_ERROR);
    CHECK(CancelIoEx((HANDLE)s, &r));
    expect_packet(p, FALSE, ERROR_OPERATION_ABORTED, 0, 31, &r);
    CHECK_EQ(r.Internal, STATUS_CANCELLED);
    CHECK(!CancelIoEx((HANDLE)s, &r));
    CHECK_EQ(GetLastError(), ERROR_NOT_FOUND);
    CHECK(!CancelIoEx((HANDLE)s, NULL));
    CHECK_EQ(GetLastError(), ERROR_NOT_FOUND);
    expect_quiet(p);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

struct reader {
    SOCKET s;
    OVERLAPPED ov;
    char buf[8];
};

static void *start_read(void *arg) {
    struct reader *r = (struct reader *)arg;
    WSABUF wb = {sizeof r->buf, r->buf};
    DWORD flags = 0;
    CHECK(WSARecv(r->s, &wb, 1, NULL, &flags, &r->ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    return NULL;
}

static void case_32_cancelio_is_per_thread(void) {
    HANDLE p = new_port(0);
    SOCKET c;
    struct reader r = {0};
    tcp_pair(&c, &r.s);
    CHECK(CreateIoCompletionPort((HANDLE)r.s, p, 32, 0) == p);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, start_read, &r) == 0);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(CancelIo((HANDLE)r.s)); /* this thread started nothing */
    expect_quiet(p);
    CHECK(CancelIoEx((HANDLE)r.s, NULL));
    expect_packet(p, FALSE, ERROR_OPERATION_ABORTED, 0, 32, &r.ov);
    expect_quiet(p);
    /* CancelIo from the thread that started it cancels it. */
    start_read(&r);
    CHECK(CancelIo((HANDLE)r.s));
    expect_packet(p, FALSE, ERROR_OPERATION_ABORTED, 0, 32, &r.ov);
    CHECK(closesocket(c) == 0 && closesocket(r.s) == 0);
    CHECK(CloseHandle(p));
}

#define ADDR_SLOT (sizeof(struct sockaddr_in6) + 16)

static void case_34_closing_listener_aborts_acceptex(void) {
    HANDLE p = new_port(0);
    struct sockaddr_in a;
    SOCKET l = make_listener(&a);
    CHECK(CreateIoCompletionPort((HANDLE)l, p, 125, 0) == p);
    SOCKET acc = tcp_socket();
    char out[2 * ADDR_SLOT];
    DWORD n = 0;
    OVERLAPPED ov = {0};
    CHECK(!pAcceptEx(l, acc, out, 0, ADDR_SLOT, ADDR_SLOT, &n, &ov));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    CHECK(closesocket(l) == 0);
    expect_packet(p, FALSE, ERROR_OPERATION_ABORTED, 0, 125, &ov);
    CHECK_EQ(ov.Internal, STATUS_CANCELLED);
    expect_quiet(p);
    CHECK(closesocket(acc) == 0);
    CHECK(CloseHandle(p));
}

static void case_36_closesocket_aborts_recv_and_send(void) {
    HANDLE p = new_port(0);
    struct sockaddr_in a;
    SOCKET l = make_listener(&a);
    SOCKET c = tcp_socket();
    int small = 4096;
    CHECK(setsockopt(c, SOL_SOCKET, SO_SNDBUF, (const char *)&small, sizeof small) == 0);
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0);
    CHECK(setsockopt(s, SOL_SOCKET, SO_RCVBUF, (const char *)&small, sizeof small) == 0);
    CHECK(CreateIoCompletionPort((HANDLE)c, p, 36, 0) == p);
    size_t big = 16 << 20;
    char *data = (char *)calloc(1, big);
    CHECK(data != NULL);
    char rbuf[16];
    WSABUF rb = {sizeof rbuf, rbuf}, sb = {(ULONG)big, data};
    DWORD flags = 0;
    OVERLAPPED rov = {0}, sov = {0};
    CHECK(WSARecv(c, &rb, 1, NULL, &flags, &rov, NULL) == SOCKET_ERROR);
    CHECK(WSASend(c, &sb, 1, NULL, 0, &sov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    free(data); /* the send copied it at submit */
    CHECK(closesocket(c) == 0);
    int seen_r = 0, seen_s = 0;
    for (int i = 0; i < 2; i++) {
        DWORD n;
        ULONG_PTR k;
        LPOVERLAPPED o = NULL;
        CHECK(!GetQueuedCompletionStatus(p, &n, &k, &o, 10000));
        CHECK_EQ(GetLastError(), ERROR_OPERATION_ABORTED);
        CHECK_EQ(k, 36);
        if (o == &rov) seen_r++;
        if (o == &sov) seen_s++;
    }
    CHECK(seen_r == 1 && seen_s == 1);
    expect_quiet(p);
    CHECK(closesocket(s) == 0 && closesocket(l) == 0);
    CHECK(CloseHandle(p));
}

static void case_48_getoverlappedresult(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 48, 0) == p);
    char buf[16];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0, n = 0;
    OVERLAPPED ov = {0};
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK(!HasOverlappedIoCompleted(&ov));
    CHECK(!GetOverlappedResult((HANDLE)s, &ov, &n, FALSE));
    CHECK_EQ(GetLastError(), ERROR_IO_INCOMPLETE);
    send_all(c, "abc", 3);
    expect_packet(p, TRUE, 0, 3, 48, &ov);
    CHECK(HasOverlappedIoCompleted(&ov));
    CHECK(GetOverlappedResult((HANDLE)s, &ov, &n, FALSE));
    CHECK_EQ(n, 3);
    CHECK_EQ(n, ov.InternalHigh);
    CHECK(GetOverlappedResult((HANDLE)s, &ov, &n, TRUE));
    CHECK_EQ(n, 3);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

struct gor_waiter {
    SOCKET s;
    OVERLAPPED *ov;
    BOOL ok;
    DWORD n;
    DWORD err;
    volatile int done;
};

static void *gor_wait(void *arg) {
    struct gor_waiter *w = (struct gor_waiter *)arg;
    w->ok = GetOverlappedResult((HANDLE)w->s, w->ov, &w->n, TRUE);
    w->err = GetLastError();
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Waits up to 5 s for *flag; false if it never came. */
static int wait_flag(volatile int *flag) {
    long long end = now_ms() + 5000;
    while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE)) {
        if (now_ms() > end) return 0;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return 1;
}

static void getoverlappedresult_waits_for_the_dequeue(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 49, 0) == p);
    char buf[16];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0;
    OVERLAPPED ov = {0};
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    struct gor_waiter w = {s, &ov, FALSE, 0, 0, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, gor_wait, &w) == 0);
    send_all(c, "wxyz", 4);
    expect_packet(p, TRUE, 0, 4, 49, &ov);
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(w.ok);
    CHECK_EQ(w.n, 4);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(p));
}


/* Issue 11 bug 2 / issue 14 §2.2: closing the accept socket aborts its AcceptEx (one packet,
 * ERROR_OPERATION_ABORTED), and the connection that comes later never lands on the number. */
static void reuse_number_as_file(SOCKET was, char *path, int *fd) {
    *fd = mkstemp(path);
    CHECK(*fd >= 0);
    if (*fd != (int)was) {
        CHECK(dup2(*fd, (int)was) == (int)was);
        CHECK(close(*fd) == 0);
        *fd = (int)was;
    }
}

static void still_a_file(int fd, const char *path) {
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK(close(fd) == 0);
    unlink(path);
}

static void closesocket_of_accept_socket_aborts_acceptex(void) {
    HANDLE p = new_port(0);
    struct sockaddr_in a;
    SOCKET l = make_listener(&a);
    CHECK(CreateIoCompletionPort((HANDLE)l, p, 140, 0) == p);
    SOCKET acc = tcp_socket();
    char out[2 * ADDR_SLOT];
    DWORD n = 0;
    OVERLAPPED ov = {0};
    CHECK(!pAcceptEx(l, acc, out, 0, ADDR_SLOT, ADDR_SLOT, &n, &ov));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    CHECK(closesocket(acc) == 0);
    expect_packet(p, FALSE, ERROR_OPERATION_ABORTED, 0, 140, &ov);
    CHECK_EQ(ov.Internal, STATUS_CANCELLED);
    /* The number now holds a file; a client connecting must not become it. */
    char path[] = "/tmp/iocp-acc-XXXXXX";
    int fd;
    reuse_number_as_file(acc, path, &fd);
    SOCKET c = tcp_socket();
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    expect_quiet(p);
    still_a_file(fd, path);
    /* Several pending, the listener keeps working: the next AcceptEx gets that client. */
    SOCKET acc2[3];
    OVERLAPPED ov2[3];
    for (int i = 0; i < 3; i++) {
        acc2[i] = tcp_socket();
        memset(&ov2[i], 0, sizeof ov2[i]);
        CHECK(!pAcceptEx(l, acc2[i], out, 0, ADDR_SLOT, ADDR_SLOT, &n, &ov2[i]));
        CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    }
    /* The client in the backlog completes one of them. */
    DWORD got;
    ULONG_PTR k;
    LPOVERLAPPED o;
    CHECK(GetQueuedCompletionStatus(p, &got, &k, &o, 10000));
    CHECK(o == &ov2[0] || o == &ov2[1] || o == &ov2[2]);
    int done = (int)(o - ov2);
    for (int i = 0; i < 3; i++) {
        if (i == done) continue;
        CHECK(CloseHandle((HANDLE)acc2[i])); /* CloseHandle on a socket does the same */
        expect_packet(p, FALSE, ERROR_OPERATION_ABORTED, 0, 140, &ov2[i]);
    }
    expect_quiet(p);
    CHECK(closesocket(acc2[done]) == 0 && closesocket(c) == 0 && closesocket(l) == 0);
    CHECK(CloseHandle(p));
}

/* A C program that close()s (not closesocket) its accept socket: the number reused by a file
 * is detected (another inode) and left alone; the AcceptEx reports the abort. */
static void close_instead_of_closesocket_never_clobbers_the_number(void) {
    HANDLE p = new_port(0);
    struct sockaddr_in a;
    SOCKET l = make_listener(&a);
    CHECK(CreateIoCompletionPort((HANDLE)l, p, 141, 0) == p);
    SOCKET acc = tcp_socket();
    char out[2 * ADDR_SLOT];
    DWORD n = 0;
    OVERLAPPED ov = {0};
    CHECK(!pAcceptEx(l, acc, out, 0, ADDR_SLOT, ADDR_SLOT, &n, &ov));
    CHECK(close((int)acc) == 0);
    char path[] = "/tmp/iocp-acc-XXXXXX";
    int fd;
    reuse_number_as_file(acc, path, &fd);
    SOCKET c = tcp_socket();
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    expect_packet(p, FALSE, ERROR_OPERATION_ABORTED, 0, 141, &ov);
    still_a_file(fd, path);
    CHECK(closesocket(c) == 0 && closesocket(l) == 0);
    CHECK(CloseHandle(p));
}

/* close() of an associated socket, and a new socket on the same number: the stale association
 * is detected; the new socket is not associated until it is, then gets its own key. */
static void close_instead_of_closesocket_stale_association(void) {
    HANDLE p = new_port(0);
    SOCKET old = tcp_socket();
    CHECK(CreateIoCompletionPort((HANDLE)old, p, 1, 0) == p);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(close((int)old) == 0);
    /* The connected socket takes the number (as the next socket() or accept() would). */
    CHECK(dup2((int)s, (int)old) == (int)old);
    CHECK(close((int)s) == 0);
    s = old;
    char buf[8];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0;
    OVERLAPPED ov = {0};
    /* Not associated (the association was the old socket's): the receive runs with no port,
     * reported through its OVERLAPPED only, as on Windows; nothing reaches the old port. */
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    CHECK(CancelIoEx((HANDLE)s, &ov));
    DWORD n = 0;
    CHECK(!GetOverlappedResult((HANDLE)s, &ov, &n, TRUE));
    CHECK_EQ(GetLastError(), ERROR_OPERATION_ABORTED);
    expect_quiet(p);
    /* With nothing pending it may be given a port. */
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 2, 0) == p);
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    send_all(c, "new", 3);
    expect_packet(p, TRUE, 0, 3, 2, &ov);
    CHECK(memcmp(buf, "new", 3) == 0);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

/* Issue 11: GetOverlappedResult(bWait = TRUE) returns once the port is closed (the operation
 * can never be dequeued): FALSE, ERROR_OPERATION_ABORTED. Both while it waits, and for an
 * operation whose socket was closed before the port. */
static void getoverlappedresult_returns_after_port_close(void) {
    for (int sock_first = 0; sock_first < 2; sock_first++) {
        HANDLE p = new_port(0);
        SOCKET c, s;
        tcp_pair(&c, &s);
        CHECK(CreateIoCompletionPort((HANDLE)s, p, 49, 0) == p);
        char buf[16];
        WSABUF wb = {sizeof buf, buf};
        DWORD flags = 0;
        OVERLAPPED ov = {0};
        CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
        CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
        struct gor_waiter w = {s, &ov, TRUE, 7, 0, 0};
        pthread_t t;
        if (sock_first) CHECK(closesocket(s) == 0);
        CHECK(pthread_create(&t, NULL, gor_wait, &w) == 0);
        CHECK(CloseHandle(p));
        CHECK(wait_flag(&w.done));
        CHECK(pthread_join(t, NULL) == 0);
        CHECK(!w.ok);
        CHECK_EQ(w.err, ERROR_OPERATION_ABORTED);
        CHECK(HasOverlappedIoCompleted(&ov));
        CHECK(closesocket(c) == 0);
        if (!sock_first) CHECK(closesocket(s) == 0);
    }
}


/* Issue 14 §2.3: closesocket wakes a thread blocked in a blocking accept() or recv() on that
 * socket (a Linux close() alone does not). */
struct blocked {
    SOCKET s;
    int accept_not_recv;
    volatile int tid;
    long r;
    volatile int done;
};

static void *block_in_call(void *arg) {
    struct blocked *b = (struct blocked *)arg;
    __atomic_store_n(&b->tid, (int)syscall(SYS_gettid), __ATOMIC_RELEASE);
    char c;
    b->r = b->accept_not_recv ? (long)accept((int)b->s, NULL, NULL) : (long)recv(b->s, &c, 1, 0);
    __atomic_store_n(&b->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* True once thread `tid` sits in accept/recv (its /proc syscall line names the call). */
static int in_blocking_call(int tid) {
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    long nr = -1;
    if (fgets(line, sizeof line, f)) nr = strtol(line, NULL, 10);
    fclose(f);
    return nr == SYS_accept || nr == SYS_accept4 || nr == SYS_recvfrom || nr == SYS_recvmsg;
}

static void closesocket_wakes_blocking_accept_and_recv(void) {
    for (int acc = 1; acc >= 0; acc--) {
        struct sockaddr_in a;
        SOCKET l = make_listener(&a), c = INVALID_SOCKET, s = INVALID_SOCKET;
        if (!acc) {
            c = tcp_socket();
            CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
            s = (SOCKET)accept((int)l, NULL, NULL);
            CHECK((int)s >= 0);
        }
        struct blocked b = {acc ? l : s, acc, 0, 0, 0};
        pthread_t t;
        CHECK(pthread_create(&t, NULL, block_in_call, &b) == 0);
        long long end = now_ms() + 5000;
        while (!__atomic_load_n(&b.tid, __ATOMIC_ACQUIRE) || !in_blocking_call(b.tid)) {
            CHECK(now_ms() < end);
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
        CHECK(closesocket(b.s) == 0);
        CHECK(wait_flag(&b.done));
        CHECK(pthread_join(t, NULL) == 0);
        CHECK(acc ? b.r < 0 : b.r <= 0);
        if (!acc) CHECK(closesocket(c) == 0 && closesocket(l) == 0);
    }
}


/* Issue 14 §2.1 (the shutdown pattern of the SDK servers): closesocket, then poll
 * HasOverlappedIoCompleted without ever dequeuing. Each OVERLAPPED ends at once (cancelled),
 * GetOverlappedResult reports the abort, and after the program frees the OVERLAPPEDs and
 * buffers nothing writes to them (valgrind in CI); the packets still come, one each. */
static void closesocket_ends_overlappeds_without_a_dequeue(void) {
    HANDLE p = new_port(0);
    struct sockaddr_in a;
    SOCKET l = make_listener(&a);
    CHECK(CreateIoCompletionPort((HANDLE)l, p, 142, 0) == p);
    SOCKET c = tcp_socket();
    int small = 4096;
    CHECK(setsockopt(c, SOL_SOCKET, SO_SNDBUF, (const char *)&small, sizeof small) == 0);
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    int peer = accept((int)l, NULL, NULL);
    CHECK(peer >= 0);
    CHECK(CreateIoCompletionPort((HANDLE)c, p, 143, 0) == p);
    enum { RECV, SEND, ACCEPT, N };
    OVERLAPPED *ov[N];
    uintptr_t addr[N];
    for (int i = 0; i < N; i++) {
        ov[i] = (OVERLAPPED *)calloc(1, sizeof(OVERLAPPED));
        CHECK(ov[i] != NULL);
        addr[i] = (uintptr_t)ov[i];
    }
    char *rbuf = (char *)malloc(64);
    size_t big = 8 << 20;
    char *data = (char *)calloc(1, big);
    char *out = (char *)malloc(2 * ADDR_SLOT);
    CHECK(rbuf && data && out);
    WSABUF rb = {64, rbuf}, sb = {(ULONG)big, data};
    DWORD flags = 0, n = 0;
    CHECK(WSARecv(c, &rb, 1, NULL, &flags, ov[RECV], NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    CHECK(WSASend(c, &sb, 1, NULL, 0, ov[SEND], NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    SOCKET acc = tcp_socket();
    CHECK(!pAcceptEx(l, acc, out, 0, ADDR_SLOT, ADDR_SLOT, &n, ov[ACCEPT]));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    CHECK(closesocket(c) == 0);
    CHECK(closesocket(acc) == 0);
    long long end = now_ms() + 5000;
    for (int i = 0; i < N; i++) {
        while (!HasOverlappedIoCompleted(ov[i])) {
            CHECK(now_ms() < end);
            sched_yield();
        }
        DWORD got = 7;
        CHECK(!GetOverlappedResult((HANDLE)c, ov[i], &got, TRUE));
        CHECK_EQ(GetLastError(), ERROR_OPERATION_ABORTED);
        CHECK_EQ(ov[i]->Internal, STATUS_CANCELLED);
        free(ov[i]);
    }
    free(rbuf);
    free(data);
    free(out);
    /* The packets: one each, aborted, with the keys of the sockets they were started on. */
    int seen[N] = {0};
    for (int i = 0; i < N; i++) {
        DWORD got;
        ULONG_PTR k;
        LPOVERLAPPED o = NULL;
        CHECK(!GetQueuedCompletionStatus(p, &got, &k, &o, 10000));
        CHECK_EQ(GetLastError(), ERROR_OPERATION_ABORTED);
        for (int j = 0; j < N; j++)
            if ((uintptr_t)o == addr[j]) {
                seen[j]++;
                CHECK_EQ(k, j == ACCEPT ? 142 : 143);
            }
    }
    for (int i = 0; i < N; i++) CHECK_EQ(seen[i], 1);
    expect_quiet(p);
    CHECK(close(peer) == 0 && closesocket(l) == 0);
    CHECK(CloseHandle(p));
}


/* Issue 14 §2.4: a connection established and reset by the peer at once: ConnectEx succeeds
 * (as on Windows), the reset shows on the next receive (in line, WSAECONNRESET, no packet).
 * The reset is made to arrive before anyone dequeues (and so before the library looks at the
 * connect's outcome on epoll). */
static void connectex_then_reset_succeeds_and_next_io_sees_the_reset(void) {
    HANDLE p = new_port(0);
    for (int round = 0; round < 5; round++) {
        struct sockaddr_in a;
        SOCKET l = make_listener(&a);
        SOCKET s = tcp_socket();
        struct sockaddr_in any;
        loopback(&any, 0);
        CHECK(bind(s, (struct sockaddr *)&any, sizeof any) == 0);
        CHECK(CreateIoCompletionPort((HANDLE)s, p, 60, 0) == p);
        OVERLAPPED ov = {0};
        CHECK(!pConnectEx(s, (struct sockaddr *)&a, sizeof a, NULL, 0, NULL, &ov));
        CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
        int peer = accept((int)l, NULL, NULL);
        CHECK(peer >= 0);
        reset_close((SOCKET)peer);
        struct pollfd pf = {(int)s, POLLIN, 0};
        CHECK(poll(&pf, 1, 10000) == 1); /* the RST arrived */
        CHECK(pf.revents & (POLLHUP | POLLERR));
        expect_packet(p, TRUE, 0, 0, 60, &ov);
        char buf[8];
        WSABUF wb = {sizeof buf, buf};
        DWORD flags = 0;
        OVERLAPPED rov = {0};
        CHECK_EQ(WSARecv(s, &wb, 1, NULL, &flags, &rov, NULL), SOCKET_ERROR);
        CHECK_EQ(WSAGetLastError(), WSAECONNRESET);
        CHECK_EQ(rov.Internal, STATUS_CONNECTION_RESET);
        expect_quiet(p);
        CHECK(closesocket(s) == 0 && closesocket(l) == 0);
    }
    CHECK(CloseHandle(p));
}

static void same_addr(const struct sockaddr *a, int alen, const struct sockaddr *b, int blen) {
    CHECK_EQ(alen, blen);
    CHECK(memcmp(a, b, (size_t)alen) == 0);
}

static void case_52_53_acceptex_keys_bytes_and_addresses(void) {
    HANDLE p = new_port(0);
    struct sockaddr_in a;
    SOCKET l = make_listener(&a);
    CHECK(CreateIoCompletionPort((HANDLE)l, p, 125, 0) == p);
    /* Receive length 0: completes on connect, bytes 0, listener's key. */
    SOCKET acc = tcp_socket();
    CHECK(CreateIoCompletionPort((HANDLE)acc, p, 236, 0) == p);
    char out[64 + 2 * ADDR_SLOT];
    DWORD n = 0;
    OVERLAPPED ov = {0};
    CHECK(!pAcceptEx(l, acc, out, 0, ADDR_SLOT, ADDR_SLOT, &n, &ov));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    SOCKET c = tcp_socket();
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    expect_packet(p, TRUE, 0, 0, 125, &ov);
    CHECK(setsockopt(acc, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&l, sizeof l) == 0);
    /* The accept socket is now the connection, still associated with its own key 236. */
    char buf[8];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0;
    OVERLAPPED rov = {0};
    CHECK(WSARecv(acc, &wb, 1, NULL, &flags, &rov, NULL) == SOCKET_ERROR);
    send_all(c, "ping", 4);
    expect_packet(p, TRUE, 0, 4, 236, &rov);
    CHECK(memcmp(buf, "ping", 4) == 0);
    WSABUF sb = {4, (char *)"pong"};
    OVERLAPPED sov = {0};
    DWORD sent = 0;
    int r = WSASend(acc, &sb, 1, &sent, 0, &sov, NULL);
    CHECK(r == 0 || WSAGetLastError() == WSA_IO_PENDING); /* in line or pending: one packet */
    CHECK(r != 0 || sent == 4);
    expect_packet(p, TRUE, 0, 4, 236, &sov);
    recv_all(c, buf, 4);
    CHECK(memcmp(buf, "pong", 4) == 0);
    CHECK(closesocket(c) == 0 && closesocket(acc) == 0);

    /* Receive length 64, the client sends 1 byte: bytes 1; then the addresses (case 53). */
    acc = tcp_socket();
    memset(&ov, 0, sizeof ov);
    CHECK(!AcceptEx(l, acc, out, 64, ADDR_SLOT, ADDR_SLOT, &n, &ov));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    c = tcp_socket();
    CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0);
    send_all(c, "Z", 1);
    expect_packet(p, TRUE, 0, 1, 125, &ov);
    CHECK_EQ(out[0], 'Z');
    CHECK(setsockopt(acc, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (char *)&l, sizeof l) == 0);
    struct sockaddr *local = NULL, *remote = NULL;
    int llen = 0, rlen = 0;
    pGetAcceptExSockaddrs(out, 64, ADDR_SLOT, ADDR_SLOT, &local, &llen, &remote, &rlen);
    struct sockaddr_storage sn, pn;
    socklen_t snl = sizeof sn, pnl = sizeof pn;
    CHECK(getsockname(acc, (struct sockaddr *)&sn, &snl) == 0);
    CHECK(getpeername(acc, (struct sockaddr *)&pn, &pnl) == 0);
    same_addr(local, llen, (struct sockaddr *)&sn, (int)snl);
    same_addr(remote, rlen, (struct sockaddr *)&pn, (int)pnl);
    expect_quiet(p);
    CHECK(closesocket(c) == 0 && closesocket(acc) == 0 && closesocket(l) == 0);
    CHECK(CloseHandle(p));
}

static void case_54_connectex(void) {
    HANDLE p = new_port(0);
    struct sockaddr_in a;
    SOCKET l = make_listener(&a);
    SOCKET s = tcp_socket();
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 54, 0) == p);
    OVERLAPPED ov = {0};
    CHECK(!pConnectEx(s, (struct sockaddr *)&a, sizeof a, (PVOID) "one", 3, NULL, &ov));
    CHECK_EQ(WSAGetLastError(), WSAEINVAL); /* not bound */
    struct sockaddr_in any;
    loopback(&any, 0);
    CHECK(bind(s, (struct sockaddr *)&any, sizeof any) == 0);
    CHECK(!pConnectEx(s, (struct sockaddr *)&a, sizeof a, (PVOID) "one", 3, NULL, &ov));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    expect_packet(p, TRUE, 0, 3, 54, &ov);
    CHECK(setsockopt(s, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, NULL, 0) == 0);
    int peer = accept(l, NULL, NULL);
    CHECK(peer >= 0);
    char buf[3];
    recv_all((SOCKET)peer, buf, 3);
    CHECK(memcmp(buf, "one", 3) == 0);

    /* Case 55: DisconnectEx rules, then reuse for another ConnectEx. */
    CHECK(!pDisconnectEx(s, &ov, 0, 1));
    CHECK_EQ(WSAGetLastError(), WSAEINVAL);
    CHECK(!pDisconnectEx(s, &ov, 0x80, 0));
    CHECK_EQ(WSAGetLastError(), WSAEINVAL);
    CHECK(!pDisconnectEx(s, &ov, TF_REUSE_SOCKET, 0));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    char eof;
    CHECK(recv(peer, &eof, 1, 0) == 0); /* the FIN arrived */
    CHECK(close(peer) == 0);
    expect_packet(p, TRUE, 0, 0, 54, &ov);
    CHECK(!pConnectEx(s, (struct sockaddr *)&a, sizeof a, (PVOID) "two", 3, NULL, &ov));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    expect_packet(p, TRUE, 0, 3, 54, &ov);
    peer = accept(l, NULL, NULL);
    CHECK(peer >= 0);
    recv_all((SOCKET)peer, buf, 3);
    CHECK(memcmp(buf, "two", 3) == 0);
    CHECK(close(peer) == 0);
    CHECK(closesocket(s) == 0 && closesocket(l) == 0);
    CHECK(CloseHandle(p));
}

static void case_56_scatter_in_order(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 56, 0) == p);
    send_all(c, "0123456789", 10);
    char a[2], b[3], d[5];
    OVERLAPPED ov = {0};
    {
        WSABUF bufs[3] = {{2, a}, {3, b}, {5, d}}; /* on the stack, gone after the call */
        DWORD flags = 0;
        int r = WSARecv(s, bufs, 3, NULL, &flags, &ov, NULL);
        CHECK(r == 0 || WSAGetLastError() == WSA_IO_PENDING);
        memset(bufs, 0xff, sizeof bufs);
    }
    expect_packet(p, TRUE, 0, 10, 56, &ov);
    CHECK(memcmp(a, "01", 2) == 0 && memcmp(b, "234", 3) == 0 && memcmp(d, "56789", 5) == 0);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void case_57_udp_too_small_buffer(void) {
    HANDLE p = new_port(0);
    SOCKET r = WSASocket(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_OVERLAPPED);
    SOCKET t = WSASocket(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_OVERLAPPED);
    CHECK(r != INVALID_SOCKET && t != INVALID_SOCKET);
    struct sockaddr_in ra, ta;
    loopback(&ra, 0);
    loopback(&ta, 0);
    CHECK(bind(r, (struct sockaddr *)&ra, sizeof ra) == 0);
    CHECK(bind(t, (struct sockaddr *)&ta, sizeof ta) == 0);
    socklen_t l = sizeof ra;
    CHECK(getsockname(r, (struct sockaddr *)&ra, &l) == 0);
    l = sizeof ta;
    CHECK(getsockname(t, (struct sockaddr *)&ta, &l) == 0);
    CHECK(CreateIoCompletionPort((HANDLE)r, p, 57, 0) == p);
    CHECK(CreateIoCompletionPort((HANDLE)t, p, 58, 0) == p);
    char big[100];
    for (int i = 0; i < 100; i++) big[i] = (char)i;
    WSABUF sb = {100, big};
    OVERLAPPED sov = {0};
    CHECK(WSASendTo(t, &sb, 1, NULL, 0, (struct sockaddr *)&ra, sizeof ra, &sov, NULL) ==
          SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    expect_packet(p, TRUE, 0, 100, 58, &sov);
    char small[10];
    WSABUF rb = {10, small};
    struct sockaddr_in from;
    int fromlen = sizeof from;
    DWORD flags = 0;
    OVERLAPPED rov = {0};
    CHECK(WSARecvFrom(r, &rb, 1, NULL, &flags, (struct sockaddr *)&from, &fromlen, &rov, NULL) ==
          SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    expect_packet(p, FALSE, ERROR_MORE_DATA, 10, 57, &rov);
    CHECK_EQ(rov.Internal, STATUS_BUFFER_OVERFLOW);
    CHECK(memcmp(small, big, 10) == 0);
    CHECK_EQ(fromlen, sizeof ta);
    CHECK(from.sin_port == ta.sin_port);
    CHECK(closesocket(r) == 0 && closesocket(t) == 0);
    CHECK(CloseHandle(p));
}

static void case_58_zero_byte_receive(void) {
    HANDLE p = new_port(0);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 58, 0) == p);
    WSABUF wb = {0, NULL};
    DWORD flags = 0;
    OVERLAPPED ov = {0};
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSA_IO_PENDING);
    expect_quiet(p);
    send_all(c, "12345", 5);
    expect_packet(p, TRUE, 0, 0, 58, &ov);
    char buf[16];
    CHECK_EQ(recv(s, buf, sizeof buf, MSG_DONTWAIT), 5);
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK(closesocket(c) == 0);
    expect_packet(p, TRUE, 0, 0, 58, &ov);
    CHECK_EQ(recv(s, buf, sizeof buf, MSG_DONTWAIT), 0);
    CHECK(closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void transmitfile_head_file_tail(void) {
    HANDLE p = new_port(0);
    char path[] = "/tmp/iocp-tf-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, "abcdefghij", 10) == 10);
    SOCKET c, s;
    tcp_pair(&c, &s);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 70, 0) == p);
    TRANSMIT_FILE_BUFFERS tfb = {(PVOID) "H:", 2, (PVOID) ":T", 2};
    OVERLAPPED ov = {0};
    ov.Offset = 2;
    CHECK(!pTransmitFile(s, (HANDLE)(intptr_t)fd, 5, 0, &ov, &tfb, 0));
    CHECK_EQ(WSAGetLastError(), ERROR_IO_PENDING);
    expect_packet(p, TRUE, 0, 9, 70, &ov);
    char buf[9];
    recv_all(c, buf, 9);
    CHECK(memcmp(buf, "H:cdefg:T", 9) == 0);
    CHECK(!pTransmitFile(s, (HANDLE)(intptr_t)fd, 0, 0, &ov, NULL, TF_DISCONNECT));
    CHECK_EQ(WSAGetLastError(), WSAEOPNOTSUPP);
    CHECK(close(fd) == 0);
    unlink(path);
    CHECK(closesocket(c) == 0 && closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void bad_sockets_fail_cleanly(void) {
    HANDLE p = new_port(0);
    char buf[4];
    WSABUF wb = {sizeof buf, buf};
    DWORD flags = 0;
    OVERLAPPED ov = {0};
    CHECK(WSARecv((SOCKET)100000, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAENOTSOCK);
    CHECK(WSARecv(INVALID_SOCKET, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAENOTSOCK);
    CHECK(closesocket(INVALID_SOCKET) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAENOTSOCK);
    SOCKET s = tcp_socket();
    /* Overlapped I/O on a socket with no port runs (reported through the OVERLAPPED only, as
     * on Windows); on this unconnected socket it fails in line, no packet anywhere. */
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAENOTCONN);
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 1, 0) == p);
    CHECK(WSARecv(s, NULL, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAEFAULT);
    CHECK(!AcceptEx(s, s, buf, 0, 8, 8, NULL, &ov));
    CHECK_EQ(WSAGetLastError(), WSAEINVAL);
    CHECK(closesocket(s) == 0);
    CHECK(WSARecv(s, &wb, 1, NULL, &flags, &ov, NULL) == SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAENOTSOCK);
    expect_quiet(p);
    CHECK(CloseHandle(p));
}

int main(void) {
    start_deadline();
    signal(SIGPIPE, SIG_IGN);
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    CHECK_EQ(wsa.wVersion, 0x0202);
    print_backend();
    RUN(extensions_through_wsaioctl);
    RUN(case_18_data_waiting_gives_exactly_one_packet);
    RUN(case_19_peer_closed_gives_one_zero_byte_packet);
    RUN(case_20_reset_fails_in_line_without_packet);
    RUN(case_21_unconnected_recv_fails_in_line);
    RUN(case_22_n_receives_n_packets);
    RUN(case_23_24_skip_mode);
    RUN(case_27_synchronous_calls_queue_nothing);
    RUN(stream_order_holds_with_pending_and_inline_receives);
    RUN(case_29_reset_is_netname_deleted);
    RUN(case_30_connectex_refused);
    RUN(case_31_cancelioex_one);
    RUN(case_32_cancelio_is_per_thread);
    RUN(case_34_closing_listener_aborts_acceptex);
    RUN(case_36_closesocket_aborts_recv_and_send);
    RUN(case_48_getoverlappedresult);
    RUN(getoverlappedresult_waits_for_the_dequeue);
    RUN(getoverlappedresult_returns_after_port_close);
    RUN(closesocket_of_accept_socket_aborts_acceptex);
    RUN(close_instead_of_closesocket_never_clobbers_the_number);
    RUN(close_instead_of_closesocket_stale_association);
    RUN(closesocket_wakes_blocking_accept_and_recv);
    RUN(closesocket_ends_overlappeds_without_a_dequeue);
    RUN(connectex_then_reset_succeeds_and_next_io_sees_the_reset);
    RUN(case_52_53_acceptex_keys_bytes_and_addresses);
    RUN(case_54_connectex);
    RUN(case_56_scatter_in_order);
    RUN(case_57_udp_too_small_buffer);
    RUN(case_58_zero_byte_receive);
    RUN(transmitfile_head_file_tail);
    RUN(bad_sockets_fail_cleanly);
    CHECK(WSACleanup() == 0);
    return 0;
}
