/* Port and GQCS basics, failures, close, concurrency: cases 1-5, 7, 9, 13 and the invalid
 * handle / parameter rules (iocp-semantics.md §15). */
#include "check.h"

static void case_1_timeout_leaves_sentinels(void) {
    HANDLE p = new_port(0);
    DWORD n = 0xdeadbeef;
    ULONG_PTR k = 0xdeadbeef;
    LPOVERLAPPED o = (LPOVERLAPPED)0x1234;
    CHECK(!GetQueuedCompletionStatus(p, &n, &k, &o, 0));
    CHECK_EQ(GetLastError(), WAIT_TIMEOUT);
    CHECK(o == NULL);
    CHECK_EQ(n, 0xdeadbeef);
    CHECK_EQ(k, 0xdeadbeef);
    long long t0 = now_ms();
    CHECK(!GetQueuedCompletionStatus(p, &n, &k, &o, 300));
    long long dt = now_ms() - t0;
    CHECK_EQ(GetLastError(), WAIT_TIMEOUT);
    CHECK(dt >= 299 && dt < 5000);
    CHECK(CloseHandle(p));
}

static void case_2_posted_values_come_back(void) {
    HANDLE p = new_port(0);
    CHECK(PostQueuedCompletionStatus(p, 7, 0xABC, (LPOVERLAPPED)0x1234));
    expect_packet(p, TRUE, 0, 7, 0xABC, (LPOVERLAPPED)0x1234);
    CHECK(CloseHandle(p));
}

static void case_3_posted_null_overlapped_is_true(void) {
    HANDLE p = new_port(0);
    CHECK(PostQueuedCompletionStatus(p, 0, 0, NULL));
    SetLastError(0xdeadbeef);
    expect_packet(p, TRUE, 0, 0, 0, NULL);
    CHECK_EQ(GetLastError(), 0xdeadbeef); /* unchanged on success */
    CHECK(CloseHandle(p));
}

static void case_4_fifo(void) {
    HANDLE p = new_port(0);
    for (ULONG_PTR k = 1; k <= 1000; k++) CHECK(PostQueuedCompletionStatus(p, 0, k, NULL));
    for (ULONG_PTR k = 1; k <= 1000; k++) expect_packet(p, TRUE, 0, 0, k, NULL);
    expect_quiet(p);
    CHECK(CloseHandle(p));
}

static void case_5_gqcsex_batches_in_order(void) {
    HANDLE p = new_port(0);
    OVERLAPPED_ENTRY e[4];
    ULONG n = 99;
    CHECK(PostQueuedCompletionStatus(p, 1, 11, (LPOVERLAPPED)0x10));
    CHECK(PostQueuedCompletionStatus(p, 2, 22, (LPOVERLAPPED)0x20));
    CHECK(GetQueuedCompletionStatusEx(p, e, 2, &n, 0, FALSE));
    CHECK_EQ(n, 2);
    CHECK_EQ(e[0].lpCompletionKey, 11);
    CHECK_EQ(e[1].lpCompletionKey, 22);
    CHECK(e[0].lpOverlapped == (LPOVERLAPPED)0x10);
    CHECK_EQ(e[0].Internal, 0);
    CHECK_EQ(e[1].dwNumberOfBytesTransferred, 2);
    CHECK(PostQueuedCompletionStatus(p, 1, 33, NULL));
    CHECK(PostQueuedCompletionStatus(p, 1, 44, NULL));
    CHECK(GetQueuedCompletionStatusEx(p, e, 1, &n, 0, FALSE));
    CHECK_EQ(n, 1);
    CHECK_EQ(e[0].lpCompletionKey, 33);
    CHECK(GetQueuedCompletionStatusEx(p, e, 1, &n, 0, TRUE));
    CHECK_EQ(n, 1);
    CHECK_EQ(e[0].lpCompletionKey, 44);
    CHECK(!GetQueuedCompletionStatusEx(p, e, 4, &n, 0, FALSE));
    CHECK_EQ(GetLastError(), WAIT_TIMEOUT);
    CHECK(!GetQueuedCompletionStatusEx(p, e, 0, &n, 0, FALSE));
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(CloseHandle(p));
}

