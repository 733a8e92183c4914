//! concurrent_ssl_use seen at the socket: two threads with a read or write in flight on one
//! fd at once, reported by the kernel while the per-call probes are off.

use super::*;
use crate::{
    engine::{Evidence, Severity, rules::concurrent::OverlapSeen},
    event::SockOverlap,
};

const S1: u64 = 0x55d0_0000_1000;
const APPLICATION_DATA: u8 = 23;

fn overlap(fd: i32, tid_a: u32, since: u64) -> SockOverlap {
    SockOverlap {
        fd,
        tid_a,
        a_since_ns: since,
        sys_a: SysKind::Read,
        sys_b: SysKind::Write,
        ssl_a: None,
        ssl_b: None,
        record_a: None,
        record_b: None,
        suppressed: 0,
    }
}

fn evidence(f: &Finding) -> &crate::engine::ConcurrentEvidence {
    match &f.evidence {
        Evidence::ConcurrentSslUse(e) => e,
        other => panic!("not a concurrent use: {other:?}"),
    }
}

#[test]
fn an_overlap_on_a_known_tls_socket_opens_at_once() {
    let mut sim = Sim::new();
    // The connection's handshake, seen with its fd.
    let mut hs = call(SslOp::Connect, S1, 7, 1, 0);
    hs.start_ns = sim.now;
    sim.now += 2 * MS;
    sim.feed(TID, EventKind::SslCall(hs));
    sim.now += SEC;
    let at = sim.now;
    sim.feed(
        TID + 1,
        EventKind::SockOverlap(overlap(7, TID, at - 3 * MS)),
    );
    let opened = sim.opened(FindingKind::ConcurrentSslUse);
    assert_eq!(opened.len(), 1, "{:?}", sim.changes);
    let f = opened[0];
    assert_eq!(
        (f.pid, f.tid, f.ssl, f.fd, f.first_seen_ns),
        (PID, Some(TID + 1), Some(S1), Some(7), at)
    );
    assert_eq!(f.severity, Severity::Critical);
    let e = evidence(f);
    assert_eq!(e.seen_at, OverlapSeen::AtSocket);
    assert_eq!((e.tid_a, e.tid_b), (TID, TID + 1));
    assert_eq!((e.op_a, e.op_b, e.overlap_ns), (None, None, None));
    assert_eq!(e.a_in_flight_ns, Some(3 * MS));
    assert_eq!((e.socket_overlaps, e.per_call_overlaps), (1, 0));
    assert!(
        e.seen.iter().any(|s| s.contains("earlier SSL calls")),
        "{e:?}"
    );
    assert!(e.inferred[0].contains("inside SSL calls"), "{e:?}");
    assert!(f.explanation.contains("inferred"), "{}", f.explanation);
}

#[test]
fn a_tls_record_in_the_write_proves_an_unknown_socket() {
    let mut sim = Sim::new();
    let mut o = overlap(9, TID, sim.now - MS);
    o.record_b = Some(APPLICATION_DATA);
    o.suppressed = 4;
    sim.feed(TID + 1, EventKind::SockOverlap(o));
    let opened = sim.opened(FindingKind::ConcurrentSslUse);
    assert_eq!(opened.len(), 1);
    let f = opened[0];
    assert_eq!((f.ssl, f.fd), (None, Some(9)));
    let e = evidence(f);
    assert_eq!(e.overlaps, 5, "the suppressed ones count");
    assert!(
        e.seen.iter().any(|s| s.contains("application_data record")),
        "{e:?}"
    );
    assert!(e.inferred[0].contains("predates the probes"), "{e:?}");
}

#[test]
fn an_overlap_on_a_socket_not_known_to_carry_tls_is_not_proof() {
    let mut sim = Sim::new();
    // Two reads on an fd no SSL call or handshake was seen on, no record header: could be
    // anything (a pipe two workers read, a plain socket).
    let mut o = overlap(11, TID, sim.now - MS);
    o.sys_b = SysKind::Read;
    sim.feed(TID + 1, EventKind::SockOverlap(o));
    sim.idle(2 * SEC);
    sim.assert_quiet();
}

#[test]
fn per_call_and_socket_overlaps_make_one_finding() {
    let mut sim = Sim::new();
    let mut o = overlap(7, TID, sim.now - MS);
    o.record_b = Some(APPLICATION_DATA);
    sim.feed(TID + 1, EventKind::SockOverlap(o));
    // Later, an escalation window times the calls themselves.
    sim.now += 2 * SEC;
    let t0 = sim.now;
    let mut w = call(SslOp::Write, S1, 7, 10, 10);
    (w.start_ns, w.duration_ns) = (t0 + 50 * US, 10 * US);
    sim.now = t0 + 60 * US;
    sim.feed(TID + 1, EventKind::SslCall(w));
    let mut r = call(SslOp::Read, S1, 7, 10, 10);
    (r.start_ns, r.duration_ns) = (t0, 100 * US);
    sim.now = t0 + 100 * US;
    sim.feed(TID, EventKind::SslCall(r));
    assert_eq!(sim.opened(FindingKind::ConcurrentSslUse).len(), 1);
    let all = sim.engine.findings();
    let e = evidence(&all[0]);
    assert_eq!(
        (e.overlaps, e.socket_overlaps, e.per_call_overlaps),
        (2, 1, 1)
    );
    assert_eq!(e.seen_at, OverlapSeen::PerCall);
    assert_eq!(e.overlap_ns, Some(10 * US));
}
