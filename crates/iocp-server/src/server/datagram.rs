//! Datagram inputs on a server's port and pool: a UDP socket with receives kept posted, each
//! datagram handed to [`Service::on_datagram`] on a worker.

use std::net::UdpSocket;

use super::{
    AssertUnwindSafe, Completion, Ctx, Handle, Mutex, Ordering, OwnedFd, Payload, Server, Service,
    Shared, bump, cancelled, catch_unwind, io,
};
use iocp::CompletionKey;

/// The key datagram sockets are associated with.
const DGRAM_KEY: CompletionKey = CompletionKey(16);
/// A posted packet asking a worker to post a datagram socket's receives.
const DGRAM_START_KEY: CompletionKey = CompletionKey(17);

struct Dgram<S: Service> {
    handle: Handle<Ctx<S>>,
    buf_size: usize,
    posted: usize,
}

/// The datagram sockets of a server.
pub(super) struct Datagrams<S: Service> {
    socks: Mutex<Vec<Dgram<S>>>,
}

impl<S: Service> Default for Datagrams<S> {
    fn default() -> Self {
        Datagrams { socks: Mutex::new(Vec::new()) }
    }
}

impl<S: Service> Datagrams<S> {
    pub(super) fn close_all(&self) {
        for d in self.socks.lock().iter() {
            d.handle.close();
        }
    }
}

impl<S: Service> Server<S> {
    /// Receives datagrams on `socket` (bound by the caller, with its buffer sizes set) on this
    /// server's port and workers: `posted` receives of `buf_size` bytes each stay posted, and
    /// every datagram goes to [`Service::on_datagram`]. A graceful stop closes the socket.
    ///
    /// # Errors
    /// `buf_size` or `posted` is 0, the server is stopping, or the socket cannot be
    /// associated with the port.
    pub fn add_datagram(
        &self,
        socket: UdpSocket,
        buf_size: usize,
        posted: usize,
    ) -> io::Result<()> {
        if buf_size == 0 || posted == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a datagram input needs a buffer size and at least one posted receive",
            ));
        }
        let s = &self.shared;
        if s.stopping.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the server is stopping"));
        }
        let handle = s.port.associate(OwnedFd::from(socket), DGRAM_KEY)?;
        let index = {
            let mut socks = s.datagrams.socks.lock();
            socks.push(Dgram { handle, buf_size, posted });
            socks.len() - 1
        };
        // Started by a worker, as every server operation is (see `Server::start`).
        s.port
            .post(0, DGRAM_START_KEY, Ctx::Datagram(index))
            .map_err(|_| io::Error::other("the server's port closed"))
    }
}

impl<S: Service> Shared<S> {
    fn post_datagram(&self, handle: &Handle<Ctx<S>>, buf: Vec<u8>, index: usize) {
        if let Err(e) = handle.recv_from(buf, Ctx::Datagram(index))
            && !self.stopping.load(Ordering::Relaxed)
            && !handle.is_closed()
        {
            bump(&self.counters.io_errors);
            tracing::warn!(error = %e.into_parts().0, "could not post a datagram receive");
        }
    }

    /// A datagram receive completed (or the start packet arrived).
    pub(super) fn on_datagram(&self, c: Completion<Ctx<S>>, index: usize) {
        let Some((handle, buf_size, posted)) = self
            .datagrams
            .socks
            .lock()
            .get(index)
            .map(|d| (d.handle.clone(), d.buf_size, d.posted))
        else {
            return;
        };
        if c.key() == DGRAM_START_KEY {
            for _ in 0..posted {
                self.post_datagram(&handle, Vec::with_capacity(buf_size), index);
            }
            return;
        }
        let res = c.result();
        let Payload::RecvFrom(mut buf, from) = c.into_parts().1 else { return };
        let peer = from.and_then(|a| a.as_socket());
        let truncated = match res {
            Ok(_) => Some(false),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Some(true),
            Err(e) => {
                if self.stopping.load(Ordering::Relaxed) || handle.is_closed() || cancelled(&e) {
                    return;
                }
                // ICMP errors and the like: nothing lost on this socket; receive on.
                tracing::debug!(error = %e, "datagram receive failed");
                None
            }
        };
        if let Some(truncated) = truncated {
            self.live.transferred(false, true, buf.len());
            let data = &buf[..];
            if catch_unwind(AssertUnwindSafe(|| self.service.on_datagram(data, peer, truncated)))
                .is_err()
            {
                bump(&self.counters.panics);
                tracing::error!("service panicked in on_datagram");
            }
        }
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        buf.clear();
        if buf.capacity() < buf_size {
            buf.reserve_exact(buf_size);
        }
        self.post_datagram(&handle, buf, index);
    }
}
