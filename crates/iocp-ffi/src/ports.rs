//! The port calls: CreateIoCompletionPort, GetQueuedCompletionStatus(Ex),
//! PostQueuedCompletionStatus, CloseHandle, CancelIo(Ex), GetOverlappedResult,
//! SetFileCompletionNotificationModes, GetLastError / SetLastError.

#![allow(non_snake_case)] // the Win32 names, as the header declares them

use std::ffi::c_char;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use iocp_core::{BackendKind, GetError};

use crate::errors::*;
use crate::mem;
use crate::registry::{self, Ctx, finished};
use crate::types::*;
use crate::{guard, set_last_error};

fn fail<T>(code: DWORD, v: T) -> T {
    set_last_error(code);
    v
}

fn timeout(ms: DWORD) -> Option<Duration> {
    (ms != INFINITE).then(|| Duration::from_millis(ms.into()))
}

const NULL: HANDLE = std::ptr::null_mut();

/// CreateIoCompletionPort: creates a port (`FileHandle == INVALID_HANDLE_VALUE`), or
/// associates a socket or overlapped file with a new or existing port and `CompletionKey`.
/// Returns NULL with the last error on failure.
///
/// # Safety
/// No pointer is dereferenced; any values are accepted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateIoCompletionPort(
    FileHandle: HANDLE,
    ExistingCompletionPort: HANDLE,
    CompletionKey: ULONG_PTR,
    NumberOfConcurrentThreads: DWORD,
) -> HANDLE {
    guard(NULL, || {
        let existing = !ExistingCompletionPort.is_null();
        if hval(FileHandle) == usize::MAX {
            if existing {
                return fail(ERROR_INVALID_PARAMETER, NULL);
            }
            return match registry::create_port(NumberOfConcurrentThreads) {
                Ok((h, _)) => h,
                Err(c) => fail(c.win32, NULL),
            };
        }
        let Some(fd) = registry::fd_of(hval(FileHandle)) else {
            return fail(ERROR_INVALID_HANDLE, NULL);
        };
        if existing {
            let Some(port) = registry::port(ExistingCompletionPort) else {
                return fail(ERROR_INVALID_HANDLE, NULL);
            };
            return match registry::associate(fd, &port, CompletionKey) {
                Ok(()) => ExistingCompletionPort,
                Err(c) => fail(c.win32, NULL),
            };
        }
        match registry::create_port(NumberOfConcurrentThreads) {
            Ok((h, port)) => match registry::associate(fd, &port, CompletionKey) {
                Ok(()) => h,
                Err(c) => {
                    registry::close_port(h);
                    fail(c.win32, NULL)
                }
            },
            Err(c) => fail(c.win32, NULL),
        }
    })
}

