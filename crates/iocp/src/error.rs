//! The port's own outcomes. An operation's failure is not here: it is data in its
//! [`Completion`](crate::Completion).

use std::error::Error;
use std::fmt;
use std::io;

use crate::completion::Payload;

/// Why [`CompletionPort::get`](crate::CompletionPort::get) returned without a packet.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum GetError {
    /// The timeout elapsed first (Win32: `WAIT_TIMEOUT`, 258).
    TimedOut,
    /// The port was closed; nothing more will arrive (Win32: `ERROR_ABANDONED_WAIT_0`, 735, for
    /// a waiter; `ERROR_INVALID_HANDLE` for a later call).
    Closed,
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GetError::TimedOut => "timed out waiting for a completion packet",
            GetError::Closed => "the completion port is closed",
        })
    }
}

impl Error for GetError {}

impl From<GetError> for io::Error {
    fn from(e: GetError) -> Self {
        let kind = match e {
            GetError::TimedOut => io::ErrorKind::TimedOut,
            GetError::Closed => io::ErrorKind::BrokenPipe,
        };
        io::Error::new(kind, e)
    }
}

/// A packet [`CompletionPort::post`](crate::CompletionPort::post) could not queue, because the
/// port is closed; the context comes back.
#[derive(Debug)]
pub struct PostError<C>(pub C);

impl<C> PostError<C> {
    /// Takes back the context that was not posted.
    pub fn into_inner(self) -> C {
        self.0
    }
}

impl<C> fmt::Display for PostError<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cannot post: the completion port is closed")
    }
}

impl<C: fmt::Debug> Error for PostError<C> {}

/// An operation refused at submission. It was never started, so no completion will come; its
/// context and buffers come back here, untouched.
pub struct SubmitError<C> {
    pub(crate) error: io::Error,
    pub(crate) context: C,
    pub(crate) payload: Payload,
}

impl<C> SubmitError<C> {
    /// Why the operation was refused: `InvalidInput` for bad arguments, `BrokenPipe` when the
    /// port or the handle is closed.
    pub fn error(&self) -> &io::Error {
        &self.error
    }

    /// Takes back the context and the buffers.
    pub fn into_parts(self) -> (io::Error, C, Payload) {
        (self.error, self.context, self.payload)
    }

    /// Takes back the context.
    pub fn into_context(self) -> C {
        self.context
    }
}

impl<C> fmt::Debug for SubmitError<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("error", &self.error)
            .field("payload", &self.payload)
            .finish()
    }
}

impl<C> fmt::Display for SubmitError<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation refused: {}", self.error)
    }
}

impl<C> Error for SubmitError<C> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.error)
    }
}

impl<C> From<SubmitError<C>> for io::Error {
    fn from(e: SubmitError<C>) -> Self {
        e.error
    }
}
