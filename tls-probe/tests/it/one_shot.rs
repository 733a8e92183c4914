//! One-shot misuse, flagged at its first and only occurrence in every mode: a C client
//! (tests/peers/retry_client.c, plain libssl) that, once per connection, retries a write
//! that answered WANT_WRITE with another buffer (OpenSSL fails it with "bad write retry")
//! and drops the connection, as the libcurl bug in the seeds does; or writes after its own
//! SSL_shutdown. The server is this test's own, on 127.0.0.1, and never reads, so that
//! the client's writes block.
//!
//! "Within 1 s" is read from the records' timestamps: the finding's `first_seen_ns` (the
//! event time of the error that opened it) against the CLOCK_MONOTONIC time the client took
//! just before the retry. How long the record took to reach the file is printed (run with
//! `--nocapture`), not asserted: the machine is shared and noisy.

use std::{path::Path, process::Command, thread, time::Duration};

use common::{Proc, wait_for};
use scenario_common::{
    Scenario, attach_mode, build_c_peer, describe, monotonic_ns, opened, random_between,
    records_so_far,
};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common, schema};

const SEC: u64 = 1_000_000_000;
const EXIT: Duration = Duration::from_secs(30);

struct Client {
    proc: Proc,
}

impl Client {
    fn start(dir: &Path, port: u16) -> Self {
        let exe = build_c_peer(dir, "retry_client", &[]);
        let mut proc = Proc::spawn(Command::new(exe).arg(port.to_string()));
        proc.read_until("READY", |l| (l == "READY").then_some(()));
        Self { proc }
    }

    fn connect(&mut self) {
        self.proc.send_line("connect");
        self.proc
            .read_until("CONNECTED", |l| l.starts_with("CONNECTED").then_some(()));
    }

    /// Runs `cmd` ("retry" or "shutwrite"); returns the time taken just before the bad
    /// call, after checking that OpenSSL failed it with `reason`.
    fn misuse(&mut self, cmd: &str, word: &str, reason: i64) -> u64 {
        self.proc.send_line(cmd);
        let (ts, code, got): (u64, i64, i64) = self.proc.read_until(word, |l| {
            let rest = l.strip_prefix(word)?;
            let v: Vec<&str> = rest.split_whitespace().collect();
            Some((v[0].parse().ok()?, v[1].parse().ok()?, v[2].parse().ok()?))
        });
        assert_eq!(
            (code, got),
            (1, reason),
            "{cmd}: expected SSL_ERROR_SSL with reason {reason}"
        );
        self.proc
            .read_until("DROPPED", |l| (l == "DROPPED").then_some(()));
        ts
    }

    fn quit(mut self) {
        self.proc.send_line("quit");
        let status = self.proc.wait_exit("retry_client to exit", EXIT);
        assert!(status.success(), "retry_client failed: {status}");
    }
}

fn wait_thread(ns: u64) {
    thread::sleep(Duration::from_nanos(ns));
}

/// Waits until a `kind` finding opened at or after `after_ns` appears in the output;
/// returns it and how long after `after_ns` it was read from the file.
fn wait_finding(a: &common::Attached, kind: &str, after_ns: u64) -> (Value, u64) {
    let f = wait_for(
        &format!("a {kind} finding after {after_ns}"),
        Duration::from_secs(10),
        || {
            let recs = records_so_far(a);
            opened(&recs, kind)
                .into_iter()
                .find(|f| f["first_seen_ns"].as_u64().unwrap_or(0) + SEC / 2 >= after_ns)
                .cloned()
        },
    );
    (f, monotonic_ns().saturating_sub(after_ns))
}

