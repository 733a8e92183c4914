//! `--mode auto` in the session: the cheap signals gathered from the events and the kernel's
//! counters, the [`Controller`] stepped ten times a second, and its decisions applied to
//! the probes; plus what the snapshot and summary say about the probes.

use std::collections::BTreeMap;

use anyhow::Result;
use tls_probe_common::ossl;

use super::Session;
use crate::{
    agent::{
        escalate::{Action, AsyncStreaks, Controller, OpenFindings, Policy, Signals},
        proc,
        stats::{TRACEPOINT_HIT_NS, UPROBE_HIT_NS},
    },
    event::{Event, EventKind},
    sink::record::{ProbeStatus, ProcessProbes, SocketIoStatus, SocketIoWhy},
};

/// The controller and the signals counted since its last step.
#[derive(Debug, Default)]
pub(super) struct Auto {
    controller: Controller,
    signals: BTreeMap<u32, Signals>,
    /// The kernel's shared-fd counter per pid at the last step.
    shared_prev: BTreeMap<u32, u64>,
    /// Async-job pauses per connection.
    async_streaks: AsyncStreaks,
}

impl Auto {
    pub fn new() -> Self {
        Self {
            controller: Controller::new(Policy::default()),
            ..Self::default()
        }
    }

    pub fn remove(&mut self, pid: u32) {
        self.controller.end(pid, proc::monotonic_ns());
        self.signals.remove(&pid);
        self.shared_prev.remove(&pid);
        self.async_streaks.prune(Some(pid), 0);
    }

    /// Forgets `pid` altogether, its escalation totals too (`watch`, after it exited).
    pub fn forget(&mut self, pid: u32) {
        self.remove(pid);
        self.controller.forget(pid);
    }

    /// Counts what an event says towards its process's signals.
    pub fn observe(&mut self, ev: &Event) {
        match &ev.kind {
            EventKind::EpollBusy(w) => {
                let s = self.signals.entry(ev.pid).or_default();
                s.quick += u64::from(w.quick);
                s.repeats += u64::from(w.repeats);
            }
            // A peer that hangs up without a close_notify is everyday life, not a lead.
            EventKind::LibError { lib, reason, .. }
                if *lib == ossl::ERR_LIB_SSL
                    && *reason != ossl::SSL_R_UNEXPECTED_EOF_WHILE_READING =>
            {
                self.signals.entry(ev.pid).or_default().ssl_errors += 1;
            }
            EventKind::AsyncPause { ssl: Some(ssl) } => {
                let stuck = self.async_streaks.pause(ev.pid, *ssl, ev.ts_ns);
                self.signals.entry(ev.pid).or_default().async_stuck += u64::from(stuck);
            }
            EventKind::AsyncPause { ssl: None } => {
                self.signals.entry(ev.pid).or_default().async_unattributed += 1;
            }
            EventKind::SslCall(c) => self.async_streaks.returned(ev.pid, c.ssl),
            EventKind::SslFree { ssl } => self.async_streaks.end(ev.pid, *ssl),
            _ => {}
        }
    }
}

impl Session {
    /// One controller step for every traced process; applies what it decides.
    /// In light mode: only the socket I/O tracepoints' gate.
    pub(super) fn auto_step(&mut self) -> Result<()> {
        let Some(auto) = self.auto.as_mut() else {
            return self.sockio_step(proc::monotonic_ns());
        };
        // Event time, not the wall clock: a window must cover 1.5 s of what the probes
        // saw, however far the reader is behind them. Before any, nothing to decide.
        let now = self.pipeline.engine().now_ns();
        if now == 0 {
            return Ok(());
        }
        auto.async_streaks.prune(None, now);
        let mut actions = Vec::new();
        for pid in self.probes.pids() {
            let mut sig = auto.signals.remove(&pid).unwrap_or_default();
            let shared = self.probes.shared_fd_uses(pid);
            let prev = auto.shared_prev.insert(pid, shared).unwrap_or(shared);
            sig.shared_fd = shared.saturating_sub(prev);
            let open = match self.pipeline.engine().open_call_findings(pid) {
                (0, _) => OpenFindings::None,
                (_, true) => OpenFindings::KeptByKernel,
                (_, false) => OpenFindings::NeedPerCall,
            };
            auto.controller.step(pid, now, sig, open, &mut actions);
        }
        self.apply(actions)?;
        // An escalation needs the fds of the SSL calls at once.
        self.sockio_step(proc::monotonic_ns())
    }

