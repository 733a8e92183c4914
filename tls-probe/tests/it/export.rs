//! The NDJSON export end to end, on the spin-loop scenario (a real libssl program that opens a
//! `spin_loop` finding within a second or two): the schema contract, `report` replaying the
//! export to the same findings, truncation, signals, a full disk, a closed pipe, and the
//! refusals that protect existing files. Privileged: run with `--test-threads=1`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::{Proc, TLS_PROBE, read_ndjson, scenarios, wait_for};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::{common, schema};

/// `tls-probe-scenarios spin-loop --wait-stdin`, held at READY until `go`.
fn spin_loop(secs: u32) -> (Proc, u32) {
    let mut p = Proc::spawn(Command::new(scenarios()).args([
        "spin-loop",
        "--wait-stdin",
        "--duration",
        &secs.to_string(),
    ]));
    let pid = p.read_until("the scenario's READY line", |l| {
        let v: Value = serde_json::from_str(l.strip_prefix("READY ")?).ok()?;
        v["pid"].as_u64()
    });
    (p, pid as u32)
}

/// `tls-probe attach --pid PID ARGS...`, stderr to a file, waiting until `output` holds the
/// `start` line (the probes are attached).
struct Probe {
    proc: Proc,
    stderr: PathBuf,
}

impl Probe {
    fn start(dir: &Path, pid: u32, args: &[&str], output: Option<&Path>) -> Self {
        let stderr = dir.join(format!("stderr-{pid}-{}", args.len()));
        let mut cmd = Command::new(TLS_PROBE);
        cmd.args(["attach", "--mode", "full", "--pid", &pid.to_string()])
            .args(args)
            .stderr(fs::File::create(&stderr).unwrap());
        if let Some(out) = output {
            cmd.arg("-o").arg(out);
        }
        let mut probe = Self {
            proc: Proc::spawn(&mut cmd),
            stderr,
        };
        if let Some(out) = output {
            let child = &mut probe.proc.child;
            let err = &probe.stderr;
            wait_for("the start record", Duration::from_secs(60), || {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "tls-probe exited early ({status}): {}",
                        fs::read_to_string(err).unwrap_or_default()
                    );
                }
                let text = fs::read_to_string(out).ok()?;
                text.starts_with("{\"type\":\"start\"").then_some(())
            });
        }
        probe
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.proc.pid() as i32), sig).expect("signalling tls-probe");
    }

    fn wait(&mut self, what: &str) -> std::process::ExitStatus {
        self.proc.wait_exit(what, Duration::from_secs(60))
    }
}

fn types(records: &[Value]) -> Vec<&str> {
    records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect()
}

fn report(file: &Path, json: bool) -> Output {
    let mut cmd = Command::new(TLS_PROBE);
    cmd.arg("report").arg(file);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("running tls-probe report")
}

/// Waits until the export at `out` holds an opened spin_loop finding.
fn wait_for_spin_finding(out: &Path) {
    wait_for(
        "an opened spin_loop finding in the export",
        Duration::from_secs(20),
        || {
            let text = fs::read_to_string(out).ok()?;
            text.lines()
                .any(|l| l.contains("\"change\":\"opened\"") && l.contains("\"spin_loop\""))
                .then_some(())
        },
    );
}

