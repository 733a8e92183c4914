//! bad_write_retry: SSL_write retried, after WANT_WRITE or WANT_READ, with other arguments.
//!
//! OpenSSL requires a write that answered WANT_* to be retried with the same buffer and
//! length. A shorter length always fails ("bad length"); a moved buffer fails ("bad write
//! retry") unless SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER is set. The mode cannot be seen, but
//! its effect can: a retry with a moved buffer (and a length not shorter) that OpenSSL
//! accepts, succeeding or answering WANT_* again, is counted as accepted and not reported.
//!
//! One finding per process, updated with counts, rather than one per connection: the bug is
//! a code path of the program, connections churn (a finding per connection would flood the
//! output and close as fast as it opens), and a thread pool would spread one bug over many
//! tids. The finding carries the tid, SSL*, fd and peer of the latest occurrence, counts per
//! peer, and the fate of the connections hit: an SSL error, then free or close.

use std::{collections::HashMap, fmt};

use serde::{Deserialize, Serialize};

use super::{CallDone, ConnEnd, Cx, Rule, want_word};
use crate::{
    engine::{
        finding::{Evidence, Finding, Severity, Subject},
        state::ConnKey,
    },
    event::{SslErrorCode, SslOp},
};

/// At most this many peers are counted per finding.
const MAX_PEERS: usize = 8;
/// Accepted moved-buffer retries are counted for at most this many processes.
const MAX_PROCESSES: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCount {
    pub peer: String,
    pub occurrences: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRetryEvidence {
    pub occurrences: u64,
    /// Retries with a different buffer pointer.
    pub moved_buffer: u64,
    /// Retries with a shorter length.
    pub shorter_length: u64,
    /// Connections with at least one occurrence.
    pub connections: u64,
    /// Occurrences whose connection then got SSL_ERROR_SSL.
    pub ssl_errors_after: u64,
    /// Connections freed or closed after an occurrence.
    pub connections_dropped_after: u64,
    /// Retries with a moved buffer that OpenSSL accepted (the mode is set): not counted.
    pub moved_buffer_accepted: u64,
    /// The latest occurrence: the call, what the previous write answered, the arguments.
    pub op: SslOp,
    pub previous_answer: Option<SslErrorCode>,
    pub previous_buf: u64,
    pub buf: u64,
    pub previous_len_bytes: u64,
    pub len_bytes: u64,
    /// What happened to the connection of the latest occurrence, e.g. "ssl, then SSL_free".
    pub fate: Option<String>,
    pub peers: Vec<PeerCount>,
}

impl fmt::Display for WriteRetryEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} write retr{} with other arguments ({} moved buffer, {} shorter) on {} \
             connection{}",
            self.occurrences,
            if self.occurrences == 1 { "y" } else { "ies" },
            self.moved_buffer,
            self.shorter_length,
            self.connections,
            if self.connections == 1 { "" } else { "s" },
        )?;
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

/// A connection hit by an occurrence, watched for its fate.
#[derive(Clone, Debug, Default)]
struct Watch {
    ssl_error: bool,
    closed: bool,
    fate: Option<String>,
}

struct Incident {
    finding: u64,
    last_ns: u64,
    evidence: WriteRetryEvidence,
}

#[derive(Default)]
pub(crate) struct WriteRetryRule {
    /// Connections whose last write answered WANT_*: what it passed.
    wanting: HashMap<ConnKey, LastWrite>,
    watched: HashMap<ConnKey, Watch>,
    incidents: HashMap<u32, Incident>,
    /// Moved-buffer retries accepted per process, reported with the next finding.
    accepted: HashMap<u32, u64>,
}

