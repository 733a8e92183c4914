//! The host-wide probe cost budget of `tls-probe watch`.
//!
//! Once a second the session estimates what all the probes cost together, from the
//! kernel's hit counters (hits times the per-hit costs of [`super::stats`]), and compares it
//! with the budget (by default 1% of one core: 10 ms of probe time per second). While the
//! estimate is over, the busiest traced process that is not sampled yet (by its CPU time
//! over the last second: a busy process makes the syscalls the tracepoints count) becomes
//! sampled, one a second. A sampled process is traced 1 s in every [`SAMPLE_PERIOD`] and
//! silenced in the kernel's target filter otherwise. A process stays sampled at least
//! [`HOLD_NS`]; then, while the estimate is under half the budget, the least busy sampled
//! process is traced fully again, one a second.
//!
//! Findings are what `watch` is for, so two kinds of process are never sampled (and one
//! that is, is traced fully again at once): a process attached less than [`GRACE_NS`] ago
//! (auto mode looks at it and raises what it sees within that time), and a process with an
//! open finding (sampling it would close the finding and reopen it in every sample; its
//! cost is the price of tracking a pathology, and the status says when it keeps the host
//! over the budget).
//!
//! Pure: the session feeds it the estimate, the CPU deltas and the exempt processes, and
//! applies what it returns.

use std::collections::{BTreeMap, BTreeSet};

/// A sampled process is traced 1 s in this many.
pub const SAMPLE_PERIOD: u64 = 10;
/// A process stays sampled at least this long.
const HOLD_NS: u64 = 60_000_000_000;
/// A process attached less than this long ago is not sampled.
pub const GRACE_NS: u64 = 10_000_000_000;

#[derive(Debug)]
pub struct Budget {
    limit_ns_per_sec: f64,
    /// Sampled pids and when they became so.
    sampled: BTreeMap<u32, u64>,
    seconds: u64,
    /// The last estimate, ns of probe time per second.
    pub last_cost_ns_per_sec: f64,
}

/// What to do this second.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    /// Sampled processes to trace during this second.
    pub on: Vec<u32>,
    /// Sampled processes to silence during this second.
    pub off: Vec<u32>,
    /// Processes no longer sampled (trace them again).
    pub released: Vec<u32>,
}

impl Budget {
    pub fn new(limit_ns_per_sec: f64) -> Self {
        Self {
            limit_ns_per_sec,
            sampled: BTreeMap::new(),
            seconds: 0,
            last_cost_ns_per_sec: 0.0,
        }
    }

    pub fn limit_ns_per_sec(&self) -> f64 {
        self.limit_ns_per_sec
    }

    pub fn is_sampled(&self, pid: u32) -> bool {
        self.sampled.contains_key(&pid)
    }

    pub fn sampled(&self) -> BTreeSet<u32> {
        self.sampled.keys().copied().collect()
    }

    pub fn remove(&mut self, pid: u32) {
        self.sampled.remove(&pid);
    }

    /// Whether a sampled `pid` is traced in second `seconds`: each pid in its own slot, so
    /// that the sampled processes are not all on at once.
    fn on_in(pid: u32, seconds: u64) -> bool {
        (seconds + u64::from(pid)).is_multiple_of(SAMPLE_PERIOD)
    }

