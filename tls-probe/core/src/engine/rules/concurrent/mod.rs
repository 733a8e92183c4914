//! concurrent_ssl_use: calls on the same SSL* from different threads that overlap in time.
//!
//! Two ways to see it, either of which opens the finding at the first occurrence:
//!
//! - **per call** (the per-call probes are on: full mode, or an escalation window): each
//!   call is the interval [start_ns, start_ns + duration_ns] on its thread. The rule keeps
//!   the latest interval of the last two threads that used each SSL*, and checks every new
//!   call against them when it arrives: calls arrive at their return, so whichever of two
//!   overlapping calls returns second finds the first one kept. Touching intervals (one
//!   ends exactly when the other starts) are sequential, not concurrent.
//! - **at the socket** (the per-call probes are off; the socket I/O tracepoints are on for
//!   a multi-threaded target): the kernel reports a thread entering a read or write on an
//!   fd while another thread's read or write on it has not returned (`SockOverlap`). That
//!   is taken as two SSL calls overlapping only when the fd is known to carry TLS: it is
//!   the socket of a connection seen in its SSL calls or handshake, or a thread was inside
//!   a handshake call, or a write's buffer starts with a TLS record header. A TLS
//!   connection's socket is read and written by libssl alone, so two syscalls in flight on
//!   it are two SSL calls in flight on its SSL*: that part is inferred, and the evidence
//!   says so. A hand-off between threads (one call returns before the next begins) never
//!   has two syscalls in flight. Overlaps on an fd not known to carry TLS are not reported
//!   (they still count towards `--mode auto`'s shared-fd signal, whose window then sees
//!   the calls).
//!
//! One finding per process, like bad_write_retry and for the same reasons: sharing SSL
//! objects between threads is a design property of the program, and connections churn.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

mod socket;

use super::{ConnEnd, Cx, Rule};
use crate::{
    engine::{
        finding::{Evidence, Severity, Subject},
        state::ConnKey,
    },
    event::{SockOverlap, SslCall, SslOp, SysKind},
};

/// How the latest overlap was seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapSeen {
    /// The per-call probes saw both SSL calls, with their times.
    #[default]
    PerCall,
    /// The socket I/O tracepoints saw both threads' syscalls in flight on the fd; the SSL
    /// calls around them are inferred.
    AtSocket,
}

/// Fields added after schema 1's first files default when a recording lacks them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConcurrentEvidence {
    /// Pairs of overlapping calls seen, both ways (at least: the kernel sends one socket
    /// overlap per fd every 10 ms and counts the rest).
    pub overlaps: u64,
    /// Of them, seen per call and at the socket.
    #[serde(default)]
    pub per_call_overlaps: u64,
    #[serde(default)]
    pub socket_overlaps: u64,
    /// Connections (or sockets, when their SSL* is unknown) with at least one overlap.
    pub connections: u64,
    /// The latest overlap: how it was seen, which threads made which calls.
    #[serde(default)]
    pub seen_at: OverlapSeen,
    pub tid_a: u32,
    /// The SSL calls, when seen (per call, or a handshake call at the socket).
    pub op_a: Option<SslOp>,
    pub tid_b: u32,
    pub op_b: Option<SslOp>,
    /// The socket syscalls, when seen at the socket.
    #[serde(default)]
    pub sys_a: Option<SysKind>,
    #[serde(default)]
    pub sys_b: Option<SysKind>,
    /// Per call: how long the two calls overlapped. At the socket: null (both were in
    /// flight when the second began; when the first returned is not reported).
    pub overlap_ns: Option<u64>,
    /// At the socket: how long thread A's syscall had been in flight when B's began.
    #[serde(default)]
    pub a_in_flight_ns: Option<u64>,
    pub max_overlap_ns: u64,
    /// What the probes saw of the latest overlap, and what was inferred from it.
    #[serde(default)]
    pub seen: Vec<String>,
    #[serde(default)]
    pub inferred: Vec<String>,
}

