//! Handshake metrics as of now, in the form every sink reads.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{
    names,
    stats::{HsProc, HsSide, quantile},
};
use crate::engine::window::pct;

/// At most this many peers per process in a snapshot, the busiest first.
const SNAPSHOT_PEERS: usize = 16;

/// Handshakes of one thread or process. Totals since attach; `_per_sec` over the recent
/// window; latency and CPU quantiles over every handshake completed since attach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HandshakeSnapshot {
    pub started_total: u64,
    pub completed_total: u64,
    pub full_total: u64,
    pub resumed_total: u64,
    /// Full handshakes run inside SSL_read/SSL_write (in `full_total`, not in the
    /// resumption rate).
    pub implicit_full_total: u64,
    /// Failed with an SSL error, or abandoned (freed before completion).
    pub failed_total: u64,
    pub abandoned_total: u64,
    pub in_progress: u64,
    pub started_per_sec: f64,
    pub completed_per_sec: f64,
    pub full_per_sec: f64,
    pub resumed_per_sec: f64,
    pub failed_per_sec: f64,
    /// Resumed share of the completed handshakes started by a handshake call, since attach;
    /// None before any.
    pub resumption_pct: Option<f64>,
    /// Wall time from the first handshake call to completion.
    pub latency_p50_ns: Option<u64>,
    pub latency_p99_ns: Option<u64>,
    /// Time inside the handshake's calls, summed.
    pub cpu_p50_ns: Option<u64>,
    pub cpu_p99_ns: Option<u64>,
    /// Mean time inside the calls of the full handshakes completed in the recent window.
    pub full_cpu_mean_ns: Option<u64>,
    /// Completed handshakes whose cleartext ServerHello was seen.
    pub server_hello_total: u64,
    /// Of those in TLS 1.3: with a `pre_shared_key` extension (resumed, by the hello), and
    /// where that disagrees with the key-operation classification.
    pub psk_total: u64,
    pub psk_disagree_total: u64,
    /// Completed handshakes by negotiated version ("TLS 1.3") and cipher suite
    /// ("TLS_AES_256_GCM_SHA384", or "0xC0AD" when not in the name table), the most first.
    pub tls_versions: Vec<NameCount>,
    pub ciphers: Vec<NameCount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameCount {
    pub name: String,
    pub total: u64,
}

fn name_counts(m: &BTreeMap<u16, u64>, name: fn(u16) -> String) -> Vec<NameCount> {
    let mut v: Vec<NameCount> = m
        .iter()
        .map(|(id, n)| NameCount {
            name: name(*id),
            total: *n,
        })
        .collect();
    v.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
    v
}

/// Where a thread's wall time went over the recent window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimeShareSnapshot {
    /// Inside handshake calls (and I/O calls carrying a handshake on).
    pub handshake_pct: f64,
    /// Inside other SSL reads and writes.
    pub ssl_io_pct: f64,
    /// Blocked in epoll waits: the loop's idle time.
    pub epoll_blocked_pct: f64,
    /// The rest: the application's own work, untraced syscalls, runnable but not running.
    pub other_pct: f64,
}

/// New connections of one process, and of its busiest peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewConnectionsSnapshot {
    /// Connections whose first handshake call was seen (the handshake rate's connections).
    pub per_sec: f64,
    pub total: u64,
    pub ended_total: u64,
    /// First handshake call to SSL_free, over the connections ended since attach.
    pub lifetime_p50_ns: Option<u64>,
    pub lifetime_p99_ns: Option<u64>,
    /// Per peer host (the address without its port), the busiest first; only where the
    /// agent told the peer.
    pub peers: Vec<PeerSnapshot>,
    /// Connections of peers beyond the ones tracked.
    pub untracked_peer_connections_total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerSnapshot {
    pub peer: String,
    pub connections_total: u64,
    pub connections_per_sec: f64,
    pub ended_total: u64,
    /// Median of the last few lifetimes.
    pub lifetime_p50_ns: Option<u64>,
    pub full_total: u64,
    pub resumed_total: u64,
}

