//! `tls-probe watch` with the real engine it feeds: a real Prometheus (Debian's, installed by
//! `cargo xtask setup`) scrapes it on loopback while scenario workloads misbehave, and is
//! queried over its HTTP API; the shipped alerting rules are checked with promtool; 30
//! short-lived TLS processes come and go while it runs. Privileged: run with
//! `--test-threads=1`.
//!
//! Each watch is limited with `--descendants-of` (this test's pid) and `--include-comm` to
//! the test's own workloads: these machines are shared, and a host-wide watch would also
//! probe whatever else runs on them.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{Proc, TLS_PROBE, free_port, read_ndjson, wait_for};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use scenario_common::{Scenario, monotonic_ns, require};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common, schema};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rules() -> PathBuf {
    repo().join("deploy/prometheus/tls-probe-rules.yml")
}

/// `GET path` on 127.0.0.1:port; the body, None while nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        // HTTP/1.0: a whole body, never chunked.
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200")
        .then(|| body.to_owned())
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant query to Prometheus's HTTP API.
fn query(port: u16, q: &str) -> Option<Vec<Value>> {
    let body = http_get(port, &format!("/api/v1/query?query={}", encode(q)))?;
    let v: Value = serde_json::from_str(&body).ok()?;
    (v["status"] == "success").then(|| v["data"]["result"].as_array().cloned())?
}

/// A Prometheus on loopback in a scratch directory, scraping `target` every second and
/// evaluating the shipped rules; killed on drop.
struct Prometheus {
    /// Killed on drop.
    _proc: Proc,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target: u16) -> Self {
        let bin = require("prometheus", "prometheus");
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tls-probe\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n",
                rules().display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let proc = Proc::spawn(
            Command::new(bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stderr(log),
        );
        let p = Self { _proc: proc, port };
        wait_for("Prometheus to answer", Duration::from_secs(60), || {
            http_get(port, "/-/ready")
        });
        p
    }
}

/// `tls-probe watch` with these arguments, its stderr to a file; waits for its first
/// record in `out`.
fn watch(dir: &Path, out: &Path, extra: &[&str]) -> Proc {
    let err = std::fs::File::create(dir.join("watch.stderr")).unwrap();
    let probe = Proc::spawn(
        Command::new(TLS_PROBE)
            .arg("watch")
            .arg("--descendants-of")
            .arg(std::process::id().to_string())
            .arg("-o")
            .arg(out)
            .args(extra)
            .stderr(err),
    );
    wait_for("watch's start record", Duration::from_secs(60), || {
        std::fs::read_to_string(out)
            .ok()
            .filter(|t| t.starts_with("{\"type\":\"start\""))
    });
    probe
}

