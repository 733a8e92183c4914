//! The life of a finding, which the rules share. A rate finding (busy, spin, saturation,
//! resumption) opens when the rule's numbers pass its opening thresholds, is held (and
//! refreshed) while they pass the keep-open ones, and closes `close_after_ns` after it was
//! last held: [`Life`]. An incident finding (write retry, concurrent use) closes
//! `incident_quiet_ns` after its last occurrence: [`Cx::keep_incident`].

use super::Cx;
use crate::engine::{Evidence, Finding, Severity};

/// One subject's finding (a thread, a connection, a process), if open, and when it was last
/// held.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Life {
    finding: Option<u64>,
    last_held_ns: u64,
}

/// What the rule does this tick.
pub(crate) enum Step {
    /// No finding is open and the numbers pass the opening thresholds: build one and give it
    /// to [`Life::open`] (or do not, if another finding already says it).
    Open,
    /// The finding holds: refresh its numbers.
    Hold(u64),
    /// Nothing to do: no finding and no reason for one, or one whose close timer runs (and
    /// which [`Life::step`] closed if the timer ran out).
    Idle,
}

impl Life {
    pub fn is_open(&self) -> bool {
        self.finding.is_some()
    }

    /// Decides this tick's step from whether the numbers `opens` (pass the opening
    /// thresholds) and `holds` (pass the keep-open ones while the pathology goes on).
    pub fn step(&mut self, cx: &mut Cx<'_>, opens: bool, holds: bool) -> Step {
        match self.finding {
            None if opens => Step::Open,
            None => Step::Idle,
            Some(id) if holds => {
                self.last_held_ns = cx.now;
                Step::Hold(id)
            }
            Some(id) => {
                if cx.now.saturating_sub(self.last_held_ns) >= cx.cfg.close_after_ns {
                    cx.close(id);
                    self.finding = None;
                }
                Step::Idle
            }
        }
    }

    pub fn open(&mut self, cx: &mut Cx<'_>, finding: Finding) {
        self.finding = Some(cx.open(finding));
        self.last_held_ns = cx.now;
    }

    /// The subject went away (a thread exited, a connection was freed): its finding closes.
    pub fn end(&mut self, cx: &mut Cx<'_>) {
        if let Some(id) = self.finding.take() {
            cx.close(id);
        }
    }
}

impl Cx<'_> {
    /// Whether an incident finding (one occurrence and what followed it: a bad write retry,
    /// concurrent use) last seen at `last_ns` is still live; closes it once it has been quiet
    /// for `incident_quiet_ns`.
    pub fn keep_incident(&mut self, finding: u64, last_ns: u64) -> bool {
        let keep = self.now.saturating_sub(last_ns) < self.cfg.incident_quiet_ns;
        if !keep {
            self.close(finding);
        }
        keep
    }

    /// A held finding's newest numbers: what every windowed rule updates.
    pub fn refresh(
        &mut self,
        id: u64,
        severity: Severity,
        evidence: Evidence,
        explanation: String,
        last_seen_ns: u64,
    ) {
        self.update(id, |f| {
            f.severity = severity;
            f.evidence = evidence;
            f.explanation = explanation;
            f.last_seen_ns = last_seen_ns;
        });
    }
}
