//! handshake_saturation, low_session_resumption and connection_churn: each threshold.

use super::*;
use crate::engine::{Evidence, Severity};

/// A server loop: every `period_ns`, a wait blocking `blocked_ns`, then one new connection
/// from `peer` (if any) with a handshake whose calls take `hs_ns` in all, full or resumed,
/// a short read, and SSL_free after `lifetime` iterations.
struct Serve {
    period_ns: u64,
    blocked_ns: u64,
    hs_ns: u64,
    full: bool,
    peer: Option<&'static str>,
}

impl Serve {
    fn run(&self, sim: &mut Sim, duration_ns: u64) {
        let mut n: u64 = 0;
        sim.every(self.period_ns, duration_ns, |sim| {
            n += 1;
            let (ssl, fd) = (0x10_000 + (n % 64) * 0x10, 100 + (n % 64) as i32);
            sim.wait(
                TID,
                Some(-1),
                self.blocked_ns,
                vec![ready(fd, EPOLLIN, EPOLLIN)],
            );
            if let Some(p) = self.peer {
                sim.engine.set_peer(PID, fd, format!("{p}:{}", 40_000 + n));
            }
            sim.call_ns = self.hs_ns / 2;
            sim.server_handshake(TID, ssl, fd, self.full);
            sim.call_ns = 2 * US;
            sim.read(TID, ssl, fd, 100);
            sim.free(TID, ssl);
            sim.close(TID, fd);
        });
    }
}

/// A flood: 100 handshakes/s of 9 ms each, 0.5 ms blocked between them: 90% of the time in
/// handshakes, 5% idle.
fn flood(full: bool, peer: Option<&'static str>) -> Serve {
    Serve {
        period_ns: 10 * MS,
        blocked_ns: 500 * US,
        hs_ns: 9 * MS,
        full,
        peer,
    }
}

fn saturation(f: &Finding) -> &crate::engine::SaturationEvidence {
    match &f.evidence {
        Evidence::HandshakeSaturation(e) => e,
        e => panic!("not saturation: {e:?}"),
    }
}

#[test]
fn handshake_flood_saturates_after_the_minimum_duration() {
    let mut sim = Sim::new();
    sim.listen_overflows(10);
    let start = sim.now;
    flood(true, None).run(&mut sim, 6 * SEC);
    let opened = sim.changes_of(Change::Opened, FindingKind::HandshakeSaturation);
    assert_eq!(opened.len(), 1, "{:?}", sim.engine.findings());
    let (t, f) = opened[0];
    // Rates are read from the first complete bucket on; the condition must hold 0.5 s.
    assert!((500 * MS..800 * MS).contains(&(t - start)), "{}", t - start);
    let e = saturation(f);
    assert!(e.handshake_time_pct >= 85.0, "{e:?}");
    assert!(e.epoll_blocked_pct <= 10.0, "{e:?}");
    assert!((90.0..110.0).contains(&e.handshakes_per_sec), "{e:?}");
    assert_eq!(e.resumption_pct, Some(0.0));
    assert!(e.full_cpu_mean_ns.is_some_and(|ns| ns > 8 * MS));
    assert_eq!(e.listen_overflows_total, Some(0));
    assert_eq!(
        f.severity,
        Severity::Critical,
        "90% is over the critical share"
    );
    assert_eq!(f.tid, Some(TID));
    assert!(f.advice.contains("session cache") && f.advice.contains("ECDSA"));
    // The flood stops: the finding closes.
    sim.idle(3 * SEC);
    assert_eq!(
        sim.changes_of(Change::Closed, FindingKind::HandshakeSaturation)
            .len(),
        1
    );
}

#[test]
fn saturation_is_critical_when_the_listen_queue_overflows() {
    let mut sim = Sim::with_config(Config {
        saturation_critical_handshake_pct: 101.0,
        ..Config::default()
    });
    sim.listen_overflows(10);
    flood(true, None).run(&mut sim, 5 * SEC);
    let f = sim.opened(FindingKind::HandshakeSaturation)[0].clone();
    assert_eq!(f.severity, Severity::Warning);
    sim.listen_overflows(25);
    flood(true, None).run(&mut sim, 2 * SEC);
    let updates = sim.changes_of(Change::Updated, FindingKind::HandshakeSaturation);
    let (_, last) = updates.last().expect("an update");
    assert_eq!(last.severity, Severity::Critical);
    assert_eq!(saturation(last).listen_overflows_total, Some(15));
    // Quiet for three windows: back to a warning.
    flood(true, None).run(&mut sim, 4 * SEC);
    let last = sim.engine.findings().pop().unwrap();
    assert_eq!(last.severity, Severity::Warning);
}

#[test]
fn a_busy_server_with_idle_time_is_not_saturated() {
    // 60% in handshakes, but 35% blocked in epoll: headroom left.
    let mut sim = Sim::new();
    Serve {
        period_ns: 10 * MS,
        blocked_ns: 3_500 * US,
        hs_ns: 6 * MS,
        full: true,
        peer: None,
    }
    .run(&mut sim, 8 * SEC);
    assert!(sim.opened(FindingKind::HandshakeSaturation).is_empty());
}

