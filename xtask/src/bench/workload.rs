//! The loads: wrk against nginx (keep-alive requests, or one full handshake per request),
//! and tls-probe's own spin-loop scenario, which reports how often its client woke up.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{ChildStdin, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::{
    nginx::{HandshakeCheck, Nginx},
    proc::{self, Guard},
};
use crate::sh::{self, cmd};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// wrk -t1 -c20 against nginx over keep-alive connections: requests/s.
    Keepalive,
    /// wrk -t1 -c20 with `Connection: close` against nginx without session resumption:
    /// full TLS handshakes/s.
    Handshake,
    /// `tls-probe-scenarios spin-loop`: the client's wake-ups/s.
    SpinLoop,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Self::Keepalive, Self::Handshake, Self::SpinLoop];

    pub fn name(self) -> &'static str {
        match self {
            Self::Keepalive => "keepalive",
            Self::Handshake => "handshake",
            Self::SpinLoop => "spin-loop",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Self::Keepalive => "requests/s",
            Self::Handshake => "handshakes/s",
            Self::SpinLoop => "wake-ups/s",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Keepalive => "nginx keep-alive requests (`wrk -t1 -c20`)",
            Self::Handshake => {
                "nginx full handshakes (`wrk -t1 -c20 -H 'Connection: close'`, no resumption)"
            }
            Self::SpinLoop => "spin-loop scenario client wake-ups",
        }
    }

    pub fn needs_nginx(self) -> bool {
        self != Self::SpinLoop
    }
}

/// What one load measured, beside its headline value.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Detail {
    Wrk {
        requests: u64,
        seconds: f64,
        /// wrk's "Socket errors" line, when it printed one.
        socket_errors: Option<String>,
        non_2xx: u64,
        /// Handshake workload only: what nginx logged for the requests of this run.
        nginx_log: Option<HandshakeCheck>,
    },
    Scenario {
        client_wakeups: u64,
        elapsed_ms: u64,
        counts: Value,
    },
}

impl Detail {
    /// The operations the headline value counts: requests (each a handshake in the
    /// handshake workload), or the client's wake-ups.
    pub fn operations(&self) -> Option<u64> {
        match self {
            Self::Wrk { requests, .. } => Some(*requests),
            Self::Scenario { client_wakeups, .. } => Some(*client_wakeups),
        }
    }
}

/// The headline value and its detail.
pub struct Measured {
    pub value: f64,
    pub detail: Detail,
}

/// Runs wrk for `seconds` against the workload's nginx server.
pub fn wrk(nginx: &Nginx, workload: Workload, seconds: u32) -> Result<Measured> {
    let (port, close) = match workload {
        Workload::Keepalive => (nginx.keepalive_port, false),
        Workload::Handshake => (nginx.handshake_port, true),
        Workload::SpinLoop => unreachable!("the spin-loop scenario is not served by nginx"),
    };
    let log_from = fs::metadata(&nginx.handshake_log).map_or(0, |m| m.len());
    let mut command = cmd("wrk");
    command.args(["-t1", "-c20", &format!("-d{seconds}s")]);
    if close {
        command.args(["-H", "Connection: close"]);
    }
    command.arg(format!("https://127.0.0.1:{port}/"));
    let shown = sh::display(&command);
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run `{shown}`: is wrk installed?"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut measured = parse_wrk(&stdout).with_context(|| format!("reading `{shown}`'s output"))?;
    if close {
        let check = HandshakeCheck::read(&nginx.handshake_log, log_from)?;
        if check.resumed_sessions > 0 || check.reused_connections > 0 {
            bail!(
                "the handshake workload was not all full handshakes: of {} requests nginx logged, \
                 {} resumed a session and {} reused a connection",
                check.requests,
                check.resumed_sessions,
                check.reused_connections
            );
        }
        if let Detail::Wrk { nginx_log, .. } = &mut measured.detail {
            *nginx_log = Some(check);
        }
    }
    Ok(measured)
}

