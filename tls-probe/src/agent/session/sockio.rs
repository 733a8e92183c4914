//! When the socket I/O tracepoints are worth their cost outside full mode.
//!
//! They fire on every read and write of every process: on a keep-alive server, two to four
//! hits of ~0.2 µs per request, about 10% of what nginx spends on a request, for nothing
//! unless one of these holds:
//!
//! - a process has its per-call uprobes on (an escalation window, and [`PER_CALL_HOLD_NS`]
//!   after it): they map each SSL call to its fd;
//! - handshakes happened in the last [`HANDSHAKE_HOLD_NS`]: inside a handshake call they
//!   read the cleartext ServerHello (version, cipher, TLS 1.3 psk);
//! - a process has more than one thread: two threads doing I/O on one fd is the cheap sign
//!   of one SSL object used concurrently, and two threads with a read or write in flight on
//!   one TLS socket at the same moment is the evidence of it (concurrent_ssl_use, at its
//!   first occurrence). Over budget they are sampled like the rest: an overlap is then seen
//!   at once only inside a sample;
//! - a process uses memory BIOs (asyncio, node: an SSL* was tied to its socket from the
//!   socket I/O around its calls, `EventKind::SslFd`): they are what ties each new
//!   connection to its fd and peer, so they must be on when its handshake runs, not only
//!   after it was seen.
//!
//! Escalations always get them. For the other two reasons they stay on only while what
//! they cost fits [`BUDGET_NS_PER_SEC`]: the agent counts the targets' reads and writes
//! while they are on, and a server that does more than the budget allows gets them in
//! samples, [`SAMPLE_ON_NS`] every [`SAMPLE_PERIOD_NS`], each sample measuring the rate
//! again. A handshake flood (a few reads and writes per millisecond-long handshake) keeps
//! them; a keep-alive server doing tens of thousands of requests a second samples.
//!
//! At attach they are on for [`ATTACH_GRACE_NS`] when the targets are quiet (their reads
//! and writes, from /proc/PID/io over [`QUIET_SAMPLE`] before the probes load, fit the
//! budget): connections made then get their fds, memory-BIO ones included, for next to
//! nothing. A busy target gets no grace: they are off until one of the reasons holds, and a
//! healthy busy server that makes no new handshakes never pays for them. The controller
//! decides every 100 ms from the first step after attach (in light mode too).

use std::collections::BTreeSet;

use anyhow::Result;

use super::Session;
use crate::{
    agent::{proc, stats::TRACEPOINT_HIT_NS},
    event::{Event, EventKind},
    sink::record::{SocketIoStatus, SocketIoWhy},
};

/// How long after the last handshake call the tracepoints stay wanted.
pub const HANDSHAKE_HOLD_NS: u64 = 2_000_000_000;
/// How long after an escalation window they stay on: the next window often follows within
/// its hold-off (1 s, then 2 s), and re-attaching must wait ~1 s for the kernel to finish
/// detaching them, which would leave the start of that window without fds.
pub const PER_CALL_HOLD_NS: u64 = 2_000_000_000;
/// Probe time the socket I/O tracepoints may take from the targets outside escalations: 1%
/// of a core (25,000 reads and writes a second at two hits of 0.2 µs each).
pub const BUDGET_NS_PER_SEC: f64 = 10_000_000.0;
/// Over budget: on for this long...
pub const SAMPLE_ON_NS: u64 = 1_000_000_000;
/// ...at the start of every period this long.
pub const SAMPLE_PERIOD_NS: u64 = 10_000_000_000;
/// How long they stay on after attach for quiet targets.
pub const ATTACH_GRACE_NS: u64 = 3_000_000_000;
/// How long the targets' reads and writes are counted before the probes load.
pub const QUIET_SAMPLE: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether `pids` together make so few reads and writes that the tracepoints fit the
/// budget: counted from /proc/PID/io over [`QUIET_SAMPLE`]. Unreadable counts are taken as
/// quiet.
pub fn quiet_at_attach(pids: &[u32]) -> bool {
    let total = || -> Option<u64> { pids.iter().map(|&p| proc::io_syscalls(p)).sum() };
    let Some(before) = total() else {
        return true;
    };
    let start = std::time::Instant::now();
    std::thread::sleep(QUIET_SAMPLE);
    let Some(after) = total() else {
        return true;
    };
    let rate = after.saturating_sub(before) as f64 / start.elapsed().as_secs_f64();
    fits_budget(rate)
}

/// Whether `calls_per_sec` reads and writes (two tracepoint hits each) fit the budget.
fn fits_budget(calls_per_sec: f64) -> bool {
    calls_per_sec * 2.0 * TRACEPOINT_HIT_NS <= BUDGET_NS_PER_SEC
}

/// Why the tracepoints are wanted now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reasons {
    pub per_call: bool,
    pub threads: bool,
    pub handshakes: bool,
    pub memory_bio: bool,
}

impl Reasons {
    fn any(self) -> bool {
        self.per_call || self.threads || self.handshakes || self.memory_bio
    }

