//! `tls-probe watch`: the session traces the whole host. Every [`host::SCAN_INTERVAL`] the
//! [`host::Scanner`] names the processes that now run OpenSSL (new ones, an exec, a dlopen)
//! and each is attached like a late target, announced with a `target_attach`. Once a second
//! the [`Budget`] compares the probes' estimated cost with the host-wide limit and samples
//! the busiest processes while it is exceeded.

use std::collections::{BTreeMap, HashSet};

use anyhow::Result;

use super::{Session, tree};
use crate::{
    agent::{
        budget::Budget,
        host::{Found, HostConfig, Scanner},
        proc,
    },
    sink::record::{AttachCause, BudgetStatus},
};

#[derive(Debug)]
pub(super) struct HostState {
    pub(super) scanner: Scanner,
    pub(super) budget: Budget,
    /// Each traced process's CPU time at the last budget step.
    cpu: BTreeMap<u32, u64>,
    /// The kernel's hit counters at the last budget step.
    hits: Option<(u64, u64, u64)>,
    /// The cap on traced processes was reached (said once until it is not).
    full: bool,
    /// When each traced process was attached.
    attached: BTreeMap<u32, u64>,
    /// Processes left alone while the cap on traced processes was reached: looked at again
    /// once there is room.
    deferred: std::collections::BTreeSet<u32>,
}

impl HostState {
    pub(super) fn new(cfg: HostConfig) -> Self {
        Self {
            budget: Budget::new(cfg.budget_ns_per_sec),
            scanner: Scanner::new(cfg),
            cpu: BTreeMap::new(),
            hits: None,
            full: false,
            attached: BTreeMap::new(),
            deferred: std::collections::BTreeSet::new(),
        }
    }

    pub(super) fn status(&self) -> BudgetStatus {
        let cost = self.budget.last_cost_ns_per_sec;
        BudgetStatus {
            limit_ns_per_sec: self.budget.limit_ns_per_sec(),
            estimated_cost_ns_per_sec: cost,
            over: cost > self.budget.limit_ns_per_sec(),
            sampled_pids: self.budget.sampled().into_iter().collect(),
        }
    }
}

impl Session {
    /// Attaches to the processes that now run OpenSSL and are not traced yet.
    pub(super) fn host_scan(&mut self) -> Result<()> {
        let Some(host) = &mut self.host else {
            return Ok(());
        };
        let now = proc::monotonic_ns();
        let traced: HashSet<u32> = self.probes.pids().into_iter().collect();
        let max = host.scanner.config().max_processes;
        if traced.len() < max {
            for pid in std::mem::take(&mut host.deferred) {
                host.scanner.forget(pid);
            }
        }
        let found = host.scanner.scan(now, &traced);
        for (pid, lib, why) in found {
            let Some(host) = &mut self.host else {
                break;
            };
            if self.probes.pids().len() >= max {
                if !host.full {
                    eprintln!(
                        "tls-probe: {max} processes traced (--max-processes): pid {pid} and further new ones are left alone until some exit"
                    );
                    host.full = true;
                }
                // Left alone, not for good: looked at again once there is room.
                host.scanner.pass(pid, now);
                host.deferred.insert(pid);
                continue;
            }
            host.full = false;
            match tree::attach_target(&mut self.probes, pid, lib, self.cfg.hot) {
                Ok(target) => {
                    let parent = crate::probe::discover::parent_pid(pid).unwrap_or(0);
                    let cause = match why {
                        Found::Present => AttachCause::Discovered,
                        Found::Exec => AttachCause::Exec,
                        Found::LibraryLoaded => AttachCause::LibraryLoaded,
                    };
                    // The exec watch of the traced (adopt_late) starts from this program.
                    self.late.note_exe(pid);
                    self.adopted(target, parent, cause, now)?;
                }
                Err(e) => {
                    log::info!("watch: attaching to pid {pid} failed: {e:#}");
                    host.scanner.pass(pid, now);
                }
            }
        }
        Ok(())
    }

    /// Once a second, after the counters were read: the host-wide budget.
    pub(super) fn budget_step(&mut self, now: u64) {
        let Some(host) = &mut self.host else {
            return;
        };
        let c = self.pump.counters();
        let hits = (now, c.uprobe_hits, c.tracepoint_hits);
        let cost = match host.hits {
            Some((t, up, tp)) if now > t => {
                let secs = (now - t) as f64 / 1e9;
                (hits.1.saturating_sub(up) as f64 * crate::agent::stats::UPROBE_HIT_NS
                    + hits.2.saturating_sub(tp) as f64 * crate::agent::stats::TRACEPOINT_HIT_NS)
                    / secs
            }
            _ => 0.0,
        };
        host.hits = Some(hits);
        let mut delta = BTreeMap::new();
        let mut cpu_now = BTreeMap::new();
        for pid in self.probes.pids() {
            if let Some(cpu) = proc::process_cpu_ns(pid) {
                delta.insert(pid, cpu.saturating_sub(*host.cpu.get(&pid).unwrap_or(&cpu)));
                cpu_now.insert(pid, cpu);
            }
        }
        host.cpu = cpu_now;
        for pid in delta.keys() {
            host.attached.entry(*pid).or_insert(now);
        }
        host.attached.retain(|pid, _| delta.contains_key(pid));
        let mut exempt: std::collections::BTreeSet<u32> = host
            .attached
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) < crate::agent::budget::GRACE_NS)
            .map(|(pid, _)| *pid)
            .collect();
        exempt.extend(
            self.pipeline
                .findings()
                .iter()
                .filter(|f| f.state == crate::engine::FindingState::Open)
                .map(|f| f.pid),
        );
        let before = host.budget.sampled();
        let step = host.budget.step(now, cost, &delta, &exempt);
        for pid in host.budget.sampled().difference(&before) {
            eprintln!(
                "tls-probe: probes estimated at {:.2}% of a core, over the {:.2}% budget: pid {pid} ({}) is sampled, traced 1 s in every 10",
                cost / 1e7,
                host.budget.limit_ns_per_sec() / 1e7,
                crate::probe::discover::comm(*pid)
            );
        }
        for pid in step.on.iter().chain(&step.released) {
            self.probes.unsilence(*pid);
        }
        for &pid in &step.off {
            self.probes.silence(pid);
            // A silenced process's escalation window would only cost traps.
            if self.probes.is_hot(pid) {
                let _ = self.probes.set_hot(pid, false);
            }
        }
    }
}
