//! Detection rules. Each rule is fed what the engine derived from the events (completed
//! calls, wake-ups, connection ends) and opens, updates and closes its findings through
//! [`Cx`]. A rule keeps its own per-connection or per-thread state and drops it when told
//! that the connection or thread went away.
//!
//! To add a rule: a file here, one variant in `finding::{FindingKind, Evidence}`, one line
//! in [`all`].

pub mod async_stall;
pub mod attribution;
pub mod busy;
pub mod churn;
pub mod concurrent;
mod life;
pub mod resumption;
pub mod saturation;
pub mod shutdown;
pub mod spin;
pub mod write_retry;

use super::{
    config::Config,
    finding::{Evidence, Finding, FindingChange, FindingState, Severity, Subject},
    iteration::ReadySlot,
    state::{ConnKey, State, ThreadKey},
    store::FindingStore,
    window::BUCKETS,
};
use crate::event::{SockOverlap, SslCall, SslErrorCode, SslOp};

/// OpenSSL raised an error on a thread (the always-on `ERR_vset_error`/`ERR_put_error`
/// probe), with the probed SSL call the thread was inside, if any.
pub(crate) struct LibErrorAt<'a> {
    pub pid: u32,
    pub tid: u32,
    pub ts: u64,
    pub lib: i32,
    pub reason: i32,
    pub reason_name: Option<&'a str>,
    /// The SSL* of the probed call the error was raised in.
    pub ssl: Option<u64>,
    pub op: Option<SslOp>,
    /// The fd that call did I/O on before the error.
    pub fd: Option<i32>,
}

/// All rules, in evaluation order: spin_loop before busy_epoll_loop, so that a busy loop
/// explained by a spin is not reported twice.
pub(crate) fn all() -> Vec<Box<dyn Rule>> {
    vec![
        Box::new(spin::SpinRule::default()),
        Box::new(busy::BusyRule::default()),
        Box::new(write_retry::WriteRetryRule::default()),
        Box::new(shutdown::ShutdownRule::default()),
        Box::new(concurrent::ConcurrentRule::default()),
        Box::new(async_stall::AsyncStallRule::default()),
        Box::new(saturation::SaturationRule::default()),
        Box::new(resumption::ResumptionRule::default()),
        Box::new(churn::ChurnRule::default()),
    ]
}

/// What a rule may read and write while handling one input.
pub(crate) struct Cx<'a> {
    pub now: u64,
    pub cfg: &'a Config,
    pub state: &'a State,
    pub store: &'a mut FindingStore,
    pub out: &'a mut Vec<FindingChange>,
}

impl Cx<'_> {
    /// A new open finding about `subject`, with comm and peer filled in from the state.
    pub fn finding(
        &self,
        subject: Subject,
        first_seen_ns: u64,
        severity: Severity,
        evidence: Evidence,
        explanation: String,
        advice: String,
    ) -> Finding {
        Finding {
            id: 0,
            kind: evidence.kind(),
            state: FindingState::Open,
            severity,
            pid: subject.pid,
            comm: self.state.comm(subject.pid).map(str::to_owned),
            tid: subject.tid,
            ssl: subject.ssl,
            fd: subject.fd,
            peer: self.state.peer(subject.pid, subject.fd).map(str::to_owned),
            first_seen_ns,
            last_seen_ns: self.now,
            closed_ns: None,
            peak: None,
            evidence,
            explanation,
            advice,
            call_sites: None,
        }
    }

    pub fn open(&mut self, finding: Finding) -> u64 {
        self.store.open(self.now, finding, self.out)
    }

    /// Changes an open finding; emits `Updated` only when the change is material. Fills in
    /// comm and peer if they became known since.
    ///
    /// A windowed finding ([`FindingKind::windowed`]) whose process has had no probe event
    /// for a window bucket is left as it is: its window now holds silence, and the finding
    /// keeps the values it had while the process was active (a storm that stopped, a target
    /// that exited), not rates diluted toward zero.
    pub fn update(&mut self, id: u64, f: impl FnOnce(&mut Finding)) {
        self.update_with(id, false, f);
    }

    /// As [`Cx::update`], but always emits `Updated`: for a change users must see at once,
    /// such as what became of the connection an incident hit.
    pub fn update_now(&mut self, id: u64, f: impl FnOnce(&mut Finding)) {
        self.update_with(id, true, f);
    }

    fn update_with(&mut self, id: u64, force: bool, f: impl FnOnce(&mut Finding)) {
        let state = self.state;
        let bucket_ns = self.cfg.window_ns / BUCKETS as u64;
        if !force
            && let Some(kind) = self.store.open_kind(id)
            && kind.windowed()
            && let Some(pid) = self.store.open_pid(id)
            && state
                .silent_ns(pid, self.now)
                .is_some_and(|s| s > bucket_ns)
        {
            return;
        }
        self.store
            .update(id, self.now, self.cfg, self.out, force, |fi| {
                f(fi);
                if fi.comm.is_none() {
                    fi.comm = state.comm(fi.pid).map(str::to_owned);
                }
                if fi.peer.is_none() {
                    fi.peer = state.peer(fi.pid, fi.fd).map(str::to_owned);
                }
            });
    }

    /// Changes an open finding without emitting anything, e.g. its final numbers before
    /// `close`.
    pub fn modify(&mut self, id: u64, f: impl FnOnce(&mut Finding)) {
        self.store.modify(id, f);
    }

    pub fn close(&mut self, id: u64) {
        self.store.close(id, self.now, self.cfg, self.out);
    }

    pub fn cpu_pct(&self, key: ThreadKey) -> Option<f64> {
        self.state.cpu_pct(key)
    }
}

