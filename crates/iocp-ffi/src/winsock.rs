//! Winsock: WSAStartup, WSASocket, closesocket, WSARecv/WSASend(To/From), AcceptEx,
//! GetAcceptExSockaddrs, ConnectEx, DisconnectEx, TransmitFile, WSAIoctl (the extension function
//! pointers), and `setsockopt` accepting the two `SO_UPDATE_*_CONTEXT` options.
//!
//! A SOCKET is the Linux fd. Overlapped calls need the socket associated with a port.
//! `WSARecv`/`WSASend` on a stream socket first try in line (success: 0 and a packet unless skip
//! mode; failure: the error and no packet); everything else goes to the core, which copies send
//! bytes at submit and received bytes into the caller's buffers at dequeue, and returns
//! `SOCKET_ERROR` / FALSE with `WSA_IO_PENDING`.

#![allow(non_snake_case)] // the Win32 names, as the header declares them

use std::ffi::{c_char, c_int, c_void};
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use iocp_core::TransmitRange;
use socket2::{SockAddr, SockRef};

use crate::errors::*;
use crate::mem;
use crate::registry::{self, Assoc, Side, Target};
use crate::types::*;
use crate::{guard, set_last_error};

fn wsa_fail(code: DWORD) -> c_int {
    set_last_error(code);
    SOCKET_ERROR
}

fn bool_fail(code: DWORD) -> BOOL {
    set_last_error(code);
    FALSE
}

/// The association of socket `s`, or the WSA error to report.
fn sock(s: SOCKET) -> Result<Arc<Assoc>, DWORD> {
    // The table first: `assoc` also checks, by the fd's identity (one fstat), that the number
    // still names the socket that was associated (not close()d and reused).
    if let Some(a) = i32::try_from(s).ok().filter(|&fd| fd > 0).and_then(registry::assoc) {
        return Ok(a);
    }
    let fd = registry::fd_of(s).ok_or(WSAENOTSOCK)?;
    // A socket with no port: its operations report through their OVERLAPPED (status, event)
    // only, as on Windows; the library's hidden port runs them.
    registry::associate_implicit(fd).map_err(|c| c.wsa)
}

/// Reads a WSABUF array into `(address, length)` pairs.
///
/// # Safety
/// `bufs` is NULL or valid for `n` entries.
unsafe fn wsabufs(bufs: *const WSABUF, n: DWORD) -> Result<Vec<(usize, usize)>, DWORD> {
    if n > 1024 {
        return Err(WSAEINVAL);
    }
    if n > 0 && bufs.is_null() {
        return Err(WSAEFAULT);
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        // SAFETY: i < n entries are readable (caller's contract).
        let b = unsafe { mem::get(bufs.wrapping_add(i)) }.ok_or(WSAEFAULT)?;
        if b.len > 0 && b.buf.is_null() {
            return Err(WSAEFAULT);
        }
        out.push((b.buf as usize, b.len as usize));
    }
    Ok(out)
}

/// The caller's bytes in `bufs`, concatenated (a send copies them at submit).
///
/// # Safety
/// Every buffer is valid for reads of its length.
unsafe fn gather(bufs: &[(usize, usize)]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bufs.iter().map(|b| b.1).sum());
    for &(p, n) in bufs {
        // SAFETY: each `(address, length)` is a caller buffer readable for its length (this
        // function's contract).
        v.extend_from_slice(&unsafe { mem::copy_in(p as *const u8, n) });
    }
    v
}

/// Parses a caller `sockaddr` (IPv4 or IPv6).
///
/// # Safety
/// `name` is NULL or valid for `len` bytes.
unsafe fn parse_addr(name: *const c_void, len: c_int) -> Result<SockAddr, DWORD> {
    let len = usize::try_from(len).map_err(|_| WSAEFAULT)?;
    if name.is_null() || len < 2 {
        return Err(WSAEFAULT);
    }
    // SAFETY: `name` is non-NULL (checked) and readable for `len` bytes (this function's contract).
    let b = unsafe { mem::copy_in(name.cast(), len) };
    let family = c_int::from(u16::from_ne_bytes([b[0], b[1]]));
    let port = |b: &[u8]| u16::from_be_bytes([b[2], b[3]]);
    let addr = match family {
        libc::AF_INET if len >= 16 => {
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            SocketAddr::V4(SocketAddrV4::new(ip, port(&b)))
        }
        libc::AF_INET6 if len >= 28 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&b[8..24]);
            let flow = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port(&b), flow, scope))
        }
        libc::AF_INET | libc::AF_INET6 => return Err(WSAEFAULT),
        _ => return Err(WSAEAFNOSUPPORT),
    };
    Ok(SockAddr::from(addr))
}

/// The common end of an overlapped start: `SOCKET_ERROR` + `WSA_IO_PENDING`, or the failure.
fn pending_or(r: Result<(), crate::errors::Codes>) -> c_int {
    match r {
        Ok(()) => wsa_fail(ERROR_IO_PENDING),
        Err(c) => wsa_fail(c.wsa),
    }
}

fn pending_bool(r: Result<(), crate::errors::Codes>) -> BOOL {
    match r {
        Ok(()) => bool_fail(ERROR_IO_PENDING),
        Err(c) => bool_fail(c.wsa),
    }
}

