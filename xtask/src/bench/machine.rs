//! What the bench ran on: the machine and the versions of everything measured.

use std::{fs, path::Path};

use super::report::{Machine, Software};
use crate::sh;

/// Now, as `2026-01-31T12:00:00Z`.
pub fn date_utc() -> String {
    sh::query(sh::cmd("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))
        .map_or_else(|| "unknown".into(), |d| d.trim().to_owned())
}

/// The machine now; `loadavg_start` was taken before the measurements.
pub fn machine(loadavg_start: Option<String>) -> Machine {
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, usize::from),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".into(), |k| k.trim().to_owned()),
        cpu_model: cpu_model(),
        loadavg_start,
        loadavg_end: loadavg(),
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Option<String> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn cpu_model() -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

pub fn software(bpftrace: Option<&Path>) -> Software {
    let first_line = |text: Option<String>| {
        text.and_then(|t| {
            t.lines()
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_owned())
        })
    };
    // nginx -v and wrk -v print to stderr (wrk exits 1): ask dpkg for the versions instead.
    let package = |name: &str| {
        first_line(sh::query(sh::cmd("dpkg-query").args([
            "-W",
            "-f",
            "${Version}",
            name,
        ])))
    };
    let commit = sh::query(sh::cmd("git").args(["rev-parse", "--short=12", "HEAD"]));
    let dirty = sh::query(sh::cmd("git").args([
        "status",
        "--porcelain",
        "--",
        "tls-probe",
        "tls-probe-ebpf",
        "tls-probe-common",
    ]))
    .is_some_and(|s| !s.trim().is_empty());
    Software {
        tls_probe_commit: first_line(commit).map(|c| if dirty { c + "-dirty" } else { c }),
        nginx: package("nginx-light").map(|v| format!("nginx-light {v}")),
        wrk: package("wrk").map(|v| format!("wrk {v}")),
        openssl: first_line(sh::query(sh::cmd("openssl").arg("version"))),
        bpftrace: bpftrace.and_then(|b| first_line(sh::query(sh::cmd(b).arg("--version")))),
    }
}
