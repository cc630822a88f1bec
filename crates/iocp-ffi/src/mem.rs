//! The few places that touch caller memory. Every function here is `unsafe` with one contract:
//! the pointer is NULL or valid for the access, as the Win32 function's documentation requires
//! of the caller (buffers and OVERLAPPEDs stay valid until the operation's packet is dequeued).

use std::sync::atomic::{AtomicUsize, Ordering};

use std::mem::offset_of;

use crate::types::{OVERLAPPED, STATUS_PENDING};

/// A pointer to the field at `off` of the OVERLAPPED at `ov` (address arithmetic only).
fn field<T>(ov: *mut OVERLAPPED, off: usize) -> *mut T {
    ov.cast::<u8>().wrapping_add(off).cast::<T>()
}

/// Writes `v` to `p` unless `p` is NULL.
///
/// # Safety
/// `p` is NULL or valid for a write of `T` and aligned.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-NULL, and valid and aligned by the caller's contract.
        unsafe { p.write(v) };
    }
}

/// Reads `p`, or `None` if it is NULL.
///
/// # Safety
/// `p` is NULL or valid for a read of `T` and aligned.
pub(crate) unsafe fn get<T: Copy>(p: *const T) -> Option<T> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-NULL, and valid and aligned by the caller's contract.
    Some(unsafe { p.read() })
}

/// Copies `len` caller bytes into a new vector (empty for NULL or 0).
///
/// # Safety
/// `p` is NULL or valid for reads of `len` bytes.
pub(crate) unsafe fn copy_in(p: *const u8, len: usize) -> Vec<u8> {
    if p.is_null() || len == 0 {
        return Vec::new();
    }
    // SAFETY: valid for `len` bytes by the caller's contract; the slice lives only for the copy.
    let s = unsafe { std::slice::from_raw_parts(p, len) };
    s.to_vec()
}

/// Copies `src` to caller memory at `dst`.
///
/// # Safety
/// `dst` is valid for writes of `src.len()` bytes and does not overlap `src`.
pub(crate) unsafe fn copy_out(dst: usize, src: &[u8]) {
    if dst == 0 || src.is_empty() {
        return;
    }
    // SAFETY: the caller guarantees `dst` is writable for `src.len()` bytes; a Rust slice and
    // caller memory cannot overlap.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
}

/// Copies `src` across the caller's buffers `(address, length)` in order, with no gaps; returns
/// the bytes copied.
///
/// # Safety
/// Every buffer is valid for writes of its length.
pub(crate) unsafe fn scatter(bufs: &[(usize, usize)], mut src: &[u8]) -> usize {
    let mut done = 0;
    for &(ptr, len) in bufs {
        if src.is_empty() {
            break;
        }
        let n = len.min(src.len());
        // SAFETY: each buffer is writable for its length (the caller's contract), n <= len.
        unsafe { copy_out(ptr, &src[..n]) };
        src = &src[n..];
        done += n;
    }
    done
}

/// The OVERLAPPED's `Internal` as an atomic: the dequeuing thread writes it while another may
/// poll it (`HasOverlappedIoCompleted`, `GetOverlappedResult`).
///
/// # Safety
/// `ov` is non-NULL, 8-aligned and valid for the returned lifetime.
unsafe fn internal<'a>(ov: *mut OVERLAPPED) -> &'a AtomicUsize {
    // SAFETY: `Internal` is the first field, a usize at offset 0 of a valid, aligned
    // OVERLAPPED (caller's contract); AtomicUsize has the layout of usize.
    unsafe { AtomicUsize::from_ptr(ov.cast::<usize>()) }
}

/// Marks an operation started: `Internal = STATUS_PENDING`, `InternalHigh = 0`.
///
/// # Safety
/// `ov` is non-NULL and valid (the caller's OVERLAPPED for the operation being started).
pub(crate) unsafe fn ov_pending(ov: *mut OVERLAPPED) {
    // SAFETY: `InternalHigh` of a valid OVERLAPPED (caller's contract).
    unsafe { field::<usize>(ov, offset_of!(OVERLAPPED, InternalHigh)).write(0) };
    // SAFETY: `ov` is non-NULL, 8-aligned and valid (this function's contract): `Internal` at
    // offset 0.
    unsafe { internal(ov) }.store(STATUS_PENDING, Ordering::Release);
}

/// Writes an operation's result: `InternalHigh = bytes`, then `Internal = status`.
///
/// # Safety
/// `ov` is non-NULL and valid: the OVERLAPPED of an operation that has not been dequeued yet
/// (Windows forbids freeing it before).
pub(crate) unsafe fn ov_done(ov: *mut OVERLAPPED, status: u32, bytes: usize) {
    // SAFETY: `ov` is non-NULL and valid, not yet dequeued (this function's contract):
    // `InternalHigh` is written before the Release store of `Internal` publishes it.
    unsafe { field::<usize>(ov, offset_of!(OVERLAPPED, InternalHigh)).write(bytes) };
    // SAFETY: `ov` is non-NULL, 8-aligned and valid (this function's contract); the Release store
    // publishes `InternalHigh`.
    unsafe { internal(ov) }.store(status as usize, Ordering::Release);
}

/// Reads `(Internal, InternalHigh)`.
///
/// # Safety
/// `ov` is non-NULL and valid.
pub(crate) unsafe fn ov_read(ov: *mut OVERLAPPED) -> (usize, usize) {
    // SAFETY: `ov` is non-NULL, 8-aligned and valid (this function's contract).
    let status = unsafe { internal(ov) }.load(Ordering::Acquire);
    // SAFETY: caller's contract; written before the Release store of `Internal` we acquired.
    let bytes = unsafe { field::<usize>(ov, offset_of!(OVERLAPPED, InternalHigh)).read() };
    (status, bytes)
}

/// The `hEvent` of an OVERLAPPED, as a value (its low bit says: no packet).
///
/// # Safety
/// `ov` is non-NULL and valid.
pub(crate) unsafe fn ov_event(ov: *mut OVERLAPPED) -> usize {
    // SAFETY: `ov` is non-NULL and valid (this function's contract): a plain read of a pointer
    // field, never dereferenced.
    unsafe { field::<usize>(ov, offset_of!(OVERLAPPED, hEvent)).read() }
}

/// The 64-bit file offset of an OVERLAPPED.
///
/// # Safety
/// `ov` is non-NULL and valid.
pub(crate) unsafe fn ov_offset(ov: *mut OVERLAPPED) -> u64 {
    // SAFETY: `ov` is non-NULL and valid (this function's contract): a plain read of a `u32` field.
    let lo = unsafe { field::<u32>(ov, offset_of!(OVERLAPPED, Offset)).read() };
    // SAFETY: `ov` is non-NULL and valid (this function's contract): a plain read of a `u32` field.
    let hi = unsafe { field::<u32>(ov, offset_of!(OVERLAPPED, OffsetHigh)).read() };
    (u64::from(hi) << 32) | u64::from(lo)
}
