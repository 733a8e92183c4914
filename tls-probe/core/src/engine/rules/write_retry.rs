//! bad_write_retry: SSL_write retried, after WANT_WRITE or WANT_READ, with other arguments.
//!
//! OpenSSL requires a write that answered WANT_* to be retried with the same buffer and
//! length. A shorter length always fails ("bad length"); a moved buffer fails ("bad write
//! retry") unless SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER is set. Either failure is fatal: the
//! connection sends an alert and can only be freed.
//!
//! Two signals, either of which opens the finding at the first occurrence:
//!
//! - the always-on error probe: OpenSSL raising `SSL_R_BAD_WRITE_RETRY` is the evidence on
//!   its own, in every mode (`SSL_R_BAD_LENGTH` too, when raised inside a probed write, as
//!   it is raised elsewhere as well). Its connection is that of the call it was raised in
//!   when that call is probed, else inferred from the thread (see [`super::attribution`]);
//! - the per-call probes, when on: the retry's arguments compared with the write that
//!   answered WANT_*. A retry with a moved buffer (and a length not shorter) that OpenSSL
//!   accepts, succeeding or answering WANT_* again, means the mode is set: counted as
//!   accepted, not reported.
//!
//! One finding per connection hit, carrying how its SSL* and fd were learned, whether the
//! arguments were seen, and its fate: the SSL error, the SSL_free and close() that drop the
//! connection, and the handshake of the reconnect that follows on the same thread (a
//! client's own, or on a server one from the same peer host). Each
//! change is emitted at once. Once its connection was torn down, an open connection_churn
//! finding of the same process and peer host (the reconnects that follow, see
//! [`super::churn::linked`]) is linked in `related_finding_ids`, checked every window
//! bucket. It closes `incident_quiet_ns` after its last occurrence.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tls_probe_common::ossl;

use super::{
    CallDone, ConnEnd, Cx, LibErrorAt, Rule,
    attribution::{Attributed, Attribution, attribute},
    want_word,
};
use crate::{
    engine::{
        finding::{Evidence, FindingKind, Severity, Subject},
        handshake::stats::peer_host,
        state::ConnKey,
    },
    event::{SslErrorCode, SslOp},
};