#[test]
fn export_matches_the_schema_and_report_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spin.ndjson");
    let (mut target, pid) = spin_loop(3);
    let mut probe = Probe::start(dir.path(), pid, &["--events"], Some(&out));
    target.send_line("go");
    assert!(
        target
            .wait_exit("the scenario", Duration::from_secs(30))
            .success()
    );
    let status = probe.wait("tls-probe to stop when its target exits");
    assert!(status.success(), "{status}: {}", probe.stderr());

    let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the export is private");
    let text = fs::read_to_string(&out).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        seen.insert(schema::check_line(i + 1, line).kind());
    }
    for kind in [
        "start",
        "event",
        "finding",
        "snapshot",
        "target_exit",
        "summary",
    ] {
        assert!(seen.contains(kind), "no {kind} record; saw {seen:?}");
    }
    let records = read_ndjson(&out);
    let summary = &records.last().unwrap()["data"];
    assert_eq!(summary["stop_reason"], "targets_exited");
    assert_eq!(records[0]["data"]["targets"][0]["pid"], pid);
    assert_eq!(records[0]["data"]["events"], true);
    let findings = summary["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["kind"] == "spin_loop"),
        "the live run found the spin loop: {findings:#?}"
    );

    // Round trip: the report re-runs the engine over the events to the same findings.
    let r = report(&out, true);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let rep: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(rep["complete"], true);
    assert_eq!(rep["findings_from"], "replay");
    assert_eq!(
        &rep["findings"], &summary["findings"],
        "replayed findings differ from the live run's"
    );
    assert_eq!(rep["targets"], records[0]["data"]["targets"]);
    let r = report(&out, false);
    assert!(r.status.success());
    let text = String::from_utf8(r.stdout).unwrap();
    for needle in ["[", "spin_loop", "evidence:", "why:", "fix:", "processes:"] {
        assert!(
            text.contains(needle),
            "no {needle:?} in the report:\n{text}"
        );
    }
    assert!(text.contains(&format!("pid {pid} (")), "{text}");

    // Truncation: cut the file in the middle of its fourth line.
    let cut = dir.path().join("cut.ndjson");
    let bytes = fs::read(&out).unwrap();
    let at = offset_after_lines(&bytes, 3) + 10;
    fs::write(&cut, &bytes[..at]).unwrap();
    let r = report(&cut, true);
    assert!(!r.status.success(), "a cut file is an error");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("line 4: cut off"), "{err}");
    let rep: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(rep["complete"], false);
    assert_eq!(rep["error"]["line"], 4);
    assert_eq!(
        rep["targets"], records[0]["data"]["targets"],
        "what was read"
    );

    // Corruption: a line that is not JSON.
    let bad = dir.path().join("bad.ndjson");
    let whole = text_of(&out);
    let mut lines: Vec<&str> = whole.lines().collect();
    lines[2] = "{\"type\":\"event\",\"data\":{";
    fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let r = report(&bad, false);
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("line 3: not a tls-probe record"), "{err}");
    assert!(String::from_utf8_lossy(&r.stdout).contains("INCOMPLETE"));
}

fn text_of(p: &Path) -> String {
    fs::read_to_string(p).unwrap()
}

/// The byte offset just after the first `n` lines.
fn offset_after_lines(bytes: &[u8], n: usize) -> usize {
    bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(n - 1)
        .map(|(i, _)| i + 1)
        .expect("enough lines")
}

/// Ctrl-C or SIGTERM in the middle of a run: the summary is written and the file is whole.
fn stops_on(sig: Signal, force_over_existing: bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sig.ndjson");
    let mut args = vec![];
    if force_over_existing {
        fs::write(&out, "stale bytes that must go\n".repeat(100)).unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o644)).unwrap();
        args.push("--force");
    }
    let (mut target, pid) = spin_loop(30);
    // The start line must be the new one, not the stale file's.
    let mut probe = Probe::start(dir.path(), pid, &args, Some(&out));
    target.send_line("go");
    wait_for_spin_finding(&out);
    probe.signal(sig);
    let status = probe.wait("tls-probe to stop on the signal");
    assert!(status.success(), "{status}: {}", probe.stderr());
    let records = read_ndjson(&out);
    let summary = &records.last().unwrap()["data"];
    assert_eq!(summary["stop_reason"], "signal");
    assert!(
        summary["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "spin_loop")
    );
    assert!(
        !types(&records).contains(&"event"),
        "no events without --events"
    );
    let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!text_of(&out).contains("stale"));
    // Without events the report shows what the live run recorded.
    let r = report(&out, true);
    assert!(r.status.success());
    let rep: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(rep["findings_from"], "recorded");
    assert_eq!(rep["findings"], summary["findings"]);
}

#[test]
fn sigint_writes_the_summary() {
    stops_on(Signal::SIGINT, false);
}