struct waiter {
    HANDLE port;
    volatile int started;
    BOOL ret;
    DWORD err, bytes;
    ULONG_PTR key;
    LPOVERLAPPED ov;
};

static void *wait_thread(void *arg) {
    struct waiter *w = (struct waiter *)arg;
    w->ov = (LPOVERLAPPED)0x1;
    __atomic_store_n(&w->started, 1, __ATOMIC_SEQ_CST);
    w->ret = GetQueuedCompletionStatus(w->port, &w->bytes, &w->key, &w->ov, INFINITE);
    w->err = GetLastError();
    return NULL;
}

/* Starts a waiter and gives it time to block. The outcome is checked either way: a waiter that
 * had not blocked yet sees the handle already closed. */
static pthread_t start_waiter(struct waiter *w) {
    pthread_t t;
    CHECK(pthread_create(&t, NULL, wait_thread, w) == 0);
    while (!__atomic_load_n(&w->started, __ATOMIC_SEQ_CST)) sched_yield();
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    return t;
}

static void case_7_close_abandons_waiter_then_handle_is_stale(void) {
    struct waiter w = {.port = new_port(0)};
    pthread_t t = start_waiter(&w);
    CHECK(CloseHandle(w.port));
    CHECK(pthread_join(t, NULL) == 0);
    CHECK(!w.ret);
    CHECK(w.ov == NULL);
    CHECK(w.err == ERROR_ABANDONED_WAIT_0 || w.err == ERROR_INVALID_HANDLE);
    DWORD n;
    ULONG_PTR k;
    LPOVERLAPPED o = (LPOVERLAPPED)0x1;
    CHECK(!GetQueuedCompletionStatus(w.port, &n, &k, &o, 0));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(o == NULL);
    CHECK(!PostQueuedCompletionStatus(w.port, 0, 0, NULL));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(!CloseHandle(w.port));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
}

static void case_9_post_then_close_delivers(void) {
    struct waiter w = {.port = new_port(0)};
    pthread_t t = start_waiter(&w);
    CHECK(PostQueuedCompletionStatus(w.port, 5, 77, (LPOVERLAPPED)0x99));
    CHECK(CloseHandle(w.port));
    CHECK(pthread_join(t, NULL) == 0);
    if (w.ret) {
        CHECK_EQ(w.bytes, 5);
        CHECK_EQ(w.key, 77);
        CHECK(w.ov == (LPOVERLAPPED)0x99);
    } else {
        /* Only if the waiter had not reached GQCS before the close. */
        CHECK_EQ(w.err, ERROR_INVALID_HANDLE);
    }
}

static void case_13_associate_returns_the_same_port(void) {
    HANDLE p = new_port(1);
    SOCKET s = tcp_socket();
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 5, 99) == p);
    /* A second association (same port or another) fails: case 12. */
    CHECK(CreateIoCompletionPort((HANDLE)s, p, 6, 0) == NULL);
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    HANDLE q = CreateIoCompletionPort((HANDLE)s, NULL, 6, 0);
    CHECK(q == NULL);
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(closesocket(s) == 0);
    CHECK(CloseHandle(p));
}

