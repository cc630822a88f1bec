/* Files: CreateFile with and without FILE_FLAG_OVERLAPPED, ReadFile/WriteFile at OVERLAPPED
 * offsets (cases 11, 28, 49, 50, 51), the synchronous path, and bad handles. */
#include "check.h"

static char dir[] = "/tmp/iocp-file-XXXXXX";

static const char *path(const char *name) {
    static char buf[256];
    snprintf(buf, sizeof buf, "%s/%s", dir, name);
    return buf;
}

static long long file_size(const char *p) {
    struct stat st;
    CHECK(stat(p, &st) == 0);
    return (long long)st.st_size;
}

static void case_11_non_overlapped_handle_cannot_associate(void) {
    HANDLE p = new_port(0);
    HANDLE f = CreateFileA(path("sync"), GENERIC_READ | GENERIC_WRITE, 0, NULL, CREATE_ALWAYS,
                           FILE_ATTRIBUTE_NORMAL, NULL);
    CHECK(f != INVALID_HANDLE_VALUE);
    CHECK(CreateIoCompletionPort(f, p, 1, 0) == NULL);
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    /* Synchronous I/O works on it, at the OVERLAPPED's offset or the file position. */
    DWORD n = 0;
    CHECK(WriteFile(f, "hello", 5, &n, NULL));
    CHECK_EQ(n, 5);
    OVERLAPPED ov = {0};
    ov.Offset = 1;
    char buf[8] = {0};
    CHECK(ReadFile(f, buf, 3, &n, &ov));
    CHECK_EQ(n, 3);
    CHECK(memcmp(buf, "ell", 3) == 0);
    CHECK_EQ(ov.InternalHigh, 3);
    CHECK(CloseHandle(f));
    CHECK(!ReadFile(f, buf, 3, &n, &ov));
    CHECK_EQ(GetLastError(), ERROR_INVALID_HANDLE);
    CHECK(CloseHandle(p));
}

static HANDLE open_overlapped(const char *name, DWORD disposition) {
    HANDLE f = CreateFileA(path(name), GENERIC_READ | GENERIC_WRITE, 0, NULL, disposition,
                           FILE_FLAG_OVERLAPPED, NULL);
    CHECK(f != INVALID_HANDLE_VALUE);
    return f;
}

static void case_28_write_gives_exactly_one_packet(void) {
    HANDLE p = new_port(0);
    HANDLE f = open_overlapped("w28", CREATE_ALWAYS);
    CHECK(CreateIoCompletionPort(f, p, 28, 0) == p);
    OVERLAPPED ov = {0};
    char data[100];
    memset(data, 'x', sizeof data);
    BOOL r = WriteFile(f, data, 100, NULL, &ov);
    CHECK(r || GetLastError() == ERROR_IO_PENDING);
    expect_packet(p, TRUE, 0, 100, 28, &ov);
    expect_quiet(p);
    CHECK_EQ(file_size(path("w28")), 100);
    CHECK(CloseHandle(f));
    CHECK(CloseHandle(p));
}

static void case_49_read_past_eof(void) {
    HANDLE p = new_port(0);
    HANDLE f = open_overlapped("r49", CREATE_ALWAYS);
    CHECK(CreateIoCompletionPort(f, p, 49, 0) == p);
    char data[100] = {0};
    OVERLAPPED ov = {0};
    CHECK(!WriteFile(f, data, 100, NULL, &ov));
    CHECK_EQ(GetLastError(), ERROR_IO_PENDING);
    expect_packet(p, TRUE, 0, 100, 49, &ov);
    char buf[10];
    memset(&ov, 0, sizeof ov);
    ov.Offset = 100;
    if (ReadFile(f, buf, 10, NULL, &ov)) {
        CHECK(0); /* an asynchronous read at EOF never succeeds */
    } else if (GetLastError() == ERROR_IO_PENDING) {
        expect_packet(p, FALSE, ERROR_HANDLE_EOF, 0, 49, &ov);
        CHECK_EQ(ov.Internal, STATUS_END_OF_FILE);
    } else {
        CHECK_EQ(GetLastError(), ERROR_HANDLE_EOF);
    }
    expect_quiet(p);
    CHECK(CloseHandle(f));
    CHECK(CloseHandle(p));
}

static void case_50_append_offset(void) {
    HANDLE p = new_port(0);
    HANDLE f = open_overlapped("a50", CREATE_ALWAYS);
    CHECK(CreateIoCompletionPort(f, p, 50, 0) == p);
    OVERLAPPED ov = {0};
    CHECK(!WriteFile(f, "0123456789", 10, NULL, &ov));
    expect_packet(p, TRUE, 0, 10, 50, &ov);
    memset(&ov, 0, sizeof ov);
    ov.Offset = 0xFFFFFFFF;
    ov.OffsetHigh = 0xFFFFFFFF;
    CHECK(!WriteFile(f, "abc", 3, NULL, &ov));
    CHECK_EQ(GetLastError(), ERROR_IO_PENDING);
    expect_packet(p, TRUE, 0, 3, 50, &ov);
    CHECK_EQ(file_size(path("a50")), 13);
    CHECK(ov.Offset == 0xFFFFFFFF && ov.OffsetHigh == 0xFFFFFFFF); /* never changed */
    CHECK(CloseHandle(f));
    CHECK(CloseHandle(p));
}

