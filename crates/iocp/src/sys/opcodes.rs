//! The io_uring opcodes and kernel features the drivers may use, named once.
//!
//! Each operation (`sys/op/*.rs`) declares the opcodes its SQEs use (`OpCode::OPCODES`) and
//! the features it relies on (`OpCode::FEATURES`); the driver's own are [`DRIVER`] and
//! [`DRIVER_FEATURES`]. The probe requires all of them, so a kernel that passes the probe can
//! run every operation the port offers. Tests scan the sources and fail when a file builds an
//! opcode its operations do not declare, so the probe and the code cannot drift apart.

use io_uring::opcode;

/// An io_uring opcode: the `io_uring::opcode` type name used in the source, the name the
/// probe reports, and its code.
pub(crate) struct Opcode {
    /// Read by the drift tests only.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) rust: &'static str,
    pub(crate) name: &'static str,
    pub(crate) code: u8,
}

const fn op(rust: &'static str, name: &'static str, code: u8) -> Opcode {
    Opcode { rust, name, code }
}

pub(crate) const NOP: Opcode = op("Nop", "NOP", opcode::Nop::CODE);
pub(crate) const ASYNC_CANCEL: Opcode =
    op("AsyncCancel2", "ASYNC_CANCEL", opcode::AsyncCancel2::CODE);
pub(crate) const ACCEPT: Opcode = op("Accept", "ACCEPT", opcode::Accept::CODE);
pub(crate) const ACCEPT_MULTI: Opcode = op("AcceptMulti", "ACCEPT", opcode::AcceptMulti::CODE);
pub(crate) const CONNECT: Opcode = op("Connect", "CONNECT", opcode::Connect::CODE);
pub(crate) const RECV: Opcode = op("Recv", "RECV", opcode::Recv::CODE);
pub(crate) const SEND: Opcode = op("Send", "SEND", opcode::Send::CODE);
pub(crate) const RECVMSG: Opcode = op("RecvMsg", "RECVMSG", opcode::RecvMsg::CODE);
pub(crate) const SENDMSG: Opcode = op("SendMsg", "SENDMSG", opcode::SendMsg::CODE);
pub(crate) const POLL_ADD: Opcode = op("PollAdd", "POLL_ADD", opcode::PollAdd::CODE);
pub(crate) const READ: Opcode = op("Read", "READ", opcode::Read::CODE);
pub(crate) const WRITE: Opcode = op("Write", "WRITE", opcode::Write::CODE);
pub(crate) const SHUTDOWN: Opcode = op("Shutdown", "SHUTDOWN", opcode::Shutdown::CODE);

/// The opcodes `sys/uring.rs` builds itself: the NOP of an injected fault or a wake-up, and
/// the cancels.
pub(crate) const DRIVER: &[Opcode] = &[NOP, ASYNC_CANCEL];

/// What the driver itself relies on: closing a port cancels everything at once.
pub(crate) const DRIVER_FEATURES: &[Feature] = &[Feature::CancelAny];

/// Opcodes the probe reports for information; nothing builds them (the drift tests check).
pub(crate) const INFO: &[Opcode] = &[
    op("Splice", "SPLICE", opcode::Splice::CODE),
    op("LinkTimeout", "LINK_TIMEOUT", opcode::LinkTimeout::CODE),
    op("MsgRingData", "MSG_RING", opcode::MsgRingData::CODE),
    op("SendZc", "SEND_ZC", opcode::SendZc::CODE),
];

/// Behaviours beyond opcodes that operations rely on; the probe tries each on its own ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Feature {
    /// `IORING_ACCEPT_MULTISHOT` (Linux 5.19): `accept_multi`.
    MultishotAccept,
    /// `IORING_REGISTER_PBUF_RING` (Linux 5.19): `recv_pooled`'s provided-buffer ring.
    BufferRing,
    /// `IORING_ASYNC_CANCEL_ANY` (Linux 5.19): closing a port cancels everything at once.
    CancelAny,
}

impl Feature {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Feature::MultishotAccept => "multishot ACCEPT",
            Feature::BufferRing => "provided-buffer ring",
            Feature::CancelAny => "ASYNC_CANCEL_ANY",
        }
    }
}

/// The `opcode::X` type names a source text builds, directly or through the shared SQE
/// helpers (`send_sqe` builds `Send`, `recv_sqe` builds `Recv`).
#[cfg(test)]
pub(crate) fn emitted(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in src.match_indices("opcode::") {
        let rest = &src[i + "opcode::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        // `use io_uring::{opcode, ...}` and `opcode::X::CODE` in tables are not emissions,
        // but a listed name is harmless either way.
        if name.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            out.push(name);
        }
    }
    for (helper, name) in [("send_sqe(", "Send"), ("recv_sqe(", "Recv")] {
        if src.contains(helper) {
            out.push(name.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{DRIVER, emitted};

    #[test]
    fn the_scan_finds_an_unlisted_opcode() {
        let names = emitted("let e = opcode::Fsync::new(fd).build(); opcode::Recv::new(..)");
        assert_eq!(names, ["Fsync", "Recv"]);
        assert_eq!(emitted("send_sqe(fd, rest)"), ["Send"]);
        assert!(!DRIVER.iter().any(|u| u.rust == "Fsync"));
    }
}
