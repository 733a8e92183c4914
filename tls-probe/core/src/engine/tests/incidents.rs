//! bad_write_retry, concurrent_ssl_use and want_async_stall edges.

use super::*;
use crate::engine::{
    Attribution, Evidence, FindingState, Severity, rules::concurrent::OverlapSeen,
};

const S1: u64 = 0x55d0_0000_1000;
const S2: u64 = 0x55d0_0000_2000;
const BUF: u64 = 0x7f00_0000_1000;
const OTHER_BUF: u64 = 0x7f00_0000_9000;
const WW: Option<SslErrorCode> = Some(SslErrorCode::WantWrite);
const BAD: Option<SslErrorCode> = Some(SslErrorCode::Ssl);

fn retry_evidence(f: &Finding) -> &crate::engine::WriteRetryEvidence {
    match &f.evidence {
        Evidence::BadWriteRetry(e) => e,
        other => panic!("not a bad write retry: {other:?}"),
    }
}

#[test]
fn same_arguments_retry_is_fine() {
    let mut sim = Sim::new();
    sim.write(TID, S1, 7, (BUF, 100), -1, WW);
    sim.write(TID, S1, 7, (BUF, 100), -1, WW);
    sim.write(TID, S1, 7, (BUF, 100), 100, None);
    // A new write after the completed one may use any buffer.
    sim.write(TID, S1, 7, (OTHER_BUF, 10), 10, None);
    // A longer retry is allowed by OpenSSL.
    sim.write(TID, S1, 7, (OTHER_BUF, 50), -1, WW);
    sim.write(TID, S1, 7, (OTHER_BUF, 80), 80, None);
    sim.idle(20 * SEC);
    sim.assert_quiet();
}

#[test]
fn moved_buffer_retry_is_flagged_with_fate_one_finding_per_connection() {
    let mut sim = Sim::new();
    sim.engine.set_peer(PID, 7, "10.0.0.2:51000".to_owned());
    sim.write(TID, S1, 7, (BUF, 100), -1, WW);
    sim.write(TID, S1, 7, (OTHER_BUF, 100), -1, BAD);
    let opened = sim.opened(FindingKind::BadWriteRetry);
    assert_eq!(opened.len(), 1);
    let f = opened[0];
    assert_eq!(
        (f.pid, f.tid, f.ssl, f.fd),
        (PID, Some(TID), Some(S1), Some(7))
    );
    assert_eq!(f.peer.as_deref(), Some("10.0.0.2:51000"));
    assert_eq!(f.severity, Severity::Critical);
    let e = retry_evidence(f);
    assert_eq!(
        (
            e.occurrences,
            e.moved_buffer,
            e.shorter_length,
            e.connections
        ),
        (1, 1, 0, 1)
    );
    assert!(e.arguments_seen);
    assert_eq!(e.connection_from, Some(Attribution::SslCall));
    assert_eq!((e.previous_buf, e.buf), (Some(BUF), Some(OTHER_BUF)));
    assert_eq!(e.previous_answer, WW);
    assert_eq!(e.ssl_errors_after, 1);
    assert_eq!(e.fate.as_deref(), Some("ssl error"));
    // The connection is then dropped: each step is emitted at once.
    sim.free(TID, S1);
    sim.close(TID, 7);
    let f = &sim.engine.findings()[0];
    let e = retry_evidence(f);
    assert_eq!(e.connections_dropped_after, 1);
    assert_eq!(
        e.fate.as_deref(),
        Some("ssl error, then SSL_free, then close")
    );
    let updated = sim.changes_of(Change::Updated, FindingKind::BadWriteRetry);
    assert_eq!(updated.len(), 2, "{updated:?}");

    // Another connection, on another thread, hits the same bug: a finding of its own.
    sim.write(
        TID + 1,
        S2,
        8,
        (BUF, 4096),
        -1,
        Some(SslErrorCode::WantRead),
    );
    sim.write(TID + 1, S2, 8, (OTHER_BUF, 4096), -1, BAD);
    let opened = sim.opened(FindingKind::BadWriteRetry);
    assert_eq!(opened.len(), 2);
    let f = opened[1];
    assert_eq!((f.tid, f.ssl, f.fd), (Some(TID + 1), Some(S2), Some(8)));
    assert_eq!(
        retry_evidence(f).previous_answer,
        Some(SslErrorCode::WantRead)
    );

    // Quiet for the incident window: both close.
    sim.idle(11 * SEC);
    let closed = sim.changes_of(Change::Closed, FindingKind::BadWriteRetry);
    assert_eq!(closed.len(), 2);
    assert_eq!(closed[0].1.state, FindingState::Closed);
}

