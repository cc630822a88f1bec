//! Registered receive buffers (the RIO analog): one allocation of `count` buffers of `size`
//! bytes, lent to receives only when data arrives, so an idle connection pins no buffer.
//!
//! - io_uring: the buffers are a provided-buffer ring (`IORING_REGISTER_PBUF_RING`); a receive
//!   with `IOSQE_BUFFER_SELECT` lets the kernel pick one when data arrives, and its id comes back
//!   in the CQE flags.
//! - epoll: a free list; a receive takes a buffer only when the socket is readable.
//!
//! A buffer handed out is a [`PooledBuf`]; dropping it gives the buffer back (to the ring, or to
//! the free list).

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fmt;
use std::io;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};

use parking_lot::Mutex;

/// The kernel's `struct io_uring_buf` (16 bytes); the ring's tail overlays entry 0's last field.
#[repr(C)]
struct RingEntry {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

/// An owned, page-aligned allocation.
struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `Region` is a plain heap allocation with no thread affinity; access to its bytes is
// synchronised by the pool (each buffer has one owner at a time: the kernel, the free list, or
// one `PooledBuf`).
unsafe impl Send for Region {}
// SAFETY: as above; shared references only hand out raw pointers.
unsafe impl Sync for Region {}

impl Region {
    fn new(len: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(len.max(1), 4096)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer pool too large"))?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Region { ptr, layout })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `Region::new` with this layout, and freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// How returned buffers reach their next receive.
enum Refill {
    /// epoll: a free list of buffer ids.
    Free(Mutex<Vec<u16>>),
    /// io_uring: the provided-buffer ring; the mutex serialises producers of the tail.
    Ring { ring: Region, entries: u16, tail: Mutex<u16> },
}

pub(crate) struct PoolInner {
    /// The port this pool belongs to.
    port: u64,
    mem: Region,
    size: usize,
    count: u16,
    group: u16,
    refill: Refill,
    lent: AtomicUsize,
}

/// A pool of receive buffers registered with one port
/// ([`CompletionPort::buffer_pool`](crate::CompletionPort::buffer_pool)); use it with
/// [`Handle::recv_pooled`](crate::Handle::recv_pooled). Clones share the pool.
#[derive(Clone)]
pub struct BufferPool {
    pub(crate) inner: Arc<PoolInner>,
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("count", &self.inner.count)
            .field("size", &self.inner.size)
            .field("lent", &self.lent())
            .finish()
    }
}

impl BufferPool {
    /// A pool of `count` buffers of `size` bytes. `ring` selects the io_uring provided-buffer
    /// ring form (whose caller must register it); else a free list.
    pub(crate) fn new(
        port: u64,
        count: u16,
        size: usize,
        group: u16,
        ring: bool,
    ) -> io::Result<Self> {
        if count == 0 || size == 0 || count > 32768 || size > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a buffer pool needs 1..=32768 buffers of 1..=4 GiB bytes",
            ));
        }
        let total = size
            .checked_mul(usize::from(count))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer pool too large"))?;
        let mem = Region::new(total)?;
        let refill = if ring {
            let entries = count.next_power_of_two();
            let ring = Region::new(usize::from(entries) * size_of::<RingEntry>())?;
            Refill::Ring { ring, entries, tail: Mutex::new(0) }
        } else {
            Refill::Free(Mutex::new((0..count).rev().collect()))
        };
        let pool = BufferPool {
            inner: Arc::new(PoolInner {
                port,
                mem,
                size,
                count,
                group,
                refill,
                lent: AtomicUsize::new(0),
            }),
        };
        if let Refill::Ring { .. } = pool.inner.refill {
            pool.inner.lent.store(usize::from(count), Ordering::Relaxed);
            for id in 0..count {
                pool.inner.give_back(id);
            }
        }
        Ok(pool)
    }

    /// Buffers in the pool.
    pub fn count(&self) -> usize {
        usize::from(self.inner.count)
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> usize {
        self.inner.size
    }

    /// Buffers currently lent out (held by completions not yet dropped).
    pub fn lent(&self) -> usize {
        self.inner.lent.load(Ordering::Relaxed)
    }

    /// io_uring: the ring's address, entry count and group id, for `IORING_REGISTER_PBUF_RING`.
    pub(crate) fn ring_registration(&self) -> Option<(u64, u16, u16)> {
        match &self.inner.refill {
            Refill::Ring { ring, entries, .. } => {
                Some((ring.ptr.as_ptr() as u64, *entries, self.inner.group))
            }
            Refill::Free(_) => None,
        }
    }

    pub(crate) fn port(&self) -> u64 {
        self.inner.port
    }

    pub(crate) fn group(&self) -> u16 {
        self.inner.group
    }

    /// epoll: takes a free buffer, if any.
    pub(crate) fn take(&self) -> Option<u16> {
        match &self.inner.refill {
            Refill::Free(free) => {
                let id = free.lock().pop()?;
                self.inner.lent.fetch_add(1, Ordering::Relaxed);
                Some(id)
            }
            Refill::Ring { .. } => None,
        }
    }

    /// The writable memory of buffer `id` (for a receive into it).
    pub(crate) fn buf_ptr(&self, id: u16) -> (*mut u8, usize) {
        self.inner.buf_ptr(id)
    }

    /// io_uring: buffer `id` was selected by the kernel (it is lent from now on).
    pub(crate) fn note_selected(&self) {
        self.inner.lent.fetch_add(1, Ordering::Relaxed);
    }

    /// Wraps buffer `id`, now holding `len` received bytes, for the completion.
    pub(crate) fn lend(&self, id: u16, len: usize) -> PooledBuf {
        PooledBuf { pool: self.inner.clone(), id, len: len.min(self.inner.size) }
    }

    /// Gives back a buffer that was taken but not filled (epoll, would block).
    pub(crate) fn untake(&self, id: u16) {
        self.inner.give_back(id);
    }
}

