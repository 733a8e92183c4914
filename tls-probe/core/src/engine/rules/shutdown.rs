//! write_after_shutdown: SSL_write on a connection whose write side is shut: after the
//! program's own SSL_shutdown (close_notify sent), or after a fatal error (OpenSSL sent an
//! alert, which shuts it too), e.g. a write queued behind one that failed.
//!
//! The evidence is OpenSSL raising `SSL_R_PROTOCOL_IS_SHUTDOWN`, which only its write
//! functions raise (SSL_write and SSL_write_ex, SSL_sendfile, SSL_write_early_data): seen
//! by the always-on error probe in every mode, at the first occurrence. The connection is
//! attributed as for bad_write_retry (see [`super::attribution`]). The evidence names the
//! error raised last on the thread before, when there was one within
//! [`PREVIOUS_ERROR_NS`]: "a retry after a fatal error" rather than "after SSL_shutdown".
//!
//! One finding per connection; it closes `incident_quiet_ns` after its last occurrence.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tls_probe_common::ossl;

use super::{
    Cx, LibErrorAt, Rule,
    attribution::{Attribution, attribute},
};
use crate::{
    engine::{
        finding::{Evidence, Severity, Subject},
        state::ThreadKey,
    },
    event::SslOp,
};

/// An error raised on the thread this long before still explains the write.
const PREVIOUS_ERROR_NS: u64 = 10_000_000_000;
/// Threads whose last error is remembered.
const MAX_THREADS: usize = 4096;
const MAX_INCIDENTS: usize = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShutdownWriteEvidence {
    /// Writes refused on this connection.
    pub occurrences: u64,
    /// The refused call, when probed.
    pub op: Option<SslOp>,
    /// How the SSL* and fd were learned; None when not known.
    pub connection_from: Option<Attribution>,
    pub fd_from: Option<Attribution>,
    /// The libssl error raised on the thread before it (reason name, or "lib L reason R"):
    /// the fatal error that shut the connection, most likely. None: none was seen, as after
    /// the program's own SSL_shutdown.
    pub previous_error: Option<String>,
    pub previous_error_ago_ns: Option<u64>,
}

impl fmt::Display for ShutdownWriteEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} write{} after shutdown",
            self.occurrences,
            if self.occurrences == 1 { "" } else { "s" }
        )?;
        if let Some(e) = &self.previous_error {
            write!(f, ", after {e}")?;
        }
        Ok(())
    }
}

struct Incident {
    finding: u64,
    pid: u32,
    ssl: Option<u64>,
    tid: u32,
    last_ns: u64,
    ev: ShutdownWriteEvidence,
}

#[derive(Default)]
pub(crate) struct ShutdownRule {
    /// The last other libssl error per thread: (name, ts).
    last_error: FxHashMap<ThreadKey, (String, u64)>,
    incidents: Vec<Incident>,
}

