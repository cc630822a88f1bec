/* The rest of the Win32 around IOCP code (issue 14 §1), as a Windows program writes it:
 * structured exception handling's common shapes, SRWLOCK, VirtualAlloc/VirtualFree,
 * FormatMessage, GetVersionEx, the file size and pointer calls, lstr*, strsafe.h, tchar.h,
 * the _s string calls, GetStdHandle/WriteConsole, WSAAccept with a condition function,
 * SOCKADDR_INET / IN6ADDR_SETV4MAPPED, SIO_KEEPALIVE_VALS. Built as C and as C++ with
 * -Wall -Wextra -Werror, run on both backends. */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mstcpip.h>
#include <mswsock.h>
#include <windows.h>
#include <strsafe.h>
#include <tchar.h>

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

/* The values and layouts of the Windows SDK (x64), for what these headers add. */
static void constants_and_layouts(void) {
    CHECK_EQ(SIO_KEEPALIVE_VALS, 0x98000004u);
    CHECK_EQ(SIO_LOOPBACK_FAST_PATH, 0x98000010u);
    CHECK_EQ(sizeof(struct tcp_keepalive), 12);
    CHECK_EQ(STRSAFE_E_INSUFFICIENT_BUFFER, (HRESULT)0x8007007A);
    CHECK_EQ(STRSAFE_E_INVALID_PARAMETER, (HRESULT)0x80070057);
    CHECK_EQ(MEM_COMMIT, 0x1000);
    CHECK_EQ(MEM_RESERVE, 0x2000);
    CHECK_EQ(MEM_DECOMMIT, 0x4000);
    CHECK_EQ(MEM_RELEASE, 0x8000);
    CHECK_EQ(PAGE_READWRITE, 0x04);
    CHECK_EQ(PAGE_NOACCESS, 0x01);
    CHECK_EQ(FORMAT_MESSAGE_ALLOCATE_BUFFER, 0x100);
    CHECK_EQ(FORMAT_MESSAGE_IGNORE_INSERTS, 0x200);
    CHECK_EQ(FORMAT_MESSAGE_FROM_SYSTEM, 0x1000);
    CHECK_EQ(MAKELANGID(LANG_NEUTRAL, SUBLANG_DEFAULT), 0x400);
    CHECK_EQ(sizeof(OSVERSIONINFOA), 148);
    CHECK_EQ(sizeof(OSVERSIONINFOEXA), 156);
    CHECK_EQ(STD_INPUT_HANDLE, (DWORD)-10);
    CHECK_EQ(STD_OUTPUT_HANDLE, (DWORD)-11);
    CHECK_EQ(STD_ERROR_HANDLE, (DWORD)-12);
    CHECK_EQ(FILE_BEGIN, 0);
    CHECK_EQ(FILE_CURRENT, 1);
    CHECK_EQ(FILE_END, 2);
    CHECK_EQ(INVALID_FILE_SIZE, 0xFFFFFFFFu);
    CHECK_EQ(CF_ACCEPT, 0);
    CHECK_EQ(CF_REJECT, 1);
    CHECK_EQ(CF_DEFER, 2);
    CHECK_EQ(WSATRY_AGAIN, 11002);
    CHECK_EQ(EXCEPTION_EXECUTE_HANDLER, 1);
    CHECK_EQ(EXCEPTION_CONTINUE_SEARCH, 0);
    CHECK_EQ(sizeof(SOCKADDR_INET), 28);
    CHECK_EQ(sizeof(SCOPE_ID), 4);
    CHECK_EQ(sizeof(TCHAR), 1);
    CHECK_EQ(LPTR, 0x40);
}

/* The SDK servers' shape: __try with __leave on failure, cleanup in __finally. */
static int g_cleanups;
static int seh_try_finally(int fail_at) {
    int reached = 0;
    __try {
        reached = 1;
        if (fail_at == 1) __leave;
        reached = 2;
        if (fail_at == 2) __leave;
        reached = 3;
    } __finally {
        g_cleanups++;
    }
    return reached;
}

