//! The io_uring probe: a ring is set up, a NOP makes the round trip, every opcode the
//! operations declare (`OpCode::OPCODES` in `sys/op/*.rs`) and the driver's own are looked up,
//! and each behaviour they rely on beyond opcodes is tried. Any failure says why, in words an
//! operator can act on.

use std::time::{Duration, Instant};

use io_uring::types::{CancelBuilder, SubmitArgs, Timespec};
use io_uring::{IoUring, opcode};

use super::{errno_name, io_uring_disabled};
use crate::backend::UringCaps;
use crate::sys::bufpool::BufferPool;
use crate::sys::{op, opcodes};

/// Tries one behaviour on the probe's ring: it works or the kernel refuses it (EINVAL).
fn probe_feature(ring: &mut IoUring, feature: opcodes::Feature) -> bool {
    use opcodes::Feature;
    match feature {
        Feature::BufferRing => {
            let Ok(pool) = BufferPool::new(0, 1, 64, 0x7ff0, true) else { return false };
            let Some((addr, entries, group)) = pool.ring_registration() else { return false };
            // SAFETY: `pool` owns the ring memory and outlives the registration, which is
            // removed below before `pool` drops.
            let ok =
                unsafe { ring.submitter().register_buf_ring_with_flags(addr, entries, group, 0) }
                    .is_ok();
            if ok {
                let _ = ring.submitter().unregister_buf_ring(group);
            }
            ok
        }
        Feature::MultishotAccept | Feature::CancelAny => probe_accept_cancel(ring, feature),
    }
}

/// Starts a multishot accept on a loopback listener, then cancels it with CANCEL_ANY: an old
/// kernel answers either with EINVAL.
fn probe_accept_cancel(ring: &mut IoUring, feature: opcodes::Feature) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else { return false };
    let fd = io_uring::types::Fd(listener.as_raw_fd());
    let accept = opcode::AcceptMulti::new(fd).build().user_data(1);
    let cancel = opcode::AsyncCancel2::new(CancelBuilder::any()).build().user_data(2);
    {
        // SAFETY: the caller owns the ring; this is its only submission queue handle.
        let mut sq = unsafe { ring.submission_shared() };
        // SAFETY: the accept passes no addresses; the listener outlives the wait below.
        if unsafe { sq.push(&accept) }.is_err() {
            return false;
        }
    }
    if ring.submit().is_err() {
        return false;
    }
    {
        // SAFETY: as above.
        let mut sq = unsafe { ring.submission_shared() };
        // SAFETY: a cancel entry points at no memory.
        if unsafe { sq.push(&cancel) }.is_err() {
            return false;
        }
    }
    let (mut accept_res, mut cancel_res) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(2);
    while (accept_res.is_none() || cancel_res.is_none()) && Instant::now() < deadline {
        let ts = Timespec::new().nsec(50_000_000);
        let args = SubmitArgs::new().timespec(&ts);
        let _ = ring.submitter().submit_with_args(1, &args);
        // SAFETY: the caller owns the ring; no other CompletionQueue exists.
        for cqe in unsafe { ring.completion_shared() } {
            match cqe.user_data() {
                // A multishot accept that is still armed reports with the MORE flag; the final
                // CQE (the cancel's ECANCELED, or EINVAL) comes without it.
                1 if !io_uring::cqueue::more(cqe.flags()) => accept_res = Some(cqe.result()),
                2 => cancel_res = Some(cqe.result()),
                _ => {}
            }
        }
    }
    match feature {
        opcodes::Feature::MultishotAccept => accept_res.is_some_and(|r| r != -libc::EINVAL),
        _ => cancel_res.is_some_and(|r| r != -libc::EINVAL),
    }
}

/// The io_uring probe: setup, a NOP round trip, the opcode probe and the features the port needs.
pub(crate) fn probe() -> Result<UringCaps, String> {
    use io_uring::register::Probe;

    let mut ring = IoUring::new(8).map_err(|e| {
        let mut why = format!("io_uring_setup failed with {}", errno_name(&e));
        match (e.raw_os_error(), io_uring_disabled()) {
            (Some(libc::EPERM), Some(v)) => {
                why.push_str(&format!("; kernel.io_uring_disabled = {v}"));
                if v == "0" {
                    why.push_str(" (so a seccomp filter blocks it, e.g. Docker's default profile)");
                }
            }
            (Some(libc::ENOSYS), _) => {
                why.push_str(" (kernel without io_uring, or blocked by seccomp)")
            }
            (Some(libc::ENOMEM), _) => why.push_str(" (RLIMIT_MEMLOCK too low for the ring)"),
            _ => {}
        }
        why
    })?;
    // A NOP round trip: io_uring_enter can be filtered even when setup is not.
    // SAFETY: this function owns the ring, so this is its only submission queue handle.
    let mut sq = unsafe { ring.submission_shared() };
    // SAFETY: a NOP entry points at no memory.
    let pushed = unsafe { sq.push(&opcode::Nop::new().build().user_data(0x4e4f50)) };
    drop(sq);
    if pushed.is_err() {
        return Err("could not queue a NOP on a fresh ring".into());
    }
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter failed with {}", errno_name(&e)))?;
    // SAFETY: this function owns the ring; no other CompletionQueue exists.
    let cqe = unsafe { ring.completion_shared() }.next();
    match cqe {
        Some(c) if c.user_data() == 0x4e4f50 && c.result() >= 0 => {}
        Some(c) => return Err(format!("NOP round trip returned {}", c.result())),
        None => return Err("NOP round trip produced no completion".into()),
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed with {}", errno_name(&e)))?;
    // Every opcode and feature the operations declare (sys/op/*.rs, `OpCode::OPCODES`; tests
    // keep each declaration in step with its file) and the driver's own, each name once, in
    // the kernel's order (opcode number, `Feature` order) whatever the order of the ops.
    let mut declared: Vec<&opcodes::Opcode> =
        opcodes::DRIVER.iter().chain(op::OPS.iter().flat_map(|o| o.opcodes)).collect();
    declared.sort_by_key(|u| u.code);
    let mut opcodes: Vec<(&'static str, bool)> = Vec::new();
    for u in declared {
        if !opcodes.iter().any(|(n, _)| *n == u.name) {
            opcodes.push((u.name, probe.is_supported(u.code)));
        }
    }
    let mut wanted: Vec<opcodes::Feature> = opcodes::DRIVER_FEATURES
        .iter()
        .chain(op::OPS.iter().flat_map(|o| o.features))
        .copied()
        .collect();
    wanted.sort();
    wanted.dedup();
    let features = wanted.into_iter().map(|f| (f.name(), probe_feature(&mut ring, f))).collect();
    let caps = UringCaps {
        opcodes,
        ext_arg: ring.params().is_feature_ext_arg(),
        nodrop: ring.params().is_feature_nodrop(),
        features,
        optional: opcodes::INFO.iter().map(|u| (u.name, probe.is_supported(u.code))).collect(),
    };
    let missing: Vec<&str> = caps.opcodes.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        return Err(format!("kernel lacks io_uring opcodes {}", missing.join(", ")));
    }
    if !caps.ext_arg {
        return Err("kernel lacks IORING_FEAT_EXT_ARG (timed waits need Linux 5.11)".into());
    }
    let missing: Vec<&str> = caps.features.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
    if !missing.is_empty() {
        return Err(format!("kernel lacks io_uring {} (Linux 5.19 has them)", missing.join(", ")));
    }
    Ok(caps)
}
