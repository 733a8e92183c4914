//! Every engine table past its bound: the bound holds and what was dropped is counted in
//! the snapshot (connections in state.rs's `connections_are_capped`).

use super::*;
use crate::{
    engine::store::FindingStore,
    event::{PeerSide, ServerHello},
};

const S1: u64 = 0x55d0_0000_1000;

fn small() -> Config {
    Config {
        max_connections: 20,
        max_threads: 10,
        max_closed_findings: 4,
        ..Config::default()
    }
}

#[test]
fn threads_are_capped_and_evictions_counted() {
    let mut sim = Sim::with_config(small());
    for i in 0..100u32 {
        sim.read(TID + 1 + i, S1, 7, 10);
    }
    let snap = sim.engine.snapshot();
    assert!(snap.threads.len() <= 10, "{}", snap.threads.len());
    assert!(
        snap.evicted_threads_total >= 90,
        "{}",
        snap.evicted_threads_total
    );
}

#[test]
fn peers_are_capped_and_refusals_counted() {
    let mut sim = Sim::with_config(small());
    for fd in 0..100 {
        sim.feed(
            TID,
            EventKind::Peer {
                fd,
                addr: format!("127.0.0.1:{}", 40_000 + fd),
                side: PeerSide::Accepted,
            },
        );
    }
    sim.engine.set_peer(PID, 1000, "127.0.0.1:1".into());
    assert_eq!(sim.engine.state.peers.len(), 20);
    assert_eq!(sim.engine.snapshot().evicted.peers, 81);
    // A known peer is still updated in a full table.
    sim.engine.set_peer(PID, 3, "127.0.0.1:2".into());
    assert_eq!(sim.engine.snapshot().evicted.peers, 81);
}

#[test]
fn server_hellos_are_capped_and_refusals_counted() {
    let mut sim = Sim::with_config(small());
    for i in 0..50u64 {
        sim.feed(
            TID,
            EventKind::ServerHello(ServerHello {
                ssl: S1 + i * 0x1000,
                fd: Some(7),
                version: 0x0304,
                cipher: 0x1302,
                psk: false,
                hello_retry: false,
                sent: true,
            }),
        );
    }
    assert_eq!(sim.engine.snapshot().evicted.server_hellos, 30);
}

#[test]
fn closed_findings_are_capped_and_drops_counted() {
    let mut sim = Sim::new();
    sim.every(200 * US, 3 * SEC, |s| s.spin_once(TID, S1, 7));
    let finding = sim.opened(FindingKind::SpinLoop)[0].clone();
    let cfg = small();
    let mut store = FindingStore::default();
    let mut out = Vec::new();
    for i in 0..10 {
        let id = store.open(i, finding.clone(), &mut out);
        store.close(id, i + 1, &cfg, &mut out);
    }
    assert_eq!(store.all().len(), 4);
    assert_eq!(store.evicted_closed, 6);
}