/// The opened findings of `kind`, and per `misuse` time the ones whose first_seen_ns is
/// within 1 s after it.
fn check_one_each(records: &[Value], kind: &str, times: &[u64]) -> Vec<Value> {
    // Every record as the schema documents it (deny_unknown_fields).
    for (i, r) in records.iter().enumerate() {
        schema::check_line(i + 1, &r.to_string());
    }
    let all = opened(records, kind);
    assert_eq!(
        all.len(),
        times.len(),
        "one {kind} finding per connection hit ({} hit); records:\n{}",
        times.len(),
        describe(records)
    );
    let mut found = Vec::new();
    for &t in times {
        let near: Vec<&&Value> = all
            .iter()
            .filter(|f| {
                let first = f["first_seen_ns"].as_u64().unwrap_or(0);
                first >= t && first - t < SEC
            })
            .collect();
        assert_eq!(
            near.len(),
            1,
            "one {kind} finding within 1 s of the misuse at {t}; records:\n{}",
            describe(records)
        );
        found.push((*near[0]).clone());
    }
    found
}

/// One bad write retry at a random moment 0.5-5 s after attach, in `mode`.
fn single_retry(mode: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = scenario_common::silent_server(dir.path());
    let mut client = Client::start(dir.path(), port);
    let a = attach_mode(dir.path(), client.proc.pid(), mode);
    let attached = monotonic_ns();
    client.connect();
    let at = random_between(attached + SEC / 2, attached + 5 * SEC);
    wait_thread(at.saturating_sub(monotonic_ns()));
    let t = client.misuse("retry", "RETRY ", 127);
    let (_, took) = wait_finding(&a, "bad_write_retry", t);
    // The reconnect that follows, on the same thread.
    client.connect();
    wait_thread(SEC / 2);
    client.quit();
    let records = a.finish(EXIT);
    let f = &check_one_each(&records, "bad_write_retry", &[t])[0];
    let e = &f["evidence"]["bad_write_retry"];
    println!(
        "{mode}: retry {:.2} s after attach, flagged at +{:.1} ms (event time), read from \
         the file {:.0} ms after the retry; evidence {e}",
        (t - attached) as f64 / 1e9,
        (f["first_seen_ns"].as_u64().unwrap() - t) as f64 / 1e6,
        took as f64 / 1e6,
    );
    assert_eq!(e["reason"], "bad_write_retry", "{e}");
    assert_eq!(f["pid"], client_pid(&records));
    assert!(f["ssl"].is_u64(), "the connection is named: {f}");
    assert!(
        matches!(
            e["connection_from"].as_str(),
            Some("ssl_call_in_flight" | "thread_last_connection" | "freed_after")
        ),
        "{e}"
    );
    // Its fate, from the last update.
    let last = last_state(&records, f["id"].as_u64().unwrap());
    let le = &last["evidence"]["bad_write_retry"];
    assert_eq!(le["connections_dropped_after"], 1, "{le}");
    assert!(le["reconnect_after_ns"].is_u64(), "the reconnect: {le}");
    assert!(
        le["fate"].as_str().unwrap_or("").contains("SSL_free"),
        "{le}"
    );
    assert_eq!(
        last["fd"].as_i64().map(|_| ()),
        Some(()),
        "fd named: {last}"
    );
}

fn client_pid(records: &[Value]) -> Value {
    records
        .iter()
        .find(|r| r["type"] == "start")
        .map(|r| r["data"]["targets"][0]["pid"].clone())
        .expect("start record")
}

/// The finding `id` as its last record left it.
fn last_state(records: &[Value], id: u64) -> Value {
    records
        .iter()
        .filter(|r| r["type"] == "finding" && r["data"]["finding"]["id"] == id)
        .map(|r| r["data"]["finding"].clone())
        .next_back()
        .expect("the finding's records")
}

#[test]
fn single_bad_write_retry_in_default_mode() {
    single_retry("auto");
}

#[test]
fn single_bad_write_retry_in_light_mode() {
    single_retry("light");
}

