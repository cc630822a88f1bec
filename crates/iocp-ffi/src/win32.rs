//! The ordinary Win32 around IOCP code (issue 14 §1), for `include/win32/`: thread and event
//! objects in the one HANDLE table (CreateThread, CreateEvent, SetEvent/ResetEvent, the WSAEVENT
//! calls, WaitForSingleObject/WaitForMultipleObjects, GetExitCodeThread, CloseHandle through
//! ports.rs), GetCurrentThreadId, Sleep, SetConsoleCtrlHandler (SIGINT/SIGTERM delivered to the
//! handlers on a thread, as Windows does) and the errno → WSA error step the headers' BSD call
//! wrappers use.
//!
//! All thread and event state sits under one mutex with one condition variable: waits are
//! rare (start-up and shutdown paths), so simplicity wins over a wait queue per object.

#![allow(non_snake_case)] // the Win32 names, as the header declares them

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::errors::*;
use crate::types::*;
use crate::{guard, set_last_error};

/// Thread and event HANDLE values: above the fds, apart from the ports, multiples of 4.
const OBJ_BASE: usize = 0x0000_5045_0000_0000;
const OBJ_SPAN: usize = 1 << 40;

const WAIT_OBJECT_0: DWORD = 0;
const WAIT_FAILED: DWORD = 0xFFFF_FFFF;
const STILL_ACTIVE: DWORD = 259;
const MAXIMUM_WAIT_OBJECTS: DWORD = 64;
const CREATE_SUSPENDED: DWORD = 0x4;
const STACK_SIZE_PARAM_IS_A_RESERVATION: DWORD = 0x0001_0000;

enum Obj {
    /// A thread: its exit code once it has returned.
    Thread {
        exit: Option<DWORD>,
    },
    Event {
        manual: bool,
        set: bool,
    },
}

struct Objects {
    map: Mutex<HashMap<u64, Obj>>,
    changed: Condvar,
}

fn objects() -> &'static Objects {
    static O: OnceLock<Objects> = OnceLock::new();
    O.get_or_init(|| Objects { map: Mutex::new(HashMap::new()), changed: Condvar::new() })
}

fn new_object(o: Obj) -> (u64, HANDLE) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    objects().map.lock().insert(id, o);
    (id, handle_from(OBJ_BASE + ((id as usize) << 2)))
}

fn obj_id(h: HANDLE) -> Option<u64> {
    let v = hval(h);
    ((OBJ_BASE..OBJ_BASE + OBJ_SPAN).contains(&v) && v.is_multiple_of(4))
        .then(|| ((v - OBJ_BASE) >> 2) as u64)
}

/// True when `h` has the shape of a thread or event HANDLE (live or not).
pub(crate) fn is_object_value(h: HANDLE) -> bool {
    obj_id(h).is_some()
}

/// CloseHandle of a thread or event: forgets it (a thread keeps running). False if unknown.
pub(crate) fn close_object(h: HANDLE) -> bool {
    obj_id(h).is_some_and(|id| objects().map.lock().remove(&id).is_some())
}

fn fail<T>(code: DWORD, v: T) -> T {
    set_last_error(code);
    v
}

/// The thread's kernel id (what GetCurrentThreadId returns, and `lpThreadId`).
fn gettid() -> DWORD {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    (unsafe { libc::gettid() }) as DWORD
}

/// `LPTHREAD_START_ROUTINE`.
pub type ThreadStart = unsafe extern "C" fn(*mut c_void) -> DWORD;