/// WSAStartup: always succeeds with version 2.2.
///
/// # Safety
/// `lpWSAData` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAStartup(wVersionRequested: u16, lpWSAData: *mut WSADATA) -> c_int {
    let _ = wVersionRequested;
    guard(WSASYSCALLFAILURE as c_int, || {
        if lpWSAData.is_null() {
            return WSAEFAULT as c_int;
        }
        let mut d = WSADATA {
            wVersion: 0x0202,
            wHighVersion: 0x0202,
            iMaxSockets: 0,
            iMaxUdpDg: 0,
            lpVendorInfo: std::ptr::null_mut(),
            szDescription: [0; 257],
            szSystemStatus: [0; 129],
        };
        for (i, b) in b"libiocp (Linux)".iter().enumerate() {
            d.szDescription[i] = *b as c_char;
        }
        for (i, b) in b"Running".iter().enumerate() {
            d.szSystemStatus[i] = *b as c_char;
        }
        // SAFETY: non-NULL and valid (caller's contract).
        unsafe { mem::put(lpWSAData, d) };
        0
    })
}

/// WSACleanup: nothing to release; returns 0.
#[unsafe(no_mangle)]
pub extern "C" fn WSACleanup() -> c_int {
    0
}

/// WSAGetLastError: the calling thread's last error (the same slot as GetLastError).
#[unsafe(no_mangle)]
pub extern "C" fn WSAGetLastError() -> c_int {
    crate::last_error() as c_int
}

/// WSASetLastError.
#[unsafe(no_mangle)]
pub extern "C" fn WSASetLastError(iError: c_int) {
    set_last_error(iError as DWORD);
}

fn wsa_socket(af: c_int, ty: c_int, protocol: c_int, info: *mut c_void) -> SOCKET {
    guard(INVALID_SOCKET, || {
        if !info.is_null() {
            set_last_error(WSAEINVAL);
            return INVALID_SOCKET;
        }
        // SAFETY: socket(2) with plain integers.
        let fd = unsafe { libc::socket(af, ty | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            set_last_error(last_os().wsa);
            return INVALID_SOCKET;
        }
        fd as SOCKET
    })
}

/// WSASocketA: `socket(2)`; every socket can do overlapped I/O. `lpProtocolInfo` must be NULL.
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSASocketA(
    af: c_int,
    r#type: c_int,
    protocol: c_int,
    lpProtocolInfo: *mut c_void,
    g: u32,
    dwFlags: DWORD,
) -> SOCKET {
    let _ = (g, dwFlags);
    wsa_socket(af, r#type, protocol, lpProtocolInfo)
}

/// WSASocketW: WSASocketA (the protocol info, the only string-bearing argument, must be NULL).
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSASocketW(
    af: c_int,
    r#type: c_int,
    protocol: c_int,
    lpProtocolInfo: *mut c_void,
    g: u32,
    dwFlags: DWORD,
) -> SOCKET {
    // SAFETY: WSASocketA dereferences no pointer (`lpProtocolInfo` is only compared with NULL).
    unsafe { WSASocketA(af, r#type, protocol, lpProtocolInfo, g, dwFlags) }
}

/// closesocket: pending overlapped operations each complete once with
/// `ERROR_OPERATION_ABORTED`; the fd is closed at once (the socket itself once they are done).
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closesocket(s: SOCKET) -> c_int {
    guard(SOCKET_ERROR, || {
        let Some(fd) = registry::fd_of(s) else { return wsa_fail(WSAENOTSOCK) };
        match registry::close_socket_or_file(fd) {
            Ok(()) => 0,
            Err(c) => wsa_fail(c.wsa),
        }
    })
}

/// Synchronous receive/send (no OVERLAPPED): readv/writev on the caller's fd.
///
/// # Safety
/// The buffers are valid.
unsafe fn sync_io(s: SOCKET, bufs: &[(usize, usize)], write: bool, done: *mut DWORD) -> c_int {
    let Some(fd) = registry::fd_of(s) else { return wsa_fail(WSAENOTSOCK) };
    let iov: Vec<libc::iovec> =
        bufs.iter().map(|&(p, n)| libc::iovec { iov_base: p as *mut c_void, iov_len: n }).collect();
    let r = if write {
        // SAFETY: the iovecs describe the caller's valid buffers (caller's contract).
        unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as c_int) }
    } else {
        // SAFETY: as above, writable.
        unsafe { libc::readv(fd, iov.as_ptr(), iov.len() as c_int) }
    };
    if r < 0 {
        return wsa_fail(last_os().wsa);
    }
    // SAFETY: `done` is NULL or valid for a write (the exported call's out-parameter contract);
    // `put` skips NULL.
    unsafe { mem::put(done, r as DWORD) };
    0
}

/// One non-blocking `recvmsg`/`sendmsg` over the caller's buffers on the caller's fd: the
/// bytes moved, or the errno.
///
/// # Safety
/// Every buffer is valid for its length (writable for a receive).
unsafe fn try_stream(fd: i32, bufs: &[(usize, usize)], send: bool) -> Result<usize, i32> {
    let mut iov: Vec<libc::iovec> =
        bufs.iter().map(|&(p, n)| libc::iovec { iov_base: p as *mut c_void, iov_len: n }).collect();
    // SAFETY: an all-zero msghdr (no name, no control) is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len();
    let r = if send {
        // SAFETY: the iovecs describe the caller's readable buffers (caller's contract).
        unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) }
    } else {
        // SAFETY: the iovecs describe the caller's writable buffers (caller's contract).
        unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) }
    };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    } else {
        Ok(r as usize)
    }
}

