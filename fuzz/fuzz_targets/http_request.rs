//! Arbitrary bytes through `Site::parse` then `Site::respond`, pipelined, on a small temporary
//! docroot. Run with `cargo +nightly fuzz run http_request fuzz/corpus/http_request`.

#![no_main]

use std::sync::OnceLock;

use iocp_http::{Site, fuzzing};
use libfuzzer_sys::fuzz_target;

/// The docroot lives as long as the process (libFuzzer exits without running destructors).
static SITE: OnceLock<(fuzzing::TempDocroot, Site)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (_, site) = SITE.get_or_init(|| {
        let root = fuzzing::TempDocroot::new("fuzz").expect("fuzz docroot");
        let site = fuzzing::site(root.path()).expect("fuzz site");
        (root, site)
    });
    fuzzing::drive(site, data);
});
