//! The correlation engine: decoded events in, metrics and findings out.
//!
//! Pure and deterministic. Time is the events' `ts_ns` (CLOCK_MONOTONIC), never the wall
//! clock, so a recording replays exactly as it ran live. The engine keeps:
//!
//! - per thread, its event loop: each epoll wait (timeout, how long it blocked, which fds
//!   were ready with which interest), then the SSL calls made until the next wait (an
//!   "iteration"); a wake-up made progress when some call moved bytes or finished a handshake.
//!   Immediate empty waits (timeout 0, nothing ready) come aggregated by the kernel, one
//!   `EpollIdle` for up to thousands: each counts as a wake-up with no ready fd and no
//!   progress;
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
mod handshake;
mod ingest;
mod iteration;
mod keys;
pub mod rules;
mod snapshot;
mod state;
mod store;
mod window;

#[cfg(test)]
mod tests;

pub use config::Config;
pub use finding::{
    AsyncStallEvidence, BusyEvidence, CallSite, CallSites, Change, ChurnEvidence,
    ConcurrentEvidence, Evidence, Finding, FindingChange, FindingKind, FindingState, Frame, Peak,
    ResumptionEvidence, SaturationEvidence, Severity, ShutdownWriteEvidence, SpinEvidence,
    SymbolSource, WriteRetryEvidence,
};
pub use handshake::{
    HandshakeSnapshot, NameCount, NewConnectionsSnapshot, PeerSnapshot, TimeShareSnapshot,
    names as tls_names,
};
pub use rules::{attribution::Attribution, write_retry::PeerCount};
pub use snapshot::{
    ConnSnapshot, OpSnapshot, ProcessSnapshot, ReadySnapshot, Snapshot, ThreadSnapshot,
    WaitSnapshot,
};

use self::{
    rules::{ConnEnd, Cx, LibErrorAt, Rule},
    state::{ConnKey, State, Thread, ThreadKey},
    store::FindingStore,
    window::BUCKETS,
};
use crate::event::{Event, EventKind, PeerSide};

