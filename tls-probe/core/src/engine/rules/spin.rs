//! spin_loop: a connection whose fd keeps being reported ready while the SSL calls that follow
//! make no progress.
//!
//! A wake-up is "wasted" for a connection when the loop made SSL calls on it after a wait
//! that reported its fd ready (or whose ready list could not be matched), and none of those
//! calls moved a byte or finished a handshake. A healthy loop that drains a socket until
//! WANT_READ makes progress in the same wake-up, so it is never wasted. The finding opens when,
//! over the last window, wasted wake-ups reach `spin_min_wasted_wakeups_per_sec`, make up at
//! least `spin_min_no_progress_pct` of the connection's wake-ups, and were seen in at least
//! `sustained_buckets` of the window's buckets.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{
    BusyWaits, ConnEnd, ConnWakeup, Cx, Rule,
    life::{Life, Step},
    want_word,
};
use crate::{
    engine::{
        epoll_bits::{self, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT},
        finding::{Evidence, Severity, Subject},
        iteration::ReadySlot,
        state::ConnKey,
        window::{Counts, Summary, Window, pct},
    },
    event::{SslErrorCode, SslOp},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpinEvidence {
    pub wasted_wakeups_per_sec: f64,
    /// All wake-ups of the connection, wasted or not.
    pub wakeups_per_sec: f64,
    pub no_progress_pct: f64,
    pub wasted_wakeups_total: u64,
    /// Of them, counted from the kernel's aggregated waits while the per-call probes were
    /// off (after the finding was confirmed with them): the same fd reported ready again,
    /// with the same events; the SSL calls that followed were not seen.
    #[serde(default)]
    pub wasted_wakeups_inferred: u64,
    /// What SSL_get_error keeps answering (usually want_read or want_write).
    pub ssl_error: Option<SslErrorCode>,
    /// The call that keeps answering it.
    pub op: Option<SslOp>,
    /// The EPOLL* bits reported ready on the last wasted wake-up.
    pub ready_events: Option<String>,
    pub ready_events_mask: Option<u32>,
    /// The interest mask the fd is registered with.
    pub interest: Option<String>,
    pub interest_mask: Option<u32>,
    /// The readiness/WANT mismatch, when visible: "EPOLLOUT is armed while SSL wants READ".
    pub mismatch: Option<String>,
    /// CPU use of the thread, in percent of one core.
    pub thread_cpu_pct: Option<f64>,
}

impl fmt::Display for SpinEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0} wasted wake-ups/s ({:.0}% no progress)",
            self.wasted_wakeups_per_sec, self.no_progress_pct
        )?;
        match self.ssl_error {
            Some(c) if c.is_want() => write!(f, ", SSL wants {}", want_word(c))?,
            Some(c) => write!(f, ", SSL answers {}", c.name())?,
            None => {}
        }
        let ready = self.ready_events_mask.unwrap_or(0);
        if self.ssl_error == Some(SslErrorCode::WantRead) && ready & EPOLLOUT != 0 {
            f.write_str(", EPOLLOUT armed")?;
        } else if let Some(i) = &self.interest {
            write!(f, ", interest {i}")?;
        }
        match self.thread_cpu_pct {
            Some(cpu) => write!(f, ", thread CPU {cpu:.0}%")?,
            // Not measured yet (the first samples are a second apart).
            None => f.write_str(", thread CPU n/a")?,
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SpinCounts {
    wakeups: u32,
    wasted: u32,
}

impl Counts for SpinCounts {
    fn merge(&mut self, o: &Self) {
        self.wakeups += o.wakeups;
        self.wasted += o.wasted;
    }
}

/// A connection that had a wasted wake-up recently.
struct Track {
    window: Window<SpinCounts>,
    tid: u32,
    fd: Option<i32>,
    op: SslOp,
    code: Option<SslErrorCode>,
    ready: Option<ReadySlot>,
    wasted_total: u64,
    /// Of them, from the kernel's aggregates ([`Rule::on_busy_waits`]).
    inferred_total: u64,
    started_ns: u64,
    last_wasted_ns: u64,
    life: Life,
}

#[derive(Default)]
pub(crate) struct SpinRule {
    tracks: FxHashMap<ConnKey, Track>,
}

impl Rule for SpinRule {
    fn on_conn_wakeup(&mut self, cx: &mut Cx<'_>, w: &ConnWakeup) {
        let key = (w.pid, w.ssl);
        // Connections enter on their first wasted wake-up; healthy ones cost nothing.
        let t = match self.tracks.get_mut(&key) {
            Some(t) => t,
            None if w.wasted => self.tracks.entry(key).or_insert(Track {
                window: Window::new(cx.now, cx.cfg.window_ns),
                tid: w.tid,
                fd: w.fd,
                op: w.op,
                code: None,
                ready: None,
                wasted_total: 0,
                inferred_total: 0,
                started_ns: cx.now,
                last_wasted_ns: cx.now,
                life: Life::default(),
            }),
            None => return,
        };
        let c = t.window.current(cx.now);
        c.wakeups += 1;
        t.tid = w.tid;
        t.fd = w.fd.or(t.fd);
        if w.wasted {
            c.wasted += 1;
            t.wasted_total += 1;
            t.last_wasted_ns = cx.now;
            t.op = w.op;
            t.code = w.code.or(t.code);
            t.ready = w.ready.or(t.ready);
        }
    }

    /// An open spin finding is kept going, and its rates right, by the kernel's aggregated
    /// waits once the per-call probes are off again (`--mode auto` confirms with them, then
    /// lets the target run without their traps): waits of the finding's thread that woke
    /// for the same fd with the same events as before count as wasted wake-ups, inferred.
    /// Nothing opens from them: that takes the per-call evidence.
    fn on_busy_waits(&mut self, cx: &mut Cx<'_>, w: &BusyWaits) {
        if w.repeats == 0 {
            return;
        }
        for (key, t) in &mut self.tracks {
            let same_fd = match (w.ready.fd, t.fd) {
                (Some(a), Some(b)) => a == b,
                _ => t.ready.is_some_and(|r| r.events == w.ready.events),
            };
            if !t.life.is_open() || key.0 != w.pid || t.tid != w.tid || !same_fd {
                continue;
            }
            let c = t.window.current(cx.now);
            c.wakeups += w.repeats;
            c.wasted += w.repeats;
            t.wasted_total += u64::from(w.repeats);
            t.inferred_total += u64::from(w.repeats);
            t.last_wasted_ns = cx.now;
        }
    }

    fn on_conn_end(&mut self, cx: &mut Cx<'_>, key: ConnKey, _how: ConnEnd) {
        // Freed or closed: this connection cannot spin any more. A new connection reusing
        // the SSL* or the fd starts from nothing.
        if let Some(mut t) = self.tracks.remove(&key) {
            t.life.end(cx);
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>) {
        let cfg = cx.cfg;
        let now = cx.now;
        let min = cfg.spin_min_wasted_wakeups_per_sec;
        let keep = cfg.keep_open_pct / 100.0;
        self.tracks.retain(|&key, t| {
            let s = t.window.summary(now, |c| c.wasted > 0);
            let secs = t.window.covered_secs(now, t.started_ns);
            let wasted = f64::from(s.total.wasted) / secs;
            let no_progress = pct(f64::from(s.total.wasted), f64::from(s.total.wakeups));
            let opens = wasted >= min
                && s.active >= cfg.sustained_buckets
                && no_progress >= cfg.spin_min_no_progress_pct;
            let holds = wasted >= min * keep && no_progress >= cfg.spin_min_no_progress_pct * keep;
            let going = s.latest.wasted > 0;
            // While the pathology goes on (its latest bucket saw it), the finding holds and
            // material changes are emitted. Once it has stopped, the close timer runs and the
            // finding keeps the numbers it had, not the window's decay.
            match t.life.step(cx, opens, holds && going) {
                Step::Open => {
                    let (sev, ev, expl) = describe(cx, key, t, &s, secs);
                    let subject = Subject {
                        pid: key.0,
                        tid: Some(t.tid),
                        ssl: Some(key.1),
                        fd: t.fd,
                    };
                    let mut f = cx.finding(subject, t.started_ns, sev, ev, expl, advice());
                    f.last_seen_ns = t.last_wasted_ns;
                    t.life.open(cx, f);
                }
                Step::Hold(id) => {
                    let (sev, ev, expl) = describe(cx, key, t, &s, secs);
                    let (tid, fd, last) = (t.tid, t.fd, t.last_wasted_ns);
                    cx.update(id, |f| {
                        f.severity = sev;
                        f.evidence = ev;
                        f.explanation = expl;
                        f.tid = Some(tid);
                        f.fd = fd.or(f.fd);
                        f.last_seen_ns = last;
                    });
                }
                Step::Idle => {}
            }
            t.life.is_open() || !t.window.is_quiet(now)
        });
    }
}

fn describe(
    cx: &Cx<'_>,
    key: ConnKey,
    t: &Track,
    s: &Summary<SpinCounts>,
    secs: f64,
) -> (Severity, Evidence, String) {
    let cpu = cx.cpu_pct((key.0, t.tid));
    let mismatch = mismatch(t.ready, t.code);
    let ev = SpinEvidence {
        wasted_wakeups_per_sec: f64::from(s.total.wasted) / secs,
        wakeups_per_sec: f64::from(s.total.wakeups) / secs,
        no_progress_pct: pct(f64::from(s.total.wasted), f64::from(s.total.wakeups)),
        wasted_wakeups_total: t.wasted_total,
        wasted_wakeups_inferred: t.inferred_total,
        ssl_error: t.code,
        op: Some(t.op),
        ready_events: t.ready.map(|r| epoll_bits::names(r.events)),
        ready_events_mask: t.ready.map(|r| r.events),
        interest: t.ready.and_then(|r| r.interest).map(epoll_bits::names),
        interest_mask: t.ready.and_then(|r| r.interest),
        mismatch: mismatch.map(|(short, _)| short.to_owned()),
        thread_cpu_pct: cpu,
    };
    let severity = match cpu {
        Some(c) if c >= cx.cfg.critical_cpu_pct => Severity::Critical,
        _ => Severity::Warning,
    };
    let fd =
        t.fd.map_or_else(|| "its fd".to_owned(), |fd| format!("fd {fd}"));
    let answer = match t.code {
        Some(c) if c.is_want() => format!("answers WANT_{}", want_word(c)),
        Some(c) => format!("answers {}", c.name()),
        None => "fails".to_owned(),
    };
    let mut expl = format!(
        "The event loop of thread {} keeps waking up for {fd} ({:.0} times a second) and each \
         time {} on it {answer} without moving a byte: {:.0}% of the connection's wake-ups made \
         no progress.",
        t.tid,
        ev.wasted_wakeups_per_sec,
        t.op.symbol(),
        ev.no_progress_pct,
    );
    if let Some((_, why)) = mismatch {
        expl.push(' ');
        expl.push_str(why);
    }
    expl.push_str(
        " The thread burns CPU on wake-ups that cannot succeed until the socket condition SSL \
         is waiting for changes.",
    );
    (severity, Evidence::SpinLoop(ev), expl)
}

/// The readiness that woke the loop versus what SSL is waiting for: (short, explanation).
fn mismatch(
    ready: Option<ReadySlot>,
    code: Option<SslErrorCode>,
) -> Option<(&'static str, &'static str)> {
    let ev = ready?.events;
    match code? {
        SslErrorCode::WantRead if ev & EPOLLOUT != 0 => Some((
            "EPOLLOUT is armed while SSL wants READ",
            "EPOLLOUT is armed while SSL wants READ: the socket is writable, so every wait \
             reports it ready at once, but SSL cannot continue until the peer sends data.",
        )),
        SslErrorCode::WantWrite if ev & EPOLLIN != 0 && ev & EPOLLOUT == 0 => Some((
            "EPOLLIN wakes the loop while SSL wants WRITE",
            "The loop is woken by EPOLLIN while SSL wants WRITE: SSL cannot continue until the \
             socket becomes writable.",
        )),
        _ if ev & (EPOLLHUP | EPOLLERR) != 0 => Some((
            "EPOLLHUP/EPOLLERR reported: the fd stays registered after the peer is gone",
            "epoll reports EPOLLHUP or EPOLLERR, which it always does whatever the interest \
             mask: the peer is gone but the fd stays registered.",
        )),
        _ => None,
    }
}

fn advice() -> String {
    "Wait for EPOLLIN after WANT_READ and for EPOLLOUT after WANT_WRITE, whichever call \
     answered it (SSL_write can want READ, SSL_read can want WRITE), and disarm EPOLLOUT when \
     nothing is pending. Close and deregister the fd when the connection has ended."
        .to_owned()
}