impl Rule for ShutdownRule {
    fn on_lib_error(&mut self, cx: &mut Cx<'_>, e: &LibErrorAt<'_>) {
        let key = (e.pid, e.tid);
        if e.lib != ossl::ERR_LIB_SSL {
            // libcrypto raises and clears errors of its own in healthy code (OpenSSL 3's
            // decoders try formats in turn): they shut no connection.
            return;
        }
        if e.reason != ossl::SSL_R_PROTOCOL_IS_SHUTDOWN {
            if self.last_error.len() >= MAX_THREADS && !self.last_error.contains_key(&key) {
                self.last_error.clear();
            }
            let name = e.reason_name.map_or_else(
                || format!("lib {} reason {}", e.lib, e.reason),
                str::to_owned,
            );
            self.last_error.insert(key, (name, e.ts));
            return;
        }
        let at = attribute(cx.state, e);
        let ssl = at.ssl.map(|(s, _)| s);
        let previous = self
            .last_error
            .get(&key)
            .filter(|(_, ts)| e.ts.saturating_sub(*ts) < PREVIOUS_ERROR_NS)
            .cloned();
        if let Some(inc) = self
            .incidents
            .iter_mut()
            .find(|i| i.pid == e.pid && i.ssl == ssl && (ssl.is_some() || i.tid == e.tid))
        {
            inc.ev.occurrences += 1;
            inc.last_ns = e.ts;
            let ev = inc.ev.clone();
            cx.update(inc.finding, |f| {
                f.last_seen_ns = e.ts;
                f.evidence = Evidence::WriteAfterShutdown(ev);
            });
            return;
        }
        if self.incidents.len() >= MAX_INCIDENTS {
            let old = self.incidents.remove(0);
            cx.close(old.finding);
        }
        let ev = ShutdownWriteEvidence {
            occurrences: 1,
            op: e.op,
            connection_from: at.ssl.map(|(_, a)| a),
            fd_from: at.fd.map(|(_, a)| a),
            previous_error_ago_ns: previous.as_ref().map(|(_, ts)| e.ts.saturating_sub(*ts)),
            previous_error: previous.map(|(n, _)| n),
        };
        let subject = Subject {
            pid: e.pid,
            tid: Some(e.tid),
            ssl,
            fd: at.fd.map(|(fd, _)| fd),
        };
        let f = cx.finding(
            subject,
            e.ts,
            Severity::Warning,
            Evidence::WriteAfterShutdown(ev.clone()),
            explain(cx.state.comm(e.pid), e.tid, &ev),
            advice(),
        );
        let id = cx.open(f);
        self.incidents.push(Incident {
            finding: id,
            pid: e.pid,
            ssl,
            tid: e.tid,
            last_ns: e.ts,
            ev,
        });
    }

    fn on_ssl_free(&mut self, _cx: &mut Cx<'_>, pid: u32, _tid: u32, ssl: u64) {
        // The SSL* may name a new connection from now on: a later refusal is another one.
        for inc in &mut self.incidents {
            if inc.pid == pid && inc.ssl == Some(ssl) {
                inc.ssl = None;
                inc.tid = 0;
            }
        }
    }

    fn on_thread_end(&mut self, _cx: &mut Cx<'_>, key: ThreadKey) {
        self.last_error.remove(&key);
    }

    fn tick(&mut self, cx: &mut Cx<'_>) {
        let quiet = cx.cfg.incident_quiet_ns;
        let now = cx.now;
        self.incidents.retain(|inc| {
            let keep = now.saturating_sub(inc.last_ns) < quiet;
            if !keep {
                cx.close(inc.finding);
            }
            keep
        });
    }
}

fn explain(comm: Option<&str>, tid: u32, ev: &ShutdownWriteEvidence) -> String {
    let who = comm.unwrap_or("The process");
    let call = ev.op.map_or("SSL_write", SslOp::symbol);
    let mut s = format!(
        "{who} called {call} on thread {tid} on a connection whose write side is already \
         shut, and OpenSSL refused it with \"protocol is shutdown\" \
         (SSL_R_PROTOCOL_IS_SHUTDOWN): the program sent its close_notify (SSL_shutdown) or \
         the connection failed fatally before, and kept writing."
    );
    match (&ev.previous_error, ev.previous_error_ago_ns) {
        (Some(e), Some(ns)) => s.push_str(&format!(
            " OpenSSL raised {e} on the same thread {:.1} ms before: a write retried after a \
             fatal error, most likely.",
            ns as f64 / 1e6
        )),
        _ => s.push_str(
            " No other OpenSSL error was raised on the thread before it: a write after the \
             program's own SSL_shutdown, most likely.",
        ),
    }
    if let Some(a) = ev.connection_from {
        s.push_str(&format!(" SSL*: {}.", a.describe()));
    }
    if let Some(a) = ev.fd_from {
        s.push_str(&format!(" fd: {}.", a.describe()));
    }
    s
}

fn advice() -> String {
    "Stop writing on a connection once it is shut: after SSL_shutdown, and after any SSL call \
     failed with SSL_ERROR_SSL or SSL_ERROR_SYSCALL (OpenSSL then sent an alert; do not call \
     SSL_shutdown, just SSL_free and close the socket). Keep a per-connection state so that \
     writes queued behind a failed one are dropped, not retried."
        .to_owned()
}
