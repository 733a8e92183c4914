//! concurrent_ssl_use: calls on the same SSL* from different threads that overlap in time.
//!
//! Each call is the interval [start_ns, start_ns + duration_ns] on its thread. The rule keeps
//! the latest interval of the last two threads that used each SSL*, and checks every new call
//! against them when it arrives: calls arrive at their return, so whichever of two
//! overlapping calls returns second finds the first one kept. Touching intervals (one ends
//! exactly when the other starts) are sequential, not concurrent.
//!
//! One finding per process, like bad_write_retry and for the same reasons: sharing SSL
//! objects between threads is a design property of the program, and connections churn.

use std::{collections::HashMap, fmt};

use serde::{Deserialize, Serialize};

use super::{ConnEnd, Cx, Rule};
use crate::{
    engine::{
        finding::{Evidence, Severity, Subject},
        state::ConnKey,
    },
    event::{SslCall, SslOp},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConcurrentEvidence {
    /// Pairs of overlapping calls seen.
    pub overlaps: u64,
    /// Connections with at least one overlap.
    pub connections: u64,
    /// The latest overlap: which threads made which calls, and for how long they overlapped.
    pub tid_a: u32,
    pub op_a: SslOp,
    pub tid_b: u32,
    pub op_b: SslOp,
    pub overlap_ns: u64,
    pub max_overlap_ns: u64,
}

impl fmt::Display for ConcurrentEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} overlapping call{} from different threads on {} connection{}, latest {} on tid \
             {} during {} on tid {} ({} ns overlap)",
            self.overlaps,
            if self.overlaps == 1 { "" } else { "s" },
            self.connections,
            if self.connections == 1 { "" } else { "s" },
            self.op_b.symbol(),
            self.tid_b,
            self.op_a.symbol(),
            self.tid_a,
            self.overlap_ns,
        )
    }
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    tid: u32,
    start: u64,
    end: u64,
    op: SslOp,
}

#[derive(Default)]
struct Recent {
    slots: [Option<Slot>; 2],
    /// The finding this connection was last counted in.
    counted_in: Option<u64>,
}

struct Incident {
    finding: u64,
    last_ns: u64,
    evidence: ConcurrentEvidence,
}

#[derive(Default)]
pub(crate) struct ConcurrentRule {
    recent: HashMap<ConnKey, Recent>,
    incidents: HashMap<u32, Incident>,
}

impl Rule for ConcurrentRule {
    fn on_call_arrival(&mut self, cx: &mut Cx<'_>, pid: u32, tid: u32, call: &SslCall) {
        let me = Slot {
            tid,
            start: call.start_ns,
            end: call.start_ns.saturating_add(call.duration_ns),
            op: call.op,
        };
        let r = self.recent.entry((pid, call.ssl)).or_default();
        let mut hit = None;
        for s in r.slots.iter().flatten() {
            let overlap = me.end.min(s.end).saturating_sub(me.start.max(s.start));
            if s.tid != tid && overlap > 0 {
                hit = Some((*s, overlap));
            }
        }
        // Keep this thread's latest call: in its own slot, a free one, or the older one.
        let i = r
            .slots
            .iter()
            .position(|s| s.is_some_and(|s| s.tid == tid))
            .or_else(|| r.slots.iter().position(Option::is_none))
            .unwrap_or_else(|| {
                let ends = r.slots.map(|s| s.map_or(0, |s| s.end));
                usize::from(ends[1] < ends[0])
            });
        r.slots[i] = Some(me);
        let Some((other, overlap)) = hit else {
            return;
        };
        let current = self.incidents.get(&pid).map(|i| i.finding);
        let new_conn = current.is_none() || r.counted_in != current;

        let mut ev = match self.incidents.get(&pid) {
            Some(i) => i.evidence.clone(),
            None => ConcurrentEvidence {
                overlaps: 0,
                connections: 0,
                tid_a: 0,
                op_a: other.op,
                tid_b: 0,
                op_b: me.op,
                overlap_ns: 0,
                max_overlap_ns: 0,
            },
        };
        ev.overlaps += 1;
        ev.connections += u64::from(new_conn);
        (ev.tid_a, ev.op_a, ev.tid_b, ev.op_b) = (other.tid, other.op, tid, me.op);
        ev.overlap_ns = overlap;
        ev.max_overlap_ns = ev.max_overlap_ns.max(overlap);
        let fd = cx
            .state
            .conns
            .get(&(pid, call.ssl))
            .and_then(|c| c.fd)
            .or(call.fd);
        let subject = Subject {
            pid,
            tid: Some(tid),
            ssl: Some(call.ssl),
            fd,
        };
        let expl = explain(cx.state.comm(pid), &ev);
        let first = me.start.max(other.start);
        match self.incidents.get_mut(&pid) {
            None => {
                let f = cx.finding(
                    subject,
                    first,
                    Severity::Critical,
                    Evidence::ConcurrentSslUse(ev.clone()),
                    expl,
                    advice(),
                );
                let finding = cx.open(f);
                r.counted_in = Some(finding);
                self.incidents.insert(
                    pid,
                    Incident {
                        finding,
                        last_ns: cx.now,
                        evidence: ev,
                    },
                );
            }
            Some(inc) => {
                r.counted_in = Some(inc.finding);
                inc.last_ns = cx.now;
                inc.evidence = ev.clone();
                cx.update(inc.finding, |f| {
                    f.tid = subject.tid;
                    f.ssl = subject.ssl;
                    f.fd = subject.fd;
                    f.peer = None;
                    f.last_seen_ns = me.end;
                    f.evidence = Evidence::ConcurrentSslUse(ev);
                    f.explanation = expl;
                });
            }
        }
    }

    fn on_conn_end(&mut self, _cx: &mut Cx<'_>, key: ConnKey, how: ConnEnd) {
        // After close() the SSL* lives on (SSL_shutdown, SSL_free may follow); after free a
        // new connection may reuse the address and must not inherit old intervals.
        if how != ConnEnd::Closed {
            self.recent.remove(&key);
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>) {
        let quiet = cx.cfg.incident_quiet_ns;
        let now = cx.now;
        self.incidents.retain(|_, inc| {
            let keep = now.saturating_sub(inc.last_ns) < quiet;
            if !keep {
                cx.close(inc.finding);
            }
            keep
        });
    }
}

fn explain(comm: Option<&str>, ev: &ConcurrentEvidence) -> String {
    let who = comm.unwrap_or("the process");
    format!(
        "Threads {} and {} of {who} called {} and {} on the same SSL* at the same time \
         (overlapping for {} ns). An SSL object is not thread-safe: concurrent calls corrupt \
         its record and buffer state, which shows as random SSL errors, garbled data or \
         crashes. Seen {} times on {} connections.",
        ev.tid_a,
        ev.tid_b,
        ev.op_a.symbol(),
        ev.op_b.symbol(),
        ev.overlap_ns,
        ev.overlaps,
        ev.connections,
    )
}

fn advice() -> String {
    "Serialize every call on one SSL*: pin each connection to one thread or event loop, or \
     guard it with a per-connection lock held across SSL_read, SSL_write and the handshake \
     (a reader thread and a writer thread must share it too)."
        .to_owned()
}
