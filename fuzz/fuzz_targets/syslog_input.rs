//! Arbitrary bytes through the syslog collector's input path: TCP framing (detected, delivered
//! in pieces), parsing and rendering in both formats, and the same bytes as one datagram. Run
//! with `cargo +nightly fuzz run syslog_input fuzz/corpus/syslog_input`; `cargo test` replays
//! the corpus (`crates/iocp-server/tests/syslog.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    iocp_server::syslog::fuzzing::drive(data);
});