impl PoolInner {
    fn buf_ptr(&self, id: u16) -> (*mut u8, usize) {
        assert!(id < self.count, "invariant: buffer ids are below the pool's count");
        // SAFETY: `id < count`, so the offset stays inside the `count * size` allocation.
        let p = unsafe { self.mem.ptr.as_ptr().add(usize::from(id) * self.size) };
        (p, self.size)
    }

    fn give_back(&self, id: u16) {
        match &self.refill {
            Refill::Free(free) => free.lock().push(id),
            Refill::Ring { ring, entries, tail } => {
                let mut tail = tail.lock();
                let (addr, len) = self.buf_ptr(id);
                let slot = usize::from(*tail & (*entries - 1));
                let base = ring.ptr.as_ptr().cast::<RingEntry>();
                // SAFETY: `slot < entries`, so the entry lies inside the ring allocation.
                let e = unsafe { base.add(slot) };
                // The entry is past the published tail until the release store below, and the
                // tail lock is held, so neither the kernel nor another thread reads it now. Its
                // fields are written one by one: `resv` is left alone, as in entry 0 it is the
                // tail itself.
                // SAFETY: `e` points at an entry inside the ring allocation (see above).
                let addr_field = unsafe { &raw mut (*e).addr };
                // SAFETY: a valid, aligned, unshared field (see above).
                unsafe { addr_field.write(addr as u64) };
                // SAFETY: as for `addr`.
                let len_field = unsafe { &raw mut (*e).len };
                // SAFETY: as for `addr`.
                unsafe { len_field.write(len as u32) };
                // SAFETY: as for `addr`.
                let bid_field = unsafe { &raw mut (*e).bid };
                // SAFETY: as for `addr`.
                unsafe { bid_field.write(id) };
                *tail = tail.wrapping_add(1);
                // SAFETY: `base` points at entry 0 of the ring allocation.
                let tail_ptr = unsafe { &raw mut (*base).resv };
                // SAFETY: the ring's tail is the `resv` field of entry 0 (the kernel ABI), a
                // naturally aligned u16 inside the allocation, that the kernel and we access only
                // atomically.
                let tail_field = unsafe { AtomicU16::from_ptr(tail_ptr) };
                tail_field.store(*tail, Ordering::Release);
            }
        }
        self.lent.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A received buffer lent from a [`BufferPool`]: derefs to the bytes received; dropping it gives
/// the buffer back to the pool.
pub struct PooledBuf {
    pool: Arc<PoolInner>,
    id: u16,
    len: usize,
}

impl PooledBuf {
    /// The buffer's id in its pool.
    pub fn id(&self) -> u16 {
        self.id
    }
}

impl Deref for PooledBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let (p, _) = self.pool.buf_ptr(self.id);
        // SAFETY: this `PooledBuf` is the buffer's only owner until it drops (the kernel and the
        // free list get it back only in `Drop`), and its first `len <= size` bytes were written
        // by the receive that produced it (the rest is zero-initialised memory).
        unsafe { std::slice::from_raw_parts(p, self.len) }
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(self.id);
    }
}

impl fmt::Debug for PooledBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledBuf").field("id", &self.id).field("len", &self.len).finish()
    }
}