    /// Starts following `pid` in auto mode: its per-call probes off until a signal, or on
    /// for one window at once for a command started under tls-probe (`window_at_start`).
    pub(super) fn auto_add(&mut self, pid: u32) -> Result<()> {
        let Some(auto) = self.auto.as_mut() else {
            return Ok(());
        };
        let now = match self.pipeline.engine().now_ns() {
            0 => proc::monotonic_ns(),
            t => t,
        };
        let mut actions = Vec::new();
        auto.controller
            .add(pid, now, self.cfg.window_at_start, &mut actions);
        self.apply(actions)
    }

    fn apply(&mut self, actions: Vec<Action>) -> Result<()> {
        for action in actions {
            let (pid, on, why) = match action {
                Action::Escalate(pid, reason) => (pid, true, Some(reason)),
                Action::Drop(pid) => (pid, false, None),
            };
            if let Err(e) = self.probes.set_hot(pid, on) {
                // An exited process: the tick notices and detaches it.
                log::info!("per-call probes of pid {pid} to {on}: {e:#}");
                continue;
            }
            if on && let Some(auto) = self.auto.as_mut() {
                auto.controller.attached(pid, proc::monotonic_ns());
            }
            log::debug!("pid {pid}: per-call probes {on} ({why:?})");
        }
        Ok(())
    }

    /// What is probed now and what it costs, for the snapshot and the summary.
    pub(super) fn probe_status(&self) -> ProbeStatus {
        let s = &self.out.last_stats;
        let escalation: BTreeMap<u32, _> = self
            .auto
            .as_ref()
            .map(|a| {
                a.controller
                    .status()
                    .into_iter()
                    .map(|e| (e.pid, e))
                    .collect()
            })
            .unwrap_or_default();
        // Those traced now, and in auto mode those that were (the summary comes after a
        // last target exited).
        let mut pids = self.probes.pids();
        pids.extend(escalation.keys().copied());
        pids.sort_unstable();
        pids.dedup();
        ProbeStatus {
            mode: self.out.start.probe_mode,
            uprobe_hits_per_sec: s.uprobe_hits_per_sec,
            tracepoint_hits_per_sec: s.tracepoint_hits_per_sec,
            uprobe_hit_cost_ns: UPROBE_HIT_NS,
            tracepoint_hit_cost_ns: TRACEPOINT_HIT_NS,
            estimated_cost_ns_per_sec: s.uprobe_hits_per_sec * UPROBE_HIT_NS
                + s.tracepoint_hits_per_sec * TRACEPOINT_HIT_NS,
            estimated_cost_pct: s.overhead_pct,
            processes: pids
                .into_iter()
                .map(|pid| {
                    let e = escalation.get(&pid);
                    ProcessProbes {
                        pid,
                        per_call: self.probes.is_hot(pid),
                        reason: e.and_then(|e| e.reason),
                        escalations_total: e.map_or(0, |e| e.escalations_total),
                        confirmed_total: e.map_or(0, |e| e.confirmed_total),
                        escalated_ns_total: e.map_or(0, |e| e.escalated_ns_total),
                        holdoff_ns: e.map_or(0, |e| e.holdoff_ns),
                        sampled: self.host.as_ref().is_some_and(|h| h.budget.is_sampled(pid)),
                    }
                })
                .collect(),
            socket_io: Some(self.gate.as_ref().map_or_else(
                || SocketIoStatus {
                    attached: true,
                    why: vec![SocketIoWhy::FullMode],
                    sampled: false,
                    calls_per_sec: None,
                },
                |g| g.status(),
            )),
            closing_links: self.probes.closing_links(),
            budget: self.host.as_ref().map(|h| h.status()),
        }
    }
}

/// What each mode traces, for the `start` record.
pub(super) fn mode_descriptions() -> BTreeMap<String, String> {
    [
        (
            "light",
            "syscall tracepoints (epoll waits aggregated in the kernel, epoll_ctl, close, \
             accept/connect, socket I/O), uprobes on the handshake calls, SSL_set_fd, SSL_free, libcrypto \
             key operations, ERR_set_error and ASYNC_pause_job: no per-call uprobe",
        ),
        (
            "auto",
            "light, plus the per-call uprobes (SSL_read/SSL_write/SSL_peek and their _ex, \
             SSL_get_error) on a process for 1.5 s windows when the cheap signals look \
             suspicious (repeated wake-ups for one fd, an OpenSSL error in libssl, two \
             threads on one fd, an async job pausing again and again; never just because it \
             attached, but once as it starts under `tls-probe run`), backing off after \
             windows that confirm nothing",
        ),
        (
            "full",
            "light, plus the per-call uprobes on every process all the time, and every \
             epoll wait sent on its own",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}
