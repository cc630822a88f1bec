/*
 * windows.h - for Windows programs built on Linux against libiocp: add
 * `-I<libiocp>/include/win32 -I<libiocp>/include` and link -liocp -lpthread.
 *
 * Brings iocp.h (the IOCP, Winsock and file API) and the ordinary Win32 around it: threads
 * (CreateThread, WaitForSingleObject/WaitForMultipleObjects on thread and event handles,
 * GetExitCodeThread, GetCurrentThreadId, Sleep, CloseHandle - one handle table with ports,
 * sockets and files), events, CRITICAL_SECTION, Interlocked*, SetConsoleCtrlHandler (SIGINT,
 * SIGQUIT, SIGTERM, SIGHUP delivered to the handlers on a library thread), tick counts and
 * performance counters, the usual types and macros. docs/PORTING.md says what differs.
 */
#ifndef IOCP_WIN32_WINDOWS_H
#define IOCP_WIN32_WINDOWS_H

/* The POSIX and BSD calls the inline functions use (rwlocks, strnlen, strcasecmp, mmap) are
 * declared only with these; as on Windows, include this header before the system's (or build
 * with -D_DEFAULT_SOURCE). */
#ifndef _DEFAULT_SOURCE
#define _DEFAULT_SOURCE 1
#endif

#include "../iocp.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef __cdecl
#define __cdecl
#endif
#ifndef __stdcall
#define __stdcall
#endif
#define APIENTRY
#define WINAPIV
#define DECLSPEC_ALIGN(x) __attribute__((aligned(x)))
#define UNREFERENCED_PARAMETER(p) ((void)(p))
#define ARRAYSIZE(a) (sizeof(a) / sizeof((a)[0]))
#define _countof(a) ARRAYSIZE(a)
#ifndef NOMINMAX
#ifndef min
#define min(a, b) (((a) < (b)) ? (a) : (b))
#endif
#ifndef max
#define max(a, b) (((a) > (b)) ? (a) : (b))
#endif
#endif

typedef uint8_t UINT8, BOOLEAN, *PBOOLEAN, UCHAR, *PUCHAR;
typedef int8_t INT8;
typedef uint16_t UINT16, USHORT, *PUSHORT;
typedef int16_t INT16, SHORT;
typedef uint32_t UINT32;
typedef int32_t INT32;
typedef uint64_t UINT64, ULONG64, DWORD64, *PULONG64;
typedef int64_t INT64, LONG64, *PLONG64;
typedef int32_t HRESULT;
typedef DWORD_PTR *PDWORD_PTR;
typedef SIZE_T *PSIZE_T;
typedef HANDLE HMODULE, HINSTANCE;
typedef LONG NTSTATUS;

typedef union _LARGE_INTEGER {
    struct {
        DWORD LowPart;
        LONG HighPart;
    } u;
    LONGLONG QuadPart;
} LARGE_INTEGER, *PLARGE_INTEGER;
typedef union _ULARGE_INTEGER {
    struct {
        DWORD LowPart;
        DWORD HighPart;
    } u;
    ULONGLONG QuadPart;
} ULARGE_INTEGER, *PULARGE_INTEGER;

#ifndef ERROR_INSUFFICIENT_BUFFER
#define ERROR_INSUFFICIENT_BUFFER 122
#endif
#define S_OK ((HRESULT)0)
#define SUCCEEDED(hr) (((HRESULT)(hr)) >= 0)
#define FAILED(hr) (((HRESULT)(hr)) < 0)

/* Waits and threads. */
#define WAIT_OBJECT_0 0u
#define WAIT_ABANDONED 0x80u
#define WAIT_FAILED 0xFFFFFFFFu
#define MAXIMUM_WAIT_OBJECTS 64
#define STILL_ACTIVE 259
#define CREATE_SUSPENDED 0x4
#define STACK_SIZE_PARAM_IS_A_RESERVATION 0x00010000
typedef DWORD(WINAPI *PTHREAD_START_ROUTINE)(LPVOID lpThreadParameter);
typedef PTHREAD_START_ROUTINE LPTHREAD_START_ROUTINE;

HANDLE WINAPI CreateThread(LPSECURITY_ATTRIBUTES lpThreadAttributes, SIZE_T dwStackSize,
                           LPTHREAD_START_ROUTINE lpStartAddress, LPVOID lpParameter,
                           DWORD dwCreationFlags, LPDWORD lpThreadId);