    /// One second: the probes' estimated cost (ns per second) and each traced process's CPU
    /// time over the last second.
    pub fn step(
        &mut self,
        now: u64,
        cost_ns_per_sec: f64,
        cpu: &BTreeMap<u32, u64>,
        exempt: &BTreeSet<u32>,
    ) -> Step {
        self.seconds += 1;
        self.last_cost_ns_per_sec = cost_ns_per_sec;
        self.sampled.retain(|pid, _| cpu.contains_key(pid));
        let mut step = Step::default();
        let freed: Vec<u32> = self
            .sampled
            .keys()
            .filter(|pid| exempt.contains(pid))
            .copied()
            .collect();
        for pid in freed {
            self.sampled.remove(&pid);
            step.released.push(pid);
        }
        if cost_ns_per_sec > self.limit_ns_per_sec {
            let busiest = cpu
                .iter()
                .filter(|(pid, _)| !self.sampled.contains_key(pid) && !exempt.contains(pid))
                .max_by_key(|(pid, c)| (**c, std::cmp::Reverse(**pid)));
            if let Some((&pid, _)) = busiest {
                self.sampled.insert(pid, now);
            }
        } else if cost_ns_per_sec < self.limit_ns_per_sec / 2.0 {
            let idlest = self
                .sampled
                .iter()
                .filter(|(_, since)| now.saturating_sub(**since) >= HOLD_NS)
                .min_by_key(|(pid, _)| (cpu.get(pid).copied().unwrap_or(0), **pid))
                .map(|(pid, _)| *pid);
            if let Some(pid) = idlest {
                self.sampled.remove(&pid);
                step.released.push(pid);
            }
        }
        for &pid in self.sampled.keys() {
            if Self::on_in(pid, self.seconds) {
                step.on.push(pid);
            } else {
                step.off.push(pid);
            }
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn over_budget_samples_the_busiest_first_one_a_second() {
        let mut b = Budget::new(10_000_000.0);
        let cpu: BTreeMap<u32, u64> = [(1, 5 * S / 100), (2, 90 * S / 100), (3, 20 * S / 100)]
            .into_iter()
            .collect();
        b.step(S, 30_000_000.0, &cpu, &BTreeSet::new());
        assert_eq!(b.sampled(), [2].into());
        b.step(2 * S, 30_000_000.0, &cpu, &BTreeSet::new());
        assert_eq!(b.sampled(), [2, 3].into());
        // Within budget: stays sampled for the hold time.
        let s = b.step(3 * S, 1_000_000.0, &cpu, &BTreeSet::new());
        assert_eq!(b.sampled(), [2, 3].into());
        assert!(s.released.is_empty());
        // Each sampled process is on one second in ten, off the others.
        let mut on = BTreeMap::<u32, u32>::new();
        for i in 0..SAMPLE_PERIOD {
            let s = b.step(4 * S + i * S, 8_000_000.0, &cpu, &BTreeSet::new());
            assert_eq!(s.on.len() + s.off.len(), 2);
            for pid in s.on {
                *on.entry(pid).or_default() += 1;
            }
        }
        assert_eq!(on, [(2, 1), (3, 1)].into());
        // After the hold, well under budget: the least busy goes first.
        let s = b.step(70 * S, 1_000_000.0, &cpu, &BTreeSet::new());
        assert_eq!(s.released, vec![3]);
        let s = b.step(71 * S, 1_000_000.0, &cpu, &BTreeSet::new());
        assert_eq!(s.released, vec![2]);
        assert!(b.sampled().is_empty());
    }

    #[test]
    fn exempt_processes_are_never_sampled_and_leave_the_sample_at_once() {
        let mut b = Budget::new(10.0);
        let cpu: BTreeMap<u32, u64> = [(1, S), (2, S / 10)].into_iter().collect();
        b.step(S, 100.0, &cpu, &[1].into());
        assert_eq!(
            b.sampled(),
            [2].into(),
            "the busiest is exempt: the next one"
        );
        b.step(2 * S, 100.0, &cpu, &BTreeSet::new());
        assert_eq!(b.sampled(), [1, 2].into());
        let s = b.step(3 * S, 100.0, &cpu, &[1].into());
        assert_eq!(s.released, vec![1], "a finding opened: traced fully again");
        assert_eq!(b.sampled(), [2].into());
    }

    #[test]
    fn an_exited_process_leaves_the_sample() {
        let mut b = Budget::new(10.0);
        let cpu: BTreeMap<u32, u64> = [(7, S)].into_iter().collect();
        b.step(S, 100.0, &cpu, &BTreeSet::new());
        assert!(b.is_sampled(7));
        b.step(2 * S, 100.0, &BTreeMap::new(), &BTreeSet::new());
        assert!(!b.is_sampled(7));
    }
}
