//! NDJSON output: one `{"type": ..., "data": {...}}` envelope per line.
//!
//! The first line is `start` (with `schema_version`), the last is `summary`. Lines are
//! serialized whole into a buffer of whole lines, which goes to the file with one
//! `write_all` when it passes 64 KiB, on every tick, and (for pipes and terminals) at the
//! end of every ring-buffer batch. If a write fails (disk full), the file is truncated back
//! to the end of the last whole line and the writer refuses any further line, so what is on
//! disk is always valid NDJSON.
//!
//! With a [`Rotation`] (`watch --rotate-size`), once the file passes its size at a tick, it
//! is renamed FILE.1 (FILE.1 to FILE.2, ..., the oldest beyond `keep` deleted) and a new
//! FILE begins with the run's `start` record again. Only whole lines are ever in a file;
//! the rotated files end where they were cut, and the last FILE ends with the `summary`.

use std::{
    fs::{File, OpenOptions},
    io::{self, IsTerminal, Seek, Write},
    os::{
        fd::AsFd,
        unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt},
    },
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;

pub use super::record::SCHEMA_VERSION;
use super::{Flush, Record, Sink};

/// Lines are written out once this many bytes are pending.
const WRITE_AT: usize = 64 * 1024;

pub struct NdjsonWriter {
    file: File,
    /// A regular file: a failed write is truncated back to the last whole line.
    regular: bool,
    /// Write out at the end of each batch (pipes, terminals): a reader sees lines at once.
    flush_each: bool,
    path: String,
    /// Whole lines not written yet.
    pending: Vec<u8>,
    pending_lines: u64,
    /// Set by a failed write: nothing more is written after it.
    failed: bool,
    /// Lines on disk (or in the pipe).
    pub lines: u64,
    /// Bytes written to the current file.
    pub bytes: u64,
    /// The file tls-probe created: removed if dropped before any line reached it, so that a
    /// run that failed to attach leaves nothing behind.
    created: Option<std::path::PathBuf>,
}

/// Opens the output for writing, before anything is attached, so a bad path costs nothing.
///
/// `-` is standard output. A file is created with mode 0600; an existing file is refused
/// unless `force`; a symlink at the final component is never followed.
pub fn open(path: &Path, force: bool) -> Result<NdjsonWriter> {
    if path == Path::new("-") {
        let fd = io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating standard output")?;
        let tty = io::stdout().is_terminal();
        return NdjsonWriter::new(File::from(fd), "-".into(), tty);
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
        Some(libc::EEXIST) => anyhow!(
            "output file {} already exists; pass --force to overwrite it, or choose another path",
            path.display()
        ),
        Some(libc::ELOOP) => anyhow!(
            "output path {} is a symbolic link; tls-probe does not follow symlinks for its output, pass the real path",
            path.display()
        ),
        Some(libc::EISDIR) => anyhow!("output path {} is a directory", path.display()),
        _ => anyhow::Error::new(e).context(format!(
            "cannot create output file {}; check that the directory exists and is writable",
            path.display()
        )),
    })?;
    if force {
        // An overwritten file keeps its old mode: make it private like a new one.
        let meta = file
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private (mode 0600)", path.display()))?;
        }
    }
    let mut writer = NdjsonWriter::new(file, path.display().to_string(), false)?;
    writer.created = Some(path.to_owned());
    Ok(writer)
}

impl NdjsonWriter {
    fn new(file: File, path: String, tty: bool) -> Result<Self> {
        let ft = file
            .metadata()
            .with_context(|| format!("stat {path}"))?
            .file_type();
        if ft.is_dir() {
            bail!("output path {path} is a directory");
        }
        Ok(Self {
            regular: ft.is_file(),
            flush_each: tty || ft.is_fifo() || ft.is_char_device() || ft.is_socket(),
            file,
            path,
            pending: Vec::with_capacity(WRITE_AT + 4096),
            pending_lines: 0,
            failed: false,
            lines: 0,
            bytes: 0,
            created: None,
        })
    }

    /// A writer over an already open file, for tests.
    pub fn from_file(file: File, path: &str) -> Result<Self> {
        Self::new(file, path.into(), false)
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether lines go out at the end of every batch (pipes and terminals).
    pub fn flushes_each_batch(&self) -> bool {
        self.flush_each
    }

    /// Queues one whole line: `{"type": kind, "data": data}`.
    pub fn record<T: Serialize>(&mut self, kind: &str, data: &T) -> Result<()> {
        #[derive(Serialize)]
        struct Envelope<'a, T: Serialize> {
            #[serde(rename = "type")]
            kind: &'a str,
            data: &'a T,
        }
        self.line(&Envelope { kind, data })
    }

    /// Queues one record as a whole line.
    pub fn write(&mut self, rec: Record<'_>) -> Result<()> {
        self.line(&rec)
    }

