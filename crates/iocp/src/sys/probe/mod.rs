//! Backend selection: the io_uring probe (run once per process) and the choice it informs.
//! The public types it reports in live in `crate::backend`; this is the part that touches the
//! kernel.

use std::io;
use std::sync::OnceLock;

use crate::backend::{BackendChoice, BackendKind, BackendReport, UringCaps};

#[cfg(feature = "uring")]
mod uring;

fn kernel_release() -> String {
    rustix::system::uname().release().to_string_lossy().into_owned()
}

pub(crate) fn io_uring_disabled() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().map(|s| s.trim().to_owned())
}

pub(crate) fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ENOSYS) => "ENOSYS".into(),
        Some(libc::ENOMEM) => "ENOMEM".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

/// Runs the io_uring probe once per process.
fn uring_probe() -> &'static Result<UringCaps, String> {
    static PROBE: OnceLock<Result<UringCaps, String>> = OnceLock::new();
    PROBE.get_or_init(probe_uring)
}

#[cfg(feature = "uring")]
fn probe_uring() -> Result<UringCaps, String> {
    // On a thread of its own: the NOP round trip gives the submitting thread an io_uring task
    // context, and when the probe's ring is torn down (asynchronously, in a kernel worker) the
    // kernel queues exit work on every such thread with a notification that interrupts a
    // blocking system call: a caller's `recv` with a timeout would fail with EINTR some time
    // later. A thread that has exited is left alone.
    match std::thread::Builder::new()
        .name("iocp-probe".into())
        .spawn(uring::probe)
        .map(std::thread::JoinHandle::join)
    {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the io_uring probe panicked".into()),
        // No thread to spare: probe here (the caller may see one EINTR later).
        Err(_) => uring::probe(),
    }
}

#[cfg(not(feature = "uring"))]
fn probe_uring() -> Result<UringCaps, String> {
    Err("built without the `uring` feature".into())
}

/// Decides the backend for `choice`, with the report `port.backend()` returns.
pub(crate) fn choose(choice: BackendChoice) -> io::Result<BackendReport> {
    let kernel = kernel_release();
    let uring = uring_probe().clone();
    let report = |kind, reason: String| BackendReport {
        kind,
        reason,
        kernel: kernel.clone(),
        uring: uring.clone(),
    };
    match (choice, &uring) {
        (BackendChoice::Epoll, _) => Ok(report(BackendKind::Epoll, "chosen explicitly".into())),
        (BackendChoice::Uring | BackendChoice::Auto, Ok(caps)) => Ok(report(
            BackendKind::Uring,
            format!(
                "setup, NOP round trip, {} opcodes and {} features OK (kernel {kernel})",
                caps.opcodes.len(),
                caps.features.len()
            ),
        )),
        (BackendChoice::Uring, Err(why)) => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("io_uring was required but is unavailable: {why}"),
        )),
        (_, Err(why)) => {
            tracing::warn!("io_uring unavailable ({why}); using epoll");
            Ok(report(BackendKind::Epoll, why.clone()))
        }
    }
}

/// Runs the probe (once per process) and reports what `BackendChoice::Auto` would pick, without
/// creating a port. This is what `iocp probe` prints.
pub fn probe() -> BackendReport {
    match choose(BackendChoice::Auto) {
        Ok(r) => r,
        Err(e) => BackendReport {
            kind: BackendKind::Epoll,
            reason: e.to_string(),
            kernel: kernel_release(),
            uring: Err(e.to_string()),
        },
    }
}
