//! spin_loop edges.

use super::*;
use crate::engine::{Evidence, FindingState, Severity};

const A: u64 = 0x55d0_0000_a000;
const B: u64 = 0x55d0_0000_b000;

fn spin_evidence(f: &Finding) -> &crate::engine::SpinEvidence {
    match &f.evidence {
        Evidence::SpinLoop(e) => e,
        other => panic!("not a spin: {other:?}"),
    }
}

#[test]
fn spin_above_threshold_opens_within_two_seconds() {
    let mut sim = Sim::new();
    let start = sim.now;
    sim.every(200 * US, 3 * SEC, |s| s.spin_once(TID, A, 7));
    let opened = sim.changes_of(Change::Opened, FindingKind::SpinLoop);
    assert_eq!(opened.len(), 1, "{:?}", sim.changes);
    let (at, f) = opened[0];
    assert!(
        at - start <= 2 * SEC,
        "opened {} ms after start",
        (at - start) / MS
    );
    assert!(
        at - start >= 800 * MS,
        "opened too soon: {} ms",
        (at - start) / MS
    );
    assert_eq!(
        (f.pid, f.tid, f.ssl, f.fd),
        (PID, Some(TID), Some(A), Some(7))
    );
    assert_eq!(f.comm.as_deref(), Some("nginx"));
    assert_eq!(f.state, FindingState::Open);
    let e = spin_evidence(f);
    // Over the last second: the spin started less than a second before.
    assert!(
        (4000.0..=5100.0).contains(&e.wasted_wakeups_per_sec),
        "{e:?}"
    );
    assert_eq!(e.no_progress_pct, 100.0);
    assert_eq!(e.ssl_error, Some(SslErrorCode::WantRead));
    assert_eq!(e.op, Some(SslOp::Read));
    assert_eq!(e.interest.as_deref(), Some("EPOLLIN|EPOLLOUT"));
    assert_eq!(e.ready_events.as_deref(), Some("EPOLLOUT"));
    assert_eq!(
        e.mismatch.as_deref(),
        Some("EPOLLOUT is armed while SSL wants READ")
    );
    assert!(
        f.explanation
            .contains("EPOLLOUT is armed while SSL wants READ")
    );
    assert!(f.advice.contains("disarm EPOLLOUT"));
    // A spin is not also a busy loop.
    assert!(sim.opened(FindingKind::BusyEpollLoop).is_empty());
    // Still open, and updated at most every few seconds, not per event.
    let updated = sim.changes_of(Change::Updated, FindingKind::SpinLoop);
    assert!(updated.len() <= 1, "{} updates", updated.len());
}

#[test]
fn summary_line_and_cpu() {
    let mut sim = Sim::new();
    sim.cpu(TID, 0);
    let mut cpu = 0;
    let mut next_sample = sim.now + SEC;
    sim.every(200 * US, 2 * SEC, |s| {
        s.spin_once(TID, A, 7);
        if s.now >= next_sample {
            // All of the time since the last sample was spent on CPU.
            cpu += SEC;
            next_sample += SEC;
            s.cpu(TID, cpu);
        }
    });
    let all = sim.engine.findings();
    assert_eq!(all.len(), 1);
    let f = &all[0];
    assert_eq!(f.severity, Severity::Critical);
    let e = spin_evidence(f);
    assert!(e.thread_cpu_pct.is_some_and(|c| c > 90.0), "{e:?}");
    let line = f.summary_line();
    let expected = format!(
        "spin_loop pid=4242 (nginx) tid=4243 fd=7 ssl={A:#x}: {:.0} wasted wake-ups/s (100% no \
         progress), SSL wants READ, EPOLLOUT armed, thread CPU {:.0}%",
        e.wasted_wakeups_per_sec,
        e.thread_cpu_pct.unwrap_or_default()
    );
    assert_eq!(line, expected);
}

#[test]
fn spin_below_threshold_is_not_flagged() {
    let mut sim = Sim::new();
    // 150 wasted wake-ups a second, for 3 s.
    sim.every(SEC / 150, 3 * SEC, |s| s.spin_once(TID, A, 7));
    sim.assert_quiet();
}

#[test]
fn short_burst_is_not_sustained() {
    let mut sim = Sim::new();
    // 400 wasted wake-ups within 80 ms: far above the rate, but one bucket only.
    sim.every(200 * US, 80 * MS, |s| s.spin_once(TID, A, 7));
    sim.idle(3 * SEC);
    sim.assert_quiet();
}

