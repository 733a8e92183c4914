//! What handshake accounting counts: per-bucket counters for rates and time shares, totals
//! and histograms per thread and per process, and connections per peer.

use std::collections::{BTreeMap, VecDeque};

use hdrhistogram::Histogram;
use rustc_hash::FxHashMap;

use crate::engine::window::{Counts, Window};

/// Histograms resolve 1 µs and hold up to a day, with 2 significant digits: about 25 KiB
/// each, made only for threads and processes that handshake.
const HIST_LOW_NS: u64 = 1_000;
const HIST_HIGH_NS: u64 = 86_400_000_000_000;
/// The last lifetimes kept per peer, for its median.
const PEER_LIFETIMES: usize = 32;

/// Counters of one window bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HsCounts {
    /// Wall time inside handshake calls (and inside reads and writes that carried a
    /// handshake on), inside other SSL I/O, and blocked in epoll waits.
    pub handshake_ns: u64,
    pub io_ns: u64,
    pub blocked_ns: u64,
    pub started: u32,
    pub completed: u32,
    pub full: u32,
    pub resumed: u32,
    pub failed: u32,
    /// CPU (time inside calls) of the full handshakes completed in the bucket.
    pub full_cpu_ns: u64,
    /// Completed handshakes whose peer was known, and of those, from a peer already seen.
    pub peer_known: u32,
    pub returning: u32,
}

impl Counts for HsCounts {
    fn merge(&mut self, o: &Self) {
        self.handshake_ns += o.handshake_ns;
        self.io_ns += o.io_ns;
        self.blocked_ns += o.blocked_ns;
        self.started += o.started;
        self.completed += o.completed;
        self.full += o.full;
        self.resumed += o.resumed;
        self.failed += o.failed;
        self.full_cpu_ns += o.full_cpu_ns;
        self.peer_known += o.peer_known;
        self.returning += o.returning;
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HsTotals {
    pub started: u64,
    pub completed: u64,
    pub full: u64,
    pub resumed: u64,
    /// Full handshakes run inside SSL_read/SSL_write with no handshake call: counted in
    /// `full`, but not in the resumption rate (a resumed one cannot be told from a
    /// connection established before attach).
    pub implicit_full: u64,
    /// An SSL error, or freed before completion (`abandoned`).
    pub failed: u64,
    pub abandoned: u64,
    /// Completed handshakes whose ServerHello was seen; of those in TLS 1.3, the ones whose
    /// ServerHello carried a `pre_shared_key`, and the ones where that disagrees with the
    /// key-operation classification (psk present but full, or absent but resumed).
    pub hello: u64,
    pub psk: u64,
    pub psk_disagree: u64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 2).expect("valid histogram bounds")
}

/// Handshake accounting of one thread or process.
pub(crate) struct HsSide {
    pub since_ns: u64,
    pub window: Window<HsCounts>,
    pub totals: HsTotals,
    /// Wall time from the first handshake call to completion.
    pub latency: Histogram<u64>,
    /// Time inside the handshake's calls, summed.
    pub cpu: Histogram<u64>,
    /// Handshakes under way now.
    pub in_progress: u64,
    /// Completed handshakes by negotiated version and cipher suite id (from ServerHellos).
    pub versions: BTreeMap<u16, u64>,
    pub ciphers: BTreeMap<u16, u64>,
}

impl HsSide {
    pub fn new(now: u64, window_ns: u64) -> Self {
        Self {
            since_ns: now,
            window: Window::new(now, window_ns),
            totals: HsTotals::default(),
            latency: histogram(),
            cpu: histogram(),
            in_progress: 0,
            versions: BTreeMap::new(),
            ciphers: BTreeMap::new(),
        }
    }

