//! `--mode auto`: when to turn on a process's per-call uprobes, and when to turn them off.
//!
//! A pure state machine, stepped by the session about ten times a second with what the
//! cheap, always-on probes counted since the last step. Each uprobe trap costs a busy
//! server microseconds per SSL call, so the per-call probes go on only for a process the
//! cheap signals show as suspicious, for a bounded window, and go off again after it:
//!
//! - **repeats**: non-empty epoll waits that returned at once with the same fd ready as the
//!   64 waits before (aggregated in the kernel): the signature of a spin loop or of readiness
//!   never consumed (busy_epoll_loop). A busy healthy server wakes for different fds.
//! - **SSL errors**: OpenSSL raised an error in libssl (`ERR_set_error`, a uprobe that
//!   fires only on errors): a bad write retry, or any other failure to look at.
//! - **shared fds**: two threads of the process doing I/O on one fd within 50 ms of each
//!   other (counted in the kernel): the sign of one SSL* used by two threads.
//! - **async pauses**: an OpenSSL async job paused (`ASYNC_pause_job`, a uprobe that fires
//!   only in async mode, once per SSL_ERROR_WANT_ASYNC answer) in `ASYNC_STUCK_CALLS` calls
//!   in a row on one connection spanning `ASYNC_STUCK_NS`, or at `min_async_pauses_per_sec`
//!   in calls whose SSL* is unknown: an offload engine that does not answer
//!   (want_async_stall). Async mode pauses once or twice per operation for microseconds.
//!
//! There is no window at attach: each pathology already going on shows in these signals
//! within the first steps (a spin's repeats, a retry's error), and a window at attach would
//! cost a healthy busy server what full mode costs for as long as it lasts (0.26 of its
//! keep-alive requests/s here), at the very moment a user attaches to it.
//!
//! A window that confirms nothing (no per-call finding open for the process) doubles the
//! hold-off before the next one, up to `max_holdoff_ns`: a healthy server whose signals
//! fire anyway pays for one window per hold-off at most. A window that confirms a finding
//! resets the hold-off, and is extended while the signal goes on, up to
//! `max_escalated_ns` in a row; except when the kernel's aggregates alone keep the open
//! findings going (a spin loop: the same fd ready again and again, see the engine's spin
//! rule): then the probes go off after the window and come back for a short re-confirming
//! window every `reconfirm_ns`, so that the spinning process is not slowed by their traps
//! for as long as its finding stays open.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Why a process's per-call probes were turned on: the records' type, so that snapshots and
/// summaries carry it as it is.
pub use crate::sink::record::EscalationReason as Reason;

/// Thresholds and durations, in ns and per second.
#[derive(Clone, Debug)]
pub struct Policy {
    pub window_ns: u64,
    pub min_holdoff_ns: u64,
    pub max_holdoff_ns: u64,
    pub max_escalated_ns: u64,
    pub min_repeats_per_sec: f64,
    /// Share of the quick waits that must be repeats.
    pub min_repeat_share: f64,
    pub min_shared_fd_per_sec: f64,
    /// Async-job pauses in calls whose SSL* is unknown (I/O calls while the per-call
    /// probes are off).
    pub min_async_pauses_per_sec: f64,
    /// How often a finding kept going by the kernel's aggregates is re-confirmed with the
    /// per-call probes.
    pub reconfirm_ns: u64,
}

impl Default for Policy {
    fn default() -> Self {
        const SEC: u64 = 1_000_000_000;
        Self {
            window_ns: 1_500_000_000,
            min_holdoff_ns: SEC,
            max_holdoff_ns: 120 * SEC,
            max_escalated_ns: 30 * SEC,
            min_repeats_per_sec: 200.0,
            min_repeat_share: 0.5,
            min_shared_fd_per_sec: 20.0,
            min_async_pauses_per_sec: 20.0,
            reconfirm_ns: 10 * SEC,
        }
    }
}

/// What the cheap probes counted for one process since the last step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signals {
    /// Non-empty waits that returned at once.
    pub quick: u64,
    /// Of them, with the same fd ready as the 64 waits before.
    pub repeats: u64,
    /// Errors OpenSSL raised in libssl.
    pub ssl_errors: u64,
    /// I/O on an fd another thread had just used.
    pub shared_fd: u64,
    /// Async-job pauses that made a connection look stuck ([`AsyncStreaks::pause`]).
    pub async_stuck: u64,
    /// Async-job pauses in a call whose SSL* is unknown.
    pub async_unattributed: u64,
}