/// CreateThread: runs `lpStartAddress(lpParameter)` on a new thread; the HANDLE is signalled
/// when it returns, with its return value as the exit code. `CREATE_SUSPENDED` is refused
/// (`ERROR_NOT_SUPPORTED`); security attributes are ignored; `dwStackSize` 0 is the default.
///
/// # Safety
/// `lpStartAddress` is a valid function that may be called on another thread with
/// `lpParameter`; `lpThreadId` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateThread(
    lpThreadAttributes: *mut c_void,
    dwStackSize: usize,
    lpStartAddress: Option<ThreadStart>,
    lpParameter: *mut c_void,
    dwCreationFlags: DWORD,
    lpThreadId: *mut DWORD,
) -> HANDLE {
    let _ = lpThreadAttributes;
    guard(std::ptr::null_mut(), || {
        let Some(start) = lpStartAddress else {
            return fail(ERROR_INVALID_PARAMETER, std::ptr::null_mut());
        };
        if dwCreationFlags & !STACK_SIZE_PARAM_IS_A_RESERVATION != 0 {
            let code = if dwCreationFlags & CREATE_SUSPENDED != 0 {
                ERROR_NOT_SUPPORTED
            } else {
                ERROR_INVALID_PARAMETER
            };
            return fail(code, std::ptr::null_mut());
        }
        let (id, h) = new_object(Obj::Thread { exit: None });
        let param = lpParameter as usize;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut b = std::thread::Builder::new();
        if dwStackSize > 0 {
            b = b.stack_size(dwStackSize.max(64 << 10));
        }
        let spawned = b.spawn(move || {
            let _ = tx.send(gettid());
            // SAFETY: the caller's thread function with its parameter (CreateThread's
            // contract: callable on another thread).
            let code = unsafe { start(param as *mut c_void) };
            let o = objects();
            if let Some(Obj::Thread { exit }) = o.map.lock().get_mut(&id) {
                *exit = Some(code);
            }
            o.changed.notify_all();
        });
        if let Err(e) = spawned {
            objects().map.lock().remove(&id);
            return fail(from_io(&e).win32, std::ptr::null_mut());
        }
        let tid = rx.recv().unwrap_or(0);
        // SAFETY: NULL or valid (caller's contract).
        unsafe { crate::mem::put(lpThreadId, tid) };
        h
    })
}

/// GetCurrentThreadId: the calling thread's kernel id.
#[unsafe(no_mangle)]
pub extern "C" fn GetCurrentThreadId() -> DWORD {
    gettid()
}

/// GetExitCodeThread: the thread's return value, or `STILL_ACTIVE` (259) while it runs.
///
/// # Safety
/// `lpExitCode` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetExitCodeThread(hThread: HANDLE, lpExitCode: *mut DWORD) -> BOOL {
    guard(FALSE, || {
        let code = match obj_id(hThread).and_then(|id| match objects().map.lock().get(&id) {
            Some(Obj::Thread { exit }) => Some(exit.unwrap_or(STILL_ACTIVE)),
            _ => None,
        }) {
            Some(c) => c,
            None => return fail(ERROR_INVALID_HANDLE, FALSE),
        };
        if lpExitCode.is_null() {
            return fail(ERROR_INVALID_PARAMETER, FALSE);
        }
        // SAFETY: non-NULL and valid (caller's contract).
        unsafe { crate::mem::put(lpExitCode, code) };
        TRUE
    })
}

/// Sleep: `dwMilliseconds` (0 yields the processor; `INFINITE` never returns).
#[unsafe(no_mangle)]
pub extern "C" fn Sleep(dwMilliseconds: DWORD) {
    match dwMilliseconds {
        0 => std::thread::yield_now(),
        INFINITE => loop {
            std::thread::park();
        },
        ms => std::thread::sleep(Duration::from_millis(ms.into())),
    }
}

fn create_event(manual: BOOL, initial: BOOL) -> HANDLE {
    new_object(Obj::Event { manual: manual != FALSE, set: initial != FALSE }).1
}

/// CreateEventA: an event object, manual- or auto-reset, initially set or not. Names and
/// security attributes are ignored (a named event is not shared between processes).
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateEventA(
    lpEventAttributes: *mut c_void,
    bManualReset: BOOL,
    bInitialState: BOOL,
    lpName: *const c_void,
) -> HANDLE {
    let _ = (lpEventAttributes, lpName);
    guard(std::ptr::null_mut(), || create_event(bManualReset, bInitialState))
}

/// CreateEventW: as CreateEventA.
///
/// # Safety
/// No pointer is dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn CreateEventW(
    lpEventAttributes: *mut c_void,
    bManualReset: BOOL,
    bInitialState: BOOL,
    lpName: *const c_void,
) -> HANDLE {
    let _ = (lpEventAttributes, lpName);
    guard(std::ptr::null_mut(), || create_event(bManualReset, bInitialState))
}

/// Sets (or clears) the event of an operation, its OVERLAPPED's `hEvent` with the low bit
/// cleared: when the operation starts (cleared), completes or is aborted (set). Leaves the last
/// error alone; a value that is not a live event is ignored, as Windows ignores a closed one.
pub(crate) fn op_event(h: usize, to: bool) {
    let Some(id) = obj_id(handle_from(h & !1)) else { return };
    let o = objects();
    let mut map = o.map.lock();
    if let Some(Obj::Event { set, .. }) = map.get_mut(&id) {
        *set = to;
        drop(map);
        if to {
            o.changed.notify_all();
        }
    }
}