    /// A completed handshake's ServerHello; `full` is its key-operation classification.
    pub fn hello(&mut self, h: super::Hello, full: bool) {
        self.totals.hello += 1;
        *self.versions.entry(h.version).or_default() += 1;
        *self.ciphers.entry(h.cipher).or_default() += 1;
        if h.version == TLS13 {
            self.totals.psk += u64::from(h.psk);
            self.totals.psk_disagree += u64::from(h.psk == full);
        }
    }
}

/// The `supported_versions` value of TLS 1.3.
pub(crate) const TLS13: u16 = 0x0304;

/// Per-bucket connection counters of one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PeerCounts {
    pub opened: u32,
    pub ended: u32,
    pub lifetime_ns: u64,
}

impl Counts for PeerCounts {
    fn merge(&mut self, o: &Self) {
        self.opened += o.opened;
        self.ended += o.ended;
        self.lifetime_ns += o.lifetime_ns;
    }
}

/// Connections of one peer host (the address without its port) to one process.
pub(crate) struct PeerStats {
    pub since_ns: u64,
    pub last_seen_ns: u64,
    pub window: Window<PeerCounts>,
    pub connections_total: u64,
    pub ended_total: u64,
    pub full_total: u64,
    pub resumed_total: u64,
    pub lifetimes: VecDeque<u64>,
}

impl PeerStats {
    pub fn new(now: u64, window_ns: u64) -> Self {
        Self {
            since_ns: now,
            last_seen_ns: now,
            window: Window::new(now, window_ns),
            connections_total: 0,
            ended_total: 0,
            full_total: 0,
            resumed_total: 0,
            lifetimes: VecDeque::with_capacity(PEER_LIFETIMES),
        }
    }

    pub fn ended(&mut self, now: u64, lifetime_ns: u64) {
        self.ended_total += 1;
        self.last_seen_ns = self.last_seen_ns.max(now);
        let c = self.window.current(now);
        c.ended += 1;
        c.lifetime_ns += lifetime_ns;
        if self.lifetimes.len() == PEER_LIFETIMES {
            self.lifetimes.pop_front();
        }
        self.lifetimes.push_back(lifetime_ns);
    }

    /// The median of the last lifetimes; None before any connection ended.
    pub fn median_lifetime_ns(&self) -> Option<u64> {
        let mut v: Vec<u64> = self.lifetimes.iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        let mid = v.len() / 2;
        Some(*v.select_nth_unstable(mid).1)
    }
}

/// Handshake and connection accounting of one process.
pub(crate) struct HsProc {
    pub side: HsSide,
    /// Completed handshakes over `Config::resumption_window_ns`, for the resumption rate.
    pub long: Window<HsCounts>,
    /// Lifetime of connections whose start was seen: first handshake call to SSL_free.
    pub lifetime: Histogram<u64>,
    pub connections_ended: u64,
    pub peers: FxHashMap<String, PeerStats>,
    /// Connections from peers not tracked because `max_peers` were tracked already.
    pub untracked_peer_connections: u64,
}

impl HsProc {
    pub fn new(now: u64, window_ns: u64, long_ns: u64) -> Self {
        Self {
            side: HsSide::new(now, window_ns),
            long: Window::new(now, long_ns),
            lifetime: histogram(),
            connections_ended: 0,
            peers: FxHashMap::default(),
            untracked_peer_connections: 0,
        }
    }
}

/// The host part of a peer address: "10.0.0.7:51234" -> "10.0.0.7", "[::1]:443" -> "::1".
/// Client ports change with every connection; the host is what comes back.
pub(crate) fn peer_host(peer: &str) -> &str {
    if let Some(rest) = peer.strip_prefix('[')
        && let Some((host, _)) = rest.split_once(']')
    {
        return host;
    }
    match peer.rsplit_once(':') {
        // One colon: host:port. More: a bare IPv6 address.
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => peer,
    }
}

/// The value at `q` (0..1), None when empty.
pub(crate) fn quantile(h: &Histogram<u64>, q: f64) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_hosts() {
        assert_eq!(peer_host("10.0.0.7:51234"), "10.0.0.7");
        assert_eq!(peer_host("[::1]:443"), "::1");
        assert_eq!(peer_host("::1"), "::1");
        assert_eq!(peer_host("/run/app.sock"), "/run/app.sock");
    }
}
