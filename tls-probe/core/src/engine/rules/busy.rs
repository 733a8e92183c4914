//! busy_epoll_loop: a thread whose epoll wait returns at once, again and again, while the
//! loop makes no progress at all.
//!
//! A wake-up counts when the wait returned at once (zero timeout, or blocked less than
//! `busy_max_blocked_ns`), no SSL call in the iteration made progress, no connection had a
//! wasted wake-up in it (those belong to spin_loop, the more specific finding, so the same
//! wake-ups are never reported twice), and every fd reported ready, if any, is a known TLS
//! connection: a ready plain socket, listener or pipe may have been served with I/O that is
//! not traced (plain HTTP next to HTTPS in one nginx), so it is never taken for idleness,
//! unless it reports EPOLLHUP or EPOLLERR, which no read clears.
//! The finding opens when such wake-ups reach `busy_min_immediate_wakeups_per_sec` over the
//! window, in at least `sustained_buckets` buckets, while at most `busy_max_progress_pct` of
//! the thread's wake-ups made progress, and no spin_loop finding is open for the thread.
//!
//! Immediate empty waits (zero timeout, nothing ready) reach the engine aggregated by the
//! kernel, thousands to one event; each counts as one such wake-up.

use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{
    Cx, LoopWakeup, Rule,
    life::{Life, Step},
};
use crate::engine::{
    epoll_bits,
    finding::{Evidence, FindingKind, Severity, Subject},
    iteration::ReadySlot,
    state::ThreadKey,
    window::{Counts, Summary, Window, pct},
};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BusyEvidence {
    /// Wake-ups that returned at once and made no progress.
    pub immediate_wakeups_per_sec: f64,
    /// All wake-ups of the thread.
    pub wakeups_per_sec: f64,
    pub no_progress_pct: f64,
    /// Share of the waits made with a zero timeout.
    pub zero_timeout_pct: f64,
    pub avg_blocked_ns: u64,
    pub avg_ready_fds: f64,
    /// The timeout of the last such wait; None means "block forever".
    pub timeout_ns: Option<i64>,
    /// An fd reported ready that no SSL call followed, when there is one.
    pub ready_fd: Option<i32>,
    pub ready_events: Option<String>,
    pub interest: Option<String>,
    /// CPU use of the thread, in percent of one core.
    pub thread_cpu_pct: Option<f64>,
}

