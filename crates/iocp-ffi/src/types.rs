//! The Windows types with their x64 layouts, and the layout check the C tests call.
//!
//! Every struct here has a twin in `include/iocp.h`. Two checks keep them equal: the `const`
//! assertions below pin the x64 sizes and offsets on the Rust side, and the C test `t_abi.c`
//! compares `sizeof`/`offsetof` of every struct and field, and the value of the constants,
//! with what `iocp_abi_value` (abi.rs) reports from this code. A drift on either side fails a test.
#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{c_char, c_void};
use std::mem::{offset_of, size_of};

/// Win32 `BOOL`.
pub type BOOL = i32;
/// Win32 `DWORD` (32 bits, also on LP64 Linux).
pub type DWORD = u32;
/// Win32 `ULONG` (32 bits).
pub type ULONG = u32;
/// Win32 `ULONG_PTR`.
pub type ULONG_PTR = usize;
/// Win32 `HANDLE`: a port (an id in the library's table) or a file descriptor.
pub type HANDLE = *mut c_void;
/// Winsock `SOCKET`: the Linux file descriptor, widened.
pub type SOCKET = usize;

/// `TRUE`.
pub const TRUE: BOOL = 1;
/// `FALSE`.
pub const FALSE: BOOL = 0;
/// `INFINITE` timeout.
pub const INFINITE: DWORD = 0xFFFF_FFFF;
/// `INVALID_SOCKET`.
pub const INVALID_SOCKET: SOCKET = !0;
/// `SOCKET_ERROR`.
pub const SOCKET_ERROR: i32 = -1;
/// `STATUS_PENDING`: `OVERLAPPED::Internal` while the operation runs.
pub const STATUS_PENDING: usize = 0x103;
/// `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS`.
pub const FILE_SKIP_COMPLETION_PORT_ON_SUCCESS: u8 = 0x1;
/// `FILE_SKIP_SET_EVENT_ON_HANDLE`.
pub const FILE_SKIP_SET_EVENT_ON_HANDLE: u8 = 0x2;
/// `WSA_FLAG_OVERLAPPED`.
pub const WSA_FLAG_OVERLAPPED: DWORD = 0x01;
/// `SIO_GET_EXTENSION_FUNCTION_POINTER`.
pub const SIO_GET_EXTENSION_FUNCTION_POINTER: DWORD = 0xC800_0006;
/// `SO_UPDATE_ACCEPT_CONTEXT` (a `SOL_SOCKET` option).
pub const SO_UPDATE_ACCEPT_CONTEXT: i32 = 0x700B;
/// `SO_UPDATE_CONNECT_CONTEXT` (a `SOL_SOCKET` option).
pub const SO_UPDATE_CONNECT_CONTEXT: i32 = 0x7010;
/// `TF_DISCONNECT`.
pub const TF_DISCONNECT: DWORD = 0x01;
/// `TF_REUSE_SOCKET`.
pub const TF_REUSE_SOCKET: DWORD = 0x02;
/// `TF_WRITE_BEHIND`.
pub const TF_WRITE_BEHIND: DWORD = 0x04;
/// `TF_USE_SYSTEM_THREAD`.
pub const TF_USE_SYSTEM_THREAD: DWORD = 0x10;
/// `TF_USE_KERNEL_APC`.
pub const TF_USE_KERNEL_APC: DWORD = 0x20;
/// `GENERIC_READ`.
pub const GENERIC_READ: DWORD = 0x8000_0000;
/// `GENERIC_WRITE`.
pub const GENERIC_WRITE: DWORD = 0x4000_0000;
/// `CREATE_NEW`.
pub const CREATE_NEW: DWORD = 1;
/// `CREATE_ALWAYS`.
pub const CREATE_ALWAYS: DWORD = 2;
/// `OPEN_EXISTING`.
pub const OPEN_EXISTING: DWORD = 3;
/// `OPEN_ALWAYS`.
pub const OPEN_ALWAYS: DWORD = 4;
/// `TRUNCATE_EXISTING`.
pub const TRUNCATE_EXISTING: DWORD = 5;
/// `FILE_FLAG_OVERLAPPED`.
pub const FILE_FLAG_OVERLAPPED: DWORD = 0x4000_0000;

/// `OVERLAPPED` (32 bytes on x64). `Offset`/`OffsetHigh` share their 8 bytes with `Pointer`.
#[repr(C)]
#[derive(Debug)]
pub struct OVERLAPPED {
    /// The status: `STATUS_PENDING` while running, then the final NTSTATUS.
    pub Internal: ULONG_PTR,
    /// Bytes transferred, once complete.
    pub InternalHigh: ULONG_PTR,
    /// Low half of the file offset.
    pub Offset: DWORD,
    /// High half of the file offset.
    pub OffsetHigh: DWORD,
    /// An event set when the operation completes (reset when it starts); with its low bit
    /// set, the completion queues no packet.
    pub hEvent: HANDLE,
}