    fn line<T: Serialize>(&mut self, value: &T) -> Result<()> {
        if self.failed {
            bail!("{}: not written after an earlier write error", self.path);
        }
        let mark = self.pending.len();
        if let Err(e) = serde_json::to_writer(&mut self.pending, value) {
            self.pending.truncate(mark);
            return Err(e).context("serializing an output record");
        }
        self.pending.push(b'\n');
        self.pending_lines += 1;
        if self.pending.len() >= WRITE_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the pending lines out with one `write_all`.
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if self.failed {
            bail!("{}: not written after an earlier write error", self.path);
        }
        // Where this write starts, to cut a partial write back to it.
        let start = if self.regular {
            self.write_offset().ok()
        } else {
            None
        };
        if let Err(err) = self.file.write_all(&self.pending) {
            self.failed = true;
            let kept = match start {
                Some(at) => match self.file.set_len(at) {
                    Ok(()) => format!(
                        "; the file keeps the {} whole lines written before",
                        self.lines
                    ),
                    Err(e) => format!("; cutting it back to its last whole line failed: {e}"),
                },
                None => String::new(),
            };
            return Err(anyhow::Error::new(err).context(format!("writing to {}{kept}", self.path)));
        }
        self.lines += self.pending_lines;
        self.bytes += self.pending.len() as u64;
        self.pending_lines = 0;
        self.pending.clear();
        Ok(())
    }

    /// Queues a line serialized before (it ends with a newline).
    fn raw_line(&mut self, line: &[u8]) -> Result<()> {
        if self.failed {
            bail!("{}: not written after an earlier write error", self.path);
        }
        self.pending.extend_from_slice(line);
        self.pending_lines += 1;
        Ok(())
    }

    /// Writes out what is pending, renames the file FILE.1 (shifting older ones up to
    /// FILE.`keep`, deleting the one beyond) and goes on in a new, empty FILE. Only for a
    /// file tls-probe created.
    pub fn rotate(&mut self, keep: u32) -> Result<()> {
        self.flush()?;
        let Some(path) = self.created.clone() else {
            return Ok(());
        };
        shift(&path, keep)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("creating {} after rotating it", path.display()))?;
        self.file = file;
        self.bytes = 0;
        Ok(())
    }

    /// The offset the next write lands at: the end for an O_APPEND file (e.g. `>> log`).
    fn write_offset(&mut self) -> io::Result<u64> {
        let flags = nix::fcntl::fcntl(self.file.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        if flags & libc::O_APPEND != 0 {
            Ok(self.file.metadata()?.len())
        } else {
            self.file.stream_position()
        }
    }
}

impl Drop for NdjsonWriter {
    fn drop(&mut self) {
        if self.lines == 0
            && let Some(path) = self.created.take()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Renames `path` to `path.1`, `path.1` to `path.2`, ... up to `path.keep`, deleting the
/// one beyond: the renames of a rotation. `watch` also calls it at start on an output file
/// left by an earlier run, which is kept instead of overwritten.
pub fn shift(path: &Path, keep: u32) -> Result<()> {
    let numbered = |n: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        std::path::PathBuf::from(p)
    };
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))
                .with_context(|| format!("rotating {}", from.display()))?;
        }
    }
    std::fs::rename(path, numbered(1))
        .with_context(|| format!("rotating {} to {}", path.display(), numbered(1).display()))
}

/// When to rotate the output file, and how many rotated files to keep.
#[derive(Clone, Copy, Debug)]
pub struct Rotation {
    pub size: u64,
    pub keep: u32,
}

/// The NDJSON export as a sink: every record, events only with `--events`.
pub struct NdjsonSink {
    writer: NdjsonWriter,
    events: bool,
    rotation: Option<Rotation>,
    /// The `start` line, to begin each rotated file with.
    start_line: Option<Vec<u8>>,
    /// A finding record was written since the last flush: it goes out at the end of the
    /// batch, not at the next once-a-second tick, so that a finding reaches a file within
    /// a batch of the event that opened it.
    finding_written: bool,
}

impl NdjsonSink {
    pub fn new(writer: NdjsonWriter, events: bool) -> Self {
        Self {
            writer,
            events,
            rotation: None,
            start_line: None,
            finding_written: false,
        }
    }

    /// Rotates the output file as `r` says (a regular file tls-probe created only).
    pub fn rotating(mut self, r: Rotation) -> Self {
        self.rotation = Some(r);
        self
    }
}

impl Sink for NdjsonSink {
    fn record(&mut self, rec: Record<'_>) -> Result<()> {
        if let Record::Start(_) = rec
            && self.rotation.is_some()
        {
            let mut line = serde_json::to_vec(&rec).context("serializing the start record")?;
            line.push(b'\n');
            self.start_line = Some(line);
        }
        match rec {
            Record::Event(_) if !self.events => Ok(()),
            Record::Summary(_) => {
                self.writer.write(rec)?;
                self.writer.flush()
            }
            Record::Finding(_) => {
                self.finding_written = true;
                self.writer.write(rec)
            }
            _ => self.writer.write(rec),
        }
    }