/// `SSL_R_BAD_LENGTH`: a retried write shorter than the pending one (and other length
/// errors elsewhere in libssl, so taken only inside a probed write).
const SSL_R_BAD_LENGTH: i32 = 271;
/// An SSL_free or close() on the error's thread this soon after it is taken as the
/// connection's when its SSL* or fd was not seen.
const REATTRIBUTE_NS: u64 = 1_000_000_000;
/// Findings tracked at once; the oldest is closed beyond.
const MAX_INCIDENTS: usize = 256;
/// Accepted moved-buffer retries are counted for at most this many processes.
const MAX_PROCESSES: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCount {
    pub peer: String,
    pub occurrences: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRetryEvidence {
    /// Retries that failed on this connection.
    pub occurrences: u64,
    /// OpenSSL's reason as its error probe saw it raised ("bad_write_retry", "bad_length");
    /// None when only the per-call probes saw the retry.
    pub reason: Option<String>,
    /// How the SSL* was learned; None when not known.
    pub connection_from: Option<Attribution>,
    /// How the fd was learned; None when not known.
    pub fd_from: Option<Attribution>,
    /// True when the per-call probes saw both writes: the arguments below are theirs.
    pub arguments_seen: bool,
    /// Retries seen with a different buffer pointer.
    pub moved_buffer: u64,
    /// Retries seen with a shorter length.
    pub shorter_length: u64,
    /// Always 1: the finding is about one connection.
    pub connections: u64,
    /// 1 when the retry answered SSL_ERROR_SSL (seen per call).
    pub ssl_errors_after: u64,
    /// 1 when the connection was freed or closed after.
    pub connections_dropped_after: u64,
    /// From the error to the first SSL_free or close().
    pub dropped_after_ns: Option<u64>,
    /// From the error to the next handshake the thread started on another connection.
    pub reconnect_after_ns: Option<u64>,
    /// Retries with a moved buffer that OpenSSL accepted in this process (the mode is set):
    /// not counted.
    pub moved_buffer_accepted: u64,
    /// The failing call, when probed.
    pub op: Option<SslOp>,
    /// What the previous write answered, and the arguments of both: when seen.
    pub previous_answer: Option<SslErrorCode>,
    pub previous_buf: Option<u64>,
    pub buf: Option<u64>,
    pub previous_len_bytes: Option<u64>,
    pub len_bytes: Option<u64>,
    /// What happened to the connection, e.g. "ssl error, then SSL_free, then close".
    pub fate: Option<String>,
    /// The connection's peer, when known.
    pub peers: Vec<PeerCount>,
    /// connection_churn findings of the process for this connection's peer host, once the
    /// connection was torn down: the reconnects that followed. Once linked, an id stays.
    #[serde(default)]
    pub related_finding_ids: Vec<u64>,
}

impl fmt::Display for WriteRetryEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} failed write retr{}",
            self.occurrences,
            if self.occurrences == 1 { "y" } else { "ies" },
        )?;
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        if self.arguments_seen {
            write!(
                f,
                ", {} moved buffer, {} shorter",
                self.moved_buffer, self.shorter_length
            )?;
        }
        if let Some(fate) = &self.fate {
            write!(f, ", then {fate}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct LastWrite {
    buf: u64,
    len: u64,
    code: SslErrorCode,
}

/// One connection hit: its finding and what is known of it.
struct Incident {
    finding: u64,
    pid: u32,
    tid: u32,
    ssl: Option<u64>,
    fd: Option<i32>,
    /// The latest occurrence.
    error_ns: u64,
    /// SSL_free of its SSL* seen: the pointer may now name a new connection.
    freed: bool,
    closed: bool,
    ev: WriteRetryEvidence,
}

impl Incident {
    fn fate(&mut self, what: &str) {
        self.ev.fate = Some(match self.ev.fate.take() {
            Some(f) => format!("{f}, then {what}"),
            None => what.to_owned(),
        });
    }

    fn dropped(&mut self, now: u64, what: &str) {
        self.fate(what);
        if self.ev.connections_dropped_after == 0 {
            self.ev.connections_dropped_after = 1;
            self.ev.dropped_after_ns = Some(now.saturating_sub(self.error_ns));
        }
    }
}

#[derive(Default)]
pub(crate) struct WriteRetryRule {
    /// Connections whose last write answered WANT_*: what it passed.
    wanting: FxHashMap<ConnKey, LastWrite>,
    incidents: Vec<Incident>,
    /// Moved-buffer retries accepted per process, reported with the next finding.
    accepted: FxHashMap<u32, u64>,
}

/// A retry as one signal saw it.
struct Occurrence<'a> {
    pid: u32,
    tid: u32,
    ts: u64,
    at: Attributed,
    reason: Option<&'a str>,
    op: Option<SslOp>,
    /// The per-call probes' view: the previous write and this one's arguments.
    args: Option<(LastWrite, u64, u64)>,
    ssl_error: bool,
}

impl WriteRetryRule {
    /// The live incident of a connection: same SSL*, not freed since.
    fn live(&self, pid: u32, ssl: Option<u64>, tid: u32) -> Option<usize> {
        self.incidents.iter().position(|i| {
            i.pid == pid
                && !i.freed
                && match ssl {
                    Some(_) => i.ssl == ssl,
                    None => i.ssl.is_none() && i.tid == tid && !i.closed,
                }
        })
    }

