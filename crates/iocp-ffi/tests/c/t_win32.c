/* The Win32 around IOCP code (issue 14 §1), written as a Windows program: only the Windows
 * headers, no Linux line. Threads, events and waits in one handle table, CRITICAL_SECTION,
 * Interlocked*, console control handlers, WSAGetLastError after the BSD calls, constants and
 * layouts. Built as C and as C++ with -Wall -Wextra -Werror. */
#include <winsock2.h>
#include <WinSock2.h>
#include <mswsock.h>
#include <MSWSock.h>
#include <ws2tcpip.h>
#include <Ws2tcpip.h>
#include <windows.h>
#include <process.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

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

static void constants_and_layouts(void) {
    CHECK_EQ(WAIT_OBJECT_0, 0);
    CHECK_EQ(WAIT_TIMEOUT, 258);
    CHECK_EQ(WAIT_FAILED, 0xFFFFFFFFu);
    CHECK_EQ(STILL_ACTIVE, 259);
    CHECK_EQ(MAXIMUM_WAIT_OBJECTS, 64);
    CHECK_EQ(CTRL_C_EVENT, 0);
    CHECK_EQ(CTRL_BREAK_EVENT, 1);
    CHECK_EQ(CTRL_CLOSE_EVENT, 2);
    CHECK_EQ(CTRL_SHUTDOWN_EVENT, 6);
    CHECK_EQ(CREATE_SUSPENDED, 4);
    CHECK(WSA_INVALID_EVENT == NULL);
    CHECK_EQ(WSA_WAIT_EVENT_0, 0);
    CHECK_EQ(WSA_WAIT_TIMEOUT, 258);
    CHECK_EQ(sizeof(LARGE_INTEGER), 8);
    CHECK_EQ(sizeof(ULARGE_INTEGER), 8);
    CHECK_EQ(sizeof(BOOLEAN), 1);
    CHECK_EQ(sizeof(USHORT), 2);
    CHECK_EQ(sizeof(UINT16), 2);
    CHECK_EQ(sizeof(UINT32), 4);
    CHECK_EQ(sizeof(INT64), 8);
    CHECK_EQ(sizeof(LONG64), 8);
    CHECK_EQ(sizeof(ULONG64), 8);
    CHECK_EQ(sizeof(HRESULT), 4);
    CHECK_EQ(sizeof(LONG), 4);
#if defined(__x86_64__)
    CHECK_EQ(sizeof(CRITICAL_SECTION), 40);
#endif
    LARGE_INTEGER li;
    li.QuadPart = 0x1122334455667788LL;
    CHECK_EQ(li.u.LowPart, 0x55667788u);
    CHECK_EQ(li.u.HighPart, 0x11223344);
    int arr[7];
    CHECK_EQ(ARRAYSIZE(arr), 7);
    CHECK_EQ(min(3, 4), 3);
    CHECK_EQ(max(3, 4), 4);
    char buf[4] DECLSPEC_ALIGN(16);
    CHECK(((uintptr_t)buf & 15) == 0);
}

static volatile LONG g_tid;

static DWORD WINAPI returns_42(LPVOID arg) {
    g_tid = (LONG)GetCurrentThreadId();
    CHECK(arg == (LPVOID)&g_tid);
    return 42;
}

static DWORD WINAPI waits_for_event(LPVOID arg) {
    HANDLE ev = (HANDLE)arg;
    CHECK_EQ(WaitForSingleObject(ev, 10000), WAIT_OBJECT_0);
    return 7;
}

static unsigned __stdcall begun(void *arg) {
    return *(unsigned *)arg + 1;
}

