//! The session's side of call sites (`crate::callsite`): arming a finding's thread in the
//! kernel for a few stacks, and attaching the unwound call sites to the finding records.

use std::sync::OnceLock;

use anyhow::Result;

use super::Session;
use crate::{
    callsite::{ARM_BUDGET, Arming},
    engine::{Change, Finding, FindingChange},
    sink::Record,
};

impl Session {
    /// Before a finding change is sent: arms (or disarms) its thread and attaches the call
    /// sites known so far.
    pub(super) fn with_call_sites(&mut self, f: &mut Finding) {
        match self.call_sites.arming(f) {
            Some(Arming::Arm(tid)) => self.probes.arm_stacks(tid, arm_budget()),
            Some(Arming::Disarm(tid)) => self.probes.arm_stacks(tid, 0),
            None => {}
        }
        self.call_sites.attach(f);
    }

    /// Once a second: an open finding whose call sites gained stacks since it was last sent
    /// is sent again, as an update.
    pub(super) fn send_new_call_sites(&mut self) -> Result<()> {
        for mut finding in self.pipeline.findings() {
            if finding.is_open() && self.call_sites.attach(&mut finding) {
                let change = FindingChange {
                    change: Change::Updated,
                    finding,
                };
                self.out.sinks.record(Record::Finding(&change))?;
            }
        }
        Ok(())
    }
}

/// Stacks per finding: [`ARM_BUDGET`], or `TLS_PROBE_STACK_BUDGET` (0: none), a knob for
/// measuring what the capture costs (README, "Performance").
fn arm_budget() -> u32 {
    static BUDGET: OnceLock<u32> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var("TLS_PROBE_STACK_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ARM_BUDGET)
    })
}
