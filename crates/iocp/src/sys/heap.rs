//! The C allocator's free pages, given back to the kernel.
//!
//! A server that frees a burst's buffers keeps them in glibc's arenas: its RSS would stay at
//! its busiest moment. `iocp-server`'s background reclaimer calls this (at most once a second,
//! after enough connections released their buffers); it lives here because the call is
//! `unsafe` in Rust's eyes and this crate's `sys` is where its unsafe code is fenced in, so the
//! server crate can forbid unsafe code entirely.
//!
//! [`limit_heap_arenas`] is the other half: a server whose operations start on one thread and
//! complete on another frees most chunks away from the arena they came from, and glibc's
//! per-thread arenas then fragment under connection churn (DESIGN.md §5.2).

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

/// Caps the number of glibc malloc arenas (`mallopt(M_ARENA_MAX, n)`), as the environment
/// variable `MALLOC_ARENA_MAX` does. Call it before the process starts its threads: a thread
/// already attached to an arena keeps it. `n` = 0 leaves glibc's default (8 per CPU).
///
/// Returns `Ok(false)` (nothing asked) when `n` is 0, when the operator set `MALLOC_ARENA_MAX`
/// (theirs wins) or when the C library is not glibc; `Ok(true)` when the cap was set; an error
/// when glibc refused it.
pub fn limit_heap_arenas(n: usize) -> std::io::Result<bool> {
    if n == 0 || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return Ok(false);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let n = libc::c_int::try_from(n).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "arena count out of range")
        })?;
        // SAFETY: `mallopt` takes no pointer; M_ARENA_MAX only sets the limit glibc consults
        // when a thread first needs an arena (under glibc's own lock): safe from any thread.
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
        if ok == 1 { Ok(true) } else { Err(std::io::Error::other("mallopt(M_ARENA_MAX) refused")) }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_arenas_asks_nothing() {
        assert!(!limit_heap_arenas(0).unwrap());
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn an_arena_cap_is_accepted_unless_the_environment_has_one() {
        let expected = std::env::var_os("MALLOC_ARENA_MAX").is_none();
        // 64 is above what this test process will use, so it changes nothing else here.
        assert_eq!(limit_heap_arenas(64).unwrap(), expected);
    }
}
