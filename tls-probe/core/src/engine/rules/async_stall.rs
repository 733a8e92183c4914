//! want_async_stall: a connection whose calls keep answering SSL_ERROR_WANT_ASYNC (the
//! offloaded crypto job has not finished) or WANT_ASYNC_JOB (no async job available).
//!
//! A streak starts at the first such answer and lasts while the connection's calls keep
//! giving one; any other result ends it. The finding opens when a streak reaches
//! `async_min_waits` answers spanning at least `async_min_stall_ns`, and closes when the
//! streak ends, the connection goes away, or no call is seen for `incident_quiet_ns`. Async
//! mode normally answers WANT_ASYNC once or twice per operation for a few microseconds to
//! milliseconds, which stays far below these thresholds.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{CallDone, ConnEnd, Cx, Rule};
use crate::{
    engine::{
        finding::{Evidence, Severity, Subject},
        state::ConnKey,
    },
    event::{SslErrorCode, SslOp},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AsyncStallEvidence {
    /// WANT_ASYNC / WANT_ASYNC_JOB answers in the streak.
    pub waits: u64,
    /// From the first answer of the streak to the latest.
    pub stalled_ns: u64,
    /// Time spent inside the calls that answered it.
    pub calls_duration_ns: u64,
    pub ssl_error: SslErrorCode,
    pub op: SslOp,
    /// The streak ended with the call completing.
    pub resolved: bool,
}

impl fmt::Display for AsyncStallEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} answered {} {} times over {:.1} ms",
            self.op.symbol(),
            self.ssl_error.name(),
            self.waits,
            self.stalled_ns as f64 / 1e6
        )?;
        if self.resolved {
            f.write_str(", then completed")?;
        }
        Ok(())
    }
}

struct Streak {
    started_ns: u64,
    last_ns: u64,
    waits: u64,
    calls_ns: u64,
    code: SslErrorCode,
    op: SslOp,
    finding: Option<u64>,
}

impl Streak {
    fn evidence(&self, resolved: bool) -> AsyncStallEvidence {
        AsyncStallEvidence {
            waits: self.waits,
            stalled_ns: self.last_ns.saturating_sub(self.started_ns),
            calls_duration_ns: self.calls_ns,
            ssl_error: self.code,
            op: self.op,
            resolved,
        }
    }
}

#[derive(Default)]
pub(crate) struct AsyncStallRule {
    streaks: FxHashMap<ConnKey, Streak>,
}

impl Rule for AsyncStallRule {
    fn on_call_done(&mut self, cx: &mut Cx<'_>, d: &CallDone<'_>) {
        let key = (d.pid, d.call.ssl);
        let code = match d.code {
            Some(c @ (SslErrorCode::WantAsync | SslErrorCode::WantAsyncJob)) if d.call.ret <= 0 => {
                c
            }
            _ => {
                if let Some(s) = self.streaks.remove(&key)
                    && let Some(id) = s.finding
                {
                    let ev = Evidence::WantAsyncStall(s.evidence(true));
                    cx.modify(id, |f| f.evidence = ev);
                    cx.close(id);
                }
                return;
            }
        };
        let s = self.streaks.entry(key).or_insert(Streak {
            started_ns: d.call.start_ns.min(d.ts),
            last_ns: d.ts,
            waits: 0,
            calls_ns: 0,
            code,
            op: d.call.op,
            finding: None,
        });
        s.waits += 1;
        s.calls_ns += d.call.duration_ns;
        s.last_ns = s.last_ns.max(d.ts);
        s.code = code;
        s.op = d.call.op;
        let stalled = s.last_ns.saturating_sub(s.started_ns);
        let cfg = cx.cfg;
        let sev = if stalled >= cfg.async_critical_stall_ns {
            Severity::Critical
        } else {
            Severity::Warning
        };
        match s.finding {
            Some(id) => {
                let ev = Evidence::WantAsyncStall(s.evidence(false));
                let expl = explain(&s.evidence(false));
                let (tid, fd, last) = (d.tid, d.fd, s.last_ns);
                cx.update(id, |f| {
                    f.severity = sev;
                    f.evidence = ev;
                    f.explanation = expl;
                    f.tid = Some(tid);
                    f.fd = fd.or(f.fd);
                    f.last_seen_ns = last;
                });
            }
            None if s.waits >= u64::from(cfg.async_min_waits)
                && stalled >= cfg.async_min_stall_ns =>
            {
                let ev = s.evidence(false);
                let subject = Subject {
                    pid: d.pid,
                    tid: Some(d.tid),
                    ssl: Some(d.call.ssl),
                    fd: d.fd,
                };
                let expl = explain(&ev);
                let mut f = cx.finding(
                    subject,
                    s.started_ns,
                    sev,
                    Evidence::WantAsyncStall(ev),
                    expl,
                    advice(code),
                );
                f.last_seen_ns = s.last_ns;
                s.finding = Some(cx.open(f));
            }
            None => {}
        }
    }

    fn on_conn_end(&mut self, cx: &mut Cx<'_>, key: ConnKey, _how: ConnEnd) {
        if let Some(s) = self.streaks.remove(&key)
            && let Some(id) = s.finding
        {
            cx.close(id);
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>) {
        // A stall that went quiet is an incident that is over.
        let quiet = cx.cfg.incident_quiet_ns;
        self.streaks.retain(|_, s| match s.finding {
            Some(id) => cx.keep_incident(id, s.last_ns),
            None => cx.now.saturating_sub(s.last_ns) < quiet,
        });
    }
}

fn explain(ev: &AsyncStallEvidence) -> String {
    let what = if ev.ssl_error == SslErrorCode::WantAsyncJob {
        "no async job was available: the job pool is exhausted"
    } else {
        "the asynchronous crypto job it started has not finished"
    };
    format!(
        "{} on this connection answered {} {} times in a row over {:.1} ms: {what}. The \
         connection makes no progress meanwhile; {:.1} ms were spent inside the calls.",
        ev.op.symbol(),
        ev.ssl_error.name(),
        ev.waits,
        ev.stalled_ns as f64 / 1e6,
        ev.calls_duration_ns as f64 / 1e6,
    )
}

fn advice(code: SslErrorCode) -> String {
    if code == SslErrorCode::WantAsyncJob {
        "Raise the async job pool (ASYNC_init_thread) or limit the connections each thread \
         drives concurrently; check that paused jobs are resumed."
            .to_owned()
    } else {
        "Wait on the job's fd (SSL_get_all_async_fds) before retrying instead of polling, and \
         check the engine or provider doing the offload: queue depth, device health, and that \
         it signals completion."
            .to_owned()
    }
}
