//! The findings: open ones by id, recently closed ones in a bounded queue, and the rule that
//! decides when a change is worth emitting.

use std::collections::{BTreeMap, VecDeque};

use super::{
    config::Config,
    finding::{Change, Finding, FindingChange, FindingKind, FindingState, Peak},
};

struct Entry {
    finding: Finding,
    /// The finding as last emitted, to judge whether a change is material.
    emitted: Finding,
    emitted_ns: u64,
}

#[derive(Default)]
pub(crate) struct FindingStore {
    next_id: u64,
    open: BTreeMap<u64, Entry>,
    closed: VecDeque<Finding>,
    /// Closed findings dropped (the oldest first) to keep `max_closed_findings`.
    pub evicted_closed: u64,
}

impl FindingStore {
    /// Records `finding` as open and emits `Opened`. Returns its id.
    pub fn open(&mut self, now: u64, mut finding: Finding, out: &mut Vec<FindingChange>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        finding.id = id;
        finding.kind = finding.evidence.kind();
        finding.state = FindingState::Open;
        finding.closed_ns = None;
        finding.peak = finding.kind.windowed().then(|| Peak {
            ts_ns: now,
            evidence: finding.evidence.clone(),
        });
        out.push(FindingChange {
            change: Change::Opened,
            finding: finding.clone(),
        });
        self.open.insert(
            id,
            Entry {
                emitted: finding.clone(),
                finding,
                emitted_ns: now,
            },
        );
        id
    }

    /// Applies `f` to open finding `id`, then emits `Updated` if `force`, or if the change is
    /// material: the severity changed, or, `update_min_gap_ns` after the last emission, the
    /// headline number moved by `update_min_change_pct`, or `update_min_interval_ns` passed
    /// and the finding was seen since.
    pub fn update(
        &mut self,
        id: u64,
        now: u64,
        cfg: &Config,
        out: &mut Vec<FindingChange>,
        force: bool,
        f: impl FnOnce(&mut Finding),
    ) {
        let Some(e) = self.open.get_mut(&id) else {
            return;
        };
        f(&mut e.finding);
        let fi = &mut e.finding;
        if let Some(peak) = &mut fi.peak
            && fi.evidence.worse_than(&peak.evidence)
        {
            *peak = Peak {
                ts_ns: now,
                evidence: fi.evidence.clone(),
            };
        }
        let old = e.emitted.evidence.headline();
        let new = e.finding.evidence.headline();
        let moved =
            (new - old).abs() >= old.abs() * cfg.update_min_change_pct / 100.0 && new != old;
        let since = now.saturating_sub(e.emitted_ns);
        let periodic =
            since >= cfg.update_min_interval_ns && e.finding.last_seen_ns > e.emitted.last_seen_ns;
        let due = since >= cfg.update_min_gap_ns && (moved || periodic);
        if force || due || e.finding.severity != e.emitted.severity {
            e.emitted = e.finding.clone();
            e.emitted_ns = now;
            out.push(FindingChange {
                change: Change::Updated,
                finding: e.finding.clone(),
            });
        }
    }

    /// Changes open finding `id` without emitting anything (e.g. just before closing it).
    pub fn modify(&mut self, id: u64, f: impl FnOnce(&mut Finding)) {
        if let Some(e) = self.open.get_mut(&id) {
            f(&mut e.finding);
        }
    }

    /// Closes open finding `id` and emits `Closed` with its latest state.
    pub fn close(&mut self, id: u64, now: u64, cfg: &Config, out: &mut Vec<FindingChange>) {
        let Some(e) = self.open.remove(&id) else {
            return;
        };
        let mut finding = e.finding;
        finding.state = FindingState::Closed;
        finding.closed_ns = Some(now);
        out.push(FindingChange {
            change: Change::Closed,
            finding: finding.clone(),
        });
        self.closed.push_back(finding);
        while self.closed.len() > cfg.max_closed_findings {
            self.closed.pop_front();
            self.evicted_closed += 1;
        }
    }

    /// The kind of open finding `id`.
    pub fn open_kind(&self, id: u64) -> Option<FindingKind> {
        self.open.get(&id).map(|e| e.finding.kind)
    }

    /// The process of open finding `id`.
    pub fn open_pid(&self, id: u64) -> Option<u32> {
        self.open.get(&id).map(|e| e.finding.pid)
    }

    /// True when an open finding of `kind` satisfies `pred`.
    pub fn any_open(&self, kind: FindingKind, pred: impl Fn(&Finding) -> bool) -> bool {
        self.open
            .values()
            .any(|e| e.finding.kind == kind && pred(&e.finding))
    }

    /// Open finding `id`.
    pub fn open_finding(&self, id: u64) -> Option<&Finding> {
        self.open.get(&id).map(|e| &e.finding)
    }

    /// The open findings of `kind` that satisfy `pred`, in id order.
    pub fn open_of(&self, kind: FindingKind, pred: impl Fn(&Finding) -> bool) -> Vec<&Finding> {
        self.open
            .values()
            .map(|e| &e.finding)
            .filter(|f| f.kind == kind && pred(f))
            .collect()
    }

    /// The ids of the open findings of `kind` that satisfy `pred`, in order.
    pub fn open_ids(&self, kind: FindingKind, pred: impl Fn(&Finding) -> bool) -> Vec<u64> {
        self.open
            .iter()
            .filter(|(_, e)| e.finding.kind == kind && pred(&e.finding))
            .map(|(id, _)| *id)
            .collect()
    }

    /// All findings kept, open and closed, by id.
    pub fn all(&self) -> Vec<Finding> {
        let mut v: Vec<Finding> = self
            .closed
            .iter()
            .cloned()
            .chain(self.open.values().map(|e| e.finding.clone()))
            .collect();
        v.sort_by_key(|f| f.id);
        v
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }
}
