//! busy_epoll_loop edges, and the healthy loops that must stay quiet.

use super::*;
use crate::engine::{Evidence, FindingState};

fn busy_evidence(f: &Finding) -> &crate::engine::BusyEvidence {
    match &f.evidence {
        Evidence::BusyEpollLoop(e) => e,
        other => panic!("not a busy loop: {other:?}"),
    }
}

#[test]
fn zero_timeout_polling_is_flagged() {
    let mut sim = Sim::new();
    let start = sim.now;
    // epoll_wait(timeout=0) 5000 times a second, nothing ready, nothing done.
    sim.every(200 * US, 3 * SEC, |s| s.wait(TID, Some(0), US, vec![]));
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
        (4000.0..=5100.0).contains(&e.immediate_wakeups_per_sec),
        "{e:?}"
    );
    assert_eq!(e.zero_timeout_pct, 100.0);
    assert_eq!(e.no_progress_pct, 100.0);
    assert_eq!(e.timeout_ns, Some(0));
    assert!(f.explanation.contains("zero timeout"));
    assert!(sim.opened(FindingKind::SpinLoop).is_empty());

    // It stops: the loop blocks again, and the finding closes.
    sim.every(100 * MS, 3 * SEC, |s| {
        s.wait(TID, Some(-1), 100 * MS, vec![])
    });
    let closed = sim.changes_of(Change::Closed, FindingKind::BusyEpollLoop);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].1.state, FindingState::Closed);
}

#[test]
fn ready_fd_never_consumed_is_flagged_with_its_fd() {
    let mut sim = Sim::new();
    let ssl = 0x55d0_0000_c000;
    // A connection on fd 7 exists...
    sim.drain_once(TID, ssl, 7, 100 * US);
    // ...then epoll keeps reporting it writable and the loop never calls SSL on it.
    sim.every(200 * US, 2 * SEC, |s| {
        s.wait(
            TID,
            Some(-1),
            2 * US,
            vec![ready(7, EPOLLOUT, EPOLLIN | EPOLLOUT)],
        );
    });
    let opened = sim.opened(FindingKind::BusyEpollLoop);
    assert_eq!(opened.len(), 1);
    let f = opened[0];
    assert_eq!((f.tid, f.fd, f.ssl), (Some(TID), Some(7), Some(ssl)));
    let e = busy_evidence(f);
    assert_eq!(e.ready_events.as_deref(), Some("EPOLLOUT"));
    assert_eq!(e.interest.as_deref(), Some("EPOLLIN|EPOLLOUT"));
    assert_eq!(e.zero_timeout_pct, 0.0);
    assert!(
        f.summary_line()
            .contains("fd 7 ready EPOLLOUT with no SSL call")
    );
    assert!(sim.opened(FindingKind::SpinLoop).is_empty());
}

#[test]
fn plain_sockets_under_load_are_not_idle() {
    let mut sim = Sim::new();
    // One nginx serving HTTPS and plain HTTP: plain requests wake the loop at once, 5000
    // times a second, with no SSL call (their I/O is not traced), and a TLS request now
    // and then.
    let ssl = 0x55d0_0000_c000;
    let mut n = 0u64;
    sim.every(200 * US, 3 * SEC, |s| {
        n += 1;
        if n.is_multiple_of(500) {
            s.drain_once(TID, ssl, 7, 2 * US);
        } else {
            let fd = 20 + (n % 30) as i32;
            s.wait(TID, Some(-1), 2 * US, vec![ready(fd, EPOLLIN, EPOLLIN)]);
        }
    });
    sim.assert_quiet();
}

#[test]
fn freed_connection_left_registered_is_flagged() {
    let mut sim = Sim::new();
    let ssl = 0x55d0_0000_c000;
    // The connection is freed but its fd is neither closed nor removed from epoll: the
    // hang-up is reported at once, on every wait, and nothing can read it away.
    sim.drain_once(TID, ssl, 7, 100 * US);
    sim.free(TID, ssl);
    sim.every(200 * US, 2 * SEC, |s| {
        s.wait(
            TID,
            Some(-1),
            2 * US,
            vec![ready(7, EPOLLIN | EPOLLHUP, EPOLLIN)],
        );
    });
    let opened = sim.opened(FindingKind::BusyEpollLoop);
    assert_eq!(opened.len(), 1, "{:?}", sim.changes);
    let f = opened[0];
    assert_eq!((f.tid, f.fd, f.ssl), (Some(TID), Some(7), None));
    assert_eq!(
        busy_evidence(f).ready_events.as_deref(),
        Some("EPOLLIN|EPOLLHUP")
    );
}

#[test]
fn below_threshold_is_not_flagged() {
    let mut sim = Sim::new();
    sim.every(2 * MS, 3 * SEC, |s| s.wait(TID, Some(0), US, vec![]));
    sim.assert_quiet();
}

#[test]
fn immediate_returns_with_progress_are_healthy() {
    let mut sim = Sim::new();
    // Under load epoll returns at once because something is always ready, and every
    // iteration moves data: 5000 wake-ups a second over 20 connections.
    let mut n = 0u64;
    sim.every(200 * US, 3 * SEC, |s| {
        n += 1;
        let fd = 10 + (n % 20) as i32;
        s.drain_once(TID, 0x55d0_0001_0000 + (n % 20) * 0x1000, fd, US);
    });
    sim.assert_quiet();
}

