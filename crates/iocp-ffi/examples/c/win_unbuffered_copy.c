/*
 * An unbuffered overlapped file copier in the style of the Windows SDK's unbufcp sample: the
 * source and the destination are opened with FILE_FLAG_NO_BUFFERING | FILE_FLAG_OVERLAPPED and
 * each gets its own completion port; a reader thread turns each finished read into a write of
 * the same block, a writer thread turns each finished write into the next read; buffers come
 * from VirtualAlloc (sector-aligned) and writes are whole sectors, so the destination is cut to
 * the source's size at the end (SetFilePointerEx + SetEndOfFile, reopened buffered). Ctrl-C
 * stops it between blocks. Windows API and the C library only.
 *
 *   win_unbuffered_copy SOURCE DEST [block KiB] [blocks in flight]
 *
 * Prints "copying N bytes", then "copied N bytes in S s (X MB/s)" (or "interrupted after N
 * bytes") and exits 0.
 */
#include <windows.h>
#include <stdio.h>
#include <stdlib.h>

#define SECTOR 4096
#define MAX_DEPTH 64
#define KEY_READ 1
#define KEY_WRITE 2

typedef struct {
    OVERLAPPED ov; /* first */
    char *buf;
    LONGLONG offset;
} BLOCK;

static HANDLE g_src, g_dst, g_read_port, g_write_port, g_done, g_stop;
static LONGLONG g_size, g_next;
static DWORD g_block;
static volatile LONG g_inflight, g_stopping;
static volatile LONG64 g_copied;
static CRITICAL_SECTION g_lock;

static BOOL WINAPI on_console(DWORD type) {
    UNREFERENCED_PARAMETER(type);
    SetEvent(g_stop);
    return TRUE;
}

static void fail(const char *what) {
    printf("%s failed: %u\n", what, (unsigned)GetLastError());
    ExitProcess(1);
}

/* Starts the read of the next block into `b`, or retires `b` when there is none (or we stop). */
static void next_read(BLOCK *b) {
    EnterCriticalSection(&g_lock);
    LONGLONG at = g_next;
    BOOL more = !g_stopping && at < g_size;
    if (more) g_next += g_block;
    LeaveCriticalSection(&g_lock);
    if (!more) {
        if (InterlockedDecrement(&g_inflight) == 0) SetEvent(g_done);
        return;
    }
    ZeroMemory(&b->ov, sizeof b->ov);
    b->offset = at;
    b->ov.Offset = (DWORD)(at & 0xFFFFFFFF);
    b->ov.OffsetHigh = (DWORD)(at >> 32);
    if (!ReadFile(g_src, b->buf, g_block, NULL, &b->ov) && GetLastError() != ERROR_IO_PENDING)
        fail("ReadFile");
}

static DWORD WINAPI reader(LPVOID arg) {
    UNREFERENCED_PARAMETER(arg);
    for (;;) {
        DWORD n = 0;
        ULONG_PTR key = 0;
        LPOVERLAPPED ov = NULL;
        BOOL ok = GetQueuedCompletionStatus(g_read_port, &n, &key, &ov, INFINITE);
        if (ov == NULL) return 0; /* the exit packet */
        BLOCK *b = (BLOCK *)ov;
        if (!ok) fail("read");
        /* Unbuffered writes are whole sectors: the last block is written padded. */
        DWORD len = (n + SECTOR - 1) / SECTOR * SECTOR;
        ZeroMemory(&b->ov, sizeof b->ov);
        b->ov.Offset = (DWORD)(b->offset & 0xFFFFFFFF);
        b->ov.OffsetHigh = (DWORD)(b->offset >> 32);
        if (!WriteFile(g_dst, b->buf, len, NULL, &b->ov) && GetLastError() != ERROR_IO_PENDING)
            fail("WriteFile");
    }
}

static DWORD WINAPI writer(LPVOID arg) {
    UNREFERENCED_PARAMETER(arg);
    for (;;) {
        DWORD n = 0;
        ULONG_PTR key = 0;
        LPOVERLAPPED ov = NULL;
        BOOL ok = GetQueuedCompletionStatus(g_write_port, &n, &key, &ov, INFINITE);
        if (ov == NULL) return 0;
        BLOCK *b = (BLOCK *)ov;
        if (!ok) fail("write");
        LONGLONG real = g_size - b->offset < (LONGLONG)n ? g_size - b->offset : (LONGLONG)n;
        InterlockedAdd64(&g_copied, real);
        next_read(b);
    }
}

