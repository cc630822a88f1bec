//! Arbitrary bytes through `Site::parse` then `Site::respond`, pipelined, on a small temporary
//! docroot. Run with `cargo +nightly fuzz run http_request fuzz/corpus/http_request`.

#![no_main]

use std::sync::OnceLock;

use iocp_http::{Site, fuzzing};
use libfuzzer_sys::fuzz_target;

/// The docroot is one fixed directory, made once and reused by every run and job (libFuzzer
/// exits without running destructors, so a per-process directory would be left behind each time).
static SITE: OnceLock<Site> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let site = SITE.get_or_init(|| {
        let dir = std::env::temp_dir().join("iocp-http-fuzz-docroot");
        if !dir.join("with index/index.html").is_file() {
            fuzzing::sample_docroot(&dir).expect("fuzz docroot");
        }
        fuzzing::site(&dir).expect("fuzz site")
    });
    fuzzing::drive(site, data);
});