fn would_block(e: i32) -> bool {
    e == libc::EAGAIN || e == libc::EWOULDBLOCK || e == libc::EINTR
}

/// A start that failed in line: the status goes into the OVERLAPPED, no packet comes.
///
/// # Safety
/// `ov` is non-NULL and valid.
unsafe fn failed_in_line(ov: *mut OVERLAPPED, errno: i32) -> c_int {
    let c = from_errno(errno);
    // SAFETY: `ov` is non-NULL and valid (this function's contract); no packet comes for it, so
    // this is its one result write.
    unsafe { mem::ov_done(ov, c.nt, 0) };
    wsa_fail(c.wsa)
}

/// The reset a ConnectEx did not report (its connection was reset at once): the first
/// overlapped receive or send after it fails in line with it, no packet.
///
/// # Safety
/// `ov` is non-NULL and valid.
unsafe fn deferred_reset(a: &Assoc, ov: *mut OVERLAPPED) -> Option<c_int> {
    if !a.reset_pending.load(Ordering::Acquire) || !a.reset_pending.swap(false, Ordering::AcqRel) {
        return None;
    }
    // SAFETY: `ov` is non-NULL and valid (this function's contract).
    Some(unsafe { failed_in_line(ov, libc::ECONNRESET) })
}

/// WSARecv: an overlapped receive into the WSABUFs (filled in order, no gaps); a zero-length
/// buffer list is the zero-byte receive (completes when the socket becomes readable). On a
/// stream socket with no receive in flight it first tries in line: data (or the end of the
/// stream) returns 0 with the count, plus one packet unless skip mode is set; an error returns
/// it with no packet. Otherwise `SOCKET_ERROR` + `WSA_IO_PENDING`. Without an OVERLAPPED: a
/// plain `readv`.
///
/// # Safety
/// Win32 contract: `lpBuffers` valid for `dwBufferCount` entries (captured before return); the
/// data buffers and the OVERLAPPED valid until the packet is dequeued.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSARecv(
    s: SOCKET,
    lpBuffers: *mut WSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesRecvd: *mut DWORD,
    lpFlags: *mut DWORD,
    lpOverlapped: *mut OVERLAPPED,
    lpCompletionRoutine: *mut c_void,
) -> c_int {
    guard(SOCKET_ERROR, || {
        if !lpCompletionRoutine.is_null() {
            return wsa_fail(WSAEOPNOTSUPP);
        }
        // SAFETY: `lpBuffers` is NULL or valid for `dwBufferCount` WSABUFs during the call
        // (Winsock's contract); `wsabufs` rejects NULL with a count.
        let bufs = match unsafe { wsabufs(lpBuffers, dwBufferCount) } {
            Ok(b) => b,
            Err(e) => return wsa_fail(e),
        };
        if lpOverlapped.is_null() {
            // SAFETY: `lpFlags` is NULL or valid for a write (the exported call's out-parameter
            // contract); `put` skips NULL.
            unsafe { mem::put(lpFlags, 0) };
            // SAFETY: the WSABUFs name the caller's buffers, valid for their lengths during this
            // synchronous call; the count pointer is NULL or writable (Winsock's contract).
            return unsafe { sync_io(s, &bufs, false, lpNumberOfBytesRecvd) };
        }
        let a = match sock(s) {
            Ok(a) => a,
            Err(e) => return wsa_fail(e),
        };
        // SAFETY: non-NULL (checked), valid (caller's contract).
        if let Some(r) = unsafe { deferred_reset(&a, lpOverlapped) } {
            return r;
        }
        let total: usize = bufs.iter().map(|b| b.1).sum();
        if total == 0 {
            return pending_or(registry::start(&a, lpOverlapped, Target::None, |h, ctx| {
                h.recv_ready(ctx)
            }));
        }
        // In line first, as Windows does, when no other receive is in flight (stream order):
        // data or end of stream completes now (a packet unless skip mode), an error fails the
        // call with no packet (cases 18-21, 23).
        if a.is_stream && a.idle(Side::Recv) {
            // SAFETY: caller's contract for the buffers.
            match unsafe { try_stream(s as i32, &bufs, false) } {
                Ok(n) => {
                    // SAFETY: `lpNumberOfBytesRecvd` is NULL or valid for a write (the exported
                    // call's out-parameter contract); `put` skips NULL.
                    unsafe { mem::put(lpNumberOfBytesRecvd, n as DWORD) };
                    // SAFETY: `lpFlags` is NULL or valid for a write (the exported call's
                    // out-parameter contract); `put` skips NULL.
                    unsafe { mem::put(lpFlags, 0) };
                    a.inline_success(lpOverlapped, n);
                    return 0;
                }
                Err(e) if would_block(e) => {}
                // SAFETY: non-NULL (checked), valid (caller's contract).
                Err(e) => return unsafe { failed_in_line(lpOverlapped, e) },
            }
        }
        let target = Target::Scatter(bufs);
        pending_or(registry::start_sided(&a, lpOverlapped, target, Side::Recv, 0, |h, ctx| {
            h.recv(Vec::with_capacity(total), ctx)
        }))
    })
}

