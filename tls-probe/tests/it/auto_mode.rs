//! `--mode auto`, the default, on live processes: the per-call probes are off until a cheap
//! signal makes a process suspicious, so each pathology must still be flagged within 2
//! seconds of its start by way of an escalation; healthy targets must stay clean and
//! mostly un-escalated.
//!
//! Each scenario is attached to first and released only once a snapshot shows the probes in
//! place with the per-call probes off (there is no window at attach): what is measured is
//! the trigger. "Start" is the CLOCK_MONOTONIC time of the release;
//! "flagged at" is the opened finding's `last_seen_ns`, as in tests/it/findings.rs.

use std::time::{Duration, Instant};

use common::{Attached, summary, wait_for};
use scenario_common::{
    Nginx, Scenario, attach_mode, changes, describe, opened, records_so_far, require, wrk, wrk_rate,
};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common};

const BAR_NS: u64 = 2_000_000_000;
const SEC_NS: u64 = 1_000_000_000;
const EXIT: Duration = Duration::from_secs(30);

/// The `probes.processes` entry of `pid` in the last snapshot so far.
fn last_probes(records: &[Value], pid: u32) -> Option<Value> {
    records
        .iter()
        .rev()
        .filter(|r| r["type"] == "snapshot")
        .find_map(|r| {
            r["data"]["probes"]["processes"]
                .as_array()?
                .iter()
                .find(|p| p["pid"] == pid)
                .cloned()
        })
}

/// Waits for a snapshot of `pid` in auto mode: attached, and not escalated (no window
/// opens at attach).
fn attached_unescalated(a: &Attached, pid: u32) {
    wait_for(
        "a snapshot with per_call false and no escalation",
        Duration::from_secs(20),
        || {
            let p = last_probes(&records_so_far(a), pid)?;
            (p["per_call"] == false && p["escalations_total"] == 0).then_some(())
        },
    );
}

struct Run {
    sc: Scenario,
    start: u64,
    done: Value,
    records: Vec<Value>,
}

/// Runs scenario `name` under `tls-probe attach` (default mode), released once attached;
/// waits for `expect` to be opened while it runs.
fn run(name: &str, duration: f64, expect: &str) -> Run {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut sc = Scenario::start(name, duration);
    let probe = attach_mode(dir.path(), sc.pid(), "auto");
    attached_unescalated(&probe, sc.pid());
    let released = Instant::now();
    let start = sc.go();
    loop {
        let so_far = records_so_far(&probe);
        if !opened(&so_far, expect).is_empty() {
            break;
        }
        assert!(
            released.elapsed().as_secs_f64() < duration,
            "no {expect} in the output while {name} ran in auto mode; it has:\n{}",
            describe(&so_far)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = sc.done(EXIT);
    let records = probe.finish(EXIT);
    Run {
        sc,
        start,
        done,
        records,
    }
}

/// The first `expect` finding, flagged within the bar; returns it. Prints the timing and
/// the escalations.
fn flagged<'a>(r: &'a Run, kind: &str, bar_ns: u64) -> &'a Value {
    let found = opened(&r.records, kind);
    let f = found
        .first()
        .unwrap_or_else(|| panic!("no {kind}:\n{}", describe(&r.records)));
    let at = f["last_seen_ns"].as_u64().expect("last_seen_ns");
    let took = at.saturating_sub(r.start);
    let s = summary(&r.records);
    let p = &s["probes"]["processes"][0];
    eprintln!(
        "{}: {kind} flagged {:.2} s after the start in auto mode; escalations {} (last \
         reason {}), per-call probes on for {:.1} s of the run",
        r.sc.name,
        took as f64 / 1e9,
        p["escalations_total"],
        p["reason"],
        p["escalated_ns_total"].as_u64().unwrap_or(0) as f64 / 1e9,
    );
    assert!(
        took <= bar_ns,
        "{kind} flagged {:.2} s after the start, over the bar: {f}",
        took as f64 / 1e9
    );
    assert_eq!(f["pid"], r.sc.pid(), "{f}");
    f
}