    fn occurrence(&mut self, cx: &mut Cx<'_>, o: Occurrence<'_>) {
        let ssl = o.at.ssl.map(|(s, _)| s);
        let accepted = self.accepted.get(&o.pid).copied().unwrap_or(0);
        let idx = self.live(o.pid, ssl, o.tid);
        // The error probe fires inside the call whose record follows: the same retry.
        let same = idx.is_some_and(|i| {
            o.args.is_some()
                && self.incidents[i].ev.reason.is_some()
                && !self.incidents[i].ev.arguments_seen
                && o.ts.saturating_sub(self.incidents[i].error_ns) < REATTRIBUTE_NS
        });
        let peer = cx
            .state
            .peer(o.pid, o.at.fd.map(|(fd, _)| fd))
            .map(str::to_owned);
        let inc = match idx {
            Some(i) => &mut self.incidents[i],
            None => {
                if self.incidents.len() >= MAX_INCIDENTS {
                    let old = self.incidents.remove(0);
                    cx.close(old.finding);
                }
                let ev = WriteRetryEvidence {
                    occurrences: 0,
                    reason: None,
                    connection_from: o.at.ssl.map(|(_, a)| a),
                    fd_from: o.at.fd.map(|(_, a)| a),
                    arguments_seen: false,
                    moved_buffer: 0,
                    shorter_length: 0,
                    connections: 1,
                    ssl_errors_after: 0,
                    connections_dropped_after: 0,
                    dropped_after_ns: None,
                    reconnect_after_ns: None,
                    moved_buffer_accepted: accepted,
                    op: o.op,
                    previous_answer: None,
                    previous_buf: None,
                    buf: None,
                    previous_len_bytes: None,
                    len_bytes: None,
                    fate: None,
                    peers: peer
                        .clone()
                        .map(|peer| PeerCount {
                            peer,
                            occurrences: 0,
                        })
                        .into_iter()
                        .collect(),
                    related_finding_ids: Vec::new(),
                };
                self.incidents.push(Incident {
                    finding: 0,
                    pid: o.pid,
                    tid: o.tid,
                    ssl,
                    fd: o.at.fd.map(|(fd, _)| fd),
                    error_ns: o.ts,
                    freed: false,
                    closed: false,
                    ev,
                });
                self.incidents.last_mut().expect("just pushed")
            }
        };
        if !same {
            inc.ev.occurrences += 1;
            inc.error_ns = o.ts;
            for p in &mut inc.ev.peers {
                p.occurrences += 1;
            }
        }
        if let Some(r) = o.reason {
            inc.ev.reason = Some(r.to_owned());
        }
        if inc.ev.op.is_none() {
            inc.ev.op = o.op;
        }
        if inc.fd.is_none()
            && let Some((fd, from)) = o.at.fd
        {
            inc.fd = Some(fd);
            inc.ev.fd_from = Some(from);
        }
        if let Some((prev, buf, len)) = o.args {
            inc.ev.arguments_seen = true;
            inc.ev.op = o.op;
            inc.ev.moved_buffer += u64::from(buf != prev.buf);
            inc.ev.shorter_length += u64::from(len < prev.len);
            inc.ev.previous_answer = Some(prev.code);
            inc.ev.previous_buf = Some(prev.buf);
            inc.ev.buf = Some(buf);
            inc.ev.previous_len_bytes = Some(prev.len);
            inc.ev.len_bytes = Some(len);
            // The per-call record names the connection itself.
            inc.ev.connection_from = Some(match inc.ev.connection_from {
                Some(a) if a.seen() => a,
                _ => Attribution::SslCall,
            });
        }
        if o.ssl_error && inc.ev.ssl_errors_after == 0 {
            inc.ev.ssl_errors_after = 1;
            inc.fate("ssl error");
        }
        inc.ev.moved_buffer_accepted = accepted;
        if idx.is_some() {
            emit(cx, inc, o.ts);
            return;
        }
        let subject = Subject {
            pid: o.pid,
            tid: Some(o.tid),
            ssl: inc.ssl,
            fd: inc.fd,
        };
        let f = cx.finding(
            subject,
            o.ts,
            severity(&inc.ev),
            Evidence::BadWriteRetry(inc.ev.clone()),
            explain(cx.state.comm(o.pid), inc),
            advice(),
        );
        inc.finding = cx.open(f);
    }

