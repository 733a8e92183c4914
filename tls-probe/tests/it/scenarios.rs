//! Each scenario workload under `tls-probe attach`: do the raw events carry the signature
//! that makes its pathology recognisable? These read the `event` records, not findings,
//! so they hold whatever the engine concludes.
//!
//! Each test starts `tls-probe-scenarios NAME --wait-stdin`, reads READY (its threads, fds
//! and SSL*s), attaches, releases it, waits for DONE and reads the NDJSON.

use std::{
    collections::{HashMap, HashSet},
    process::Command,
    time::Duration,
};

use common::{Attached, Proc, TLS_PROBE, scenarios, summary};
use serde_json::Value;
use tls_probe_scenario_spec::report::{self, Done, Ready, ThreadInfo};

use crate::{common, schema};

struct Run {
    ready: Ready,
    done: Done,
    records: Vec<Value>,
}

impl Run {
    fn thread(&self, role: &str) -> &ThreadInfo {
        self.ready
            .threads
            .iter()
            .find(|t| t.role == role)
            .unwrap_or_else(|| panic!("no {role} thread in READY: {:?}", self.ready))
    }

    /// The `data` of every event of thread `tid`, in the order the thread made them.
    fn events_of(&self, tid: i32) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["type"] == "event" && r["data"]["tid"] == tid)
            .map(|r| &r["data"])
            .collect()
    }
}

/// Runs scenario `name` for `secs` seconds of load under `tls-probe attach --events`.
fn run(name: &str, secs: u32) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut scenario = Proc::spawn(Command::new(scenarios()).args([
        name,
        "--wait-stdin",
        "--duration",
        &secs.to_string(),
    ]));
    let ready = scenario.read_until("READY", report::parse_ready);
    assert_eq!(ready.pid, scenario.pid());
    let probe = Attached::start(dir.path(), ready.pid, &[]);
    scenario.send_line("go");
    let done = scenario.read_until("DONE", report::parse_done);
    let status = scenario.wait_exit("the scenario to exit", Duration::from_secs(30));
    assert!(status.success(), "scenario {name}: {status}");
    let records = probe.finish(Duration::from_secs(60));
    Run {
        ready,
        done,
        records,
    }
}

fn is_call(e: &Value, probe: &str, ssl: Option<u64>) -> bool {
    e["probe"] == probe && ssl.is_none_or(|s| e["ssl"] == s)
}

fn is_error(e: &Value, code: &str) -> bool {
    e["probe"] == "SSL_get_error" && e["code"] == code
}

#[test]
fn spin_loop_wakes_on_epollout_and_reads_nothing() {
    let run = run("spin-loop", 2);
    let client = run.thread("client");
    let fd = client.fds[0];
    let ssl = client.ssl[0];
    let evs = run.events_of(client.tid);
    // The spin: epoll_wait says the client fd is ready for EPOLLOUT, SSL_read on it moves
    // nothing, SSL_get_error says WANT_READ; round again. Count the whole triples.
    let spins = evs
        .windows(3)
        .filter(|w| {
            w[0]["probe"] == "epoll_wait"
                && w[0]["ready"].as_array().is_some_and(|ready| {
                    ready.iter().any(|r| {
                        r["fd"] == fd
                            && r["events"].as_u64().unwrap_or(0) & libc::EPOLLOUT as u64 != 0
                    })
                })
                && is_call(w[1], "SSL_read", Some(ssl))
                && w[1]["fd"] == fd
                && w[1]["bytes"] == 0
                && w[2]["ssl"] == ssl
                && is_error(w[2], "want_read")
        })
        .count();
    let reads_with_bytes = evs
        .iter()
        .filter(|e| is_call(e, "SSL_read", None) && e["bytes"].as_u64() > Some(0))
        .count();
    let lost = &summary(&run.records)["lost"];
    eprintln!(
        "spin-loop: {spins} spins seen on fd {fd}, {} events from the client, lost {lost}; the client counted {} wake-ups",
        evs.len(),
        run.done.counts.get("client_wakeups")
    );
    assert!(
        spins >= 1000,
        "only {spins} wake-up/SSL_read/WANT_READ triples"
    );
    assert_eq!(reads_with_bytes, 0, "the server never answers");
}

