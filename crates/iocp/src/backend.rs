//! Choosing a backend at run time, and saying why.

use std::fmt;
use std::io;
use std::str::FromStr;

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
    pub(crate) kind: BackendKind,
    pub(crate) reason: String,
    pub(crate) kernel: String,
    pub(crate) uring: Result<UringCaps, String>,
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
