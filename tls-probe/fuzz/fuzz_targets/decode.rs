//! Any bytes as one ring-buffer record: `decode` returns an event or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = tls_probe_core::decode::decode(data) {
        // The error must render (it is counted and logged).
        let _ = e.to_string();
    }
});
