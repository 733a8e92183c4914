//! Helpers for tests that run the project's scenario programs under `tls-probe attach`
//! and read the findings it writes. Declared by each test file that uses it, next to
//! `mod common`.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::common::{Attached, Proc, TLS_PROBE, wait_for};

/// CLOCK_MONOTONIC now, in ns: the clock of every `ts_ns` tls-probe writes.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A scenario program (`tls-probe scenario NAME --wait-stdin`), stopped at READY.
pub struct Scenario {
    pub name: String,
    pub proc: Proc,
    /// The READY record: pid, and per thread its role, tid, fds and SSL*s.
    pub ready: Value,
}

impl Scenario {
    /// Starts the scenario and waits for its READY line.
    pub fn start(name: &str, duration_secs: f64) -> Self {
        let mut proc = Proc::spawn(Command::new(TLS_PROBE).args([
            "scenario",
            name,
            "--wait-stdin",
            "--duration",
            &duration_secs.to_string(),
        ]));
        let ready = proc.read_until(&format!("{name}'s READY line"), |l| {
            serde_json::from_str(l.strip_prefix("READY ")?).ok()
        });
        Self {
            name: name.to_owned(),
            proc,
            ready,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The first thread announced with `role`.
    pub fn thread(&self, role: &str) -> &Value {
        self.ready["threads"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["role"] == role))
            .unwrap_or_else(|| panic!("no {role} thread in READY: {}", self.ready))
    }

    pub fn tid(&self, role: &str) -> u64 {
        self.thread(role)["tid"].as_u64().expect("tid")
    }

    /// The first fd of the first `role` thread.
    pub fn fd(&self, role: &str) -> i64 {
        self.thread(role)["fds"][0].as_i64().expect("an fd")
    }

    /// The first SSL* of the first `role` thread.
    pub fn ssl(&self, role: &str) -> u64 {
        self.thread(role)["ssl"][0].as_u64().expect("an SSL*")
    }

    /// Releases the load; returns the CLOCK_MONOTONIC time just before.
    pub fn go(&mut self) -> u64 {
        let t = monotonic_ns();
        self.proc.send_line("go");
        t
    }

    /// Waits for DONE and the exit; returns the DONE record.
    pub fn done(&mut self, timeout: Duration) -> Value {
        let name = self.name.clone();
        let done = self.proc.read_until(&format!("{name}'s DONE line"), |l| {
            serde_json::from_str(l.strip_prefix("DONE ")?).ok()
        });
        let status = self.proc.wait_exit(&format!("{name} to exit"), timeout);
        assert!(status.success(), "{name} failed: {status}");
        done
    }
}

/// `tls-probe attach --pid PID -o FILE` without `--events`: the agent keeps up with a
/// target that makes a hundred thousand probe events a second only if it does not also
/// write each one. Waits until the `start` record shows the probes are attached.
pub fn attach(dir: &Path, pid: u32) -> Attached {
    let output = dir.join(format!("attach-{pid}.ndjson"));
    let proc = Proc::spawn(
        Command::new(TLS_PROBE)
            .args(["attach", "--pid", &pid.to_string(), "-o"])
            .arg(&output)
            .stderr(Stdio::inherit()),
    );
    let mut me = Attached { proc, output };
    let (child, out) = (&mut me.proc.child, &me.output);
    wait_for(
        "tls-probe to attach (start record)",
        Duration::from_secs(60),
        || {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("tls-probe exited early with {status}");
            }
            let text = std::fs::read_to_string(out).ok()?;
            text.lines()
                .next()
                .filter(|l| l.contains("\"start\""))
                .map(|_| ())
        },
    );
    me
}

/// The records written so far (the run goes on): whole lines only.
pub fn records_so_far(a: &Attached) -> Vec<Value> {
    let text = std::fs::read_to_string(&a.output).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The `data` (a FindingChange) of every `finding` record.
pub fn changes(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "finding")
        .map(|r| &r["data"])
        .collect()
}

/// The findings opened, of `kind`.
pub fn opened<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    changes(records)
        .into_iter()
        .filter(|c| c["change"] == "opened" && c["finding"]["kind"] == kind)
        .map(|c| &c["finding"])
        .collect()
}

/// One line per finding change, for assertion messages.
pub fn describe(records: &[Value]) -> String {
    let lines: Vec<String> = changes(records)
        .iter()
        .map(|c| {
            let f = &c["finding"];
            format!(
                "{} {} pid={} tid={} fd={} ssl={}: {}",
                c["change"], f["kind"], f["pid"], f["tid"], f["fd"], f["ssl"], f["evidence"]
            )
        })
        .collect();
    if lines.is_empty() {
        "no finding".to_owned()
    } else {
        lines.join("\n")
    }
}

/// The last snapshot's entry for thread `tid`, if any.
pub fn last_thread_snapshot(records: &[Value], tid: u64) -> Option<&Value> {
    records
        .iter()
        .rev()
        .filter(|r| r["type"] == "snapshot")
        .find_map(|r| {
            r["data"]["threads"]
                .as_array()?
                .iter()
                .find(|t| t["tid"] == tid)
        })
}

/// The highest value of `field` for thread `tid` over every snapshot.
pub fn peak_thread_metric(records: &[Value], tid: u64, field: &str) -> f64 {
    records
        .iter()
        .filter(|r| r["type"] == "snapshot")
        .filter_map(|r| {
            r["data"]["threads"]
                .as_array()?
                .iter()
                .find(|t| t["tid"] == tid)?[field]
                .as_f64()
        })
        .fold(0.0, f64::max)
}

/// Nanoseconds as seconds, for messages.
pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}