int __cdecl main(int argc, char **argv) {
    if (argc < 3) {
        printf("usage: %s SOURCE DEST [block KiB] [blocks in flight]\n", argv[0]);
        return 2;
    }
    g_block = (DWORD)(argc > 3 ? atoi(argv[3]) : 64) * 1024;
    int depth = argc > 4 ? atoi(argv[4]) : 8;
    if (g_block < SECTOR || g_block % SECTOR || depth < 1 || depth > MAX_DEPTH) {
        printf("bad arguments: the block is a multiple of 4 KiB, 1-%d in flight\n", MAX_DEPTH);
        return 2;
    }
    InitializeCriticalSection(&g_lock);
    g_done = CreateEvent(NULL, TRUE, FALSE, NULL);
    g_stop = CreateEvent(NULL, TRUE, FALSE, NULL);
    SetConsoleCtrlHandler(on_console, TRUE);
    g_src = CreateFileA(argv[1], GENERIC_READ, FILE_SHARE_READ, NULL, OPEN_EXISTING,
                        FILE_FLAG_NO_BUFFERING | FILE_FLAG_OVERLAPPED, NULL);
    if (g_src == INVALID_HANDLE_VALUE) fail("CreateFile (source)");
    g_dst = CreateFileA(argv[2], GENERIC_WRITE, 0, NULL, CREATE_ALWAYS,
                        FILE_FLAG_NO_BUFFERING | FILE_FLAG_OVERLAPPED, NULL);
    if (g_dst == INVALID_HANDLE_VALUE) fail("CreateFile (destination)");
    LARGE_INTEGER size;
    if (!GetFileSizeEx(g_src, &size)) fail("GetFileSizeEx");
    g_size = size.QuadPart;
    g_read_port = CreateIoCompletionPort(g_src, NULL, KEY_READ, 1);
    g_write_port = CreateIoCompletionPort(g_dst, NULL, KEY_WRITE, 1);
    if (!g_read_port || !g_write_port) fail("CreateIoCompletionPort");
    printf("copying %lld bytes\n", (long long)g_size);
    fflush(stdout);

    BLOCK blocks[MAX_DEPTH];
    LARGE_INTEGER f, t0, t1;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&t0);
    HANDLE threads[2] = {CreateThread(NULL, 0, reader, NULL, 0, NULL),
                         CreateThread(NULL, 0, writer, NULL, 0, NULL)};
    g_inflight = depth;
    for (int i = 0; i < depth; i++) {
        blocks[i].buf = (char *)VirtualAlloc(NULL, g_block, MEM_COMMIT | MEM_RESERVE,
                                             PAGE_READWRITE);
        if (!blocks[i].buf) fail("VirtualAlloc");
    }
    for (int i = 0; i < depth; i++) next_read(&blocks[i]);

    HANDLE ends[2] = {g_done, g_stop};
    if (WaitForMultipleObjects(2, ends, FALSE, INFINITE) == WAIT_OBJECT_0 + 1) {
        InterlockedExchange(&g_stopping, 1); /* no new reads; the blocks in flight finish */
        WaitForSingleObject(g_done, INFINITE);
    }
    QueryPerformanceCounter(&t1);
    PostQueuedCompletionStatus(g_read_port, 0, 0, NULL);
    PostQueuedCompletionStatus(g_write_port, 0, 0, NULL);
    WaitForMultipleObjects(2, threads, TRUE, INFINITE);
    CloseHandle(threads[0]);
    CloseHandle(threads[1]);
    for (int i = 0; i < depth; i++) VirtualFree(blocks[i].buf, 0, MEM_RELEASE);
    CloseHandle(g_src);
    CloseHandle(g_dst);
    CloseHandle(g_read_port);
    CloseHandle(g_write_port);

    /* The padded last sector goes: reopen buffered and cut the file to the copied size. */
    HANDLE d = CreateFileA(argv[2], GENERIC_WRITE, 0, NULL, OPEN_EXISTING, 0, NULL);
    if (d == INVALID_HANDLE_VALUE) fail("CreateFile (reopen)");
    LARGE_INTEGER end;
    end.QuadPart = g_copied;
    if (!SetFilePointerEx(d, end, NULL, FILE_BEGIN) || !SetEndOfFile(d)) fail("SetEndOfFile");
    CloseHandle(d);

    double secs = (double)(t1.QuadPart - t0.QuadPart) / (double)f.QuadPart;
    if (g_stopping)
        printf("interrupted after %lld bytes\n", (long long)g_copied);
    else
        printf("copied %lld bytes in %.3f s (%.1f MB/s)\n", (long long)g_copied, secs,
               secs > 0 ? (double)g_copied / secs / 1e6 : 0.0);
    DeleteCriticalSection(&g_lock);
    return 0;
}