fn lib_error(sim: &mut Sim, tid: u32, reason: i32, inflight: Option<(u64, SslOp, i32)>) {
    sim.feed(
        tid,
        EventKind::LibError {
            lib: 20,
            reason,
            reason_name: None,
            ssl: inflight.map(|c| c.0),
            op: inflight.map(|c| c.1),
            fd: inflight.map(|c| c.2),
        },
    );
}

#[test]
fn the_openssl_error_alone_flags_a_retry_on_the_threads_connection() {
    let mut sim = Sim::new();
    // The always-on signals: the handshake of S1 on fd 7, nothing of its writes.
    sim.handshake(TID, S1, 7, 1, 1, None);
    sim.idle(SEC);
    lib_error(&mut sim, TID, 127, None);
    let opened = sim.opened(FindingKind::BadWriteRetry);
    assert_eq!(opened.len(), 1, "flagged at the error itself");
    let f = opened[0];
    assert_eq!((f.tid, f.ssl, f.fd), (Some(TID), Some(S1), Some(7)));
    let e = retry_evidence(f);
    assert_eq!(e.reason.as_deref(), Some("bad_write_retry"));
    assert_eq!(e.connection_from, Some(Attribution::ThreadLastConnection));
    assert_eq!(e.fd_from, Some(Attribution::ConnectionFd));
    assert!(!e.arguments_seen);
    assert_eq!(f.severity, Severity::Critical);
    assert!(f.explanation.contains("not seen"), "{}", f.explanation);
    // Dropped, then the thread reconnects: a new handshake, maybe on the same SSL*.
    sim.idle(MS);
    sim.free(TID, S1);
    sim.close(TID, 7);
    sim.idle(5 * MS);
    sim.feed(
        TID,
        EventKind::Peer {
            fd: 7,
            addr: "10.0.0.9:443".to_owned(),
            side: crate::event::PeerSide::Connected,
        },
    );
    sim.handshake(TID, S1, 7, 1, 1, None);
    let e = retry_evidence(&sim.engine.findings()[0]).clone();
    assert_eq!(e.connections_dropped_after, 1);
    assert!(e.reconnect_after_ns.is_some_and(|ns| ns >= 6 * MS), "{e:?}");
    assert_eq!(
        e.fate.as_deref(),
        Some("SSL_free, then close, then reconnect")
    );
    // A retry on the new connection, whose SSL* has the same address: its own finding.
    sim.idle(2 * SEC);
    lib_error(&mut sim, TID, 127, None);
    assert_eq!(sim.opened(FindingKind::BadWriteRetry).len(), 2);
}

#[test]
fn an_error_inside_a_probed_write_is_one_occurrence_with_its_arguments() {
    let mut sim = Sim::new();
    sim.write(TID, S1, 7, (BUF, 100), -1, WW);
    lib_error(&mut sim, TID, 127, Some((S1, SslOp::Write, -1)));
    sim.write(TID, S1, 7, (OTHER_BUF, 100), -1, BAD);
    let all = sim.engine.findings();
    assert_eq!(all.len(), 1);
    let e = retry_evidence(&all[0]);
    assert_eq!(e.occurrences, 1, "{e:?}");
    assert_eq!(e.connection_from, Some(Attribution::SslCallInFlight));
    assert!(e.arguments_seen);
    assert_eq!(e.reason.as_deref(), Some("bad_write_retry"));
}