static void threads_and_exit_codes(void) {
    DWORD tid = 0;
    HANDLE t = CreateThread(NULL, 0, returns_42, (LPVOID)&g_tid, 0, &tid);
    CHECK(t != NULL);
    CHECK_EQ(WaitForSingleObject(t, 10000), WAIT_OBJECT_0);
    DWORD code = 0;
    CHECK(GetExitCodeThread(t, &code));
    CHECK_EQ(code, 42);
    CHECK_EQ(tid, (DWORD)g_tid);
    CHECK(tid != GetCurrentThreadId());
    CHECK_EQ(WaitForSingleObject(t, 0), WAIT_OBJECT_0); /* stays signalled */
    CHECK(CloseHandle(t));
    CHECK(!CloseHandle(t));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK_EQ(WaitForSingleObject(t, 0), WAIT_FAILED);
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);

    HANDLE ev = CreateEvent(NULL, TRUE, FALSE, NULL);
    CHECK(ev != NULL);
    t = CreateThread(NULL, 128 * 1024, waits_for_event, ev, 0, NULL);
    CHECK(t != NULL);
    CHECK(GetExitCodeThread(t, &code));
    CHECK_EQ(code, STILL_ACTIVE);
    CHECK_EQ(WaitForSingleObject(t, 50), WAIT_TIMEOUT);
    CHECK(SetEvent(ev));
    CHECK_EQ(WaitForSingleObject(t, 10000), WAIT_OBJECT_0);
    CHECK(GetExitCodeThread(t, &code));
    CHECK_EQ(code, 7);
    CHECK(CloseHandle(t) && CloseHandle(ev));

    unsigned in = 9, id = 0;
    HANDLE b = (HANDLE)_beginthreadex(NULL, 0, begun, &in, 0, &id);
    CHECK(b != NULL && id != 0);
    CHECK_EQ(WaitForSingleObject(b, 10000), WAIT_OBJECT_0);
    CHECK(GetExitCodeThread(b, &code));
    CHECK_EQ(code, 10);
    CHECK(CloseHandle(b));
    CHECK(CreateThread(NULL, 0, returns_42, NULL, CREATE_SUSPENDED, NULL) == NULL);
    CHECK_EQ(GetLastError(), ERROR_NOT_SUPPORTED);
}

static void events_and_multiple_waits(void) {
    HANDLE autoev = CreateEventA(NULL, FALSE, FALSE, NULL);
    HANDLE manual = CreateEventW(NULL, TRUE, FALSE, NULL);
    CHECK(autoev && manual);
    HANDLE both[2] = {autoev, manual};
    CHECK_EQ(WaitForMultipleObjects(2, both, FALSE, 20), WAIT_TIMEOUT);
    CHECK(SetEvent(manual));
    CHECK_EQ(WaitForMultipleObjects(2, both, FALSE, 1000), WAIT_OBJECT_0 + 1);
    CHECK_EQ(WaitForMultipleObjects(2, both, FALSE, 1000), WAIT_OBJECT_0 + 1); /* manual stays */
    CHECK_EQ(WaitForMultipleObjects(2, both, TRUE, 20), WAIT_TIMEOUT);
    CHECK(SetEvent(autoev));
    CHECK_EQ(WaitForMultipleObjects(2, both, TRUE, 1000), WAIT_OBJECT_0);
    CHECK_EQ(WaitForSingleObject(autoev, 20), WAIT_TIMEOUT); /* the wait consumed it */
    CHECK(ResetEvent(manual));
    CHECK_EQ(WaitForSingleObject(manual, 20), WAIT_TIMEOUT);
    CHECK_EQ(WaitForMultipleObjects(0, both, FALSE, 0), WAIT_FAILED);
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(CloseHandle(autoev) && CloseHandle(manual));
    CHECK(!SetEvent(autoev));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);

    WSAEVENT w = WSACreateEvent();
    CHECK(w != WSA_INVALID_EVENT);
    CHECK_EQ(WSAWaitForMultipleEvents(1, &w, FALSE, 20, FALSE), WSA_WAIT_TIMEOUT);
    CHECK(WSASetEvent(w));
    CHECK_EQ(WSAWaitForMultipleEvents(1, &w, TRUE, WSA_INFINITE, FALSE), WSA_WAIT_EVENT_0);
    CHECK(WSAResetEvent(w));
    CHECK_EQ(WSAWaitForMultipleEvents(1, &w, FALSE, 0, FALSE), WSA_WAIT_TIMEOUT);
    CHECK(WSACloseEvent(w));
    /* A port is not waitable, and its handle is not an event's. */
    HANDLE p = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    CHECK(p != NULL);
    CHECK_EQ(WaitForSingleObject(p, 0), WAIT_FAILED);
    CHECK(CloseHandle(p));
}