impl WriteRetryRule {
    fn occurrence(&mut self, cx: &mut Cx<'_>, d: &CallDone<'_>, prev: LastWrite) {
        let key = (d.pid, d.call.ssl);
        let new_conn = !self.watched.contains_key(&key);
        let w = self.watched.entry(key).or_default();
        // The retry's own answer is the first part of its fate.
        let ssl_error_now = d.code == Some(SslErrorCode::Ssl) && !w.ssl_error;
        if ssl_error_now {
            w.ssl_error = true;
            w.fate = Some("ssl error".to_owned());
        }
        let fate = w.fate.clone();
        let moved = d.call.buf != prev.buf;
        let shorter = d.call.len < prev.len;
        let peer = cx.state.peer(d.pid, d.fd).map(str::to_owned);
        let accepted = self.accepted.get(&d.pid).copied().unwrap_or(0);
        let inc = self.incidents.get_mut(&d.pid);
        let fresh = inc.is_none();
        let mut ev = match inc {
            Some(i) => i.evidence.clone(),
            None => WriteRetryEvidence {
                occurrences: 0,
                moved_buffer: 0,
                shorter_length: 0,
                connections: 0,
                ssl_errors_after: 0,
                connections_dropped_after: 0,
                moved_buffer_accepted: 0,
                op: d.call.op,
                previous_answer: None,
                previous_buf: 0,
                buf: 0,
                previous_len_bytes: 0,
                len_bytes: 0,
                fate: None,
                peers: Vec::new(),
            },
        };
        ev.occurrences += 1;
        ev.moved_buffer += u64::from(moved);
        ev.shorter_length += u64::from(shorter);
        ev.connections += u64::from(new_conn);
        ev.moved_buffer_accepted = accepted;
        ev.op = d.call.op;
        ev.previous_answer = Some(prev.code);
        ev.previous_buf = prev.buf;
        ev.buf = d.call.buf;
        ev.previous_len_bytes = prev.len;
        ev.len_bytes = d.call.len;
        ev.ssl_errors_after += u64::from(ssl_error_now);
        ev.fate = fate;
        if let Some(peer) = peer {
            if let Some(p) = ev.peers.iter_mut().find(|p| p.peer == peer) {
                p.occurrences += 1;
            } else if ev.peers.len() < MAX_PEERS {
                ev.peers.push(PeerCount {
                    peer,
                    occurrences: 1,
                });
            }
        }
        let subject = Subject {
            pid: d.pid,
            tid: Some(d.tid),
            ssl: Some(d.call.ssl),
            fd: d.fd,
        };
        let expl = explain(cx.state.comm(d.pid), &ev, moved, shorter);
        if fresh {
            let f = cx.finding(
                subject,
                d.ts,
                severity(&ev),
                Evidence::BadWriteRetry(ev.clone()),
                expl,
                advice(),
            );
            let id = cx.open(f);
            self.incidents.insert(
                d.pid,
                Incident {
                    finding: id,
                    last_ns: d.ts,
                    evidence: ev,
                },
            );
        } else if let Some(inc) = self.incidents.get_mut(&d.pid) {
            inc.last_ns = d.ts;
            inc.evidence = ev;
            let id = inc.finding;
            let ev = Evidence::BadWriteRetry(inc.evidence.clone());
            let sev = severity(&inc.evidence);
            cx.update(id, |f| {
                f.tid = subject.tid;
                f.ssl = subject.ssl;
                f.fd = subject.fd;
                f.peer = None;
                f.last_seen_ns = d.ts;
                f.severity = sev;
                f.evidence = ev;
                f.explanation = expl;
            });
        }
    }

    /// Records what happened to a watched connection: an SSL error, a close, a free.
    fn fate(&mut self, cx: &mut Cx<'_>, key: ConnKey, what: &str, ssl_error: bool) {
        let Some(w) = self.watched.get_mut(&key) else {
            return;
        };
        if (ssl_error && w.ssl_error) || (!ssl_error && w.closed) {
            return;
        }
        w.fate = Some(match w.fate.take() {
            Some(f) => format!("{f}, then {what}"),
            None => what.to_owned(),
        });
        if ssl_error {
            w.ssl_error = true;
        } else {
            w.closed = true;
        }
        let fate = w.fate.clone();
        let Some(inc) = self.incidents.get_mut(&key.0) else {
            return;
        };
        if ssl_error {
            inc.evidence.ssl_errors_after += 1;
        } else {
            inc.evidence.connections_dropped_after += 1;
        }
        inc.evidence.fate = fate;
        let ev = Evidence::BadWriteRetry(inc.evidence.clone());
        let sev = severity(&inc.evidence);
        let update = |f: &mut Finding| {
            f.evidence = ev;
            f.severity = sev;
        };
        // The first connection dropped after the bug completes the story the finding
        // opened with: say so at once.
        if !ssl_error && inc.evidence.connections_dropped_after == 1 {
            cx.update_now(inc.finding, update);
        } else {
            cx.update(inc.finding, update);
        }
    }
}