static int seh_try_except(void) {
    int r = 0;
    __try {
        r = 1;
    } __except (EXCEPTION_EXECUTE_HANDLER) {
        r = -1; /* no exception: never runs */
    }
    return r;
}

static void structured_exception_handling_shapes(void) {
    g_cleanups = 0;
    CHECK_EQ(seh_try_finally(1), 1);
    CHECK_EQ(seh_try_finally(2), 2);
    CHECK_EQ(seh_try_finally(0), 3);
    CHECK_EQ(g_cleanups, 3);
    CHECK_EQ(seh_try_except(), 1);
    CHECK_EQ(GetExceptionCode(), 0);
}

static SRWLOCK g_srw = SRWLOCK_INIT;
static long long g_guarded;
static DWORD WINAPI srw_writer(LPVOID arg) {
    (void)arg;
    for (int i = 0; i < 100000; i++) {
        AcquireSRWLockExclusive(&g_srw);
        g_guarded++;
        ReleaseSRWLockExclusive(&g_srw);
    }
    return 0;
}

static void srwlock_excludes_writers_and_shares_readers(void) {
    HANDLE t[4];
    for (int i = 0; i < 4; i++) t[i] = CreateThread(NULL, 0, srw_writer, NULL, 0, NULL);
    CHECK_EQ(WaitForMultipleObjects(4, t, TRUE, 60000), WAIT_OBJECT_0);
    for (int i = 0; i < 4; i++) CHECK(CloseHandle(t[i]));
    CHECK_EQ(g_guarded, 400000);
    AcquireSRWLockShared(&g_srw);
    CHECK(TryAcquireSRWLockShared(&g_srw)); /* readers share */
    CHECK(!TryAcquireSRWLockExclusive(&g_srw));
    ReleaseSRWLockShared(&g_srw);
    ReleaseSRWLockShared(&g_srw);
    CHECK(TryAcquireSRWLockExclusive(&g_srw));
    ReleaseSRWLockExclusive(&g_srw);
    SRWLOCK dyn;
    InitializeSRWLock(&dyn);
    AcquireSRWLockExclusive(&dyn);
    ReleaseSRWLockExclusive(&dyn);
}

static void virtual_alloc_reserve_commit_release(void) {
    SYSTEM_INFO si;
    GetSystemInfo(&si);
    char *p = (char *)VirtualAlloc(NULL, 3 * si.dwPageSize, MEM_COMMIT | MEM_RESERVE,
                                   PAGE_READWRITE);
    CHECK(p != NULL);
    CHECK_EQ((ULONG_PTR)p % si.dwPageSize, 0);
    for (DWORD i = 0; i < 3 * si.dwPageSize; i++) CHECK_EQ(p[i], 0); /* zeroed, as on Windows */
    memset(p, 7, 3 * si.dwPageSize);
    CHECK(VirtualFree(p, 0, MEM_RELEASE));
    /* Reserve, then commit one page of it. */
    char *r = (char *)VirtualAlloc(NULL, 16 * si.dwPageSize, MEM_RESERVE, PAGE_NOACCESS);
    CHECK(r != NULL);
    char *c = (char *)VirtualAlloc(r + si.dwPageSize, si.dwPageSize, MEM_COMMIT, PAGE_READWRITE);
    CHECK(c == r + si.dwPageSize);
    c[0] = 1;
    c[si.dwPageSize - 1] = 2;
    CHECK(VirtualFree(c, si.dwPageSize, MEM_DECOMMIT));
    CHECK(!VirtualFree(r, 5, MEM_RELEASE)); /* MEM_RELEASE takes size 0 */
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(VirtualFree(r, 0, MEM_RELEASE));
    CHECK(VirtualAlloc(NULL, 0, MEM_COMMIT, PAGE_READWRITE) == NULL);
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
}