    fn on_per_call_retry(&mut self, cx: &mut Cx<'_>, d: &CallDone<'_>, prev: LastWrite) {
        let from = if d.call.fd_seen {
            Attribution::SslCall
        } else {
            Attribution::ConnectionFd
        };
        self.occurrence(
            cx,
            Occurrence {
                pid: d.pid,
                tid: d.tid,
                ts: d.ts,
                at: Attributed {
                    ssl: Some((d.call.ssl, Attribution::SslCall)),
                    fd: d.fd.map(|fd| (fd, from)),
                },
                reason: None,
                op: Some(d.call.op),
                args: Some((prev, d.call.buf, d.call.len)),
                ssl_error: d.code == Some(SslErrorCode::Ssl),
            },
        );
    }
}

/// The finding brought up to date with its incident, emitted at once: each change (the
/// occurrence, the connection dropped, the reconnect) is news.
fn emit(cx: &mut Cx<'_>, inc: &Incident, at: u64) {
    let ev = inc.ev.clone();
    let expl = explain(cx.state.comm(inc.pid), inc);
    let sev = severity(&ev);
    let (ssl, fd) = (inc.ssl, inc.fd);
    cx.update_now(inc.finding, |f| {
        f.ssl = ssl;
        f.fd = fd;
        f.last_seen_ns = f.last_seen_ns.max(at);
        f.severity = sev;
        f.evidence = Evidence::BadWriteRetry(ev);
        f.explanation = expl;
    });
}

impl Rule for WriteRetryRule {
    fn on_lib_error(&mut self, cx: &mut Cx<'_>, e: &LibErrorAt<'_>) {
        if e.lib != ossl::ERR_LIB_SSL {
            return;
        }
        let in_write = e.op.is_some_and(SslOp::is_write);
        let reason = match e.reason {
            ossl::SSL_R_BAD_WRITE_RETRY => "bad_write_retry",
            SSL_R_BAD_LENGTH if in_write => "bad_length",
            _ => return,
        };
        let at = attribute(cx.state, e);
        self.occurrence(
            cx,
            Occurrence {
                pid: e.pid,
                tid: e.tid,
                ts: e.ts,
                at,
                reason: Some(reason),
                op: e.op,
                args: None,
                ssl_error: false,
            },
        );
    }

    fn on_call_done(&mut self, cx: &mut Cx<'_>, d: &CallDone<'_>) {
        let key = (d.pid, d.call.ssl);
        if d.call.op.is_write()
            && let Some(prev) = self.wanting.get(&key).copied()
            && (d.call.buf != prev.buf || d.call.len < prev.len)
        {
            let shorter = d.call.len < prev.len;
            // OpenSSL checks the arguments before any I/O: a retry it rejected made no
            // syscall and failed; one it accepted wrote, or wants again. It never accepts a
            // shorter one, so a shorter call that went on retried nothing: the write that
            // completed the pending one was not seen (its record lost with a full ring
            // buffer), and this is a new write.
            let went_on = d.call.ret > 0
                || d.code.is_some_and(SslErrorCode::is_want)
                || (d.code.is_none() && d.call.sys_calls > 0);
            if went_on {
                if !shorter {
                    // A moved buffer it took: SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER.
                    if self.accepted.len() >= MAX_PROCESSES && !self.accepted.contains_key(&d.pid) {
                        self.accepted.clear();
                    }
                    *self.accepted.entry(d.pid).or_default() += 1;
                }
            } else {
                self.on_per_call_retry(cx, d, prev);
            }
        } else if d.code == Some(SslErrorCode::Ssl)
            && let Some(i) = self.live(d.pid, Some(d.call.ssl), d.tid)
            && self.incidents[i].ev.ssl_errors_after == 0
        {
            let inc = &mut self.incidents[i];
            inc.ev.ssl_errors_after = 1;
            inc.fate("ssl error");
            emit(cx, inc, d.ts);
        }
        if d.call.op.is_handshake() {
            // The thread starts another connection to the same place: the reconnect after
            // the failure. A client's (SSL_connect, or a socket it connected), or, on a
            // server, one from the same peer host.
            let peer = d.fd.and_then(|fd| cx.state.peers.get(&(d.pid, fd)));
            let outbound = d.call.op == SslOp::Connect || peer.is_some_and(|p| p.outbound);
            let host = peer.map(|p| peer_host(&p.addr).to_owned());
            for inc in &mut self.incidents {
                let same_host = host.is_some()
                    && inc
                        .ev
                        .peers
                        .first()
                        .is_some_and(|p| Some(peer_host(&p.peer)) == host.as_deref());
                if inc.pid == d.pid
                    && inc.tid == d.tid
                    && inc.ev.reconnect_after_ns.is_none()
                    && d.call.start_ns > inc.error_ns
                    && (inc.freed || inc.closed || inc.ssl != Some(d.call.ssl))
                    && (outbound || same_host)
                {
                    inc.ev.reconnect_after_ns = Some(d.call.start_ns - inc.error_ns);
                    inc.fate("reconnect");
                    emit(cx, inc, d.ts);
                }
            }
        }
        if d.call.op.is_write() {
            match d.code {
                Some(code @ (SslErrorCode::WantWrite | SslErrorCode::WantRead))
                    if d.call.ret <= 0 =>
                {
                    self.wanting.insert(
                        key,
                        LastWrite {
                            buf: d.call.buf,
                            len: d.call.len,
                            code,
                        },
                    );
                }
                _ => {
                    self.wanting.remove(&key);
                }
            }
        }
    }

