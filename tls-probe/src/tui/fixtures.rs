//! Synthetic dashboard input with fixed pids and times, for tests and snapshots.
//!
//! Findings and snapshots are built from JSON, the form the engine documents, so that a
//! field the engine adds (an `Option`, null when absent) does not break these fixtures.

use serde_json::{Value, json};

use super::{App, HeaderInfo, Msg, TargetInfo};
use crate::engine::{Change, Finding, FindingChange, Snapshot};

pub const PID: u32 = 4242;
/// The spinning thread.
pub const SPIN_TID: u32 = 4243;
/// CLOCK_MONOTONIC ns when the probes attached, and "now" in every fixture.
pub const ATTACHED_NS: u64 = 1_000_000_000_000;
pub const NOW_NS: u64 = ATTACHED_NS + 83_000_000_000;
const S: u64 = 1_000_000_000;

pub fn header() -> HeaderInfo {
    HeaderInfo {
        targets: vec![TargetInfo {
            pid: PID,
            comm: "spin_server".into(),
            library: "libssl.so.3".into(),
            library_version: Some("3".into()),
        }],
        probe_mode: "full".into(),
        attached_ns: ATTACHED_NS,
        events_per_sec: 84_512.0,
        lost_total: 0,
        overhead_pct: Some(1.4),
    }
}

fn finding(id: u64, evidence: Value, extra: Value) -> Finding {
    let kind = evidence
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default();
    let mut v = json!({
        "id": id,
        "kind": kind,
        "state": "open",
        "severity": "warning",
        "pid": PID,
        "comm": "spin_server",
        "tid": null,
        "ssl": null,
        "fd": null,
        "peer": null,
        "first_seen_ns": NOW_NS - 62 * S,
        "last_seen_ns": NOW_NS,
        "closed_ns": null,
        "evidence": evidence,
        "explanation": "",
        "advice": "",
    });
    for (k, x) in extra.as_object().into_iter().flatten() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).expect("fixture finding matches the engine's Finding")
}

/// The demo's fault: a thread spinning on one connection.
pub fn spin() -> Finding {
    finding(
        1,
        json!({"spin_loop": {
            "wasted_wakeups_per_sec": 41_234.0,
            "wakeups_per_sec": 41_240.0,
            "no_progress_pct": 99.98,
            "wasted_wakeups_total": 2_540_012,
            "ssl_error": "want_read",
            "op": "SSL_read",
            "ready_events": "EPOLLOUT",
            "ready_events_mask": 4,
            "interest": "EPOLLIN|EPOLLOUT",
            "interest_mask": 5,
            "mismatch": "EPOLLOUT is armed while SSL wants READ",
            "thread_cpu_pct": 99.2,
        }}),
        json!({
            "severity": "critical",
            "tid": SPIN_TID,
            "ssl": 0x55d0_c0a4_b2c0_u64,
            "fd": 7,
            "peer": "127.0.0.1:40512",
            "explanation": "The loop keeps waking for fd 7 because EPOLLOUT is armed, but \
                SSL_read answers WANT_READ every time: no byte moves and the thread burns a \
                core.",
            "advice": "Arm EPOLLOUT only while SSL_write has data pending (after WANT_WRITE); \
                after WANT_READ wait for EPOLLIN.",
        }),
    )
}

pub fn busy() -> Finding {
    finding(
        2,
        json!({"busy_epoll_loop": {
            "immediate_wakeups_per_sec": 1_210.0,
            "wakeups_per_sec": 1_300.0,
            "no_progress_pct": 93.1,
            "zero_timeout_pct": 100.0,
            "avg_blocked_ns": 800,
            "avg_ready_fds": 0.0,
            "timeout_ns": 0,
            "thread_cpu_pct": 34.0,
        }}),
        json!({"tid": 4245, "first_seen_ns": NOW_NS - 20 * S}),
    )
}

pub fn closed_retry() -> Finding {
    finding(
        3,
        json!({"bad_write_retry": {
            "occurrences": 3,
            "reason": "bad_write_retry",
            "connection_from": "ssl_call_in_flight",
            "fd_from": "ssl_call_in_flight",
            "arguments_seen": true,
            "moved_buffer": 3,
            "shorter_length": 0,
            "connections": 1,
            "ssl_errors_after": 1,
            "connections_dropped_after": 0,
            "dropped_after_ns": null,
            "reconnect_after_ns": null,
            "moved_buffer_accepted": 0,
            "op": "SSL_write",
            "previous_answer": "want_write",
            "previous_buf": 1000,
            "buf": 2000,
            "previous_len_bytes": 16384,
            "len_bytes": 16384,
            "fate": "bad write retry error",
            "peers": [],
        }}),
        json!({
            "state": "closed",
            "tid": 4244,
            "fd": 9,
            "ssl": 0x55d0_c0a4_c3d0_u64,
            "peer": "127.0.0.1:40520",
            "closed_ns": NOW_NS - 30 * S,
            "last_seen_ns": NOW_NS - 40 * S,
            "first_seen_ns": NOW_NS - 70 * S,
        }),
    )
}

/// Reconnects from the peer of [`closed_retry`], linked to it.
pub fn churn_after_retry() -> Finding {
    finding(
        4,
        json!({"connection_churn": {
            "peer": "127.0.0.1",
            "connections_per_sec": 21.0,
            "connections_total": 240,
            "lifetime_p50_ns": 1_000_000,
            "full_handshakes_total": 240,
            "resumed_handshakes_total": 0,
            "related_finding_ids": [3],
            "bad_write_retries": 3,
        }}),
        json!({"peer": "127.0.0.1", "first_seen_ns": NOW_NS - 60 * S}),
    )
}

