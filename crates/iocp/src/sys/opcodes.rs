//! The io_uring opcodes and features the drivers emit, in one table the probe checks.
//!
//! Every `opcode::X` that `op.rs` or `uring.rs` builds must be listed in [`USED`]; the probe
//! requires all of them (and the [`Feature`]s), so a kernel that passes the probe can run every
//! operation the port offers. A unit test scans the driver sources and fails when an opcode is
//! emitted but not listed here, so the probe and the code cannot drift apart.

use io_uring::opcode;

/// An opcode the drivers emit: the `io_uring::opcode` type name used in the source, the name the
/// probe reports, and its code.
pub(crate) struct Used {
    /// Read by the drift test only.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) rust: &'static str,
    pub(crate) name: &'static str,
    pub(crate) code: u8,
}

const fn used(rust: &'static str, name: &'static str, code: u8) -> Used {
    Used { rust, name, code }
}

/// Every opcode built by `sys/op.rs` and `sys/uring.rs`.
pub(crate) const USED: &[Used] = &[
    used("Nop", "NOP", opcode::Nop::CODE),
    used("Accept", "ACCEPT", opcode::Accept::CODE),
    used("AcceptMulti", "ACCEPT", opcode::AcceptMulti::CODE),
    used("Connect", "CONNECT", opcode::Connect::CODE),
    used("Recv", "RECV", opcode::Recv::CODE),
    used("Send", "SEND", opcode::Send::CODE),
    used("RecvMsg", "RECVMSG", opcode::RecvMsg::CODE),
    used("SendMsg", "SENDMSG", opcode::SendMsg::CODE),
    used("PollAdd", "POLL_ADD", opcode::PollAdd::CODE),
    used("AsyncCancel2", "ASYNC_CANCEL", opcode::AsyncCancel2::CODE),
    used("Read", "READ", opcode::Read::CODE),
    used("Write", "WRITE", opcode::Write::CODE),
    used("Shutdown", "SHUTDOWN", opcode::Shutdown::CODE),
];

/// Opcodes the probe reports for information; the drivers do not emit them (the unit test
/// checks that too).
pub(crate) const INFO: &[Used] = &[
    used("Splice", "SPLICE", opcode::Splice::CODE),
    used("LinkTimeout", "LINK_TIMEOUT", opcode::LinkTimeout::CODE),
    used("MsgRingData", "MSG_RING", opcode::MsgRingData::CODE),
    used("SendZc", "SEND_ZC", opcode::SendZc::CODE),
];

/// Behaviours beyond opcodes that operations rely on; the probe tries each on its own ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Feature {
    /// `IORING_ACCEPT_MULTISHOT` (Linux 5.19): `accept_multi`.
    MultishotAccept,
    /// `IORING_REGISTER_PBUF_RING` (Linux 5.19): `recv_pooled`'s provided-buffer ring.
    BufferRing,
    /// `IORING_ASYNC_CANCEL_ANY` (Linux 5.19): closing a port cancels everything at once.
    CancelAny,
}

impl Feature {
    pub(crate) const ALL: [Feature; 3] =
        [Feature::MultishotAccept, Feature::BufferRing, Feature::CancelAny];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Feature::MultishotAccept => "multishot ACCEPT",
            Feature::BufferRing => "provided-buffer ring",
            Feature::CancelAny => "ASYNC_CANCEL_ANY",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{INFO, USED};

    /// The `opcode::X` type names that appear in a source text.
    fn emitted(src: &str) -> Vec<String> {
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
        out
    }

    #[test]
    fn every_opcode_the_drivers_emit_is_required_by_the_probe() {
        let sources = [("op.rs", include_str!("op.rs")), ("uring.rs", include_str!("uring.rs"))];
        let mut seen = 0;
        for (file, src) in sources {
            for name in emitted(src) {
                seen += 1;
                assert!(
                    USED.iter().any(|u| u.rust == name),
                    "{file} builds opcode::{name}, which the io_uring probe does not require: \
                     add it to sys/opcodes.rs USED"
                );
                assert!(
                    !INFO.iter().any(|u| u.rust == name),
                    "{file} builds opcode::{name}, listed as information only: move it to USED"
                );
            }
        }
        assert!(seen >= 10, "the scan found only {seen} opcodes: has the source layout moved?");
    }

    #[test]
    fn the_scan_finds_an_unlisted_opcode() {
        let names = emitted("let e = opcode::Fsync::new(fd).build(); opcode::Recv::new(..)");
        assert_eq!(names, ["Fsync", "Recv"]);
        assert!(!USED.iter().any(|u| u.rust == "Fsync"));
    }
}
