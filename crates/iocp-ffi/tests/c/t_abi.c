/* Header drift: every struct size, field offset and constant in iocp.h must equal what the
 * library was built with (iocp_abi_value), and the x64 sizes of case 6. */
#include "check.h"

static int failures;

static void same(const char *name, unsigned long long header) {
    unsigned long long lib = (unsigned long long)iocp_abi_value(name);
    if (lib != header) {
        fprintf(stderr, "drift: %s is %llu in iocp.h but %llu in the library\n", name, header,
                lib);
        failures++;
    }
}
#define SIZE(T) same("sizeof(" #T ")", sizeof(T))
#define OFF(T, f) same(#T "." #f, offsetof(T, f))
#define CONST(c) same(#c, (unsigned long long)(c))

static void case_6_layouts(void) {
    CHECK_EQ(sizeof(OVERLAPPED_ENTRY), 32);
    CHECK_EQ(offsetof(OVERLAPPED_ENTRY, lpCompletionKey), 0);
    CHECK_EQ(offsetof(OVERLAPPED_ENTRY, lpOverlapped), 8);
    CHECK_EQ(offsetof(OVERLAPPED_ENTRY, Internal), 16);
    CHECK_EQ(offsetof(OVERLAPPED_ENTRY, dwNumberOfBytesTransferred), 24);
    CHECK_EQ(sizeof(OVERLAPPED), 32);
    CHECK_EQ(offsetof(OVERLAPPED, Pointer), 16);
}

static void header_matches_library(void) {
    SIZE(OVERLAPPED);
    OFF(OVERLAPPED, Internal);
    OFF(OVERLAPPED, InternalHigh);
    OFF(OVERLAPPED, Offset);
    OFF(OVERLAPPED, OffsetHigh);
    OFF(OVERLAPPED, hEvent);
    SIZE(OVERLAPPED_ENTRY);
    OFF(OVERLAPPED_ENTRY, lpCompletionKey);
    OFF(OVERLAPPED_ENTRY, lpOverlapped);
    OFF(OVERLAPPED_ENTRY, Internal);
    OFF(OVERLAPPED_ENTRY, dwNumberOfBytesTransferred);
    SIZE(WSABUF);
    OFF(WSABUF, len);
    OFF(WSABUF, buf);
    SIZE(GUID);
    OFF(GUID, Data2);
    OFF(GUID, Data3);
    OFF(GUID, Data4);
    SIZE(TRANSMIT_FILE_BUFFERS);
    OFF(TRANSMIT_FILE_BUFFERS, HeadLength);
    OFF(TRANSMIT_FILE_BUFFERS, Tail);
    OFF(TRANSMIT_FILE_BUFFERS, TailLength);
    SIZE(WSADATA);
    OFF(WSADATA, lpVendorInfo);
    OFF(WSADATA, szDescription);
    OFF(WSADATA, szSystemStatus);
    SIZE(SOCKET);
    SIZE(HANDLE);
    SIZE(DWORD);
    SIZE(ULONG_PTR);
    SIZE(BOOL);
    CONST(INFINITE);
    CONST(STATUS_PENDING);
    CONST(SIO_GET_EXTENSION_FUNCTION_POINTER);
    CONST(SO_UPDATE_ACCEPT_CONTEXT);
    CONST(SO_UPDATE_CONNECT_CONTEXT);
    CONST(WSA_FLAG_OVERLAPPED);
    CONST(FILE_FLAG_OVERLAPPED);
    CONST(FILE_SKIP_COMPLETION_PORT_ON_SUCCESS);
    CONST(FILE_SKIP_SET_EVENT_ON_HANDLE);
    CONST(TF_DISCONNECT);
    CONST(TF_REUSE_SOCKET);
    CONST(GENERIC_READ);
    CONST(GENERIC_WRITE);
    CONST(CREATE_ALWAYS);
    CONST(OPEN_EXISTING);
    CONST(WAIT_TIMEOUT);
    CONST(ERROR_IO_PENDING);
    CONST(ERROR_IO_INCOMPLETE);
    CONST(ERROR_OPERATION_ABORTED);
    CONST(ERROR_ABANDONED_WAIT_0);
    CONST(ERROR_NETNAME_DELETED);
    CONST(ERROR_CONNECTION_REFUSED);
    CONST(ERROR_HANDLE_EOF);
    CONST(ERROR_NOT_FOUND);
    CONST(ERROR_INVALID_HANDLE);
    CONST(ERROR_INVALID_PARAMETER);
    CONST(ERROR_MORE_DATA);
    CONST(WSAEINVAL);
    CONST(WSAENOTCONN);
    CONST(WSAECONNRESET);
    CONST(WSAEMSGSIZE);
    CONST(WSAENOTSOCK);
    CONST(WSAEFAULT);
    CONST(WSAEOPNOTSUPP);
    CONST(STATUS_CANCELLED);
    CONST(STATUS_CONNECTION_RESET);
    CHECK(iocp_abi_value("no such name") == ~0ull);
    CHECK(iocp_abi_value(NULL) == ~0ull);
    CHECK_EQ(failures, 0);
}

static void guids_are_the_windows_ones(void) {
    GUID a = WSAID_ACCEPTEX, c = WSAID_CONNECTEX;
    CHECK_EQ(a.Data1, 0xb5367df1u);
    CHECK_EQ(a.Data4[7], 0x92);
    CHECK_EQ(c.Data1, 0x25a207b9u);
}

int main(void) {
    start_deadline();
    print_backend();
    RUN(case_6_layouts);
    RUN(header_matches_library);
    RUN(guids_are_the_windows_ones);
    return 0;
}
