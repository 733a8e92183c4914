//! Findings on live processes, as a user would get them: `tls-probe attach` on the
//! project's scenario programs (each reproduces one pathology, or behaves well) and on a
//! real busy server (nginx under keep-alive load from wrk). Each pathology must be flagged
//! with the right kind, pid, thread, fd or SSL* within 2 seconds of its start; healthy
//! and idle targets must get no finding at all.
//!
//! "Start" is the CLOCK_MONOTONIC time at which the test releases the scenario's load;
//! "flagged at" is the opened finding's `last_seen_ns`, the event time of the last
//! occurrence before it opened (both on the clock of every `ts_ns`). Measured numbers are
//! printed; run with `--nocapture` to see them.

use std::{
    process::Child,
    time::{Duration, Instant},
};

use common::summary;
use scenario_common::{
    Nginx, Scenario, attach, changes, describe, last_thread_snapshot, opened, peak_thread_metric,
    records_so_far, require, secs, slow_upload, upload_rate, wrk, wrk_rate,
};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common};

/// How soon after its start a pathology must be flagged.
const BAR_NS: u64 = 2_000_000_000;
const EXIT: Duration = Duration::from_secs(30);

/// A scenario run under `tls-probe attach`.
struct Run {
    sc: Scenario,
    /// CLOCK_MONOTONIC when the load was released.
    start: u64,
    /// Wall time from the start until the expected finding was in the output file.
    seen_after: Option<Duration>,
    done: Value,
    records: Vec<Value>,
}

/// Runs `name` for `duration` seconds under `tls-probe attach`. With `expect`, also
/// watches the output file for that finding while the scenario runs.
fn run(name: &str, duration: f64, expect: Option<&str>) -> Run {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut sc = Scenario::start(name, duration);
    let probe = attach(dir.path(), sc.pid());
    let released = Instant::now();
    let start = sc.go();
    let seen_after = expect.map(|kind| {
        loop {
            let so_far = records_so_far(&probe);
            if !opened(&so_far, kind).is_empty() {
                break released.elapsed();
            }
            assert!(
                released.elapsed().as_secs_f64() < duration,
                "no {kind} in the output while {name} ran; it has:\n{}",
                describe(&so_far)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let done = sc.done(EXIT);
    let records = probe.finish(EXIT);
    Run {
        sc,
        start,
        seen_after,
        done,
        records,
    }
}

/// How often tls-probe writes its output file out: a finding is in the file at most this
/// long after it opened.
const FILE_FLUSH: Duration = Duration::from_secs(1);

/// The one finding of `kind` opened in the run: checks that it is the only finding, that
/// it was flagged within [`BAR_NS`] of the start in event time, and that it reached the
/// output file within the bar and one flush of the file. Returns it with its time to flag.
fn the_finding<'a>(r: &'a Run, kind: &str) -> (&'a Value, u64) {
    let all = describe(&r.records);
    let found = opened(&r.records, kind);
    assert_eq!(found.len(), 1, "one {kind} expected, got:\n{all}");
    let others = changes(&r.records)
        .into_iter()
        .filter(|c| c["finding"]["kind"] != kind)
        .count();
    assert_eq!(others, 0, "only {kind} expected, got:\n{all}");
    let f = found[0];
    let flagged = f["last_seen_ns"].as_u64().expect("last_seen_ns");
    assert!(
        flagged >= r.start && flagged - r.start <= BAR_NS,
        "{kind} flagged {:.2}s after the start (bar: {:.0}s): {f}",
        secs(flagged.wrapping_sub(r.start)),
        secs(BAR_NS)
    );
    let seen = r.seen_after.expect("watched for the finding");
    assert!(
        seen <= Duration::from_nanos(BAR_NS) + FILE_FLUSH,
        "{kind} reached the output file {seen:?} after the start"
    );
    (f, flagged - r.start)
}

/// Rate of DONE's `counts[key]` over its run.
fn done_rate(done: &Value, key: &str) -> f64 {
    let n = done["counts"][key].as_f64().unwrap_or(0.0);
    n * 1000.0 / done["elapsed_ms"].as_f64().expect("elapsed_ms")
}

/// A thread's CPU use over the run, from DONE, in percent of one core.
fn done_cpu_pct(done: &Value, role: &str) -> f64 {
    let t = done["threads"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["role"] == role))
        .expect("the thread in DONE");
    t["cpu_ms"].as_f64().expect("cpu_ms") * 100.0 / done["elapsed_ms"].as_f64().expect("ms")
}

fn evidence<'a>(f: &'a Value, kind: &str) -> &'a Value {
    &f["evidence"][kind]
}