/// WSASend: an overlapped send of the WSABUFs (all of it is sent; what is not sent in line is
/// copied before return). In line first as WSARecv; a partial in-line send goes pending for the
/// rest and its packet counts all bytes. Without an OVERLAPPED: a plain `writev`.
///
/// # Safety
/// As WSARecv.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSASend(
    s: SOCKET,
    lpBuffers: *mut WSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesSent: *mut DWORD,
    dwFlags: DWORD,
    lpOverlapped: *mut OVERLAPPED,
    lpCompletionRoutine: *mut c_void,
) -> c_int {
    let _ = dwFlags;
    guard(SOCKET_ERROR, || {
        if !lpCompletionRoutine.is_null() {
            return wsa_fail(WSAEOPNOTSUPP);
        }
        // SAFETY: `lpBuffers` is NULL or valid for `dwBufferCount` WSABUFs during the call
        // (Winsock's contract); `wsabufs` rejects NULL with a count.
        let bufs = match unsafe { wsabufs(lpBuffers, dwBufferCount) } {
            Ok(b) => b,
            Err(e) => return wsa_fail(e),
        };
        if lpOverlapped.is_null() {
            // SAFETY: the WSABUFs name the caller's buffers, valid for their lengths during this
            // synchronous call; the count pointer is NULL or writable (Winsock's contract).
            return unsafe { sync_io(s, &bufs, true, lpNumberOfBytesSent) };
        }
        let a = match sock(s) {
            Ok(a) => a,
            Err(e) => return wsa_fail(e),
        };
        // SAFETY: non-NULL (checked), valid (caller's contract).
        if let Some(r) = unsafe { deferred_reset(&a, lpOverlapped) } {
            return r;
        }
        let total: usize = bufs.iter().map(|b| b.1).sum();
        let mut sent = 0;
        if a.is_stream && total > 0 && a.idle(Side::Send) {
            // SAFETY: caller's contract for the buffers.
            match unsafe { try_stream(s as i32, &bufs, true) } {
                Ok(n) if n == total => {
                    // SAFETY: `lpNumberOfBytesSent` is NULL or valid for a write (the exported
                    // call's out-parameter contract); `put` skips NULL.
                    unsafe { mem::put(lpNumberOfBytesSent, n as DWORD) };
                    a.inline_success(lpOverlapped, n);
                    return 0;
                }
                Ok(n) => sent = n,
                Err(e) if would_block(e) => {}
                // SAFETY: non-NULL (checked), valid (caller's contract).
                Err(e) => return unsafe { failed_in_line(lpOverlapped, e) },
            }
        }
        // SAFETY: each WSABUF is readable for its length during the call (a send's buffers need
        // only last until it returns: the bytes are copied here).
        let rest = unsafe { gather(&bufs) }.split_off(sent);
        pending_or(registry::start_sided(
            &a,
            lpOverlapped,
            Target::None,
            Side::Send,
            sent,
            |h, ctx| h.send(rest, ctx),
        ))
    })
}

/// The buffers of an overlapped WSARecvFrom / WSASendTo: refused (WSAEOPNOTSUPP) without an
/// OVERLAPPED or with a completion routine, which libiocp does not run.
///
/// # Safety
/// As [`wsabufs`].
unsafe fn datagram_bufs(
    bufs: *const WSABUF,
    n: DWORD,
    ov: *mut OVERLAPPED,
    routine: *mut c_void,
) -> Result<Vec<(usize, usize)>, DWORD> {
    if !routine.is_null() || ov.is_null() {
        return Err(WSAEOPNOTSUPP);
    }
    // SAFETY: `bufs` is NULL or valid for `n` WSABUFs (this function's own contract).
    unsafe { wsabufs(bufs, n) }
}

/// WSARecvFrom: an overlapped receive of one datagram and its sender's address (written to
/// `lpFrom` / `lpFromlen` at dequeue). A datagram larger than the buffers fills them and
/// completes with `ERROR_MORE_DATA` (`STATUS_BUFFER_OVERFLOW`); the rest is discarded.
///
/// # Safety
/// As WSARecv; `lpFrom` / `lpFromlen` valid until the packet is dequeued.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSARecvFrom(
    s: SOCKET,
    lpBuffers: *mut WSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesRecvd: *mut DWORD,
    lpFlags: *mut DWORD,
    lpFrom: *mut c_void,
    lpFromlen: *mut c_int,
    lpOverlapped: *mut OVERLAPPED,
    lpCompletionRoutine: *mut c_void,
) -> c_int {
    let _ = (lpNumberOfBytesRecvd, lpFlags);
    guard(SOCKET_ERROR, || {
        // SAFETY: `lpBuffers` is NULL or valid for `dwBufferCount` WSABUFs during the call
        // (Winsock's contract); `datagram_bufs` rejects NULL with a count.
        let bufs = match unsafe {
            datagram_bufs(lpBuffers, dwBufferCount, lpOverlapped, lpCompletionRoutine)
        } {
            Ok(b) => b,
            Err(e) => return wsa_fail(e),
        };
        let total: usize = bufs.iter().map(|b| b.1).sum();
        if total == 0 {
            return wsa_fail(WSAEINVAL);
        }
        let a = match sock(s) {
            Ok(a) => a,
            Err(e) => return wsa_fail(e),
        };
        let target = Target::RecvFrom { bufs, from: lpFrom as usize, fromlen: lpFromlen as usize };
        pending_or(registry::start(&a, lpOverlapped, target, |h, ctx| {
            h.recv_from(Vec::with_capacity(total), ctx)
        }))
    })
}