fn set_event(h: HANDLE, to: bool) -> BOOL {
    guard(FALSE, || {
        let o = objects();
        let mut map = o.map.lock();
        match obj_id(h).and_then(|id| map.get_mut(&id)) {
            Some(Obj::Event { set, .. }) => {
                *set = to;
                drop(map);
                if to {
                    o.changed.notify_all();
                }
                TRUE
            }
            _ => fail(ERROR_INVALID_HANDLE, FALSE),
        }
    })
}

/// SetEvent: sets the event (wakes every waiter of a manual-reset event, one of an auto-reset).
#[unsafe(no_mangle)]
pub extern "C" fn SetEvent(hEvent: HANDLE) -> BOOL {
    set_event(hEvent, true)
}

/// ResetEvent: clears the event.
#[unsafe(no_mangle)]
pub extern "C" fn ResetEvent(hEvent: HANDLE) -> BOOL {
    set_event(hEvent, false)
}

/// WSACreateEvent: a manual-reset event, initially clear (`WSA_INVALID_EVENT` = NULL on
/// failure).
#[unsafe(no_mangle)]
pub extern "C" fn WSACreateEvent() -> HANDLE {
    guard(std::ptr::null_mut(), || create_event(TRUE, FALSE))
}

/// WSASetEvent.
#[unsafe(no_mangle)]
pub extern "C" fn WSASetEvent(hEvent: HANDLE) -> BOOL {
    set_event(hEvent, true)
}

/// WSAResetEvent.
#[unsafe(no_mangle)]
pub extern "C" fn WSAResetEvent(hEvent: HANDLE) -> BOOL {
    set_event(hEvent, false)
}

/// WSACloseEvent.
#[unsafe(no_mangle)]
pub extern "C" fn WSACloseEvent(hEvent: HANDLE) -> BOOL {
    guard(FALSE, || if close_object(hEvent) { TRUE } else { fail(ERROR_INVALID_HANDLE, FALSE) })
}

/// Whether object `id` is signalled; `None` if it is not a live thread or event.
fn signalled(map: &HashMap<u64, Obj>, id: u64) -> Option<bool> {
    match map.get(&id)? {
        Obj::Thread { exit } => Some(exit.is_some()),
        Obj::Event { set, .. } => Some(*set),
    }
}

/// A satisfied wait consumes an auto-reset event.
fn consume(map: &mut MutexGuard<'_, HashMap<u64, Obj>>, id: u64) {
    if let Some(Obj::Event { manual: false, set }) = map.get_mut(&id) {
        *set = false;
    }
}

fn wait_many(handles: &[HANDLE], all: bool, ms: DWORD) -> DWORD {
    let mut ids = Vec::with_capacity(handles.len());
    for &h in handles {
        match obj_id(h) {
            Some(id) => ids.push(id),
            None => return fail(ERROR_INVALID_HANDLE, WAIT_FAILED),
        }
    }
    let deadline = (ms != INFINITE).then(|| Instant::now() + Duration::from_millis(ms.into()));
    // A visible wait: a thread that dequeues from a port does not hold its concurrency slot
    // while it waits here.
    let _blocked = iocp_core::blocking();
    let o = objects();
    let mut map = o.map.lock();
    loop {
        let mut states = Vec::with_capacity(ids.len());
        for &id in &ids {
            match signalled(&map, id) {
                Some(s) => states.push(s),
                None => return fail(ERROR_INVALID_HANDLE, WAIT_FAILED),
            }
        }
        if all {
            if states.iter().all(|&s| s) {
                for &id in &ids {
                    consume(&mut map, id);
                }
                return WAIT_OBJECT_0;
            }
        } else if let Some(i) = states.iter().position(|&s| s) {
            consume(&mut map, ids[i]);
            return WAIT_OBJECT_0 + i as DWORD;
        }
        match deadline {
            Some(d) if Instant::now() >= d => return WAIT_TIMEOUT,
            Some(d) => {
                o.changed.wait_until(&mut map, d);
            }
            None => o.changed.wait(&mut map),
        }
    }
}

/// WaitForSingleObject on a thread or event HANDLE: `WAIT_OBJECT_0`, `WAIT_TIMEOUT`, or
/// `WAIT_FAILED` (`ERROR_INVALID_HANDLE`: not a thread or event; ports, sockets and files
/// cannot be waited on).
#[unsafe(no_mangle)]
pub extern "C" fn WaitForSingleObject(hHandle: HANDLE, dwMilliseconds: DWORD) -> DWORD {
    guard(WAIT_FAILED, || wait_many(&[hHandle], false, dwMilliseconds))
}

