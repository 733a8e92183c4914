//! Which end of a connection the process is, and what its ServerHello negotiated: only
//! server-side handshakes count in the resumption rate; the hello gives version, cipher and
//! the TLS 1.3 psk cross-check.

use super::*;
use crate::event::{PeerSide, ServerHello};

fn hello(sim: &mut Sim, tid: u32, ssl: u64, fd: i32, psk: bool, sent: bool) {
    sim.feed(
        tid,
        EventKind::ServerHello(ServerHello {
            ssl,
            fd: Some(fd),
            version: 0x0304,
            cipher: 0x1302,
            psk,
            hello_retry: false,
            sent,
        }),
    );
}

fn peer(sim: &mut Sim, fd: i32, n: u64, side: PeerSide) {
    sim.feed(
        TID,
        EventKind::Peer {
            fd,
            addr: format!("127.0.0.1:{}", 40_000 + n),
            side,
        },
    );
}

fn resumption(sim: &Sim) -> Option<&crate::engine::ResumptionEvidence> {
    sim.opened(FindingKind::LowSessionResumption)
        .first()
        .map(|f| match &f.evidence {
            crate::engine::Evidence::LowSessionResumption(e) => e,
            e => panic!("not resumption: {e:?}"),
        })
}

/// The storm's shape: one process holds both ends of each connection. Every 10 ms the
/// server accepts a connection from 127.0.0.1 and the client (another thread) connects:
/// both handshakes are full. `side_evidence` picks how each side is told.
fn both_ends(sim: &mut Sim, side_evidence: &str) {
    let mut n: u64 = 0;
    sim.every(10 * MS, 3 * SEC, |sim| {
        n += 1;
        let (server, client) = (0x10_000 + (n % 64) * 0x10, 0x90_000 + (n % 64) * 0x10);
        let (sfd, cfd) = (100 + (n % 64) as i32, 300 + (n % 64) as i32);
        match side_evidence {
            "peers" => {
                peer(sim, sfd, n, PeerSide::Accepted);
                peer(sim, cfd, n, PeerSide::Connected);
            }
            "hello" => {
                // The server's peer is known (returning clients), the client's is not.
                peer(sim, sfd, n, PeerSide::Accepted);
                hello(sim, TID, server, sfd, false, true);
                hello(sim, TID + 1, client, cfd, false, false);
            }
            _ => unreachable!(),
        }
        sim.server_handshake(TID, server, sfd, true);
        sim.handshake(TID + 1, client, cfd, -1, 0, None);
        sim.handshake(TID + 1, client, cfd, 1, 1, None);
        sim.free(TID, server);
        sim.close(TID, sfd);
        sim.free(TID + 1, client);
        sim.close(TID + 1, cfd);
    });
}

#[test]
fn both_ends_in_one_process_rate_only_the_server_side() {
    for evidence in ["peers", "hello"] {
        let mut sim = Sim::new();
        both_ends(&mut sim, evidence);
        assert!(resumption(&sim).is_some(), "{evidence}: no finding");
        // The latest evidence, over the whole run.
        let f = sim.engine.findings();
        let e = f
            .iter()
            .find_map(|f| match &f.evidence {
                crate::engine::Evidence::LowSessionResumption(e) => Some(e),
                _ => None,
            })
            .unwrap();
        let s = sim.engine.snapshot();
        let p = s.processes[0].handshakes.as_ref().unwrap();
        // Both ends complete a handshake per connection, but the rate counts the server's.
        assert!(p.completed_total >= 580, "{evidence}: {p:?}");
        assert!(
            e.handshakes >= 100 && e.handshakes <= p.completed_total / 2 + 2,
            "{evidence}: {e:?} of {} completed",
            p.completed_total
        );
        assert_eq!(e.resumption_pct, 0.0, "{evidence}");
    }
}

#[test]
fn client_side_handshakes_do_not_lower_the_rate() {
    // A server resuming every returning client, and the same process opening its own
    // connections upstream with full handshakes. Counted together the rate would be 50%.
    for by_peer in [false, true] {
        let mut sim = Sim::new();
        let mut n: u64 = 0;
        sim.every(10 * MS, 3 * SEC, |sim| {
            n += 1;
            let (ssl, fd) = (0x10_000 + (n % 64) * 0x10, 100 + (n % 64) as i32);
            sim.engine
                .set_peer(PID, fd, format!("10.1.2.3:{}", 40_000 + n));
            sim.server_handshake(TID, ssl, fd, false);
            sim.free(TID, ssl);
            sim.close(TID, fd);
            let (up, ufd) = (0x90_000 + (n % 64) * 0x10, 300 + (n % 64) as i32);
            if by_peer {
                peer(sim, ufd, n, PeerSide::Connected);
                sim.handshake(TID, up, ufd, -1, 0, None);
                sim.handshake(TID, up, ufd, 1, 1, None);
            } else {
                let mut c = call(SslOp::Connect, up, ufd, -1, 0);
                sim.ssl(TID, c.clone(), Some(SslErrorCode::WantRead));
                c.ret = 1;
                c.key_ops = 1;
                sim.ssl(TID, c, None);
            }
            sim.free(TID, up);
            sim.close(TID, ufd);
        });
        assert!(resumption(&sim).is_none(), "by_peer {by_peer}");
        let s = sim.engine.snapshot();
        let h = s.processes[0].handshakes.as_ref().unwrap();
        assert!(h.full_total >= 290 && h.resumed_total >= 290, "{h:?}");
    }
}

