//! Shared helpers for the privileged integration tests: run tls-probe as a user would,
//! start real peers, and read the NDJSON it writes. Waits have deadlines, never fixed sleeps.

#![allow(dead_code, reason = "helpers kept for the tests that will need them")]

pub mod scenario;
pub mod ties;

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const TLS_PROBE: &str = env!("CARGO_BIN_EXE_tls-probe");

/// The scenario workload program, `tls-probe-scenarios`: `$TLS_PROBE_SCENARIOS` when set,
/// else built on first use (its own package, so `cargo test -p tls-probe` does not build it)
/// into the same target directory and profile as tls-probe, and so found next to it by
/// `tls-probe demo` too. A failed build fails the test.
pub fn scenarios() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("TLS_PROBE_SCENARIOS").filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "TLS_PROBE_SCENARIOS={} is no file",
                p.display()
            );
            return p;
        }
        let profile_dir = Path::new(TLS_PROBE).parent().expect("target/PROFILE");
        let target_dir = profile_dir.parent().expect("target");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args([
                "build",
                "--quiet",
                "--package",
                "tls-probe-scenarios",
                "--bin",
            ])
            .arg("tls-probe-scenarios")
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some(profile) => {
                cargo.args(["--profile", profile]);
            }
            None => panic!("no profile directory in {TLS_PROBE}"),
        }
        let out = cargo
            .output()
            .expect("running cargo build -p tls-probe-scenarios");
        assert!(
            out.status.success(),
            "building tls-probe-scenarios failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let exe = profile_dir.join("tls-probe-scenarios");
        assert!(exe.is_file(), "cargo built no {}", exe.display());
        exe
    })
}

/// Waits until `f` returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A child killed on drop, so a failing test leaves nothing behind.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Self {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout lines until one satisfies `f`.
    pub fn read_until<T>(&mut self, what: &str, mut f: impl FnMut(&str) -> Option<T>) -> T {
        let out = self.stdout.as_mut().expect("stdout is piped");
        let mut seen = Vec::new();
        loop {
            let mut line = String::new();
            let n = out.read_line(&mut line).expect("reading child stdout");
            assert!(n > 0, "child exited before {what}; it printed: {seen:#?}");
            if let Some(v) = f(line.trim_end()) {
                return v;
            }
            seen.push(line);
        }
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is piped");
        // One write for the whole line: a peer that forwards each read (s_client) must see
        // the line and its newline together.
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("writing to child stdin");
        stdin.flush().expect("flushing child stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for exit with a deadline; panics (after killing it) on timeout.
    pub fn wait_exit(&mut self, what: &str, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for(what, timeout, || child.try_wait().expect("try_wait"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `tls-probe attach` writing NDJSON to a file in `dir`.
pub struct Attached {
    pub proc: Proc,
    pub output: PathBuf,
}

impl Attached {
    /// Starts `tls-probe attach --pid PID --events -o FILE EXTRA...` and waits until the
    /// `start` record shows the probes are attached. In `--mode full` unless `extra` names
    /// a mode: these tests count every call.
    pub fn start(dir: &Path, pid: u32, extra: &[&str]) -> Self {
        Self::start_exe(Path::new(TLS_PROBE), dir, pid, extra)
    }

    /// [`Attached::start`] with another tls-probe executable (e.g. the release tarball's).
    pub fn start_exe(exe: &Path, dir: &Path, pid: u32, extra: &[&str]) -> Self {
        let output = dir.join(format!("attach-{pid}.ndjson"));
        let mut cmd = Command::new(exe);
        cmd.arg("attach");
        if !extra.contains(&"--mode") {
            cmd.args(["--mode", "full"]);
        }
        cmd.args(["--pid", &pid.to_string(), "--events", "-o"])
            .arg(&output)
            .args(extra)
            .stderr(Stdio::inherit());
        let proc = Proc::spawn(&mut cmd);
        let out = output.clone();
        let mut me = Self { proc, output };
        let child = &mut me.proc.child;
        wait_for(
            "tls-probe to attach (start record)",
            Duration::from_secs(60),
            || {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    panic!("tls-probe exited early with {status}");
                }
                let text = std::fs::read_to_string(&out).ok()?;
                text.lines()
                    .next()
                    .filter(|l| l.contains("\"start\""))
                    .map(|_| ())
            },
        );
        me
    }

    /// Waits for tls-probe to end by itself and returns every record.
    pub fn finish(mut self, timeout: Duration) -> Vec<Value> {
        let status = self.proc.wait_exit("tls-probe to finish", timeout);
        assert!(status.success(), "tls-probe failed: {status}");
        read_ndjson(&self.output)
    }

    /// Sends SIGINT, then waits for the summary.
    pub fn interrupt(self, timeout: Duration) -> Vec<Value> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.proc.pid() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("kill -INT tls-probe");
        self.finish(timeout)
    }
}

/// Parses an NDJSON file, checking the envelope and that it starts with `start` and ends
/// with `summary`.
pub fn read_ndjson(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("reading the output");
    assert!(text.ends_with('\n'), "output does not end with a newline");
    let records: Vec<Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}: {l}", i + 1))
        })
        .collect();
    assert_eq!(
        records.first().map(|r| &r["type"]),
        Some(&Value::from("start"))
    );
    assert_eq!(
        records.last().map(|r| &r["type"]),
        Some(&Value::from("summary"))
    );
    assert_eq!(records[0]["data"]["schema_version"], 1);
    records
}

/// The `data` of every `event` record whose probe is `probe`.
pub fn events<'a>(records: &'a [Value], probe: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "event" && r["data"]["probe"] == probe)
        .map(|r| &r["data"])
        .collect()
}

pub fn summary(records: &[Value]) -> &Value {
    &records.last().expect("records")["data"]
}

/// A self-signed RSA-2048 key and certificate for a test server, made with the openssl CLI.
pub fn cert(dir: &Path) -> (PathBuf, PathBuf) {
    cert_bits(dir, 2048)
}

/// The same with an RSA key of `bits`.
pub fn cert_bits(dir: &Path, bits: u32) -> (PathBuf, PathBuf) {
    let key = dir.join("key.pem");
    let crt = dir.join("cert.pem");
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            &format!("rsa:{bits}"),
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .stderr(Stdio::null())
        .status()
        .expect("running openssl req");
    assert!(status.success());
    (key, crt)
}

/// A free TCP port on 127.0.0.1.
/// `openssl s_server -rev` (the system's OpenSSL 3) on a free port of 127.0.0.1: sends each
/// line back reversed. Its stdin stays open (an EOF there would make it close the
/// connection); its per-connection report (cipher lists...) is dropped.
pub fn s_server_rev(dir: &Path) -> (Proc, u16) {
    let (key, crt) = cert(dir);
    let port = free_port();
    let server = Proc::spawn(
        Command::new("openssl")
            .args(["s_server", "-rev", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-key")
            .arg(&key)
            .arg("-cert")
            .arg(&crt)
            .stderr(Stdio::null()),
    );
    wait_listening(port);
    (server, port)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Waits until something listens on 127.0.0.1:port.
pub fn wait_listening(port: u16) {
    wait_for(
        &format!("a listener on 127.0.0.1:{port}"),
        Duration::from_secs(10),
        || {
            // Read /proc/net/tcp rather than connect: a probe connection would disturb
            // single-connection servers such as `openssl s_server`.
            let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
            let needle = format!(":{port:04X} 00000000:0000 0A");
            table.contains(&needle).then_some(())
        },
    );
}