/// A process's escalation state, as shown in the snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessEscalation {
    pub pid: u32,
    /// The per-call probes are on now.
    pub escalated: bool,
    /// Why they are (or were last) on.
    pub reason: Option<Reason>,
    pub escalations_total: u64,
    /// Windows that confirmed a finding.
    pub confirmed_total: u64,
    /// Time with the per-call probes on, since attach.
    pub escalated_ns_total: u64,
    /// The wait imposed before the next window (doubles after one that confirms nothing).
    pub holdoff_ns: u64,
}

/// The findings open for a process that need the per-call probes to be seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenFindings {
    None,
    /// Some, and the kernel's aggregates alone keep all of them going (spin_loop).
    KeptByKernel,
    /// Some that only the per-call probes keep going.
    NeedPerCall,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Turn the per-call probes of `pid` on.
    Escalate(u32, Reason),
    /// Turn them off.
    Drop(u32),
}

#[derive(Clone, Debug)]
struct Proc {
    /// Some(since, until) while escalated.
    window: Option<(u64, u64)>,
    confirmed: bool,
    /// No signal-driven window before this.
    quiet_until: u64,
    holdoff_ns: u64,
    reason: Option<Reason>,
    escalations: u64,
    confirmations: u64,
    escalated_ns: u64,
    last_step_ns: u64,
    /// While the kernel's aggregates keep a confirmed finding going: when to re-confirm.
    reconfirm_at: Option<u64>,
    /// A finding that needs the per-call probes was open when the current window began (a
    /// re-confirmation): the window then runs its full length.
    open_at_start: bool,
}

/// The controller for every traced process.
#[derive(Debug, Default)]
pub struct Controller {
    policy: Policy,
    procs: BTreeMap<u32, Proc>,
}

