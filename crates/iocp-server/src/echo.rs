//! The echo service: every byte received is sent back.

use std::net::SocketAddr;

use crate::server::{Io, Next, Service};

/// Echoes what it receives. Zero copies: the filled input buffer becomes the output buffer
/// (the server sizes it to the bytes that arrived, and frees it once sent and the connection
/// is idle). One receive or one send per connection is in flight at a time, so a peer
/// that does not read stops the server from reading (back-pressure): the server buffers at
/// most one input buffer per connection.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Service for Echo {
    type Conn = ();

    fn open(&self, _peer: Option<SocketAddr>) {}

    fn on_read(&self, _conn: &mut (), io: &mut Io) -> Next {
        std::mem::swap(&mut io.input, &mut io.output);
        Next::Send
    }
}