/// WSASendTo: an overlapped send of one datagram to `lpTo`.
///
/// # Safety
/// As WSASend; `lpTo` valid for `iTolen` bytes during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSASendTo(
    s: SOCKET,
    lpBuffers: *mut WSABUF,
    dwBufferCount: DWORD,
    lpNumberOfBytesSent: *mut DWORD,
    dwFlags: DWORD,
    lpTo: *const c_void,
    iTolen: c_int,
    lpOverlapped: *mut OVERLAPPED,
    lpCompletionRoutine: *mut c_void,
) -> c_int {
    let _ = (lpNumberOfBytesSent, dwFlags);
    guard(SOCKET_ERROR, || {
        // SAFETY: `lpBuffers` is NULL or valid for `dwBufferCount` WSABUFs during the call
        // (Winsock's contract); `datagram_bufs` rejects NULL with a count.
        let bufs = match unsafe {
            datagram_bufs(lpBuffers, dwBufferCount, lpOverlapped, lpCompletionRoutine)
        } {
            Ok(b) => b,
            Err(e) => return wsa_fail(e),
        };
        // SAFETY: `lpTo` is NULL or readable for `iTolen` bytes during the call (the sockaddr
        // contract); `parse_addr` rejects NULL.
        let to = match unsafe { parse_addr(lpTo, iTolen) } {
            Ok(t) => t,
            Err(e) => return wsa_fail(e),
        };
        let a = match sock(s) {
            Ok(a) => a,
            Err(e) => return wsa_fail(e),
        };
        // SAFETY: each WSABUF is readable for its length during the call (a send's buffers need
        // only last until it returns: the bytes are copied here).
        let data = unsafe { gather(&bufs) };
        pending_or(registry::start(&a, lpOverlapped, Target::None, |h, ctx| {
            h.send_to(data, to, ctx)
        }))
    })
}

/// The smallest address slot AcceptEx accepts: `sizeof(sockaddr_in) + 16`.
const MIN_SLOT: DWORD = 32;

/// AcceptEx: accepts a connection on `sListenSocket` into the caller's `sAcceptSocket` (the
/// accepted connection is `dup3`'d onto that fd number at dequeue), with an optional first
/// receive of `dwReceiveDataLength` bytes; the addresses go into `lpOutputBuffer` for
/// GetAcceptExSockaddrs. The packet carries the listener's key.
///
/// # Safety
/// Win32 contract: `lpOutputBuffer` holds `dwReceiveDataLength + dwLocalAddressLength +
/// dwRemoteAddressLength` bytes and, with the OVERLAPPED, stays valid until the packet is
/// dequeued; `sAcceptSocket` stays open until then.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn AcceptEx(
    sListenSocket: SOCKET,
    sAcceptSocket: SOCKET,
    lpOutputBuffer: *mut c_void,
    dwReceiveDataLength: DWORD,
    dwLocalAddressLength: DWORD,
    dwRemoteAddressLength: DWORD,
    lpdwBytesReceived: *mut DWORD,
    lpOverlapped: *mut OVERLAPPED,
) -> BOOL {
    let _ = lpdwBytesReceived;
    guard(FALSE, || {
        if lpOverlapped.is_null()
            || dwLocalAddressLength < MIN_SLOT
            || dwRemoteAddressLength < MIN_SLOT
        {
            return bool_fail(WSAEINVAL);
        }
        if lpOutputBuffer.is_null() {
            return bool_fail(WSAEFAULT);
        }
        let Some(accept_fd) = registry::fd_of(sAcceptSocket) else {
            return bool_fail(WSAENOTSOCK);
        };
        let a = match sock(sListenSocket) {
            Ok(a) => a,
            Err(e) => return bool_fail(e),
        };
        let data_len = dwReceiveDataLength as usize;
        // The claim on the accept socket: closesocket of it aborts this AcceptEx, and the
        // connection only goes onto the fd number while the claim stands.
        let Some(watch) = registry::watch_accept(accept_fd, &a, lpOverlapped as usize) else {
            return bool_fail(WSAENOTSOCK);
        };
        let target = Target::Accept {
            out: lpOutputBuffer as usize,
            data_len,
            local_len: dwLocalAddressLength as usize,
            remote_len: dwRemoteAddressLength as usize,
            accept_fd,
            watch,
        };
        let r = registry::start(&a, lpOverlapped, target, |h, ctx| {
            h.accept(Vec::with_capacity(data_len), ctx)
        });
        match r {
            Ok(()) => registry::recheck_accept(&a, accept_fd, watch, lpOverlapped as usize),
            Err(_) => registry::unwatch_accept(accept_fd, watch),
        }
        pending_bool(r)
    })
}

