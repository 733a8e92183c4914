//! `peer` events from the kernel: the peer of each accepted connection feeds the per-peer
//! rules; a connection the process opened shows its peer but is not a client coming back.

use super::*;
use crate::event::PeerSide;

/// Every 50 ms a new connection on `fd` from 10.9.9.9 (accepted) or to it (connected),
/// told by a `peer` event, with a resumed handshake, a read, SSL_free and close: 20 short
/// connections a second.
fn reconnects(sim: &mut Sim, side: PeerSide, duration_ns: u64) {
    let mut n: u64 = 0;
    sim.every(50 * MS, duration_ns, |sim| {
        n += 1;
        let (ssl, fd) = (0x10_000 + (n % 64) * 0x10, 100 + (n % 64) as i32);
        sim.wait(TID, Some(-1), 40 * MS, vec![ready(fd, EPOLLIN, EPOLLIN)]);
        sim.feed(
            TID,
            EventKind::Peer {
                fd,
                addr: format!("10.9.9.9:{}", 40_000 + n),
                side,
            },
        );
        sim.server_handshake(TID, ssl, fd, false);
        sim.read(TID, ssl, fd, 100);
        if n.is_multiple_of(10) {
            // Now and then one still open at snapshot time.
            return;
        }
        sim.free(TID, ssl);
        sim.close(TID, fd);
    });
}

#[test]
fn accepted_peers_name_the_churning_client() {
    let mut sim = Sim::new();
    reconnects(&mut sim, PeerSide::Accepted, 2 * SEC);
    let f = sim.opened(FindingKind::ConnectionChurn);
    assert_eq!(f.len(), 1, "{:?}", sim.engine.findings());
    assert_eq!(f[0].peer.as_deref(), Some("10.9.9.9"));
    let crate::engine::Evidence::ConnectionChurn(e) = &f[0].evidence else {
        unreachable!()
    };
    assert_eq!(e.peer, "10.9.9.9");
    assert!((15.0..25.0).contains(&e.connections_per_sec), "{e:?}");
    let snap = sim.engine.snapshot();
    assert!(
        snap.connections.iter().any(|c| c
            .peer
            .as_deref()
            .is_some_and(|p| p.starts_with("10.9.9.9:"))),
        "{:?}",
        snap.connections
    );
}

#[test]
fn connected_peers_are_shown_but_are_not_clients() {
    let mut sim = Sim::new();
    reconnects(&mut sim, PeerSide::Connected, 2 * SEC);
    assert!(
        sim.opened(FindingKind::ConnectionChurn).is_empty(),
        "{:?}",
        sim.engine.findings()
    );
    let snap = sim.engine.snapshot();
    assert!(
        snap.connections.iter().any(|c| c
            .peer
            .as_deref()
            .is_some_and(|p| p.starts_with("10.9.9.9:"))),
        "{:?}",
        snap.connections
    );
}

#[test]
fn a_closed_fd_forgets_its_peer() {
    let mut sim = Sim::new();
    sim.feed(
        TID,
        EventKind::Peer {
            fd: 7,
            addr: "10.0.0.1:1".to_owned(),
            side: PeerSide::Accepted,
        },
    );
    sim.close(TID, 7);
    sim.server_handshake(TID, 0x70, 7, true);
    let snap = sim.engine.snapshot();
    assert_eq!(snap.connections.len(), 1);
    assert_eq!(snap.connections[0].peer, None);
}