DWORD WINAPI GetCurrentThreadId(void);
BOOL WINAPI GetExitCodeThread(HANDLE hThread, LPDWORD lpExitCode);
void WINAPI Sleep(DWORD dwMilliseconds);
DWORD WINAPI WaitForSingleObject(HANDLE hHandle, DWORD dwMilliseconds);
DWORD WINAPI WaitForMultipleObjects(DWORD nCount, const HANDLE *lpHandles, BOOL bWaitAll,
                                    DWORD dwMilliseconds);

/* Events. Names are ignored (no sharing between processes). */
HANDLE WINAPI CreateEventA(LPSECURITY_ATTRIBUTES lpEventAttributes, BOOL bManualReset,
                           BOOL bInitialState, LPCSTR lpName);
HANDLE WINAPI CreateEventW(LPSECURITY_ATTRIBUTES lpEventAttributes, BOOL bManualReset,
                           BOOL bInitialState, LPCWSTR lpName);
#ifdef UNICODE
#define CreateEvent CreateEventW
#else
#define CreateEvent CreateEventA
#endif
BOOL WINAPI SetEvent(HANDLE hEvent);
BOOL WINAPI ResetEvent(HANDLE hEvent);

/* CRITICAL_SECTION: a recursive pthread mutex (its size is the platform's, 40 bytes on
 * x86_64 as on Windows x64; 48 on aarch64). */
typedef struct _RTL_CRITICAL_SECTION {
    pthread_mutex_t Mutex;
} CRITICAL_SECTION, *PCRITICAL_SECTION, *LPCRITICAL_SECTION;
void WINAPI InitializeCriticalSection(LPCRITICAL_SECTION lpCriticalSection);
BOOL WINAPI InitializeCriticalSectionAndSpinCount(LPCRITICAL_SECTION lpCriticalSection,
                                                  DWORD dwSpinCount);
void WINAPI EnterCriticalSection(LPCRITICAL_SECTION lpCriticalSection);
BOOL WINAPI TryEnterCriticalSection(LPCRITICAL_SECTION lpCriticalSection);
void WINAPI LeaveCriticalSection(LPCRITICAL_SECTION lpCriticalSection);
void WINAPI DeleteCriticalSection(LPCRITICAL_SECTION lpCriticalSection);