/// GetQueuedCompletionStatus: dequeues one packet. TRUE for a successful I/O or a posted
/// packet; FALSE with a non-NULL `*lpOverlapped` and the Win32 error for a failed I/O; FALSE
/// with `*lpOverlapped == NULL` for `WAIT_TIMEOUT`, `ERROR_ABANDONED_WAIT_0` (port closed while
/// waiting) or `ERROR_INVALID_HANDLE`.
///
/// # Safety
/// The out-pointers are NULL or valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetQueuedCompletionStatus(
    CompletionPort: HANDLE,
    lpNumberOfBytesTransferred: *mut DWORD,
    lpCompletionKey: *mut ULONG_PTR,
    lpOverlapped: *mut *mut OVERLAPPED,
    dwMilliseconds: DWORD,
) -> BOOL {
    guard(FALSE, || {
        if lpOverlapped.is_null() {
            return fail(ERROR_INVALID_PARAMETER, FALSE);
        }
        // SAFETY: non-NULL and valid (caller's contract).
        unsafe { mem::put(lpOverlapped, std::ptr::null_mut()) };
        let Some(port) = registry::port(CompletionPort) else {
            return fail(ERROR_INVALID_HANDLE, FALSE);
        };
        let inside = port.enter();
        let deadline = timeout(dwMilliseconds).and_then(|t| Instant::now().checked_add(t));
        let got = loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match port.port.get(left) {
                Ok(c) => {
                    let d = registry::finish(c);
                    // An operation whose event has its low bit set reports no packet (the hook
                    // normally drops it before it is queued).
                    if !d.suppressed {
                        break Ok(d);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        drop(inside);
        match got {
            Ok(d) => {
                drop(port);
                // SAFETY: caller's contract for the three out-pointers.
                unsafe { mem::put(lpNumberOfBytesTransferred, d.bytes as DWORD) };
                // SAFETY: `lpCompletionKey` is NULL or valid for a write (the exported call's
                // out-parameter contract); `put` skips NULL.
                unsafe { mem::put(lpCompletionKey, d.key) };
                // SAFETY: `lpOverlapped` is NULL or valid for a write (the exported call's
                // out-parameter contract); `put` skips NULL.
                unsafe { mem::put(lpOverlapped, d.ov as *mut OVERLAPPED) };
                if d.error != 0 { fail(d.error, FALSE) } else { TRUE }
            }
            Err(GetError::TimedOut) => fail(WAIT_TIMEOUT, FALSE),
            Err(_) => fail(ERROR_ABANDONED_WAIT_0, FALSE),
        }
    })
}

/// GetQueuedCompletionStatusEx: dequeues up to `ulCount` packets into `lpCompletionPortEntries`
/// (in queue order). TRUE when at least one was removed (entries may still be failed I/Os:
/// check each `Internal`, an NTSTATUS). `fAlertable` is accepted and ignored (no APCs here).
///
/// # Safety
/// `lpCompletionPortEntries` is valid for `ulCount` entries; `ulNumEntriesRemoved` is valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetQueuedCompletionStatusEx(
    CompletionPort: HANDLE,
    lpCompletionPortEntries: *mut OVERLAPPED_ENTRY,
    ulCount: ULONG,
    ulNumEntriesRemoved: *mut ULONG,
    dwMilliseconds: DWORD,
    fAlertable: BOOL,
) -> BOOL {
    let _ = fAlertable;
    guard(FALSE, || {
        if lpCompletionPortEntries.is_null() || ulNumEntriesRemoved.is_null() || ulCount == 0 {
            return fail(ERROR_INVALID_PARAMETER, FALSE);
        }
        let Some(port) = registry::port(CompletionPort) else {
            return fail(ERROR_INVALID_HANDLE, FALSE);
        };
        let inside = port.enter();
        let deadline = timeout(dwMilliseconds).and_then(|t| Instant::now().checked_add(t));
        let got = loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let mut got = Vec::new();
            match port.port.get_many(&mut got, ulCount as usize, left) {
                Ok(_) => {
                    let ds: Vec<_> = got
                        .into_iter()
                        .map(registry::finish)
                        .filter(|d| !d.suppressed) // see GetQueuedCompletionStatus
                        .collect();
                    if !ds.is_empty() {
                        break Ok(ds);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        drop(inside);
        match got {
            Ok(ds) => {
                drop(port);
                let n = ds.len();
                for (i, d) in ds.into_iter().enumerate() {
                    let e = OVERLAPPED_ENTRY {
                        lpCompletionKey: d.key,
                        lpOverlapped: d.ov as *mut OVERLAPPED,
                        Internal: d.nt as usize,
                        dwNumberOfBytesTransferred: d.bytes as DWORD,
                    };
                    // SAFETY: i < n <= ulCount entries are writable (caller's contract).
                    unsafe { mem::put(lpCompletionPortEntries.wrapping_add(i), e) };
                }
                // SAFETY: `ulNumEntriesRemoved` is NULL or valid for a write (the exported call's
                // out-parameter contract); `put` skips NULL.
                unsafe { mem::put(ulNumEntriesRemoved, n as ULONG) };
                TRUE
            }
            Err(GetError::TimedOut) => fail(WAIT_TIMEOUT, FALSE),
            Err(_) => fail(ERROR_ABANDONED_WAIT_0, FALSE),
        }
    })
}

/// PostQueuedCompletionStatus: queues a packet carrying the three values unchanged
/// (`lpOverlapped` is never dereferenced).
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn PostQueuedCompletionStatus(
    CompletionPort: HANDLE,
    dwNumberOfBytesTransferred: DWORD,
    dwCompletionKey: ULONG_PTR,
    lpOverlapped: *mut OVERLAPPED,
) -> BOOL {
    guard(FALSE, || {
        let Some(port) = registry::port(CompletionPort) else {
            return fail(ERROR_INVALID_HANDLE, FALSE);
        };
        let ctx = Ctx::posted(lpOverlapped as usize);
        let key = iocp_core::CompletionKey(dwCompletionKey as u64);
        match port.port.post(dwNumberOfBytesTransferred as usize, key, ctx) {
            Ok(()) => TRUE,
            Err(_) => fail(ERROR_INVALID_HANDLE, FALSE),
        }
    })
}

/// CloseHandle: closes a port (waiters get `ERROR_ABANDONED_WAIT_0`), or a file or socket
/// (as closesocket: pending operations complete once with `ERROR_OPERATION_ABORTED`).
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CloseHandle(hObject: HANDLE) -> BOOL {
    guard(FALSE, || {
        if crate::win32::is_object_value(hObject) {
            return if crate::win32::close_object(hObject) {
                TRUE
            } else {
                fail(ERROR_INVALID_HANDLE, FALSE)
            };
        }
        if registry::is_port_value(hObject) {
            return if registry::close_port(hObject) {
                TRUE
            } else {
                fail(ERROR_INVALID_HANDLE, FALSE)
            };
        }
        let Some(fd) = registry::fd_of(hval(hObject)) else {
            return fail(ERROR_INVALID_HANDLE, FALSE);
        };
        match registry::close_socket_or_file(fd) {
            Ok(()) => TRUE,
            Err(c) => fail(c.win32, FALSE),
        }
    })
}

/// Cancels the operations `pick` selects among `h`'s pending ones; returns how many the core
/// accepted, or `None` when `h` is not an associated handle.
fn cancel_where(h: HANDLE, pick: impl Fn(usize, std::thread::ThreadId) -> bool) -> Option<usize> {
    let a = registry::assoc(registry::fd_of(hval(h))?)?;
    let ops: Vec<_> = a
        .pending
        .lock()
        .iter()
        .filter(|(ov, (_, t))| pick(**ov, *t))
        .map(|(_, (op, _))| *op)
        .collect();
    Some(ops.into_iter().filter(|op| a.handle.cancel(*op).is_ok()).count())
}

/// CancelIo: cancels the pending operations the calling thread started on `hFile`; each
/// completes once with `ERROR_OPERATION_ABORTED`.
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CancelIo(hFile: HANDLE) -> BOOL {
    guard(FALSE, || {
        let me = std::thread::current().id();
        match cancel_where(hFile, |_, t| t == me) {
            Some(_) => TRUE,
            None if registry::fd_of(hval(hFile)).is_some() => TRUE,
            None => fail(ERROR_INVALID_HANDLE, FALSE),
        }
    })
}

/// CancelIoEx: cancels the operation started with `lpOverlapped` on `hFile`, or all of them
/// (NULL), from any thread. FALSE with `ERROR_NOT_FOUND` when nothing matched.
///
/// # Safety
/// `lpOverlapped` is compared, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CancelIoEx(hFile: HANDLE, lpOverlapped: *mut OVERLAPPED) -> BOOL {
    guard(FALSE, || {
        let want = lpOverlapped as usize;
        match cancel_where(hFile, |ov, _| want == 0 || ov == want) {
            Some(n) if n > 0 => TRUE,
            Some(_) => fail(ERROR_NOT_FOUND, FALSE),
            None if registry::fd_of(hval(hFile)).is_some() => fail(ERROR_NOT_FOUND, FALSE),
            None => fail(ERROR_INVALID_HANDLE, FALSE),
        }
    })
}

/// GetOverlappedResult: the result of an operation once it has completed (dequeued or not);
/// FALSE with `ERROR_IO_INCOMPLETE` before (`bWait == FALSE`), or waits for it, polling the
/// handle's port itself while no other thread does.
///
/// # Safety
/// `lpOverlapped` is NULL or a valid OVERLAPPED; `lpNumberOfBytesTransferred` NULL or valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetOverlappedResult(
    hFile: HANDLE,
    lpOverlapped: *mut OVERLAPPED,
    lpNumberOfBytesTransferred: *mut DWORD,
    bWait: BOOL,
) -> BOOL {
    let _ = hFile;
    guard(FALSE, || {
        if lpOverlapped.is_null() {
            return fail(ERROR_INVALID_PARAMETER, FALSE);
        }
        // SAFETY: non-NULL, valid (caller's contract).
        let mut st = unsafe { mem::ov_read(lpOverlapped) };
        if st.0 == STATUS_PENDING && bWait != FALSE {
            let f = finished();
            // A visible wait: the thread does not hold its port's concurrency slot meanwhile.
            let _blocked = iocp_core::blocking();
            // The operation completes when some thread sees it leave the kernel: this one polls
            // the port itself while nobody else does (a single-threaded program needs no
            // GetQueuedCompletionStatus), and otherwise waits for the poller's hook to finish
            // it and wake us.
            let port =
                registry::fd_of(hval(hFile)).and_then(registry::assoc).map(|a| a.port.clone());
            f.waiters.fetch_add(1, Ordering::AcqRel);
            loop {
                // SAFETY: `lpOverlapped` is non-NULL (checked) and valid until its operation's
                // packet is dequeued (GetOverlappedResult's contract).
                st = unsafe { mem::ov_read(lpOverlapped) };
                if st.0 != STATUS_PENDING {
                    break;
                }
                // Another thread polls (reap returns at once), or the handle has no port: wait
                // up to 50 ms for a completion. After a poll of our own that found nothing,
                // wait only briefly (and let other threads run) before polling again.
                let mut pause = Duration::from_millis(50);
                if let Some(p) = &port {
                    let t0 = Instant::now();
                    if p.port.reap(Some(Duration::from_millis(50))) > 0 {
                        continue;
                    }
                    if t0.elapsed() >= Duration::from_millis(1) {
                        pause = Duration::from_millis(1);
                    }
                }
                let mut g = f.lock.lock();
                // SAFETY: as above.
                st = unsafe { mem::ov_read(lpOverlapped) };
                if st.0 != STATUS_PENDING {
                    break;
                }
                f.cond.wait_until(&mut g, Instant::now() + pause);
            }
            f.waiters.fetch_sub(1, Ordering::AcqRel);
        }
        let (status, bytes) = st;
        if status == STATUS_PENDING {
            return fail(ERROR_IO_INCOMPLETE, FALSE);
        }
        // SAFETY: `lpNumberOfBytesTransferred` is NULL or valid for a write (the exported call's
        // out-parameter contract); `put` skips NULL.
        unsafe { mem::put(lpNumberOfBytesTransferred, bytes as DWORD) };
        let status = status as u32;
        if status == STATUS_SUCCESS { TRUE } else { fail(win32_from_nt(status), FALSE) }
    })
}

/// WSAGetOverlappedResult: [`GetOverlappedResult`] for a socket; `*lpdwFlags` is set to 0 (no
/// MSG_PARTIAL here).
///
/// # Safety
/// As [`GetOverlappedResult`]; `lpdwFlags` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAGetOverlappedResult(
    s: SOCKET,
    lpOverlapped: *mut OVERLAPPED,
    lpcbTransfer: *mut DWORD,
    fWait: BOOL,
    lpdwFlags: *mut DWORD,
) -> BOOL {
    // SAFETY: the caller's contract is GetOverlappedResult's; a SOCKET is a HANDLE value here.
    let r = unsafe { GetOverlappedResult(handle_from(s), lpOverlapped, lpcbTransfer, fWait) };
    if r != FALSE {
        // SAFETY: `lpdwFlags` is NULL or valid for a write (the exported call's contract).
        unsafe { mem::put(lpdwFlags, 0) };
    }
    r
}

/// SetFileCompletionNotificationModes: adds `FILE_SKIP_COMPLETION_PORT_ON_SUCCESS` (an
/// operation that succeeds in line queues no packet) and `FILE_SKIP_SET_EVENT_ON_HANDLE`
/// (accepted: file handles are not waitable here, and the OVERLAPPED's own event is still
/// set). Modes can be added, never removed.
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SetFileCompletionNotificationModes(FileHandle: HANDLE, Flags: u8) -> BOOL {
    guard(FALSE, || {
        let Some(fd) = registry::fd_of(hval(FileHandle)) else {
            return fail(ERROR_INVALID_HANDLE, FALSE);
        };
        if Flags & !(FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE | 4) != 0
        {
            return fail(ERROR_INVALID_PARAMETER, FALSE);
        }
        registry::add_modes(fd, Flags);
        TRUE
    })
}

/// GetLastError: the calling thread's last error.
#[unsafe(no_mangle)]
pub extern "C" fn GetLastError() -> DWORD {
    crate::last_error()
}

/// SetLastError: sets the calling thread's last error.
#[unsafe(no_mangle)]
pub extern "C" fn SetLastError(dwErrCode: DWORD) {
    set_last_error(dwErrCode);
}

/// Extension (not Win32): the backend a port runs on, `"io_uring"` or `"epoll"`, or NULL for
/// an invalid handle. The string is static.
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn iocp_port_backend(CompletionPort: HANDLE) -> *const c_char {
    guard(std::ptr::null(), || match registry::port(CompletionPort) {
        Some(p) => match p.port.backend().kind() {
            BackendKind::Uring => c"io_uring".as_ptr(),
            _ => c"epoll".as_ptr(),
        },
        None => fail(ERROR_INVALID_HANDLE, std::ptr::null()),
    })
}
