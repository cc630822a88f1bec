//! The C allocator's free pages, given back to the kernel.
//!
//! A server that frees a burst's buffers keeps them in glibc's arenas: its RSS would stay at
//! its busiest moment. `iocp-server`'s background reclaimer calls this (at most once a second,
//! after enough connections released their buffers); it lives here because the call is
//! `unsafe` in Rust's eyes and this crate's `sys` is where its unsafe code is fenced in, so the
//! server crate can forbid unsafe code entirely.

/// Returns the C allocator's free pages to the kernel (glibc `malloc_trim(0)`: every arena,
/// free chunks `MADV_DONTNEED`'d, the main heap's top shrunk). True when memory was released;
/// false when there was none to release, or the C library is not glibc (nothing is asked).
/// It walks every arena under its lock, so call it off the hot path.
pub fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes no pointer and touches only glibc's own arenas, under
        // their locks; it is safe to call from any thread at any time.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