#[test]
fn spin_that_stops_closes() {
    let mut sim = Sim::new();
    sim.every(200 * US, 2 * SEC, |s| s.spin_once(TID, A, 7));
    let stopped = sim.now;
    assert_eq!(sim.opened(FindingKind::SpinLoop).len(), 1);
    // The loop now blocks as it should: nothing ready, no calls.
    sim.idle(4 * SEC);
    let closed = sim.changes_of(Change::Closed, FindingKind::SpinLoop);
    assert_eq!(closed.len(), 1);
    let f = closed[0].1;
    assert_eq!(
        (f.ssl, f.fd, f.state),
        (Some(A), Some(7), FindingState::Closed)
    );
    // The condition stops holding within a bucket, and the finding closes a window later.
    let closed_ns = f.closed_ns.expect("closed_ns");
    assert!(
        closed_ns >= stopped + 900 * MS && closed_ns <= stopped + 1_300 * MS,
        "closed {} ms after stop",
        (closed_ns - stopped) / MS
    );
    assert!(f.last_seen_ns <= stopped);
    let all = sim.engine.findings();
    assert_eq!(all.len(), 1);
    assert!(!all[0].is_open());
}

#[test]
fn healthy_drain_to_want_read_is_progress() {
    let mut sim = Sim::new();
    // 5000 wake-ups a second, each reading data and then WANT_READ: a busy but healthy loop.
    sim.every(200 * US, 3 * SEC, |s| s.drain_once(TID, A, 7, 5 * US));
    sim.assert_quiet();
    let snap = sim.engine.snapshot();
    let t = &snap.threads[0];
    assert!(
        t.wakeups_total >= 14_000 && t.wakeups_no_progress_total == 0,
        "{t:?}"
    );
}

#[test]
fn want_code_inferred_without_get_error() {
    let mut sim = Sim::new();
    sim.report = ErrorReport::Infer;
    sim.every(200 * US, 2 * SEC, |s| s.spin_once(TID, A, 7));
    let opened = sim.opened(FindingKind::SpinLoop);
    assert_eq!(opened.len(), 1);
    assert_eq!(
        spin_evidence(opened[0]).ssl_error,
        Some(SslErrorCode::WantRead)
    );
    let snap = sim.engine.snapshot();
    assert_eq!(
        snap.connections[0].want_read_total,
        snap.processes[0].want_read_total
    );
    assert!(snap.connections[0].want_read_total >= 9_000);
    assert_eq!(snap.unmatched_ssl_errors_total, 0);
}

#[test]
fn fd_reuse_after_close() {
    let mut sim = Sim::new();
    sim.every(200 * US, 2 * SEC, |s| s.spin_once(TID, A, 7));
    assert_eq!(sim.opened(FindingKind::SpinLoop).len(), 1);
    sim.close(TID, 7);
    // The connection is gone: its finding closes at once, not a window later.
    let closed = sim.changes_of(Change::Closed, FindingKind::SpinLoop);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].1.ssl, Some(A));
    sim.free(TID, A);

    // A new connection gets fd 7 and is healthy: nothing is inherited.
    sim.every(500 * US, 2 * SEC, |s| s.drain_once(TID, B, 7, 100 * US));
    assert_eq!(sim.opened(FindingKind::SpinLoop).len(), 1);
    let snap = sim.engine.snapshot();
    assert_eq!(snap.connections.len(), 1);
    assert_eq!(
        (snap.connections[0].ssl, snap.connections[0].fd),
        (B, Some(7))
    );
    assert_eq!(
        snap.connections[0].want_read_total,
        snap.connections[0].ops[0].want_read_total
    );

    // Then it spins itself: a new finding, about B.
    sim.every(200 * US, 2 * SEC, |s| s.spin_once(TID, B, 7));
    let opened = sim.opened(FindingKind::SpinLoop);
    assert_eq!(opened.len(), 2);
    assert_eq!((opened[1].ssl, opened[1].fd), (Some(B), Some(7)));
    assert_ne!(opened[0].id, opened[1].id);
    let e = spin_evidence(opened[1]);
    assert!(e.wasted_wakeups_total < 10_001, "{e:?}");
}

