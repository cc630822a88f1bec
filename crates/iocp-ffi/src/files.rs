//! Files: CreateFileA/W (with FILE_FLAG_OVERLAPPED), ReadFile and WriteFile at OVERLAPPED
//! offsets. A file HANDLE is the Linux fd. On an associated handle ReadFile/WriteFile are
//! overlapped (pending, one packet; a read at or past the end completes with
//! `ERROR_HANDLE_EOF`); on a handle not associated with a port they run synchronously
//! (`pread`/`pwrite` at the OVERLAPPED's offset, or `read`/`write` without one).

#![allow(non_snake_case)] // the Win32 names, as the header declares them

use std::ffi::{CString, c_char, c_void};

use crate::errors::*;
use crate::mem;
use crate::registry::{self, Assoc, Side, Target};
use crate::types::*;
use crate::{guard, set_last_error};
use std::sync::Arc;

const INVALID_HANDLE_VALUE: HANDLE = std::ptr::without_provenance_mut(usize::MAX);

fn fail(code: DWORD) -> BOOL {
    set_last_error(code);
    FALSE
}

fn create_file(path: Option<CString>, access: DWORD, disposition: DWORD, flags: DWORD) -> HANDLE {
    let Some(path) = path else {
        set_last_error(ERROR_INVALID_PARAMETER);
        return INVALID_HANDLE_VALUE;
    };
    let mut oflags = match (access & GENERIC_READ != 0, access & GENERIC_WRITE != 0) {
        (true, true) => libc::O_RDWR,
        (false, true) => libc::O_WRONLY,
        _ => libc::O_RDONLY,
    };
    oflags |= match disposition {
        CREATE_NEW => libc::O_CREAT | libc::O_EXCL,
        CREATE_ALWAYS => libc::O_CREAT | libc::O_TRUNC,
        OPEN_EXISTING => 0,
        OPEN_ALWAYS => libc::O_CREAT,
        TRUNCATE_EXISTING => libc::O_TRUNC,
        _ => {
            set_last_error(ERROR_INVALID_PARAMETER);
            return INVALID_HANDLE_VALUE;
        }
    };
    // SAFETY: open(2) with a NUL-terminated path we own.
    let fd = unsafe { libc::open(path.as_ptr(), oflags | libc::O_CLOEXEC, 0o666 as libc::c_uint) };
    if fd < 0 {
        set_last_error(last_os().win32);
        return INVALID_HANDLE_VALUE;
    }
    registry::created_files().lock().insert(fd, flags & FILE_FLAG_OVERLAPPED != 0);
    handle_from(fd as usize)
}

/// CreateFileA: opens or creates a file (`GENERIC_READ`/`GENERIC_WRITE`, the five
/// dispositions); `FILE_FLAG_OVERLAPPED` makes it associable with a port. Share modes,
/// security attributes, attributes and the template are ignored.
///
/// # Safety
/// `lpFileName` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateFileA(
    lpFileName: *const c_char,
    dwDesiredAccess: DWORD,
    dwShareMode: DWORD,
    lpSecurityAttributes: *mut c_void,
    dwCreationDisposition: DWORD,
    dwFlagsAndAttributes: DWORD,
    hTemplateFile: HANDLE,
) -> HANDLE {
    let _ = (dwShareMode, lpSecurityAttributes, hTemplateFile);
    guard(INVALID_HANDLE_VALUE, || {
        let path = (!lpFileName.is_null()).then(|| {
            // SAFETY: non-NULL, NUL-terminated (caller's contract).
            unsafe { std::ffi::CStr::from_ptr(lpFileName) }.to_owned()
        });
        create_file(path, dwDesiredAccess, dwCreationDisposition, dwFlagsAndAttributes)
    })
}

