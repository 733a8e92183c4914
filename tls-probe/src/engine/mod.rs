//! The correlation engine: decoded events in, metrics and findings out.
//!
//! Pure and deterministic. Time is the events' `ts_ns` (CLOCK_MONOTONIC), never the wall
//! clock, so a recording replays exactly as it ran live. The engine keeps:
//!
//! - per thread, its event loop: each epoll wait (timeout, how long it blocked, which fds
//!   were ready with which interest), then the SSL calls made until the next wait (an
//!   "iteration"); a wake-up made progress when some call moved bytes or finished a handshake;
//! - per connection, keyed by (pid, SSL*) and mapped to its fd: calls and results by op,
//!   bytes, WANT_* counts, first and last seen;
//! - per process, totals.
//!
//! The rules in [`rules`] turn that into findings; see each rule's module for its exact
//! condition. Rates come from sliding windows of event time ([`window`]), evaluated once per
//! window bucket (a tenth of `Config::window_ns`), not per event.
//!
//! A failing call (ret <= 0) waits for its SSL_get_error on the same thread; when none comes
//! (SSL_get_error not probed) the code is inferred from the last socket syscall: EAGAIN on a
//! read means WANT_READ, on a write WANT_WRITE.

mod config;
pub mod epoll_bits;
mod finding;
mod iteration;
pub mod rules;
mod snapshot;
mod state;
mod store;
mod window;

#[cfg(test)]
mod tests;

pub use config::Config;
pub use finding::{
    AsyncStallEvidence, BusyEvidence, Change, ConcurrentEvidence, Evidence, Finding, FindingChange,
    FindingKind, FindingState, Severity, SpinEvidence, WriteRetryEvidence,
};
pub use rules::write_retry::PeerCount;
pub use snapshot::{
    ConnSnapshot, OpSnapshot, ProcessSnapshot, ReadySnapshot, Snapshot, ThreadSnapshot,
    WaitSnapshot,
};

use self::{
    iteration::{Pending, Readiness},
    rules::{CallDone, ConnEnd, ConnWakeup, Cx, LoopWakeup, Rule},
    state::{ConnKey, State, Thread, ThreadKey},
    store::FindingStore,
    window::BUCKETS,
};
use crate::event::{EpollWait, Event, EventKind, SslCall, SslError, SslErrorCode};

const SWEEP_NS: u64 = 1_000_000_000;

pub struct Engine {
    cfg: Config,
    state: State,
    store: FindingStore,
    rules: Vec<Box<dyn Rule>>,
    now: u64,
    next_tick_ns: u64,
    next_sweep_ns: u64,
    /// Reused between ticks, so that ticking allocates nothing.
    scratch: Vec<ThreadKey>,
}

