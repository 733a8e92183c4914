//! Turning events into state: SSL calls completed with their SSL_get_error, epoll waits
//! (one by one, or aggregated in the kernel) starting iterations, and finished iterations
//! turned into wake-ups for the rules.

use super::{
    Engine, FindingChange,
    epoll_bits::{EPOLLERR, EPOLLHUP},
    iteration::{Iteration, Pending, Readiness, ReadySlot},
    rules::{BusyWaits, CallDone, ConnEnd, ConnWakeup, LoopWakeup},
    state::ThreadKey,
};
use crate::event::{EpollBusy, EpollIdle, EpollWait, SslCall, SslError, SslErrorCode};

impl Engine {
    pub(super) fn on_ssl_call(
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
                let async_paused = t
                    .async_pause
                    .is_some_and(|(ssl, at)| ssl == c.ssl && at >= c.start_ns && at <= ts);
                t.lp.pending = Some(Pending {
                    ts,
                    call: c.clone(),
                    async_paused,
                });
            }
        } else {
            self.complete_call(pid, tid, ts, c, None, out);
        }
    }

    pub(super) fn on_ssl_error(
        &mut self,
        pid: u32,
        tid: u32,
        e: &SslError,
        out: &mut Vec<FindingChange>,
    ) {
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
    pub(super) fn resolve_pending(&mut self, key: ThreadKey, out: &mut Vec<FindingChange>) {
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

    pub(super) fn complete_call(
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
        self.state
            .record_handshake(&self.cfg, (key, tid), now, (call, code), fd);
        if let Some(t) = self.state.threads.get_mut(&(pid, tid)) {
            t.last_ssl = Some(call.ssl);
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

    pub(super) fn on_epoll_wait(
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
        self.state.hs.blocked((pid, tid), self.now, w.duration_ns);
        if let Some(t) = self.state.threads.get_mut(&(pid, tid)) {
            t.lp.epoll_mode = true;
            t.lp.iter.start_wait(ts, w);
        }
    }

    /// `count` immediate empty waits (timeout 0, nothing ready) aggregated in the kernel:
    /// all waits but the last count as wake-ups with no ready fd and no progress, and the
    /// last one starts an iteration, so that any SSL calls made after it are counted in it,
    /// as after any wait.
    ///
    /// Calls made between the aggregated waits arrived before this event and were counted
    /// in the iteration then current: the kernel does not say which wait each followed.
    pub(super) fn on_epoll_idle(
        &mut self,
        pid: u32,
        tid: u32,
        ts: u64,
        w: &EpollIdle,
        out: &mut Vec<FindingChange>,
    ) {
        let wakeups = LoopWakeup {
            pid,
            tid,
            count: 0,
            timeout_ns: Some(0),
            blocked_ns: 0,
            immediate: true,
            progress: false,
            spin_wasted: false,
            ready_count: 0,
            other_ready: false,
            untraced: false,
            idle_ready: None,
        };
        self.on_aggregated_waits(w.count, w.blocked_ns, wakeups, out, |it, each_ns| {
            it.start_empty(ts, each_ns);
        });
    }

    /// `count` non-empty waits aggregated in the kernel while the per-call probes were off:
    /// what the loop did after each is not known, so none of them is idle (as a wait with
    /// an untraced ready fd) nor wasted. All but the last count as such wake-ups; the last
    /// starts an iteration marked untraced, for the calls that follow it.
    pub(super) fn on_epoll_busy(
        &mut self,
        pid: u32,
        tid: u32,
        ts: u64,
        w: &EpollBusy,
        out: &mut Vec<FindingChange>,
    ) {
        let wakeups = LoopWakeup {
            pid,
            tid,
            count: 0,
            timeout_ns: None,
            blocked_ns: 0,
            immediate: w.quick >= w.count.saturating_sub(1),
            progress: false,
            spin_wasted: false,
            ready_count: w.ready_total / w.count.max(1),
            other_ready: true,
            untraced: true,
            idle_ready: None,
        };
        self.on_aggregated_waits(w.count, w.blocked_ns, wakeups, out, |it, each_ns| {
            it.start_busy(ts, each_ns, w);
        });
        let busy = BusyWaits {
            pid,
            tid,
            repeats: w.repeats,
            ready: ReadySlot {
                fd: w.last_ready.fd,
                events: w.last_ready.events,
                interest: w.last_ready.interest,
            },
        };
        self.dispatch(out, |r, cx| r.on_busy_waits(cx, &busy));
    }

    /// What kernel-aggregated waits have in common: the thread's iteration so far ends,
    /// all but the last of the `count` waits count as `wakeups` (whose count and blocked
    /// time are filled in here), and `start` begins the last one's iteration with its even
    /// share of `blocked_ns`.
    fn on_aggregated_waits(
        &mut self,
        count: u32,
        blocked_ns: u64,
        mut wakeups: LoopWakeup,
        out: &mut Vec<FindingChange>,
        start: impl FnOnce(&mut Iteration, u64),
    ) {
        let key = (wakeups.pid, wakeups.tid);
        self.resolve_pending(key, out);
        self.thread(key, out);
        self.finish_iteration(key, out);
        self.state.hs.blocked(key, self.now, blocked_ns);
        if count == 0 {
            return;
        }
        let each_ns = blocked_ns / u64::from(count);
        if count > 1 {
            wakeups.count = count - 1;
            wakeups.blocked_ns = blocked_ns - each_ns;
            self.count_wakeups(&wakeups, out);
        }
        if let Some(t) = self.state.threads.get_mut(&key) {
            t.lp.epoll_mode = true;
            start(&mut t.lp.iter, each_ns);
        }
    }

    /// Ends the thread's current iteration: one wake-up per connection it made calls on, one
    /// for the loop, and the thread's counters.
    pub(super) fn finish_iteration(&mut self, key: ThreadKey, out: &mut Vec<FindingChange>) {
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
        // Without the per-call probes the calls of the iteration are not all seen.
        let touched: &[_] = if it.untraced { &[] } else { &it.touched };
        for touched in touched {
            // Freed or closed during the iteration: the connection cannot spin any more, and
            // its rules' state is gone already.
            if self
                .state
                .conns
                .get(&(pid, touched.ssl))
                .is_none_or(|c| c.closed)
            {
                continue;
            }
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
                count: 1,
                timeout_ns: it.timeout_ns,
                blocked_ns: it.blocked_ns,
                immediate,
                progress: it.progress,
                spin_wasted,
                ready_count: u32::try_from(it.ret.max(0)).unwrap_or(u32::MAX),
                untraced: it.untraced,
                other_ready: it.untraced
                    || it.ret > it.ready.len() as i64
                    || it.ready.iter().any(|r| {
                        // Hang-up and error readiness cannot be read away: reported again and
                        // again, it is a leaked registration whatever the fd.
                        r.events & (EPOLLHUP | EPOLLERR) == 0
                            && self.state.ssl_of_fd(pid, r.fd).is_none()
                    }),
                idle_ready: it
                    .ready
                    .iter()
                    .find(|r| !it.touched.iter().any(|t| t.fd.is_some() && t.fd == r.fd))
                    .copied(),
            };
            self.count_wakeups(&w, out);
        }
        it.active = false;
        if let Some(t) = self.state.threads.get_mut(&key) {
            t.lp.iter = it;
        }
    }

    /// Loop wake-ups of a thread: to the rules, and into its and its process's counters.
    fn count_wakeups(&mut self, w: &LoopWakeup, out: &mut Vec<FindingChange>) {
        self.dispatch(out, |r, cx| r.on_loop_wakeup(cx, w));
        let now = self.now;
        let n = w.count;
        // Untraced wake-ups may well have made progress: not counted either way.
        let no_progress = if w.progress || w.untraced { 0 } else { n };
        if let Some(t) = self.state.threads.get_mut(&(w.pid, w.tid)) {
            t.wakeups_total += u64::from(n);
            t.no_progress_total += u64::from(no_progress);
            t.immediate_total += if w.immediate { u64::from(n) } else { 0 };
            let c = t.window.current(now);
            c.wakeups += n;
            c.no_progress += no_progress;
        }
        let p = self.state.proc_mut(w.pid, now);
        p.wakeups_total += u64::from(n);
        p.wakeups_no_progress_total += u64::from(no_progress);
    }
}
