//! Handshake classification and accounting: full or resumed from the key operations of all
//! of a handshake's calls, outcomes, latency and CPU, time shares, peers, overflows.

use super::*;
use crate::engine::{HandshakeSnapshot, Snapshot};

fn proc_hs(s: &Snapshot) -> &HandshakeSnapshot {
    s.processes[0].handshakes.as_ref().expect("handshakes")
}

fn thread_hs(s: &Snapshot) -> &HandshakeSnapshot {
    s.threads
        .iter()
        .find(|t| t.tid == TID)
        .and_then(|t| t.handshakes.as_ref())
        .expect("thread handshakes")
}

#[test]
fn full_when_an_earlier_call_signs() {
    let mut sim = Sim::new();
    sim.server_handshake(TID, 0x10, 7, true);
    let s = sim.engine.snapshot();
    let h = proc_hs(&s);
    assert_eq!((h.started_total, h.completed_total), (1, 1));
    assert_eq!((h.full_total, h.resumed_total, h.in_progress), (1, 0, 0));
    assert_eq!(h.resumption_pct, Some(0.0));
    assert_eq!(thread_hs(&s).full_total, 1);
    assert_eq!(s.connections[0].handshake_kind.as_deref(), Some("full"));
    assert_eq!(s.connections[0].tls_version, None);
}

#[test]
fn full_when_the_completing_call_verifies() {
    let mut sim = Sim::new();
    // A client: WANT_READ with nothing signed, then verified in the completing call.
    sim.handshake(TID, 0x10, 7, -1, 0, None);
    sim.handshake(TID, 0x10, 7, 1, 2, None);
    let h = proc_hs(&sim.engine.snapshot()).clone();
    assert_eq!((h.full_total, h.resumed_total), (1, 0));
}

#[test]
fn resumed_without_key_operations_and_latency_spans_the_calls() {
    let mut sim = Sim::new();
    sim.call_ns = 100 * US;
    sim.handshake(TID, 0x10, 7, -1, 0, None);
    sim.now += 10 * MS;
    sim.handshake(TID, 0x10, 7, 1, 0, None);
    let h = proc_hs(&sim.engine.snapshot()).clone();
    assert_eq!((h.full_total, h.resumed_total), (0, 1));
    assert_eq!(h.resumption_pct, Some(100.0));
    // Latency: first call's start to the completing return (~10.3 ms); CPU: 200 µs.
    let lat = h.latency_p50_ns.unwrap();
    assert!((10_000 * US..10_500 * US).contains(&lat), "latency {lat}");
    let cpu = h.cpu_p50_ns.unwrap();
    assert!((195 * US..205 * US).contains(&cpu), "cpu {cpu}");
}

#[test]
fn implicit_handshake_in_ssl_read() {
    let mut sim = Sim::new();
    // Started by a handshake call, finished inside SSL_read, which signs: full.
    sim.handshake(TID, 0x10, 7, -1, 0, None);
    sim.read_ops(TID, 0x10, 7, 0, 1);
    sim.read_ops(TID, 0x10, 7, 100, 0);
    // No handshake call at all, but SSL_read signs before the first bytes: implicit full.
    sim.read_ops(TID, 0x20, 8, 0, 1);
    sim.read_ops(TID, 0x20, 8, 100, 0);
    // No handshake call and no key operation: a connection from before attach, or a
    // resumed implicit handshake; not counted either way.
    sim.read_ops(TID, 0x30, 9, 0, 0);
    sim.read_ops(TID, 0x30, 9, 100, 0);
    sim.read(TID, 0x40, 10, 100);
    let h = proc_hs(&sim.engine.snapshot()).clone();
    assert_eq!((h.started_total, h.completed_total), (2, 2));
    assert_eq!(
        (h.full_total, h.implicit_full_total, h.resumed_total),
        (2, 1, 0)
    );
    // Only the explicit one is in the resumption rate.
    assert_eq!(h.resumption_pct, Some(0.0));
}

