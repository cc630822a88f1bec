//! The layout check the C tests call (`t_abi.c`): the sizes, offsets and constants of
//! types.rs and errors.rs by name. Its own module, so that types.rs and errors.rs do not
//! import each other (errors.rs needs `DWORD`; this table needs both).

use std::ffi::{CStr, c_char};
use std::mem::{offset_of, size_of};

use crate::errors::*;
use crate::types::*;

/// The layout and constant table the header is checked against: `name` is `"sizeof(T)"`,
/// `"T.field"` (an offset) or a constant's name. Returns `u64::MAX` for an unknown name.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn iocp_abi_value(name: *const c_char) -> u64 {
    crate::guard(u64::MAX, || {
        if name.is_null() {
            return u64::MAX;
        }
        // SAFETY: the caller passes a NUL-terminated string (the function's contract).
        let name = unsafe { CStr::from_ptr(name) };
        abi_value(name.to_str().unwrap_or("")).unwrap_or(u64::MAX)
    })
}

fn abi_value(name: &str) -> Option<u64> {
    let v = match name {
        "sizeof(OVERLAPPED)" => size_of::<OVERLAPPED>(),
        "OVERLAPPED.Internal" => offset_of!(OVERLAPPED, Internal),
        "OVERLAPPED.InternalHigh" => offset_of!(OVERLAPPED, InternalHigh),
        "OVERLAPPED.Offset" => offset_of!(OVERLAPPED, Offset),
        "OVERLAPPED.OffsetHigh" => offset_of!(OVERLAPPED, OffsetHigh),
        "OVERLAPPED.hEvent" => offset_of!(OVERLAPPED, hEvent),
        "sizeof(OVERLAPPED_ENTRY)" => size_of::<OVERLAPPED_ENTRY>(),
        "OVERLAPPED_ENTRY.lpCompletionKey" => offset_of!(OVERLAPPED_ENTRY, lpCompletionKey),
        "OVERLAPPED_ENTRY.lpOverlapped" => offset_of!(OVERLAPPED_ENTRY, lpOverlapped),
        "OVERLAPPED_ENTRY.Internal" => offset_of!(OVERLAPPED_ENTRY, Internal),
        "OVERLAPPED_ENTRY.dwNumberOfBytesTransferred" => {
            offset_of!(OVERLAPPED_ENTRY, dwNumberOfBytesTransferred)
        }
        "sizeof(WSABUF)" => size_of::<WSABUF>(),
        "WSABUF.len" => offset_of!(WSABUF, len),
        "WSABUF.buf" => offset_of!(WSABUF, buf),
        "sizeof(GUID)" => size_of::<GUID>(),
        "GUID.Data2" => offset_of!(GUID, Data2),
        "GUID.Data3" => offset_of!(GUID, Data3),
        "GUID.Data4" => offset_of!(GUID, Data4),
        "sizeof(TRANSMIT_FILE_BUFFERS)" => size_of::<TRANSMIT_FILE_BUFFERS>(),
        "TRANSMIT_FILE_BUFFERS.HeadLength" => offset_of!(TRANSMIT_FILE_BUFFERS, HeadLength),
        "TRANSMIT_FILE_BUFFERS.Tail" => offset_of!(TRANSMIT_FILE_BUFFERS, Tail),
        "TRANSMIT_FILE_BUFFERS.TailLength" => offset_of!(TRANSMIT_FILE_BUFFERS, TailLength),
        "sizeof(WSADATA)" => size_of::<WSADATA>(),
        "WSADATA.lpVendorInfo" => offset_of!(WSADATA, lpVendorInfo),
        "WSADATA.szDescription" => offset_of!(WSADATA, szDescription),
        "WSADATA.szSystemStatus" => offset_of!(WSADATA, szSystemStatus),
        "sizeof(SOCKET)" => size_of::<SOCKET>(),
        "sizeof(HANDLE)" => size_of::<HANDLE>(),
        "sizeof(DWORD)" => size_of::<DWORD>(),
        "sizeof(ULONG_PTR)" => size_of::<ULONG_PTR>(),
        "sizeof(BOOL)" => size_of::<BOOL>(),
        "INFINITE" => return Some(INFINITE.into()),
        "STATUS_PENDING" => STATUS_PENDING,
        "SIO_GET_EXTENSION_FUNCTION_POINTER" => {
            return Some(SIO_GET_EXTENSION_FUNCTION_POINTER.into());
        }
        "SO_UPDATE_ACCEPT_CONTEXT" => return Some(SO_UPDATE_ACCEPT_CONTEXT as u64),
        "SO_UPDATE_CONNECT_CONTEXT" => return Some(SO_UPDATE_CONNECT_CONTEXT as u64),
        "WSA_FLAG_OVERLAPPED" => return Some(WSA_FLAG_OVERLAPPED.into()),
        "FILE_FLAG_OVERLAPPED" => return Some(FILE_FLAG_OVERLAPPED.into()),
        "FILE_SKIP_COMPLETION_PORT_ON_SUCCESS" => FILE_SKIP_COMPLETION_PORT_ON_SUCCESS.into(),
        "FILE_SKIP_SET_EVENT_ON_HANDLE" => FILE_SKIP_SET_EVENT_ON_HANDLE.into(),
        "TF_DISCONNECT" => return Some(TF_DISCONNECT.into()),
        "TF_REUSE_SOCKET" => return Some(TF_REUSE_SOCKET.into()),
        "GENERIC_READ" => return Some(GENERIC_READ.into()),
        "GENERIC_WRITE" => return Some(GENERIC_WRITE.into()),
        "CREATE_ALWAYS" => return Some(CREATE_ALWAYS.into()),
        "OPEN_EXISTING" => return Some(OPEN_EXISTING.into()),
        "WAIT_TIMEOUT" => return Some(WAIT_TIMEOUT.into()),
        "ERROR_IO_PENDING" => return Some(ERROR_IO_PENDING.into()),
        "ERROR_IO_INCOMPLETE" => return Some(ERROR_IO_INCOMPLETE.into()),
        "ERROR_OPERATION_ABORTED" => return Some(ERROR_OPERATION_ABORTED.into()),
        "ERROR_ABANDONED_WAIT_0" => return Some(ERROR_ABANDONED_WAIT_0.into()),
        "ERROR_NETNAME_DELETED" => return Some(ERROR_NETNAME_DELETED.into()),
        "ERROR_CONNECTION_REFUSED" => return Some(ERROR_CONNECTION_REFUSED.into()),
        "ERROR_HANDLE_EOF" => return Some(ERROR_HANDLE_EOF.into()),
        "ERROR_NOT_FOUND" => return Some(ERROR_NOT_FOUND.into()),
        "ERROR_INVALID_HANDLE" => return Some(ERROR_INVALID_HANDLE.into()),
        "ERROR_INVALID_PARAMETER" => return Some(ERROR_INVALID_PARAMETER.into()),
        "ERROR_MORE_DATA" => return Some(ERROR_MORE_DATA.into()),
        "WSAEINVAL" => return Some(WSAEINVAL.into()),
        "WSAENOTCONN" => return Some(WSAENOTCONN.into()),
        "WSAECONNRESET" => return Some(WSAECONNRESET.into()),
        "WSAEMSGSIZE" => return Some(WSAEMSGSIZE.into()),
        "WSAENOTSOCK" => return Some(WSAENOTSOCK.into()),
        "WSAEFAULT" => return Some(WSAEFAULT.into()),
        "WSAEOPNOTSUPP" => return Some(WSAEOPNOTSUPP.into()),
        "STATUS_CANCELLED" => return Some(STATUS_CANCELLED.into()),
        "STATUS_CONNECTION_RESET" => return Some(STATUS_CONNECTION_RESET.into()),
        _ => return None,
    };
    Some(v as u64)
}