fn parse_wrk(stdout: &str) -> Result<Measured> {
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix).map(str::trim))
    };
    let value: f64 = field("Requests/sec:")
        .context("no `Requests/sec:` line")?
        .parse()
        .context("`Requests/sec:` is not a number")?;
    // "  12345 requests in 5.00s, 1.23MB read"
    let (requests, seconds) = stdout
        .lines()
        .find_map(|line| {
            let (requests, rest) = line.trim().split_once(" requests in ")?;
            let seconds = rest.split_once("s,")?.0;
            Some((requests.parse().ok()?, seconds.parse().ok()?))
        })
        .context("no `N requests in Ss` line")?;
    Ok(Measured {
        value,
        detail: Detail::Wrk {
            requests,
            seconds,
            socket_errors: field("Socket errors:").map(str::to_owned),
            non_2xx: field("Non-2xx or 3xx responses:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            nginx_log: None,
        },
    })
}

/// A spin-loop scenario that has printed READY and waits for its go.
pub struct Scenario {
    guard: Guard,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub pid: u32,
    seconds: u32,
    stderr: std::path::PathBuf,
}

impl Scenario {
    pub fn start(binary: &Path, seconds: u32, dir: &Path, tag: &str) -> Result<Self> {
        let stderr = dir.join(format!("{tag}.scenario.stderr"));
        let mut command = cmd(binary);
        command
            .args(["spin-loop", "--wait-stdin", "--duration"])
            .arg(seconds.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr)?);
        let shown = sh::display(&command);
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut scenario = Self {
            guard: Guard::new(shown, child),
            stdin,
            lines,
            pid: 0,
            seconds,
            stderr,
        };
        let ready = scenario.line("READY ", Duration::from_secs(60))?;
        scenario.pid = ready["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .with_context(|| format!("READY has no pid: {ready}"))?;
        Ok(scenario)
    }

    /// The JSON after the next stdout line that starts with `prefix`.
    fn line(&mut self, prefix: &str, timeout: Duration) -> Result<Value> {
        let line = match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(err) => bail!(
                "the spin-loop scenario printed no `{prefix}` line ({err}); {}",
                proc::tail(&self.stderr, 2000)
            ),
        };
        let json = line
            .strip_prefix(prefix)
            .with_context(|| format!("expected `{prefix}...` from the scenario, got: {line}"))?;
        serde_json::from_str(json)
            .with_context(|| format!("the scenario's line is not JSON: {line}"))
    }

    /// Starts the load, and waits for the scenario's DONE line.
    pub fn run(&mut self) -> Result<Measured> {
        let mut stdin = self.stdin.take().context("the scenario was already run")?;
        stdin
            .write_all(b"go\n")
            .context("writing the go line to the scenario")?;
        drop(stdin);
        let done = self.line("DONE ", Duration::from_secs(u64::from(self.seconds) + 60))?;
        let counts = done["counts"].clone();
        let client_wakeups = counts["client_wakeups"]
            .as_u64()
            .with_context(|| format!("DONE has no counts.client_wakeups: {done}"))?;
        let elapsed_ms = done["elapsed_ms"]
            .as_u64()
            .filter(|&ms| ms > 0)
            .with_context(|| format!("DONE has no elapsed_ms: {done}"))?;
        Ok(Measured {
            value: client_wakeups as f64 * 1000.0 / elapsed_ms as f64,
            detail: Detail::Scenario {
                client_wakeups,
                elapsed_ms,
                counts,
            },
        })
    }

    /// Waits for the scenario to exit by itself after DONE.
    pub fn finish(self) -> Result<()> {
        let status = self.guard.wait(Duration::from_secs(20))?;
        if !status.success() {
            bail!(
                "the spin-loop scenario exited with {status}; {}",
                proc::tail(&self.stderr, 2000)
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let out = "Running 1s test @ https://127.0.0.1:1/\n  1 threads and 20 connections\n  \
                   506 requests in 2.04s, 71.65KB read\n  Socket errors: connect 0, read 3, write 0, timeout 0\n\
                   Requests/sec:    247.56\nTransfer/sec:     35.06KB\n";
        let measured = parse_wrk(out).unwrap();
        assert_eq!(measured.value, 247.56);
        let Detail::Wrk {
            requests,
            seconds,
            socket_errors,
            non_2xx,
            ..
        } = measured.detail
        else {
            panic!("not wrk")
        };
        assert_eq!((requests, seconds, non_2xx), (506, 2.04, 0));
        assert_eq!(
            socket_errors.as_deref(),
            Some("connect 0, read 3, write 0, timeout 0")
        );
    }
}