#define WORKERS 4
#define ROUNDS 20000
static CRITICAL_SECTION g_cs;
static long long g_plain;
static volatile LONG g_count;
static volatile LONG64 g_count64;

static DWORD WINAPI hammer(LPVOID arg) {
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        EnterCriticalSection(&g_cs);
        EnterCriticalSection(&g_cs); /* recursive */
        g_plain++;
        LeaveCriticalSection(&g_cs);
        LeaveCriticalSection(&g_cs);
        InterlockedIncrement(&g_count);
        InterlockedExchangeAdd64(&g_count64, 2);
    }
    return 0;
}

static void critical_section_and_interlocked(void) {
    InitializeCriticalSection(&g_cs);
    HANDLE t[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        t[i] = CreateThread(NULL, 0, hammer, NULL, 0, NULL);
        CHECK(t[i] != NULL);
    }
    CHECK_EQ(WaitForMultipleObjects(WORKERS, t, TRUE, 60000), WAIT_OBJECT_0);
    for (int i = 0; i < WORKERS; i++) CHECK(CloseHandle(t[i]));
    CHECK_EQ(g_plain, WORKERS * ROUNDS);
    CHECK_EQ(g_count, WORKERS * ROUNDS);
    CHECK_EQ(g_count64, 2LL * WORKERS * ROUNDS);
    CHECK(TryEnterCriticalSection(&g_cs));
    LeaveCriticalSection(&g_cs);
    DeleteCriticalSection(&g_cs);
    volatile LONG v = 5;
    CHECK_EQ(InterlockedCompareExchange(&v, 9, 4), 5); /* no swap */
    CHECK_EQ(InterlockedCompareExchange(&v, 9, 5), 5);
    CHECK_EQ(v, 9);
    CHECK_EQ(InterlockedExchange(&v, 1), 9);
    CHECK_EQ(InterlockedDecrement(&v), 0);
    PVOID volatile ptr = NULL;
    CHECK(InterlockedCompareExchangePointer(&ptr, (PVOID)&v, NULL) == NULL);
    CHECK(ptr == (PVOID)&v);
}

static volatile LONG g_ctrl_type = -1;
static volatile LONG g_ctrl_tid;
static HANDLE g_ctrl_event;

static BOOL WINAPI on_ctrl(DWORD type) {
    g_ctrl_type = (LONG)type;
    g_ctrl_tid = (LONG)GetCurrentThreadId();
    SetEvent(g_ctrl_event);
    return TRUE;
}

static BOOL WINAPI declines(DWORD type) {
    (void)type;
    return FALSE; /* the older handler (on_ctrl) gets it next */
}

static void console_ctrl_handler_runs_on_a_thread(void) {
    g_ctrl_event = CreateEvent(NULL, FALSE, FALSE, NULL);
    CHECK(SetConsoleCtrlHandler(on_ctrl, TRUE));
    CHECK(SetConsoleCtrlHandler(declines, TRUE));
    CHECK(GenerateConsoleCtrlEvent(CTRL_C_EVENT, 0));
    CHECK_EQ(WaitForSingleObject(g_ctrl_event, 10000), WAIT_OBJECT_0);
    CHECK_EQ(g_ctrl_type, CTRL_C_EVENT);
    CHECK(g_ctrl_tid != (LONG)GetCurrentThreadId());
    CHECK(raise(SIGTERM) == 0); /* SIGTERM: CTRL_CLOSE_EVENT, and the process lives on */
    CHECK_EQ(WaitForSingleObject(g_ctrl_event, 10000), WAIT_OBJECT_0);
    CHECK_EQ(g_ctrl_type, CTRL_CLOSE_EVENT);
    CHECK(SetConsoleCtrlHandler(declines, FALSE));
    CHECK(!SetConsoleCtrlHandler(declines, FALSE));
    CHECK(CloseHandle(g_ctrl_event));
}