impl Engine {
    pub fn new(config: Config) -> Self {
        Self {
            cfg: config,
            state: State::default(),
            store: FindingStore::default(),
            rules: rules::all(),
            now: 0,
            next_tick_ns: 0,
            next_sweep_ns: 0,
            scratch: Vec::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The engine's clock: the latest event time seen.
    pub fn now_ns(&self) -> u64 {
        self.now
    }

    pub fn set_comm(&mut self, pid: u32, comm: &str) {
        if self.state.comm(pid) != Some(comm) {
            self.state.comms.insert(pid, comm.to_owned());
        }
    }

    /// The peer address of a socket, as the agent knows it. Forgotten when the fd closes.
    pub fn set_peer(&mut self, pid: u32, fd: i32, peer: String) {
        if self.state.peers.len() < self.cfg.max_connections
            || self.state.peers.contains_key(&(pid, fd))
        {
            self.state.peers.insert((pid, fd), peer);
        }
    }

    /// Feeds one event; pushes any finding changes (opened/updated/closed) to `out`.
    pub fn ingest(&mut self, ev: &Event, out: &mut Vec<FindingChange>) {
        self.now = self.now.max(ev.ts_ns);
        let (pid, tid, ts) = (ev.pid, ev.tid, ev.ts_ns);
        match &ev.kind {
            EventKind::SslCall(c) => self.on_ssl_call(pid, tid, ts, c, out),
            EventKind::SslError(e) => self.on_ssl_error(pid, tid, e, out),
            EventKind::SslFree { ssl } => {
                self.resolve_pending((pid, tid), out);
                self.end_conn((pid, *ssl), ConnEnd::Freed, out);
            }
            EventKind::EpollWait(w) => self.on_epoll_wait(pid, tid, ts, w, out),
            // Registrations are the tracker's business: it puts fd and interest on ready
            // entries.
            EventKind::EpollCtl(_) => {}
            EventKind::Close { fd, ret } => {
                if *ret >= 0
                    && let Some(ssl) = self.state.close_fd(pid, *fd)
                {
                    self.dispatch(out, |r, cx| r.on_conn_end(cx, (pid, ssl), ConnEnd::Closed));
                }
            }
            EventKind::ThreadCpu { cpu_ns } => {
                let t = self.thread((pid, tid), out);
                if let Some((t0, c0)) = t.cpu_sample
                    && ts > t0
                {
                    t.cpu_pct = Some(cpu_ns.saturating_sub(c0) as f64 * 100.0 / (ts - t0) as f64);
                }
                t.cpu_sample = Some((ts, *cpu_ns));
            }
        }
        if self.now >= self.next_tick_ns {
            self.tick(out);
        }
    }

    /// Advances event time without an event (e.g. an idle target), closing findings whose
    /// condition stopped.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<FindingChange>) {
        let bucket = self.bucket_ns();
        // Tick once per bucket crossed, so windows close exactly as if events had come.
        while self.next_tick_ns <= now_ns {
            self.now = self.now.max(self.next_tick_ns);
            self.tick(out);
            if self.now >= now_ns {
                break;
            }
            self.next_tick_ns = self.next_tick_ns.max(self.now + bucket);
        }
        self.now = self.now.max(now_ns);
    }

    /// All findings kept, open and closed, by id.
    pub fn findings(&self) -> Vec<Finding> {
        self.store.all()
    }

    /// Metrics per process, thread and connection.
    pub fn snapshot(&self) -> Snapshot {
        snapshot::build(&self.state, self.now, self.store.open_count())
    }

    fn bucket_ns(&self) -> u64 {
        (self.cfg.window_ns / BUCKETS as u64).max(1)
    }

    fn dispatch(
        &mut self,
        out: &mut Vec<FindingChange>,
        mut f: impl FnMut(&mut dyn Rule, &mut Cx<'_>),
    ) {
        let mut cx = Cx {
            now: self.now,
            cfg: &self.cfg,
            state: &self.state,
            store: &mut self.store,
            out,
        };
        for r in &mut self.rules {
            f(r.as_mut(), &mut cx);
        }
    }

    /// The thread, created if new; evicts the least recently seen threads when full.
    fn thread(&mut self, key: ThreadKey, out: &mut Vec<FindingChange>) -> &mut Thread {
        if !self.state.threads.contains_key(&key)
            && self.state.threads.len() >= self.cfg.max_threads
        {
            let keep = self.cfg.max_threads * 9 / 10;
            for k in self.state.threads_to_evict(self.now, u64::MAX, keep) {
                self.remove_thread(k, out);
            }
        }
        let window_ns = self.cfg.window_ns;
        self.state.thread_mut(key, self.now, window_ns)
    }

    fn remove_thread(&mut self, key: ThreadKey, out: &mut Vec<FindingChange>) {
        self.resolve_pending(key, out);
        if self.state.threads.remove(&key).is_some() {
            self.state.evicted_threads_total += 1;
        }
        self.dispatch(out, |r, cx| r.on_thread_end(cx, key));
    }

    fn end_conn(&mut self, key: ConnKey, how: ConnEnd, out: &mut Vec<FindingChange>) {
        if self.state.remove_conn(key).is_some() {
            match how {
                ConnEnd::Evicted => self.state.evicted_connections_total += 1,
                _ => self.state.proc_mut(key.0, self.now).connections_freed_total += 1,
            }
        }
        self.dispatch(out, |r, cx| r.on_conn_end(cx, key, how));
    }

    fn on_ssl_call(
        &mut self,
        pid: u32,
        tid: u32,
        ts: u64,
        c: &SslCall,
        out: &mut Vec<FindingChange>,
    ) {
        self.resolve_pending((pid, tid), out);
        self.dispatch(out, |r, cx| r.on_call_arrival(cx, pid, tid, c));
        let lp = &mut self.thread((pid, tid), out).lp;
        // A thread not seen in epoll waits somewhere unprobed: a failed call (it has to wait
        // now) ends its pseudo-iteration.
        if !lp.epoll_mode && (!lp.iter.active || lp.iter.last_failed) {
            self.finish_iteration((pid, tid), out);
            if let Some(t) = self.state.threads.get_mut(&(pid, tid)) {
                t.lp.iter.start_pseudo(ts);
            }
        }
        if c.ret <= 0 {
            if let Some(t) = self.state.threads.get_mut(&(pid, tid)) {
                t.lp.pending = Some(Pending {
                    ts,
                    call: c.clone(),
                });
            }
        } else {
            self.complete_call(pid, tid, ts, c, None, out);
        }
    }

    fn on_ssl_error(&mut self, pid: u32, tid: u32, e: &SslError, out: &mut Vec<FindingChange>) {
        let pending = self
            .state
            .threads
            .get_mut(&(pid, tid))
            .and_then(|t| t.lp.pending.take_if(|p| p.call.ssl == e.ssl));
        match pending {
            Some(p) => {
                let code = match e.code {
                    SslErrorCode::None => p.inferred_code(),
                    c => Some(c),
                };
                self.complete_call(pid, tid, p.ts, &p.call, code, out);
            }
            None if e.code != SslErrorCode::None => self.state.unmatched_ssl_errors_total += 1,
            None => {}
        }
    }

    /// Completes the thread's failing call still waiting for SSL_get_error, inferring its code.
    fn resolve_pending(&mut self, key: ThreadKey, out: &mut Vec<FindingChange>) {
        let Some(p) = self
            .state
            .threads
            .get_mut(&key)
            .and_then(|t| t.lp.pending.take())
        else {
            return;
        };
        let code = p.inferred_code();
        self.complete_call(key.0, key.1, p.ts, &p.call, code, out);
    }

    fn complete_call(
        &mut self,
        pid: u32,
        tid: u32,
        ts: u64,
        call: &SslCall,
        code: Option<SslErrorCode>,
        out: &mut Vec<FindingChange>,
    ) {
        let key = (pid, call.ssl);
        if !self.state.conns.contains_key(&key)
            && self.state.conns.len() >= self.cfg.max_connections
        {
            let keep = self.cfg.max_connections * 9 / 10;
            for k in self.state.conns_to_evict(self.now, u64::MAX, keep) {
                self.end_conn(k, ConnEnd::Evicted, out);
            }
        }
        let fd = self.state.record_call(key, tid, ts, call, code);
        let now = self.now;
        if let Some(t) = self.state.threads.get_mut(&(pid, tid)) {
            t.ssl_calls_total += 1;
            t.window.current(now).calls += 1;
            if t.lp.iter.active {
                t.lp.iter.record(call, fd, code);
            }
        }
        let done = CallDone {
            pid,
            tid,
            ts,
            call,
            code,
            fd,
        };
        self.dispatch(out, |r, cx| r.on_call_done(cx, &done));
    }

    fn on_epoll_wait(
        &mut self,
        pid: u32,
        tid: u32,
        ts: u64,
        w: &EpollWait,
        out: &mut Vec<FindingChange>,
    ) {
        self.resolve_pending((pid, tid), out);
        self.thread((pid, tid), out);
        self.finish_iteration((pid, tid), out);
        if let Some(t) = self.state.threads.get_mut(&(pid, tid)) {
            t.lp.epoll_mode = true;
            t.lp.iter.start_wait(ts, w);
        }
    }

    /// Ends the thread's current iteration: one wake-up per connection it made calls on, one
    /// for the loop, and the thread's counters.
    fn finish_iteration(&mut self, key: ThreadKey, out: &mut Vec<FindingChange>) {
        let Some(t) = self.state.threads.get_mut(&key) else {
            return;
        };
        if !t.lp.iter.active {
            return;
        }
        // Take the iteration out (no allocation) so that rules can read the state meanwhile.
        let mut it = std::mem::take(&mut t.lp.iter);
        let (pid, tid) = key;
        let mut spin_wasted = false;
        for touched in &it.touched {
            let readiness = it.readiness(touched.fd);
            let wasted = !touched.progress && readiness != Readiness::NotReady;
            spin_wasted |= wasted;
            let w = ConnWakeup {
                pid,
                tid,
                ssl: touched.ssl,
                fd: touched.fd,
                op: touched.op,
                wasted,
                code: touched.code,
                ready: match readiness {
                    Readiness::Ready(slot) => Some(slot),
                    _ => None,
                },
            };
            self.dispatch(out, |r, cx| r.on_conn_wakeup(cx, &w));
        }
        if it.epoll {
            let immediate = it.immediate(self.cfg.busy_max_blocked_ns);
            let w = LoopWakeup {
                pid,
                tid,
                timeout_ns: it.timeout_ns,
                blocked_ns: it.blocked_ns,
                immediate,
                progress: it.progress,
                spin_wasted,
                ready_count: u32::try_from(it.ret.max(0)).unwrap_or(u32::MAX),
                idle_ready: it
                    .ready
                    .iter()
                    .find(|r| !it.touched.iter().any(|t| t.fd.is_some() && t.fd == r.fd))
                    .copied(),
            };
            self.dispatch(out, |r, cx| r.on_loop_wakeup(cx, &w));
            let now = self.now;
            if let Some(t) = self.state.threads.get_mut(&key) {
                t.wakeups_total += 1;
                t.no_progress_total += u64::from(!it.progress);
                t.immediate_total += u64::from(immediate);
                let c = t.window.current(now);
                c.wakeups += 1;
                c.no_progress += u32::from(!it.progress);
            }
            let p = self.state.proc_mut(pid, now);
            p.wakeups_total += 1;
            p.wakeups_no_progress_total += u64::from(!it.progress);
        }
        it.active = false;
        if let Some(t) = self.state.threads.get_mut(&key) {
            t.lp.iter = it;
        }
    }

    /// Once per window bucket: late SSL_get_errors given up on, rules evaluated, and once a
    /// second idle connections, threads and processes retired.
    fn tick(&mut self, out: &mut Vec<FindingChange>) {
        let bucket = self.bucket_ns();
        self.next_tick_ns = (self.now / bucket + 1) * bucket;

        let mut stale = std::mem::take(&mut self.scratch);
        let limit = self.now.saturating_sub(self.cfg.pending_error_ns);
        stale.extend(
            self.state
                .threads
                .iter()
                .filter(|(_, t)| t.lp.pending.as_ref().is_some_and(|p| p.ts <= limit))
                .map(|(k, _)| *k),
        );
        for k in stale.drain(..) {
            self.resolve_pending(k, out);
        }
        self.scratch = stale;

        self.dispatch(out, |r, cx| r.tick(cx));

        if self.now >= self.next_sweep_ns {
            self.next_sweep_ns = self.now + SWEEP_NS;
            let (now, idle) = (self.now, self.cfg.idle_retire_ns);
            for k in self
                .state
                .conns_to_evict(now, idle, self.cfg.max_connections)
            {
                self.end_conn(k, ConnEnd::Evicted, out);
            }
            for k in self.state.threads_to_evict(now, idle, self.cfg.max_threads) {
                self.remove_thread(k, out);
            }
            self.state.retire_procs(now, idle);
        }
    }
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(Config::default())
    }
}
