//! The fuzz corpus as a regression test, without cargo-fuzz: every input checked in under
//! tls-probe/fuzz/corpus/ (the minimized corpus of each target, and the inputs that once
//! made it panic) goes through the wire-record decoder and `tls-probe report`'s NDJSON
//! reader. Neither may panic, and what they refuse they refuse with an error that says what
//! was wrong (and, for the reader, on which line). The fuzz targets themselves are in
//! tls-probe/fuzz/fuzz_targets/.

use std::{
    fs,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
};

use tls_probe::{decode::decode, replay};

/// The files of corpus/NAME, sorted.
fn corpus(name: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the corpus {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no corpus in {}: it is checked in",
        dir.display()
    );
    files
}

/// Runs `f` on every input of corpus/NAME; fails naming every input that panicked.
fn each(name: &str, f: impl Fn(&[u8])) -> usize {
    let files = corpus(name);
    let panicked: Vec<String> = files
        .iter()
        .filter(|p| {
            let bytes = fs::read(p).expect("reading a corpus file");
            catch_unwind(AssertUnwindSafe(|| f(&bytes))).is_err()
        })
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        panicked.is_empty(),
        "{name}: these inputs panic: {panicked:#?}"
    );
    files.len()
}

#[test]
fn the_decoder_takes_every_corpus_record_without_panicking() {
    let (mut ok, mut refused) = (0, 0);
    let n = each("decode", |bytes| match decode(bytes) {
        Ok(_) => {}
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty(), "an empty error for {bytes:02x?}");
        }
    });
    for p in corpus("decode") {
        match decode(&fs::read(p).unwrap()) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("decode: {n} inputs, {ok} decoded, {refused} refused with an error");
    assert!(
        ok > 0,
        "no corpus input decodes: the corpus lost its valid records"
    );
}

#[test]
fn the_report_reader_takes_every_corpus_file_without_panicking() {
    let n = each("report", |bytes| {
        let rec = replay::read(bytes);
        if let Some(e) = &rec.error {
            assert!(
                e.line >= 1 && e.line <= rec.lines + 1,
                "{e}: after {} whole lines",
                rec.lines
            );
            assert!(e.to_string().starts_with(&format!("line {}: ", e.line)));
        } else {
            assert!(rec.summary.is_some(), "no error and no summary");
        }
        let _ = rec.final_findings();
    });
    // The seeds made from real exports read whole and replay.
    let whole = corpus("report")
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("full-") || n.starts_with("auto-"))
        })
        .map(|p| replay::read(&*fs::read(&p).unwrap()))
        .filter(|r| r.error.is_none() && r.replay.is_some())
        .count();
    eprintln!("report: {n} inputs, {whole} real exports read whole and replayed");
    assert!(whole > 0, "no real export in the corpus reads whole");
}
