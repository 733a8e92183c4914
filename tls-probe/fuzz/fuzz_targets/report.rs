//! Any bytes as an NDJSON export read by `tls-probe report`: the reader (and the replay of
//! the recorded events through the tracker and the engine) returns what it could read and,
//! if it stopped early, an error naming the line; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rec = tls_probe_core::replay::read(data);
    if let Some(e) = &rec.error {
        assert!(e.line <= rec.lines + 1, "{e} after {} lines", rec.lines);
        assert!(!e.message.is_empty());
    }
    let _ = rec.final_findings();
});