#[test]
fn spin_loop_is_flagged_through_an_escalation() {
    let r = run("spin-loop", 5.0, "spin_loop");
    let f = flagged(&r, "spin_loop", BAR_NS);
    assert_eq!(f["tid"], r.sc.tid("client"), "{f}");
    assert_eq!(f["ssl"], r.sc.ssl("client"), "{f}");
    let p = &summary(&r.records)["probes"]["processes"][0];
    assert_eq!(p["reason"], "repeated_wakeups", "{p}");
    assert!(
        opened(&r.records, "busy_epoll_loop").is_empty(),
        "{}",
        describe(&r.records)
    );
}

#[test]
fn busy_poll_is_flagged_from_the_kernel_aggregates_alone() {
    let r = run("busy-poll", 4.0, "busy_epoll_loop");
    let f = flagged(&r, "busy_epoll_loop", BAR_NS);
    assert_eq!(f["tid"], r.sc.tid("client"), "{f}");
}

#[test]
fn bad_write_retry_is_flagged_through_the_openssl_error() {
    let r = run("bad-write-retry", 5.0, "bad_write_retry");
    flagged(&r, "bad_write_retry", BAR_NS);
    let p = &summary(&r.records)["probes"]["processes"][0];
    assert_eq!(p["reason"], "ssl_error", "{p}");
    let errors = r
        .records
        .iter()
        .filter(|r| r["type"] == "summary")
        .filter_map(|r| r["data"]["events_by_probe"]["ERR_set_error"].as_u64())
        .sum::<u64>();
    assert!(errors >= 1, "no ERR_set_error event");
}

/// Seen at the socket at its first overlap (the reader blocked in read() while the writer
/// enters write()), then per call in the window the shared-fd signal opens.
#[test]
fn concurrent_ssl_use_is_flagged_at_the_socket_then_seen_per_call() {
    let r = run("concurrent-ssl", 4.0, "concurrent_ssl_use");
    let f = flagged(&r, "concurrent_ssl_use", BAR_NS);
    assert_eq!(f["fd"], r.sc.fd("reader"), "{f}");
    let e = &f["evidence"]["concurrent_ssl_use"];
    // The connection was made before the release: at the socket unless the attach window
    // saw its calls (then per call).
    assert!(
        matches!(e["seen_at"].as_str(), Some("at_socket" | "per_call")),
        "{e}"
    );
    let last = r
        .records
        .iter()
        .rev()
        .find(|x| x["type"] == "finding" && x["data"]["finding"]["id"] == f["id"])
        .map(|x| &x["data"]["finding"])
        .expect("its last record");
    let le = &last["evidence"]["concurrent_ssl_use"];
    eprintln!("concurrent-ssl: first {e}\nlast {le}");
    assert_eq!(last["ssl"], r.sc.ssl("reader"), "{last}");
    assert!(le["per_call_overlaps"].as_u64() > Some(0), "{le}");
    assert_eq!(le["connections"], 1, "one connection, however seen: {le}");
    let p = &summary(&r.records)["probes"]["processes"][0];
    assert_eq!(p["reason"], "shared_fd", "{p}");
}

