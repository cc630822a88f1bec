//! SIGINT / SIGTERM for a graceful stop.

use std::io;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Blocks until SIGINT or SIGTERM arrives and returns its number. A second signal while the
/// caller is stopping exits the process at once with status 130 (the usual "press Ctrl-C
/// twice to force").
///
/// # Errors
/// The signal handlers could not be installed.
pub fn wait_for_stop_signal() -> io::Result<i32> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let first = signals.forever().next().unwrap_or(SIGTERM);
    std::thread::Builder::new().name("iocp-signal".into()).spawn(move || {
        if signals.forever().next().is_some() {
            tracing::warn!("second stop signal: exiting without waiting");
            std::process::exit(130);
        }
    })?;
    Ok(first)
}

/// Calls `f` on a thread of its own at every SIGHUP (a log collector reopens its files), from
/// now on.
///
/// # Errors
/// The signal handler could not be installed.
pub fn on_hangup(f: impl Fn() + Send + 'static) -> io::Result<()> {
    let mut signals = Signals::new([signal_hook::consts::SIGHUP])?;
    std::thread::Builder::new().name("iocp-sighup".into()).spawn(move || {
        for _ in signals.forever() {
            f();
        }
    })?;
    Ok(())
}
