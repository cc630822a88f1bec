//! The zero-byte receive: completes when the socket is readable (or at its end, or on an
//! error), moving no data, so an idle connection holds no receive buffer.

use std::os::fd::RawFd;

use super::code::{Count, OpCode, Progress, Side};
use super::raw::peek;
#[cfg(feature = "uring")]
use super::{code::Outcome, raw::so_error};
use crate::completion::{Payload, Status};
#[cfg(feature = "uring")]
use crate::sys::opcodes::{self, Opcode};

/// A readiness wait.
pub(crate) struct Ready;

impl OpCode for Ready {
    const SIDE: Side = Side::Read;
    const ORDERED: bool = false;
    const COUNT: Count = Count::Receive;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::POLL_ADD];

    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        let r = peek(fd);
        if r >= 0 { 0 } else { r }
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        let mask = libc::POLLIN | libc::POLLRDHUP | libc::POLLERR | libc::POLLHUP;
        opcode::PollAdd::new(Fd(fd), mask as u32).build()
    }
    #[cfg(feature = "uring")]
    fn on_cqe(&mut self, res: i32, _flags: u32, fd: RawFd) -> Outcome {
        if res < 0 {
            return Outcome::Result(res as isize);
        }
        // An event mask: an error event reports the socket's error.
        if res & i32::from(libc::POLLERR) != 0 {
            let e = so_error(fd);
            if e != 0 {
                return Outcome::Progress(Progress::fail(e));
            }
        }
        Outcome::Progress(Progress::DONE)
    }
    fn advance(&mut self, _n: usize, _bytes: &mut usize, _fd: RawFd) -> Progress {
        Progress::DONE
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::Ready
    }
}
