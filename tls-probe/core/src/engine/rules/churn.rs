//! connection_churn: one peer opens and tears down connections again and again, each living
//! a short time: every one pays a handshake, and a client that resets and reconnects often
//! hides an error it keeps running into (e.g. a write retried wrongly, then the connection
//! reset: see `bad_write_retry`).
//!
//! Per (pid, peer host), over the window: at least `churn_min_connections_per_sec` new
//! connections a second, new connections in at least `sustained_buckets` buckets, and the
//! median lifetime of its last connections under `churn_max_lifetime_ns`. Only where the
//! peer is known (`Engine::set_peer`). The evidence links the `bad_write_retry` findings of
//! the same process whose connection to this peer (or to a peer not known) was torn down
//! after the retry ([`linked`]): the retries that cost these reconnects; each of those
//! links back to this finding. Its severity is graded by the handshake cost paid (see
//! [`severity`]). It stays open while
//! the rate is at least `keep_open_pct` of the threshold and closes `close_after_ns` after.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{
    Cx, Rule,
    life::{Life, Step},
};
use crate::engine::{
    Finding,
    finding::{Evidence, FindingKind, Severity, Subject},
    handshake::stats::peer_host,
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChurnEvidence {
    /// The peer host (address without port).
    pub peer: String,
    pub connections_per_sec: f64,
    pub connections_total: u64,
    /// Median of its last connections' lifetimes.
    pub lifetime_p50_ns: Option<u64>,
    pub full_handshakes_total: u64,
    pub resumed_handshakes_total: u64,
    /// bad_write_retry findings of the same process whose connection to this peer was torn
    /// down after the retry ([`linked`]); once linked, an id stays.
    pub related_finding_ids: Vec<u64>,
    /// The failed write retries those findings counted: what tore the connections down.
    #[serde(default)]
    pub bad_write_retries: u64,
}

impl fmt::Display for ChurnEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0} new connections/s from {}",
            self.connections_per_sec, self.peer
        )?;
        if let Some(ns) = self.lifetime_p50_ns {
            write!(f, ", living {:.1} ms (median)", ns as f64 / 1e6)?;
        }
        if !self.related_finding_ids.is_empty() {
            write!(
                f,
                ", {} bad write retr{} tore connections down (finding {:?})",
                self.bad_write_retries,
                if self.bad_write_retries == 1 {
                    "y"
                } else {
                    "ies"
                },
                self.related_finding_ids
            )?;
        }
        Ok(())
    }
}

/// A churn finding of one (pid, peer host), while open.
#[derive(Default)]
struct Open {
    life: Life,
    /// The bad_write_retry findings linked so far, with their retries.
    links: Vec<(u64, u64)>,
}

#[derive(Default)]
pub(crate) struct ChurnRule {
    /// By (pid, peer host).
    open: FxHashMap<(u32, String), Open>,
}