/// A call with its result: success, or the SSL_get_error code (reported or inferred).
pub(crate) struct CallDone<'a> {
    pub pid: u32,
    pub tid: u32,
    /// When the call returned.
    pub ts: u64,
    pub call: &'a SslCall,
    /// SSL_get_error's answer for a failing call; None on success or when unknown.
    pub code: Option<SslErrorCode>,
    /// The connection's fd, as mapped after this call.
    pub fd: Option<i32>,
}

/// One wake-up of a thread, as it concerned one connection it made SSL calls on.
pub(crate) struct ConnWakeup {
    pub pid: u32,
    pub tid: u32,
    pub ssl: u64,
    pub fd: Option<i32>,
    pub op: SslOp,
    /// No progress, and the fd was reported ready (or readiness is unknown): the loop woke
    /// up for this connection for nothing.
    pub wasted: bool,
    /// The last call's SSL_get_error answer.
    pub code: Option<SslErrorCode>,
    /// The fd's ready entry in the wait, when found.
    pub ready: Option<ReadySlot>,
}

/// Wake-ups of a thread's event loop (an epoll wait and the calls until the next one): one,
/// or `count` alike (immediate empty waits aggregated in the kernel).
pub(crate) struct LoopWakeup {
    pub pid: u32,
    pub tid: u32,
    /// How many wake-ups this stands for; every other field holds for each of them.
    pub count: u32,
    pub timeout_ns: Option<i64>,
    /// Time blocked in the waits, summed over `count`.
    pub blocked_ns: u64,
    /// Returned at once: zero timeout, or blocked under `busy_max_blocked_ns`.
    pub immediate: bool,
    pub progress: bool,
    /// Some connection had a wasted wake-up in it (spin_loop's business).
    pub spin_wasted: bool,
    pub ready_count: u32,
    /// Some ready fd is not a known TLS connection (a plain socket, a listener, a pipe, an
    /// fd epoll data did not resolve): the loop may have served it with I/O that is not
    /// traced, so the wake-up cannot be called idle.
    pub other_ready: bool,
    /// Aggregated while the per-call probes were off: what followed the waits is unknown.
    pub untraced: bool,
    /// The first ready entry that no SSL call followed, if any.
    pub idle_ready: Option<ReadySlot>,
}

/// Non-empty waits of a thread aggregated in the kernel while its process's per-call probes
/// were off (`EpollBusy`): what it did after each is unknown, but `repeats` of them were
/// woken for the same fd, with the same events, as the waits before them.
pub(crate) struct BusyWaits {
    pub pid: u32,
    pub tid: u32,
    pub repeats: u32,
    /// The last wait's first ready entry (the repeated one, when `repeats` > 0).
    pub ready: ReadySlot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnEnd {
    /// SSL_free: the SSL* may be reused by a new connection.
    Freed,
    /// close() of the connection's fd: the fd may be reused.
    Closed,
    /// Dropped by the engine (idle or over the cap).
    Evicted,
}

/// A detection rule. Every hook defaults to doing nothing.
pub(crate) trait Rule: Send {
    /// An SSL call returned (before its SSL_get_error): for rules about timing only.
    fn on_call_arrival(&mut self, _cx: &mut Cx<'_>, _pid: u32, _tid: u32, _call: &SslCall) {}
    /// An SSL call completed, with its result.
    fn on_call_done(&mut self, _cx: &mut Cx<'_>, _done: &CallDone<'_>) {}
    /// A wake-up ended, once per connection it made calls on; before `on_loop_wakeup`.
    fn on_conn_wakeup(&mut self, _cx: &mut Cx<'_>, _w: &ConnWakeup) {}
    fn on_loop_wakeup(&mut self, _cx: &mut Cx<'_>, _w: &LoopWakeup) {}
    /// Kernel-aggregated waits while the per-call probes were off.
    fn on_busy_waits(&mut self, _cx: &mut Cx<'_>, _w: &BusyWaits) {}
    fn on_conn_end(&mut self, _cx: &mut Cx<'_>, _key: ConnKey, _how: ConnEnd) {}
    /// OpenSSL raised an error (always on, in every mode).
    fn on_lib_error(&mut self, _cx: &mut Cx<'_>, _e: &LibErrorAt<'_>) {}
    /// SSL_free on a thread (always on), before `on_conn_end`.
    fn on_ssl_free(&mut self, _cx: &mut Cx<'_>, _pid: u32, _tid: u32, _ssl: u64) {}
    /// close() of any fd on a thread (always on), before `on_conn_end`; `ssl` is the
    /// connection mapped to it, if any.
    fn on_fd_close(&mut self, _cx: &mut Cx<'_>, _pid: u32, _tid: u32, _fd: i32, _ssl: Option<u64>) {
    }
    fn on_thread_end(&mut self, _cx: &mut Cx<'_>, _key: ThreadKey) {}
    /// Thread `tid` entered a read or write on a socket while another thread's was in
    /// flight on it (the socket I/O tracepoints, per-call probes off) at `ts`.
    fn on_sock_overlap(
        &mut self,
        _cx: &mut Cx<'_>,
        _pid: u32,
        _tid: u32,
        _ts: u64,
        _o: &SockOverlap,
    ) {
    }
    /// Called once per window bucket of event time: evaluate rates, open and close.
    fn tick(&mut self, _cx: &mut Cx<'_>) {}
}

/// "READ" for want_read, "WRITE" for want_write, the code's name otherwise.
pub(crate) fn want_word(code: SslErrorCode) -> String {
    match code {
        SslErrorCode::WantRead => "READ".to_owned(),
        SslErrorCode::WantWrite => "WRITE".to_owned(),
        c => c.name(),
    }
}