#[test]
fn bad_write_retry_moves_the_buffer_then_fails_and_frees() {
    let run = run("bad-write-retry", 2);
    let client = run.thread("client");
    // Per SSL*, from its first write to its SSL_free: the buffer of the write that met
    // WANT_WRITE, whether a retry passed another one, and whether an ssl error followed.
    #[derive(Default)]
    struct Conn {
        last_buf: Option<u64>,
        pending: Option<u64>,
        moved: bool,
        failed: bool,
    }
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let (mut signatures, mut want_writes) = (0, 0);
    for e in run.events_of(client.tid) {
        let Some(ssl) = e["ssl"].as_u64() else {
            continue;
        };
        let conn = conns.entry(ssl).or_default();
        if is_call(e, "SSL_write", None) {
            let buf = e["buf"].as_u64().expect("buf");
            if conn.pending.is_some_and(|p| p != buf) {
                conn.moved = true;
            }
            conn.last_buf = Some(buf);
        } else if is_error(e, "want_write") {
            want_writes += 1;
            conn.pending = conn.last_buf;
        } else if is_error(e, "ssl") && conn.moved {
            conn.failed = true;
        } else if e["probe"] == "SSL_free" {
            if conn.moved && conn.failed {
                signatures += 1;
            }
            conns.remove(&ssl);
        }
    }
    let retries = run.done.counts.get("client_bad_write_retries");
    eprintln!(
        "bad-write-retry: {signatures} moved-buffer retries then ssl error then SSL_free, {want_writes} WANT_WRITE; the client counted {retries}"
    );
    assert!(
        signatures >= 1,
        "no WANT_WRITE, moved retry, ssl error, SSL_free"
    );
    assert!(signatures <= retries, "more than the client saw: {retries}");
}

/// Server-side handshakes seen from start to end.
struct Handshakes {
    /// SSL_do_handshake returned 1 on an SSL* that was then freed. Each SSL* handshakes
    /// once per life (SSL* values are reused after SSL_free).
    completed: u64,
    /// Of those, the ones whose handshake calls made libcrypto key operations (sign,
    /// verify, decrypt): full handshakes. A resumed handshake makes none.
    with_key_ops: u64,
}

fn server_handshakes(run: &Run) -> Handshakes {
    let server = run.thread("server");
    // Live SSL*: whether its handshake finished, and the key operations it made so far.
    let mut live: HashMap<u64, (bool, u64)> = HashMap::new();
    let mut hs = Handshakes {
        completed: 0,
        with_key_ops: 0,
    };
    for e in run.events_of(server.tid) {
        let Some(ssl) = e["ssl"].as_u64() else {
            continue;
        };
        if is_call(e, "SSL_do_handshake", None) {
            let (done, key_ops) = live.entry(ssl).or_default();
            assert!(!*done, "a second handshake on live SSL* {ssl:#x}");
            *key_ops += e["key_ops"].as_u64().unwrap_or(0);
            *done = e["ret"] == 1;
        } else if e["probe"] == "SSL_free"
            && let Some((true, key_ops)) = live.remove(&ssl)
        {
            hs.completed += 1;
            hs.with_key_ops += u64::from(key_ops > 0);
        }
    }
    hs
}

/// Runs a handshake flood and checks that tls-probe saw (nearly) every handshake the
/// server made. Returns what the events show, and the server's own (full, resumed).
fn flood(name: &str) -> (Handshakes, u64, u64) {
    let run = run(name, 2);
    let hs = server_handshakes(&run);
    let c = &run.done.counts;
    let (full, resumed) = (
        c.get("server_handshakes_full"),
        c.get("server_handshakes_resumed"),
    );
    eprintln!(
        "{name}: {} server handshakes completed and freed, {} with key operations; the server counted {full} full, {resumed} resumed",
        hs.completed, hs.with_key_ops
    );
    assert!(
        hs.completed >= 50,
        "only {} server handshakes",
        hs.completed
    );
    assert!(hs.completed <= full + resumed);
    assert!(
        hs.completed * 10 >= (full + resumed) * 9,
        "most handshakes were seen"
    );
    (hs, full, resumed)
}