impl Rule for ChurnRule {
    fn tick(&mut self, cx: &mut Cx<'_>) {
        let (cfg, now) = (cx.cfg, cx.now);
        let keep = cfg.keep_open_pct / 100.0;
        let mut found = Vec::new();
        for (&pid, p) in &cx.state.hs.procs {
            for (host, s) in &p.peers {
                let sum = s.window.summary(now, |c| c.opened > 0);
                let rate = f64::from(sum.total.opened) / s.window.covered_secs(now, s.since_ns);
                let median = s.median_lifetime_ns();
                let short = median.is_some_and(|m| m < cfg.churn_max_lifetime_ns);
                let opens = rate >= cfg.churn_min_connections_per_sec
                    && sum.active >= cfg.sustained_buckets
                    && short;
                let holds = rate >= cfg.churn_min_connections_per_sec * keep && short;
                if opens || holds {
                    found.push((
                        (pid, host.clone()),
                        opens,
                        holds,
                        ChurnEvidence {
                            peer: host.clone(),
                            connections_per_sec: rate,
                            connections_total: s.connections_total,
                            lifetime_p50_ns: median,
                            full_handshakes_total: s.full_total,
                            resumed_handshakes_total: s.resumed_total,
                            related_finding_ids: Vec::new(),
                            bad_write_retries: 0,
                        },
                    ));
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let mut seen = Vec::with_capacity(found.len());
        for (key, opens, holds, mut ev) in found {
            let retries: Vec<(u64, u64)> = cx
                .store
                .open_of(FindingKind::BadWriteRetry, |f| linked(f, key.0, &key.1))
                .into_iter()
                .filter_map(|f| match &f.evidence {
                    Evidence::BadWriteRetry(e) => Some((f.id, e.occurrences)),
                    _ => None,
                })
                .collect();
            let mut links = self
                .open
                .get(&key)
                .map(|o| o.links.clone())
                .unwrap_or_default();
            seen.push(key.clone());
            for (id, n) in retries {
                match links.iter_mut().find(|(i, _)| *i == id) {
                    Some(l) => l.1 = n,
                    None => links.push((id, n)),
                }
            }
            ev.related_finding_ids = links.iter().map(|&(id, _)| id).collect();
            ev.bad_write_retries = links.iter().map(|&(_, n)| n).sum();
            let o = self.open.entry(key.clone()).or_default();
            match o.life.step(cx, opens, holds) {
                Step::Hold(id) => {
                    o.links = links;
                    let expl = explanation(&ev);
                    let sev = severity(&ev);
                    cx.refresh(id, sev, Evidence::ConnectionChurn(ev), expl, now);
                }
                Step::Open => {
                    let subject = Subject {
                        pid: key.0,
                        ..Subject::default()
                    };
                    let expl = explanation(&ev);
                    let sev = severity(&ev);
                    let mut f = cx.finding(
                        subject,
                        now.saturating_sub(cfg.window_ns),
                        sev,
                        Evidence::ConnectionChurn(ev),
                        expl,
                        advice(),
                    );
                    f.peer = Some(key.1.clone());
                    o.links = links;
                    o.life.open(cx, f);
                }
                Step::Idle => {}
            }
        }
        // Those whose condition no longer holds: the close timer runs.
        for (key, o) in &mut self.open {
            if !seen.contains(key) {
                o.life.step(cx, false, false);
            }
        }
        self.open.retain(|_, o| o.life.is_open());
    }
}

/// A bad_write_retry finding is linked to the churn of (`pid`, `host`): same process, its
/// connection was torn down after the retry (freed or closed), and one of its peers, or its
/// latest one, is that host, or it names no peer at all (peers unknown), so it may be this
/// one. The churn is the reconnects that follow.
pub(super) fn linked(f: &Finding, pid: u32, host: &str) -> bool {
    let Evidence::BadWriteRetry(e) = &f.evidence else {
        return false;
    };
    if f.pid != pid || e.connections_dropped_after == 0 {
        return false;
    }
    let mut peers = e
        .peers
        .iter()
        .map(|p| p.peer.as_str())
        .chain(f.peer.as_deref())
        .peekable();
    peers.peek().is_none() || peers.any(|p| peer_host(p) == host)
}

/// Graded by the handshake cost the connections actually paid: a flood of connections that
/// resume their session costs a round trip and symmetric crypto each; full handshakes pay
/// the key exchange and the signature too, the part that saturates a server. Info when at
/// most a quarter of the handshakes seen were full, Warning otherwise (or when unknown).
fn severity(ev: &ChurnEvidence) -> Severity {
    let total = ev.full_handshakes_total + ev.resumed_handshakes_total;
    if total > 0 && ev.full_handshakes_total * 4 <= total {
        Severity::Info
    } else {
        Severity::Warning
    }
}

fn explanation(ev: &ChurnEvidence) -> String {
    let total = ev.full_handshakes_total + ev.resumed_handshakes_total;
    let cost = if total == 0 {
        "every one pays a handshake (whether full or resumed was not seen)".to_owned()
    } else if severity(ev) == Severity::Info {
        format!(
            "most resume their session ({} of {total} handshakes resumed), so each pays only \
             a round trip and symmetric crypto, not the key exchange and signature of a full \
             handshake: a weaker problem than churn with full handshakes",
            ev.resumed_handshakes_total
        )
    } else {
        format!(
            "{} of {total} handshakes were full, each paying the key exchange and the \
             signature: the costly part of a handshake, paid again and again",
            ev.full_handshakes_total
        )
    };
    let mut s = format!(
        "{} opens {:.0} new TLS connections a second to this process, each living only \
         briefly{}: {cost}. A client that keeps resetting and reconnecting is usually \
         recovering from an error.",
        ev.peer,
        ev.connections_per_sec,
        ev.lifetime_p50_ns
            .map(|ns| format!(" ({:.1} ms median)", ns as f64 / 1e6))
            .unwrap_or_default(),
    );
    if !ev.related_finding_ids.is_empty() {
        let n = ev.related_finding_ids.len();
        s.push_str(&format!(
            " {n} of these connections {} torn down after a bad write retry ({} failed \
             retr{}, bad_write_retry finding{} {:?}): the likely cause. OpenSSL fails a \
             connection on a wrongly retried write, the client drops it and reconnects, and \
             pays a new handshake each time.",
            if n == 1 { "was" } else { "were" },
            ev.bad_write_retries,
            if ev.bad_write_retries == 1 {
                "y"
            } else {
                "ies"
            },
            if n == 1 { "" } else { "s" },
            ev.related_finding_ids
        ));
    }
    s
}

fn advice() -> String {
    "Find why the peer's connections end: errors in the server log for that address, a \
     bad_write_retry or other SSL error on its connections, a client timeout shorter than \
     the response time. Then keep connections alive (keep-alive, connection pooling on the \
     client) and let reconnects resume their session."
        .to_owned()
}