/// WaitForMultipleObjects: up to 64 thread or event HANDLEs; the first signalled
/// (`WAIT_OBJECT_0 + i`) or all of them (`bWaitAll`).
///
/// # Safety
/// `lpHandles` is valid for `nCount` HANDLEs.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WaitForMultipleObjects(
    nCount: DWORD,
    lpHandles: *const HANDLE,
    bWaitAll: BOOL,
    dwMilliseconds: DWORD,
) -> DWORD {
    guard(WAIT_FAILED, || {
        if nCount == 0 || nCount > MAXIMUM_WAIT_OBJECTS || lpHandles.is_null() {
            return fail(ERROR_INVALID_PARAMETER, WAIT_FAILED);
        }
        // SAFETY: `nCount` readable HANDLEs (caller's contract); the copy lives for the call.
        let hs = unsafe { std::slice::from_raw_parts(lpHandles, nCount as usize) }.to_vec();
        wait_many(&hs, bWaitAll != FALSE, dwMilliseconds)
    })
}

/// WSAWaitForMultipleEvents: WaitForMultipleObjects on WSAEVENTs (`fAlertable` ignored).
///
/// # Safety
/// As WaitForMultipleObjects.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAWaitForMultipleEvents(
    cEvents: DWORD,
    lphEvents: *const HANDLE,
    fWaitAll: BOOL,
    dwTimeout: DWORD,
    fAlertable: BOOL,
) -> DWORD {
    let _ = fAlertable;
    // SAFETY: the same contract.
    unsafe { WaitForMultipleObjects(cEvents, lphEvents, fWaitAll, dwTimeout) }
}

/// `PHANDLER_ROUTINE`.
pub type CtrlHandler = unsafe extern "C" fn(DWORD) -> BOOL;

const CTRL_C_EVENT: DWORD = 0;
const CTRL_BREAK_EVENT: DWORD = 1;
const CTRL_CLOSE_EVENT: DWORD = 2;

struct Console {
    handlers: Vec<CtrlHandler>,
    ignore_ctrl_c: bool,
}

fn console() -> &'static Mutex<Console> {
    static C: OnceLock<Mutex<Console>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(Console { handlers: Vec::new(), ignore_ctrl_c: false }))
}

/// The write end of the signal pipe (the signal handler's only action is one write).
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; one byte from a local to the pipe (non-blocking:
    // a full pipe drops the signal, which is already pending in it anyway).
    unsafe { libc::write(SIGNAL_PIPE.load(Ordering::Relaxed), (&raw const b).cast(), 1) };
}

/// Starts the dispatcher once: SIGINT, SIGTERM, SIGQUIT and SIGHUP go through a pipe to a thread
/// that calls the handlers, newest first, until one returns TRUE; when none does, the signal's
/// default action runs (the process ends, as Windows' default handler does).
fn start_dispatcher() -> Result<(), DWORD> {
    static STARTED: OnceLock<Result<(), DWORD>> = OnceLock::new();
    *STARTED.get_or_init(|| {
        let mut fds = [0; 2];
        // SAFETY: pipe2(2) writes two fds into the array we own.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            return Err(last_os().win32);
        }
        let [rd, wr] = fds;
        // The read end blocks: the dispatcher sleeps in read(2).
        // SAFETY: fcntl(2) on the fd we just created.
        unsafe { libc::fcntl(rd, libc::F_SETFL, 0) };
        SIGNAL_PIPE.store(wr, Ordering::Release);
        std::thread::Builder::new()
            .name("iocp-console-ctrl".into())
            .spawn(move || dispatch(rd))
            .map_err(|e| from_io(&e).win32)?;
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP] {
            // SAFETY: an all-zero sigaction is valid; we set the handler and flags.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            // SAFETY: installs an async-signal-safe handler (one write) for `sig`.
            unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
        }
        Ok(())
    })
}