impl Rule for WriteRetryRule {
    fn on_call_done(&mut self, cx: &mut Cx<'_>, d: &CallDone<'_>) {
        let key = (d.pid, d.call.ssl);
        if d.call.op.is_write()
            && let Some(prev) = self.wanting.get(&key).copied()
            && (d.call.buf != prev.buf || d.call.len < prev.len)
        {
            let shorter = d.call.len < prev.len;
            // OpenSSL checks the arguments before any I/O: a retry it rejected made no
            // syscall and failed; one it accepted wrote, or wants again.
            let went_on = d.call.ret > 0
                || d.code.is_some_and(SslErrorCode::is_want)
                || (d.code.is_none() && d.call.sys_calls > 0);
            if !shorter && went_on {
                if self.accepted.len() >= MAX_PROCESSES && !self.accepted.contains_key(&d.pid) {
                    self.accepted.clear();
                }
                *self.accepted.entry(d.pid).or_default() += 1;
            } else {
                self.occurrence(cx, d, prev);
            }
        }
        if d.code == Some(SslErrorCode::Ssl) {
            self.fate(cx, key, "ssl error", true);
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

    fn on_conn_end(&mut self, cx: &mut Cx<'_>, key: ConnKey, how: ConnEnd) {
        match how {
            ConnEnd::Freed => {
                self.fate(cx, key, "SSL_free", false);
                self.wanting.remove(&key);
                self.watched.remove(&key);
            }
            ConnEnd::Closed => self.fate(cx, key, "close", false),
            ConnEnd::Evicted => {
                self.wanting.remove(&key);
                self.watched.remove(&key);
            }
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
        if self.incidents.is_empty() && !self.watched.is_empty() {
            // Only watch connections while a finding is open; otherwise counts would leak
            // into the next finding.
            self.watched.clear();
        }
    }
}

fn severity(ev: &WriteRetryEvidence) -> Severity {
    if ev.ssl_errors_after > 0 || ev.connections_dropped_after > 0 {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

fn explain(comm: Option<&str>, ev: &WriteRetryEvidence, moved: bool, shorter: bool) -> String {
    let who = comm.unwrap_or("The process");
    let mut what = Vec::new();
    if moved {
        what.push(format!(
            "a different buffer ({:#x} instead of {:#x})",
            ev.buf, ev.previous_buf
        ));
    }
    if shorter {
        what.push(format!(
            "a shorter length ({} bytes instead of {})",
            ev.len_bytes, ev.previous_len_bytes
        ));
    }
    let answer = ev
        .previous_answer
        .map_or_else(|| "WANT_*".to_owned(), |c| format!("WANT_{}", want_word(c)));
    format!(
        "{who} retried {} on a connection whose previous write answered {answer}, with {}. \
         OpenSSL requires a retried write to pass the same arguments: a moved buffer is only \
         allowed with SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER and a shorter length never is; \
         otherwise the write fails with \"bad write retry\" or \"bad length\" (SSL_ERROR_SSL) \
         and the connection is usually dropped. Seen {} times on {} connections.",
        ev.op.symbol(),
        what.join(" and "),
        ev.occurrences,
        ev.connections,
    )
}

fn advice() -> String {
    "After SSL_write answers WANT_WRITE or WANT_READ, retry it with the same buffer and length \
     once the socket is ready, and keep the pending data in place until the write completes. \
     If the buffer has to move, set SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER; the length must still \
     not shrink. Never hand the connection to another request while a write is pending."
        .to_owned()
}