#[test]
fn failed_abandoned_and_in_progress() {
    let mut sim = Sim::new();
    // An SSL error on a handshake call: failed.
    sim.handshake(TID, 0x10, 7, -1, 1, Some(SslErrorCode::Ssl));
    // Freed before completion: abandoned (and failed).
    sim.handshake(TID, 0x20, 8, -1, 1, None);
    sim.free(TID, 0x20);
    // Still waiting for the client.
    sim.handshake(TID, 0x30, 9, -1, 1, None);
    let h = proc_hs(&sim.engine.snapshot()).clone();
    assert_eq!(h.started_total, 3);
    assert_eq!(
        (h.completed_total, h.failed_total, h.abandoned_total),
        (0, 2, 1)
    );
    assert_eq!(h.in_progress, 1);
    assert_eq!(thread_hs(&sim.engine.snapshot()).in_progress, 1);
    assert_eq!(h.resumption_pct, None);
}

#[test]
fn ssl_pointer_reused_after_free_is_a_new_handshake() {
    let mut sim = Sim::new();
    sim.server_handshake(TID, 0x10, 7, true);
    // A no-op SSL_do_handshake after completion is not a new handshake.
    sim.handshake(TID, 0x10, 7, 1, 0, None);
    sim.free(TID, 0x10);
    sim.close(TID, 7);
    sim.server_handshake(TID, 0x10, 7, false);
    let s = sim.engine.snapshot();
    let h = proc_hs(&s);
    assert_eq!((h.started_total, h.full_total, h.resumed_total), (2, 1, 1));
    let nc = s.processes[0].new_connections.as_ref().unwrap();
    assert_eq!((nc.total, nc.ended_total), (2, 1));
    assert!(nc.lifetime_p50_ns.is_some());
    assert_eq!(s.connections[0].handshake_kind.as_deref(), Some("resumed"));
}

#[test]
fn time_share_of_a_thread() {
    let mut sim = Sim::new();
    // Each 10 ms: 6 ms in a handshake, 1 ms reading, 3 ms blocked in epoll.
    let mut ssl = 0x1000;
    sim.every(10 * MS, 3 * SEC, |sim| {
        sim.wait(TID, Some(-1), 3 * MS, vec![ready(7, EPOLLIN, EPOLLIN)]);
        sim.call_ns = 3 * MS;
        sim.server_handshake(TID, ssl, 7, true);
        sim.call_ns = MS;
        sim.read(TID, ssl, 7, 100);
        sim.free(TID, ssl);
        ssl += 0x10;
    });
    let s = sim.engine.snapshot();
    let t = s.threads[0].time_share.as_ref().unwrap();
    assert!((55.0..65.0).contains(&t.handshake_pct), "{t:?}");
    assert!((5.0..15.0).contains(&t.ssl_io_pct), "{t:?}");
    assert!((25.0..35.0).contains(&t.epoll_blocked_pct), "{t:?}");
    let h = proc_hs(&s);
    assert!((90.0..110.0).contains(&h.completed_per_sec), "{h:?}");
    let cpu = h.full_cpu_mean_ns.unwrap();
    assert!((5_900 * US..6_100 * US).contains(&cpu), "{cpu}");
}

#[test]
fn peers_and_listen_overflows() {
    let mut sim = Sim::new();
    sim.listen_overflows(1000);
    for (i, port) in [50_001, 50_002, 50_003].into_iter().enumerate() {
        let fd = 7 + i as i32;
        sim.engine.set_peer(PID, fd, format!("10.0.0.9:{port}"));
        sim.server_handshake(TID, 0x10 + i as u64, fd, i == 0);
    }
    sim.engine.set_peer(PID, 20, "[2001:db8::1]:443".to_owned());
    sim.server_handshake(TID, 0x99, 20, true);
    sim.listen_overflows(1042);
    let s = sim.engine.snapshot();
    assert_eq!(s.listen_overflows_total, Some(42));
    let peers = &s.processes[0].new_connections.as_ref().unwrap().peers;
    assert_eq!(peers[0].peer, "10.0.0.9");
    assert_eq!(
        (
            peers[0].connections_total,
            peers[0].full_total,
            peers[0].resumed_total
        ),
        (3, 1, 2)
    );
    assert_eq!(peers[1].peer, "2001:db8::1");
}