/// GetAcceptExSockaddrs: points `*LocalSockaddr` / `*RemoteSockaddr` into the AcceptEx buffer
/// (given with the same three lengths) and writes their lengths.
///
/// # Safety
/// `lpOutputBuffer` is the buffer of a completed AcceptEx with these lengths; the out-pointers
/// are NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetAcceptExSockaddrs(
    lpOutputBuffer: *mut c_void,
    dwReceiveDataLength: DWORD,
    dwLocalAddressLength: DWORD,
    dwRemoteAddressLength: DWORD,
    LocalSockaddr: *mut *mut c_void,
    LocalSockaddrLength: *mut c_int,
    RemoteSockaddr: *mut *mut c_void,
    RemoteSockaddrLength: *mut c_int,
) {
    guard((), || {
        if lpOutputBuffer.is_null() {
            return;
        }
        let base = lpOutputBuffer as usize;
        let slots = [
            (
                base + dwReceiveDataLength as usize,
                dwLocalAddressLength,
                LocalSockaddr,
                LocalSockaddrLength,
            ),
            (
                base + dwReceiveDataLength as usize + dwLocalAddressLength as usize,
                dwRemoteAddressLength,
                RemoteSockaddr,
                RemoteSockaddrLength,
            ),
        ];
        for (slot, len, out, outlen) in slots {
            if len < 16 {
                continue;
            }
            // SAFETY: the slot's first 2 bytes are in the caller's buffer (caller's contract).
            let head = unsafe { mem::copy_in(slot as *const u8, 2) };
            let n = u16::from_ne_bytes([head[0], head[1]]);
            // SAFETY: caller's contract for the out-pointers.
            unsafe { mem::put(out, (slot + 16) as *mut c_void) };
            // SAFETY: `outlen` is NULL or valid for a write (the exported call's out-parameter
            // contract); `put` skips NULL.
            unsafe { mem::put(outlen, c_int::from(n)) };
        }
    })
}

/// ConnectEx: connects the (bound) socket to `name`, then sends the optional buffer (copied at
/// submit); the packet's byte count is the bytes of that buffer sent. An unbound socket fails
/// with `WSAEINVAL`, as on Windows.
///
/// # Safety
/// `name` valid for `namelen` bytes and `lpSendBuffer` for `dwSendDataLength` during the call;
/// the OVERLAPPED until the packet is dequeued.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ConnectEx(
    s: SOCKET,
    name: *const c_void,
    namelen: c_int,
    lpSendBuffer: *mut c_void,
    dwSendDataLength: DWORD,
    lpdwBytesSent: *mut DWORD,
    lpOverlapped: *mut OVERLAPPED,
) -> BOOL {
    let _ = lpdwBytesSent;
    guard(FALSE, || {
        if lpOverlapped.is_null() {
            return bool_fail(WSAEINVAL);
        }
        // SAFETY: `name` is NULL or readable for `namelen` bytes during the call (the sockaddr
        // contract); `parse_addr` rejects NULL.
        let addr = match unsafe { parse_addr(name, namelen) } {
            Ok(a) => a,
            Err(e) => return bool_fail(e),
        };
        let Some(fd) = registry::fd_of(s) else { return bool_fail(WSAENOTSOCK) };
        // SAFETY: `fd` is open (checked) for the duration of this borrow.
        let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
        let bound = SockRef::from(&bfd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a.port() != 0);
        if !bound {
            return bool_fail(WSAEINVAL);
        }
        let a = match sock(s) {
            Ok(a) => a,
            Err(e) => return bool_fail(e),
        };
        // SAFETY: `lpSendBuffer` is readable for `dwSendDataLength` bytes during the call
        // (ConnectEx's contract); `copy_in` skips NULL or 0.
        let data = unsafe { mem::copy_in(lpSendBuffer.cast(), dwSendDataLength as usize) };
        pending_bool(registry::start(&a, lpOverlapped, Target::None, |h, ctx| {
            h.connect(addr, data, ctx)
        }))
    })
}

/// DisconnectEx: sends FIN and completes once the peer has closed; with `TF_REUSE_SOCKET` the
/// socket can then ConnectEx again. `dwFlags` other than 0 / `TF_REUSE_SOCKET`, or a non-zero
/// `dwReserved`, give `WSAEINVAL`. Without an OVERLAPPED it only shuts down the send side,
/// synchronously, with no packet.
///
/// # Safety
/// The OVERLAPPED stays valid until the packet is dequeued.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn DisconnectEx(
    s: SOCKET,
    lpOverlapped: *mut OVERLAPPED,
    dwFlags: DWORD,
    dwReserved: DWORD,
) -> BOOL {
    guard(FALSE, || {
        if dwReserved != 0 || dwFlags & !TF_REUSE_SOCKET != 0 {
            return bool_fail(WSAEINVAL);
        }
        if lpOverlapped.is_null() {
            let Some(fd) = registry::fd_of(s) else { return bool_fail(WSAENOTSOCK) };
            // SAFETY: shutdown(2) on an open fd.
            if unsafe { libc::shutdown(fd, libc::SHUT_WR) } < 0 {
                return bool_fail(last_os().wsa);
            }
            return TRUE;
        }
        let a = match sock(s) {
            Ok(a) => a,
            Err(e) => return bool_fail(e),
        };
        let reuse = dwFlags & TF_REUSE_SOCKET != 0;
        pending_bool(registry::start(&a, lpOverlapped, Target::None, |h, ctx| {
            h.disconnect(reuse, ctx)
        }))
    })
}

