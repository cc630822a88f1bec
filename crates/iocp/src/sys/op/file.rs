//! Regular-file reads and writes at an offset (`ReadFile`/`WriteFile` with an OVERLAPPED
//! offset; [`crate::APPEND`] appends). epoll cannot wait for a file, so these run on the file
//! pool's threads, blocking; io_uring runs them in the kernel.

use std::os::fd::RawFd;

use super::code::{Count, OpCode, Progress, Side};
use super::raw::{fail, ret};
use super::stream::filled;
use crate::APPEND;
use crate::completion::{Payload, Status};
#[cfg(feature = "uring")]
use crate::sys::opcodes::{self, Opcode};

/// A read into the spare capacity of `buf` at `offset`.
pub(crate) struct ReadAt {
    buf: Vec<u8>,
    offset: u64,
}

/// A write of `buf` at `offset` (or appended), resumed after a short write.
pub(crate) struct WriteAt {
    buf: Vec<u8>,
    offset: u64,
}

impl ReadAt {
    pub(crate) fn new(buf: Vec<u8>, offset: u64) -> Self {
        ReadAt { buf, offset }
    }
}
impl WriteAt {
    pub(crate) fn new(buf: Vec<u8>, offset: u64) -> Self {
        WriteAt { buf, offset }
    }
}

impl OpCode for ReadAt {
    const SIDE: Side = Side::Write;
    const ORDERED: bool = false;
    const COUNT: Count = Count::File;
    const FILE_IO: bool = true;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::READ];

    fn syscall(&mut self, fd: RawFd, _bytes: usize) -> isize {
        let Ok(off) = i64::try_from(self.offset) else { return fail(libc::EINVAL) };
        let spare = self.buf.spare_capacity_mut();
        // SAFETY: `spare` is writable memory owned by this op. Blocking is fine here: file ops
        // run on the file pool's threads.
        ret(unsafe { libc::pread(fd, spare.as_mut_ptr().cast(), spare.len(), off) })
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, _bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        let spare = self.buf.spare_capacity_mut();
        opcode::Read::new(Fd(fd), spare.as_mut_ptr().cast(), super::raw::len_u32(spare.len()))
            .offset(self.offset)
            .build()
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        if n == 0 && self.buf.capacity() > self.buf.len() {
            return Progress::Done(Status::EOF);
        }
        *bytes = filled(&mut self.buf, n);
        Progress::DONE
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::Read(self.buf)
    }
}

impl OpCode for WriteAt {
    const SIDE: Side = Side::Write;
    const ORDERED: bool = false;
    const COUNT: Count = Count::File;
    const FILE_IO: bool = true;
    #[cfg(feature = "uring")]
    const OPCODES: &'static [Opcode] = &[opcodes::WRITE];

    fn syscall(&mut self, fd: RawFd, bytes: usize) -> isize {
        let rest = &self.buf[bytes.min(self.buf.len())..];
        let iov = libc::iovec { iov_base: rest.as_ptr().cast_mut().cast(), iov_len: rest.len() };
        let (off, flags) = if self.offset == APPEND {
            (-1, libc::RWF_APPEND)
        } else {
            match i64::try_from(self.offset + bytes as u64) {
                Ok(o) => (o, 0),
                Err(_) => return fail(libc::EINVAL),
            }
        };
        // SAFETY: `iov` describes bytes owned by this op. Runs on the file pool.
        ret(unsafe { libc::pwritev2(fd, &iov, 1, off, flags) })
    }
    #[cfg(feature = "uring")]
    fn sqe(&mut self, fd: RawFd, bytes: usize) -> io_uring::squeue::Entry {
        use io_uring::{opcode, types::Fd};
        let rest = &self.buf[bytes.min(self.buf.len())..];
        let w = opcode::Write::new(Fd(fd), rest.as_ptr(), super::raw::len_u32(rest.len()));
        if self.offset == APPEND {
            w.offset(0).rw_flags(libc::RWF_APPEND).build()
        } else {
            w.offset(self.offset + bytes as u64).build()
        }
    }
    fn advance(&mut self, n: usize, bytes: &mut usize, _fd: RawFd) -> Progress {
        super::stream::sent(bytes, n, self.buf.len())
    }
    fn into_payload(self, _bytes: usize, _status: Status) -> Payload {
        Payload::Write(self.buf)
    }
}