#[test]
fn ssl_reuse_after_free() {
    let mut sim = Sim::new();
    sim.every(200 * US, 2 * SEC, |s| s.spin_once(TID, A, 7));
    sim.free(TID, A);
    sim.close(TID, 7);
    let closed = sim.changes_of(Change::Closed, FindingKind::SpinLoop);
    assert_eq!(closed.len(), 1);
    let freed_at = sim.now;

    // The allocator hands the same SSL* to a new connection on fd 9; it is healthy.
    sim.every(500 * US, 2 * SEC, |s| s.drain_once(TID, A, 9, 100 * US));
    assert_eq!(sim.opened(FindingKind::SpinLoop).len(), 1);
    let snap = sim.engine.snapshot();
    let c = &snap.connections[0];
    assert_eq!((c.ssl, c.fd), (A, Some(9)));
    assert!(c.first_seen_ns > freed_at);
    assert_eq!(c.read_bytes_total, 512 * 4000);
    assert_eq!(snap.processes[0].connections_total, 2);
    assert_eq!(snap.processes[0].connections_freed_total, 1);
}

#[test]
fn thread_moving_between_connections() {
    let mut sim = Sim::new();
    // The thread spins on A, then leaves A alone and spins on B.
    sim.every(200 * US, 2 * SEC, |s| s.spin_once(TID, A, 7));
    sim.every(200 * US, 3 * SEC, |s| s.spin_once(TID, B, 8));
    let opened = sim.opened(FindingKind::SpinLoop);
    assert_eq!(opened.len(), 2);
    assert_eq!(
        (opened[0].ssl, opened[0].fd, opened[0].tid),
        (Some(A), Some(7), Some(TID))
    );
    assert_eq!(
        (opened[1].ssl, opened[1].fd, opened[1].tid),
        (Some(B), Some(8), Some(TID))
    );
    let closed = sim.changes_of(Change::Closed, FindingKind::SpinLoop);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].1.ssl, Some(A));
    assert!(sim.opened(FindingKind::BusyEpollLoop).is_empty());
}

#[test]
fn connection_moving_between_threads_keeps_one_finding() {
    let mut sim = Sim::new();
    let mut n = 0u32;
    // Worker threads take turns on the same spinning connection.
    sim.every(200 * US, 3 * SEC, |s| {
        n += 1;
        s.spin_once(TID + n % 2, A, 7);
    });
    let opened = sim.opened(FindingKind::SpinLoop);
    assert_eq!(opened.len(), 1);
    assert_eq!((opened[0].ssl, opened[0].fd), (Some(A), Some(7)));
    assert!(
        sim.changes_of(Change::Closed, FindingKind::SpinLoop)
            .is_empty()
    );
}

#[test]
fn timeout_wakeups_are_not_spin() {
    let mut sim = Sim::new();
    // Nothing ready (a timer wake-up) yet the loop polls the connection: not readiness
    // driven, so not a spin; the busy loop rule owns it if it is fast enough.
    sim.every(SEC / 500, 3 * SEC, |s| {
        s.wait(TID, Some(2), 2 * MS, vec![]);
        s.read_want(TID, A, 7);
    });
    sim.assert_quiet();
}

#[test]
fn steady_spin_updates_every_few_seconds_only() {
    let mut sim = Sim::new();
    sim.every(200 * US, 12 * SEC, |s| s.spin_once(TID, A, 7));
    assert_eq!(sim.opened(FindingKind::SpinLoop).len(), 1);
    // Opened after ~1 s; the rate stays put, so only the periodic 5 s updates come.
    let updated = sim.changes_of(Change::Updated, FindingKind::SpinLoop);
    assert_eq!(updated.len(), 2, "{updated:?}");
    assert!(
        sim.changes_of(Change::Closed, FindingKind::SpinLoop)
            .is_empty()
    );
}

#[test]
fn spin_without_epoll_is_seen_through_failed_calls() {
    let mut sim = Sim::new();
    // A thread that waits in something not probed (poll, select) and calls SSL_read on
    // every return: each failed call ends an iteration.
    sim.every(200 * US, 2 * SEC, |s| s.read_want(TID, A, 7));
    let opened = sim.opened(FindingKind::SpinLoop);
    assert_eq!(opened.len(), 1);
    let e = spin_evidence(opened[0]);
    assert_eq!(
        (e.ssl_error, e.interest.as_deref(), e.mismatch.as_deref()),
        (Some(SslErrorCode::WantRead), None, None)
    );
    assert!(sim.opened(FindingKind::BusyEpollLoop).is_empty());
}

#[test]
fn blocking_and_slow_readers_without_epoll_are_quiet() {
    let mut sim = Sim::new();
    // A blocking reader that gets data on every call, and one whose read times out every
    // 200 ms (SO_RCVTIMEO: WANT_READ) with nothing to read.
    sim.every(5 * MS, 3 * SEC, |s| s.read(TID, A, 7, 64));
    sim.every(200 * MS, 3 * SEC, |s| s.read_want(TID + 1, B, 8));
    sim.assert_quiet();
}