/// "flagged 0.88s after the start (in the file after 1.20s)".
fn timing(r: &Run, took: u64) -> String {
    format!(
        "flagged {:.2}s after the start (in the file after {:.2}s)",
        secs(took),
        r.seen_after.unwrap_or_default().as_secs_f64()
    )
}

#[test]
fn spin_loop_is_flagged_on_the_client_fd() {
    let r = run("spin-loop", 4.0, Some("spin_loop"));
    let (f, took) = the_finding(&r, "spin_loop");
    let sc = &r.sc;
    assert_eq!(f["pid"], sc.pid());
    assert_eq!(f["tid"], sc.tid("client"), "{f}");
    assert_eq!(f["fd"], sc.fd("client"), "{f}");
    assert_eq!(f["ssl"], sc.ssl("client"), "{f}");
    let e = evidence(f, "spin_loop");
    assert_eq!(e["ssl_error"], "want_read", "{f}");
    assert_eq!(
        e["mismatch"], "EPOLLOUT is armed while SSL wants READ",
        "{f}"
    );
    assert!(
        f["explanation"]
            .as_str()
            .is_some_and(|x| x.contains("EPOLLOUT is armed while SSL wants READ")),
        "{f}"
    );
    let wasted = e["wasted_wakeups_per_sec"].as_f64().unwrap();
    let real = done_rate(&r.done, "client_wakeups");
    assert!(
        wasted >= 0.5 * real && wasted <= 1.5 * real,
        "{wasted:.0} wasted wake-ups/s reported, the client made {real:.0}/s"
    );
    eprintln!(
        "spin-loop: spin_loop {}; {wasted:.0} wasted wake-ups/s reported, the client made \
         {real:.0}/s under the probes at {:.0}% CPU",
        timing(&r, took),
        done_cpu_pct(&r.done, "client"),
    );
}

#[test]
fn busy_poll_is_flagged_on_the_client_thread_and_every_wait_counted() {
    let r = run("busy-poll", 4.0, Some("busy_epoll_loop"));
    let (f, took) = the_finding(&r, "busy_epoll_loop");
    let tid = r.sc.tid("client");
    assert_eq!(f["pid"], r.sc.pid());
    assert_eq!(f["tid"], tid, "{f}");
    let e = evidence(f, "busy_epoll_loop");
    assert_eq!(e["zero_timeout_pct"], 100.0, "{f}");
    assert_eq!(e["timeout_ns"], 0, "{f}");
    let immediate = e["immediate_wakeups_per_sec"].as_f64().unwrap();
    let real = done_rate(&r.done, "client_wakeups");
    assert!(
        immediate >= 0.5 * real && immediate <= 1.5 * real,
        "{immediate:.0} immediate wake-ups/s reported, the client polled {real:.0}/s"
    );
    // Every wait the kernel aggregated is counted in the thread's metrics, but the last
    // batch, which the thread never flushes: it exits instead of waiting again.
    let snap = last_thread_snapshot(&r.records, tid).expect("a snapshot of the client");
    let counted = snap["wakeups_total"].as_f64().unwrap();
    let waits = r.done["counts"]["client_wakeups"].as_f64().unwrap();
    assert!(
        counted >= 0.95 * waits && counted <= waits,
        "{counted} wake-ups counted, the client made {waits}"
    );
    // All without progress, but maybe the first: it reads the server's session tickets.
    let no_progress = snap["wakeups_no_progress_total"].as_f64().unwrap();
    assert!(counted - no_progress <= 1.0, "{snap}");
    assert_eq!(snap["immediate_wakeups_total"], snap["wakeups_total"]);
    let peak = peak_thread_metric(&r.records, tid, "wakeups_per_sec");
    assert!(
        peak >= 0.5 * real,
        "peak {peak:.0} wake-ups/s, real {real:.0}"
    );
    eprintln!(
        "busy-poll: busy_epoll_loop {}; {immediate:.0} immediate wake-ups/s reported, the \
         client polled {real:.0}/s at {:.0}% CPU; {counted} of {waits} waits counted",
        timing(&r, took),
        done_cpu_pct(&r.done, "client"),
    );
}

