//! `tls-probe demo` on every scenario: its recap says "seen" for each finding the scenario
//! declares (tls_probe_scenario_spec::guide, the one source of truth for the header and
//! the recap) and "UNEXPECTED" or "NOT SEEN" for none. Then, independently of the recap's
//! own matching, every finding in the NDJSON output must be one that some part of the
//! scenario declares: a finding the engine starts to report on a scenario fails here until
//! the scenario declares it.
//!
//! Each runs the real workload program under real probes, for a few seconds of load.

use std::process::Command;

use common::{TLS_PROBE, read_ndjson, scenarios, summary};
use tls_probe_scenario_spec::{
    ScenarioName,
    guide::{self, On},
};

use crate::common;

/// Runs `tls-probe demo NAME --duration SECS -o FILE`; returns the recap's verdict lines
/// and the finding records. With `replay`, the export holds every event (`--events`) and
/// `tls-probe report` must replay it to the live run's findings: the same ids, in the same
/// order, with the same numbers.
fn demo(
    name: ScenarioName,
    secs: u32,
    replay: bool,
) -> (Vec<String>, Vec<serde_json::Value>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("demo.ndjson");
    let out = Command::new(TLS_PROBE)
        .args(["demo", name.as_str(), "--duration", &secs.to_string(), "-o"])
        .arg(&output)
        .args(replay.then_some("--events"))
        .env("TLS_PROBE_SCENARIOS", scenarios())
        .output()
        .expect("running tls-probe demo");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let verdicts: Vec<String> = stderr
        .lines()
        .skip_while(|l| !l.contains("compared with what this workload should show"))
        .skip(1)
        .take_while(|l| !l.starts_with("  the workload"))
        .filter(|l| !l.starts_with("      "))
        .map(str::to_owned)
        .collect();
    let records = read_ndjson(&output);
    assert_eq!(
        summary(&records)["stop_reason"],
        "targets_exited",
        "{stderr}"
    );
    if replay {
        let rep = Command::new(TLS_PROBE)
            .args(["report", "--json"])
            .arg(&output)
            .output()
            .expect("running tls-probe report");
        assert!(
            rep.status.success(),
            "{}",
            String::from_utf8_lossy(&rep.stderr)
        );
        let rep: serde_json::Value = serde_json::from_slice(&rep.stdout).unwrap();
        assert_eq!(rep["findings_from"], "replay");
        let live = &summary(&records)["findings"];
        assert!(
            live.as_array().is_some_and(|f| f.len() >= 2),
            "{name}: too few findings to compare: {live:#}"
        );
        assert_eq!(
            &rep["findings"], live,
            "{name}: the replay of the recording differs from the live run"
        );
    }
    let findings = records
        .into_iter()
        .filter(|r| r["type"] == "finding")
        .collect();
    (verdicts, findings, stderr)
}

fn check(name: ScenarioName, secs: u32) {
    let (verdicts, findings, stderr) = demo(name, secs, false);
    let parts = guide::parts(name);
    let mut want = Vec::new();
    for part in &parts {
        for f in part.guide().findings {
            want.push(format!("    seen       {} on {}", f.kind, part.place(f)));
        }
    }
    eprintln!("{name}: recap verdicts {verdicts:#?}");
    for line in &want {
        assert!(
            verdicts.contains(line),
            "{name}: no {line:?} in the recap: {stderr}"
        );
    }
    for bad in ["UNEXPECTED", "NOT SEEN"] {
        assert!(
            !verdicts.iter().any(|l| l.contains(bad)),
            "{name}: {bad} in the recap: {stderr}"
        );
    }
    // A part that declares no finding gets its "ok" line.
    for part in parts.iter().filter(|p| p.guide().no_finding.is_some()) {
        let scope = part
            .prefix
            .map(|p| format!(" on {p}-*"))
            .unwrap_or_default();
        let ok = format!("    ok         no finding{scope}: ");
        assert!(
            verdicts.iter().any(|l| l.starts_with(&ok)),
            "{name}: no {ok:?} line: {stderr}"
        );
    }
    // The records themselves, without the recap's matching: each finding's kind is one
    // the scenario declares, on the process exactly when declared so.
    for f in &findings {
        let finding = &f["data"]["finding"];
        let kind = finding["kind"].as_str().expect("kind");
        let on_process = finding["tid"].is_null();
        let declared = parts
            .iter()
            .flat_map(|p| p.guide().findings)
            .any(|d| d.kind == kind && matches!(d.on, On::Process) == on_process);
        assert!(declared, "{name}: undeclared finding {f}");
    }
}

#[test]
fn every_scenario_has_a_recap_test() {
    let src = include_str!("demo_recap.rs");
    for name in ScenarioName::ALL {
        let test = format!("check(ScenarioName::{name:?},");
        assert!(src.contains(&test), "no demo recap test for {name}");
    }
}

#[test]
fn healthy() {
    check(ScenarioName::Healthy, 4);
}

#[test]
fn spin_loop() {
    check(ScenarioName::SpinLoop, 4);
}

#[test]
fn asyncio_spin() {
    check(ScenarioName::AsyncioSpin, 4);
}

#[test]
fn busy_poll() {
    check(ScenarioName::BusyPoll, 4);
}

#[test]
fn bad_write_retry() {
    check(ScenarioName::BadWriteRetry, 4);
}

#[test]
fn handshake_storm() {
    check(ScenarioName::HandshakeStorm, 6);
}

#[test]
fn resumed_handshakes() {
    check(ScenarioName::ResumedHandshakes, 6);
}

#[test]
fn concurrent_ssl() {
    check(ScenarioName::ConcurrentSsl, 4);
}

/// The default demo: three parts in one process, so the storm's server shares the CPU.
#[test]
fn mixed() {
    check(ScenarioName::Mixed, 15);
}

/// The mixed demo recorded with every event (`--events`), and replayed by `report` to the
/// same findings in the same order (the engine is deterministic; the live session and
/// `report` drive one pipeline). Writing every event makes the agent the bottleneck and the
/// ring buffer overflows: what it lost, the live engine never saw either, so the replay must
/// still match. The recap is not judged here: `mixed` does that, without the extra load.
#[test]
fn mixed_replays_to_the_live_findings() {
    demo(ScenarioName::Mixed, 15, true);
}

#[test]
fn async_stall() {
    check(ScenarioName::AsyncStall, 4);
}

#[test]
fn async_quick() {
    check(ScenarioName::AsyncQuick, 4);
}

#[test]
fn async_no_jobs() {
    check(ScenarioName::AsyncNoJobs, 4);
}