#[test]
fn sigterm_writes_the_summary_over_a_forced_file() {
    stops_on(Signal::SIGTERM, true);
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mounting a small tmpfs (needs root)");
        Self { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_stops_with_an_error_and_leaves_whole_lines() {
    let fs_ = SmallFs::mount("128k");
    let out = fs_.dir.path().join("full.ndjson");
    let logs = tempfile::tempdir().unwrap();
    let (mut target, pid) = spin_loop(20);
    // Every event goes to the file: the spin loop fills 128 KiB within a second.
    let mut probe = Probe::start(logs.path(), pid, &["--events"], Some(&out));
    target.send_line("go");
    let status = probe.wait("tls-probe to stop on the full disk");
    let err = probe.stderr();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("No space left on device")
            && err.contains(&format!("writing to {}", out.display())),
        "the error says what failed: {err}"
    );
    let bytes = fs::read(&out).unwrap();
    assert!(bytes.len() > 1024, "something was written");
    assert_eq!(bytes.last(), Some(&b'\n'), "no half line at the end");
    let text = String::from_utf8(bytes).unwrap();
    for (i, line) in text.lines().enumerate() {
        schema::check_line(i + 1, line);
    }
    assert!(text.starts_with("{\"type\":\"start\""));
    let r = report(&out, true);
    let rep: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert!(
        rep["error"]["message"]
            .as_str()
            .unwrap()
            .contains("without a summary"),
        "{rep}"
    );
}

#[test]
fn a_closed_stdout_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut target, pid) = spin_loop(30);
    // Without --events: a test that parsed every event in a debug build would be the
    // bottleneck, and tls-probe would wait on the full pipe (as it should).
    let mut probe = Probe::start(dir.path(), pid, &["-o", "-"], None);
    target.send_line("go");
    // Lines reach the pipe while the run goes on: wait for a snapshot, then hang up.
    let kinds: Vec<String> = {
        let mut kinds = Vec::new();
        probe.proc.read_until("a snapshot line on stdout", |l| {
            let v: Value = serde_json::from_str(l).expect("whole JSON lines on the pipe");
            kinds.push(v["type"].as_str().unwrap().to_owned());
            (v["type"] == "snapshot").then_some(())
        });
        kinds
    };
    assert_eq!(kinds[0], "start");
    drop(probe.proc.stdout.take());
    // Well before the target's own end (30 s): the closed pipe stops it, not the target.
    let status = probe.proc.wait_exit(
        "tls-probe to stop on the closed pipe",
        Duration::from_secs(20),
    );
    let err = probe.stderr();
    assert!(status.success(), "{status}: {err}");
    assert!(!err.contains("error"), "quietly: {err}");
    assert!(!err.contains("exited"), "stopped by the pipe: {err}");
}

/// Runs `tls-probe attach` expecting it to fail at once; returns stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(TLS_PROBE)
        .args(["attach", "--pid", "4194000"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_outputs_are_refused_before_attaching() {
    let dir = tempfile::tempdir().unwrap();
    let existing = dir.path().join("existing.ndjson");
    fs::write(&existing, "keep\n").unwrap();
    // The pid does not exist: each error must be about the output, found first.
    let err = refused(&["-o", existing.to_str().unwrap()]);
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&existing).unwrap(), "keep\n");

    let link = dir.path().join("link.ndjson");
    std::os::unix::fs::symlink(&existing, &link).unwrap();
    let err = refused(&["--force", "-o", link.to_str().unwrap()]);
    assert!(err.contains("symbolic link"), "{err}");
    assert_eq!(fs::read_to_string(&existing).unwrap(), "keep\n");

    let err = refused(&["-o", "/nonexistent-dir/x.ndjson"]);
    assert!(err.contains("check that the directory exists"), "{err}");

    let err = refused(&["--metrics-addr", "localhost"]);
    assert!(err.contains("--metrics-addr localhost"), "{err}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let err = refused(&["--metrics-addr", &addr]);
    assert!(err.contains("cannot listen on"), "{err}");

    let new = dir.path().join("new.ndjson");
    let err = refused(&["-o", new.to_str().unwrap()]);
    assert!(
        err.contains("4194000"),
        "a good path gets as far as the pid: {err}"
    );
    assert!(
        !new.exists(),
        "a run that wrote nothing leaves no file behind"
    );
}