#[test]
fn handshake_storm_is_flagged_without_per_call_probes() {
    let r = run("handshake-storm", 8.0, "connection_churn");
    flagged(&r, "connection_churn", BAR_NS);
    // The handshakes keep the socket I/O tracepoints on (a few reads and writes per
    // millisecond-long handshake fit their budget): the ServerHello of nearly every one.
    let io = &summary(&r.records)["probes"]["socket_io"];
    let h = &r
        .records
        .iter()
        .rev()
        .find(|x| x["type"] == "snapshot")
        .expect("a snapshot")["data"]["processes"][0]["handshakes"];
    let n = |k: &str| h[k].as_u64().unwrap_or_else(|| panic!("{k} in {h}"));
    eprintln!(
        "handshake-storm: socket I/O {io}; {} ServerHellos for {} handshakes",
        n("server_hello_total"),
        n("completed_total")
    );
    assert!(io["why"].to_string().contains("handshakes"), "{io}");
    if io["sampled"] == false {
        assert!(
            n("server_hello_total") * 100 >= n("completed_total") * 90,
            "{h}"
        );
    }
    assert!(
        !opened(&r.records, "low_session_resumption").is_empty(),
        "no low_session_resumption:\n{}",
        describe(&r.records)
    );
    // It needs 100 handshakes in its 10 s window, not a sustained second: printed, and held
    // to the run's length.
    flagged(&r, "low_session_resumption", 8 * SEC_NS);
    // handshake_saturation needs its 1 s window saturated for 0.5 s by the engine's own rule
    // (saturation_min_duration_ns), in every mode, and a server with no idle time left:
    // under the cheap probes the storm's server is faster than under the per-call ones,
    // and on a quiet machine it keeps some idle time. Judged when it had none to speak of.
    let done = r.done.clone();
    let blocked_pct = done["counts"]["server_epoll_wait_us"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e4
        / done["elapsed_ms"].as_f64().unwrap_or(1.0)
        * 1e3;
    if blocked_pct <= 10.0 {
        flagged(&r, "handshake_saturation", BAR_NS);
    } else {
        eprintln!(
            "handshake-storm: the server spent {blocked_pct:.0}% of its time blocked in epoll: \
             not saturated, handshake_saturation not required"
        );
    }
}

#[test]
fn healthy_scenario_is_clean_and_mostly_unescalated() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut sc = Scenario::start("healthy", 6.0);
    let probe = attach_mode(dir.path(), sc.pid(), "auto");
    attached_unescalated(&probe, sc.pid());
    sc.go();
    sc.done(EXIT);
    let records = probe.finish(EXIT);
    assert!(changes(&records).is_empty(), "{}", describe(&records));
    let s = summary(&records);
    let p = &s["probes"]["processes"][0];
    let on = p["escalated_ns_total"].as_u64().unwrap_or(0) as f64 / 1e9;
    let total = s["duration_ns"].as_u64().unwrap_or(1) as f64 / 1e9;
    eprintln!(
        "healthy: no finding; per-call probes on {on:.1} s of {total:.1} s, escalations {}",
        p["escalations_total"]
    );
    assert!(on <= 0.5 * total, "escalated too long: {p}");
}

#[test]
fn nginx_under_keep_alive_load_is_clean_and_mostly_unescalated() {
    require("nginx", "nginx-light");
    require("wrk", "wrk");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let nginx = Nginx::start(dir.path());
    let pid = nginx.proc.pid();
    let probe = attach_mode(dir.path(), pid, "auto");
    attached_unescalated(&probe, pid);
    let rate = wrk_rate(wrk(20, &format!("https://127.0.0.1:{}/", nginx.port)));
    let records = probe.interrupt(EXIT);
    assert!(changes(&records).is_empty(), "{}", describe(&records));
    let s = summary(&records);
    let p = &s["probes"]["processes"][0];
    let on = p["escalated_ns_total"].as_u64().unwrap_or(0) as f64 / 1e9;
    eprintln!(
        "nginx keep-alive: no finding at {rate:.0} requests/s; per-call probes on {on:.1} s \
         escalations {} (last reason {}); events {}",
        p["escalations_total"], p["reason"], s["events"]
    );
    // No window at attach, and at most one that confirmed nothing and so doubled the
    // hold-off (nginx under wrk now and then shows a long run of wake-ups for one fd): a
    // longer run pays for fewer and fewer windows.
    let n = p["escalations_total"].as_u64().unwrap_or(0);
    assert!(n <= 1, "nginx was escalated {n} times: {p}");
    assert_eq!(p["per_call"], false, "{p}");
    assert_eq!(p["confirmed_total"], 0, "{p}");
    if n == 1 {
        assert!(
            p["holdoff_ns"].as_u64().unwrap_or(0) >= 2_000_000_000,
            "{p}"
        );
    }
    assert!(on <= 2.5, "nginx was escalated for {on:.1} s: {p}");
    // A single-threaded worker serving keep-alive requests without new handshakes: the
    // socket I/O tracepoints (two to four hits per request) are detached once the attach
    // transients are over, with their rate measured while they were attached.
    let io = &s["probes"]["socket_io"];
    eprintln!("nginx keep-alive: socket I/O tracepoints at the end: {io}");
    assert_eq!(io["attached"], false, "{io}");
    assert_eq!(io["why"], serde_json::json!([]), "{io}");
    assert!(io["calls_per_sec"].is_f64(), "{io}");
}