// Full or resumed, twice: from the events (key operations inside the handshake calls)
// and from the scenario's own DONE counts (SSL_session_reused on each connection).
#[test]
fn handshake_storm_is_many_full_server_handshakes() {
    let (hs, _, resumed) = flood("handshake-storm");
    assert_eq!(resumed, 0, "the server resumed none");
    assert_eq!(hs.with_key_ops, hs.completed, "every handshake was full");
}

#[test]
fn resumed_handshakes_are_many_server_handshakes_mostly_resumed() {
    let (hs, full, resumed) = flood("resumed-handshakes");
    assert!(
        resumed * 10 >= (full + resumed) * 9,
        "{full} full, {resumed} resumed"
    );
    assert!(
        hs.with_key_ops * 10 <= hs.completed,
        "{} of {} handshakes made key operations",
        hs.with_key_ops,
        hs.completed
    );
}

#[test]
fn concurrent_ssl_overlaps_a_read_and_a_write_on_one_ssl() {
    let run = run("concurrent-ssl", 2);
    let (reader, writer) = (run.thread("reader"), run.thread("writer"));
    let ssl = reader.ssl[0];
    assert_eq!(writer.ssl, vec![ssl], "both threads share one SSL*");
    let interval = |e: &Value| {
        let start = e["start_ns"].as_u64().expect("start_ns");
        (
            start,
            start + e["duration_ns"].as_u64().expect("duration_ns"),
        )
    };
    let reads: Vec<(u64, u64)> = run
        .events_of(reader.tid)
        .into_iter()
        .filter(|e| is_call(e, "SSL_read", Some(ssl)))
        .map(interval)
        .collect();
    let writes: Vec<(u64, u64)> = run
        .events_of(writer.tid)
        .into_iter()
        .filter(|e| is_call(e, "SSL_write", Some(ssl)))
        .map(interval)
        .collect();
    let overlaps = writes
        .iter()
        .filter(|w| reads.iter().any(|r| r.0 < w.1 && w.0 < r.1))
        .count();
    eprintln!(
        "concurrent-ssl: {overlaps} of {} SSL_writes overlap one of {} SSL_reads on {ssl:#x}",
        writes.len(),
        reads.len()
    );
    assert!(overlaps >= 1, "no SSL_write overlapped an SSL_read");
}

#[test]
fn healthy_want_reads_follow_progress_and_nothing_is_found() {
    let run = run("healthy", 2);
    let mut progressed: HashSet<u64> = HashSet::new();
    let (mut read_bytes, mut want_reads) = (0u64, 0);
    // In stream order, per SSL*: a WANT_READ must come after a read that moved bytes (or
    // a finished handshake) on the same connection.
    let mut violations = Vec::new();
    for r in &run.records {
        let e = &r["data"];
        if r["type"] != "event" {
            continue;
        }
        let Some(ssl) = e["ssl"].as_u64() else {
            continue;
        };
        let probe = e["probe"].as_str().unwrap_or_default();
        if probe == "SSL_read_ex" || probe == "SSL_read" {
            let n = e["bytes"].as_u64().unwrap_or(0);
            read_bytes += n;
            if n > 0 {
                progressed.insert(ssl);
            }
        } else if probe == "SSL_do_handshake" && e["ret"] == 1 {
            progressed.insert(ssl);
        } else if is_error(e, "want_read") {
            want_reads += 1;
            if !progressed.contains(&ssl) {
                violations.push(e.clone());
            }
        }
    }
    let findings: Vec<&Value> = run
        .records
        .iter()
        .filter(|r| r["type"] == "finding")
        .collect();
    eprintln!(
        "healthy: {want_reads} WANT_READ, {read_bytes} bytes read, {} findings",
        findings.len()
    );
    assert!(read_bytes > 0);
    assert!(want_reads > 0);
    assert!(
        violations.is_empty(),
        "{} WANT_READ before any progress on their connection (threads {:?}), the first: {:#?}",
        violations.len(),
        run.ready
            .threads
            .iter()
            .map(|t| (&t.role, t.tid))
            .collect::<Vec<_>>(),
        &violations[..violations.len().min(3)]
    );
    assert!(findings.is_empty(), "{findings:#?}");
    assert_eq!(summary(&run.records)["findings"], Value::Array(vec![]));
}

