//! The handshakes panel's numbers, derived from snapshots.

use crate::engine::Snapshot;

/// Handshake rate, full/resumed split, latency and what was negotiated, as the panel shows
/// them. Unknown values are `None` and drawn as "n/a".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HandshakeView {
    /// Handshakes per second, oldest first, one point per second or so of snapshots.
    pub rate_history: Vec<u64>,
    pub total: u64,
    pub full: Option<u64>,
    pub resumed: Option<u64>,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    /// The most common negotiated version and cipher suite, from the ServerHellos seen.
    pub version: Option<String>,
    pub cipher: Option<String>,
    /// The snapshot the last rate point was measured from: (now_ns, total).
    anchor: Option<(u64, u64)>,
}

impl HandshakeView {
    /// Points kept: enough for the widest sparkline.
    pub const HISTORY: usize = 240;
    /// Shortest interval one rate point covers; faster snapshots are folded together.
    const MIN_SPAN_NS: u64 = 900_000_000;

    pub fn observe(&mut self, snap: &Snapshot) {
        self.total = snap.processes.iter().map(|p| p.handshakes_total).sum();
        match self.anchor {
            Some((t0, n0)) if snap.now_ns >= t0 + Self::MIN_SPAN_NS => {
                let rate = self.total.saturating_sub(n0) as f64 * 1e9 / (snap.now_ns - t0) as f64;
                self.push(rate.round() as u64);
                self.anchor = Some((snap.now_ns, self.total));
            }
            Some((t0, _)) if snap.now_ns >= t0 => {}
            // The first snapshot, or a clock that went back (a replay restarted).
            _ => self.anchor = Some((snap.now_ns, self.total)),
        }
        let hs: Vec<_> = snap
            .processes
            .iter()
            .filter_map(|p| p.handshakes.as_ref())
            .collect();
        if hs.is_empty() {
            return;
        }
        self.full = Some(hs.iter().map(|h| h.full_total).sum());
        self.resumed = Some(hs.iter().map(|h| h.resumed_total).sum());
        // The busiest process speaks for the latency: quantiles do not add up.
        let busiest = hs.iter().max_by_key(|h| h.completed_total);
        self.p50_ns = busiest.and_then(|h| h.latency_p50_ns);
        self.p99_ns = busiest.and_then(|h| h.latency_p99_ns);
        let top = |f: fn(&crate::engine::HandshakeSnapshot) -> &[crate::engine::NameCount]| {
            hs.iter()
                .flat_map(|h| f(h))
                .max_by_key(|n| n.total)
                .map(|n| n.name.clone())
        };
        self.version = top(|h| &h.tls_versions);
        self.cipher = top(|h| &h.ciphers);
    }

    /// The latest rate point.
    pub fn rate(&self) -> Option<u64> {
        self.rate_history.last().copied()
    }

    fn push(&mut self, rate: u64) {
        if self.rate_history.len() == Self::HISTORY {
            self.rate_history.remove(0);
        }
        self.rate_history.push(rate);
    }
}