#[test]
fn idle_loop_is_quiet() {
    let mut sim = Sim::new();
    // A loop with a 1 s timer and nothing to do, then nothing at all for 30 s.
    sim.every(SEC, 5 * SEC, |s| {
        s.wait(TID, Some(1_000_000_000), SEC, vec![])
    });
    sim.idle(30 * SEC);
    sim.assert_quiet();
}

#[test]
fn keep_alive_load_is_quiet() {
    let mut sim = Sim::new();
    // 50 keep-alive connections, each sending a request every 100 ms (500 requests/s in
    // all), a new connection with a full handshake every 10 ms, and one request in ten split
    // over two TCP segments (a wake-up that reads nothing: WANT_READ with 0 bytes).
    let listen_fd = 5;
    let mut n = 0u64;
    let mut next_conn = 0u64;
    sim.every(2 * MS, 6 * SEC, |s| {
        n += 1;
        let i = n % 50;
        let (ssl, fd) = (0x55d0_0002_0000 + i * 0x1000, 100 + i as i32);
        if n.is_multiple_of(10) {
            s.wait(
                TID,
                Some(5_000_000_000),
                300 * US,
                vec![ready(fd, EPOLLIN, EPOLLIN | EPOLLRDHUP)],
            );
            s.read_want(TID, ssl, fd);
        }
        s.wait(
            TID,
            Some(5_000_000_000),
            400 * US,
            vec![ready(fd, EPOLLIN, EPOLLIN | EPOLLRDHUP)],
        );
        s.read(TID, ssl, fd, 300);
        s.read_want(TID, ssl, fd);
        s.ssl(TID, call(SslOp::Write, ssl, fd, 2000, 2000), None);
        if n.is_multiple_of(5) {
            // A short-lived connection: accept, handshake in three steps, one request, close.
            next_conn += 1;
            let (ssl, fd) = (
                0x55d0_1000_0000 + next_conn * 0x1000,
                200 + (next_conn % 64) as i32,
            );
            s.wait(
                TID,
                Some(5_000_000_000),
                100 * US,
                vec![ready(listen_fd, EPOLLIN, EPOLLIN)],
            );
            s.ssl(
                TID,
                call(SslOp::DoHandshake, ssl, fd, -1, 0),
                Some(SslErrorCode::WantRead),
            );
            s.wait(
                TID,
                Some(5_000_000_000),
                200 * US,
                vec![ready(fd, EPOLLIN, EPOLLIN)],
            );
            s.ssl(
                TID,
                call(SslOp::DoHandshake, ssl, fd, -1, 0),
                Some(SslErrorCode::WantRead),
            );
            s.wait(
                TID,
                Some(5_000_000_000),
                200 * US,
                vec![ready(fd, EPOLLIN, EPOLLIN)],
            );
            s.ssl(TID, call(SslOp::DoHandshake, ssl, fd, 1, 0), None);
            s.read(TID, ssl, fd, 300);
            s.read_want(TID, ssl, fd);
            s.ssl(TID, call(SslOp::Write, ssl, fd, 2000, 2000), None);
            s.free(TID, ssl);
            s.close(TID, fd);
        }
    });
    sim.idle(10 * SEC);
    sim.assert_quiet();
    let snap = sim.engine.snapshot();
    let p = &snap.processes[0];
    assert_eq!(p.handshakes_total, next_conn);
    assert_eq!(p.connections_freed_total, next_conn);
    assert_eq!(p.connections_total, next_conn + 50);
    assert_eq!(snap.connections.len(), 50);
}

/// The same loop as [`ready_fd_never_consumed_is_flagged_with_its_fd`], seen while the
/// per-call probes are off: the kernel aggregates the waits (`EpollBusy`) and nothing says
/// whether an SSL call followed them, so the engine must not call them idle (the agent
/// turns the per-call probes on to find out), yet it counts them as wake-ups.
#[test]
fn aggregated_waits_without_per_call_probes_are_counted_not_judged() {
    use crate::event::{EpollBusy, EpollSyscall};
    let mut sim = Sim::new();
    let ssl = 0x55d0_0000_c000;
    sim.drain_once(TID, ssl, 7, 100 * US);
    // 5000 waits a second, all reporting fd 7 writable, sent as one record per 20 ms.
    sim.every(20 * MS, 2 * SEC, |s| {
        let first_ns = s.now;
        s.now += 20 * MS;
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
            last_ready: ready(7, EPOLLOUT, EPOLLIN | EPOLLOUT),
        };
        s.feed(TID, EventKind::EpollBusy(w));
    });
    assert!(
        sim.opened(FindingKind::BusyEpollLoop).is_empty(),
        "{:?}",
        sim.changes
    );
    assert!(sim.opened(FindingKind::SpinLoop).is_empty());
    let snap = sim.engine.snapshot();
    let t = snap
        .threads
        .iter()
        .find(|t| t.tid == TID)
        .expect("the thread");
    assert!(t.wakeups_total >= 9_900, "{t:?}");
    // Progress unknown: not counted as wake-ups without progress either.
    assert!(t.wakeups_no_progress_total < 10, "{t:?}");
}