fn thread(tid: u32, cpu: f64, wakeups: f64, no_progress: f64, calls: f64) -> Value {
    json!({
        "pid": PID, "tid": tid,
        "first_seen_ns": ATTACHED_NS, "last_seen_ns": NOW_NS,
        "cpu_pct": cpu,
        "wakeups_per_sec": wakeups,
        "wakeups_no_progress_per_sec": no_progress,
        "ssl_calls_per_sec": calls,
        "wakeups_total": 1000, "wakeups_no_progress_total": 900,
        "immediate_wakeups_total": 10, "ssl_calls_total": 2000,
        "last_wait": null,
    })
}

#[expect(clippy::too_many_arguments, reason = "one row of a table")]
fn conn(
    ssl: u64,
    fd: i32,
    tid: u32,
    peer: &str,
    last_ago_s: u64,
    bytes: (u64, u64),
    wants: (u64, u64),
    last_want: Option<&str>,
) -> Value {
    json!({
        "pid": PID, "ssl": ssl, "fd": fd, "closed": false, "peer": peer, "tid": tid,
        "first_seen_ns": ATTACHED_NS, "last_seen_ns": NOW_NS - last_ago_s * S,
        "read_bytes_total": bytes.0, "written_bytes_total": bytes.1,
        "want_read_total": wants.0, "want_write_total": wants.1,
        "last_want": last_want, "handshake_done": true, "ops": [],
    })
}

/// Metrics at `now_ns` with `handshakes` done so far.
pub fn snapshot_at(now_ns: u64, handshakes: u64) -> Snapshot {
    let v = json!({
        "now_ns": now_ns,
        "processes": [{
            "pid": PID, "comm": "spin_server",
            "first_seen_ns": ATTACHED_NS, "last_seen_ns": now_ns,
            "threads": 3, "connections_open": 4, "connections_total": 57,
            "connections_freed_total": 53, "ssl_calls_total": 5_000_000,
            "read_bytes_total": 1_000_000, "written_bytes_total": 2_000_000,
            "want_read_total": 2_540_100, "want_write_total": 12, "failed_total": 1,
            "handshakes_total": handshakes, "wakeups_total": 2_600_000,
            "wakeups_no_progress_total": 2_540_012,
        }],
        "threads": [
            thread(4244, 3.5, 120.0, 2.0, 260.0),
            thread(SPIN_TID, 99.2, 41_240.0, 41_234.0, 41_250.0),
            thread(4245, 34.0, 1_300.0, 1_210.0, 40.0),
        ],
        "connections": [
            conn(0x55d0_c0a4_b2c0, 7, SPIN_TID, "127.0.0.1:40512", 0, (517, 0), (2_540_012, 0),
                Some("want_read")),
            conn(0x55d0_c0a4_c3d0, 9, 4244, "127.0.0.1:40520", 40, (1_258_291, 3_400_000),
                (40, 12), Some("want_write")),
            conn(0x55d0_c0a4_d4e0, 11, 4244, "127.0.0.1:40524", 2, (88_000, 91_000), (60, 0),
                None),
            conn(0x55d0_c0a4_e5f0, 12, 4245, "[::1]:40530", 5, (0, 0), (0, 0), None),
        ],
        "open_findings": 2,
        "evicted_connections_total": 0,
        "evicted_threads_total": 0,
        "unmatched_ssl_errors_total": 0,
    });
    serde_json::from_value(v).expect("fixture snapshot matches the engine's Snapshot")
}

/// A server's handshakes: 990 full, 10 resumed, TLS 1.3 with one cipher.
pub fn handshake_snapshot() -> crate::engine::HandshakeSnapshot {
    serde_json::from_value(json!({
        "started_total": 1_001, "completed_total": 1_000, "full_total": 990,
        "resumed_total": 10, "implicit_full_total": 0, "failed_total": 0,
        "abandoned_total": 0, "in_progress": 1, "started_per_sec": 600.0,
        "completed_per_sec": 600.0, "full_per_sec": 594.0, "resumed_per_sec": 6.0,
        "failed_per_sec": 0.0, "resumption_pct": 1.0, "latency_p50_ns": 1_800_000,
        "latency_p99_ns": 9_500_000, "cpu_p50_ns": 1_500_000, "cpu_p99_ns": 3_000_000,
        "full_cpu_mean_ns": 1_600_000, "server_hello_total": 1_000, "psk_total": 10,
        "psk_disagree_total": 0,
        "tls_versions": [{"name": "TLS 1.3", "total": 1_000}],
        "ciphers": [{"name": "TLS_AES_256_GCM_SHA384", "total": 1_000}],
    }))
    .expect("fixture matches the engine's HandshakeSnapshot")
}

pub fn opened(f: Finding) -> Msg {
    Msg::Finding(Box::new(FindingChange {
        change: Change::Opened,
        finding: f,
    }))
}

/// An app that has seen a minute and a half of the spin scenario.
pub fn spin_app(color: bool) -> App {
    let mut app = App::new(color);
    app.update(Msg::Header(header()));
    // Handshake history: 12 points of a varying rate, then the snapshot shown.
    let mut total = 0;
    for i in 0..12u64 {
        total += [3, 5, 8, 4, 12, 20, 6, 2, 9, 15, 7, 10][i as usize];
        app.update(Msg::Snapshot(Box::new(snapshot_at(
            NOW_NS - (12 - i) * S,
            total,
        ))));
    }
    app.update(Msg::Snapshot(Box::new(snapshot_at(NOW_NS, total + 11))));
    for f in [spin(), busy(), closed_retry()] {
        app.update(opened(f));
    }
    app.update(Msg::Tick { now_ns: NOW_NS });
    app
}