/// The records written so far (the file ends in whole lines; no summary yet).
fn records_so_far(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn stop(mut probe: Proc, out: &Path) -> Vec<Value> {
    kill(Pid::from_raw(probe.pid() as i32), Signal::SIGINT).unwrap();
    let status = probe.wait_exit("tls-probe watch to stop", Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let records = read_ndjson(out);
    for (i, r) in records.iter().enumerate() {
        schema::check_line(i + 1, &r.to_string());
    }
    records
}

#[test]
fn the_shipped_rules_pass_promtool() {
    let promtool = require("promtool", "prometheus");
    for args in [
        vec![
            "check".to_owned(),
            "rules".to_owned(),
            rules().display().to_string(),
        ],
        vec![
            "test".to_owned(),
            "rules".to_owned(),
            repo()
                .join("deploy/prometheus/tls-probe-rules.test.yml")
                .display()
                .to_string(),
        ],
    ] {
        let out = Command::new(&promtool).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn prometheus_scrapes_the_findings_of_a_spin_loop_and_a_handshake_storm() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("watch.ndjson");
    let metrics = free_port();
    let addr = format!("127.0.0.1:{metrics}");
    let probe = watch(
        dir.path(),
        &out,
        &[
            "--include-comm",
            "tls-probe-scenarios",
            "--metrics-addr",
            &addr,
        ],
    );
    let prom = Prometheus::start(dir.path(), metrics);
    wait_for(
        "Prometheus to scrape tls-probe (up == 1)",
        Duration::from_secs(60),
        || {
            let r = query(prom.port, "up{job=\"tls-probe\"}")?;
            (r.first()?["value"][1] == "1").then_some(())
        },
    );
    let mut spin = Scenario::start("spin-loop", 40.0);
    let mut storm = Scenario::start("handshake-storm", 40.0);
    spin.go();
    storm.go();
    let comm = "tls-probe-scena";
    for (pid, kind) in [
        (spin.pid(), "spin_loop"),
        (storm.pid(), "handshake_saturation"),
        (storm.pid(), "low_session_resumption"),
    ] {
        let q = format!(
            "tls_probe_findings_opened_total{{job=\"tls-probe\",kind=\"{kind}\",pid=\"{pid}\"}}"
        );
        let series = wait_for(
            &format!("{kind} of pid {pid} in Prometheus"),
            Duration::from_secs(60),
            || query(prom.port, &q).filter(|r| !r.is_empty()),
        );
        let m = &series[0]["metric"];
        assert_eq!(m["comm"], comm, "{series:?}");
        assert!(
            series[0]["value"][1]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
                >= 1.0
        );
        // The gauge of open findings is there with the same labels.
        let active = query(
            prom.port,
            &format!("tls_probe_findings_active{{kind=\"{kind}\",pid=\"{pid}\"}}"),
        )
        .unwrap();
        assert_eq!(active.len(), 1, "{active:?}");
    }
    // The process labels, joined on pid: the executable and the cgroup.
    let info = query(
        prom.port,
        &format!("tls_probe_target_info{{pid=\"{}\"}}", spin.pid()),
    )
    .unwrap();
    assert_eq!(info.len(), 1, "{info:?}");
    let exe = info[0]["metric"]["executable"].as_str().unwrap();
    assert!(exe.ends_with("/tls-probe-scenarios"), "{exe}");
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", spin.pid())).unwrap();
    assert!(
        cgroup.contains(info[0]["metric"]["cgroup"].as_str().unwrap()),
        "{info:?} vs {cgroup}"
    );
    // The shipped rules are loaded and evaluate without error against the real series.
    let rules_body = http_get(prom.port, "/api/v1/rules").unwrap();
    let rules: Value = serde_json::from_str(&rules_body).unwrap();
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "tls-probe", "{rules_body}");
    for r in group["rules"].as_array().unwrap() {
        assert_eq!(r["health"], "ok", "{r}");
    }
    // A critical finding open now fires the alert, with its pid.
    let critical = query(prom.port, "tls_probe_findings_critical > 0").unwrap();
    if let Some(c) = critical.first() {
        let pid = c["metric"]["pid"].as_str().unwrap().to_owned();
        wait_for(
            "TLSProbeCriticalFinding to fire",
            Duration::from_secs(30),
            || {
                let a = query(
                    prom.port,
                    "ALERTS{alertname=\"TLSProbeCriticalFinding\",alertstate=\"firing\"}",
                )?;
                a.iter()
                    .any(|x| x["metric"]["pid"] == pid.as_str())
                    .then_some(())
            },
        );
    }
    spin.done(Duration::from_secs(60));
    storm.done(Duration::from_secs(60));
    let records = stop(probe, &out);
    let attached: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "target_attach")
        .filter_map(|r| r["data"]["pid"].as_u64())
        .collect();
    for pid in [spin.pid(), storm.pid()] {
        assert!(
            attached.contains(&u64::from(pid)),
            "{pid} not in {attached:?}"
        );
    }
    assert!(
        !attached.contains(&u64::from(std::process::id())),
        "never itself"
    );
    drop(prom);
}

#[test]
fn thirty_short_lived_tls_processes_are_each_found_and_none_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("watch.ndjson");
    let probe = watch(dir.path(), &out, &["--include-comm", "openssl"]);
    // Five at a time: each is started, kept until watch has announced it, then ends. The
    // program is the openssl tool (it links libssl.so.3, so maps it from its exec on),
    // encrypting its stdin until EOF.
    let mut started: Vec<(u32, u64)> = Vec::new();
    for _round in 0..6 {
        let mut batch = Vec::new();
        for _ in 0..5 {
            let t = monotonic_ns();
            let p = Proc::spawn(
                Command::new("openssl")
                    .args(["enc", "-aes-128-cbc", "-pbkdf2", "-pass", "pass:x", "-out"])
                    .arg("/dev/null")
                    .stderr(Stdio::null()),
            );
            started.push((p.pid(), t));
            batch.push(p);
        }
        for p in &batch {
            let pid = u64::from(p.pid());
            wait_for(
                &format!("a target_attach for pid {pid}"),
                Duration::from_secs(20),
                || {
                    records_so_far(&out)
                        .iter()
                        .any(|r| r["type"] == "target_attach" && r["data"]["pid"] == pid)
                        .then_some(())
                },
            );
        }
        for mut p in batch {
            p.close_stdin();
            p.wait_exit("openssl enc to exit", Duration::from_secs(20));
        }
    }
    // Every one of them exited: watch says so, and traces none of them any more.
    let pids: Vec<u64> = started.iter().map(|(p, _)| u64::from(*p)).collect();
    wait_for(
        "a target_exit for each of the 30",
        Duration::from_secs(30),
        || {
            let recs = records_so_far(&out);
            pids.iter()
                .all(|pid| {
                    recs.iter()
                        .any(|r| r["type"] == "target_exit" && r["data"]["pid"] == *pid)
                })
                .then_some(())
        },
    );
    // Then a snapshot that no longer lists any of them among the probed processes (they
    // are detached at the end of the tick that saw them exit).
    wait_for(
        "a snapshot without the 30 among the probed processes",
        Duration::from_secs(30),
        || {
            let recs = records_so_far(&out);
            let snap = recs.iter().rev().find(|r| r["type"] == "snapshot")?;
            let probed: Vec<u64> = snap["data"]["probes"]["processes"]
                .as_array()?
                .iter()
                .filter_map(|p| p["pid"].as_u64())
                .collect();
            pids.iter().all(|p| !probed.contains(p)).then_some(())
        },
    );
    let records = stop(probe, &out);
    let mut late = Vec::new();
    let mut delays = Vec::new();
    for (pid, spawned) in &started {
        let attach = records
            .iter()
            .find(|r| r["type"] == "target_attach" && r["data"]["pid"] == u64::from(*pid))
            .unwrap();
        let ts = attach["data"]["ts_ns"].as_u64().unwrap();
        let after = ts.saturating_sub(*spawned) as f64 / 1e9;
        // Spawned before it loaded libssl: the delay measured is an upper bound.
        delays.push(after);
        if after >= 1.0 {
            late.push((pid, after));
        }
        // Seen new with its libssl mapped, or first as the test's fork and then at its exec.
        let cause = attach["data"]["cause"].as_str().unwrap();
        assert!(["discovered", "exec"].contains(&cause), "{attach}");
    }
    delays.sort_by(f64::total_cmp);
    eprintln!(
        "found after start: median {:.3} s, max {:.3} s",
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    assert!(late.is_empty(), "found more than 1 s after start: {late:?}");
    let summary = records.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let traced: Vec<u64> = summary["data"]["probes"]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    for pid in &pids {
        assert!(!traced.contains(pid), "pid {pid} still traced: {traced:?}");
    }
}
