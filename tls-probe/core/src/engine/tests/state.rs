//! Metrics, serialization and bounds.

use super::*;
use crate::engine::{Severity, Snapshot};

const S1: u64 = 0x55d0_0000_1000;

#[test]
fn connection_and_process_metrics() {
    let mut sim = Sim::new();
    sim.wait(TID, Some(-1), MS, vec![ready(7, EPOLLIN, EPOLLIN)]);
    sim.ssl(
        TID,
        call(SslOp::Accept, S1, 7, -1, 0),
        Some(SslErrorCode::WantRead),
    );
    sim.ssl(TID, call(SslOp::Accept, S1, 7, 1, 0), None);
    sim.read(TID, S1, 7, 300);
    sim.read_want(TID, S1, 7);
    sim.ssl(
        TID,
        call(SslOp::Write, S1, 7, -1, 0),
        Some(SslErrorCode::WantWrite),
    );
    sim.ssl(TID, call(SslOp::WriteEx, S1, 7, 1, 4000), None);
    sim.wait(TID, Some(-1), MS, vec![]);
    let snap = sim.engine.snapshot();
    assert_eq!(snap.connections.len(), 1);
    let c = &snap.connections[0];
    assert_eq!(
        (c.pid, c.ssl, c.fd, c.tid, c.closed),
        (PID, S1, Some(7), TID, false)
    );
    assert_eq!((c.read_bytes_total, c.written_bytes_total), (300, 4000));
    assert_eq!((c.want_read_total, c.want_write_total), (2, 1));
    assert_eq!(c.last_want, Some(SslErrorCode::WantWrite));
    assert!(c.handshake_done);
    let ops: Vec<(SslOp, u64, u64)> = c
        .ops
        .iter()
        .map(|o| (o.op, o.calls_total, o.progress_total))
        .collect();
    assert_eq!(
        ops,
        vec![
            (SslOp::Read, 2, 1),
            (SslOp::Write, 1, 0),
            (SslOp::WriteEx, 1, 1),
            (SslOp::Accept, 2, 1)
        ]
    );
    let p = &snap.processes[0];
    assert_eq!((p.pid, p.comm.as_deref()), (PID, Some("nginx")));
    assert_eq!(
        (p.ssl_calls_total, p.handshakes_total, p.connections_open),
        (6, 1, 1)
    );
    assert_eq!((p.read_bytes_total, p.written_bytes_total), (300, 4000));
    assert_eq!((p.wakeups_total, p.wakeups_no_progress_total), (1, 0));
    let t = &snap.threads[0];
    assert_eq!((t.tid, t.ssl_calls_total, t.wakeups_total), (TID, 6, 1));
    let w = t.last_wait.as_ref().expect("a wait");
    assert_eq!((w.ret, w.ssl_calls, w.progress), (0, 0, false));

    // Close, then free: the fd mapping goes first, the connection second.
    sim.close(TID, 7);
    let snap = sim.engine.snapshot();
    assert_eq!(
        (snap.connections[0].fd, snap.connections[0].closed),
        (None, true)
    );
    sim.free(TID, S1);
    let snap = sim.engine.snapshot();
    assert!(snap.connections.is_empty());
    assert_eq!(snap.processes[0].connections_freed_total, 1);
}