#[test]
fn server_hello_gives_version_cipher_and_the_psk_cross_check() {
    let mut sim = Sim::new();
    // Full, no psk: agree. Resumed with psk: agree. No key operation but no psk either:
    // they disagree, and in TLS 1.3 the psk decides (full).
    hello(&mut sim, TID, 0x100, 10, false, true);
    sim.server_handshake(TID, 0x100, 10, true);
    hello(&mut sim, TID, 0x200, 11, true, true);
    sim.server_handshake(TID, 0x200, 11, false);
    hello(&mut sim, TID, 0x300, 12, false, true);
    sim.server_handshake(TID, 0x300, 12, false);
    // A HelloRetryRequest then the real hello, with another cipher: the real one counts.
    let mut hrr = ServerHello {
        ssl: 0x400,
        fd: Some(13),
        version: 0x0304,
        cipher: 0x1301,
        psk: false,
        hello_retry: true,
        sent: true,
    };
    sim.feed(TID, EventKind::ServerHello(hrr.clone()));
    hrr.hello_retry = false;
    hrr.cipher = 0x1303;
    sim.feed(TID, EventKind::ServerHello(hrr));
    sim.server_handshake(TID, 0x400, 13, true);
    // TLS 1.2, unknown suite id.
    sim.feed(
        TID,
        EventKind::ServerHello(ServerHello {
            ssl: 0x500,
            fd: Some(14),
            version: 0x0303,
            cipher: 0xC0AD,
            psk: false,
            hello_retry: false,
            sent: true,
        }),
    );
    sim.server_handshake(TID, 0x500, 14, true);
    let s = sim.engine.snapshot();
    let h = s.processes[0].handshakes.as_ref().unwrap();
    assert_eq!(h.completed_total, 5);
    assert_eq!(h.server_hello_total, 5);
    assert_eq!((h.psk_total, h.psk_disagree_total), (1, 1));
    assert_eq!((h.full_total, h.resumed_total), (4, 1));
    let names = |v: &[crate::engine::NameCount]| {
        v.iter()
            .map(|n| format!("{}={}", n.name, n.total))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&h.tls_versions), ["TLS 1.3=4", "TLS 1.2=1"]);
    assert_eq!(
        names(&h.ciphers),
        [
            "TLS_AES_256_GCM_SHA384=3",
            "0xC0AD=1",
            "TLS_CHACHA20_POLY1305_SHA256=1"
        ]
    );
    let c = s.connections.iter().find(|c| c.ssl == 0x500).unwrap();
    assert_eq!(c.tls_version.as_deref(), Some("TLS 1.2"));
    assert_eq!(c.cipher.as_deref(), Some("0xC0AD"));
    // SSL_free forgets the hello with the connection.
    sim.free(TID, 0x500);
    let s = sim.engine.snapshot();
    assert!(s.connections.iter().all(|c| c.ssl != 0x500));
}

/// The resumption threshold itself (70%), with returning clients: 60% resumed is flagged,
/// 80% is not.
#[test]
fn resumption_threshold_is_seventy_percent() {
    for (resumed_of_ten, flagged) in [(6u64, true), (8, false)] {
        let mut sim = Sim::new();
        let mut n: u64 = 0;
        sim.every(10 * MS, 3 * SEC, |sim| {
            n += 1;
            let (ssl, fd) = (0x10_000 + (n % 64) * 0x10, 100 + (n % 64) as i32);
            sim.engine
                .set_peer(PID, fd, format!("10.1.2.3:{}", 40_000 + n));
            sim.server_handshake(TID, ssl, fd, n % 10 >= resumed_of_ten);
            sim.free(TID, ssl);
            sim.close(TID, fd);
        });
        assert_eq!(
            resumption(&sim).is_some(),
            flagged,
            "{resumed_of_ten}/10 resumed: {:?}",
            sim.engine.findings()
        );
        if let Some(e) = resumption(&sim) {
            assert!((55.0..65.0).contains(&e.resumption_pct), "{e:?}");
        }
    }
}
