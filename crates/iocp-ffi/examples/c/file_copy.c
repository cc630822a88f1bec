/*
 * An overlapped file copier, written as on Windows: CreateFile with FILE_FLAG_OVERLAPPED, both
 * files on one completion port, DEPTH ReadFile/WriteFile pairs in flight at their OVERLAPPED
 * offsets, one thread in GetQueuedCompletionStatus. Built on Linux against libiocp.
 *
 *   file_copy SRC DST [--block BYTES] [--depth N]
 */
#ifdef _WIN32
#include <windows.h>
#else
#include "iocp.h"
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_SRC 1
#define KEY_DST 2

typedef struct CHUNK {
    OVERLAPPED ov; /* first */
    int writing;
    ULONGLONG offset;
    char *buf;
} CHUNK;

static void set_offset(CHUNK *c, ULONGLONG off) {
    memset(&c->ov, 0, sizeof c->ov);
    c->offset = off;
    c->ov.Offset = (DWORD)off;
    c->ov.OffsetHigh = (DWORD)(off >> 32);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: file_copy SRC DST [--block BYTES] [--depth N]\n");
        return 2;
    }
    DWORD block = 64 * 1024;
    int depth = 4;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--block")) block = (DWORD)strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--depth")) depth = atoi(argv[i + 1]);
    }
    if (block == 0 || depth < 1 || depth > 1024) return 2;

    HANDLE src = CreateFileA(argv[1], GENERIC_READ, FILE_SHARE_READ, NULL, OPEN_EXISTING,
                             FILE_FLAG_OVERLAPPED, NULL);
    if (src == INVALID_HANDLE_VALUE) {
        fprintf(stderr, "open %s: error %u\n", argv[1], GetLastError());
        return 1;
    }
    HANDLE dst = CreateFileA(argv[2], GENERIC_WRITE, 0, NULL, CREATE_ALWAYS,
                             FILE_FLAG_OVERLAPPED, NULL);
    if (dst == INVALID_HANDLE_VALUE) {
        fprintf(stderr, "create %s: error %u\n", argv[2], GetLastError());
        return 1;
    }
    HANDLE port = CreateIoCompletionPort(src, NULL, KEY_SRC, 1);
    if (port == NULL || CreateIoCompletionPort(dst, port, KEY_DST, 0) != port) {
        fprintf(stderr, "CreateIoCompletionPort: error %u\n", GetLastError());
        return 1;
    }

    CHUNK *chunks = (CHUNK *)calloc((size_t)depth, sizeof *chunks);
    ULONGLONG next = 0, copied = 0;
    int active = 0, failed = 0;
    for (int i = 0; i < depth; i++) {
        chunks[i].buf = (char *)malloc(block);
        set_offset(&chunks[i], next);
        next += block;
        if (!ReadFile(src, chunks[i].buf, block, NULL, &chunks[i].ov) &&
            GetLastError() != ERROR_IO_PENDING) {
            if (GetLastError() != ERROR_HANDLE_EOF) failed = 1;
            continue; /* nothing in flight for this chunk */
        }
        active++;
    }
    while (active > 0) {
        DWORD bytes = 0;
        ULONG_PTR key = 0;
        LPOVERLAPPED ov = NULL;
        BOOL ok = GetQueuedCompletionStatus(port, &bytes, &key, &ov, 30000);
        if (ov == NULL) {
            fprintf(stderr, "GetQueuedCompletionStatus: error %u\n", GetLastError());
            failed = 1;
            break;
        }
        CHUNK *c = (CHUNK *)ov;
        active--;
        if (!ok) {
            if (key == KEY_SRC && GetLastError() == ERROR_HANDLE_EOF) continue; /* done */
            fprintf(stderr, "%s at %llu: error %u\n", key == KEY_SRC ? "read" : "write",
                    (unsigned long long)c->offset, GetLastError());
            failed = 1;
            continue;
        }
        if (key == KEY_SRC) {
            if (bytes == 0) continue;
            ULONGLONG at = c->offset;
            set_offset(c, at);
            c->writing = (int)bytes;
            if (!WriteFile(dst, c->buf, bytes, NULL, &c->ov) && GetLastError() != ERROR_IO_PENDING) {
                failed = 1;
                continue;
            }
            active++;
        } else {
            copied += bytes;
            if (bytes < block) continue; /* that was the last, short chunk */
            set_offset(c, next);
            next += block;
            if (!ReadFile(src, c->buf, block, NULL, &c->ov) && GetLastError() != ERROR_IO_PENDING) {
                if (GetLastError() != ERROR_HANDLE_EOF) failed = 1;
                continue;
            }
            active++;
        }
    }
    for (int i = 0; i < depth; i++) free(chunks[i].buf);
    free(chunks);
    CloseHandle(src);
    CloseHandle(dst);
    CloseHandle(port);
    printf("copied %llu bytes\n", (unsigned long long)copied);
    return failed;
}