impl Controller {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            procs: BTreeMap::new(),
        }
    }

    /// Starts following `pid`, its per-call probes off until a signal calls for them; or,
    /// with `window`, on for one window at once (`Reason::Start`: a command started under
    /// tls-probe, whose first calls are worth seeing and which has no load yet to slow).
    pub fn add(&mut self, pid: u32, now: u64, window: bool, out: &mut Vec<Action>) {
        if self.procs.contains_key(&pid) {
            return;
        }
        self.procs.insert(
            pid,
            Proc {
                window: window.then_some((now, now + self.policy.window_ns)),
                confirmed: false,
                quiet_until: now,
                holdoff_ns: self.policy.min_holdoff_ns,
                reason: window.then_some(Reason::Start),
                escalations: u64::from(window),
                confirmations: 0,
                escalated_ns: 0,
                last_step_ns: now,
                reconfirm_at: None,
                open_at_start: false,
            },
        );
        if window {
            out.push(Action::Escalate(pid, Reason::Start));
        }
    }

    /// `pid` is gone: its probes are off, its numbers stay for the summary.
    pub fn end(&mut self, pid: u32, now: u64) {
        if let Some(p) = self.procs.get_mut(&pid)
            && p.window.take().is_some()
        {
            p.escalated_ns += now.saturating_sub(p.last_step_ns);
        }
    }

    /// Forgets `pid` altogether (`watch`: it exited; its totals go with it).
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// The per-call probes of `pid` are attached as of `at` (the clock of event times).
    /// Attaching them can take seconds (the kernel serializes it behind the detach of the
    /// last window's probes): the window lasts `window_ns` from then, not from the
    /// decision, or it could end before the probes saw anything.
    pub fn attached(&mut self, pid: u32, at: u64) {
        let window_ns = self.policy.window_ns;
        if let Some(p) = self.procs.get_mut(&pid)
            && let Some((_, until)) = p.window.as_mut()
        {
            *until = (*until).max(at.saturating_add(window_ns));
        }
    }

    pub fn is_escalated(&self, pid: u32) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.window.is_some())
    }

    /// One step for `pid`: `signals` counted since the last step, whether a finding that
    /// needs the per-call probes is open for it now, and whether the kernel's aggregates
    /// alone keep every such open finding going.
    pub fn step(
        &mut self,
        pid: u32,
        now: u64,
        signals: Signals,
        open: OpenFindings,
        out: &mut Vec<Action>,
    ) {
        let finding_open = open != OpenFindings::None;
        let kept_by_kernel = open == OpenFindings::KeptByKernel;
        let policy = &self.policy;
        let Some(p) = self.procs.get_mut(&pid) else {
            return;
        };
        let dt = now.saturating_sub(p.last_step_ns);
        p.last_step_ns = now;
        let reason = suspicious(policy, signals, dt);
        match p.window {
            Some((since, until)) => {
                p.escalated_ns += dt;
                p.confirmed |= finding_open;
                // A window that has just confirmed a finding the kernel's aggregates keep
                // going from now on (a spin) has done its job: it ends at once rather than
                // at `until`, since the probes' traps slow the spinning process ~10x.
                let done = finding_open && kept_by_kernel && !p.open_at_start;
                if now < until && !done {
                    return;
                }
                // A confirmed pathology that goes on keeps the probes on, within a bound,
                // unless the kernel's aggregates keep its finding going without them.
                if p.confirmed
                    && !kept_by_kernel
                    && (reason.is_some() || finding_open)
                    && now.saturating_sub(since) < policy.max_escalated_ns
                {
                    p.window = Some((since, now + policy.window_ns));
                    return;
                }
                p.window = None;
                if p.confirmed {
                    p.confirmations += 1;
                    p.holdoff_ns = policy.min_holdoff_ns;
                } else if p.reason != Some(Reason::Start) {
                    p.holdoff_ns = (p.holdoff_ns * 2).min(policy.max_holdoff_ns);
                }
                // The start window is a sample, not an answer to a signal: no hold-off.
                p.quiet_until = if p.reason == Some(Reason::Start) && !p.confirmed {
                    now
                } else {
                    now + p.holdoff_ns
                };
                p.reconfirm_at = (p.confirmed && kept_by_kernel).then(|| now + policy.reconfirm_ns);
                out.push(Action::Drop(pid));
            }
            None => {
                match p.reconfirm_at {
                    Some(_) if !kept_by_kernel => p.reconfirm_at = None,
                    // Until the re-confirmation, the repeats are the finding's own: only
                    // another kind of signal opens a window.
                    Some(at) if now < at => {
                        if matches!(reason, None | Some(Reason::RepeatedWakeups)) {
                            return;
                        }
                    }
                    Some(_) => {
                        p.reconfirm_at = None;
                        p.window = Some((now, now + policy.window_ns));
                        p.open_at_start = finding_open;
                        p.confirmed = false;
                        p.reason = Some(Reason::RepeatedWakeups);
                        p.escalations += 1;
                        out.push(Action::Escalate(pid, Reason::RepeatedWakeups));
                        return;
                    }
                    None => {}
                }
                if now < p.quiet_until {
                    return;
                }
                if let Some(reason) = reason {
                    p.window = Some((now, now + policy.window_ns));
                    p.open_at_start = finding_open;
                    p.confirmed = false;
                    p.reason = Some(reason);
                    p.escalations += 1;
                    out.push(Action::Escalate(pid, reason));
                }
            }
        }
    }

    /// Every process's state, for the snapshot.
    pub fn status(&self) -> Vec<ProcessEscalation> {
        self.procs
            .iter()
            .map(|(&pid, p)| ProcessEscalation {
                pid,
                escalated: p.window.is_some(),
                reason: p.reason,
                escalations_total: p.escalations,
                confirmed_total: p.confirmations,
                escalated_ns_total: p.escalated_ns,
                holdoff_ns: p.holdoff_ns,
            })
            .collect()
    }
}

/// The strongest reason in `s` to look closer, if any.
fn suspicious(policy: &Policy, s: Signals, dt_ns: u64) -> Option<Reason> {
    if s.ssl_errors > 0 {
        return Some(Reason::SslError);
    }
    let secs = (dt_ns.max(1) as f64) / 1e9;
    if s.async_stuck > 0 || s.async_unattributed as f64 / secs >= policy.min_async_pauses_per_sec {
        return Some(Reason::AsyncPause);
    }
    if s.repeats as f64 / secs >= policy.min_repeats_per_sec
        && s.repeats as f64 >= policy.min_repeat_share * s.quick as f64
    {
        return Some(Reason::RepeatedWakeups);
    }
    if s.shared_fd as f64 / secs >= policy.min_shared_fd_per_sec {
        return Some(Reason::SharedFd);
    }
    None
}