#[test]
fn below_the_time_share_rate_or_duration_is_not_saturated() {
    // 40% in handshakes with little idle time (the rest is application work).
    let mut sim = Sim::new();
    Serve {
        period_ns: 10 * MS,
        blocked_ns: 500 * US,
        hs_ns: 4 * MS,
        full: true,
        peer: None,
    }
    .run(&mut sim, 8 * SEC);
    assert!(sim.opened(FindingKind::HandshakeSaturation).is_empty());

    // 10 slow handshakes a second: under the rate.
    let mut sim = Sim::new();
    Serve {
        period_ns: 100 * MS,
        blocked_ns: 500 * US,
        hs_ns: 90 * MS,
        full: true,
        peer: None,
    }
    .run(&mut sim, 8 * SEC);
    assert!(sim.opened(FindingKind::HandshakeSaturation).is_empty());

    // A flood of resumed handshakes: cheap ones, not crypto starving the loop.
    let mut sim = Sim::new();
    flood(false, None).run(&mut sim, 8 * SEC);
    assert!(sim.opened(FindingKind::HandshakeSaturation).is_empty());

    // A thread that uses a tenth of a core: preempted, not crypto-bound. (Its CPU is known
    // before the flood: the agent samples it every second from attach on.)
    let mut sim = Sim::new();
    sim.cpu(TID, 0);
    sim.idle(SEC);
    sim.cpu(TID, 0);
    let start = sim.now;
    sim.every(SEC / 4, 8 * SEC, |sim| {
        flood(true, None).run(sim, SEC / 4);
        let cpu = (sim.now - start) / 10;
        sim.cpu(TID, cpu);
    });
    assert!(sim.opened(FindingKind::HandshakeSaturation).is_empty());

    // A flood of 0.3 s: shorter than the minimum duration once the window filled.
    let mut sim = Sim::new();
    flood(true, None).run(&mut sim, 300 * MS);
    sim.idle(3 * SEC);
    assert!(sim.opened(FindingKind::HandshakeSaturation).is_empty());
}

#[test]
fn returning_clients_without_resumption_are_flagged() {
    let mut sim = Sim::new();
    flood(true, Some("10.1.2.3")).run(&mut sim, 3 * SEC);
    let f = sim.opened(FindingKind::LowSessionResumption);
    assert_eq!(f.len(), 1);
    let Evidence::LowSessionResumption(e) = &f[0].evidence else {
        unreachable!()
    };
    assert_eq!(e.resumption_pct, 0.0);
    assert!(e.handshakes >= 100 && e.returning_pct > 95.0, "{e:?}");
    // Three seconds of evidence, not the whole window before them.
    assert!(
        f[0].first_seen_ns >= T0,
        "first seen {}",
        f[0].first_seen_ns
    );
    assert!(
        f[0].explanation
            .contains("clients that had connected before")
    );
}

#[test]
fn resumption_needs_low_rate_enough_handshakes_and_returning_peers() {
    // Resumed: nothing.
    let mut sim = Sim::new();
    flood(false, Some("10.1.2.3")).run(&mut sim, 3 * SEC);
    assert!(sim.opened(FindingKind::LowSessionResumption).is_empty());
    // Full, but no peer known: no evidence that clients come back.
    let mut sim = Sim::new();
    flood(true, None).run(&mut sim, 12 * SEC);
    assert!(sim.opened(FindingKind::LowSessionResumption).is_empty());
    // Full, returning, but fewer than 100 handshakes in the window.
    let mut sim = Sim::with_config(Config {
        resumption_min_handshakes: 1000,
        ..Config::default()
    });
    flood(true, Some("10.1.2.3")).run(&mut sim, 3 * SEC);
    assert!(sim.opened(FindingKind::LowSessionResumption).is_empty());
    // Full, from a different peer each time: first-time clients.
    let mut sim = Sim::new();
    let mut n = 0u32;
    sim.every(10 * MS, 3 * SEC, |sim| {
        n += 1;
        let fd = 100 + (n % 64) as i32;
        let peer = format!("10.{}.{}.{}:443", n >> 16, (n >> 8) & 255, n & 255);
        sim.engine.set_peer(PID, fd, peer);
        sim.server_handshake(TID, 0x10_000 + u64::from(n), fd, true);
        sim.free(TID, 0x10_000 + u64::from(n));
        sim.close(TID, fd);
    });
    assert!(sim.opened(FindingKind::LowSessionResumption).is_empty());
}