impl fmt::Display for ConcurrentEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} overlapping call{} from different threads on {} connection{}, latest ",
            self.overlaps,
            if self.overlaps == 1 { "" } else { "s" },
            self.connections,
            if self.connections == 1 { "" } else { "s" },
        )?;
        match self.seen_at {
            OverlapSeen::PerCall => write!(
                f,
                "{} on tid {} during {} on tid {} ({} ns overlap)",
                op_name(self.op_b),
                self.tid_b,
                op_name(self.op_a),
                self.tid_a,
                self.overlap_ns.unwrap_or(0),
            ),
            OverlapSeen::AtSocket => write!(
                f,
                "{} on tid {} while tid {}'s {} was in flight (seen at the socket)",
                sys_name(self.sys_b),
                self.tid_b,
                self.tid_a,
                sys_name(self.sys_a),
            ),
        }
    }
}

fn op_name(op: Option<SslOp>) -> &'static str {
    op.map_or("an SSL call", SslOp::symbol)
}

pub(super) fn sys_name(s: Option<SysKind>) -> &'static str {
    match s {
        Some(SysKind::Read) => "read",
        Some(SysKind::Write) => "write",
        None => "syscall",
    }
}

/// The latest overlap, however seen.
pub(super) struct Latest {
    pid: u32,
    tid: u32,
    ts: u64,
    first_ns: u64,
    end_ns: u64,
    /// The connection: its SSL* (when known) and fd.
    ssl: Option<u64>,
    fd: Option<i32>,
    ev: ConcurrentEvidence,
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
}

struct Incident {
    finding: u64,
    last_ns: u64,
    evidence: ConcurrentEvidence,
}

#[derive(Default)]
pub(crate) struct ConcurrentRule {
    recent: FxHashMap<ConnKey, Recent>,
    incidents: FxHashMap<u32, Incident>,
    /// The finding each connection was last counted in.
    counted: FxHashMap<Conn, u64>,
}

impl ConcurrentRule {
    /// Counts an overlap into its process's finding, opening it at the first.
    fn hit(&mut self, cx: &mut Cx<'_>, l: Latest, conn: Conn) {
        let current = self.incidents.get(&l.pid).map(|i| i.finding);
        // A socket counted before its SSL* was known is the same connection.
        let by_fd = match (conn, l.fd) {
            (Conn::Ssl(..), Some(fd)) => self.counted.remove(&Conn::Fd(l.pid, fd)),
            _ => None,
        };
        let counted = self.counted.get(&conn).copied().or(by_fd);
        let new_conn = current.is_none() || counted != current;
        let mut ev = match self.incidents.get(&l.pid) {
            Some(i) => {
                let mut ev = l.ev;
                let old = &i.evidence;
                ev.overlaps += old.overlaps;
                ev.per_call_overlaps += old.per_call_overlaps;
                ev.socket_overlaps += old.socket_overlaps;
                ev.connections = old.connections;
                ev.max_overlap_ns = ev.max_overlap_ns.max(old.max_overlap_ns);
                ev
            }
            None => l.ev,
        };
        ev.connections += u64::from(new_conn);
        let subject = Subject {
            pid: l.pid,
            tid: Some(l.tid),
            ssl: l.ssl,
            fd: l.fd,
        };
        let expl = explain(cx.state.comm(l.pid), &ev);
        if self.counted.len() >= MAX_COUNTED {
            self.counted.clear();
        }
        match self.incidents.get_mut(&l.pid) {
            None => {
                let f = cx.finding(
                    subject,
                    l.first_ns,
                    Severity::Critical,
                    Evidence::ConcurrentSslUse(ev.clone()),
                    expl,
                    advice(),
                );
                let finding = cx.open(f);
                self.counted.insert(conn, finding);
                self.incidents.insert(
                    l.pid,
                    Incident {
                        finding,
                        last_ns: l.ts,
                        evidence: ev,
                    },
                );
            }
            Some(inc) => {
                self.counted.insert(conn, inc.finding);
                inc.last_ns = l.ts;
                inc.evidence = ev.clone();
                cx.update(inc.finding, |f| {
                    f.tid = subject.tid;
                    f.ssl = subject.ssl;
                    f.fd = subject.fd;
                    f.peer = None;
                    f.last_seen_ns = l.end_ns;
                    f.evidence = Evidence::ConcurrentSslUse(ev);
                    f.explanation = expl;
                });
            }
        }
    }
}

