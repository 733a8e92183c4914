//! handshake_saturation: a thread whose event loop is starved by TLS handshakes.
//!
//! Over the recent window (`window_ns`), the thread spends at least
//! `saturation_min_handshake_pct` of its wall time inside handshake calls, at most
//! `saturation_max_blocked_pct` blocked in epoll waits (it has no idle time left), and at
//! least `saturation_min_handshakes_per_sec` handshakes start on it; the finding opens once
//! that held, evaluated every bucket, for `saturation_min_duration_ns` without a break. A
//! busy server that still waits in epoll between handshakes has headroom and is not
//! reported. It stays open while the handshake share and rate are at least `keep_open_pct`
//! of the thresholds, and closes `close_after_ns` after that stopped. Critical from
//! `saturation_critical_handshake_pct`, or when the kernel's listen queue overflowed in the
//! last three windows (connections dropped before the loop could accept them).
//!
//! Only event loops are judged: the thread must have been seen in epoll waits. Time inside a
//! handshake call on a blocking socket includes waiting for the peer, so a blocking client
//! would look "saturated" while idle. When the thread's CPU use is known, it must be at least
//! `saturation_min_cpu_pct` too. And the crypto must be what starves it: the full handshakes
//! completed in the window must account for at least `saturation_min_full_time_pct` of its
//! wall time (a loop busy with cheap resumed handshakes needs keep-alive, not a session
//! cache, and is not reported by this rule).

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{
    Cx, Rule,
    life::{Life, Step},
};
use crate::engine::{
    finding::{Evidence, Severity, Subject},
    handshake::{side_snapshot, time_share},
    state::ThreadKey,
};

/// Overflows this many windows ago still make the finding critical: the agent samples the
/// counter about once a second.
const OVERFLOW_RECENT_WINDOWS: u64 = 3;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaturationEvidence {
    /// Handshakes started on the thread.
    pub handshakes_per_sec: f64,
    pub completed_per_sec: f64,
    /// Share of the thread's wall time inside handshake calls.
    pub handshake_time_pct: f64,
    pub epoll_blocked_pct: f64,
    pub ssl_io_pct: f64,
    pub full_per_sec: f64,
    pub resumed_per_sec: f64,
    /// Resumed share of the thread's handshakes since attach.
    pub resumption_pct: Option<f64>,
    /// Mean time inside the calls of a full handshake, over the window.
    pub full_cpu_mean_ns: Option<u64>,
    pub latency_p50_ns: Option<u64>,
    pub latency_p99_ns: Option<u64>,
    /// TcpExtListenOverflows since attach (host-wide); None when not sampled.
    pub listen_overflows_total: Option<u64>,
    pub thread_cpu_pct: Option<f64>,
}