#[test]
fn busy_poll_is_aggregated_in_the_kernel_without_loss() {
    let run = run("busy-poll", 2);
    let client = run.thread("client");
    let idle: u64 = run
        .events_of(client.tid)
        .iter()
        .filter(|e| e["kind"] == "epoll_idle")
        .map(|e| e["count"].as_u64().expect("count"))
        .sum();
    let lost = &summary(&run.records)["lost"];
    eprintln!(
        "busy-poll: {idle} empty waits aggregated; the client counted {}; lost {lost}",
        run.done.counts.get("client_empty_wakeups")
    );
    assert!(idle >= 10_000, "only {idle} empty waits");
    assert!(idle <= run.done.counts.get("client_empty_wakeups"));
    assert_eq!(lost["ringbuf"], 0);
}

#[test]
fn demo_says_what_to_expect_then_what_it_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("demo.ndjson");
    let out = Command::new(TLS_PROBE)
        .args(["demo", "bad-write-retry", "--duration", "2", "-o"])
        .env("TLS_PROBE_SCENARIOS", scenarios())
        .arg(&output)
        .output()
        .expect("running tls-probe demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", out.status);
    // The header comes before the probes are attached, the recap after the workload ended.
    let header = stderr.find("expect:  a bad_write_retry finding");
    let attached = stderr.find("tls-probe: attached to pid");
    let recap = stderr.find("tls-probe demo: recap");
    assert!(
        header < attached && attached < recap && header.is_some(),
        "{stderr}"
    );
    for needle in [
        "  client          tid ",
        "(the workload finished)",
        "    seen       bad_write_retry on client",
        "bad write retries",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    let records = common::read_ndjson(&output);
    assert!(records.iter().any(|r| r["type"] == "finding"));
    assert_eq!(summary(&records)["stop_reason"], "targets_exited");
}

/// async-stall: the server's handshake calls each pause the async job (ASYNC_pause_job,
/// on the SSL* of the call) and answer WANT_ASYNC, as many times as the server counted.
#[test]
fn async_stall_pauses_the_handshake_job_and_answers_want_async() {
    let run = run("async-stall", 2);
    let server = run.thread("server");
    let ssl = server.ssl[0];
    // Only the three probes of a triple: a record of another kind (an OpenSSL error, a
    // memory-BIO tie) that lands between two of them is not what this test is about.
    let evs: Vec<&Value> = run
        .events_of(server.tid)
        .into_iter()
        .filter(|e| {
            ["ASYNC_pause_job", "SSL_do_handshake", "SSL_get_error"]
                .contains(&e["probe"].as_str().unwrap_or(""))
        })
        .collect();
    let triples = evs
        .windows(3)
        .filter(|w| {
            w[0]["probe"] == "ASYNC_pause_job"
                && w[0]["ssl"] == ssl
                && is_call(w[1], "SSL_do_handshake", Some(ssl))
                && w[1]["ret"] == -1
                && w[2]["ssl"] == ssl
                && is_error(w[2], "want_async")
        })
        .count() as u64;
    let answered = run.done.counts.get("server_want_async");
    eprintln!(
        "async-stall: {triples} pause/SSL_do_handshake/WANT_ASYNC triples; the server counted \
         {answered} WANT_ASYNC and {} pauses",
        run.done.counts.get("server_async_pauses")
    );
    assert!(answered >= 20, "{:?}", run.done.counts);
    assert_eq!(triples, answered);
    // The new event kind, and the finding it leads to, as the schema documents them.
    for (i, r) in run.records.iter().enumerate() {
        schema::check_line(i + 1, &r.to_string());
    }
}