static void format_message_and_version(void) {
    char buf[256];
    DWORD n = FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS, NULL,
                             WSAECONNRESET, MAKELANGID(LANG_NEUTRAL, SUBLANG_DEFAULT), buf,
                             sizeof buf, NULL);
    CHECK(n > 0 && n == strlen(buf));
    CHECK(strstr(buf, "forcibly closed") != NULL);
    LPSTR text = NULL;
    n = FormatMessage(FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM |
                          FORMAT_MESSAGE_IGNORE_INSERTS,
                      NULL, ERROR_OPERATION_ABORTED, 0, (LPSTR)&text, 0, NULL);
    CHECK(n > 0 && text != NULL && strstr(text, "aborted") != NULL);
    LocalFree(text);
    char tiny[4];
    CHECK_EQ(FormatMessageA(FORMAT_MESSAGE_FROM_SYSTEM, NULL, 5, 0, tiny, sizeof tiny, NULL), 0);
    CHECK_EQ(GetLastError(), ERROR_INSUFFICIENT_BUFFER);
    OSVERSIONINFO v;
    ZeroMemory(&v, sizeof v);
    v.dwOSVersionInfoSize = sizeof v;
    CHECK(GetVersionEx(&v));
    CHECK(v.dwMajorVersion >= 6 && v.dwPlatformId == VER_PLATFORM_WIN32_NT);
    OSVERSIONINFOEX vx;
    ZeroMemory(&vx, sizeof vx);
    vx.dwOSVersionInfoSize = sizeof vx;
    CHECK(GetVersionEx((LPOSVERSIONINFO)&vx) && vx.dwMajorVersion == v.dwMajorVersion);
    v.dwOSVersionInfoSize = 3;
    CHECK(!GetVersionEx(&v));
}

static void file_size_pointer_end_of_file(void) {
    char path[64];
    CHECK(StringCchPrintf(path, ARRAYSIZE(path), "/tmp/iocp-t-w32-%u", GetCurrentProcessId()) ==
          S_OK);
    HANDLE f = CreateFile(path, GENERIC_READ | GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, 0, NULL);
    CHECK(f != INVALID_HANDLE_VALUE);
    DWORD wrote = 0;
    CHECK(WriteFile(f, "0123456789", 10, &wrote, NULL) && wrote == 10);
    DWORD high = 77;
    CHECK_EQ(GetFileSize(f, &high), 10);
    CHECK_EQ(high, 0);
    LARGE_INTEGER size, at, to;
    CHECK(GetFileSizeEx(f, &size) && size.QuadPart == 10);
    to.QuadPart = 4;
    CHECK(SetFilePointerEx(f, to, &at, FILE_BEGIN) && at.QuadPart == 4);
    CHECK(SetEndOfFile(f));
    CHECK_EQ(GetFileSize(f, NULL), 4);
    CHECK_EQ(SetFilePointer(f, -2, NULL, FILE_END), 2);
    CHECK_EQ(SetFilePointer(f, 1, NULL, FILE_CURRENT), 3);
    char c = 0;
    DWORD got = 0;
    CHECK(ReadFile(f, &c, 1, &got, NULL) && got == 1 && c == '3');
    CHECK(FlushFileBuffers(f));
    CHECK(!SetFilePointerEx(f, to, NULL, 9));
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(CloseHandle(f));
    CHECK(DeleteFile(path));
    CHECK(!DeleteFile(path));
    CHECK_EQ(GetLastError(), ERROR_FILE_NOT_FOUND);
}

