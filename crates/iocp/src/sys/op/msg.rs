//! The kernel-facing structures several operations share: a `msghdr` with its iovecs, and
//! storage for a peer address.

use std::mem::MaybeUninit;

use socket2::SockAddr;

/// A `msghdr` with its iovec array, pointing into buffers owned by the same op.
pub(crate) struct Msg {
    iov: Vec<libc::iovec>,
    pub(super) hdr: libc::msghdr,
}

// SAFETY: the raw pointers in `iov` and `hdr` point only into buffers owned by the same `Op`
// (and into `iov` itself); the `Op` is moved between threads as a whole, and only the thread
// that owns it (or the kernel, while it is in flight) dereferences them.
unsafe impl Send for Msg {}
// SAFETY: as above; a shared `&Msg` gives no access to the pointees.
unsafe impl Sync for Msg {}

impl Msg {
    pub(super) fn new() -> Box<Self> {
        Box::new(Self::plain())
    }

    pub(super) fn plain() -> Self {
        // SAFETY: `msghdr` is a plain C struct for which all-zero bytes is a valid value (null
        // pointers, zero lengths).
        let hdr: libc::msghdr = unsafe { std::mem::zeroed() };
        Msg { iov: Vec::new(), hdr }
    }

    /// Points the iovecs at the spare capacity of `bufs`, in order (scatter).
    pub(super) fn scatter(&mut self, bufs: &mut [Vec<u8>]) -> *mut libc::msghdr {
        self.iov.clear();
        for b in bufs.iter_mut() {
            let spare = b.spare_capacity_mut();
            self.iov
                .push(libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() });
        }
        self.finish(std::ptr::null_mut(), 0)
    }

    /// Points the iovecs at the unsent bytes of `bufs`, skipping the first `skip` bytes (gather).
    pub(super) fn gather(&mut self, bufs: &[Vec<u8>], mut skip: usize) -> *mut libc::msghdr {
        self.iov.clear();
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let rest = &b[skip..];
            skip = 0;
            self.iov.push(libc::iovec {
                iov_base: rest.as_ptr().cast_mut().cast(),
                iov_len: rest.len(),
            });
        }
        self.finish(std::ptr::null_mut(), 0)
    }

    /// One buffer's spare capacity, and room for the sender's address (recvmsg).
    pub(super) fn recv_from(&mut self, buf: &mut Vec<u8>, addr: &mut AddrBuf) -> *mut libc::msghdr {
        self.iov.clear();
        let spare = buf.spare_capacity_mut();
        self.iov.push(libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() });
        let (name, len) = addr.ptrs();
        // SAFETY: `len` points at `addr.len`, initialised by `ptrs`.
        let len = unsafe { *len };
        self.finish(name.cast(), len)
    }

    /// One buffer's bytes, to `to` (sendmsg).
    pub(super) fn send_to(&mut self, buf: &[u8], to: &SockAddr) -> *mut libc::msghdr {
        self.iov.clear();
        self.iov.push(libc::iovec { iov_base: buf.as_ptr().cast_mut().cast(), iov_len: buf.len() });
        self.finish(to.as_ptr().cast_mut().cast(), to.len())
    }

    fn finish(&mut self, name: *mut libc::c_void, namelen: libc::socklen_t) -> *mut libc::msghdr {
        self.hdr.msg_name = name;
        self.hdr.msg_namelen = namelen;
        self.hdr.msg_iov = self.iov.as_mut_ptr();
        self.hdr.msg_iovlen = self.iov.len();
        self.hdr.msg_flags = 0;
        &mut self.hdr
    }
}

/// Storage for a peer address written by `accept4` or `recvmsg`.
pub(crate) struct AddrBuf {
    storage: MaybeUninit<libc::sockaddr_storage>,
    pub(super) len: libc::socklen_t,
}

impl AddrBuf {
    pub(super) fn plain() -> Self {
        AddrBuf { storage: MaybeUninit::zeroed(), len: size_of::<libc::sockaddr_storage>() as _ }
    }

    pub(super) fn ptrs(&mut self) -> (*mut libc::sockaddr, *mut libc::socklen_t) {
        self.len = size_of::<libc::sockaddr_storage>() as _;
        (self.storage.as_mut_ptr().cast(), &mut self.len)
    }

    /// The address the kernel wrote, if any.
    pub(super) fn take(&self) -> Option<SockAddr> {
        if self.len == 0 || self.len as usize > size_of::<libc::sockaddr_storage>() {
            return None;
        }
        // SAFETY: `storage` was zero-initialised at creation and the kernel wrote at most `len`
        // bytes of a valid address into it, so it is initialised, and `len` is in bounds.
        let storage = unsafe { self.storage.assume_init() };
        // SAFETY: `sockaddr_storage` and socket2's storage are both the C `sockaddr_storage`
        // (same size and layout), so the bytes are a valid value of the target type.
        let storage = unsafe {
            std::mem::transmute::<libc::sockaddr_storage, socket2::SockAddrStorage>(storage)
        };
        // SAFETY: `len` bytes of `storage` hold the address the kernel wrote.
        Some(unsafe { SockAddr::new(storage, self.len) })
    }
}
