//! NDJSON output: one `{"type": ..., "data": {...}}` envelope per line.
//!
//! The first line is `start` (with `schema_version`), the last is `summary`. Each line is
//! serialized whole into a buffer and written with one `write_all`, so a failure never
//! leaves half a line; the stream is flushed after every line when it goes to a pipe or a
//! terminal, and on every tick otherwise.

use std::{
    fs::{File, OpenOptions},
    io::{self, IsTerminal, Write},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

/// Bumped when a record's fields change incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a T,
}

pub struct NdjsonWriter {
    out: Box<dyn Write + Send>,
    /// Flush after each line (pipes and terminals: a reader sees whole lines at once).
    flush_each: bool,
    path: String,
    buf: Vec<u8>,
    pub lines: u64,
}

/// Opens the output for writing, before anything is attached, so a bad path costs nothing.
///
/// A file is created with mode 0600; an existing file is refused unless `force`; a symlink
/// at the final component is never followed.
pub fn open(path: &Path, force: bool) -> Result<NdjsonWriter> {
    if path == Path::new("-") {
        let stdout = io::stdout();
        let flush_each = true;
        return Ok(NdjsonWriter::new(Box::new(stdout), flush_each, "-".into()));
    }
    let mut opts = OpenOptions::new();
    opts.write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let file: File = opts.open(path).map_err(|e| match e.raw_os_error() {
        Some(libc::EEXIST) => anyhow::anyhow!(
            "output file {} already exists; pass --force to overwrite it, or choose another path",
            path.display()
        ),
        Some(libc::ELOOP) => anyhow::anyhow!(
            "output path {} is a symbolic link; tls-probe does not follow symlinks for its output, pass the real path",
            path.display()
        ),
        _ => anyhow::Error::new(e).context(format!(
            "cannot create output file {}; check that the directory exists and is writable",
            path.display()
        )),
    })?;
    let meta = file
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        bail!("output path {} is a directory", path.display());
    }
    let flush_each = ft.is_fifo() || ft.is_char_device() || ft.is_socket();
    Ok(NdjsonWriter::new(
        Box::new(io::BufWriter::with_capacity(1 << 16, file)),
        flush_each,
        path.display().to_string(),
    ))
}

impl NdjsonWriter {
    fn new(out: Box<dyn Write + Send>, flush_each: bool, path: String) -> Self {
        Self {
            out,
            flush_each: flush_each || io::stdout().is_terminal() && path == "-",
            path,
            buf: Vec::with_capacity(4096),
            lines: 0,
        }
    }

    /// A writer over any `Write`, for tests.
    pub fn from_writer(out: Box<dyn Write + Send>, flush_each: bool) -> Self {
        Self::new(out, flush_each, "<writer>".into())
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Writes one whole line.
    pub fn record<T: Serialize>(&mut self, kind: &str, data: &T) -> Result<()> {
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, &Envelope { kind, data })
            .context("serializing an output record")?;
        self.buf.push(b'\n');
        self.out
            .write_all(&self.buf)
            .and_then(|()| {
                if self.flush_each {
                    self.out.flush()
                } else {
                    Ok(())
                }
            })
            .with_context(|| format!("writing to {}", self.path))?;
        self.lines += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        self.out
            .flush()
            .with_context(|| format!("flushing {}", self.path))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_are_envelopes_one_per_line() {
        let buf = Shared::default();
        let mut w = NdjsonWriter::from_writer(Box::new(buf.clone()), true);
        w.record("start", &serde_json::json!({"schema_version": 1}))
            .unwrap();
        w.record("summary", &serde_json::json!({"events": 0}))
            .unwrap();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["type"], "start");
        assert_eq!(v["data"]["schema_version"], 1);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn existing_file_is_refused_without_force_and_mode_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.ndjson");
        drop(open(&p, false).unwrap());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = open(&p, false).err().unwrap().to_string();
        assert!(
            err.contains("already exists") && err.contains("--force"),
            "{err}"
        );
        assert!(open(&p, true).is_ok());
    }

    #[test]
    fn symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open(&link, true).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = open(Path::new("/nonexistent-dir/x.ndjson"), false)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("check that the directory exists"));
    }
}