/// TransmitFile: sends the head buffer, `nNumberOfBytesToWrite` bytes of `hFile` (0: to the end)
/// from the OVERLAPPED's offset, and the tail buffer, as one operation (sendfile, no copy).
/// `TF_DISCONNECT` / `TF_REUSE_SOCKET` are refused with `WSAEOPNOTSUPP` (use DisconnectEx).
///
/// # Safety
/// `lpTransmitBuffers` NULL or valid (its buffers are copied at submit); the OVERLAPPED valid
/// until the packet is dequeued.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TransmitFile(
    hSocket: SOCKET,
    hFile: HANDLE,
    nNumberOfBytesToWrite: DWORD,
    nNumberOfBytesPerSend: DWORD,
    lpOverlapped: *mut OVERLAPPED,
    lpTransmitBuffers: *mut TRANSMIT_FILE_BUFFERS,
    dwReserved: DWORD,
) -> BOOL {
    let _ = nNumberOfBytesPerSend;
    guard(FALSE, || {
        if dwReserved & (TF_DISCONNECT | TF_REUSE_SOCKET) != 0 {
            return bool_fail(WSAEOPNOTSUPP);
        }
        if lpOverlapped.is_null() {
            return bool_fail(WSAEOPNOTSUPP);
        }
        // SAFETY: `lpTransmitBuffers` is NULL or valid for a read (the exported call's contract);
        // `get` skips NULL.
        let tfb = unsafe { mem::get(lpTransmitBuffers) };
        let (head, tail) = match tfb {
            Some(b) => (
                // SAFETY: the head buffer is valid for its length (caller's contract).
                unsafe { mem::copy_in(b.Head.cast(), b.HeadLength as usize) },
                // SAFETY: the tail buffer is valid for its length (caller's contract).
                unsafe { mem::copy_in(b.Tail.cast(), b.TailLength as usize) },
            ),
            None => (Vec::new(), Vec::new()),
        };
        let a = match sock(hSocket) {
            Ok(a) => a,
            Err(e) => return bool_fail(e),
        };
        if hFile.is_null() {
            let mut data = head;
            data.extend_from_slice(&tail);
            return pending_bool(registry::start_sided(
                &a,
                lpOverlapped,
                Target::None,
                Side::Send,
                0,
                |h, ctx| h.send(data, ctx),
            ));
        }
        let Some(ffd) = registry::fd_of(hval(hFile)) else { return bool_fail(WSAEINVAL) };
        let file = match registry::dup_owned(ffd) {
            Ok(f) => Arc::new(File::from(f)),
            Err(c) => return bool_fail(c.wsa),
        };
        // SAFETY: non-NULL (checked), valid (caller's contract).
        let offset = unsafe { mem::ov_offset(lpOverlapped) };
        let len = (nNumberOfBytesToWrite != 0).then_some(u64::from(nNumberOfBytesToWrite));
        let range = TransmitRange { offset, len, head, tail };
        pending_bool(registry::start_sided(
            &a,
            lpOverlapped,
            Target::None,
            Side::Send,
            0,
            |h, ctx| h.transmit_file(file, range, ctx),
        ))
    })
}

type LpfnAcceptEx = unsafe extern "C" fn(
    SOCKET,
    SOCKET,
    *mut c_void,
    DWORD,
    DWORD,
    DWORD,
    *mut DWORD,
    *mut OVERLAPPED,
) -> BOOL;
type LpfnGetAcceptExSockaddrs = unsafe extern "C" fn(
    *mut c_void,
    DWORD,
    DWORD,
    DWORD,
    *mut *mut c_void,
    *mut c_int,
    *mut *mut c_void,
    *mut c_int,
);
type LpfnConnectEx = unsafe extern "C" fn(
    SOCKET,
    *const c_void,
    c_int,
    *mut c_void,
    DWORD,
    *mut DWORD,
    *mut OVERLAPPED,
) -> BOOL;
type LpfnDisconnectEx = unsafe extern "C" fn(SOCKET, *mut OVERLAPPED, DWORD, DWORD) -> BOOL;
type LpfnTransmitFile = unsafe extern "C" fn(
    SOCKET,
    HANDLE,
    DWORD,
    DWORD,
    *mut OVERLAPPED,
    *mut TRANSMIT_FILE_BUFFERS,
    DWORD,
) -> BOOL;

