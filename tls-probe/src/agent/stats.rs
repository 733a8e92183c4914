//! Once a second: how fast events arrive, and an estimate of what the probes cost the
//! targets, from the kernel's hit counters and the targets' CPU time.
//!
//! A probe runs in the context of the task that hit it, so its cost is part of the target's
//! own CPU time. The estimate is hits times a per-hit cost, as a share of the targets' CPU
//! time over the same second: a rough guide (the trap cost varies by machine) that makes
//! "full mode is too expensive here" visible.
//!
//! The per-hit costs: docs/environment.md measured ~9.3 µs per uprobe and ~10 µs per
//! uretprobe with bpftrace on the machines we test on, and ~0.2 µs per syscall tracepoint.
//! tls-probe's own programs cost less per trap there: in the spin-loop scenario (4 uprobe
//! hits and 2 tracepoint hits per loop iteration) the client's CPU time per iteration was
//! 1.3-1.7 µs without probes and 15-21 µs with `--mode full`, over five runs: 3.4 to 4.8 µs
//! per uprobe hit. We use 4 µs.

use std::collections::BTreeMap;

use crate::sink::ProbeStats;

/// One uprobe hit, entry or return alike (`uprobe_hits` counts both).
pub const UPROBE_HIT_NS: f64 = 4_000.0;
pub const TRACEPOINT_HIT_NS: f64 = 200.0;

/// Less target CPU time than this (two clock ticks) is too little to compare with.
const MIN_CPU_NS: f64 = 20_000_000.0;

/// What the session counted at one instant.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub ts_ns: u64,
    pub events: u64,
    pub lost_total: u64,
    pub uprobe_hits: u64,
    pub tracepoint_hits: u64,
    /// CPU time so far of each live target.
    pub cpu_ns: BTreeMap<u32, u64>,
}

/// Turns successive samples into rates.
#[derive(Debug, Default)]
pub struct Meter {
    prev: Option<Sample>,
}

impl Meter {
    pub fn next(&mut self, now: Sample) -> ProbeStats {
        let mut stats = ProbeStats {
            ts_ns: now.ts_ns,
            lost_total: now.lost_total,
            ..ProbeStats::default()
        };
        if let Some(prev) = &self.prev
            && now.ts_ns > prev.ts_ns
        {
            let secs = (now.ts_ns - prev.ts_ns) as f64 / 1e9;
            stats.events_per_sec = now.events.saturating_sub(prev.events) as f64 / secs;
            stats.uprobe_hits_per_sec =
                now.uprobe_hits.saturating_sub(prev.uprobe_hits) as f64 / secs;
            stats.tracepoint_hits_per_sec =
                now.tracepoint_hits.saturating_sub(prev.tracepoint_hits) as f64 / secs;
            let probe_ns = now.uprobe_hits.saturating_sub(prev.uprobe_hits) as f64 * UPROBE_HIT_NS
                + now.tracepoint_hits.saturating_sub(prev.tracepoint_hits) as f64
                    * TRACEPOINT_HIT_NS;
            // Targets alive at both ends: one that exited took its CPU time with it.
            let both: Vec<u64> = now
                .cpu_ns
                .iter()
                .filter_map(|(pid, cpu)| Some(cpu.saturating_sub(*prev.cpu_ns.get(pid)?)))
                .collect();
            let cpu_ns = both.iter().sum::<u64>() as f64;
            // /proc counts CPU time in 10 ms clock ticks: below two of them on both sides
            // (an idle target), the share says nothing.
            if !both.is_empty() && (cpu_ns >= MIN_CPU_NS || probe_ns >= MIN_CPU_NS) {
                stats.overhead_pct = Some(share_pct(probe_ns, cpu_ns));
            }
        }
        self.prev = Some(now);
        stats
    }
}

/// `probe_ns` as a share of `cpu_ns`, in percent. The estimate can exceed the CPU time
/// actually measured (a coarse clock tick, a faster machine): it is capped at 100.
fn share_pct(probe_ns: f64, cpu_ns: f64) -> f64 {
    if probe_ns <= 0.0 {
        return 0.0;
    }
    (100.0 * probe_ns / cpu_ns.max(probe_ns)).min(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ts_s: u64, events: u64, up: u64, tp: u64, cpu: &[(u32, u64)]) -> Sample {
        Sample {
            ts_ns: ts_s * 1_000_000_000,
            events,
            lost_total: 0,
            uprobe_hits: up,
            tracepoint_hits: tp,
            cpu_ns: cpu.iter().copied().collect(),
        }
    }

    #[test]
    fn rates_need_two_samples() {
        let mut m = Meter::default();
        let first = m.next(sample(1, 100, 0, 0, &[(1, 0)]));
        assert_eq!((first.events_per_sec, first.overhead_pct), (0.0, None));
        // Two seconds: 2000 events, 10k uprobe hits (40 ms) and 100k tracepoint hits
        // (20 ms) against 1 s of target CPU.
        let s = m.next(sample(3, 2100, 10_000, 100_000, &[(1, 1_000_000_000)]));
        assert_eq!(s.events_per_sec, 1000.0);
        let pct = s.overhead_pct.unwrap();
        assert!((pct - 6.0).abs() < 1e-9, "{pct}");
    }

    #[test]
    fn overhead_is_capped_and_zero_without_hits() {
        let mut m = Meter::default();
        m.next(sample(1, 0, 0, 0, &[(1, 0)]));
        // 0.4 s of estimated probe time against 10 ms measured.
        let s = m.next(sample(2, 0, 100_000, 0, &[(1, 10_000_000)]));
        assert_eq!(s.overhead_pct, Some(100.0));
        let s = m.next(sample(3, 0, 100_000, 0, &[(1, 30_000_000)]));
        assert_eq!(s.overhead_pct, Some(0.0));
        // An idle target: 1,000 tracepoint hits (0.2 ms) against no CPU tick: unknown,
        // not 100%.
        let s = m.next(sample(4, 0, 100_000, 1_000, &[(1, 30_000_000)]));
        assert_eq!(s.overhead_pct, None);
    }

    #[test]
    fn an_exited_target_leaves_the_share() {
        let mut m = Meter::default();
        m.next(sample(1, 0, 0, 0, &[(1, 0), (2, 0)]));
        let s = m.next(sample(2, 0, 1000, 0, &[(2, 400_000_000)]));
        assert_eq!(s.overhead_pct, Some(1.0));
        let s = m.next(sample(3, 0, 1000, 0, &[]));
        assert_eq!(s.overhead_pct, None);
    }
}