#[test]
fn record_split_over_many_segments_is_not_a_spin() {
    let mut sim = Sim::new();
    // An upload over a real network: each 16 KiB record arrives in 1448-byte segments, each
    // waking the loop; SSL_read consumes the segment (a read that returns it, then EAGAIN)
    // and answers WANT_READ until the record is complete: 10 wake-ups in 11 move no
    // application byte. 700 segments a second.
    let mut n = 0u64;
    sim.every(1_430 * US, 3 * SEC, |s| {
        n += 1;
        s.wait(TID, Some(-1), 1_400 * US, vec![ready(7, EPOLLIN, EPOLLIN)]);
        if n.is_multiple_of(11) {
            s.read(TID, A, 7, 16_384);
        }
        let mut c = call(SslOp::Read, A, 7, -1, 0);
        c.sys_calls = 2;
        s.ssl(TID, c, Some(SslErrorCode::WantRead));
    });
    sim.assert_quiet();
}

/// `--mode auto` confirms a spin with the per-call probes, then turns them off: the
/// kernel's aggregated waits (the same fd ready again) keep the finding open with its
/// rate, counted as inferred; aggregated waits for another fd do not.
#[test]
fn kernel_aggregates_keep_a_confirmed_spin_going() {
    use crate::event::{EpollBusy, EpollSyscall};
    let busy = |s: &mut Sim, fd: i32| {
        let first_ns = s.now;
        s.now += 20 * MS;
        // 5000 waits a second, sent as one record per 20 ms.
        let w = EpollBusy {
            syscall: EpollSyscall::EpollWait,
            epfd: 3,
            count: 100,
            quick: 100,
            repeats: 100,
            zero_timeout: 0,
            ready_total: 100,
            first_ns,
            blocked_ns: 100 * 2 * US,
            last_ready: ready(fd, EPOLLOUT, EPOLLIN | EPOLLOUT),
        };
        s.feed(TID, EventKind::EpollBusy(w));
    };
    for (fd, kept) in [(7, true), (9, false)] {
        let mut sim = Sim::new();
        sim.every(200 * US, 2 * SEC, |s| s.spin_once(TID, A, 7));
        assert_eq!(
            sim.opened(FindingKind::SpinLoop).len(),
            1,
            "{:?}",
            sim.changes
        );
        // 20 s with the per-call probes off, far past the close timer.
        sim.every(20 * MS, 20 * SEC, |s| busy(s, fd));
        let closed = sim.changes_of(Change::Closed, FindingKind::SpinLoop);
        if !kept {
            assert_eq!(
                closed.len(),
                1,
                "another fd keeps nothing: {:?}",
                sim.changes
            );
            continue;
        }
        assert!(
            closed.is_empty(),
            "closed while the fd kept spinning: {closed:?}"
        );
        let f = sim
            .engine
            .findings()
            .into_iter()
            .find(|f| f.kind == FindingKind::SpinLoop)
            .expect("the spin finding");
        assert_eq!((f.tid, f.ssl, f.fd), (Some(TID), Some(A), Some(7)));
        let e = spin_evidence(&f);
        assert!(e.wasted_wakeups_inferred >= 90_000, "{e:?}");
        assert!(
            (4_000.0..=5_500.0).contains(&e.wasted_wakeups_per_sec),
            "the rate comes from the aggregates: {e:?}"
        );
        assert_eq!(
            e.ssl_error,
            Some(SslErrorCode::WantRead),
            "kept from the calls"
        );
    }
}

#[test]
fn cpu_is_not_applicable_until_measured_over_a_span() {
    let mut sim = Sim::new();
    // At attach, then the first tick 20 ms later: the kernel's 10 ms counters have not
    // moved, which is no measure of 0%.
    sim.cpu(TID, 5 * SEC);
    sim.now += 20 * MS;
    sim.cpu(TID, 5 * SEC);
    sim.every(200 * US, 1200 * MS, |s| s.spin_once(TID, A, 7));
    let f = sim.opened(FindingKind::SpinLoop)[0].clone();
    assert_eq!(spin_evidence(&f).thread_cpu_pct, None, "{f:?}");
    assert!(
        f.summary_line().ends_with(", thread CPU n/a"),
        "{}",
        f.summary_line()
    );
    // A second later, the span from the first sample is measured.
    sim.cpu(TID, 5 * SEC + 1200 * MS);
    let snap = sim.engine.snapshot();
    let cpu = snap.threads.iter().find(|t| t.tid == TID).unwrap().cpu_pct;
    assert!(cpu.is_some_and(|c| c > 90.0), "{cpu:?}");
}