/* Interlocked*: full barriers, as on Windows. */
static inline LONG InterlockedIncrement(LONG volatile *p) {
    return __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST);
}
static inline LONG InterlockedDecrement(LONG volatile *p) {
    return __atomic_sub_fetch(p, 1, __ATOMIC_SEQ_CST);
}
static inline LONG InterlockedExchange(LONG volatile *p, LONG v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
static inline LONG InterlockedExchangeAdd(LONG volatile *p, LONG v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline LONG InterlockedAdd(LONG volatile *p, LONG v) {
    return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST);
}
static inline LONG InterlockedCompareExchange(LONG volatile *p, LONG exchange, LONG comparand) {
    __atomic_compare_exchange_n(p, &comparand, exchange, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return comparand;
}
static inline LONG InterlockedAnd(LONG volatile *p, LONG v) {
    return __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST);
}
static inline LONG InterlockedOr(LONG volatile *p, LONG v) {
    return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST);
}
static inline LONG InterlockedXor(LONG volatile *p, LONG v) {
    return __atomic_fetch_xor(p, v, __ATOMIC_SEQ_CST);
}
static inline LONG64 InterlockedIncrement64(LONG64 volatile *p) {
    return __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST);
}
static inline LONG64 InterlockedDecrement64(LONG64 volatile *p) {
    return __atomic_sub_fetch(p, 1, __ATOMIC_SEQ_CST);
}
static inline LONG64 InterlockedExchange64(LONG64 volatile *p, LONG64 v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
static inline LONG64 InterlockedExchangeAdd64(LONG64 volatile *p, LONG64 v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline LONG64 InterlockedAdd64(LONG64 volatile *p, LONG64 v) {
    return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST);
}
static inline LONG64 InterlockedCompareExchange64(LONG64 volatile *p, LONG64 exchange,
                                                  LONG64 comparand) {
    __atomic_compare_exchange_n(p, &comparand, exchange, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return comparand;
}
static inline PVOID InterlockedExchangePointer(PVOID volatile *p, PVOID v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
static inline PVOID InterlockedCompareExchangePointer(PVOID volatile *p, PVOID exchange,
                                                      PVOID comparand) {
    __atomic_compare_exchange_n(p, &comparand, exchange, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return comparand;
}
#define MemoryBarrier() __atomic_thread_fence(__ATOMIC_SEQ_CST)

/* Console control: SIGINT is CTRL_C_EVENT, SIGQUIT CTRL_BREAK_EVENT, SIGTERM and SIGHUP
 * CTRL_CLOSE_EVENT; the handlers run on a library thread, newest first, until one returns
 * TRUE; if none does, the signal's default action ends the process. */
#define CTRL_C_EVENT 0
#define CTRL_BREAK_EVENT 1
#define CTRL_CLOSE_EVENT 2
#define CTRL_LOGOFF_EVENT 5
#define CTRL_SHUTDOWN_EVENT 6
typedef BOOL(WINAPI *PHANDLER_ROUTINE)(DWORD CtrlType);
BOOL WINAPI SetConsoleCtrlHandler(PHANDLER_ROUTINE HandlerRoutine, BOOL Add);
BOOL WINAPI GenerateConsoleCtrlEvent(DWORD dwCtrlEvent, DWORD dwProcessGroupId);

/* System information and the process heap (malloc/calloc/realloc/free). */
#define PROCESSOR_ARCHITECTURE_AMD64 9
#define PROCESSOR_ARCHITECTURE_ARM64 12
typedef struct _SYSTEM_INFO {
    union {
        DWORD dwOemId;
        struct {
            WORD wProcessorArchitecture;
            WORD wReserved;
        };
    };
    DWORD dwPageSize;
    LPVOID lpMinimumApplicationAddress;
    LPVOID lpMaximumApplicationAddress;
    DWORD_PTR dwActiveProcessorMask;
    DWORD dwNumberOfProcessors;
    DWORD dwProcessorType;
    DWORD dwAllocationGranularity;
    WORD wProcessorLevel;
    WORD wProcessorRevision;
} SYSTEM_INFO, *LPSYSTEM_INFO;
void WINAPI GetSystemInfo(LPSYSTEM_INFO lpSystemInfo);

#define HEAP_NO_SERIALIZE 0x1
#define HEAP_GENERATE_EXCEPTIONS 0x4
#define HEAP_ZERO_MEMORY 0x8
static inline HANDLE GetProcessHeap(void) {
    static int heap;
    return (HANDLE)&heap;
}
static inline LPVOID HeapAlloc(HANDLE hHeap, DWORD dwFlags, SIZE_T dwBytes) {
    (void)hHeap;
    return (dwFlags & HEAP_ZERO_MEMORY) ? calloc(1, dwBytes ? dwBytes : 1)
                                        : malloc(dwBytes ? dwBytes : 1);
}
static inline LPVOID HeapReAlloc(HANDLE hHeap, DWORD dwFlags, LPVOID lpMem, SIZE_T dwBytes) {
    (void)hHeap;
    (void)dwFlags; /* HEAP_ZERO_MEMORY does not zero the grown part here */
    return realloc(lpMem, dwBytes ? dwBytes : 1);
}
static inline BOOL HeapFree(HANDLE hHeap, DWORD dwFlags, LPVOID lpMem) {
    (void)hHeap;
    (void)dwFlags;
    free(lpMem);
    return TRUE;
}

/* Time. */
DWORD WINAPI GetTickCount(void);
ULONGLONG WINAPI GetTickCount64(void);
BOOL WINAPI QueryPerformanceCounter(LARGE_INTEGER *lpPerformanceCount);
BOOL WINAPI QueryPerformanceFrequency(LARGE_INTEGER *lpFrequency);


/* libiocp extensions (not Win32) for the inline calls below: the last error from an errno, and
 * the text of a Win32 error code (FormatMessage). */
void iocp_set_last_error_from_errno(int e);
const char *iocp_error_text(DWORD code);

static inline DWORD iocp_w_fail_errno(void) {
    iocp_set_last_error_from_errno(errno);
    return 0;
}

/* Processes and the console. GetStdHandle gives the fd numbers of stdout and stderr (usable
 * with WriteFile and WriteConsole); stdin is a duplicate of fd 0 (fd 0 would be NULL). */
#define STD_INPUT_HANDLE ((DWORD)-10)
#define STD_OUTPUT_HANDLE ((DWORD)-11)
#define STD_ERROR_HANDLE ((DWORD)-12)
static inline DWORD GetCurrentProcessId(void) { return (DWORD)getpid(); }
static inline void ExitProcess(UINT uExitCode) { exit((int)uExitCode); }
static inline HANDLE GetStdHandle(DWORD nStdHandle) {
    static int in_fd = -1;
    switch (nStdHandle) {
    case STD_OUTPUT_HANDLE: return (HANDLE)(intptr_t)1;
    case STD_ERROR_HANDLE: return (HANDLE)(intptr_t)2;
    case STD_INPUT_HANDLE:
        if (in_fd < 0) in_fd = fcntl(0, F_DUPFD_CLOEXEC, 3);
        return in_fd < 0 ? INVALID_HANDLE_VALUE : (HANDLE)(intptr_t)in_fd;
    default: SetLastError(ERROR_INVALID_PARAMETER); return INVALID_HANDLE_VALUE;
    }
}
static inline BOOL WriteConsoleA(HANDLE hConsoleOutput, const VOID *lpBuffer,
                                 DWORD nNumberOfCharsToWrite, LPDWORD lpNumberOfCharsWritten,
                                 LPVOID lpReserved) {
    (void)lpReserved;
    const char *p = (const char *)lpBuffer;
    DWORD done = 0;
    while (done < nNumberOfCharsToWrite) {
        ssize_t n = write((int)(intptr_t)hConsoleOutput, p + done, nNumberOfCharsToWrite - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (lpNumberOfCharsWritten) *lpNumberOfCharsWritten = done;
            return (BOOL)iocp_w_fail_errno();
        }
        done += (DWORD)n;
    }
    if (lpNumberOfCharsWritten) *lpNumberOfCharsWritten = done;
    return TRUE;
}
#define WriteConsole WriteConsoleA

/* Versions: reports Windows 10 (10.0, build 19045), as a manifested program sees it. */
#define VER_PLATFORM_WIN32_NT 2
typedef struct _OSVERSIONINFOA {
    DWORD dwOSVersionInfoSize;
    DWORD dwMajorVersion;
    DWORD dwMinorVersion;
    DWORD dwBuildNumber;
    DWORD dwPlatformId;
    CHAR szCSDVersion[128];
} OSVERSIONINFOA, *POSVERSIONINFOA, *LPOSVERSIONINFOA, OSVERSIONINFO, *LPOSVERSIONINFO;
typedef struct _OSVERSIONINFOEXA {
    DWORD dwOSVersionInfoSize;
    DWORD dwMajorVersion;
    DWORD dwMinorVersion;
    DWORD dwBuildNumber;
    DWORD dwPlatformId;
    CHAR szCSDVersion[128];
    WORD wServicePackMajor;
    WORD wServicePackMinor;
    WORD wSuiteMask;
    BYTE wProductType;
    BYTE wReserved;
} OSVERSIONINFOEXA, *LPOSVERSIONINFOEXA, OSVERSIONINFOEX, *LPOSVERSIONINFOEX;
static inline BOOL GetVersionExA(LPOSVERSIONINFOA v) {
    if (!v || (v->dwOSVersionInfoSize != sizeof(OSVERSIONINFOA) &&
               v->dwOSVersionInfoSize != sizeof(OSVERSIONINFOEXA))) {
        SetLastError(ERROR_INVALID_PARAMETER);
        return FALSE;
    }
    DWORD size = v->dwOSVersionInfoSize;
    memset((char *)v + sizeof(DWORD), 0, size - sizeof(DWORD));
    v->dwMajorVersion = 10;
    v->dwMinorVersion = 0;
    v->dwBuildNumber = 19045;
    v->dwPlatformId = VER_PLATFORM_WIN32_NT;
    if (size == sizeof(OSVERSIONINFOEXA)) ((LPOSVERSIONINFOEXA)v)->wProductType = 1;
    return TRUE;
}
#define GetVersionEx GetVersionExA

/* Error messages. FORMAT_MESSAGE_FROM_SYSTEM with the codes libiocp reports (others read
 * "Unknown error N"); inserts are not expanded; FROM_STRING/FROM_HMODULE are refused. */
#define FORMAT_MESSAGE_ALLOCATE_BUFFER 0x00000100
#define FORMAT_MESSAGE_IGNORE_INSERTS 0x00000200
#define FORMAT_MESSAGE_FROM_STRING 0x00000400
#define FORMAT_MESSAGE_FROM_HMODULE 0x00000800
#define FORMAT_MESSAGE_FROM_SYSTEM 0x00001000
#define FORMAT_MESSAGE_ARGUMENT_ARRAY 0x00002000
#define FORMAT_MESSAGE_MAX_WIDTH_MASK 0x000000FF
#define LANG_NEUTRAL 0x00
#define SUBLANG_DEFAULT 0x01
#define MAKELANGID(p, s) ((((WORD)(s)) << 10) | (WORD)(p))
#define LMEM_FIXED 0x0000
#define LMEM_ZEROINIT 0x0040
#define LPTR (LMEM_FIXED | LMEM_ZEROINIT)
#define GMEM_FIXED 0x0000
#define GMEM_ZEROINIT 0x0040
#define GPTR (GMEM_FIXED | GMEM_ZEROINIT)
typedef HANDLE HLOCAL, HGLOBAL;
static inline HLOCAL LocalAlloc(UINT uFlags, SIZE_T uBytes) {
    return (uFlags & LMEM_ZEROINIT) ? calloc(1, uBytes ? uBytes : 1) : malloc(uBytes ? uBytes : 1);
}
static inline HLOCAL LocalFree(HLOCAL hMem) {
    free(hMem);
    return NULL;
}
static inline HGLOBAL GlobalAlloc(UINT uFlags, SIZE_T dwBytes) { return LocalAlloc(uFlags, dwBytes); }
static inline HGLOBAL GlobalFree(HGLOBAL hMem) { return LocalFree(hMem); }
static inline DWORD FormatMessageA(DWORD dwFlags, LPCVOID lpSource, DWORD dwMessageId,
                                   DWORD dwLanguageId, LPSTR lpBuffer, DWORD nSize,
                                   va_list *Arguments) {
    (void)lpSource;
    (void)dwLanguageId;
    (void)Arguments;
    if (!(dwFlags & FORMAT_MESSAGE_FROM_SYSTEM) ||
        (dwFlags & (FORMAT_MESSAGE_FROM_STRING | FORMAT_MESSAGE_FROM_HMODULE)) || !lpBuffer) {
        SetLastError(ERROR_INVALID_PARAMETER);
        return 0;
    }
    char text[160];
    snprintf(text, sizeof text, "%s\r\n", iocp_error_text(dwMessageId));
    size_t len = strlen(text);
    if (dwFlags & FORMAT_MESSAGE_ALLOCATE_BUFFER) {
        char *out = (char *)LocalAlloc(LMEM_FIXED, len + 1 > nSize ? len + 1 : nSize);
        if (!out) {
            SetLastError(ERROR_NOT_ENOUGH_MEMORY);
            return 0;
        }
        memcpy(out, text, len + 1);
        *(char **)lpBuffer = out;
        return (DWORD)len;
    }
    if (len + 1 > nSize) {
        SetLastError(ERROR_INSUFFICIENT_BUFFER);
        return 0;
    }
    memcpy(lpBuffer, text, len + 1);
    return (DWORD)len;
}
#define FormatMessage FormatMessageA

/* Files (a file HANDLE is its fd): size, position, end of file, flush, delete. */
#define FILE_BEGIN 0
#define FILE_CURRENT 1
#define FILE_END 2
#define INVALID_FILE_SIZE ((DWORD)0xFFFFFFFF)
#define INVALID_SET_FILE_POINTER ((DWORD)-1)
static inline DWORD GetFileSize(HANDLE hFile, LPDWORD lpFileSizeHigh) {
    struct stat st;
    if (fstat((int)(intptr_t)hFile, &st) < 0) {
        iocp_w_fail_errno();
        return INVALID_FILE_SIZE;
    }
    if (lpFileSizeHigh) *lpFileSizeHigh = (DWORD)((uint64_t)st.st_size >> 32);
    SetLastError(0);
    return (DWORD)((uint64_t)st.st_size & 0xFFFFFFFFu);
}
static inline BOOL GetFileSizeEx(HANDLE hFile, PLARGE_INTEGER lpFileSize) {
    struct stat st;
    if (!lpFileSize) {
        SetLastError(ERROR_INVALID_PARAMETER);
        return FALSE;
    }
    lpFileSize->QuadPart = 0;
    if (fstat((int)(intptr_t)hFile, &st) < 0) return (BOOL)iocp_w_fail_errno();
    lpFileSize->QuadPart = (LONGLONG)st.st_size;
    return TRUE;
}
static inline BOOL SetFilePointerEx(HANDLE hFile, LARGE_INTEGER liDistanceToMove,
                                    PLARGE_INTEGER lpNewFilePointer, DWORD dwMoveMethod) {
    if (lpNewFilePointer) lpNewFilePointer->QuadPart = 0;
    int whence = dwMoveMethod == FILE_BEGIN     ? SEEK_SET
                 : dwMoveMethod == FILE_CURRENT ? SEEK_CUR
                 : dwMoveMethod == FILE_END     ? SEEK_END
                                                : -1;
    if (whence < 0) {
        SetLastError(ERROR_INVALID_PARAMETER);
        return FALSE;
    }
    off_t r = lseek((int)(intptr_t)hFile, (off_t)liDistanceToMove.QuadPart, whence);
    if (r < 0) return (BOOL)iocp_w_fail_errno();
    if (lpNewFilePointer) lpNewFilePointer->QuadPart = (LONGLONG)r;
    return TRUE;
}
static inline DWORD SetFilePointer(HANDLE hFile, LONG lDistanceToMove, PLONG lpDistanceToMoveHigh,
                                   DWORD dwMoveMethod) {
    LARGE_INTEGER d, now;
    now.QuadPart = 0;
    d.QuadPart = lpDistanceToMoveHigh
                     ? (LONGLONG)(((uint64_t)(uint32_t)*lpDistanceToMoveHigh << 32) |
                                  (uint32_t)lDistanceToMove)
                     : (LONGLONG)lDistanceToMove;
    if (!SetFilePointerEx(hFile, d, &now, dwMoveMethod)) return INVALID_SET_FILE_POINTER;
    if (lpDistanceToMoveHigh) *lpDistanceToMoveHigh = (LONG)((uint64_t)now.QuadPart >> 32);
    SetLastError(0);
    return (DWORD)((uint64_t)now.QuadPart & 0xFFFFFFFFu);
}
static inline BOOL SetEndOfFile(HANDLE hFile) {
    int fd = (int)(intptr_t)hFile;
    off_t at = lseek(fd, 0, SEEK_CUR);
    if (at < 0 || ftruncate(fd, at) < 0) return (BOOL)iocp_w_fail_errno();
    return TRUE;
}
static inline BOOL FlushFileBuffers(HANDLE hFile) {
    if (fsync((int)(intptr_t)hFile) < 0) return (BOOL)iocp_w_fail_errno();
    return TRUE;
}
static inline BOOL DeleteFileA(LPCSTR lpFileName) {
    if (!lpFileName || unlink(lpFileName) < 0) {
        if (!lpFileName) errno = EINVAL;
        return (BOOL)iocp_w_fail_errno();
    }
    return TRUE;
}
#define DeleteFile DeleteFileA

/* Virtual memory: mmap'd regions, page-aligned (the page, not the 64 KiB granularity). A
 * region starts one page before the address returned, where its size is kept for
 * VirtualFree(MEM_RELEASE, 0). MEM_COMMIT inside a reservation makes those pages accessible;
 * MEM_DECOMMIT returns them to the kernel. */
#define MEM_COMMIT 0x00001000
#define MEM_RESERVE 0x00002000
#define MEM_DECOMMIT 0x00004000
#define MEM_RELEASE 0x00008000
#define MEM_RESET 0x00080000
#define MEM_LARGE_PAGES 0x20000000
#define PAGE_NOACCESS 0x01
#define PAGE_READONLY 0x02
#define PAGE_READWRITE 0x04
#define PAGE_EXECUTE 0x10
#define PAGE_EXECUTE_READ 0x20
#define PAGE_EXECUTE_READWRITE 0x40
static inline int iocp_w_prot(DWORD p) {
    switch (p) {
    case PAGE_NOACCESS: return PROT_NONE;
    case PAGE_READONLY: return PROT_READ;
    case PAGE_READWRITE: return PROT_READ | PROT_WRITE;
    case PAGE_EXECUTE: return PROT_EXEC;
    case PAGE_EXECUTE_READ: return PROT_READ | PROT_EXEC;
    case PAGE_EXECUTE_READWRITE: return PROT_READ | PROT_WRITE | PROT_EXEC;
    default: return -1;
    }
}
static inline LPVOID VirtualAlloc(LPVOID lpAddress, SIZE_T dwSize, DWORD flAllocationType,
                                  DWORD flProtect) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    int prot = iocp_w_prot(flProtect);
    if (prot < 0 || dwSize == 0 || !(flAllocationType & (MEM_COMMIT | MEM_RESERVE))) {
        SetLastError(ERROR_INVALID_PARAMETER);
        return NULL;
    }
    size_t len = (dwSize + page - 1) / page * page;
    if (lpAddress) { /* commit pages of an existing reservation */
        uintptr_t a = (uintptr_t)lpAddress / page * page;
        size_t l = ((uintptr_t)lpAddress + dwSize + page - 1) / page * page - a;
        if (!(flAllocationType & MEM_COMMIT) || mprotect((void *)a, l, prot) < 0) {
            if (!(flAllocationType & MEM_COMMIT)) errno = EINVAL;
            iocp_w_fail_errno();
            return NULL;
        }
        return (LPVOID)a;
    }
    char *base = (char *)mmap(NULL, len + page, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == (char *)MAP_FAILED) {
        iocp_w_fail_errno();
        return NULL;
    }
    *(size_t *)base = len + page;
    mprotect(base, page, PROT_READ); /* the size header */
    int use = (flAllocationType & MEM_COMMIT) ? prot : PROT_NONE;
    if (use != (PROT_READ | PROT_WRITE)) mprotect(base + page, len, use);
    return base + page;
}
static inline BOOL VirtualFree(LPVOID lpAddress, SIZE_T dwSize, DWORD dwFreeType) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (!lpAddress) {
        SetLastError(ERROR_INVALID_PARAMETER);
        return FALSE;
    }
    if (dwFreeType == MEM_RELEASE) {
        if (dwSize != 0 || (uintptr_t)lpAddress % page) {
            SetLastError(ERROR_INVALID_PARAMETER);
            return FALSE;
        }
        char *base = (char *)lpAddress - page;
        if (munmap(base, *(size_t *)base) < 0) return (BOOL)iocp_w_fail_errno();
        return TRUE;
    }
    if (dwFreeType == MEM_DECOMMIT && dwSize) {
        uintptr_t a = (uintptr_t)lpAddress / page * page;
        size_t l = ((uintptr_t)lpAddress + dwSize + page - 1) / page * page - a;
        if (madvise((void *)a, l, MADV_DONTNEED) < 0 || mprotect((void *)a, l, PROT_NONE) < 0)
            return (BOOL)iocp_w_fail_errno();
        return TRUE;
    }
    SetLastError(ERROR_INVALID_PARAMETER);
    return FALSE;
}

/* SRWLOCK: a pthread rwlock (56 bytes, not a pointer's 8: do not rely on its size).
 * SRWLOCK_INIT and zeroed memory are an unlocked lock, as on Windows. */
typedef struct _RTL_SRWLOCK {
    pthread_rwlock_t Lock;
} SRWLOCK, *PSRWLOCK;
#define SRWLOCK_INIT {PTHREAD_RWLOCK_INITIALIZER}
static inline void InitializeSRWLock(PSRWLOCK l) { pthread_rwlock_init(&l->Lock, NULL); }
static inline void AcquireSRWLockExclusive(PSRWLOCK l) { pthread_rwlock_wrlock(&l->Lock); }
static inline void AcquireSRWLockShared(PSRWLOCK l) { pthread_rwlock_rdlock(&l->Lock); }
static inline void ReleaseSRWLockExclusive(PSRWLOCK l) { pthread_rwlock_unlock(&l->Lock); }
static inline void ReleaseSRWLockShared(PSRWLOCK l) { pthread_rwlock_unlock(&l->Lock); }
static inline BOOLEAN TryAcquireSRWLockExclusive(PSRWLOCK l) {
    return pthread_rwlock_trywrlock(&l->Lock) == 0;
}
static inline BOOLEAN TryAcquireSRWLockShared(PSRWLOCK l) {
    return pthread_rwlock_tryrdlock(&l->Lock) == 0;
}

/* Strings: the narrow (ANSI) family. */
static inline int lstrlenA(LPCSTR s) { return s ? (int)strlen(s) : 0; }
static inline LPSTR lstrcpyA(LPSTR d, LPCSTR s) { return strcpy(d, s); }
static inline LPSTR lstrcpynA(LPSTR d, LPCSTR s, int n) {
    if (n <= 0) return d;
    size_t l = strnlen(s, (size_t)n - 1);
    memcpy(d, s, l);
    d[l] = 0;
    return d;
}
static inline LPSTR lstrcatA(LPSTR d, LPCSTR s) { return strcat(d, s); }
static inline int lstrcmpA(LPCSTR a, LPCSTR b) { return strcmp(a, b); }
static inline int lstrcmpiA(LPCSTR a, LPCSTR b) { return strcasecmp(a, b); }
#define lstrlen lstrlenA
#define lstrcpy lstrcpyA
#define lstrcpyn lstrcpynA
#define lstrcat lstrcatA
#define lstrcmp lstrcmpA
#define lstrcmpi lstrcmpiA
#define printf_s printf
#define fprintf_s fprintf
#define vprintf_s vprintf
#define _snprintf snprintf
#define _vsnprintf vsnprintf
#define _stricmp strcasecmp
#define _strnicmp strncasecmp
#define _strdup strdup
#define sprintf_s(buf, size, ...) snprintf((buf), (size), __VA_ARGS__)
#define vsprintf_s(buf, size, fmt, ap) vsnprintf((buf), (size), (fmt), (ap))
static inline int strcpy_s(char *d, size_t n, const char *s) {
    if (!d || !s || n == 0) return EINVAL;
    size_t l = strlen(s);
    if (l >= n) {
        d[0] = 0;
        return ERANGE;
    }
    memcpy(d, s, l + 1);
    return 0;
}
static inline int strcat_s(char *d, size_t n, const char *s) {
    if (!d || !s || n == 0) return EINVAL;
    size_t have = strnlen(d, n), l = strlen(s);
    if (have == n || have + l >= n) {
        d[0] = 0;
        return ERANGE;
    }
    memcpy(d + have, s, l + 1);
    return 0;
}

/* Structured exception handling, for the common shapes: `__try { ... } __finally { ... }`
 * (the handler runs when the block ends or leaves with `__leave`) and `__try { ... }
 * __except (filter) { ... }` (the block runs; the handler never does: there are no hardware
 * exceptions or RaiseException to catch here, a fault ends the process as an unhandled one
 * would). Not emulated: a `return`, `break`, `continue` or `goto` out of a `__try` skips its
 * `__finally`; in C `__leave` is a `break`, so it must not sit inside a loop or `switch` within
 * the `__try`. In C++ (with exceptions) `__try` is `try`, `__except` catches C++ exceptions,
 * `__leave` throws a private marker the `__finally`/`__except` catch, and a C++ exception
 * leaving a `__try { } __finally { }` skips the handler. docs/PORTING.md has the details. */
#define EXCEPTION_EXECUTE_HANDLER 1
#define EXCEPTION_CONTINUE_SEARCH 0
#define EXCEPTION_CONTINUE_EXECUTION (-1)
#define GetExceptionCode() ((DWORD)0)
#define GetExceptionInformation() ((void *)0)
#define AbnormalTermination() 0
#ifdef __cplusplus
}
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
struct iocp_seh_leave_ {};
#undef __try
#define __try try
#define __leave throw iocp_seh_leave_()
#define __except(filter) catch (const iocp_seh_leave_ &) {} catch (...)
#define __finally catch (const iocp_seh_leave_ &) {}
#endif
extern "C" {
#else
#define __try do
#define __leave break
#define __except(filter) while (0); if (((void)sizeof(filter), 0))
#define __finally while (0);
#endif

#ifdef __cplusplus
}
#endif

#if defined(__x86_64__)
#ifdef __cplusplus
static_assert(sizeof(CRITICAL_SECTION) == 40, "CRITICAL_SECTION is 40 bytes on x64");
#else
_Static_assert(sizeof(CRITICAL_SECTION) == 40, "CRITICAL_SECTION is 40 bytes on x64");
#endif
#endif

#if defined(__x86_64__) || defined(__aarch64__)
#ifdef __cplusplus
static_assert(sizeof(SYSTEM_INFO) == 48, "SYSTEM_INFO is 48 bytes on x64");
#else
_Static_assert(sizeof(SYSTEM_INFO) == 48, "SYSTEM_INFO is 48 bytes on x64");
#endif
#endif

#endif /* IOCP_WIN32_WINDOWS_H */
