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