    fn on_ssl_free(&mut self, cx: &mut Cx<'_>, pid: u32, tid: u32, ssl: u64) {
        let now = cx.now;
        let exact = self.live(pid, Some(ssl), tid);
        // Not a connection hit: the thread's first free right after an error whose SSL*
        // was only inferred names the failing connection better.
        let guess = || {
            self.incidents.iter().position(|i| {
                i.pid == pid
                    && i.tid == tid
                    && !i.freed
                    && !i.ev.connection_from.is_some_and(Attribution::seen)
                    && now.saturating_sub(i.error_ns) < REATTRIBUTE_NS
            })
        };
        let Some(i) = exact.or_else(guess) else {
            return;
        };
        let inc = &mut self.incidents[i];
        if inc.ssl != Some(ssl) {
            inc.ssl = Some(ssl);
            inc.ev.connection_from = Some(Attribution::FreedAfter);
        }
        inc.freed = true;
        inc.dropped(now, "SSL_free");
        emit(cx, inc, now);
    }

    fn on_fd_close(&mut self, cx: &mut Cx<'_>, pid: u32, tid: u32, fd: i32, ssl: Option<u64>) {
        let now = cx.now;
        let peer = cx.state.peer(pid, Some(fd)).map(str::to_owned);
        let exact = self.incidents.iter().position(|i| {
            i.pid == pid && !i.closed && (i.fd == Some(fd) || (ssl.is_some() && i.ssl == ssl))
        });
        let guess = || {
            self.incidents.iter().position(|i| {
                i.pid == pid
                    && i.tid == tid
                    && !i.closed
                    && !i.ev.fd_from.is_some_and(Attribution::seen)
                    && now.saturating_sub(i.error_ns) < REATTRIBUTE_NS
            })
        };
        let Some(i) = exact.or_else(guess) else {
            return;
        };
        let inc = &mut self.incidents[i];
        if inc.fd != Some(fd) {
            inc.fd = Some(fd);
            inc.ev.fd_from = Some(Attribution::ClosedAfter);
            inc.ev.peers = peer
                .map(|peer| PeerCount {
                    peer,
                    occurrences: inc.ev.occurrences,
                })
                .into_iter()
                .collect();
        }
        inc.closed = true;
        inc.dropped(now, "close");
        emit(cx, inc, now);
    }