static void strings_strsafe_tchar(void) {
    char a[8];
    CHECK_EQ(lstrlen("abc"), 3);
    CHECK_EQ(lstrlenA(NULL), 0);
    lstrcpy(a, "ab");
    lstrcat(a, "cd");
    CHECK(lstrcmp(a, "abcd") == 0 && lstrcmpi(a, "ABCD") == 0);
    lstrcpyn(a, "abcdefghij", 4);
    CHECK(strcmp(a, "abc") == 0);
    CHECK_EQ(StringCchCopy(a, ARRAYSIZE(a), "1234567"), S_OK);
    CHECK_EQ(StringCchCopy(a, ARRAYSIZE(a), "123456789"), STRSAFE_E_INSUFFICIENT_BUFFER);
    CHECK(strcmp(a, "1234567") == 0); /* truncated, terminated */
    CHECK_EQ(StringCbCopyN(a, sizeof a, "xyzw", 2), S_OK);
    CHECK(strcmp(a, "xy") == 0);
    CHECK_EQ(StringCchCat(a, ARRAYSIZE(a), "abc"), S_OK);
    CHECK_EQ(StringCchCat(a, ARRAYSIZE(a), "defg"), STRSAFE_E_INSUFFICIENT_BUFFER);
    CHECK(strcmp(a, "xyabcde") == 0);
    CHECK_EQ(StringCchPrintf(a, ARRAYSIZE(a), "%d-%s", 42, "xy"), S_OK);
    CHECK(strcmp(a, "42-xy") == 0);
    CHECK_EQ(StringCbPrintf(a, sizeof a, "%s", "too long here"), STRSAFE_E_INSUFFICIENT_BUFFER);
    size_t len = 9;
    CHECK_EQ(StringCchLength(a, ARRAYSIZE(a), &len), S_OK);
    CHECK_EQ(len, 7);
    CHECK_EQ(StringCchCopy(a, 0, "x"), STRSAFE_E_INVALID_PARAMETER);
    TCHAR t[16];
    _tcscpy(t, _T("tchar"));
    CHECK_EQ(_tcslen(t), 5);
    CHECK(_tcsicmp(t, TEXT("TCHAR")) == 0);
    CHECK_EQ(_ttoi(_T("17")), 17);
    char s[4];
    CHECK_EQ(strcpy_s(s, sizeof s, "abc"), 0);
    CHECK_EQ(strcpy_s(s, sizeof s, "abcd"), ERANGE);
    CHECK_EQ(s[0], 0);
    CHECK_EQ(strcpy_s(s, sizeof s, "a"), 0);
    CHECK_EQ(strcat_s(s, sizeof s, "bc"), 0);
    CHECK(strcmp(s, "abc") == 0);
    CHECK_EQ(sprintf_s(s, sizeof s, "%d", 7), 1);
    CHECK(_stricmp("Ab", "aB") == 0);
}

static void console_handles(void) {
    HANDLE out = GetStdHandle(STD_OUTPUT_HANDLE);
    CHECK(out != INVALID_HANDLE_VALUE && out != NULL);
    fflush(stdout);
    DWORD n = 0;
    CHECK(WriteConsole(out, "console line\n", 13, &n, NULL) && n == 13);
    CHECK(WriteFile(GetStdHandle(STD_ERROR_HANDLE), "stderr line\n", 12, &n, NULL) && n == 12);
    CHECK(GetStdHandle(STD_INPUT_HANDLE) != INVALID_HANDLE_VALUE);
    CHECK(GetStdHandle(7) == INVALID_HANDLE_VALUE);
}

static int CALLBACK only_loopback(LPWSABUF caller, LPWSABUF caller_data, LPQOS sqos,
                                  LPQOS gqos, LPWSABUF callee, LPWSABUF callee_data, GROUP *g,
                                  DWORD_PTR data) {
    (void)caller_data, (void)sqos, (void)gqos, (void)callee_data, (void)g;
    const SOCKADDR_IN *peer = (const SOCKADDR_IN *)caller->buf;
    CHECK_EQ(caller->len, sizeof(SOCKADDR_IN));
    CHECK_EQ(callee->len, sizeof(SOCKADDR_IN));
    int *calls = (int *)data;
    return (*calls)++ == 0 && peer->sin_addr.s_addr == htonl(INADDR_LOOPBACK) ? CF_ACCEPT
                                                                               : CF_REJECT;
}