const SWEEP_NS: u64 = 1_000_000_000;
/// Thread CPU use is measured over at least this span: the kernel's counters advance in
/// 10 ms ticks, so two samples taken close together (at attach, then the first tick) read
/// 0% or a multiple of a tick.
const MIN_CPU_SPAN_NS: u64 = 500_000_000;
/// After an idle gap, at most this many bucket ticks are replayed one by one (enough for
/// every close timer to fire at its exact time); the rest of the gap is skipped.
const MAX_CATCH_UP_TICKS: u32 = 256;

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

    /// The peer address of a socket the process accepted, as the agent knows it. Forgotten
    /// when the fd closes. `peer` events from the kernel set it too.
    pub fn set_peer(&mut self, pid: u32, fd: i32, peer: String) {
        self.insert_peer(pid, fd, peer, false);
    }

    /// Whether the peer of `pid`'s socket `fd` is known.
    pub fn peer_known(&self, pid: u32, fd: i32) -> bool {
        self.state.peers.contains_key(&(pid, fd))
    }

    fn insert_peer(&mut self, pid: u32, fd: i32, addr: String, outbound: bool) {
        if self.state.peers.len() < self.cfg.max_connections
            || self.state.peers.contains_key(&(pid, fd))
        {
            self.state
                .peers
                .insert((pid, fd), state::Peer { addr, outbound });
        } else {
            self.state.evicted_peers += 1;
        }
    }

    /// Feeds one event; pushes any finding changes (opened/updated/closed) to `out`.
    ///
    /// Rules are evaluated at every window-bucket boundary of event time; boundaries crossed
    /// since the last event are evaluated first, so the output does not depend on whether
    /// or how often `advance` was called in between.
    pub fn ingest(&mut self, ev: &Event, out: &mut Vec<FindingChange>) {
        // Samples the agent reads from /proc carry the agent's clock, which runs ahead of
        // the probe records still unread in the ring buffer: they must not move event time,
        // or the records that follow would all land in one window bucket (a spin seen for
        // a 1.5 s escalation window would never look sustained). `advance` moves it.
        // Peers of connections made before attach are read from /proc too (probe "procfs").
        let sample = matches!(
            &ev.kind,
            EventKind::ThreadCpu { .. }
                | EventKind::ListenOverflows { .. }
                | EventKind::EpollCtl(crate::event::EpollCtl {
                    op: crate::event::CtlOp::Fdinfo,
                    ..
                })
        ) || (matches!(ev.kind, EventKind::Peer { .. }) && ev.probe == "procfs");
        if !sample {
            self.tick_until(ev.ts_ns, out);
            self.now = self.now.max(ev.ts_ns);
            self.state.touch(ev.pid, ev.ts_ns);
        }
        let (pid, tid, ts) = (ev.pid, ev.tid, ev.ts_ns);
        match &ev.kind {
            EventKind::SslCall(c) => self.on_ssl_call(pid, tid, ts, c, out),
            EventKind::SslError(e) => self.on_ssl_error(pid, tid, e, out),
            EventKind::SslFree { ssl } => {
                self.resolve_pending((pid, tid), out);
                self.dispatch(out, |r, cx| r.on_ssl_free(cx, pid, tid, *ssl));
                self.end_conn((pid, *ssl), ConnEnd::Freed, out);
            }
            EventKind::EpollWait(w) => self.on_epoll_wait(pid, tid, ts, w, out),
            // Registrations are the tracker's business: it puts fd and interest on ready
            // entries.
            EventKind::EpollCtl(_) => {}
            EventKind::EpollIdle(w) => self.on_epoll_idle(pid, tid, ts, w, out),
            EventKind::EpollBusy(w) => self.on_epoll_busy(pid, tid, ts, w, out),
            EventKind::LibError {
                lib,
                reason,
                reason_name,
                ssl,
                op,
                fd,
            } => {
                let e = LibErrorAt {
                    pid,
                    tid,
                    ts,
                    lib: *lib,
                    reason: *reason,
                    reason_name: reason_name.as_deref(),
                    ssl: *ssl,
                    op: *op,
                    fd: *fd,
                };
                self.dispatch(out, |r, cx| r.on_lib_error(cx, &e));
            }
            // The rule sees the WANT_ASYNC answers: from SSL_get_error while it is probed,
            // else inferred for the probed call the job paused in (a handshake call with
            // the per-call probes off), so that a stall is seen from its first answer.
            EventKind::AsyncPause { ssl: Some(ssl) } => {
                self.thread((pid, tid), out).async_pause = Some((*ssl, ts));
            }
            EventKind::AsyncPause { ssl: None } => {}
            // A connection's socket: given by SSL_set_fd, or (memory BIOs) learned after
            // some of its calls.
            EventKind::SslFd { ssl, fd, .. } | EventKind::SslSetFd { ssl, fd } => {
                if *fd >= 0 {
                    self.state.map_fd((pid, *ssl), *fd);
                }
            }
            EventKind::Close { fd, ret } => {
                if *ret >= 0 {
                    // Before the fd is unmapped: rules still read its connection and peer.
                    let ssl = self.state.ssl_of_fd(pid, Some(*fd));
                    self.dispatch(out, |r, cx| r.on_fd_close(cx, pid, tid, *fd, ssl));
                }
                if *ret >= 0
                    && let Some(ssl) = self.state.close_fd(pid, *fd)
                {
                    self.dispatch(out, |r, cx| r.on_conn_end(cx, (pid, ssl), ConnEnd::Closed));
                }
            }
            EventKind::Peer { fd, addr, side } => {
                // A socket the thread connected: the connection it works on next.
                if *side == PeerSide::Connected {
                    self.thread((pid, tid), out).last_socket = Some(*fd);
                }
                self.insert_peer(pid, *fd, addr.clone(), *side == PeerSide::Connected);
            }
            EventKind::ListenOverflows { total } => self.state.hs.listen_overflows(ts, *total),
            EventKind::ServerHello(h) => self.state.hs.server_hello(&self.cfg, (pid, h.ssl), h),
            // The session acts on a process's exit; its threads' state ages out as before.
            EventKind::TaskExit { .. } => {}
            EventKind::SockOverlap(o) => {
                self.thread((pid, tid), out);
                self.dispatch(out, |r, cx| r.on_sock_overlap(cx, pid, tid, ts, o));
            }
            EventKind::ThreadCpu { cpu_ns } => {
                let t = self.thread((pid, tid), out);
                match t.cpu_sample {
                    Some((t0, c0)) if ts >= t0 + MIN_CPU_SPAN_NS => {
                        t.cpu_pct =
                            Some(cpu_ns.saturating_sub(c0) as f64 * 100.0 / (ts - t0) as f64);
                        t.cpu_sample = Some((ts, *cpu_ns));
                    }
                    // Too soon after the last sample: the span is measured from it.
                    Some(_) => {}
                    None => t.cpu_sample = Some((ts, *cpu_ns)),
                }
            }
        }
    }

    /// Advances event time without an event (e.g. an idle target), closing findings whose
    /// condition stopped.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<FindingChange>) {
        self.tick_until(now_ns, out);
        self.now = self.now.max(now_ns);
    }

    /// The findings open for `pid` that only the per-call probes can show (spin_loop,
    /// busy_epoll_loop, concurrent_ssl_use, want_async_stall): how many
    /// kinds, and whether the kernel's aggregated waits alone keep all of them going once
    /// the per-call probes are off (spin_loop only; see its rule's `on_busy_waits`). What
    /// `--mode auto` takes as a confirmation.
    pub fn open_call_findings(&self, pid: u32) -> (usize, bool) {
        use finding::FindingKind as K;
        let open: Vec<K> = [
            K::SpinLoop,
            K::BusyEpollLoop,
            K::ConcurrentSslUse,
            K::WantAsyncStall,
        ]
        .into_iter()
        .filter(|&k| self.store.any_open(k, |f| f.pid == pid))
        .collect();
        (
            open.len(),
            !open.is_empty() && open.iter().all(|&k| k == K::SpinLoop),
        )
    }

    /// All findings kept, open and closed, by id.
    pub fn findings(&self) -> Vec<Finding> {
        self.store.all()
    }

    /// Metrics per process, thread and connection.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = snapshot::build(&self.state, self.now, self.store.open_count());
        s.evicted.closed_findings = self.store.evicted_closed;
        s
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
        self.state.hs.forget_thread(key);
        if self.state.threads.remove(&key).is_some() {
            self.state.evicted_threads_total += 1;
        }
        self.dispatch(out, |r, cx| r.on_thread_end(cx, key));
    }

    fn end_conn(&mut self, key: ConnKey, how: ConnEnd, out: &mut Vec<FindingChange>) {
        let freed = how == ConnEnd::Freed;
        self.state.hs.conn_end(&self.cfg, key, self.now, freed);
        if self.state.remove_conn(key).is_some() {
            match how {
                ConnEnd::Evicted => self.state.evicted_connections_total += 1,
                _ => self.state.proc_mut(key.0, self.now).connections_freed_total += 1,
            }
        }
        self.dispatch(out, |r, cx| r.on_conn_end(cx, key, how));
    }

    /// Runs the ticks of every bucket boundary up to `t` not run yet.
    fn tick_until(&mut self, t: u64, out: &mut Vec<FindingChange>) {
        let bucket = self.bucket_ns();
        if self.next_tick_ns == 0 {
            // The first event: nothing to evaluate before it.
            self.next_tick_ns = (t / bucket + 1) * bucket;
            return;
        }
        let mut n = 0;
        while self.next_tick_ns <= t {
            n += 1;
            if n > MAX_CATCH_UP_TICKS {
                self.next_tick_ns = self.next_tick_ns.max(t / bucket * bucket);
            }
            self.now = self.now.max(self.next_tick_ns);
            self.tick(out);
            self.next_tick_ns = (self.now / bucket + 1) * bucket;
        }
    }

    /// Once per window bucket: late SSL_get_errors given up on, rules evaluated, and once a
    /// second idle connections, threads and processes retired.
    fn tick(&mut self, out: &mut Vec<FindingChange>) {
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