    fn on_conn_end(&mut self, _cx: &mut Cx<'_>, key: ConnKey, how: ConnEnd) {
        if how != ConnEnd::Closed {
            self.wanting.remove(&key);
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>) {
        let now = cx.now;
        for inc in &mut self.incidents {
            if inc.ev.connections_dropped_after == 0 {
                continue;
            }
            let Some(me) = cx.store.open_finding(inc.finding) else {
                continue;
            };
            let churn = cx.store.open_ids(FindingKind::ConnectionChurn, |f| {
                matches!(&f.evidence, Evidence::ConnectionChurn(c)
                    if super::churn::linked(me, f.pid, &c.peer))
            });
            let new: Vec<u64> = churn
                .into_iter()
                .filter(|id| !inc.ev.related_finding_ids.contains(id))
                .collect();
            if !new.is_empty() {
                inc.ev.related_finding_ids.extend(new);
                emit(cx, inc, now);
            }
        }
        self.incidents
            .retain(|inc| cx.keep_incident(inc.finding, inc.error_ns));
    }
}

fn severity(ev: &WriteRetryEvidence) -> Severity {
    // OpenSSL fails the connection on either error: it sends an alert and can only be
    // freed. An accepted retry never gets here.
    if ev.reason.is_some() || ev.ssl_errors_after > 0 || ev.connections_dropped_after > 0 {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

fn explain(comm: Option<&str>, inc: &Incident) -> String {
    let ev = &inc.ev;
    let who = comm.unwrap_or("The process");
    let call = ev.op.map_or("SSL_write", SslOp::symbol);
    let mut s = match ev.reason.as_deref() {
        Some(reason) => format!(
            "{who} retried {call} on this connection with other arguments than the write \
             that answered WANT_*, and OpenSSL failed it with {} on thread {}.",
            if reason == "bad_length" {
                "\"bad length\" (SSL_R_BAD_LENGTH)"
            } else {
                "\"bad write retry\" (SSL_R_BAD_WRITE_RETRY)"
            },
            inc.tid,
        ),
        None => format!(
            "{who} retried {call} on this connection, after it answered WANT_*, with other \
             arguments (thread {}).",
            inc.tid
        ),
    };
    if ev.arguments_seen {
        let mut what = Vec::new();
        if let (Some(b), Some(p)) = (ev.buf, ev.previous_buf)
            && b != p
        {
            what.push(format!("a different buffer ({b:#x} instead of {p:#x})"));
        }
        if let (Some(l), Some(p)) = (ev.len_bytes, ev.previous_len_bytes)
            && l < p
        {
            what.push(format!("a shorter length ({l} bytes instead of {p})"));
        }
        let answer = ev
            .previous_answer
            .map_or_else(|| "WANT_*".to_owned(), |c| format!("WANT_{}", want_word(c)));
        s.push_str(&format!(
            " The per-call probes saw both writes: the first answered {answer}, the retry \
             passed {}.",
            what.join(" and ")
        ));
    } else {
        s.push_str(
            " The arguments of the two writes were not seen (the per-call probes were off): \
             OpenSSL's error reason is the evidence.",
        );
    }
    if let Some(a) = ev.connection_from {
        s.push_str(&format!(" SSL*: {}.", a.describe()));
    }
    if let Some(a) = ev.fd_from {
        s.push_str(&format!(" fd: {}.", a.describe()));
    }
    s.push_str(
        " OpenSSL requires a retried write to pass the same arguments: a moved buffer is only \
         allowed with SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER and a shorter length never is.",
    );
    if let Some(fate) = &ev.fate {
        s.push_str(&format!(" Then: {fate}"));
        if let Some(ns) = ev.reconnect_after_ns {
            s.push_str(&format!(
                " ({:.1} ms after the error: a new handshake to pay)",
                ns as f64 / 1e6
            ));
        }
        s.push('.');
    }
    if !ev.related_finding_ids.is_empty() {
        s.push_str(&format!(
            " The reconnects that follow are part of connection churn from this peer \
             (connection_churn finding {:?}): every retry that fails costs a teardown and a \
             new handshake.",
            ev.related_finding_ids
        ));
    }
    if ev.occurrences > 1 {
        s.push_str(&format!(" Seen {} times.", ev.occurrences));
    }
    s
}

fn advice() -> String {
    "After SSL_write answers WANT_WRITE or WANT_READ, retry it with the same buffer and length \
     once the socket is ready, and keep the pending data in place until the write completes. \
     If the buffer has to move, set SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER; the length must still \
     not shrink. Never hand the connection to another request while a write is pending."
        .to_owned()
}
