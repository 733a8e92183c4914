//! Findings keep the values of when their process was active: once a storm stops or the
//! target exits, the sliding windows fill with silence, and neither a closed finding nor
//! one still open at the end of the run may report those diluted rates.

use super::*;
use crate::engine::Evidence;

/// Every `period_ns` a new connection from 10.9.9.9 with a handshake of `hs_ns`, a read,
/// SSL_free and close, after a wait blocking `blocked_ns`.
fn serve(sim: &mut Sim, period_ns: u64, blocked_ns: u64, hs_ns: u64, duration_ns: u64) {
    let mut n: u64 = 0;
    sim.every(period_ns, duration_ns, |sim| {
        n += 1;
        let (ssl, fd) = (0x10_000 + (n % 64) * 0x10, 100 + (n % 64) as i32);
        sim.wait(TID, Some(-1), blocked_ns, vec![ready(fd, EPOLLIN, EPOLLIN)]);
        sim.engine
            .set_peer(PID, fd, format!("10.9.9.9:{}", 40_000 + n));
        sim.call_ns = hs_ns / 2;
        sim.server_handshake(TID, ssl, fd, true);
        sim.call_ns = 2 * US;
        sim.read(TID, ssl, fd, 100);
        sim.free(TID, ssl);
        sim.close(TID, fd);
    });
}

/// The last state of each finding of `kind`, open or closed.
fn last(sim: &Sim, kind: FindingKind) -> Finding {
    let all: Vec<Finding> = sim
        .engine
        .findings()
        .into_iter()
        .filter(|f| f.kind == kind)
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    all[0].clone()
}

#[test]
fn saturation_keeps_the_storms_share_after_it_stops() {
    let mut sim = Sim::new();
    // 100 full handshakes/s of 9 ms each: 90% of the thread's time.
    serve(&mut sim, 10 * MS, 500 * US, 9 * MS, 4 * SEC);
    let Evidence::HandshakeSaturation(during) =
        last(&sim, FindingKind::HandshakeSaturation).evidence
    else {
        unreachable!()
    };
    assert!(during.handshake_time_pct >= 85.0, "{during:?}");
    // The storm stops (the target exits): the window drains, the finding closes.
    sim.idle(3 * SEC);
    let f = last(&sim, FindingKind::HandshakeSaturation);
    assert!(!f.is_open(), "{f:?}");
    let Evidence::HandshakeSaturation(e) = &f.evidence else {
        unreachable!()
    };
    assert!(
        e.handshake_time_pct >= 80.0 && e.handshakes_per_sec >= 85.0,
        "closed with diluted values: {e:?}"
    );
    assert!(
        f.explanation
            .contains(&format!("{:.0}%", e.handshake_time_pct)),
        "{}",
        f.explanation
    );
}

#[test]
fn saturation_still_open_at_the_end_keeps_its_values() {
    let mut sim = Sim::new();
    serve(&mut sim, 10 * MS, 500 * US, 9 * MS, 4 * SEC);
    // The run ends half a window after the target exited: the finding is still open.
    sim.idle(600 * MS);
    let f = last(&sim, FindingKind::HandshakeSaturation);
    assert!(f.is_open(), "{f:?}");
    let Evidence::HandshakeSaturation(e) = &f.evidence else {
        unreachable!()
    };
    assert!(e.handshake_time_pct >= 80.0, "diluted: {e:?}");
}

#[test]
fn churn_keeps_its_rate_after_it_stops() {
    let mut sim = Sim::new();
    // 20 short connections a second from one peer.
    serve(&mut sim, 50 * MS, 40 * MS, MS, 3 * SEC);
    sim.idle(4 * SEC);
    let f = last(&sim, FindingKind::ConnectionChurn);
    assert!(!f.is_open(), "{f:?}");
    let Evidence::ConnectionChurn(e) = &f.evidence else {
        unreachable!()
    };
    assert!(
        (15.0..25.0).contains(&e.connections_per_sec),
        "closed with a diluted rate: {e:?}"
    );
}

#[test]
fn spin_keeps_its_rate_after_the_target_exits() {
    let mut sim = Sim::new();
    // A wasted wake-up every millisecond for 2 s.
    sim.every(MS, 2 * SEC, |sim| sim.spin_once(TID, 0x50, 5));
    sim.idle(3 * SEC);
    let f = last(&sim, FindingKind::SpinLoop);
    assert!(!f.is_open(), "{f:?}");
    let Evidence::SpinLoop(e) = &f.evidence else {
        unreachable!()
    };
    assert!(
        e.wasted_wakeups_per_sec >= 800.0,
        "closed with a diluted rate: {e:?}"
    );
}

#[test]
fn an_active_process_still_updates_its_findings() {
    let mut sim = Sim::new();
    serve(&mut sim, 10 * MS, 500 * US, 9 * MS, 3 * SEC);
    // The storm eases but goes on: the finding follows it.
    serve(&mut sim, 10 * MS, 3 * MS, 6 * MS, 6 * SEC);
    let f = last(&sim, FindingKind::HandshakeSaturation);
    let Evidence::HandshakeSaturation(e) = &f.evidence else {
        unreachable!()
    };
    assert!((50.0..70.0).contains(&e.handshake_time_pct), "{e:?}");
    // The peak keeps the storm at its worst.
    let peak = f.peak.as_ref().expect("a windowed finding has a peak");
    let Evidence::HandshakeSaturation(p) = &peak.evidence else {
        unreachable!()
    };
    assert!(p.handshake_time_pct >= 85.0, "{p:?}");
    assert!(peak.ts_ns < sim.now - 3 * SEC, "{peak:?}");
}

#[test]
fn only_windowed_findings_have_a_peak() {
    let mut sim = Sim::new();
    sim.every(MS, 2 * SEC, |sim| sim.spin_once(TID, 0x50, 5));
    sim.write(
        TID,
        0x60,
        6,
        (0x1000, 100),
        -1,
        Some(crate::event::SslErrorCode::WantWrite),
    );
    sim.write(
        TID,
        0x60,
        6,
        (0x2000, 100),
        -1,
        Some(crate::event::SslErrorCode::Ssl),
    );
    let spin = last(&sim, FindingKind::SpinLoop);
    assert!(spin.peak.is_some(), "{spin:?}");
    let retry = last(&sim, FindingKind::BadWriteRetry);
    assert_eq!(retry.peak, None, "{retry:?}");
}