#[test]
fn single_bad_write_retry_in_full_mode_has_its_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = scenario_common::silent_server(dir.path());
    let mut client = Client::start(dir.path(), port);
    let a = attach_mode(dir.path(), client.proc.pid(), "full");
    client.connect();
    wait_thread(SEC);
    let t = client.misuse("retry", "RETRY ", 127);
    client.quit();
    let records = a.finish(EXIT);
    let f = &check_one_each(&records, "bad_write_retry", &[t])[0];
    let last = last_state(&records, f["id"].as_u64().unwrap());
    let e = &last["evidence"]["bad_write_retry"];
    assert_eq!(e["connection_from"], "ssl_call_in_flight", "{e}");
    assert_eq!(e["arguments_seen"], true, "{e}");
    assert_eq!(
        (e["moved_buffer"].as_u64(), e["occurrences"].as_u64()),
        (Some(1), Some(1)),
        "{e}"
    );
}

#[test]
fn a_retry_on_each_of_several_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = scenario_common::silent_server(dir.path());
    let mut client = Client::start(dir.path(), port);
    let a = attach_mode(dir.path(), client.proc.pid(), "auto");
    let mut times = Vec::new();
    for i in 0..3 {
        client.connect();
        wait_thread(random_between(SEC, 3 * SEC));
        let t = client.misuse("retry", "RETRY ", 127);
        let (_, took) = wait_finding(&a, "bad_write_retry", t);
        println!(
            "connection {i}: read from the file {:.0} ms after the retry",
            took as f64 / 1e6
        );
        times.push(t);
    }
    client.quit();
    let records = a.finish(EXIT);
    let found = check_one_each(&records, "bad_write_retry", &times);
    for f in &found {
        let last = last_state(&records, f["id"].as_u64().unwrap());
        assert_eq!(
            last["evidence"]["bad_write_retry"]["connections_dropped_after"], 1,
            "{last}"
        );
    }
}

#[test]
fn a_write_after_shutdown_is_flagged_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = scenario_common::silent_server(dir.path());
    let mut client = Client::start(dir.path(), port);
    let a = attach_mode(dir.path(), client.proc.pid(), "auto");
    client.connect();
    wait_thread(random_between(SEC / 2, 2 * SEC));
    // SSL_R_PROTOCOL_IS_SHUTDOWN.
    let t = client.misuse("shutwrite", "SHUTWRITE ", 207);
    wait_finding(&a, "write_after_shutdown", t);
    client.quit();
    let records = a.finish(EXIT);
    let f = &check_one_each(&records, "write_after_shutdown", &[t])[0];
    let e = &f["evidence"]["write_after_shutdown"];
    assert!(e["previous_error"].is_null(), "after SSL_shutdown: {e}");
    assert!(opened(&records, "bad_write_retry").is_empty());
}

/// A stuck async job in a handshake, with the per-call probes never on (light mode): the
/// always-on ASYNC_pause_job and handshake probes alone show the WANT_ASYNC answers.
#[test]
fn want_async_stall_is_flagged_in_light_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sc = Scenario::start("async-stall", 4.0);
    let a = attach_mode(dir.path(), sc.pid(), "light");
    let start = sc.go();
    let (f, took) = wait_finding(&a, "want_async_stall", start);
    sc.done(EXIT);
    let records = a.finish(EXIT);
    let first = f["first_seen_ns"].as_u64().unwrap();
    println!(
        "light: want_async_stall from {:.0} ms after the start, read from the file {:.0} ms \
         after the start: {}",
        first.saturating_sub(start) as f64 / 1e6,
        took as f64 / 1e6,
        f["evidence"]
    );
    assert_eq!(f["ssl"], sc.ssl("server"), "{f}");
    let s = &records
        .iter()
        .rev()
        .find(|r| r["type"] == "summary")
        .unwrap()["data"];
    // No per-call probe ever fired: no SSL_get_error, no SSL_read or SSL_write.
    let by_probe = &s["events_by_probe"];
    for p in ["SSL_get_error", "SSL_read", "SSL_write"] {
        assert!(by_probe[p].is_null(), "light mode saw {p}: {by_probe}");
    }
}
