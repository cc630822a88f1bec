//! `DisconnectEx`: shut down the write side, read (and drop) what the peer still sends until
//! its FIN, then, with `TF_REUSE_SOCKET`, dissolve the association so the socket can connect
//! again.

use std::os::fd::RawFd;

use super::code::{Count, OpCode, Progress, Side};
use super::raw::{errno, recv_spare, ret};
use crate::completion::{Payload, Status};
#[cfg(feature = "uring")]
use crate::sys::opcodes::{self, Opcode};

/// Where a DisconnectEx is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DisconnectStage {
    /// `shutdown(SHUT_WR)`: our FIN goes out.
    Shutdown,
    /// Reading (and dropping) what the peer still sends, until its FIN.
    DrainToFin,
}

/// A disconnect's stage, whether the socket is to be reused, and the buffer the peer's last
/// bytes are read into and dropped (allocated only when it comes to that).
pub(crate) struct Disconnect {
    stage: DisconnectStage,
    reuse: bool,
    scratch: Vec<u8>,
}

impl Disconnect {
    /// A disconnect; `reuse` dissolves the association at the end (`TF_REUSE_SOCKET`).
    pub(crate) fn new(reuse: bool) -> Self {
        Disconnect { stage: DisconnectStage::Shutdown, reuse, scratch: Vec::new() }
    }

    fn scratch(&mut self) -> &mut Vec<u8> {
        if self.scratch.capacity() == 0 {
            self.scratch.reserve(4096);
        }
        &mut self.scratch
    }
}

/// `connect(AF_UNSPEC)`: dissolves a TCP socket's association so it can connect again
/// (DisconnectEx with TF_REUSE_SOCKET). Returns 0 or an errno.
fn dissolve(fd: RawFd) -> i32 {
    // SAFETY: an all-zero sockaddr with family AF_UNSPEC (0) is the documented argument.
    let addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    // SAFETY: `addr` is a valid local of the size given.
    let r = unsafe { libc::connect(fd, &addr, size_of::<libc::sockaddr>() as libc::socklen_t) };
    if r < 0 { errno() } else { 0 }
}

impl OpCode for Disconnect {
    const SIDE: Side = Side::Read;
    const ORDERED: bool = true;
    const COUNT: Count = Count::Other;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::SHUTDOWN, opcodes::RECV];

    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        match self.stage {
            // SAFETY: plain syscall on an fd the handle keeps open.
            DisconnectStage::Shutdown => ret(unsafe { libc::shutdown(fd, libc::SHUT_WR) } as isize),
            DisconnectStage::DrainToFin => recv_spare(fd, self.scratch()),
        }
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        match self.stage {
            DisconnectStage::Shutdown => opcode::Shutdown::new(Fd(fd), libc::SHUT_WR).build(),
            DisconnectStage::DrainToFin => super::stream::recv_sqe(fd, self.scratch()),
        }
    }
    fn waits_readable(&self) -> bool {
        self.stage == DisconnectStage::DrainToFin
    }
    fn advance(&mut self, n: usize, _bytes: &mut usize, fd: RawFd) -> Progress {
        if self.stage == DisconnectStage::Shutdown {
            self.stage = DisconnectStage::DrainToFin;
            return Progress::Again;
        }
        if n > 0 {
            return Progress::Again; // discard what the peer still sends, until its FIN
        }
        if self.reuse { Progress::fail(dissolve(fd)) } else { Progress::DONE }
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::Disconnect
    }
}