/// Calls in a row on one connection whose async job paused, before it looks stuck.
pub const ASYNC_STUCK_CALLS: u32 = 3;
/// ... spanning at least this long. A healthy offload answers in micro- to milliseconds;
/// half the engine's `async_min_stall_ns`, so the probes are on before the rule decides.
pub const ASYNC_STUCK_NS: u64 = 50_000_000;
/// A streak with no pause for this long is forgotten (its calls' returns were missed).
const ASYNC_FORGET_NS: u64 = 10_000_000_000;

/// Async-job pauses per connection, from the always-on probes: the pause (which names
/// the SSL* of the handshake call it happened in) and the handshake calls' returns. A
/// streak is the calls in a row on one SSL* that each paused; a call that returns without
/// having paused, or the SSL*'s free, ends it.
#[derive(Debug, Default)]
pub struct AsyncStreaks {
    by_conn: HashMap<(u32, u64), AsyncStreak>,
}

#[derive(Debug)]
struct AsyncStreak {
    first_ns: u64,
    last_ns: u64,
    /// Calls that returned after a pause.
    calls: u32,
    /// A pause since the last return.
    paused: bool,
}

impl AsyncStreaks {
    /// A job paused on `ssl` at `ts`. True when the connection now looks stuck: its
    /// streak holds `ASYNC_STUCK_CALLS` calls (this one included) over `ASYNC_STUCK_NS`.
    pub fn pause(&mut self, pid: u32, ssl: u64, ts: u64) -> bool {
        let s = self.by_conn.entry((pid, ssl)).or_insert(AsyncStreak {
            first_ns: ts,
            last_ns: ts,
            calls: 0,
            paused: false,
        });
        s.paused = true;
        s.last_ns = s.last_ns.max(ts);
        s.calls + 1 >= ASYNC_STUCK_CALLS && s.last_ns.saturating_sub(s.first_ns) >= ASYNC_STUCK_NS
    }

    /// A call on `ssl` returned: it continues the streak if it paused, else ends it.
    pub fn returned(&mut self, pid: u32, ssl: u64) {
        if let Some(s) = self.by_conn.get_mut(&(pid, ssl)) {
            if s.paused {
                s.paused = false;
                s.calls += 1;
            } else {
                self.by_conn.remove(&(pid, ssl));
            }
        }
    }

    /// The connection is gone.
    pub fn end(&mut self, pid: u32, ssl: u64) {
        self.by_conn.remove(&(pid, ssl));
    }

    /// Forgets `pid`'s streaks, and any with no pause for ten seconds before `now`.
    pub fn prune(&mut self, gone: Option<u32>, now: u64) {
        self.by_conn.retain(|&(pid, _), s| {
            Some(pid) != gone && now.saturating_sub(s.last_ns) < ASYNC_FORGET_NS
        });
    }