fn dispatch(rd: i32) {
    loop {
        let mut b = 0u8;
        // SAFETY: read(2) of one byte into a local.
        let n = unsafe { libc::read(rd, (&raw mut b).cast(), 1) };
        if n <= 0 {
            continue;
        }
        let sig = libc::c_int::from(b);
        let kind = match sig {
            libc::SIGINT => CTRL_C_EVENT,
            libc::SIGQUIT => CTRL_BREAK_EVENT,
            _ => CTRL_CLOSE_EVENT,
        };
        let (handlers, ignore) = {
            let c = console().lock();
            (c.handlers.clone(), c.ignore_ctrl_c && kind == CTRL_C_EVENT)
        };
        if ignore {
            continue;
        }
        // SAFETY: handlers the program registered (SetConsoleCtrlHandler's contract).
        let handled = handlers.iter().rev().any(|h| unsafe { h(kind) } != FALSE);
        if !handled {
            // SAFETY: signal(2) restores the default action of a signal we handle.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
            // SAFETY: raise(3) re-raises it: the process ends by `sig`, as unhandled.
            unsafe { libc::raise(sig) };
        }
    }
}

/// SetConsoleCtrlHandler: adds (`Add` TRUE) or removes a handler. SIGINT is `CTRL_C_EVENT`,
/// SIGQUIT `CTRL_BREAK_EVENT`, SIGTERM and SIGHUP `CTRL_CLOSE_EVENT`; handlers run on a
/// library thread (as on Windows), newest first. `HandlerRoutine` NULL with `Add` TRUE ignores
/// Ctrl-C; with FALSE restores it.
///
/// # Safety
/// `HandlerRoutine` is NULL or a function callable on another thread at any time.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn SetConsoleCtrlHandler(
    HandlerRoutine: Option<CtrlHandler>,
    Add: BOOL,
) -> BOOL {
    guard(FALSE, || {
        if let Err(e) = start_dispatcher() {
            return fail(e, FALSE);
        }
        let mut c = console().lock();
        match (HandlerRoutine, Add != FALSE) {
            (None, add) => c.ignore_ctrl_c = add,
            (Some(h), true) => c.handlers.push(h),
            (Some(h), false) => {
                let Some(i) = c.handlers.iter().rposition(|&x| std::ptr::fn_addr_eq(x, h)) else {
                    return fail(ERROR_INVALID_PARAMETER, FALSE);
                };
                c.handlers.remove(i);
            }
        }
        TRUE
    })
}

/// GenerateConsoleCtrlEvent: `CTRL_C_EVENT` raises SIGINT, `CTRL_BREAK_EVENT` SIGQUIT, in this
/// process (the process group argument is ignored).
#[unsafe(no_mangle)]
pub extern "C" fn GenerateConsoleCtrlEvent(dwCtrlEvent: DWORD, dwProcessGroupId: DWORD) -> BOOL {
    let _ = dwProcessGroupId;
    let sig = match dwCtrlEvent {
        CTRL_C_EVENT => libc::SIGINT,
        CTRL_BREAK_EVENT => libc::SIGQUIT,
        _ => return fail(ERROR_INVALID_PARAMETER, FALSE),
    };
    // SAFETY: raise(3) sends the signal to this process (the dispatcher thread handles it).
    unsafe { libc::raise(sig) };
    TRUE
}

/// Extension (not Win32), for the headers' wrappers of the BSD socket calls: sets the calling
/// thread's last error (WSAGetLastError) from an errno, as Winsock would have.
#[unsafe(no_mangle)]
pub extern "C" fn iocp_set_wsa_error_from_errno(e: libc::c_int) {
    set_last_error(from_errno(e).wsa);
}

/// Extension (not Win32), for the headers' inline Win32 calls over libc (files, memory,
/// strings): sets the calling thread's last error (GetLastError) from an errno.
#[unsafe(no_mangle)]
pub extern "C" fn iocp_set_last_error_from_errno(e: libc::c_int) {
    set_last_error(from_errno(e).win32);
}

/// Extension (not Win32), for the header's FormatMessage: the system message of a Win32 error
/// code (the Windows text for the codes libiocp reports, "Unknown error" otherwise), a static
/// NUL-terminated string.
#[unsafe(no_mangle)]
pub extern "C" fn iocp_error_text(code: DWORD) -> *const libc::c_char {
    error_text(code).as_ptr()
}