impl fmt::Display for BusyEvidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.0} immediate wake-ups/s with no progress ({:.0}% zero timeout)",
            self.immediate_wakeups_per_sec, self.zero_timeout_pct
        )?;
        if let (Some(fd), Some(ev)) = (self.ready_fd, &self.ready_events) {
            write!(f, ", fd {fd} ready {ev} with no SSL call")?;
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
struct BusyCounts {
    wakeups: u32,
    /// Immediate, no progress, not a spin.
    idle: u32,
    progress: u32,
    zero_timeout: u32,
    blocked_ns: u64,
    ready: u32,
}

impl Counts for BusyCounts {
    fn merge(&mut self, o: &Self) {
        self.wakeups += o.wakeups;
        self.idle += o.idle;
        self.progress += o.progress;
        self.zero_timeout += o.zero_timeout;
        self.blocked_ns += o.blocked_ns;
        self.ready += o.ready;
    }
}

struct Track {
    window: Window<BusyCounts>,
    started_ns: u64,
    last_idle_ns: u64,
    timeout_ns: Option<i64>,
    idle_ready: Option<ReadySlot>,
    life: Life,
}

#[derive(Default)]
pub(crate) struct BusyRule {
    tracks: FxHashMap<ThreadKey, Track>,
}

impl Rule for BusyRule {
    fn on_loop_wakeup(&mut self, cx: &mut Cx<'_>, w: &LoopWakeup) {
        let key = (w.pid, w.tid);
        let idle = w.immediate && !w.progress && !w.spin_wasted && !w.other_ready;
        let t = match self.tracks.get_mut(&key) {
            Some(t) => t,
            None if idle => self.tracks.entry(key).or_insert(Track {
                window: Window::new(cx.now, cx.cfg.window_ns),
                started_ns: cx.now,
                last_idle_ns: cx.now,
                timeout_ns: None,
                idle_ready: None,
                life: Life::default(),
            }),
            None => return,
        };
        let n = w.count;
        let c = t.window.current(cx.now);
        c.wakeups += n;
        c.progress += if w.progress { n } else { 0 };
        c.zero_timeout += if w.timeout_ns == Some(0) { n } else { 0 };
        c.blocked_ns += w.blocked_ns;
        c.ready += w.ready_count.saturating_mul(n);
        if idle {
            c.idle += n;
            t.last_idle_ns = cx.now;
            t.timeout_ns = w.timeout_ns;
            t.idle_ready = w.idle_ready;
        }
    }

    fn on_thread_end(&mut self, cx: &mut Cx<'_>, key: ThreadKey) {
        if let Some(mut t) = self.tracks.remove(&key) {
            t.life.end(cx);
        }
    }

    fn tick(&mut self, cx: &mut Cx<'_>) {
        let cfg = cx.cfg;
        let now = cx.now;
        let min = cfg.busy_min_immediate_wakeups_per_sec;
        let keep = cfg.keep_open_pct / 100.0;
        self.tracks.retain(|&key, t| {
            let s = t.window.summary(now, |c| c.idle > 0);
            let secs = t.window.covered_secs(now, t.started_ns);
            let idle = f64::from(s.total.idle) / secs;
            let progress = pct(f64::from(s.total.progress), f64::from(s.total.wakeups));
            let opens = idle >= min
                && s.active >= cfg.sustained_buckets
                && progress <= cfg.busy_max_progress_pct;
            let holds = idle >= min * keep && progress <= cfg.busy_max_progress_pct / keep;
            let going = s.latest.idle > 0;
            // While the pathology goes on (its latest bucket saw it), the finding holds and
            // material changes are emitted. Once it has stopped, the close timer runs and the
            // finding keeps the numbers it had, not the window's decay.
            match t.life.step(cx, opens, holds && going) {
                Step::Open => {
                    let (pid, tid) = key;
                    let spinning = cx.store.any_open(FindingKind::SpinLoop, |f| {
                        f.pid == pid && f.tid == Some(tid)
                    });
                    if !spinning {
                        let fd = t.idle_ready.and_then(|r| r.fd);
                        let subject = Subject {
                            pid,
                            tid: Some(tid),
                            ssl: cx.state.ssl_of_fd(pid, fd),
                            fd,
                        };
                        let (sev, ev, expl) = describe(cx, key, t, &s, secs);
                        let mut f = cx.finding(subject, t.started_ns, sev, ev, expl, advice());
                        f.last_seen_ns = t.last_idle_ns;
                        t.life.open(cx, f);
                    }
                }
                Step::Hold(id) => {
                    let (sev, ev, expl) = describe(cx, key, t, &s, secs);
                    cx.refresh(id, sev, ev, expl, t.last_idle_ns);
                }
                Step::Idle => {}
            }
            t.life.is_open() || !t.window.is_quiet(now)
        });
    }
}

fn describe(
    cx: &Cx<'_>,
    key: ThreadKey,
    t: &Track,
    s: &Summary<BusyCounts>,
    secs: f64,
) -> (Severity, Evidence, String) {
    let n = s.total;
    let cpu = cx.cpu_pct(key);
    let ready = t.idle_ready;
    let ev = BusyEvidence {
        immediate_wakeups_per_sec: f64::from(n.idle) / secs,
        wakeups_per_sec: f64::from(n.wakeups) / secs,
        no_progress_pct: pct(f64::from(n.wakeups - n.progress), f64::from(n.wakeups)),
        zero_timeout_pct: pct(f64::from(n.zero_timeout), f64::from(n.wakeups)),
        avg_blocked_ns: n.blocked_ns / u64::from(n.wakeups.max(1)),
        avg_ready_fds: f64::from(n.ready) / f64::from(n.wakeups.max(1)),
        timeout_ns: t.timeout_ns,
        ready_fd: ready.and_then(|r| r.fd),
        ready_events: ready.map(|r| epoll_bits::names(r.events)),
        interest: ready.and_then(|r| r.interest).map(epoll_bits::names),
        thread_cpu_pct: cpu,
    };
    let severity = match cpu {
        Some(c) if c >= cx.cfg.critical_cpu_pct => Severity::Critical,
        _ => Severity::Warning,
    };
    let mut expl = format!(
        "The epoll wait of thread {} returns at once {:.0} times a second and the loop makes \
         no TLS progress in between.",
        key.1, ev.immediate_wakeups_per_sec
    );
    if ev.zero_timeout_pct >= 50.0 {
        expl.push_str(" It is called with a zero timeout: the loop polls instead of sleeping.");
    } else if let (Some(fd), Some(events)) = (ev.ready_fd, &ev.ready_events) {
        expl.push_str(&format!(
            " fd {fd} is reported ready ({events}) but no SSL call follows: readiness that is \
             never consumed or disarmed makes every level-triggered wait return at once."
        ));
    }
    expl.push_str(" The thread burns a CPU core doing nothing.");
    (severity, Evidence::BusyEpollLoop(ev), expl)
}

fn advice() -> String {
    "Block in epoll_wait with a timeout set to the next timer deadline rather than 0, and \
     consume or disarm readiness the loop does not act on: disarm EPOLLOUT when nothing is \
     pending, or use EPOLLET/EPOLLONESHOT and re-arm on demand."
        .to_owned()
}
