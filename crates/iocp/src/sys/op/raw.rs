//! The non-blocking socket calls the operations share, each returning the ops' result
//! convention: bytes (or 0) when non-negative, `-errno` when negative.

use std::io;
use std::os::fd::RawFd;

/// The calling thread's `errno` after a failed call.
pub(super) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// A libc return value (`-1` and `errno` on failure) in the ops' convention.
pub(super) fn ret(r: isize) -> isize {
    if r < 0 { -(errno() as isize) } else { r }
}

/// `-errno`, for a stage that fails before any call.
pub(super) fn fail(errno: i32) -> isize {
    -(errno as isize)
}

/// `recv` into the spare capacity of `buf` (which the caller's op owns).
pub(super) fn recv_spare(fd: RawFd, buf: &mut Vec<u8>) -> isize {
    let spare = buf.spare_capacity_mut();
    // SAFETY: `spare` is writable memory owned by the calling op, of the length given.
    ret(unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) })
}

/// `send` of `rest` (bytes the caller's op owns), never raising SIGPIPE.
pub(super) fn send(fd: RawFd, rest: &[u8]) -> isize {
    // SAFETY: `rest` is readable memory owned by the calling op, of the length given.
    ret(unsafe {
        libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    })
}

/// Peeks at one byte without blocking: 1 (data), 0 (end of stream) or `-errno`.
pub(super) fn peek(fd: RawFd) -> isize {
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into a local.
    ret(unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) })
}

/// `getsockopt(SO_ERROR)`: the pending error of a socket, 0 if none.
pub(super) fn so_error(fd: RawFd) -> i32 {
    let mut err: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err`/`len` are valid locals of the sizes given.
    let r = unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &mut len)
    };
    if r < 0 { errno() } else { err }
}

/// A length for an SQE's `u32` field (a longer buffer is sent in parts).
#[cfg(feature = "uring")]
pub(super) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