#[test]
fn an_unseen_connection_is_taken_from_the_free_and_close_that_follow() {
    let mut sim = Sim::new();
    // No SSL call seen on the thread: the connection predates the attach.
    lib_error(&mut sim, TID, 127, None);
    let f = sim.opened(FindingKind::BadWriteRetry)[0].clone();
    assert_eq!((f.ssl, f.fd), (None, None));
    sim.idle(MS);
    sim.free(TID, S2);
    sim.close(TID, 9);
    let f = &sim.engine.findings()[0];
    assert_eq!((f.ssl, f.fd), (Some(S2), Some(9)));
    let e = retry_evidence(f);
    assert_eq!(e.connection_from, Some(Attribution::FreedAfter));
    assert_eq!(e.fd_from, Some(Attribution::ClosedAfter));
}

#[test]
fn a_write_after_shutdown_is_flagged_with_the_error_before_it() {
    let mut sim = Sim::new();
    sim.handshake(TID, S1, 7, 1, 1, None);
    lib_error(&mut sim, TID, 127, None);
    sim.idle(MS);
    lib_error(&mut sim, TID, 207, None);
    let f = sim.opened(FindingKind::WriteAfterShutdown);
    assert_eq!(f.len(), 1);
    let Evidence::WriteAfterShutdown(e) = &f[0].evidence else {
        panic!("{:?}", f[0].evidence);
    };
    assert_eq!(e.previous_error.as_deref(), Some("lib 20 reason 127"));
    assert_eq!(f[0].ssl, Some(S1));
    // Other reasons are not misuse findings; a shorter length only inside a probed write.
    lib_error(&mut sim, TID + 1, 271, None);
    lib_error(&mut sim, TID + 1, 294, None);
    assert_eq!(sim.engine.findings().len(), 2);
}

#[test]
fn shorter_retry_is_flagged() {
    let mut sim = Sim::new();
    sim.write(TID, S1, 7, (BUF, 100), -1, WW);
    // Same buffer, shorter: fails even with SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER.
    sim.write(TID, S1, 7, (BUF, 60), -1, BAD);
    let opened = sim.opened(FindingKind::BadWriteRetry);
    assert_eq!(opened.len(), 1);
    let e = retry_evidence(opened[0]);
    assert_eq!((e.occurrences, e.moved_buffer, e.shorter_length), (1, 0, 1));
    assert_eq!((e.previous_len_bytes, e.len_bytes), (Some(100), Some(60)));
    assert!(
        opened[0]
            .explanation
            .contains("a shorter length (60 bytes instead of 100)")
    );
}

/// A healthy server under a full ring buffer: the record of the write that completed a
/// pending one is lost, and the next write (another response, in another buffer, shorter)
/// follows the WANT_WRITE directly. OpenSSL never accepts a shorter retry, so a shorter
/// write that went on is a new write, not a bad retry.
#[test]
fn a_new_write_after_a_lost_completion_is_no_retry() {
    let mut sim = Sim::new();
    sim.write(TID, S1, 7, (BUF, 8192), -1, WW);
    // (the retry with (BUF, 8192) that wrote it all: lost)
    sim.write(TID, S1, 7, (OTHER_BUF, 1024), 1024, None);
    sim.write(TID, S1, 7, (BUF, 8192), -1, WW);
    // (lost again) then a new write that wants WRITE itself.
    sim.write(TID, S1, 7, (OTHER_BUF, 2048), -1, WW);
    sim.idle(20 * SEC);
    sim.assert_quiet();
}

#[test]
fn moved_retry_flagged_without_get_error() {
    let mut sim = Sim::new();
    sim.report = ErrorReport::Infer;
    // WANT_WRITE is inferred from the write's EAGAIN; the rejected retry made no syscall.
    sim.write(TID, S1, 7, (BUF, 100), -1, WW);
    sim.write(TID, S1, 7, (OTHER_BUF, 100), -1, BAD);
    sim.read(TID, S1, 7, 10);
    let opened = sim.opened(FindingKind::BadWriteRetry);
    assert_eq!(opened.len(), 1);
    let e = retry_evidence(opened[0]);
    assert_eq!((e.moved_buffer, e.previous_answer), (1, WW));
    assert_eq!(e.ssl_errors_after, 0);
}