fn error_text(code: DWORD) -> &'static std::ffi::CStr {
    match code {
        crate::errors::ERROR_SUCCESS => c"The operation completed successfully.",
        crate::errors::ERROR_FILE_NOT_FOUND => c"The system cannot find the file specified.",
        crate::errors::ERROR_PATH_NOT_FOUND => c"The system cannot find the path specified.",
        crate::errors::ERROR_TOO_MANY_OPEN_FILES => c"The system cannot open the file.",
        crate::errors::ERROR_ACCESS_DENIED => c"Access is denied.",
        crate::errors::ERROR_INVALID_HANDLE => c"The handle is invalid.",
        crate::errors::ERROR_NOT_ENOUGH_MEMORY => c"Not enough memory resources are available to process this command.",
        crate::errors::ERROR_GEN_FAILURE => c"A device attached to the system is not functioning.",
        crate::errors::ERROR_HANDLE_EOF => c"Reached the end of the file.",
        crate::errors::ERROR_NOT_SUPPORTED => c"The request is not supported.",
        crate::errors::ERROR_NETNAME_DELETED => c"The specified network name is no longer available.",
        crate::errors::ERROR_FILE_EXISTS => c"The file exists.",
        crate::errors::ERROR_INVALID_PARAMETER => c"The parameter is incorrect.",
        crate::errors::ERROR_BROKEN_PIPE => c"The pipe has been ended.",
        crate::errors::ERROR_DISK_FULL => c"There is not enough space on the disk.",
        crate::errors::ERROR_SEM_TIMEOUT => c"The semaphore timeout period has expired.",
        crate::errors::ERROR_MORE_DATA => c"More data is available.",
        crate::errors::WAIT_TIMEOUT => c"The wait operation timed out.",
        crate::errors::ERROR_ABANDONED_WAIT_0 => c"The I/O completion port was closed during the wait.",
        crate::errors::ERROR_OPERATION_ABORTED => c"The I/O operation has been aborted because of either a thread exit or an application request.",
        crate::errors::ERROR_IO_INCOMPLETE => c"Overlapped I/O event is not in a signaled state.",
        crate::errors::ERROR_IO_PENDING => c"Overlapped I/O operation is in progress.",
        crate::errors::ERROR_NOACCESS => c"Invalid access to memory location.",
        crate::errors::ERROR_NOT_FOUND => c"Element not found.",
        crate::errors::ERROR_INVALID_NETNAME => c"The format of the specified network name is invalid.",
        crate::errors::ERROR_CONNECTION_REFUSED => c"The remote computer refused the network connection.",
        crate::errors::ERROR_ADDRESS_ALREADY_ASSOCIATED => c"The network transport endpoint was already associated with an address.",
        crate::errors::ERROR_NETWORK_UNREACHABLE => c"The network location cannot be reached.",
        crate::errors::ERROR_HOST_UNREACHABLE => c"The remote system is not reachable by the transport.",
        crate::errors::ERROR_CONNECTION_ABORTED => c"The network connection was aborted by the local system.",
        crate::errors::ERROR_INTERNAL_ERROR => c"An internal error occurred.",
        crate::errors::ERROR_NO_SYSTEM_RESOURCES => c"Insufficient system resources exist to complete the requested service.",
        crate::errors::ERROR_NOT_CONNECTED => c"The network connection is not connected.",
        crate::errors::WSAEINTR => c"A blocking operation was interrupted by a call to WSACancelBlockingCall.",
        crate::errors::WSAEBADF => c"The file handle supplied is not valid.",
        crate::errors::WSAEACCES => c"An attempt was made to access a socket in a way forbidden by its access permissions.",
        crate::errors::WSAEFAULT => c"The system detected an invalid pointer address in attempting to use a pointer argument in a call.",
        crate::errors::WSAEINVAL => c"An invalid argument was supplied.",
        crate::errors::WSAEMFILE => c"Too many open sockets.",
        crate::errors::WSAEWOULDBLOCK => c"A non-blocking socket operation could not be completed immediately.",
        crate::errors::WSAEINPROGRESS => c"A blocking operation is currently executing.",
        crate::errors::WSAEALREADY => c"An operation was attempted on a non-blocking socket that already had an operation in progress.",
        crate::errors::WSAENOTSOCK => c"An operation was attempted on something that is not a socket.",
        crate::errors::WSAEDESTADDRREQ => c"A required address was omitted from an operation on a socket.",
        crate::errors::WSAEMSGSIZE => c"A message sent on a datagram socket was larger than the internal message buffer or some other network limit, or the buffer used to receive a datagram into was smaller than the datagram itself.",
        crate::errors::WSAEPROTOTYPE => c"A protocol was specified in the socket function call that does not support the semantics of the socket type requested.",
        crate::errors::WSAENOPROTOOPT => c"An unknown, invalid, or unsupported option or level was specified in a getsockopt or setsockopt call.",
        crate::errors::WSAEPROTONOSUPPORT => c"The requested protocol has not been configured into the system, or no implementation for it exists.",
        crate::errors::WSAESOCKTNOSUPPORT => c"The support for the specified socket type does not exist in this address family.",
        crate::errors::WSAEOPNOTSUPP => c"The attempted operation is not supported for the type of object referenced.",
        crate::errors::WSAEAFNOSUPPORT => c"An address incompatible with the requested protocol was used.",
        crate::errors::WSAEADDRINUSE => c"Only one usage of each socket address (protocol/network address/port) is normally permitted.",
        crate::errors::WSAEADDRNOTAVAIL => c"The requested address is not valid in its context.",
        crate::errors::WSAENETDOWN => c"A socket operation encountered a dead network.",
        crate::errors::WSAENETUNREACH => c"A socket operation was attempted to an unreachable network.",
        crate::errors::WSAENETRESET => c"The connection has been broken due to keep-alive activity detecting a failure while the operation was in progress.",
        crate::errors::WSAECONNABORTED => c"An established connection was aborted by the software in your host machine.",
        crate::errors::WSAECONNRESET => c"An existing connection was forcibly closed by the remote host.",
        crate::errors::WSAENOBUFS => c"An operation on a socket could not be performed because the system lacked sufficient buffer space or because a queue was full.",
        crate::errors::WSAEISCONN => c"A connect request was made on an already connected socket.",
        crate::errors::WSAENOTCONN => c"A request to send or receive data was disallowed because the socket is not connected and (when sending on a datagram socket using a sendto call) no address was supplied.",
        crate::errors::WSAESHUTDOWN => c"A request to send or receive data was disallowed because the socket had already been shut down in that direction with a previous shutdown call.",
        crate::errors::WSAETIMEDOUT => c"A connection attempt failed because the connected party did not properly respond after a period of time, or established connection failed because connected host has failed to respond.",
        crate::errors::WSAECONNREFUSED => c"No connection could be made because the target machine actively refused it.",
        crate::errors::WSAENAMETOOLONG => c"Name too long.",
        crate::errors::WSAEHOSTUNREACH => c"A socket operation was attempted to an unreachable host.",
        _ => c"Unknown error.",
    }
}