#[test]
fn churn_from_one_peer_links_a_bad_write_retry() {
    let mut sim = Sim::new();
    // A bad write retry on a connection from the peer.
    sim.engine.set_peer(PID, 9, "10.9.9.9:5000".to_owned());
    sim.server_handshake(TID, 0x99, 9, false);
    sim.write(
        TID,
        0x99,
        9,
        (0x1000, 100),
        -1,
        Some(SslErrorCode::WantWrite),
    );
    sim.write(TID, 0x99, 9, (0x2000, 100), -1, Some(SslErrorCode::Ssl));
    sim.free(TID, 0x99);
    sim.close(TID, 9);
    let retry = sim.opened(FindingKind::BadWriteRetry)[0].id;
    // Then it reconnects 20 times a second, each connection living ~50 ms.
    Serve {
        period_ns: 50 * MS,
        blocked_ns: 40 * MS,
        hs_ns: MS,
        full: false,
        peer: Some("10.9.9.9"),
    }
    .run(&mut sim, 2 * SEC);
    let f = sim.opened(FindingKind::ConnectionChurn);
    assert_eq!(f.len(), 1, "{:?}", sim.engine.findings());
    let Evidence::ConnectionChurn(e) = &f[0].evidence else {
        unreachable!()
    };
    assert_eq!(e.peer, "10.9.9.9");
    assert_eq!(f[0].peer.as_deref(), Some("10.9.9.9"));
    assert!((15.0..25.0).contains(&e.connections_per_sec), "{e:?}");
    assert!(e.lifetime_p50_ns.is_some_and(|ns| ns < 100 * MS), "{e:?}");
    assert_eq!(e.related_finding_ids, vec![retry]);
    assert_eq!(e.bad_write_retries, 1);
    assert!(
        f[0].explanation
            .contains("1 of these connections was torn down after a bad write retry"),
        "{}",
        f[0].explanation
    );
    // And back: the retry's finding names the churn its reconnects are part of.
    let churn = f[0].id;
    let last = sim
        .engine
        .findings()
        .into_iter()
        .find(|x| x.id == retry)
        .expect("the retry's finding");
    let Evidence::BadWriteRetry(r) = &last.evidence else {
        unreachable!()
    };
    assert_eq!(r.related_finding_ids, vec![churn], "{r:?}");
    assert!(
        last.explanation.contains("connection_churn finding"),
        "{}",
        last.explanation
    );
    let linked_at = sim
        .changes_of(Change::Updated, FindingKind::BadWriteRetry)
        .into_iter()
        .find(|(_, x)| matches!(&x.evidence, Evidence::BadWriteRetry(r) if !r.related_finding_ids.is_empty()))
        .map(|(t, _)| t)
        .expect("an update that links the churn");
    let opened_at = sim.changes_of(Change::Opened, FindingKind::ConnectionChurn)[0].0;
    assert!(
        linked_at >= opened_at && linked_at - opened_at <= 200 * MS,
        "linked {} ms after the churn opened",
        (linked_at - opened_at) / MS
    );
    sim.idle(3 * SEC);
    assert_eq!(
        sim.changes_of(Change::Closed, FindingKind::ConnectionChurn)
            .len(),
        1
    );
}

/// A retry whose connection is still up is no cause of the churn: not linked either way.
#[test]
fn churn_does_not_link_a_retry_whose_connection_was_not_torn_down() {
    let mut sim = Sim::new();
    sim.engine.set_peer(PID, 9, "10.9.9.9:5000".to_owned());
    sim.server_handshake(TID, 0x99, 9, false);
    sim.write(
        TID,
        0x99,
        9,
        (0x1000, 100),
        -1,
        Some(SslErrorCode::WantWrite),
    );
    sim.write(TID, 0x99, 9, (0x2000, 100), -1, Some(SslErrorCode::Ssl));
    Serve {
        period_ns: 50 * MS,
        blocked_ns: 40 * MS,
        hs_ns: MS,
        full: false,
        peer: Some("10.9.9.9"),
    }
    .run(&mut sim, 2 * SEC);
    let f = sim.opened(FindingKind::ConnectionChurn);
    assert_eq!(f.len(), 1, "{:?}", sim.engine.findings());
    let Evidence::ConnectionChurn(e) = &f[0].evidence else {
        unreachable!()
    };
    assert!(e.related_finding_ids.is_empty(), "{e:?}");
    for x in sim.engine.findings() {
        if let Evidence::BadWriteRetry(r) = &x.evidence {
            assert!(r.related_finding_ids.is_empty(), "{r:?}");
        }
    }
}

#[test]
fn slow_or_long_lived_connections_are_not_churn() {
    // 2 connections a second: under the rate.
    let mut sim = Sim::new();
    Serve {
        period_ns: 500 * MS,
        blocked_ns: 400 * MS,
        hs_ns: MS,
        full: false,
        peer: Some("10.9.9.9"),
    }
    .run(&mut sim, 4 * SEC);
    assert!(sim.opened(FindingKind::ConnectionChurn).is_empty());
    // 20 a second, but each lives 2 s (many open at once).
    let mut sim = Sim::new();
    let mut n = 0u64;
    sim.every(50 * MS, 5 * SEC, |sim| {
        n += 1;
        let fd = 100 + (n % 64) as i32;
        sim.engine
            .set_peer(PID, fd, format!("10.9.9.9:{}", 40_000 + n));
        sim.server_handshake(TID, 0x10_000 + n * 0x10, fd, false);
        if n > 40 {
            let old = n - 40;
            sim.free(TID, 0x10_000 + old * 0x10);
            sim.close(TID, 100 + (old % 64) as i32);
        }
    });
    assert!(sim.opened(FindingKind::ConnectionChurn).is_empty());
}
