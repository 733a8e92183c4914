//! The handshakes panel's numbers, derived from snapshots.

use crate::engine::Snapshot;

/// Handshake rate and latency as the panel shows them. Unknown values are `None` and drawn
/// as "n/a": the engine counts handshakes today, and a later engine adds the full/resumed
/// split and latency percentiles, filled in [`HandshakeView::observe`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HandshakeView {
    /// Handshakes per second, oldest first, one point per second or so of snapshots.
    pub rate_history: Vec<u64>,
    pub total: u64,
    pub full: Option<u64>,
    pub resumed: Option<u64>,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
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
        // One line per field the snapshot gains, e.g.:
        // self.resumed = Some(snap.processes.iter().map(|p| p.handshakes_resumed_total).sum());
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