/// WSAIoctl: `SIO_GET_EXTENSION_FUNCTION_POINTER`, for `WSAID_ACCEPTEX`,
/// `WSAID_GETACCEPTEXSOCKADDRS`, `WSAID_CONNECTEX`, `WSAID_DISCONNECTEX` and
/// `WSAID_TRANSMITFILE`; `SIO_KEEPALIVE_VALS` (`mstcpip.h`'s `struct tcp_keepalive`: on/off,
/// idle and interval in milliseconds, as `SO_KEEPALIVE`, `TCP_KEEPIDLE` and `TCP_KEEPINTVL` in
/// whole seconds, at least 1); `SIO_LOOPBACK_FAST_PATH` (accepted, nothing to do). Always
/// synchronous (an OVERLAPPED is not used). Anything else gives `WSAEOPNOTSUPP` (unknown code)
/// or `WSAEINVAL` (unknown GUID).
///
/// # Safety
/// The in and out buffers are valid for their stated sizes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAIoctl(
    s: SOCKET,
    dwIoControlCode: DWORD,
    lpvInBuffer: *mut c_void,
    cbInBuffer: DWORD,
    lpvOutBuffer: *mut c_void,
    cbOutBuffer: DWORD,
    lpcbBytesReturned: *mut DWORD,
    lpOverlapped: *mut OVERLAPPED,
    lpCompletionRoutine: *mut c_void,
) -> c_int {
    let _ = (lpOverlapped, lpCompletionRoutine);
    guard(SOCKET_ERROR, || {
        if registry::fd_of(s).is_none() {
            return wsa_fail(WSAENOTSOCK);
        }
        if dwIoControlCode == SIO_KEEPALIVE_VALS {
            if lpvInBuffer.is_null() || (cbInBuffer as usize) < 3 * size_of::<u32>() {
                return wsa_fail(WSAEFAULT);
            }
            // SAFETY: at least 12 readable bytes (checked size, caller's contract), maybe
            // unaligned: `struct tcp_keepalive { ULONG onoff, keepalivetime, keepaliveinterval }`.
            let v: [u32; 3] = unsafe { lpvInBuffer.cast::<[u32; 3]>().read_unaligned() };
            let secs = |ms: u32| c_int::try_from(ms.div_ceil(1000).max(1)).unwrap_or(c_int::MAX);
            let fd = s as c_int;
            let set = |level: c_int, opt: c_int, val: c_int| {
                // SAFETY: setsockopt(2) reads one `c_int` we own.
                let r = unsafe {
                    libc::setsockopt(
                        fd,
                        level,
                        opt,
                        (&raw const val).cast(),
                        size_of::<c_int>() as libc::socklen_t,
                    )
                };
                r == 0
            };
            let ok = set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, c_int::from(v[0] != 0))
                && (v[0] == 0
                    || (set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(v[1]))
                        && set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(v[2]))));
            if !ok {
                return wsa_fail(last_os().wsa);
            }
            // SAFETY: `lpcbBytesReturned` is NULL or valid for a write (out-parameter contract).
            unsafe { mem::put(lpcbBytesReturned, 0) };
            return 0;
        }
        if dwIoControlCode == SIO_LOOPBACK_FAST_PATH {
            // SAFETY: as above.
            unsafe { mem::put(lpcbBytesReturned, 0) };
            return 0;
        }
        if dwIoControlCode != SIO_GET_EXTENSION_FUNCTION_POINTER {
            return wsa_fail(WSAEOPNOTSUPP);
        }
        if lpvInBuffer.is_null()
            || lpvOutBuffer.is_null()
            || (cbInBuffer as usize) < size_of::<GUID>()
            || (cbOutBuffer as usize) < size_of::<usize>()
        {
            return wsa_fail(WSAEFAULT);
        }
        // SAFETY: at least 16 readable bytes (checked size, caller's contract); GUID has no
        // invalid bit patterns; read unaligned since the caller's buffer may be a byte array.
        let g = unsafe { lpvInBuffer.cast::<GUID>().read_unaligned() };
        let f: usize = if g == WSAID_ACCEPTEX {
            AcceptEx as LpfnAcceptEx as usize
        } else if g == WSAID_GETACCEPTEXSOCKADDRS {
            GetAcceptExSockaddrs as LpfnGetAcceptExSockaddrs as usize
        } else if g == WSAID_CONNECTEX {
            ConnectEx as LpfnConnectEx as usize
        } else if g == WSAID_DISCONNECTEX {
            DisconnectEx as LpfnDisconnectEx as usize
        } else if g == WSAID_TRANSMITFILE {
            TransmitFile as LpfnTransmitFile as usize
        } else {
            return wsa_fail(WSAEINVAL);
        };
        // SAFETY: at least 8 writable bytes (checked size, caller's contract), maybe unaligned.
        unsafe { lpvOutBuffer.cast::<usize>().write_unaligned(f) };
        // SAFETY: `lpcbBytesReturned` is NULL or valid for a write (the exported call's
        // out-parameter contract); `put` skips NULL.
        unsafe { mem::put(lpcbBytesReturned, size_of::<usize>() as DWORD) };
        0
    })
}

/// `SIO_KEEPALIVE_VALS` (`mstcpip.h`).
const SIO_KEEPALIVE_VALS: DWORD = 0x9800_0004;
/// `SIO_LOOPBACK_FAST_PATH` (`mstcpip.h`).
const SIO_LOOPBACK_FAST_PATH: DWORD = 0x9800_0010;

/// `SO_PORT_SCALABILITY`.
const SO_PORT_SCALABILITY: c_int = 0x3006;

/// `setsockopt` as Windows code calls it (the header maps `setsockopt` here):
/// `SO_UPDATE_ACCEPT_CONTEXT`, `SO_UPDATE_CONNECT_CONTEXT`, `SO_PORT_SCALABILITY` and
/// `SO_EXCLUSIVEADDRUSE` are accepted and do nothing (a
/// Linux accepted or connected socket already has its full state); everything else goes to
/// `setsockopt(2)`, with a failure also reported through WSAGetLastError.
///
/// # Safety
/// As `setsockopt(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn iocp_setsockopt(
    s: SOCKET,
    level: c_int,
    optname: c_int,
    optval: *const c_void,
    optlen: libc::socklen_t,
) -> c_int {
    guard(SOCKET_ERROR, || {
        let Some(fd) = registry::fd_of(s) else { return wsa_fail(WSAENOTSOCK) };
        // SO_PORT_SCALABILITY and SO_EXCLUSIVEADDRUSE (~SO_REUSEADDR) have no Linux knob:
        // accepted, no-ops (a Linux port is exclusive unless SO_REUSEADDR/SO_REUSEPORT).
        if level == libc::SOL_SOCKET
            && (optname == SO_UPDATE_ACCEPT_CONTEXT
                || optname == SO_UPDATE_CONNECT_CONTEXT
                || optname == SO_PORT_SCALABILITY
                || optname == !libc::SO_REUSEADDR)
        {
            return 0;
        }
        // SAFETY: forwarded as is; the caller's contract is setsockopt(2)'s.
        let r = unsafe { libc::setsockopt(fd, level, optname, optval, optlen) };
        if r < 0 { wsa_fail(last_os().wsa) } else { 0 }
    })
}