/// A stuck async engine: the always-on ASYNC_pause_job probe names the stuck handshake's
/// SSL*, the per-call probes go on, and the rule sees the WANT_ASYNC answers.
#[test]
fn async_stall_is_flagged_through_the_async_pause_probe() {
    let r = run("async-stall", 5.0, "want_async_stall");
    let f = flagged(&r, "want_async_stall", BAR_NS);
    assert_eq!(f["tid"], r.sc.tid("server"), "{f}");
    assert_eq!(f["ssl"], r.sc.ssl("server"), "{f}");
    assert_eq!(f["fd"], r.sc.fd("server"), "{f}");
    let p = &summary(&r.records)["probes"]["processes"][0];
    assert_eq!(p["reason"], "async_pause", "{p}");
    let s = summary(&r.records);
    let pauses = s["events_by_probe"]["ASYNC_pause_job"]
        .as_u64()
        .unwrap_or(0);
    let made = r.done["counts"]["server_async_pauses"]
        .as_u64()
        .unwrap_or(0);
    eprintln!("async-stall: {pauses} ASYNC_pause_job events of the {made} pauses made");
    assert_eq!(pauses, made, "every pause is seen: the probe is always on");
}

/// A healthy async engine pauses twice per handshake: no finding, and no escalation (a
/// pause or two per connection is not a lead).
#[test]
fn brief_async_pauses_are_clean_and_unescalated() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut sc = Scenario::start("async-quick", 5.0);
    let probe = attach_mode(dir.path(), sc.pid(), "auto");
    attached_unescalated(&probe, sc.pid());
    sc.go();
    let done = sc.done(EXIT);
    let records = probe.finish(EXIT);
    assert!(changes(&records).is_empty(), "{}", describe(&records));
    let s = summary(&records);
    let p = &s["probes"]["processes"][0];
    eprintln!(
        "async-quick: no finding; {} handshakes, {} WANT_ASYNC, {} ASYNC_pause_job events; \
         escalations {}",
        done["counts"]["server_handshakes"],
        done["counts"]["server_want_async"],
        s["events_by_probe"]["ASYNC_pause_job"],
        p["escalations_total"]
    );
    assert!(
        s["events_by_probe"]["ASYNC_pause_job"].as_u64() >= Some(10),
        "the pauses were seen: {}",
        s["events_by_probe"]
    );
    assert_eq!(p["escalations_total"], 0, "{p}");
}

/// The stuck job's pauses escalate the process; the connection that finds no job is then
/// seen answering WANT_ASYNC_JOB (it never pauses: it has no job to pause). Which of the
/// two connections takes the job depends on whose ClientHello comes first.
#[test]
fn an_exhausted_async_job_pool_is_flagged_after_the_async_pause_escalation() {
    let r = run("async-no-jobs", 5.0, "want_async_stall");
    let server = r.sc.thread("server");
    let found = opened(&r.records, "want_async_stall");
    let no_job = found
        .iter()
        .find(|f| f["evidence"]["want_async_stall"]["ssl_error"] == "want_async_job")
        .unwrap_or_else(|| panic!("no WANT_ASYNC_JOB stall:\n{}", describe(&r.records)));
    let ssls = server["ssl"].as_array().expect("the server's SSL*s");
    assert!(ssls.contains(&no_job["ssl"]), "{no_job}");
    assert_eq!(no_job["tid"], server["tid"], "{no_job}");
    let took = no_job["last_seen_ns"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(r.start);
    eprintln!(
        "async-no-jobs: want_async_job stall flagged {:.2} s after the start in auto mode",
        took as f64 / 1e9
    );
    assert!(took <= BAR_NS, "{no_job}");
    let p = &summary(&r.records)["probes"]["processes"][0];
    assert_eq!(p["reason"], "async_pause", "{p}");
}