/// CreateFileW: as CreateFileA, with a UTF-16 path (`WCHAR` is 16 bits, as on Windows: write
/// literals as `u"..."`, not `L"..."`).
///
/// # Safety
/// `lpFileName` is NULL or a NUL-terminated UTF-16 string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateFileW(
    lpFileName: *const u16,
    dwDesiredAccess: DWORD,
    dwShareMode: DWORD,
    lpSecurityAttributes: *mut c_void,
    dwCreationDisposition: DWORD,
    dwFlagsAndAttributes: DWORD,
    hTemplateFile: HANDLE,
) -> HANDLE {
    let _ = (dwShareMode, lpSecurityAttributes, hTemplateFile);
    guard(INVALID_HANDLE_VALUE, || {
        let mut units = Vec::new();
        if !lpFileName.is_null() {
            for i in 0..32768 {
                // SAFETY: the string is NUL-terminated (caller's contract); we stop at the NUL.
                match unsafe { mem::get(lpFileName.wrapping_add(i)) } {
                    Some(0) | None => break,
                    Some(u) => units.push(u),
                }
            }
        }
        let path = (!lpFileName.is_null())
            .then(|| String::from_utf16(&units).ok())
            .flatten()
            .and_then(|s| CString::new(s).ok());
        create_file(path, dwDesiredAccess, dwCreationDisposition, dwFlagsAndAttributes)
    })
}

/// Synchronous read or write on a handle that is not associated.
///
/// # Safety
/// `buf` valid for `n` bytes; `ov` NULL or valid.
unsafe fn sync_rw(
    fd: i32,
    buf: usize,
    n: usize,
    ov: *mut OVERLAPPED,
    write: bool,
    done: *mut DWORD,
) -> BOOL {
    let p = buf as *mut c_void;
    let r = if ov.is_null() {
        if write {
            // SAFETY: `buf` readable for `n` bytes (caller's contract).
            unsafe { libc::write(fd, p, n) }
        } else {
            // SAFETY: `buf` writable for `n` bytes (caller's contract).
            unsafe { libc::read(fd, p, n) }
        }
    } else {
        // SAFETY: non-NULL, valid (caller's contract).
        let off = unsafe { mem::ov_offset(ov) };
        if write && off == u64::MAX {
            // SAFETY: lseek(2) on an open fd.
            unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
            // SAFETY: `buf` readable for `n` bytes (caller's contract).
            unsafe { libc::write(fd, p, n) }
        } else if write {
            // SAFETY: `buf` is readable for `n` bytes (this function's contract); pwrite(2) does
            // not keep it.
            unsafe { libc::pwrite(fd, p, n, off as libc::off_t) }
        } else {
            // SAFETY: `buf` writable for `n` bytes (caller's contract).
            unsafe { libc::pread(fd, p, n, off as libc::off_t) }
        }
    };
    if r < 0 {
        return fail(last_os().win32);
    }
    if !ov.is_null() {
        // SAFETY: non-NULL, valid (caller's contract).
        unsafe { mem::ov_done(ov, 0, r as usize) };
    }
    // SAFETY: `done` is NULL or valid for a write (the exported call's out-parameter contract);
    // `put` skips NULL.
    unsafe { mem::put(done, r as DWORD) };
    TRUE
}

/// The shared start of ReadFile and WriteFile. Checks the handle and a NULL buffer with a
/// length; on a handle that is not associated makes the synchronous call. `Ok`: an overlapped
/// call goes on, on this association at the OVERLAPPED's offset. `Err`: the call's result
/// (the synchronous call's, or FALSE with the Win32 error).
///
/// # Safety
/// `buf` is readable (`write`) or writable for `n` bytes, `ov` is NULL or a valid OVERLAPPED,
/// and `done` is NULL or writable: the ReadFile / WriteFile contract.
unsafe fn route(
    h: HANDLE,
    buf: *const c_void,
    n: usize,
    ov: *mut OVERLAPPED,
    write: bool,
    done: *mut DWORD,
) -> Result<(Arc<Assoc>, u64), BOOL> {
    let fd = registry::fd_of(hval(h)).ok_or_else(|| fail(ERROR_INVALID_HANDLE))?;
    if buf.is_null() && n > 0 {
        return Err(fail(ERROR_NOACCESS));
    }
    let Some(a) = registry::assoc(fd) else {
        // SAFETY: the buffer, `ov` and `done` as this function's contract says.
        return Err(unsafe { sync_rw(fd, buf as usize, n, ov, write, done) });
    };
    if ov.is_null() {
        return Err(fail(ERROR_INVALID_PARAMETER));
    }
    // SAFETY: non-NULL (checked) and valid (this function's contract).
    Ok((a, unsafe { mem::ov_offset(ov) }))
}