/// What an overlap is counted against: a connection, or a socket whose SSL* is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Conn {
    Ssl(u32, u64),
    Fd(u32, i32),
}

/// Connections remembered as counted, at most (then forgotten: counted again).
const MAX_COUNTED: usize = 65_536;

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
        let fd = cx
            .state
            .conns
            .get(&(pid, call.ssl))
            .and_then(|c| c.fd)
            .or(call.fd);
        let ev = ConcurrentEvidence {
            overlaps: 1,
            per_call_overlaps: 1,
            socket_overlaps: 0,
            connections: 0,
            seen_at: OverlapSeen::PerCall,
            tid_a: other.tid,
            op_a: Some(other.op),
            tid_b: tid,
            op_b: Some(me.op),
            sys_a: None,
            sys_b: None,
            overlap_ns: Some(overlap),
            a_in_flight_ns: None,
            max_overlap_ns: overlap,
            seen: vec![format!(
                "tid {} was inside {} on SSL* {:#x} when tid {} was inside {} on it: the \
                 per-call probes timed both calls",
                other.tid,
                other.op.symbol(),
                call.ssl,
                tid,
                me.op.symbol()
            )],
            inferred: Vec::new(),
        };
        let l = Latest {
            pid,
            tid,
            ts: cx.now,
            first_ns: me.start.max(other.start),
            end_ns: me.end,
            ssl: Some(call.ssl),
            fd,
            ev,
        };
        self.hit(cx, l, Conn::Ssl(pid, call.ssl));
    }

    fn on_sock_overlap(&mut self, cx: &mut Cx<'_>, pid: u32, tid: u32, ts: u64, o: &SockOverlap) {
        if let Some((l, conn)) = socket::overlap(cx, pid, tid, ts, o) {
            self.hit(cx, l, conn);
        }
    }

    fn on_conn_end(&mut self, _cx: &mut Cx<'_>, key: ConnKey, how: ConnEnd) {
        // After close() the SSL* lives on (SSL_shutdown, SSL_free may follow); after free a
        // new connection may reuse the address and must not inherit old intervals.
        if how != ConnEnd::Closed {
            self.recent.remove(&key);
            self.counted.remove(&Conn::Ssl(key.0, key.1));
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>) {
        self.incidents
            .retain(|_, inc| cx.keep_incident(inc.finding, inc.last_ns));
    }
}

fn explain(comm: Option<&str>, ev: &ConcurrentEvidence) -> String {
    let who = comm.unwrap_or("the process");
    let mut s = match ev.seen_at {
        OverlapSeen::PerCall => format!(
            "Threads {} and {} of {who} called {} and {} on the same SSL* at the same time \
             (overlapping for {} ns).",
            ev.tid_a,
            ev.tid_b,
            op_name(ev.op_a),
            op_name(ev.op_b),
            ev.overlap_ns.unwrap_or(0),
        ),
        OverlapSeen::AtSocket => format!(
            "Threads {} and {} of {who} were inside a {} and a {} on the same TLS socket at \
             the same time: seen at the socket (the per-call probes were off); the two SSL \
             calls on one SSL* around them are inferred, since only libssl reads and writes a \
             TLS connection's socket.",
            ev.tid_a,
            ev.tid_b,
            sys_name(ev.sys_a),
            sys_name(ev.sys_b),
        ),
    };
    s.push_str(&format!(
        " An SSL object is not thread-safe: concurrent calls corrupt its record and buffer \
         state, which shows as random SSL errors, garbled data or crashes. Seen {} times on {} \
         connection{} ({} per call, {} at the socket).",
        ev.overlaps,
        ev.connections,
        if ev.connections == 1 { "" } else { "s" },
        ev.per_call_overlaps,
        ev.socket_overlaps,
    ));
    s
}

fn advice() -> String {
    "Serialize every call on one SSL*: pin each connection to one thread or event loop, or \
     guard it with a per-connection lock held across SSL_read, SSL_write and the handshake \
     (a reader thread and a writer thread must share it too)."
        .to_owned()
}