    fn names(self) -> Vec<SocketIoWhy> {
        [
            (self.per_call, SocketIoWhy::PerCall),
            (self.threads, SocketIoWhy::Threads),
            (self.handshakes, SocketIoWhy::Handshakes),
            (self.memory_bio, SocketIoWhy::MemoryBio),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, why)| why)
        .collect()
    }
}

#[derive(Debug, Default)]
pub(super) struct Gate {
    /// Processes with more than one thread, at the last tick.
    multi_threaded: BTreeSet<u32>,
    /// Processes with an SSL* tied to its socket over memory BIOs.
    memory_bio: BTreeSet<u32>,
    /// Event time of the newest handshake call.
    last_handshake_ns: Option<u64>,
    /// Since when (wall clock) they are on, or off.
    on_since: Option<u64>,
    off_since: Option<u64>,
    /// The reads and writes counted so far, and when, while on.
    last_count: Option<(u64, u64)>,
    /// Reads and writes a second, measured the last time they were on for a whole tick.
    calls_per_sec: Option<f64>,
    reasons: Reasons,
    /// Wall time at which a process last had its per-call probes on.
    last_hot: Option<u64>,
    /// Quiet targets at attach: on until then, unless measured over budget.
    grace_until: Option<u64>,
}

/// The decision itself: whether the tracepoints should be on at `now`, given why they are
/// wanted, whether they are on, since when, and the rate last measured while on.
pub fn wanted(
    reasons: Reasons,
    on_since: Option<u64>,
    off_since: Option<u64>,
    calls_per_sec: Option<f64>,
    now: u64,
) -> bool {
    if reasons.per_call {
        return true;
    }
    if !reasons.any() {
        return false;
    }
    let over = calls_per_sec.is_some_and(|r| !fits_budget(r));
    if !over {
        return true;
    }
    match (on_since, off_since) {
        // A sample: as long as it lasts.
        (Some(on), _) => now.saturating_sub(on) < SAMPLE_ON_NS,
        // Between samples: the next starts a period after the last one started.
        (None, Some(off)) => now.saturating_sub(off) >= SAMPLE_PERIOD_NS - SAMPLE_ON_NS,
        (None, None) => true,
    }
}

impl Gate {
    /// A gate whose tracepoints are on (attached at load) until `grace_until`, if any.
    pub fn new(grace_until: Option<u64>) -> Self {
        Self {
            grace_until,
            on_since: grace_until.map(|_| proc::monotonic_ns()),
            ..Self::default()
        }
    }

    pub fn observe(&mut self, ev: &Event) {
        match &ev.kind {
            EventKind::SslCall(c) if c.op.is_handshake() => {
                self.last_handshake_ns = Some(self.last_handshake_ns.unwrap_or(0).max(ev.ts_ns));
            }
            EventKind::SslFd { .. } => {
                self.memory_bio.insert(ev.pid);
            }
            _ => {}
        }
    }

    /// `threads` of `pid` at this tick.
    pub fn threads(&mut self, pid: u32, threads: usize) {
        if threads > 1 {
            self.multi_threaded.insert(pid);
        } else {
            self.multi_threaded.remove(&pid);
        }
    }

    pub fn remove(&mut self, pid: u32) {
        self.multi_threaded.remove(&pid);
        self.memory_bio.remove(&pid);
    }

    /// Once a tick: the kernel's count of the targets' reads and writes.
    pub fn measure(&mut self, now: u64, calls: u64) {
        if self.on_since.is_none() {
            self.last_count = None;
            return;
        }
        if let Some((t, n)) = self.last_count
            && now > t
        {
            self.calls_per_sec = Some(calls.saturating_sub(n) as f64 * 1e9 / (now - t) as f64);
        }
        self.last_count = Some((now, calls));
    }

    pub fn status(&self) -> SocketIoStatus {
        let over = self.calls_per_sec.is_some_and(|r| !fits_budget(r));
        SocketIoStatus {
            attached: self.on_since.is_some(),
            why: self.reasons.names(),
            sampled: over && !self.reasons.per_call && self.reasons.any(),
            calls_per_sec: self.calls_per_sec,
        }
    }
}