/// `OVERLAPPED_ENTRY` (32 bytes on x64), as GetQueuedCompletionStatusEx fills it.
#[repr(C)]
#[derive(Debug)]
pub struct OVERLAPPED_ENTRY {
    /// The completion key.
    pub lpCompletionKey: ULONG_PTR,
    /// The operation's OVERLAPPED (or a posted value).
    pub lpOverlapped: *mut OVERLAPPED,
    /// The packet's NTSTATUS.
    pub Internal: ULONG_PTR,
    /// Bytes transferred.
    pub dwNumberOfBytesTransferred: DWORD,
}

/// `WSABUF`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct WSABUF {
    /// Length in bytes.
    pub len: ULONG,
    /// The bytes.
    pub buf: *mut c_char,
}

/// `GUID`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GUID {
    /// First 4 bytes.
    pub Data1: u32,
    /// Next 2.
    pub Data2: u16,
    /// Next 2.
    pub Data3: u16,
    /// Last 8.
    pub Data4: [u8; 8],
}

/// `TRANSMIT_FILE_BUFFERS`: what TransmitFile sends before and after the file.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TRANSMIT_FILE_BUFFERS {
    /// Bytes sent before the file.
    pub Head: *mut c_void,
    /// Their length.
    pub HeadLength: DWORD,
    /// Bytes sent after the file.
    pub Tail: *mut c_void,
    /// Their length.
    pub TailLength: DWORD,
}

/// `WSADATA` (the x64 field order).
#[repr(C)]
#[derive(Debug)]
pub struct WSADATA {
    /// Version the caller should use.
    pub wVersion: u16,
    /// Highest version supported.
    pub wHighVersion: u16,
    /// Obsolete.
    pub iMaxSockets: u16,
    /// Obsolete.
    pub iMaxUdpDg: u16,
    /// Obsolete.
    pub lpVendorInfo: *mut c_char,
    /// A description.
    pub szDescription: [c_char; 257],
    /// A status line.
    pub szSystemStatus: [c_char; 129],
}

/// `WSAID_ACCEPTEX`.
pub const WSAID_ACCEPTEX: GUID = guid(0xb536_7df1, 0xcbac, 0x11cf, MS1);
/// `WSAID_GETACCEPTEXSOCKADDRS`.
pub const WSAID_GETACCEPTEXSOCKADDRS: GUID = guid(0xb536_7df2, 0xcbac, 0x11cf, MS1);
/// `WSAID_TRANSMITFILE`.
pub const WSAID_TRANSMITFILE: GUID = guid(0xb536_7df0, 0xcbac, 0x11cf, MS1);
/// `WSAID_CONNECTEX`.
pub const WSAID_CONNECTEX: GUID =
    guid(0x25a2_07b9, 0xddf3, 0x4660, [0x8e, 0xe9, 0x76, 0xe5, 0x8c, 0x74, 0x06, 0x3e]);
/// `WSAID_DISCONNECTEX`.
pub const WSAID_DISCONNECTEX: GUID =
    guid(0x7fda_2e11, 0x8630, 0x436f, [0xa0, 0x31, 0xf5, 0x36, 0xa6, 0xee, 0xc1, 0x57]);
const MS1: [u8; 8] = [0x95, 0xca, 0x00, 0x80, 0x5f, 0x48, 0xa1, 0x92];

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> GUID {
    GUID { Data1: a, Data2: b, Data3: c, Data4: d }
}

// The x64 layouts, pinned (iocp-semantics.md §6 and §3; case 6).
const _: () = {
    assert!(size_of::<OVERLAPPED>() == 32);
    assert!(offset_of!(OVERLAPPED, Internal) == 0);
    assert!(offset_of!(OVERLAPPED, InternalHigh) == 8);
    assert!(offset_of!(OVERLAPPED, Offset) == 16);
    assert!(offset_of!(OVERLAPPED, OffsetHigh) == 20);
    assert!(offset_of!(OVERLAPPED, hEvent) == 24);
    assert!(size_of::<OVERLAPPED_ENTRY>() == 32);
    assert!(offset_of!(OVERLAPPED_ENTRY, lpCompletionKey) == 0);
    assert!(offset_of!(OVERLAPPED_ENTRY, lpOverlapped) == 8);
    assert!(offset_of!(OVERLAPPED_ENTRY, Internal) == 16);
    assert!(offset_of!(OVERLAPPED_ENTRY, dwNumberOfBytesTransferred) == 24);
    assert!(size_of::<WSABUF>() == 16);
    assert!(offset_of!(WSABUF, buf) == 8);
    assert!(size_of::<GUID>() == 16);
    assert!(size_of::<TRANSMIT_FILE_BUFFERS>() == 32);
    assert!(size_of::<WSADATA>() == 408);
    assert!(offset_of!(WSADATA, szDescription) == 16);
};

/// The pointer-sized value of a `HANDLE`.
pub(crate) fn hval(h: HANDLE) -> usize {
    h as usize
}

/// A `HANDLE` from its value.
pub(crate) fn handle_from(v: usize) -> HANDLE {
    std::ptr::without_provenance_mut(v)
}
