//! The syslog input path as one function of bytes, for the fuzz target
//! (`fuzz/fuzz_targets/syslog_input.rs`) and the corpus replay in `cargo test`.

use std::net::SocketAddr;

use super::{Format, Input, Received, Template, last_frame, next_frame, render};
use crate::syslog::Framing;

/// Frames `data` as one TCP connection's stream (the framing detected from its first byte, as
/// a connection's is), cut into pieces at the positions `data`'s own bytes pick (as the kernel
/// might deliver it), renders every frame in both formats under a template of every field, and
/// also renders `data` whole as a datagram. Returns the frames rendered. Panics only on a bug:
/// a frame longer than the limit, a frame that used no bytes, or a path that leaves the
/// output directory.
pub fn drive(data: &[u8]) -> usize {
    const MAX: usize = 256;
    let template = Template::parse(
        "{host}/{app}/{year}-{month}-{day}-{hour}-{facility}-{severity}-{input}.log",
    )
    .expect("invariant: a valid template");
    let rx = Received::now();
    let peer: Option<SocketAddr> = Some(([10, 0, 0, 1], 514).into());
    let (mut path, mut line) = (String::new(), Vec::new());
    let mut out = |msg: &[u8], fault: Option<&str>, input: Input| {
        for format in [Format::Text, Format::Json] {
            path.clear();
            line.clear();
            render(msg, fault, peer, input, &rx, &template, format, &mut path, &mut line);
            assert!(!path.starts_with('/') && !path.split('/').any(|c| c == ".."), "{path}");
            assert_eq!(line.last(), Some(&b'\n'), "a rendered line ends with LF");
        }
    };
    let mut framing = Framing::Unknown;
    let mut buf = Vec::new();
    let mut frames = 0;
    let mut fed = 0;
    while fed < data.len() {
        let step = 1 + usize::from(data[fed] % 61);
        let end = (fed + step).min(data.len());
        buf.extend_from_slice(&data[fed..end]);
        fed = end;
        let mut used = 0;
        while let Some((f, n)) = next_frame(&buf[used..], &mut framing, MAX) {
            assert!(n > 0 && f.msg.len() <= MAX, "a frame of {} bytes used {n}", f.msg.len());
            out(f.msg, f.fault, Input::Tcp);
            frames += 1;
            used += n;
        }
        buf.drain(..used);
    }
    if let Some(f) = last_frame(&buf, framing) {
        out(f.msg, f.fault, Input::Tcp);
        frames += 1;
    }
    out(data, None, Input::Udp);
    frames + 1
}