impl Session {
    /// Attaches or detaches the socket I/O tracepoints as [`wanted`] says (not in full
    /// mode, where they stay on).
    pub(super) fn sockio_step(&mut self, now: u64) -> Result<()> {
        let pids = self.probes.pids();
        let on = self.probes.sockio_on();
        let engine_now = self.pipeline.engine().now_ns();
        let Some(gate) = &mut self.gate else {
            return Ok(());
        };
        if pids.iter().any(|&p| self.probes.is_hot(p)) {
            gate.last_hot = Some(now);
        }
        gate.reasons = Reasons {
            per_call: gate
                .last_hot
                .is_some_and(|t| now.saturating_sub(t) < PER_CALL_HOLD_NS),
            threads: gate.multi_threaded.iter().any(|p| pids.contains(p)),
            handshakes: gate
                .last_handshake_ns
                .is_some_and(|t| engine_now.saturating_sub(t) < HANDSHAKE_HOLD_NS),
            memory_bio: gate.memory_bio.iter().any(|p| pids.contains(p)),
        };
        let grace =
            gate.grace_until.is_some_and(|t| now < t) && gate.calls_per_sec.is_none_or(fits_budget);
        let want = grace
            || wanted(
                gate.reasons,
                gate.on_since,
                gate.off_since,
                gate.calls_per_sec,
                now,
            );
        if want != on {
            log::debug!(
                "socket I/O tracepoints {} ({:?}, {:?} reads and writes/s)",
                if want { "on" } else { "off" },
                gate.reasons,
                gate.calls_per_sec
            );
            if !self.probes.set_sockio(want)? {
                // Their last links are still being closed: the next step tries again.
                return Ok(());
            }
        }
        if want && gate.on_since.is_none() {
            gate.on_since = Some(now);
            gate.off_since = None;
            // The rate of this stretch is measured from here.
            let calls = self.probes.counters().map_or(0, |c| c.sockio_calls);
            gate.last_count = Some((now, calls));
        } else if !want && gate.off_since.is_none() {
            gate.off_since = Some(now);
            gate.on_since = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const NONE: Reasons = Reasons {
        per_call: false,
        threads: false,
        handshakes: false,
        memory_bio: false,
    };
    const HANDSHAKES: Reasons = Reasons {
        handshakes: true,
        ..NONE
    };

    #[test]
    fn on_only_while_they_can_tell_something() {
        // A single-threaded keep-alive server, no handshakes for a while: off.
        assert!(!wanted(NONE, Some(0), None, Some(10.0), 20 * S));
        // Each reason alone turns them on while the rate fits the budget (or is unknown).
        for r in [
            Reasons {
                per_call: true,
                ..NONE
            },
            Reasons {
                threads: true,
                ..NONE
            },
            HANDSHAKES,
            Reasons {
                memory_bio: true,
                ..NONE
            },
        ] {
            assert!(wanted(r, None, Some(19 * S), None, 20 * S));
            assert!(wanted(r, None, Some(19 * S), Some(20_000.0), 20 * S));
        }
    }

    #[test]
    fn over_budget_they_are_sampled_except_for_escalations() {
        // 240,000 reads and writes a second (nginx keep-alive at 80k requests/s): 96 ms of
        // probe time a second, far over 10 ms.
        let rate = Some(240_000.0);
        // A sample lasts SAMPLE_ON_NS...
        assert!(wanted(HANDSHAKES, Some(20 * S), None, rate, 20 * S + S / 2));
        assert!(!wanted(HANDSHAKES, Some(20 * S), None, rate, 21 * S));
        // ...and the next comes a period after the last one started.
        assert!(!wanted(HANDSHAKES, None, Some(21 * S), rate, 29 * S));
        assert!(wanted(HANDSHAKES, None, Some(21 * S), rate, 30 * S));
        // An escalation needs the fds of its SSL calls, whatever they cost.
        let per_call = Reasons {
            per_call: true,
            ..HANDSHAKES
        };
        assert!(wanted(per_call, Some(20 * S), None, rate, 25 * S));
        // Just under the budget: on all the time.
        assert!(wanted(
            HANDSHAKES,
            Some(20 * S),
            None,
            Some(24_000.0),
            40 * S
        ));
    }

    #[test]
    fn the_budget_is_25000_reads_and_writes_a_second() {
        assert!(fits_budget(0.0) && fits_budget(25_000.0));
        assert!(!fits_budget(25_001.0) && !fits_budget(240_000.0));
    }

    #[test]
    fn the_rate_is_measured_only_while_on() {
        let mut g = Gate {
            on_since: Some(0),
            ..Gate::default()
        };
        g.measure(S, 1_000);
        assert_eq!(g.calls_per_sec, None);
        g.measure(3 * S, 61_000);
        assert_eq!(g.calls_per_sec, Some(30_000.0));
        // Off: the count moves no more (the tracepoints are detached), the rate stays.
        g.on_since = None;
        g.measure(4 * S, 61_000);
        assert_eq!(g.calls_per_sec, Some(30_000.0));
        assert!(g.last_count.is_none());
    }
}

#[cfg(test)]
mod memory_bio_tests {
    use super::*;
    use crate::event::{BioVia, SslOp};

    #[test]
    fn a_memory_bio_tie_makes_its_process_a_reason_until_it_goes() {
        let mut g = Gate::default();
        g.observe(&Event::new(
            1,
            42,
            42,
            EventKind::SslFd {
                ssl: 0xa,
                fd: 7,
                via: BioVia::Read,
                op: SslOp::DoHandshake,
                record_type: 0x16,
                sys_bytes: 517,
            },
        ));
        assert!(g.memory_bio.contains(&42));
        g.remove(42);
        assert!(g.memory_bio.is_empty());
    }
}