impl fmt::Display for SaturationEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0}% of the thread's time in TLS handshakes ({:.0}/s, {:.0} full/s, {:.0} \
             resumed/s), {:.0}% idle in epoll",
            self.handshake_time_pct,
            self.handshakes_per_sec,
            self.full_per_sec,
            self.resumed_per_sec,
            self.epoll_blocked_pct
        )?;
        if let Some(ns) = self.full_cpu_mean_ns {
            write!(f, ", {:.2} ms per full handshake", ns as f64 / 1e6)?;
        }
        if let Some(n) = self.listen_overflows_total.filter(|n| *n > 0) {
            write!(f, ", {n} listen-queue overflows")?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Track {
    since_ns: Option<u64>,
    life: Life,
}

#[derive(Default)]
pub(crate) struct SaturationRule {
    tracks: FxHashMap<ThreadKey, Track>,
}

impl Rule for SaturationRule {
    fn on_thread_end(&mut self, cx: &mut Cx<'_>, key: ThreadKey) {
        if let Some(mut t) = self.tracks.remove(&key) {
            t.life.end(cx);
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>) {
        let (cfg, now) = (cx.cfg, cx.now);
        let keep = cfg.keep_open_pct / 100.0;
        let overflows = cx.state.hs.overflows;
        let rose = overflows
            .and_then(|o| o.rose_ns)
            .is_some_and(|t| now.saturating_sub(t) <= OVERFLOW_RECENT_WINDOWS * cfg.window_ns);
        let mut keys: Vec<ThreadKey> = cx.state.hs.threads.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let side = &cx.state.hs.threads[&key];
            let share = time_share(side, now);
            let hs = side_snapshot(side, now);
            let event_loop = cx.state.threads.get(&key).is_some_and(|t| t.lp.epoll_mode);
            let busy = cx
                .cpu_pct(key)
                .is_none_or(|c| c >= cfg.saturation_min_cpu_pct);
            let full_pct = full_time_pct(side, now);
            let opens = event_loop
                && busy
                && full_pct >= cfg.saturation_min_full_time_pct
                && share.handshake_pct >= cfg.saturation_min_handshake_pct
                && share.epoll_blocked_pct <= cfg.saturation_max_blocked_pct
                && hs.started_per_sec >= cfg.saturation_min_handshakes_per_sec;
            let holds = share.handshake_pct >= cfg.saturation_min_handshake_pct * keep
                && hs.started_per_sec >= cfg.saturation_min_handshakes_per_sec * keep;
            let t = self.tracks.entry(key).or_default();
            t.since_ns = if opens {
                t.since_ns.or(Some(now))
            } else {
                None
            };
            let ev = SaturationEvidence {
                handshakes_per_sec: hs.started_per_sec,
                completed_per_sec: hs.completed_per_sec,
                handshake_time_pct: share.handshake_pct,
                epoll_blocked_pct: share.epoll_blocked_pct,
                ssl_io_pct: share.ssl_io_pct,
                full_per_sec: hs.full_per_sec,
                resumed_per_sec: hs.resumed_per_sec,
                resumption_pct: hs.resumption_pct,
                full_cpu_mean_ns: hs.full_cpu_mean_ns,
                latency_p50_ns: hs.latency_p50_ns,
                latency_p99_ns: hs.latency_p99_ns,
                listen_overflows_total: overflows.map(|o| o.since_attach()),
                thread_cpu_pct: cx.cpu_pct(key),
            };
            let severity = if rose || share.handshake_pct >= cfg.saturation_critical_handshake_pct {
                Severity::Critical
            } else {
                Severity::Warning
            };
            // It opens once the thresholds have held for saturation_min_duration_ns.
            let lasted = t
                .since_ns
                .filter(|&since| now - since >= cfg.saturation_min_duration_ns);
            match t.life.step(cx, lasted.is_some(), holds) {
                Step::Open => {
                    let Some(since) = lasted else { continue };
                    let subject = Subject {
                        pid: key.0,
                        tid: Some(key.1),
                        ..Subject::default()
                    };
                    let expl = explanation(key.1, &ev);
                    let f = cx.finding(
                        subject,
                        since.saturating_sub(cfg.window_ns),
                        severity,
                        Evidence::HandshakeSaturation(ev),
                        expl,
                        advice(),
                    );
                    t.life.open(cx, f);
                }
                Step::Hold(id) => {
                    let expl = explanation(key.1, &ev);
                    cx.refresh(id, severity, Evidence::HandshakeSaturation(ev), expl, now);
                }
                Step::Idle => {}
            }
        }
        let threads = &cx.state.hs.threads;
        self.tracks
            .retain(|k, t| t.life.is_open() || threads.contains_key(k));
    }
}

/// Share of the window's wall time spent in the calls of the full handshakes completed in it.
fn full_time_pct(side: &crate::engine::handshake::stats::HsSide, now: u64) -> f64 {
    let w = side.window.summary(now, |_| true).total;
    let span = side.window.covered_secs(now, side.since_ns) * 1e9;
    crate::engine::window::pct(w.full_cpu_ns as f64, span)
}

fn explanation(tid: u32, ev: &SaturationEvidence) -> String {
    let mut s = format!(
        "Thread {tid} spends {:.0}% of its time inside TLS handshakes and only {:.0}% waiting \
         in epoll: {:.0} new handshakes a second, {:.0} of them full (signing with the \
         private key). Its event loop has no time left for requests on established \
         connections, so their latency climbs while throughput stays flat.",
        ev.handshake_time_pct, ev.epoll_blocked_pct, ev.handshakes_per_sec, ev.full_per_sec,
    );
    if let Some(r) = ev.resumption_pct {
        s.push_str(&format!(" {r:.0}% of its handshakes resumed a session."));
    }
    if let Some(n) = ev.listen_overflows_total.filter(|n| *n > 0) {
        s.push_str(&format!(
            " The kernel's listen queues overflowed {n} times since attach: connections are \
             dropped before they are accepted."
        ));
    }
    s
}

fn advice() -> String {
    "Make fewer handshakes full: a shared session cache sized for the connection rate \
     (nginx: ssl_session_cache shared:SSL:<size>, about connection rate x session timeout / \
     4000 MB) and a longer session timeout; session tickets, with ticket keys synchronised \
     across every node behind the load balancer; TLS 1.3. Make fewer handshakes: keep-alive \
     (keepalive_timeout, keepalive_requests) and HTTP/2 on the client side. Make each one \
     cheaper: an ECDSA certificate signs far faster than RSA. Offload TLS termination only as \
     a last resort."
        .to_owned()
}