static void wsaaccept_condition_and_addresses(void) {
    SOCKET l = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    SOCKADDR_INET sa;
    ZeroMemory(&sa, sizeof sa);
    sa.Ipv4.sin_family = AF_INET;
    sa.Ipv4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(l, (SOCKADDR *)&sa.Ipv4, sizeof sa.Ipv4) == 0);
    int len = sizeof sa.Ipv4;
    CHECK(getsockname(l, (SOCKADDR *)&sa.Ipv4, &len) == 0);
    CHECK_EQ(sa.si_family, AF_INET);
    CHECK(listen(l, 4) == 0);
    SOCKET c1 = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    SOCKET c2 = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
    CHECK(connect(c1, (SOCKADDR *)&sa.Ipv4, sizeof sa.Ipv4) == 0);
    CHECK(connect(c2, (SOCKADDR *)&sa.Ipv4, sizeof sa.Ipv4) == 0);
    int calls = 0;
    SOCKADDR_IN peer;
    int plen = sizeof peer;
    SOCKET a = WSAAccept(l, (SOCKADDR *)&peer, &plen, only_loopback, (DWORD_PTR)&calls);
    CHECK(a != INVALID_SOCKET);
    CHECK_EQ(plen, sizeof peer);
    CHECK(peer.sin_addr.s_addr == htonl(INADDR_LOOPBACK));
    CHECK(WSAAccept(l, NULL, NULL, only_loopback, (DWORD_PTR)&calls) == INVALID_SOCKET);
    CHECK_EQ(WSAGetLastError(), WSAECONNREFUSED);
    CHECK_EQ(calls, 2);
    /* SIO_KEEPALIVE_VALS on the accepted socket. */
    struct tcp_keepalive ka = {1, 30000, 5500};
    DWORD ret = 99;
    CHECK(WSAIoctl(a, SIO_KEEPALIVE_VALS, &ka, sizeof ka, NULL, 0, &ret, NULL, NULL) == 0);
    CHECK_EQ(ret, 0);
    int v = 0;
    int vl = sizeof v;
    CHECK(getsockopt(a, SOL_SOCKET, SO_KEEPALIVE, (char *)&v, &vl) == 0 && v == 1);
    CHECK(getsockopt(a, IPPROTO_TCP, TCP_KEEPIDLE, (char *)&v, &vl) == 0 && v == 30);
    CHECK(getsockopt(a, IPPROTO_TCP, TCP_KEEPINTVL, (char *)&v, &vl) == 0 && v == 6);
    CHECK(WSAIoctl(a, SIO_LOOPBACK_FAST_PATH, &v, sizeof v, NULL, 0, &ret, NULL, NULL) == 0);
    /* An IPv4-mapped IPv6 address. */
    SOCKADDR_IN6 a6;
    IN6ADDR_SETV4MAPPED(&a6, &peer.sin_addr, scopeid_unspecified, htons(80));
    CHECK_EQ(a6.sin6_family, AF_INET6);
    CHECK(IN6_IS_ADDR_V4MAPPED(&a6.sin6_addr));
    CHECK(memcmp(&a6.sin6_addr.s6_addr[12], &peer.sin_addr, 4) == 0);
    CHECK_EQ(ntohs(a6.sin6_port), 80);
    CHECK(closesocket(a) == 0 && closesocket(c1) == 0 && closesocket(c2) == 0);
    CHECK(closesocket(l) == 0);
}

int main(void) {
    WSADATA wsa;
    CHECK(WSAStartup(MAKEWORD(2, 2), &wsa) == 0);
    HANDLE p = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0);
    printf("backend %s\n", iocp_port_backend(p));
    CHECK(CloseHandle(p));
    RUN(constants_and_layouts);
    RUN(structured_exception_handling_shapes);
    RUN(srwlock_excludes_writers_and_shares_readers);
    RUN(virtual_alloc_reserve_commit_release);
    RUN(format_message_and_version);
    RUN(file_size_pointer_end_of_file);
    RUN(strings_strsafe_tchar);
    RUN(console_handles);
    RUN(wsaaccept_condition_and_addresses);
    WSACleanup();
    printf("all passed\n");
    return 0;
}
