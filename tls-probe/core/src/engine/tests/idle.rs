//! Immediate empty waits aggregated in the kernel (`EpollIdle`): each counts as a wake-up
//! with no ready fd and no progress, in the busy rule and in the thread and process metrics.

use super::*;
use crate::engine::{BusyEvidence, Evidence, FindingState};

fn busy_evidence(f: &Finding) -> &BusyEvidence {
    match &f.evidence {
        Evidence::BusyEpollLoop(e) => e,
        other => panic!("not a busy loop: {other:?}"),
    }
}

/// The kernel's flush size: one aggregate per this many waits (or 20 ms).
const FLUSH: u32 = 4096;

#[test]
fn aggregated_busy_poll_is_flagged_and_counted() {
    let mut sim = Sim::new();
    let start = sim.now;
    // epoll_wait(timeout=0) a million times a second, nothing ready: one aggregate of 4096
    // waits every 4.096 ms, as the kernel sends them.
    let mut waits = 0u64;
    sim.every(4096 * US, 3 * SEC, |s| {
        s.empty_waits(TID, FLUSH, 4096 * US);
        waits += u64::from(FLUSH);
    });
    let opened = sim.changes_of(Change::Opened, FindingKind::BusyEpollLoop);
    assert_eq!(opened.len(), 1, "{:?}", sim.changes);
    let (at, f) = opened[0];
    assert!(
        at - start <= 2 * SEC,
        "opened {} ms after start",
        (at - start) / MS
    );
    assert_eq!((f.pid, f.tid, f.ssl, f.fd), (PID, Some(TID), None, None));
    let e = busy_evidence(f);
    assert!(
        (950_000.0..=1_050_000.0).contains(&e.immediate_wakeups_per_sec),
        "{e:?}"
    );
    assert_eq!(
        (e.zero_timeout_pct, e.no_progress_pct, e.timeout_ns),
        (100.0, 100.0, Some(0))
    );
    assert_eq!((e.avg_blocked_ns, e.avg_ready_fds), (US, 0.0));
    assert!(f.explanation.contains("zero timeout"), "{}", f.explanation);
    assert!(sim.opened(FindingKind::SpinLoop).is_empty());

    let snap = sim.engine.snapshot();
    let t = &snap.threads[0];
    assert!(
        (950_000.0..=1_050_000.0).contains(&t.wakeups_per_sec),
        "{t:?}"
    );
    assert_eq!(t.wakeups_per_sec, t.wakeups_no_progress_per_sec);
    let w = t.last_wait.as_ref().expect("the last aggregated wait");
    assert_eq!((w.timeout_ns, w.ret, w.blocked_ns), (Some(0), 0, US));

    // It stops: the loop blocks again, and the finding closes. Every aggregated wait has
    // been counted once: the last one when the next wait ended its iteration.
    sim.every(100 * MS, 3 * SEC, |s| {
        s.wait(TID, Some(-1), 100 * MS, vec![])
    });
    let closed = sim.changes_of(Change::Closed, FindingKind::BusyEpollLoop);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].1.state, FindingState::Closed);
    let snap = sim.engine.snapshot();
    let (t, p) = (&snap.threads[0], &snap.processes[0]);
    let blocking = 29; // the 100 ms waits ended so far, the last one's still open
    assert_eq!(t.wakeups_total, waits + blocking);
    assert_eq!(t.immediate_wakeups_total, waits);
    assert_eq!(t.wakeups_no_progress_total, waits + blocking);
    assert_eq!(
        (p.wakeups_total, p.wakeups_no_progress_total),
        (waits + blocking, waits + blocking)
    );
}

#[test]
fn slow_aggregated_polling_is_quiet() {
    let mut sim = Sim::new();
    // 500 empty polls a second, flushed every 20 ms: under the 1000/s threshold.
    sim.every(20 * MS, 3 * SEC, |s| s.empty_waits(TID, 10, 20 * MS));
    sim.assert_quiet();
    let t = &sim.engine.snapshot().threads[0];
    assert!((450.0..=550.0).contains(&t.wakeups_per_sec), "{t:?}");
}

#[test]
fn polling_then_reading_anyway_is_a_busy_loop_not_a_spin() {
    let mut sim = Sim::new();
    let ssl = 0x55d0_0000_d000;
    // epoll_wait(0) says nothing is ready, the loop calls SSL_read anyway and gets
    // WANT_READ: 10 000 times a second. The calls stream one by one, the waits come
    // aggregated after them.
    sim.every(20 * MS, 3 * SEC, |s| {
        let t = s.now;
        for _ in 0..200 {
            s.read_want(TID, ssl, 7);
        }
        let spent = s.now - t;
        s.now = t;
        s.empty_waits(TID, 200, spent.max(20 * MS));
    });
    let opened = sim.opened(FindingKind::BusyEpollLoop);
    assert_eq!(opened.len(), 1, "{:?}", sim.changes);
    let e = busy_evidence(opened[0]);
    assert!(
        (9_000.0..=10_500.0).contains(&e.immediate_wakeups_per_sec),
        "{e:?}"
    );
    // Nothing was ready: the loop did not wake up "for" the connection.
    assert!(sim.opened(FindingKind::SpinLoop).is_empty());
}

#[test]
fn empty_polls_between_busy_work_are_quiet() {
    let mut sim = Sim::new();
    let ssl = 0x55d0_0000_e000;
    // A loop under load that polls with a zero timeout: every wait either finds a request
    // ready and serves it, or finds nothing (aggregated, flushed before the next ready
    // one). Half the wake-ups make progress.
    sim.every(500 * US, 3 * SEC, |s| {
        s.empty_waits(TID, 2, 20 * US);
        s.wait(TID, Some(0), US, vec![ready(7, EPOLLIN, EPOLLIN)]);
        s.read(TID, ssl, 7, 512);
        s.read_want(TID, ssl, 7);
        s.ssl(TID, call(SslOp::Write, ssl, 7, 2000, 2000), None);
    });
    sim.assert_quiet();
    let t = &sim.engine.snapshot().threads[0];
    assert!((5_500.0..=6_500.0).contains(&t.wakeups_per_sec), "{t:?}");
    assert!(
        (3_500.0..=4_500.0).contains(&t.wakeups_no_progress_per_sec),
        "{t:?}"
    );
}

#[test]
fn calls_after_the_last_aggregated_wait_count_in_its_iteration() {
    let mut sim = Sim::new();
    let ssl = 0x55d0_0000_f000;
    sim.empty_waits(TID, 100, MS);
    sim.read(TID, ssl, 7, 512);
    let snap = sim.engine.snapshot();
    let t = &snap.threads[0];
    assert_eq!((t.wakeups_total, t.wakeups_no_progress_total), (99, 99));
    let w = t.last_wait.as_ref().expect("the last aggregated wait");
    assert_eq!(
        (w.timeout_ns, w.ret, w.ssl_calls, w.progress),
        (Some(0), 0, 1, true)
    );
    sim.wait(TID, Some(-1), MS, vec![]);
    let t = &sim.engine.snapshot().threads[0];
    assert_eq!(
        (
            t.wakeups_total,
            t.wakeups_no_progress_total,
            t.immediate_wakeups_total
        ),
        (100, 99, 100)
    );
}