    pub fn len(&self) -> usize {
        self.by_conn.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_conn.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;
    const PID: u32 = 42;

    fn spin() -> Signals {
        // 100 ms of a spin loop: 50k quick waits, all for the same fd.
        Signals {
            quick: 50_000,
            repeats: 49_990,
            ..Signals::default()
        }
    }

    fn healthy() -> Signals {
        // 100 ms of a busy server: many quick waits, a few for the same fd in a row.
        Signals {
            quick: 3_000,
            repeats: 200,
            ..Signals::default()
        }
    }

    /// Steps every 100 ms from `from` to `to`, with `sig` and, when `finding`, a finding
    /// open that only the per-call probes keep going; returns actions.
    fn run(
        c: &mut Controller,
        from: u64,
        to: u64,
        sig: Signals,
        finding: bool,
    ) -> Vec<(u64, Action)> {
        let open = if finding {
            OpenFindings::NeedPerCall
        } else {
            OpenFindings::None
        };
        run_open(c, from, to, sig, open)
    }

    fn run_open(
        c: &mut Controller,
        from: u64,
        to: u64,
        sig: Signals,
        open: OpenFindings,
    ) -> Vec<(u64, Action)> {
        let mut all = Vec::new();
        let mut t = from;
        while t < to {
            t += 100 * MS;
            let mut out = Vec::new();
            c.step(PID, t, sig, open, &mut out);
            all.extend(out.into_iter().map(|a| (t, a)));
        }
        all
    }

    /// A quiet 2 s, then one step with `sig`: the probes go on at once, for `why`.
    fn escalates_at_once(sig: Signals, why: Reason) -> Controller {
        let mut c = started();
        run(&mut c, 0, 2 * SEC, Signals::default(), false);
        let acts = run(&mut c, 2 * SEC, 2_100 * MS, sig, false);
        assert_eq!(acts, vec![(2_100 * MS, Action::Escalate(PID, why))]);
        c
    }

    fn started() -> Controller {
        let mut c = Controller::new(Policy::default());
        let mut out = Vec::new();
        c.add(PID, 0, false, &mut out);
        assert!(!c.is_escalated(PID) && out.is_empty());
        c
    }

    /// A command started under tls-probe gets one window as it starts, then no hold-off.
    #[test]
    fn a_command_started_under_tls_probe_gets_one_window_at_its_start() {
        let mut c = Controller::new(Policy::default());
        let mut out = Vec::new();
        c.add(PID, 0, true, &mut out);
        assert_eq!(out, vec![Action::Escalate(PID, Reason::Start)]);
        let acts = run(&mut c, 0, 60 * SEC, healthy(), false);
        assert_eq!(acts, vec![(1_500 * MS, Action::Drop(PID))]);
        let s = &c.status()[0];
        assert_eq!((s.escalations_total, s.escalated_ns_total), (1, 1_500 * MS));
        // No hold-off after it: a later signal escalates at once.
        let acts = run(&mut c, 60 * SEC, 60_100 * MS, spin(), false);
        assert_eq!(
            acts,
            vec![(60_100 * MS, Action::Escalate(PID, Reason::RepeatedWakeups))]
        );
    }

    /// No window at attach: a healthy busy process never has its per-call probes on.
    #[test]
    fn a_healthy_process_is_never_escalated_not_even_at_attach() {
        let mut c = started();
        let acts = run(&mut c, 0, 60 * SEC, healthy(), false);
        assert_eq!(acts, vec![]);
        assert!(!c.is_escalated(PID));
        let s = &c.status()[0];
        assert_eq!(s.escalations_total, 0);
        assert_eq!(s.escalated_ns_total, 0);
        assert_eq!(s.reason, None);
    }

    /// A pathology already going on at attach is escalated on the first step.
    #[test]
    fn a_spin_going_on_at_attach_is_escalated_on_the_first_step() {
        let mut c = started();
        let acts = run(&mut c, 0, 100 * MS, spin(), false);
        assert_eq!(
            acts,
            vec![(100 * MS, Action::Escalate(PID, Reason::RepeatedWakeups))]
        );
    }

    #[test]
    fn a_spin_escalates_and_stays_on_while_confirmed_up_to_the_bound() {
        let mut c = started();
        run(&mut c, 0, 3 * SEC, Signals::default(), false);
        // The spin starts at 3 s: escalated on the next step.
        let acts = run(&mut c, 3 * SEC, 3_100 * MS, spin(), false);
        assert_eq!(
            acts,
            vec![(3_100 * MS, Action::Escalate(PID, Reason::RepeatedWakeups))]
        );
        // Confirmed by a finding, with the signal going on: on until the 30 s bound.
        let acts = run(&mut c, 3_100 * MS, 40 * SEC, spin(), true);
        assert_eq!(acts.len(), 2, "{acts:?}");
        assert!(matches!(acts[0], (t, Action::Drop(PID)) if (33 * SEC..35 * SEC).contains(&t)));
        // Then, after the minimum hold-off, on again.
        assert!(matches!(
            acts[1],
            (_, Action::Escalate(PID, Reason::RepeatedWakeups))
        ));
    }

    #[test]
    fn a_spin_the_kernel_keeps_going_is_reconfirmed_in_short_windows() {
        let mut c = started();
        run(&mut c, 0, 3 * SEC, Signals::default(), false);
        let acts = run(&mut c, 3 * SEC, 3_100 * MS, spin(), false);
        assert_eq!(
            acts,
            vec![(3_100 * MS, Action::Escalate(PID, Reason::RepeatedWakeups))]
        );
        // Confirmed, and the kernel's repeats keep the finding open: off after the window,
        // on again for one window every 10 s while it stays open, whatever the repeats say.
        let acts = run_open(
            &mut c,
            3_100 * MS,
            40 * SEC,
            spin(),
            OpenFindings::KeptByKernel,
        );
        let on: Vec<u64> = acts
            .iter()
            .filter(|(_, a)| matches!(a, Action::Escalate(..)))
            .map(|(t, _)| *t)
            .collect();
        let off: Vec<u64> = acts
            .iter()
            .filter(|(_, a)| matches!(a, Action::Drop(_)))
            .map(|(t, _)| *t)
            .collect();
        // The first window ends on the step after its confirmation, not at its end...
        assert_eq!(off.first(), Some(&(3_200 * MS)), "{acts:?}");
        assert_eq!(on, vec![13_200 * MS, 24_700 * MS, 36_200 * MS], "{acts:?}");
        // ...and each re-confirmation (the finding open from its start) runs its 1.5 s: the
        // per-call probes were on for 0.1 s and 3 windows of 1.5 s in 37 s.
        assert_eq!(c.status()[0].escalated_ns_total, 100 * MS + 3 * 1_500 * MS);
        // Another kind of signal still opens a window before the re-confirmation (after
        // the usual minimum hold-off, 1 s after the drop at 3.2 s).
        let mut c = started();
        run(&mut c, 0, 3 * SEC, Signals::default(), false);
        run(&mut c, 3 * SEC, 3_100 * MS, spin(), false);
        run_open(
            &mut c,
            3_100 * MS,
            6 * SEC,
            spin(),
            OpenFindings::KeptByKernel,
        );
        let error = Signals {
            ssl_errors: 1,
            ..spin()
        };
        let acts = run_open(
            &mut c,
            6 * SEC,
            6_100 * MS,
            error,
            OpenFindings::KeptByKernel,
        );
        assert_eq!(
            acts,
            vec![(6_100 * MS, Action::Escalate(PID, Reason::SslError))]
        );
    }

    #[test]
    fn windows_that_confirm_nothing_back_off_doubling() {
        let mut c = started();
        // Suspicious-looking but never confirmed, for 100 s.
        let acts = run(&mut c, 0, 100 * SEC, spin(), false);
        let starts: Vec<u64> = acts
            .iter()
            .filter(|(_, a)| matches!(a, Action::Escalate(..)))
            .map(|(t, _)| *t)
            .collect();
        // Hold-offs of 1, 2, 4, 8, 16, 32 s after windows of 1.5 s.
        assert_eq!(starts.len(), 6, "{acts:?}");
        let gaps: Vec<u64> = starts
            .windows(2)
            .map(|w| (w[1] - w[0]) / (100 * MS))
            .collect();
        assert_eq!(gaps, vec![35, 55, 95, 175, 335]);
        let s = &c.status()[0];
        assert!(s.escalated_ns_total < 12 * SEC, "{s:?}");
    }

    #[test]
    fn an_ssl_error_escalates_at_once_and_a_confirmation_resets_the_holdoff() {
        let err = Signals {
            ssl_errors: 1,
            ..Signals::default()
        };
        let mut c = escalates_at_once(err, Reason::SslError);
        // Confirmed, then the error stops: off after the window, hold-off at the minimum.
        run(&mut c, 2_100 * MS, 2_500 * MS, Signals::default(), true);
        let acts = run(&mut c, 2_500 * MS, 5 * SEC, Signals::default(), false);
        assert_eq!(acts, vec![(3_600 * MS, Action::Drop(PID))]);
        assert_eq!(c.status()[0].holdoff_ns, SEC);
        assert_eq!(c.status()[0].confirmed_total, 1);
    }

    #[test]
    fn threads_sharing_an_fd_escalate() {
        let shared = Signals {
            shared_fd: 20,
            ..Signals::default()
        };
        escalates_at_once(shared, Reason::SharedFd);
    }

    #[test]
    fn repeats_that_are_a_small_share_of_quick_waits_are_healthy() {
        let p = Policy::default();
        assert_eq!(suspicious(&p, healthy(), 100 * MS), None);
        assert_eq!(
            suspicious(&p, spin(), 100 * MS),
            Some(Reason::RepeatedWakeups)
        );
    }

    #[test]
    fn async_pauses_escalate_at_once_and_unattributed_ones_by_rate() {
        let stuck = Signals {
            async_stuck: 1,
            ..Signals::default()
        };
        escalates_at_once(stuck, Reason::AsyncPause);
        let p = Policy::default();
        let few = Signals {
            async_unattributed: 1,
            ..Signals::default()
        };
        assert_eq!(suspicious(&p, few, 100 * MS), None);
        let many = Signals {
            async_unattributed: 2,
            ..Signals::default()
        };
        assert_eq!(suspicious(&p, many, 100 * MS), Some(Reason::AsyncPause));
        // An SSL error is the stronger lead.
        let both = Signals {
            ssl_errors: 1,
            ..stuck
        };
        assert_eq!(suspicious(&p, both, 100 * MS), Some(Reason::SslError));
    }

    /// A stuck engine: every retry (each 10 ms) pauses again.
    #[test]
    fn a_connection_whose_job_pauses_call_after_call_looks_stuck_after_50_ms() {
        let mut a = AsyncStreaks::default();
        let mut stuck_at = None;
        for i in 0..20u64 {
            let ts = i * 10 * MS;
            if a.pause(PID, 0xa, ts) && stuck_at.is_none() {
                stuck_at = Some(ts);
            }
            a.returned(PID, 0xa);
        }
        assert_eq!(stuck_at, Some(50 * MS));
        a.end(PID, 0xa);
        assert!(a.is_empty());
    }

    /// A healthy engine: a pause or two per handshake, answered at once, then a call that
    /// completes without pausing; connections back to back, the SSL* reused.
    #[test]
    fn brief_pauses_that_resolve_never_look_stuck() {
        let mut a = AsyncStreaks::default();
        for conn in 0..1000u64 {
            let t = conn * 20 * MS;
            assert!(!a.pause(PID, 0xa, t));
            a.returned(PID, 0xa);
            assert!(!a.pause(PID, 0xa, t + 100_000));
            a.returned(PID, 0xa);
            // The call that completes the handshake did not pause: the streak ends.
            a.returned(PID, 0xa);
        }
        assert!(a.is_empty());
        // Even a slow one (30 ms) with three paused calls is under the span.
        for ts in [0, 15 * MS, 30 * MS] {
            assert!(!a.pause(PID, 0xb, ts));
            a.returned(PID, 0xb);
        }
    }

    #[test]
    fn streaks_are_forgotten_with_their_process_or_after_ten_quiet_seconds() {
        let mut a = AsyncStreaks::default();
        a.pause(PID, 0xa, 0);
        a.pause(PID + 1, 0xb, 5 * SEC);
        a.prune(None, 11 * SEC);
        assert_eq!(a.len(), 1);
        a.prune(Some(PID + 1), 11 * SEC);
        assert!(a.is_empty());
    }

    /// The probes went on 1.9 s after the decision (the last window's were still being
    /// detached): the window still gives them 1.5 s, however far event time had moved.
    #[test]
    fn a_window_counts_from_when_its_probes_are_attached() {
        let stuck = Signals {
            async_stuck: 1,
            ..Signals::default()
        };
        let mut c = escalates_at_once(stuck, Reason::AsyncPause);
        c.attached(PID, 4 * SEC);
        let acts = run(&mut c, 2_100 * MS, 6 * SEC, Signals::default(), false);
        assert_eq!(acts, vec![(5_500 * MS, Action::Drop(PID))]);
        // A quick attach moves the end by as much.
        let mut c = escalates_at_once(stuck, Reason::AsyncPause);
        c.attached(PID, 2_200 * MS);
        let acts = run(&mut c, 2_100 * MS, 6 * SEC, Signals::default(), false);
        assert_eq!(acts, vec![(3_700 * MS, Action::Drop(PID))]);
    }
}