static void invalid_handles_and_parameters_fail_cleanly(void) {
    DWORD n;
    ULONG_PTR k;
    LPOVERLAPPED o = (LPOVERLAPPED)0x1;
    CHECK(!GetQueuedCompletionStatus(NULL, &n, &k, &o, 0));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(o == NULL);
    CHECK(!GetQueuedCompletionStatus(INVALID_HANDLE_VALUE, &n, &k, &o, 0));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(!GetQueuedCompletionStatus((HANDLE)(uintptr_t)0x123456789, &n, &k, &o, 0));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(!PostQueuedCompletionStatus(NULL, 0, 0, NULL));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(!CloseHandle(NULL));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(!CloseHandle(INVALID_HANDLE_VALUE));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(!CloseHandle((HANDLE)(uintptr_t)100000));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    HANDLE p = new_port(0);
    CHECK(!GetQueuedCompletionStatus(p, &n, &k, NULL, 0));
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(!GetQueuedCompletionStatusEx(p, NULL, 1, NULL, 0, FALSE));
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(CreateIoCompletionPort(INVALID_HANDLE_VALUE, p, 0, 0) == NULL);
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(CreateIoCompletionPort((HANDLE)(uintptr_t)100000, p, 0, 0) == NULL);
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(CreateIoCompletionPort(NULL, p, 0, 0) == NULL);
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(!GetOverlappedResult(NULL, NULL, &n, FALSE));
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(!CancelIoEx((HANDLE)(uintptr_t)100000, NULL));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    /* Posting with a wild overlapped pointer is fine: it is never dereferenced. */
    CHECK(PostQueuedCompletionStatus(p, 1, 2, (LPOVERLAPPED)(uintptr_t)0xdead));
    expect_packet(p, TRUE, 0, 1, 2, (LPOVERLAPPED)(uintptr_t)0xdead);
    CHECK(CloseHandle(p));
}

#define WORKERS 4
#define PER_WORKER 2000
static unsigned char seen[WORKERS * PER_WORKER + 1];
static HANDLE cport;

static void *consumer(void *arg) {
    (void)arg;
    for (;;) {
        DWORD n;
        ULONG_PTR k;
        LPOVERLAPPED o;
        CHECK(GetQueuedCompletionStatus(cport, &n, &k, &o, 10000));
        if (k == 0) return NULL;
        __atomic_add_fetch(&seen[k], 1, __ATOMIC_RELAXED);
    }
}

static void *producer(void *arg) {
    ULONG_PTR base = (ULONG_PTR)arg;
    for (ULONG_PTR i = 1; i <= PER_WORKER; i++)
        CHECK(PostQueuedCompletionStatus(cport, 0, base + i, NULL));
    return NULL;
}

static void concurrency_every_packet_once(void) {
    cport = new_port(0);
    pthread_t c[WORKERS], p[WORKERS];
    for (int i = 0; i < WORKERS; i++) CHECK(pthread_create(&c[i], NULL, consumer, NULL) == 0);
    for (int i = 0; i < WORKERS; i++)
        CHECK(pthread_create(&p[i], NULL, producer, (void *)(uintptr_t)(i * PER_WORKER)) == 0);
    for (int i = 0; i < WORKERS; i++) CHECK(pthread_join(p[i], NULL) == 0);
    for (int i = 0; i < WORKERS; i++) CHECK(PostQueuedCompletionStatus(cport, 0, 0, NULL));
    for (int i = 0; i < WORKERS; i++) CHECK(pthread_join(c[i], NULL) == 0);
    for (int k = 1; k <= WORKERS * PER_WORKER; k++) CHECK_EQ(seen[k], 1);
    CHECK(CloseHandle(cport));
}

int main(void) {
    start_deadline();
    print_backend();
    RUN(case_1_timeout_leaves_sentinels);
    RUN(case_2_posted_values_come_back);
    RUN(case_3_posted_null_overlapped_is_true);
    RUN(case_4_fifo);
    RUN(case_5_gqcsex_batches_in_order);
    RUN(case_7_close_abandons_waiter_then_handle_is_stale);
    RUN(case_9_post_then_close_delivers);
    RUN(case_13_associate_returns_the_same_port);
    RUN(invalid_handles_and_parameters_fail_cleanly);
    RUN(concurrency_every_packet_once);
    return 0;
}