#[test]
fn findings_and_snapshots_round_trip_with_nulls() {
    let mut sim = Sim::new();
    sim.every(200 * US, 2 * SEC, |s| s.wait(TID, Some(0), US, vec![]));
    let f = sim.engine.findings().pop().expect("a busy loop");
    let json = serde_json::to_value(&f).expect("serialize");
    // Unknown values are present as null, not omitted.
    assert_eq!(json["fd"], serde_json::Value::Null);
    assert_eq!(json["ssl"], serde_json::Value::Null);
    assert_eq!(json["peer"], serde_json::Value::Null);
    assert_eq!(json["kind"], "busy_epoll_loop");
    assert_eq!(json["severity"], "warning");
    assert_eq!(json["state"], "open");
    assert!(json["evidence"]["busy_epoll_loop"]["immediate_wakeups_per_sec"].is_number());
    assert_eq!(
        json["evidence"]["busy_epoll_loop"]["ready_fd"],
        serde_json::Value::Null
    );
    let back: Finding = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, f);
    assert_eq!(back.severity, Severity::Warning);

    let changes: Vec<FindingChange> = sim.changes.iter().map(|(_, c)| c.clone()).collect();
    let text = serde_json::to_string(&changes).expect("serialize");
    assert!(text.contains(r#""change":"opened""#));
    let back: Vec<FindingChange> = serde_json::from_str(&text).expect("deserialize");
    assert_eq!(back, changes);

    let snap = sim.engine.snapshot();
    let back: Snapshot = serde_json::from_str(&serde_json::to_string(&snap).expect("serialize"))
        .expect("deserialize");
    assert_eq!(back, snap);
}

#[test]
fn connections_are_capped() {
    let mut sim = Sim::with_config(Config {
        max_connections: 20,
        ..Config::default()
    });
    for i in 0..100u64 {
        sim.read(TID, S1 + i * 0x1000, 10 + i as i32, 10);
    }
    let snap = sim.engine.snapshot();
    assert!(snap.connections.len() <= 20, "{}", snap.connections.len());
    assert!(snap.evicted_connections_total >= 80);
    // The newest survive.
    assert!(snap.connections.iter().any(|c| c.ssl == S1 + 99 * 0x1000));
    assert_eq!(snap.processes[0].connections_total, 100);
}

#[test]
fn idle_state_is_retired() {
    let mut sim = Sim::with_config(Config {
        idle_retire_ns: 10 * SEC,
        ..Config::default()
    });
    sim.drain_once(TID, S1, 7, MS);
    sim.idle(5 * SEC);
    assert_eq!(sim.engine.snapshot().connections.len(), 1);
    sim.idle(12 * SEC);
    let snap = sim.engine.snapshot();
    assert!(snap.connections.is_empty() && snap.threads.is_empty() && snap.processes.is_empty());
    assert!(snap.evicted_connections_total == 1 && snap.evicted_threads_total == 1);
}

#[test]
fn late_get_error_is_inferred() {
    let mut sim = Sim::new();
    sim.report = ErrorReport::Infer;
    // A failing call, then the thread goes quiet: the code is inferred within a tick.
    sim.read_want(TID, S1, 7);
    sim.idle(SEC);
    let snap = sim.engine.snapshot();
    assert_eq!(snap.connections[0].want_read_total, 1);
}

/// A trace of a spin that starts, stops, and starts again on a second connection.
fn replay_trace(sim: &mut Sim, advance_every: Option<u64>) {
    let mut last_advance = sim.now;
    let mut step = |s: &mut Sim| {
        if let Some(every) = advance_every
            && s.now >= last_advance + every
        {
            // The live agent calls advance() from a timer, between events.
            last_advance = s.now;
            s.idle(0);
        }
    };
    sim.every(200 * US, 2 * SEC, |s| {
        s.spin_once(TID, S1, 7);
        step(s);
    });
    sim.every(50 * MS, 3 * SEC, |s| {
        s.wait(TID, Some(-1), 50 * MS, vec![]);
        step(s);
    });
    sim.every(300 * US, 2 * SEC, |s| {
        s.spin_once(TID, S1 + 0x1000, 8);
        step(s);
    });
    sim.wait(TID, Some(-1), 30 * SEC, vec![]);
}

#[test]
fn output_does_not_depend_on_advance_calls() {
    let mut plain = Sim::new();
    replay_trace(&mut plain, None);
    let mut live = Sim::new();
    replay_trace(&mut live, Some(37 * MS));
    let strip =
        |s: &Sim| -> Vec<FindingChange> { s.changes.iter().map(|(_, c)| c.clone()).collect() };
    let (a, b) = (strip(&plain), strip(&live));
    // Two spins, each opened and closed, the same to the nanosecond.
    let kinds: Vec<(Change, FindingKind, Option<u64>)> = a
        .iter()
        .map(|c| (c.change, c.finding.kind, c.finding.ssl))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (Change::Opened, FindingKind::SpinLoop, Some(S1)),
            (Change::Closed, FindingKind::SpinLoop, Some(S1)),
            (Change::Opened, FindingKind::SpinLoop, Some(S1 + 0x1000)),
            (Change::Closed, FindingKind::SpinLoop, Some(S1 + 0x1000)),
        ]
    );
    assert_eq!(a, b);
}

#[test]
fn long_idle_gap_is_cheap() {
    let mut sim = Sim::new();
    sim.every(200 * US, 2 * SEC, |s| s.spin_once(TID, S1, 7));
    // A day of nothing: the spin closes on time, and the catch-up does not tick a day.
    sim.idle(86_400 * SEC);
    let closed = sim.changes_of(Change::Closed, FindingKind::SpinLoop);
    assert_eq!(closed.len(), 1);
    assert!(closed[0].1.closed_ns.is_some_and(|c| c < T0 + 5 * SEC));
}