/// The end of an overlapped start: FALSE with `ERROR_IO_PENDING`, or with the failure.
fn pending(r: Result<(), Codes>) -> BOOL {
    match r {
        Ok(()) => fail(ERROR_IO_PENDING),
        Err(c) => fail(c.win32),
    }
}

/// ReadFile: on an associated handle, an overlapped read at the OVERLAPPED's offset (sockets:
/// a receive) that returns FALSE with `ERROR_IO_PENDING`; otherwise synchronous.
///
/// # Safety
/// Win32 contract: `lpBuffer` valid for `nNumberOfBytesToRead` bytes and the OVERLAPPED valid
/// until the packet is dequeued.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ReadFile(
    hFile: HANDLE,
    lpBuffer: *mut c_void,
    nNumberOfBytesToRead: DWORD,
    lpNumberOfBytesRead: *mut DWORD,
    lpOverlapped: *mut OVERLAPPED,
) -> BOOL {
    guard(FALSE, || {
        let n = nNumberOfBytesToRead as usize;
        let out = lpNumberOfBytesRead;
        // SAFETY: `lpBuffer` writable for `n` bytes, `lpOverlapped` NULL or valid and
        // `lpNumberOfBytesRead` NULL or writable (ReadFile's contract).
        let (a, offset) = match unsafe { route(hFile, lpBuffer, n, lpOverlapped, false, out) } {
            Ok(overlapped) => overlapped,
            Err(finished) => return finished,
        };
        let target = Target::Scatter(vec![(lpBuffer as usize, n)]);
        let is_socket = a.is_socket;
        let side = if is_socket && n > 0 { Side::Recv } else { Side::None };
        pending(registry::start_sided(&a, lpOverlapped, target, side, 0, |h, ctx| {
            if is_socket {
                if n == 0 { h.recv_ready(ctx) } else { h.recv(Vec::with_capacity(n), ctx) }
            } else {
                h.read_at(Vec::with_capacity(n.max(1)), offset, ctx)
            }
        }))
    })
}

/// WriteFile: on an associated handle, an overlapped write at the OVERLAPPED's offset
/// (`Offset = OffsetHigh = 0xFFFFFFFF` appends; sockets: a send), bytes copied at submit;
/// otherwise synchronous.
///
/// # Safety
/// As ReadFile (the buffer need only be valid during the call).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WriteFile(
    hFile: HANDLE,
    lpBuffer: *const c_void,
    nNumberOfBytesToWrite: DWORD,
    lpNumberOfBytesWritten: *mut DWORD,
    lpOverlapped: *mut OVERLAPPED,
) -> BOOL {
    guard(FALSE, || {
        let n = nNumberOfBytesToWrite as usize;
        let out = lpNumberOfBytesWritten;
        // SAFETY: `lpBuffer` readable for `n` bytes, `lpOverlapped` NULL or valid and
        // `lpNumberOfBytesWritten` NULL or writable (WriteFile's contract).
        let (a, offset) = match unsafe { route(hFile, lpBuffer, n, lpOverlapped, true, out) } {
            Ok(overlapped) => overlapped,
            Err(finished) => return finished,
        };
        // SAFETY: `lpBuffer` is readable for `n` bytes during the call (WriteFile's contract).
        let data = unsafe { mem::copy_in(lpBuffer.cast(), n) };
        let is_socket = a.is_socket;
        let side = if is_socket { Side::Send } else { Side::None };
        pending(registry::start_sided(&a, lpOverlapped, Target::None, side, 0, |h, ctx| {
            if is_socket { h.send(data, ctx) } else { h.write_at(data, offset, ctx) }
        }))
    })
}
