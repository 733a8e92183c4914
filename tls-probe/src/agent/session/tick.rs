//! The session's once-a-second work: losses, target liveness, new descendants, thread CPU,
//! the engine's clock, a snapshot and the probes' rates.

use anyhow::Result;

use super::Session;
use crate::{
    agent::{proc, stats::Sample},
    event::{Event, EventKind},
    sink::{Flush, Record},
};

impl Session {
    /// Reads the kernel's loss counters; sends a `lost` record when anything new was lost.
    pub(super) fn report_lost(&mut self, now: u64) -> Result<()> {
        match self.pump.losses(self.probes.counters().ok(), now) {
            Some(rec) => self.out.sinks.record(Record::Lost(&rec)),
            None => Ok(()),
        }
    }

    /// Once a second: losses, target liveness, new descendants, thread CPU, the engine's
    /// clock, a snapshot.
    pub(super) fn tick(&mut self) -> Result<bool> {
        let now = proc::monotonic_ns();
        self.report_lost(now)?;
        self.budget_step(now);
        if let Some(gate) = &mut self.gate {
            gate.measure(now, self.pump.counters().sockio_calls);
        }
        for pid in self.probes.pids() {
            if self.has_exited(pid) || !proc::alive(pid) {
                self.target_exited(pid, now)?;
                continue;
            }
            let threads = proc::thread_cpu(pid, now);
            if let Some(gate) = &mut self.gate {
                gate.threads(pid, threads.len());
            }
            for ev in threads {
                self.handle(ev)?;
            }
        }
        self.adopt_children(now)?;
        self.adopt_late(now)?;
        if let Some(&pid) = self.probes.pids().first()
            && let Some(total) = proc::listen_overflows(pid)
        {
            self.handle(Event::new(
                now,
                pid,
                0,
                EventKind::ListenOverflows { total },
            ))?;
        }
        // While unread records older than now wait in the ring buffer, event time is behind
        // the wall clock: advancing to now would close findings that are still going on.
        // Records read in the last 100 ms: more are on their way, as old as those; the clock
        // goes to the newest read. Otherwise the probes are quiet: to now.
        if let Some(to) = self.pump.engine_time(now) {
            self.pipeline.advance(to);
        }
        self.emit_changes()?;
        self.send_new_call_sites()?;
        self.out.sinks.record(Record::Snapshot(&self.snapshot()))?;
        self.send_stats(now);
        self.out.sinks.flush(Flush::Tick)?;
        self.sockio_step(now)?;
        self.detach_exited();
        Ok(!self.probes.pids().is_empty() || self.late.waiting() || self.host.is_some())
    }

    /// Rates since the last call, to the sinks that show them live. Call after
    /// `report_lost`, which reads the kernel's counters.
    pub(super) fn send_stats(&mut self, now: u64) {
        let c = self.pump.counters();
        let sample = Sample {
            ts_ns: now,
            events: self.pump.total(),
            lost_total: self.pump.lost().sum(),
            uprobe_hits: c.uprobe_hits,
            tracepoint_hits: c.tracepoint_hits,
            cpu_ns: self
                .probes
                .pids()
                .into_iter()
                .filter_map(|pid| Some((pid, proc::process_cpu_ns(pid)?)))
                .collect(),
        };
        let stats = self.out.meter.next(sample);
        self.out.sinks.stats(&stats);
        self.out.last_stats = stats;
    }
}
