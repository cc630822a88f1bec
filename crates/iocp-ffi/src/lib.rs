//! libiocp: the Win32 I/O completion port API for C and C++ programs on Linux.
//!
//! This crate builds `libiocp.so` and `libiocp.a`; `include/iocp.h` declares what they export
//! with Windows names, types (x64 layouts) and error codes: `CreateIoCompletionPort`,
//! `GetQueuedCompletionStatus(Ex)`, `PostQueuedCompletionStatus`, `WSARecv`/`WSASend`,
//! `AcceptEx`, `ConnectEx`, `ReadFile`/`WriteFile` and the rest. Everything runs on the `iocp`
//! core crate: a port is a `CompletionPort<Ctx>` whose per-operation context carries the
//! caller's `LPOVERLAPPED` and where to copy received bytes when the packet is dequeued.
//!
//! Rules every exported function follows:
//! - no Rust panic crosses the boundary (each body runs under `catch_unwind`; a panic becomes
//!   `ERROR_INTERNAL_ERROR`);
//! - NULL or stale handles give `ERROR_INVALID_HANDLE`, bad pointers and arguments
//!   `ERROR_INVALID_PARAMETER` (or the WSA code), never a crash on what can be checked;
//! - the last error is thread-local (`GetLastError`, `WSAGetLastError` read the same slot).
//!
//! docs/PORTING.md says what compiles as is and what differs from Windows.

pub mod abi;
pub mod errors;
pub mod files;
mod mem;
pub mod ports;
mod registry;
pub mod types;
pub mod win32;
pub mod winsock;

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use types::DWORD;

thread_local! {
    static LAST_ERROR: Cell<DWORD> = const { Cell::new(0) };
}

/// Sets the calling thread's last error.
pub(crate) fn set_last_error(e: DWORD) {
    LAST_ERROR.with(|c| c.set(e));
}

/// The calling thread's last error.
pub(crate) fn last_error() -> DWORD {
    LAST_ERROR.with(Cell::get)
}

/// Runs an exported function's body; a panic becomes `fallback` with `ERROR_INTERNAL_ERROR`.
pub(crate) fn guard<R>(fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            set_last_error(errors::ERROR_INTERNAL_ERROR);
            fallback
        }
    }
}