#[test]
fn bad_write_retry_is_flagged_with_its_fate() {
    let r = run("bad-write-retry", 3.0, Some("bad_write_retry"));
    // One finding per connection hit: the scenario's client reconnects after each.
    let all = describe(&r.records);
    let found = opened(&r.records, "bad_write_retry");
    assert!(!found.is_empty(), "bad_write_retry expected, got:\n{all}");
    let others = changes(&r.records)
        .into_iter()
        .filter(|c| c["finding"]["kind"] != "bad_write_retry")
        .count();
    assert_eq!(others, 0, "only bad_write_retry expected, got:\n{all}");
    let f = found[0];
    let flagged = f["last_seen_ns"].as_u64().expect("last_seen_ns");
    assert!(
        flagged >= r.start && flagged - r.start <= BAR_NS,
        "flagged {:.2}s after the start: {f}",
        secs(flagged.wrapping_sub(r.start))
    );
    let took = flagged - r.start;
    assert_eq!(f["pid"], r.sc.pid());
    assert_eq!(f["tid"], r.sc.tid("client"), "{f}");
    // Opened at OpenSSL's error, raised inside the probed retry; the call's own record
    // (its arguments, its SSL_ERROR_SSL), then the connection's fate follow in updates.
    let id = &f["id"];
    let updates: Vec<&Value> = changes(&r.records)
        .into_iter()
        .filter(|c| c["change"] == "updated" && &c["finding"]["id"] == id)
        .map(|c| &c["finding"]["evidence"]["bad_write_retry"])
        .collect();
    let e = updates
        .iter()
        .find(|e| e["arguments_seen"] == true)
        .unwrap_or_else(|| panic!("no update with the arguments:\n{all}"));
    assert_eq!(e["previous_answer"], "want_write", "{e}");
    assert_ne!(e["buf"], e["previous_buf"], "{e}");
    assert_eq!(e["connection_from"], "ssl_call_in_flight", "{e}");
    let fate = updates
        .iter()
        .filter_map(|e| e["fate"].as_str())
        .find(|fate| fate.contains("SSL_free") || fate.contains("close"))
        .unwrap_or_else(|| panic!("no update with the connection's fate:\n{all}"));
    assert!(fate.starts_with("ssl error, then "), "{fate}");
    let occurrences: u64 = summary(&r.records)["findings"]
        .as_array()
        .expect("the findings in the summary")
        .iter()
        .filter(|x| x["kind"] == "bad_write_retry")
        .map(|x| {
            evidence(x, "bad_write_retry")["occurrences"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let bad = r.done["counts"]["client_bad_write_retries"]
        .as_u64()
        .unwrap();
    assert_eq!(
        occurrences, bad,
        "every bad retry the client met is counted"
    );
    eprintln!(
        "bad-write-retry: bad_write_retry {}, then fate {fate:?}; {occurrences} occurrences \
         counted over {} findings, {bad} met by the client",
        timing(&r, took),
        found.len()
    );
}

#[test]
fn concurrent_ssl_use_is_flagged_on_the_shared_ssl() {
    let r = run("concurrent-ssl", 3.0, Some("concurrent_ssl_use"));
    let (f, took) = the_finding(&r, "concurrent_ssl_use");
    let (reader, writer) = (r.sc.thread("reader"), r.sc.thread("writer"));
    assert_eq!(
        reader["ssl"][0], writer["ssl"][0],
        "one SSL*: {}",
        r.sc.ready
    );
    assert_eq!(f["pid"], r.sc.pid());
    assert_eq!(f["ssl"], reader["ssl"][0], "{f}");
    let e = evidence(f, "concurrent_ssl_use");
    let mut tids = [e["tid_a"].as_u64(), e["tid_b"].as_u64()];
    tids.sort();
    let mut want = [reader["tid"].as_u64(), writer["tid"].as_u64()];
    want.sort();
    assert_eq!(tids, want, "{f}");
    let last = summary(&r.records)["findings"][0]["evidence"]["concurrent_ssl_use"].clone();
    eprintln!(
        "concurrent-ssl: concurrent_ssl_use {}; {} overlaps by the end, {} updates",
        timing(&r, took),
        last["overlaps"],
        changes(&r.records)
            .iter()
            .filter(|c| c["change"] == "updated")
            .count()
    );
}

/// Healthy load for half the run, then 16 idle connections: nothing to report, during
/// the load nor while idle.
#[test]
fn healthy_load_then_idle_has_no_finding() {
    let r = run("healthy", 6.0, None);
    let all = describe(&r.records);
    assert!(changes(&r.records).is_empty(), "{all}");
    assert!(
        summary(&r.records)["findings"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // It was busy, then idle: the server's loop, as the engine saw it.
    let tid = r.sc.tid("server");
    let busy = peak_thread_metric(&r.records, tid, "ssl_calls_per_sec");
    assert!(busy >= 1000.0, "peak {busy:.0} SSL calls/s on the server");
    let idle = last_thread_snapshot(&r.records, tid).expect("a snapshot of the server");
    let idle_rate = idle["wakeups_per_sec"].as_f64().unwrap();
    assert!(
        idle_rate <= 10.0,
        "{idle_rate} wake-ups/s at the end: {idle}"
    );
    eprintln!(
        "healthy: no finding; server peak {busy:.0} SSL calls/s, {:.0} round trips/s over the \
         run, then {idle_rate:.1} wake-ups/s idle",
        done_rate(&r.done, "client_round_trips"),
    );
}

/// nginx (one process, TLS, keep-alive) as a real busy server, loaded by `wrk` at full
/// speed over 20 keep-alive connections.
#[test]
fn nginx_under_keep_alive_load_has_no_finding() {
    nginx_quiet_under("nginx_under_keep_alive_load_has_no_finding", |n| {
        Load::Wrk(wrk(20, &format!("https://127.0.0.1:{}/", n.port)))
    });
}

/// The same nginx, its HTTPS idle, loaded over 20 connections of plain HTTP on its second
/// port: the plain requests wake the loop at once with no SSL call (their I/O is not
/// traced), which must not look like a busy loop.
#[test]
fn nginx_serving_plain_http_next_to_https_has_no_finding() {
    nginx_quiet_under(
        "nginx_serving_plain_http_next_to_https_has_no_finding",
        |n| Load::Wrk(wrk(20, &format!("http://127.0.0.1:{}/", n.plain_port))),
    );
}

/// The same nginx receiving an upload over HTTPS the way it crosses a network: 16 KiB
/// records in 1448-byte segments, each a wake-up in which SSL_read consumes the segment
/// and answers WANT_READ until the record is whole. Not a spin.
#[test]
fn nginx_receiving_an_upload_in_network_segments_has_no_finding() {
    nginx_quiet_under(
        "nginx_receiving_an_upload_in_network_segments_has_no_finding",
        |n| Load::Upload(slow_upload(n.port, 3.0)),
    );
}

enum Load {
    Wrk(Child),
    Upload(Child),
}

/// Starts nginx, attaches, runs `load` against it to the end, and checks that nothing was
/// found. Fails, saying what to install, when nginx or wrk is missing.
fn nginx_quiet_under(test: &str, load: impl FnOnce(&Nginx) -> Load) {
    require("nginx", "nginx-light");
    require("wrk", "wrk");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let nginx = Nginx::start(dir.path());
    let probe = attach(dir.path(), nginx.proc.pid());
    let what = match load(&nginx) {
        Load::Wrk(child) => format!("{:.0} requests/s", wrk_rate(child)),
        Load::Upload(child) => upload_rate(child),
    };
    let records = probe.interrupt(EXIT);

    let all = describe(&records);
    assert!(changes(&records).is_empty(), "{test}: {all}");
    let s = summary(&records);
    let tid = u64::from(nginx.proc.pid());
    let wakeups = peak_thread_metric(&records, tid, "wakeups_per_sec");
    assert!(
        wakeups >= 100.0,
        "the load did not reach nginx: {wakeups} wake-ups/s"
    );
    let idle = peak_thread_metric(&records, tid, "wakeups_no_progress_per_sec");
    let cpu = peak_thread_metric(&records, tid, "cpu_pct");
    eprintln!(
        "{test}: no finding at {what}; nginx peaked at {wakeups:.0} wake-ups/s ({idle:.0}/s \
         without TLS progress) and {cpu:.0}% CPU; {} events ({} SSL_read), lost {}",
        s["events"], s["events_by_probe"]["SSL_read"], s["lost"]
    );
}

/// The last state of finding `id` in the run (its closing change when it closed).
fn last_change<'a>(records: &'a [Value], id: &Value) -> &'a Value {
    changes(records)
        .into_iter()
        .rev()
        .map(|c| &c["finding"])
        .find(|f| &f["id"] == id)
        .expect("the finding's changes")
}

/// One connection's handshake answers WANT_ASYNC on every retry for 70% of the run: one
/// want_async_stall on the server's thread, SSL* and socket, whose final count of answers
/// is the one the server made, and which closes, resolved, when the handshake completes.
#[test]
fn async_stall_is_flagged_on_the_server_connection_with_every_answer_counted() {
    let r = run("async-stall", 4.0, Some("want_async_stall"));
    let (f, took) = the_finding(&r, "want_async_stall");
    let sc = &r.sc;
    assert_eq!(f["pid"], sc.pid());
    assert_eq!(f["tid"], sc.tid("server"), "{f}");
    assert_eq!(f["ssl"], sc.ssl("server"), "{f}");
    assert_eq!(f["fd"], sc.fd("server"), "{f}");
    let e = evidence(f, "want_async_stall");
    assert_eq!(e["ssl_error"], "want_async", "{f}");
    assert_eq!(e["op"], "SSL_do_handshake", "{f}");
    let last = last_change(&r.records, &f["id"]);
    let e = evidence(last, "want_async_stall");
    let counts = &r.done["counts"];
    let answered = counts["server_want_async"]
        .as_u64()
        .expect("server_want_async");
    assert_eq!(last["state"], "closed", "{last}");
    assert_eq!(e["resolved"], true, "{last}");
    assert_eq!(
        e["waits"], answered,
        "the server counted {answered}: {last}"
    );
    assert_eq!(last["severity"], "critical", "{last}");
    let pauses = summary(&r.records)["events_by_probe"]["ASYNC_pause_job"].clone();
    assert_eq!(pauses, counts["server_async_pauses"], "{counts}");
    eprintln!(
        "async-stall: want_async_stall {}; {} WANT_ASYNC answers over {:.2} s counted, the \
         server made {answered} (stalled {} ms)",
        timing(&r, took),
        e["waits"],
        secs(e["stalled_ns"].as_u64().unwrap_or(0)),
        counts["server_stall_ms"]
    );
}

/// A healthy async engine: each handshake pauses twice and resumes at once.
#[test]
fn brief_async_pauses_have_no_finding() {
    let r = run("async-quick", 3.0, None);
    let all = describe(&r.records);
    assert!(changes(&r.records).is_empty(), "{all}");
    let c = &r.done["counts"];
    let s = summary(&r.records);
    eprintln!(
        "async-quick: no finding over {} handshakes with {} WANT_ASYNC answers; {} \
         ASYNC_pause_job events",
        c["server_handshakes"], c["server_want_async"], s["events_by_probe"]["ASYNC_pause_job"]
    );
    assert!(c["server_want_async"].as_u64() >= Some(10), "{c}");
    assert_eq!(
        s["events_by_probe"]["ASYNC_pause_job"], c["server_async_pauses"],
        "{c}"
    );
}

/// The only async job of the server thread is held paused by one connection's handshake
/// (whichever ClientHello came first): the other connection's calls answer
/// WANT_ASYNC_JOB. One want_async_stall each, on the server thread, with its own SSL* and
/// code.
#[test]
fn an_exhausted_async_job_pool_is_flagged_on_the_connection_that_finds_no_job() {
    let r = run("async-no-jobs", 4.0, Some("want_async_stall"));
    let found = opened(&r.records, "want_async_stall");
    let all = describe(&r.records);
    assert_eq!(found.len(), 2, "{all}");
    assert_eq!(
        changes(&r.records).len(),
        changes(&r.records)
            .iter()
            .filter(|c| c["finding"]["kind"] == "want_async_stall")
            .count(),
        "{all}"
    );
    let server = r.sc.thread("server");
    let ssls = server["ssl"].as_array().expect("the server's SSL*s");
    assert_ne!(found[0]["ssl"], found[1]["ssl"], "{all}");
    let counts = &r.done["counts"];
    for (code, count) in [
        ("want_async", "server_want_async"),
        ("want_async_job", "server_want_async_job"),
    ] {
        let f = found
            .iter()
            .find(|f| evidence(f, "want_async_stall")["ssl_error"] == code)
            .unwrap_or_else(|| panic!("no {code} stall: {all}"));
        assert!(ssls.contains(&f["ssl"]), "{f}");
        assert_eq!(f["tid"], server["tid"], "{f}");
        let took = f["last_seen_ns"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(r.start);
        assert!(
            took <= BAR_NS,
            "flagged {:.2}s after the start: {f}",
            secs(took)
        );
        let last = last_change(&r.records, &f["id"]);
        let e = evidence(last, "want_async_stall");
        assert_eq!(e["waits"], counts[count], "{counts}: {last}");
        assert_eq!(e["resolved"], true, "{last}");
        eprintln!(
            "async-no-jobs: {code} stall flagged {:.2}s after the start; {} answers counted, \
             the server made {}",
            secs(took),
            e["waits"],
            counts[count]
        );
    }
}
