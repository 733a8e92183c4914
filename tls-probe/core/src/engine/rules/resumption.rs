//! low_session_resumption: a server whose clients come back, but mostly without resuming
//! their session, so each of them pays a full handshake again.
//!
//! Over `resumption_window_ns`, a process completed at least `resumption_min_handshakes`
//! handshakes started by a handshake call, under `resumption_min_pct` of them resumed, and
//! at least `resumption_min_returning_pct` of its handshakes with a known peer came from a
//! peer host that had connected before. Peers come from `Engine::set_peer`: without them
//! there is no evidence that clients come back (a server whose clients are all new has
//! nothing to resume), so no finding is made; `handshake_saturation` still reports the
//! cost. The finding stays open while the rate stays under `resumption_min_pct` + 10
//! points, and closes `close_after_ns` after it stopped.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{
    Cx, Rule,
    life::{Life, Step},
};
use crate::engine::{
    finding::{Evidence, Severity, Subject},
    window::pct,
};

/// Points above the threshold that a low rate may rise to before the finding stops holding.
const HYSTERESIS_PCT: f64 = 10.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResumptionEvidence {
    /// Over the last `window_ns`.
    pub window_ns: u64,
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    pub resumption_pct: f64,
    /// Share of the handshakes with a known peer whose peer host had connected before.
    pub returning_pct: f64,
    pub handshakes_per_sec: f64,
    /// Mean time inside the calls of a full handshake.
    pub full_cpu_mean_ns: Option<u64>,
}

impl fmt::Display for ResumptionEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0}% of {} handshakes resumed, while {:.0}% came from returning clients",
            self.resumption_pct, self.handshakes, self.returning_pct
        )
    }
}

#[derive(Default)]
struct Track {
    life: Life,
}

#[derive(Default)]
pub(crate) struct ResumptionRule {
    tracks: FxHashMap<u32, Track>,
}

impl Rule for ResumptionRule {
    fn tick(&mut self, cx: &mut Cx<'_>) {
        let (cfg, now) = (cx.cfg, cx.now);
        let mut pids: Vec<u32> = cx.state.hs.procs.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            let p = &cx.state.hs.procs[&pid];
            let w = p.long.summary(now, |_| true).total;
            let rated = w.full + w.resumed;
            let ev = ResumptionEvidence {
                window_ns: cfg.resumption_window_ns,
                handshakes: u64::from(rated),
                full: u64::from(w.full),
                resumed: u64::from(w.resumed),
                resumption_pct: pct(f64::from(w.resumed), f64::from(rated)),
                returning_pct: pct(f64::from(w.returning), f64::from(w.peer_known)),
                handshakes_per_sec: f64::from(w.completed)
                    / p.long.covered_secs(now, p.side.since_ns),
                full_cpu_mean_ns: (w.full > 0).then(|| w.full_cpu_ns / u64::from(w.full)),
            };
            // The evidence covers the window, or what of it came after the first handshake
            // seen: never before tls-probe was there to see it.
            let since = now
                .saturating_sub(cfg.resumption_window_ns)
                .max(p.side.since_ns);
            let opens = rated >= cfg.resumption_min_handshakes
                && ev.resumption_pct < cfg.resumption_min_pct
                && w.peer_known > 0
                && ev.returning_pct >= cfg.resumption_min_returning_pct;
            let holds = rated > 0 && ev.resumption_pct < cfg.resumption_min_pct + HYSTERESIS_PCT;
            let t = self.tracks.entry(pid).or_default();
            match t.life.step(cx, opens, holds) {
                Step::Open => {
                    let subject = Subject {
                        pid,
                        ..Subject::default()
                    };
                    let expl = explanation(&ev);
                    let f = cx.finding(
                        subject,
                        since,
                        Severity::Warning,
                        Evidence::LowSessionResumption(ev),
                        expl,
                        advice(),
                    );
                    t.life.open(cx, f);
                }
                Step::Hold(id) => {
                    let expl = explanation(&ev);
                    let ev = Evidence::LowSessionResumption(ev);
                    cx.refresh(id, Severity::Warning, ev, expl, now);
                }
                Step::Idle => {}
            }
        }
        let procs = &cx.state.hs.procs;
        self.tracks
            .retain(|pid, t| t.life.is_open() || procs.contains_key(pid));
    }
}

fn explanation(ev: &ResumptionEvidence) -> String {
    format!(
        "Only {:.0}% of the last {} handshakes resumed a TLS session, yet {:.0}% of them came \
         from clients that had connected before: returning clients pay a full handshake \
         (a private-key operation) again, instead of a cheap resumption. The seed's warning \
         sign is a hit rate under 70% sustained.",
        ev.resumption_pct, ev.handshakes, ev.returning_pct
    )
}

fn advice() -> String {
    "Let returning clients resume: a session cache shared by every worker and sized for the \
     connection rate (nginx: ssl_session_cache shared:SSL:<size>; a per-worker cache misses \
     whenever a client lands on another worker), a session timeout longer than the clients' \
     reconnect interval, and session tickets with ticket keys synchronised across the nodes \
     behind the load balancer. Check that the clients offer their session (a client library \
     that does not keep sessions never resumes)."
        .to_owned()
}