static void wsagetlasterror_after_bsd_calls(void) {
    SOCKET a = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    SOCKET b = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    CHECK(a != INVALID_SOCKET && b != INVALID_SOCKET);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(a, (SOCKADDR *)&sa, sizeof sa) == 0);
    int len = sizeof sa;
    CHECK(getsockname(a, (SOCKADDR *)&sa, &len) == 0);
    CHECK_EQ(len, sizeof sa);
    WSASetLastError(0);
    CHECK_EQ(bind(b, (SOCKADDR *)&sa, sizeof sa), SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAEADDRINUSE);
    /* Nothing listens on a: connect is refused. */
    SOCKET c = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    CHECK_EQ(connect(c, (SOCKADDR *)&sa, sizeof sa), SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAECONNREFUSED);
    char ch = 0;
    CHECK_EQ(send((SOCKET)99999, &ch, 1, 0), SOCKET_ERROR);
    CHECK_EQ(WSAGetLastError(), WSAENOTSOCK);
    CHECK(listen(a, SOMAXCONN_HINT(8)) == 0);
    u_long on = 1;
    CHECK(ioctlsocket(a, FIONBIO, &on) == 0);
    CHECK(accept(a, NULL, NULL) == INVALID_SOCKET);
    CHECK_EQ(WSAGetLastError(), WSAEWOULDBLOCK);
    BOOL yes = TRUE;
    CHECK(setsockopt(a, SOL_SOCKET, SO_PORT_SCALABILITY, (const char *)&yes, sizeof yes) == 0);
    LINGER lg = {1, 0};
    CHECK(setsockopt(b, SOL_SOCKET, SO_LINGER, (const char *)&lg, sizeof lg) == 0);
    CHECK(closesocket(a) == 0 && closesocket(b) == 0 && closesocket(c) == 0);
}

static void time_calls(void) {
    ULONGLONG t0 = GetTickCount64();
    LARGE_INTEGER f, c0, c1;
    CHECK(QueryPerformanceFrequency(&f) && f.QuadPart > 0);
    CHECK(QueryPerformanceCounter(&c0));
    Sleep(20);
    Sleep(0);
    CHECK(QueryPerformanceCounter(&c1));
    CHECK((c1.QuadPart - c0.QuadPart) * 1000 / f.QuadPart >= 19);
    CHECK(GetTickCount64() - t0 >= 19);
    CHECK((DWORD)(GetTickCount() - (DWORD)t0) >= 19);
}

static void system_info_and_heap(void) {
    SYSTEM_INFO si;
    memset(&si, 0xff, sizeof si);
    GetSystemInfo(&si);
    CHECK_EQ(sizeof si, 48);
    CHECK(si.dwNumberOfProcessors >= 1 && si.dwNumberOfProcessors < 100000);
    CHECK(si.dwPageSize >= 4096);
    CHECK_EQ(si.dwAllocationGranularity, 65536);
#if defined(__x86_64__)
    CHECK_EQ(si.wProcessorArchitecture, PROCESSOR_ARCHITECTURE_AMD64);
#endif
    unsigned char *p = (unsigned char *)HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, 100);
    CHECK(p != NULL);
    for (int i = 0; i < 100; i++) CHECK_EQ(p[i], 0);
    p = (unsigned char *)HeapReAlloc(GetProcessHeap(), 0, p, 200);
    CHECK(p != NULL && p[99] == 0);
    CHECK(HeapFree(GetProcessHeap(), 0, p));
}

int main(void) {
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    HANDLE p = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    printf("backend %s\n", iocp_port_backend(p));
    CHECK(CloseHandle(p));
    RUN(constants_and_layouts);
    RUN(threads_and_exit_codes);
    RUN(events_and_multiple_waits);
    RUN(critical_section_and_interlocked);
    RUN(console_ctrl_handler_runs_on_a_thread);
    RUN(wsagetlasterror_after_bsd_calls);
    RUN(time_calls);
    RUN(system_info_and_heap);
    WSACleanup();
    return 0;
}