static void case_51_concurrent_reads_at_offsets(void) {
    HANDLE p = new_port(0);
    HANDLE f = open_overlapped("r51", CREATE_ALWAYS);
    CHECK(CreateIoCompletionPort(f, p, 51, 0) == p);
    static char data[8192];
    for (int i = 0; i < 8192; i++) data[i] = (char)(i < 4096 ? 'A' : 'B');
    OVERLAPPED w = {0};
    CHECK(!WriteFile(f, data, sizeof data, NULL, &w));
    expect_packet(p, TRUE, 0, 8192, 51, &w);
    static char b0[4096], b1[4096];
    OVERLAPPED o0 = {0}, o1 = {0};
    o1.Offset = 4096;
    CHECK(!ReadFile(f, b0, 4096, NULL, &o0));
    CHECK_EQ(GetLastError(), ERROR_IO_PENDING);
    CHECK(!ReadFile(f, b1, 4096, NULL, &o1));
    CHECK_EQ(GetLastError(), ERROR_IO_PENDING);
    int seen0 = 0, seen1 = 0;
    for (int i = 0; i < 2; i++) {
        DWORD n;
        ULONG_PTR k;
        LPOVERLAPPED o;
        CHECK(GetQueuedCompletionStatus(p, &n, &k, &o, 10000));
        CHECK_EQ(n, 4096);
        CHECK_EQ(k, 51);
        if (o == &o0) seen0++;
        if (o == &o1) seen1++;
    }
    CHECK(seen0 == 1 && seen1 == 1);
    CHECK(b0[0] == 'A' && b0[4095] == 'A' && b1[0] == 'B' && b1[4095] == 'B');
    CHECK(CloseHandle(f));
    CHECK(CloseHandle(p));
}

static void createfile_errors_and_wide_names(void) {
    HANDLE f = CreateFileA(path("missing"), GENERIC_READ, 0, NULL, OPEN_EXISTING, 0, NULL);
    CHECK(f == INVALID_HANDLE_VALUE);
    CHECK_EQ(GetLastError(), ERROR_FILE_NOT_FOUND);
    f = CreateFileA(NULL, GENERIC_READ, 0, NULL, OPEN_EXISTING, 0, NULL);
    CHECK(f == INVALID_HANDLE_VALUE);
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    f = CreateFileA(path("x"), GENERIC_READ, 0, NULL, 99, 0, NULL);
    CHECK(f == INVALID_HANDLE_VALUE);
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    HANDLE g = open_overlapped("exists", CREATE_NEW);
    CHECK(CloseHandle(g));
    f = CreateFileA(path("exists"), GENERIC_WRITE, 0, NULL, CREATE_NEW, 0, NULL);
    CHECK(f == INVALID_HANDLE_VALUE);
    CHECK_EQ(GetLastError(), ERROR_FILE_EXISTS);
    /* A UTF-16 name. */
    char narrow[256];
    snprintf(narrow, sizeof narrow, "%s/wide", dir);
    WCHAR wide[256];
    size_t i = 0;
    for (; narrow[i]; i++) wide[i] = (WCHAR)(unsigned char)narrow[i];
    wide[i] = 0;
    f = CreateFileW(wide, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, FILE_FLAG_OVERLAPPED, NULL);
    CHECK(f != INVALID_HANDLE_VALUE);
    CHECK(CloseHandle(f));
    CHECK_EQ(file_size(narrow), 0);
    f = CreateFileW(u"/nonexistent-dir/x", GENERIC_READ, 0, NULL, OPEN_EXISTING, 0, NULL);
    CHECK(f == INVALID_HANDLE_VALUE);
}

static void associated_file_needs_an_overlapped(void) {
    HANDLE p = new_port(0);
    HANDLE f = open_overlapped("ov", CREATE_ALWAYS);
    CHECK(CreateIoCompletionPort(f, p, 9, 0) == p);
    char buf[4];
    DWORD n;
    CHECK(!ReadFile(f, buf, 4, &n, NULL));
    CHECK_EQ(GetLastError(), ERROR_INVALID_PARAMETER);
    CHECK(!WriteFile(f, NULL, 4, &n, NULL));
    CHECK_EQ(GetLastError(), ERROR_NOACCESS);
    expect_quiet(p);
    /* Closing the port first, then the file: the file's I/O is refused, nothing crashes. */
    CHECK(CloseHandle(p));
    OVERLAPPED ov = {0};
    CHECK(!ReadFile(f, buf, 4, NULL, &ov));
    CHECK(GetLastError() != ERROR_IO_PENDING);
    CHECK(CloseHandle(f));
}

static void cleanup(void) {
    const char *names[] = {"sync", "w28", "r49", "a50", "r51", "exists", "wide", "ov"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) unlink(path(names[i]));
    rmdir(dir);
}

int main(void) {
    start_deadline();
    CHECK(mkdtemp(dir) != NULL);
    print_backend();
    RUN(case_11_non_overlapped_handle_cannot_associate);
    RUN(case_28_write_gives_exactly_one_packet);
    RUN(case_49_read_past_eof);
    RUN(case_50_append_offset);
    RUN(case_51_concurrent_reads_at_offsets);
    RUN(createfile_errors_and_wide_names);
    RUN(associated_file_needs_an_overlapped);
    cleanup();
    return 0;
}