#[test]
fn moved_buffer_accepted_by_openssl_is_not_flagged() {
    let mut sim = Sim::new();
    // SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER is set: the moved retry goes on and writes.
    sim.write(TID, S1, 7, (BUF, 100), -1, WW);
    sim.write(TID, S1, 7, (OTHER_BUF, 100), -1, WW);
    sim.write(TID, S1, 7, (BUF + 64, 100), 100, None);
    sim.assert_quiet();
}

#[test]
fn overlapping_calls_from_two_threads() {
    let mut sim = Sim::new();
    let t0 = sim.now;
    // Thread A is inside SSL_read [t0, t0+100us] while thread B runs SSL_write
    // [t0+50us, t0+60us]. B returns first, so its event comes first.
    let mut w = call(SslOp::Write, S1, 7, 10, 10);
    (w.start_ns, w.duration_ns) = (t0 + 50 * US, 10 * US);
    sim.now = t0 + 60 * US;
    sim.feed(TID + 1, EventKind::SslCall(w));
    let mut r = call(SslOp::Read, S1, 7, 10, 10);
    (r.start_ns, r.duration_ns) = (t0, 100 * US);
    sim.now = t0 + 100 * US;
    sim.feed(TID, EventKind::SslCall(r));
    let opened = sim.opened(FindingKind::ConcurrentSslUse);
    assert_eq!(opened.len(), 1);
    let f = opened[0];
    assert_eq!(
        (f.pid, f.tid, f.ssl, f.fd),
        (PID, Some(TID), Some(S1), Some(7))
    );
    assert_eq!(f.severity, Severity::Critical);
    let Evidence::ConcurrentSslUse(e) = &f.evidence else {
        panic!("{f:?}")
    };
    assert_eq!(
        (e.tid_a, e.op_a, e.tid_b, e.op_b),
        (TID + 1, Some(SslOp::Write), TID, Some(SslOp::Read))
    );
    assert_eq!(
        (e.overlaps, e.connections, e.overlap_ns),
        (1, 1, Some(10 * US))
    );
    assert_eq!(e.seen_at, OverlapSeen::PerCall);
    assert!(e.inferred.is_empty(), "{e:?}");
}

#[test]
fn overlaps_counted_fast_are_updated_once_a_second() {
    let mut sim = Sim::new();
    // A reader and a writer on one SSL*, overlapping every 5 ms for 3 s: 600 overlaps.
    sim.every(5 * MS, 3 * SEC, |s| {
        let t0 = s.now;
        let mut w = call(SslOp::Write, S1, 7, 10, 10);
        (w.start_ns, w.duration_ns) = (t0 + 50 * US, 10 * US);
        s.now = t0 + 60 * US;
        s.feed(TID + 1, EventKind::SslCall(w));
        let mut r = call(SslOp::Read, S1, 7, 10, 10);
        (r.start_ns, r.duration_ns) = (t0, 100 * US);
        s.now = t0 + 100 * US;
        s.feed(TID, EventKind::SslCall(r));
    });
    assert_eq!(sim.opened(FindingKind::ConcurrentSslUse).len(), 1);
    let updated = sim.changes_of(Change::Updated, FindingKind::ConcurrentSslUse);
    assert!(
        (1..=3).contains(&updated.len()),
        "{} updates",
        updated.len()
    );
    for pair in updated.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= SEC, "updates 1 s apart at least");
    }
    let Evidence::ConcurrentSslUse(e) = &sim.engine.findings()[0].evidence else {
        panic!("not a concurrent use")
    };
    assert_eq!(e.overlaps, 600);
}

