//! SIGINT / SIGTERM for a graceful stop, SIGHUP for a reopen.
//!
//! signal-hook's handlers write to a self-pipe; the waiting is done here, not by its blocking
//! iterators: those panic on any error from the pipe other than EINTR, and a debugger or
//! tracer attaching to the server (gdb -p, strace -p) can make the read fail with the
//! kernel-internal ERESTARTSYS (512), which took the whole server down. Here every such error
//! is a spurious wake-up.

use std::io;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

/// The signals `set` deliver, one at a time, for as long as the process lives.
struct Arrivals {
    delivery: SignalDelivery<UnixStream, SignalOnly>,
}

impl Arrivals {
    fn new(set: &[i32]) -> io::Result<Self> {
        let (read, write) = UnixStream::pair()?;
        let delivery = SignalDelivery::with_pipe(read, write, SignalOnly, set.iter().copied())?;
        Ok(Arrivals { delivery })
    }

    /// Blocks until one of the signals arrives; returns its number.
    fn next(&mut self) -> i32 {
        loop {
            if let Some(sig) = self.delivery.pending().next() {
                return sig;
            }
            let mut fds = [PollFd::new(self.delivery.get_read(), PollFlags::IN)];
            if poll(&mut fds, None).is_err() {
                // EINTR, or ERESTARTSYS under a tracer: look again. A lasting error (none is
                // known) must not spin a core.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// SIGINT and SIGTERM, caught from the moment this is made: install it before the server
/// announces that it is ready (prints its address, writes a pid file), or a supervisor's
/// SIGTERM right after the announcement meets the default disposition and kills the process
/// instead of stopping it gracefully.
pub struct StopSignal {
    arrivals: Arrivals,
}

impl std::fmt::Debug for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopSignal").finish_non_exhaustive()
    }
}

impl StopSignal {
    /// Installs the handlers; from now on SIGINT and SIGTERM are caught.
    ///
    /// # Errors
    /// The signal handlers could not be installed.
    pub fn install() -> io::Result<StopSignal> {
        Ok(StopSignal { arrivals: Arrivals::new(&[SIGINT, SIGTERM])? })
    }

    /// Blocks until SIGINT or SIGTERM arrives (or has arrived since [`StopSignal::install`])
    /// and returns its number. A second signal while the caller is stopping exits the process
    /// at once with status 130 (the usual "press Ctrl-C twice to force").
    ///
    /// # Errors
    /// The thread that watches for the second signal could not be started.
    pub fn wait(self) -> io::Result<i32> {
        let mut arrivals = self.arrivals;
        let first = arrivals.next();
        std::thread::Builder::new().name("iocp-signal".into()).spawn(move || {
            arrivals.next();
            tracing::warn!("second stop signal: exiting without waiting");
            std::process::exit(130);
        })?;
        Ok(first)
    }
}

/// Installs the SIGINT/SIGTERM handlers, then blocks as [`StopSignal::wait`] does. A signal
/// that arrives before this call meets the default disposition: a server should
/// [`StopSignal::install`] before it announces that it is ready.
///
/// # Errors
/// The signal handlers could not be installed.
pub fn wait_for_stop_signal() -> io::Result<i32> {
    StopSignal::install()?.wait()
}

/// Calls `f` on a thread of its own at every SIGHUP (a log collector reopens its files), from
/// now on.
///
/// # Errors
/// The signal handler could not be installed.
pub fn on_hangup(f: impl Fn() + Send + 'static) -> io::Result<()> {
    let mut arrivals = Arrivals::new(&[SIGHUP])?;
    std::thread::Builder::new().name("iocp-sighup".into()).spawn(move || {
        loop {
            arrivals.next();
            f();
        }
    })?;
    Ok(())
}