/// `CRITICAL_SECTION`: the header lays a `pthread_mutex_t` at its start; these calls make it
/// recursive (as a critical section is) and lock it.
type CriticalSection = libc::pthread_mutex_t;

/// InitializeCriticalSection: a recursive mutex in the caller's CRITICAL_SECTION.
///
/// # Safety
/// `cs` points to a CRITICAL_SECTION (at least a `pthread_mutex_t`) not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn InitializeCriticalSection(cs: *mut CriticalSection) {
    if cs.is_null() {
        return;
    }
    // SAFETY: an all-zero attribute object is overwritten by pthread_mutexattr_init.
    let mut attr: libc::pthread_mutexattr_t = unsafe { std::mem::zeroed() };
    // SAFETY: initialises the attribute object we own.
    unsafe { libc::pthread_mutexattr_init(&mut attr) };
    // SAFETY: `attr` was initialised just above.
    unsafe { libc::pthread_mutexattr_settype(&mut attr, libc::PTHREAD_MUTEX_RECURSIVE) };
    // SAFETY: `cs` is the caller's unused CRITICAL_SECTION, at least a pthread_mutex_t (the
    // header's layout; contract above); `attr` is initialised.
    unsafe { libc::pthread_mutex_init(cs, &attr) };
    // SAFETY: `attr` is initialised and no longer needed (the mutex copied it).
    unsafe { libc::pthread_mutexattr_destroy(&mut attr) };
}

/// InitializeCriticalSectionAndSpinCount: as InitializeCriticalSection (no spin count).
///
/// # Safety
/// As InitializeCriticalSection.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn InitializeCriticalSectionAndSpinCount(
    cs: *mut CriticalSection,
    spin: DWORD,
) -> BOOL {
    let _ = spin;
    // SAFETY: the same contract.
    unsafe { InitializeCriticalSection(cs) };
    TRUE
}

/// EnterCriticalSection.
///
/// # Safety
/// `cs` was initialised by InitializeCriticalSection and not deleted.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn EnterCriticalSection(cs: *mut CriticalSection) {
    // SAFETY: an initialised mutex (contract above).
    unsafe { libc::pthread_mutex_lock(cs) };
}

/// TryEnterCriticalSection: TRUE if now owned by the calling thread.
///
/// # Safety
/// As EnterCriticalSection.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn TryEnterCriticalSection(cs: *mut CriticalSection) -> BOOL {
    // SAFETY: an initialised mutex (contract above).
    BOOL::from(unsafe { libc::pthread_mutex_trylock(cs) } == 0)
}