#[test]
fn sequential_calls_from_two_threads_are_fine() {
    let mut sim = Sim::new();
    let t0 = sim.now;
    for (i, tid) in [TID, TID + 1, TID, TID + 1].into_iter().enumerate() {
        // Back to back: each starts exactly when the previous ended.
        let mut c = call(SslOp::Read, S1, 7, 10, 10);
        (c.start_ns, c.duration_ns) = (t0 + i as u64 * 10 * US, 10 * US);
        sim.now = c.start_ns + c.duration_ns;
        sim.feed(tid, EventKind::SslCall(c));
    }
    // Overlapping, but on different SSL*s.
    let mut a = call(SslOp::Read, S1, 7, 10, 10);
    (a.start_ns, a.duration_ns) = (t0 + 100 * US, 50 * US);
    let mut b = call(SslOp::Read, S2, 8, 10, 10);
    (b.start_ns, b.duration_ns) = (t0 + 110 * US, 10 * US);
    sim.now = t0 + 150 * US;
    sim.feed(TID + 1, EventKind::SslCall(b));
    sim.feed(TID, EventKind::SslCall(a));
    sim.assert_quiet();
}

fn async_call(sim: &mut Sim, code: Option<SslErrorCode>) {
    let (ret, bytes) = if code.is_some() { (-1, 0) } else { (100, 100) };
    let mut c = call(SslOp::Write, S1, 7, ret, bytes);
    c.sys_calls = 0;
    c.sys_last = None;
    c.sys_last_ret = None;
    sim.ssl(TID, c, code);
}

#[test]
fn want_async_stall_opens_then_closes_when_the_job_completes() {
    let mut sim = Sim::new();
    let start = sim.now;
    for _ in 0..6 {
        async_call(&mut sim, Some(SslErrorCode::WantAsync));
        sim.now += 50 * MS;
    }
    let opened = sim.changes_of(Change::Opened, FindingKind::WantAsyncStall);
    assert_eq!(opened.len(), 1);
    let (at, f) = opened[0];
    // Opens at the first answer at least 100 ms into the streak: the third.
    assert!(
        at - start >= 100 * MS && at - start < 150 * MS,
        "{}",
        (at - start) / MS
    );
    assert_eq!(
        (f.pid, f.tid, f.ssl, f.fd),
        (PID, Some(TID), Some(S1), Some(7))
    );
    let Evidence::WantAsyncStall(e) = &f.evidence else {
        panic!("{f:?}")
    };
    assert_eq!(
        (e.waits, e.ssl_error, e.op),
        (3, SslErrorCode::WantAsync, SslOp::Write)
    );
    assert!(e.stalled_ns >= 100 * MS);

    async_call(&mut sim, None);
    let closed = sim.changes_of(Change::Closed, FindingKind::WantAsyncStall);
    assert_eq!(closed.len(), 1);
    let Evidence::WantAsyncStall(e) = &closed[0].1.evidence else {
        panic!()
    };
    assert_eq!(e.waits, 6);
    assert!(e.resolved);
    assert_eq!(e.calls_duration_ns, 6 * sim.call_ns);
}

#[test]
fn quick_async_jobs_are_normal() {
    let mut sim = Sim::new();
    for _ in 0..200 {
        // Each operation pauses twice for a millisecond, then completes.
        async_call(&mut sim, Some(SslErrorCode::WantAsync));
        sim.now += MS;
        async_call(&mut sim, Some(SslErrorCode::WantAsync));
        sim.now += MS;
        async_call(&mut sim, None);
    }
    sim.idle(20 * SEC);
    sim.assert_quiet();
}

#[test]
fn want_async_stall_is_seen_in_handshakes_without_get_error() {
    let mut sim = Sim::new();
    // The per-call probes are off: SSL_get_error is not probed, but ASYNC_pause_job and the
    // handshake calls are. Each pause inside a failing handshake call is a WANT_ASYNC.
    sim.report = ErrorReport::Infer;
    for _ in 0..10 {
        let start = sim.now;
        sim.now += 1_000;
        sim.feed(TID, EventKind::AsyncPause { ssl: Some(S1) });
        sim.now += 1_000;
        let mut c = call(SslOp::DoHandshake, S1, 7, -1, 0);
        (c.start_ns, c.duration_ns, c.buf, c.len) = (start, 2_000, 0, 0);
        sim.feed(TID, EventKind::SslCall(c));
        sim.idle(20 * MS);
    }
    let f = sim.opened(FindingKind::WantAsyncStall);
    assert_eq!(f.len(), 1, "{:?}", sim.engine.findings());
    assert_eq!(f[0].ssl, Some(S1));
}