    fn flush(&mut self, at: Flush) -> Result<()> {
        if at == Flush::Tick || self.writer.flush_each || self.finding_written {
            self.finding_written = false;
            self.writer.flush()?;
        }
        if at == Flush::Tick
            && let Some(r) = self.rotation
            && self.writer.bytes >= r.size
            && self.writer.created.is_some()
        {
            self.writer.rotate(r.keep)?;
            if let Some(line) = &self.start_line {
                self.writer.raw_line(line)?;
            }
        }
        Ok(())
    }

    fn wants_events(&self) -> bool {
        self.events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn records_are_envelopes_one_per_line_written_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.ndjson");
        let mut w = open(&p, false).unwrap();
        w.record("start", &serde_json::json!({"schema_version": 1}))
            .unwrap();
        w.record("summary", &serde_json::json!({"events": 0}))
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"", "buffered until flushed");
        w.flush().unwrap();
        let v = lines_of(&p);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["type"], "start");
        assert_eq!(v[0]["data"]["schema_version"], 1);
        assert_eq!(w.lines, 2);
        assert!(std::fs::read_to_string(&p).unwrap().ends_with('\n'));
    }

    #[test]
    fn a_large_backlog_is_written_in_whole_lines_without_flush() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.ndjson");
        let mut w = open(&p, false).unwrap();
        let big = "x".repeat(1000);
        for i in 0..100 {
            w.record("event", &serde_json::json!({"i": i, "pad": big}))
                .unwrap();
        }
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.is_empty() && text.ends_with('\n'));
        assert_eq!(text.lines().count() as u64, w.lines);
    }

    #[test]
    fn existing_file_is_refused_without_force_and_mode_is_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.ndjson");
        let w = open(&p, false).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = open(&p, false).err().unwrap().to_string();
        assert!(
            err.contains("already exists") && err.contains("--force"),
            "{err}"
        );
        drop(w);
        assert!(!p.exists(), "a writer that wrote nothing removes its file");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut w = open(&p, true).unwrap();
        w.record("start", &1).unwrap();
        w.flush().unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "an overwritten file is made private");
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
    fn missing_directory_and_directory_are_clear_errors() {
        let err = open(Path::new("/nonexistent-dir/x.ndjson"), false)
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("check that the directory exists"));
        let dir = tempfile::tempdir().unwrap();
        let err = open(dir.path(), true).err().unwrap();
        assert!(format!("{err:#}").contains("is a directory"), "{err:#}");
    }

    #[test]
    fn rotation_keeps_whole_files_that_each_begin_with_start() {
        use crate::sink::{ClockAnchor, Start, StopReason, Summary};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("watch.ndjson");
        let w = open(&p, false).unwrap();
        let mut sink = NdjsonSink::new(w, false).rotating(Rotation { size: 200, keep: 2 });
        let start = Start {
            schema_version: SCHEMA_VERSION,
            tool_version: "0".into(),
            targets: Vec::new(),
            probe_mode: crate::sink::record::ProbeMode::Auto,
            probe_modes: Default::default(),
            uprobe_links: Default::default(),
            missing_tracepoints: Vec::new(),
            events: false,
            clock: ClockAnchor {
                monotonic_ns: 1,
                unix_ns: 2,
            },
        };
        sink.record(Record::Start(&start)).unwrap();
        for i in 0..10u64 {
            let lost = crate::sink::LostRecord {
                ts_ns: i,
                new: Default::default(),
                total: Default::default(),
            };
            sink.record(Record::Lost(&lost)).unwrap();
            sink.flush(Flush::Tick).unwrap();
        }
        let summary = Summary {
            stop_reason: StopReason::Signal,
            end_ns: 0,
            duration_ns: 0,
            events: 0,
            events_by_probe: Default::default(),
            lost: Default::default(),
            uprobe_hits: 0,
            tracepoint_hits: 0,
            memory_bio_disagreements: 0,
            probes: None,
            evicted: Default::default(),
            processes: Vec::new(),
            findings: Vec::new(),
        };
        sink.record(Record::Summary(&summary)).unwrap();
        let files = [
            p.clone(),
            dir.path().join("watch.ndjson.1"),
            dir.path().join("watch.ndjson.2"),
        ];
        for f in &files {
            let v = lines_of(f);
            assert_eq!(v[0]["type"], "start", "{}", f.display());
            assert!(v.len() >= 2, "{}", f.display());
        }
        assert!(!dir.path().join("watch.ndjson.3").exists(), "keep 2");
        assert_eq!(lines_of(&p).last().unwrap()["type"], "summary");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_write_keeps_whole_lines_and_stops() {
        // /dev/full: every write fails with ENOSPC.
        let file = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut w = NdjsonWriter::from_file(file, "/dev/full").unwrap();
        w.record("start", &1).unwrap();
        let err = w.flush().unwrap_err();
        let io = err.downcast_ref::<io::Error>().unwrap();
        assert_eq!(io.raw_os_error(), Some(libc::ENOSPC));
        assert!(format!("{err:#}").contains("writing to /dev/full"));
        assert!(w.record("summary", &1).is_err(), "refused after a failure");
    }
}