pub(crate) fn side_snapshot(s: &HsSide, now: u64) -> HandshakeSnapshot {
    let w = s.window.summary(now, |_| true).total;
    let secs = s.window.covered_secs(now, s.since_ns);
    let t = &s.totals;
    let rated = t.full - t.implicit_full + t.resumed;
    let full_w = f64::from(w.full);
    HandshakeSnapshot {
        started_total: t.started,
        completed_total: t.completed,
        full_total: t.full,
        resumed_total: t.resumed,
        implicit_full_total: t.implicit_full,
        failed_total: t.failed,
        abandoned_total: t.abandoned,
        in_progress: s.in_progress,
        started_per_sec: f64::from(w.started) / secs,
        completed_per_sec: f64::from(w.completed) / secs,
        full_per_sec: full_w / secs,
        resumed_per_sec: f64::from(w.resumed) / secs,
        failed_per_sec: f64::from(w.failed) / secs,
        resumption_pct: (rated > 0).then(|| pct(t.resumed as f64, rated as f64)),
        latency_p50_ns: quantile(&s.latency, 0.5),
        latency_p99_ns: quantile(&s.latency, 0.99),
        cpu_p50_ns: quantile(&s.cpu, 0.5),
        cpu_p99_ns: quantile(&s.cpu, 0.99),
        full_cpu_mean_ns: (w.full > 0).then(|| w.full_cpu_ns / u64::from(w.full)),
        server_hello_total: t.hello,
        psk_total: t.psk,
        psk_disagree_total: t.psk_disagree,
        tls_versions: name_counts(&s.versions, names::version_name),
        ciphers: name_counts(&s.ciphers, names::cipher_name),
    }
}

/// The thread's time share over the recent window.
pub(crate) fn time_share(s: &HsSide, now: u64) -> TimeShareSnapshot {
    let w = s.window.summary(now, |_| true).total;
    let span = s.window.covered_secs(now, s.since_ns) * 1e9;
    let part = |ns: u64| pct(ns as f64, span).min(100.0);
    let (h, io, b) = (part(w.handshake_ns), part(w.io_ns), part(w.blocked_ns));
    TimeShareSnapshot {
        handshake_pct: h,
        ssl_io_pct: io,
        epoll_blocked_pct: b,
        other_pct: (100.0 - h - io - b).max(0.0),
    }
}

pub(crate) fn new_connections(p: &HsProc, now: u64) -> NewConnectionsSnapshot {
    let w = p.side.window.summary(now, |_| true).total;
    let secs = p.side.window.covered_secs(now, p.side.since_ns);
    NewConnectionsSnapshot {
        per_sec: f64::from(w.started) / secs,
        total: p.side.totals.started,
        ended_total: p.connections_ended,
        lifetime_p50_ns: quantile(&p.lifetime, 0.5),
        lifetime_p99_ns: quantile(&p.lifetime, 0.99),
        peers: peer_snapshots(p, now),
        untracked_peer_connections_total: p.untracked_peer_connections,
    }
}

pub(crate) fn peer_snapshots(p: &HsProc, now: u64) -> Vec<PeerSnapshot> {
    let mut v: Vec<PeerSnapshot> = p
        .peers
        .iter()
        .map(|(peer, s)| {
            let w = s.window.summary(now, |_| true).total;
            PeerSnapshot {
                peer: peer.clone(),
                connections_total: s.connections_total,
                connections_per_sec: f64::from(w.opened) / s.window.covered_secs(now, s.since_ns),
                ended_total: s.ended_total,
                lifetime_p50_ns: s.median_lifetime_ns(),
                full_total: s.full_total,
                resumed_total: s.resumed_total,
            }
        })
        .collect();
    v.sort_by(|a, b| {
        b.connections_per_sec
            .total_cmp(&a.connections_per_sec)
            .then(b.connections_total.cmp(&a.connections_total))
            .then_with(|| a.peer.cmp(&b.peer))
    });
    v.truncate(SNAPSHOT_PEERS);
    v
}