/// LeaveCriticalSection.
///
/// # Safety
/// As EnterCriticalSection, and owned by the calling thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn LeaveCriticalSection(cs: *mut CriticalSection) {
    // SAFETY: an initialised mutex the caller owns (contract above).
    unsafe { libc::pthread_mutex_unlock(cs) };
}

/// DeleteCriticalSection.
///
/// # Safety
/// As EnterCriticalSection, and not owned by any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn DeleteCriticalSection(cs: *mut CriticalSection) {
    // SAFETY: an initialised, unowned mutex (contract above).
    unsafe { libc::pthread_mutex_destroy(cs) };
}

fn monotonic() -> Duration {
    // SAFETY: an all-zero timespec is valid for clock_gettime to overwrite.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime(2) writes into our local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// GetTickCount64: milliseconds since an arbitrary start (CLOCK_MONOTONIC).
#[unsafe(no_mangle)]
pub extern "C" fn GetTickCount64() -> u64 {
    monotonic().as_millis() as u64
}

/// GetTickCount: GetTickCount64 truncated to 32 bits (wraps after 49.7 days, as on Windows).
#[unsafe(no_mangle)]
pub extern "C" fn GetTickCount() -> DWORD {
    GetTickCount64() as DWORD
}

/// QueryPerformanceCounter: nanoseconds of CLOCK_MONOTONIC (the frequency is 10^9).
///
/// # Safety
/// `lpPerformanceCount` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn QueryPerformanceCounter(lpPerformanceCount: *mut i64) -> BOOL {
    if lpPerformanceCount.is_null() {
        return fail(ERROR_INVALID_PARAMETER, FALSE);
    }
    // SAFETY: non-NULL, valid (caller's contract).
    unsafe { crate::mem::put(lpPerformanceCount, monotonic().as_nanos() as i64) };
    TRUE
}

/// QueryPerformanceFrequency: 10^9 counts per second.
///
/// # Safety
/// `lpFrequency` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn QueryPerformanceFrequency(lpFrequency: *mut i64) -> BOOL {
    if lpFrequency.is_null() {
        return fail(ERROR_INVALID_PARAMETER, FALSE);
    }
    // SAFETY: non-NULL, valid (caller's contract).
    unsafe { crate::mem::put(lpFrequency, 1_000_000_000) };
    TRUE
}

/// `SYSTEM_INFO` (x64 layout, 48 bytes).
#[repr(C)]
#[derive(Debug)]
pub struct SYSTEM_INFO {
    wProcessorArchitecture: u16,
    wReserved: u16,
    dwPageSize: DWORD,
    lpMinimumApplicationAddress: *mut c_void,
    lpMaximumApplicationAddress: *mut c_void,
    dwActiveProcessorMask: usize,
    dwNumberOfProcessors: DWORD,
    dwProcessorType: DWORD,
    dwAllocationGranularity: DWORD,
    wProcessorLevel: u16,
    wProcessorRevision: u16,
}

const _: () = assert!(size_of::<SYSTEM_INFO>() == 48);

/// GetSystemInfo: the online processors (`dwNumberOfProcessors`, the usual sizing of a worker
/// pool), the page size, and Windows' 64 KiB allocation granularity.
///
/// # Safety
/// `lpSystemInfo` is NULL or valid for a write of a SYSTEM_INFO.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn GetSystemInfo(lpSystemInfo: *mut SYSTEM_INFO) {
    // SAFETY: sysconf(3) with constant names has no memory effects.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as DWORD;
    // SAFETY: sysconf(3) of the page size has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as DWORD;
    let (arch, ty) = if cfg!(target_arch = "aarch64") { (12, 0) } else { (9, 8664) };
    let si = SYSTEM_INFO {
        wProcessorArchitecture: arch,
        wReserved: 0,
        dwPageSize: page,
        lpMinimumApplicationAddress: std::ptr::without_provenance_mut(0x1_0000),
        lpMaximumApplicationAddress: std::ptr::without_provenance_mut(0x7FFF_FFFE_FFFF),
        dwActiveProcessorMask: if cpus >= 64 { usize::MAX } else { (1usize << cpus) - 1 },
        dwNumberOfProcessors: cpus,
        dwProcessorType: ty,
        dwAllocationGranularity: 64 << 10,
        wProcessorLevel: 0,
        wProcessorRevision: 0,
    };
    // SAFETY: NULL or valid for a SYSTEM_INFO write (this function's contract).
    unsafe { crate::mem::put(lpSystemInfo, si) };
}
