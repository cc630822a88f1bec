//! Choosing a backend at run time, and saying why.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::OnceLock;

/// Which backend a port should use.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum BackendChoice {
    /// io_uring when the probe passes (setup, a NOP round trip under the live seccomp filter,
    /// and every opcode the port uses), else epoll.
    #[default]
    Auto,
    /// io_uring, or an error saying why it is unavailable; never a silent fallback.
    Uring,
    /// epoll.
    Epoll,
}

impl FromStr for BackendChoice {
    type Err = io::Error;

    /// Parses `auto`, `uring` (or `io_uring`) and `epoll`, as the `IOCP_BACKEND` variable and
    /// the `--backend` flags spell them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendChoice::Uring),
            "epoll" => Ok(BackendChoice::Epoll),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown backend {other:?}: expected auto, uring or epoll"),
            )),
        }
    }
}

/// The backend a port runs on.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum BackendKind {
    /// io_uring.
    Uring,
    /// epoll (a proactor emulated on readiness).
    Epoll,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Uring => "io_uring",
            BackendKind::Epoll => "epoll",
        })
    }
}

/// Which backend a port runs on and why: what the probe found.
#[derive(Clone, Debug)]
pub struct BackendReport {
    kind: BackendKind,
    reason: String,
    kernel: String,
    uring: Result<UringCaps, String>,
}

impl BackendReport {
    /// The backend in use.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Why this backend: e.g. "epoll: io_uring_setup failed with EPERM; kernel.io_uring_disabled
    /// = 2", or "io_uring: setup, NOP round trip, 12 opcodes and 3 features OK".
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The running kernel's release string.
    pub fn kernel(&self) -> &str {
        &self.kernel
    }

    /// What the io_uring probe found: the capabilities, or why io_uring is unusable.
    ///
    /// # Errors
    /// The probe's failure, in words.
    pub fn uring(&self) -> Result<&UringCaps, &str> {
        self.uring.as_ref().map_err(String::as_str)
    }
}

impl fmt::Display for BackendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.reason)
    }
}

/// io_uring capabilities found by the probe.
#[derive(Clone, Debug, Default)]
pub struct UringCaps {
    /// Opcodes the port needs, with whether the kernel has them.
    pub opcodes: Vec<(&'static str, bool)>,
    /// `IORING_FEAT_EXT_ARG` (wait with a timeout): required.
    pub ext_arg: bool,
    /// `IORING_FEAT_NODROP`: the kernel keeps CQEs that do not fit instead of dropping them.
    pub nodrop: bool,
    /// Behaviours the operations rely on beyond opcodes (multishot accept, the provided-buffer
    /// ring, cancel-any), each tried on the probe's ring: required.
    pub features: Vec<(&'static str, bool)>,
    /// Opcodes reported for information: the port does not use them.
    pub optional: Vec<(&'static str, bool)>,
}

/// Port configuration, from [`PortBuilder`](crate::PortBuilder).
#[derive(Clone, Debug)]
pub(crate) struct PortConfig {
    pub(crate) concurrency: usize,
    pub(crate) backend: BackendChoice,
    pub(crate) ring_entries: u32,
    pub(crate) cq_entries: Option<u32>,
    pub(crate) file_threads: usize,
    /// io_uring rings (0: one per thread of the concurrency limit, resolved by
    /// `PortBuilder::build`).
    pub(crate) rings: usize,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            concurrency: 0,
            backend: BackendChoice::Auto,
            ring_entries: 256,
            cq_entries: None,
            file_threads: 4,
            rings: 1,
        }
    }
}

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
        .spawn(crate::sys::uring::probe)
        .map(std::thread::JoinHandle::join)
    {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err("the io_uring probe panicked".into()),
        // No thread to spare: probe here (the caller may see one EINTR later).
        Err(_) => crate::sys::uring::probe(),
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
