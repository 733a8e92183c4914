//! What the session knows about the ring buffer it reads: how far behind the reader is, the
//! newest record time, how many events of each probe came, and what was lost (in the kernel,
//! in flight, or undecodable). It owns this state; the session asks it when the engine's
//! clock may move and what to report.

use std::collections::BTreeMap;

use crate::{
    event::Event,
    probe::Counters,
    sink::{Lost, LostRecord},
};

/// While records read in the last 100 ms are this recent, more are on their way.
const RECENT_NS: u64 = 100_000_000;

#[derive(Default)]
pub(super) struct Pump {
    /// The last drain stopped at its batch limit: records older than now are still unread,
    /// so the engine's clock must not be moved to now (it would close findings mid-spin).
    pub behind: bool,
    /// The newest probe record read (its ts), and when it was read (CLOCK_MONOTONIC):
    /// while records keep coming, the engine's clock follows them rather than the wall
    /// clock, which runs ahead of the records still unread.
    last_ring: Option<(u64, u64)>,
    /// Events handled, by probe name, and in all.
    counts: BTreeMap<&'static str, u64>,
    total: u64,
    lost: Lost,
    /// The losses the last `lost` record reported.
    lost_reported: Lost,
    /// The kernel's counters as last read.
    counters: Counters,
}

impl Pump {
    /// A batch whose newest record is `newest`, read at `now`.
    pub fn read(&mut self, newest: u64, now: u64) {
        let seen = self.last_ring.map_or(0, |(ts, _)| ts);
        self.last_ring = Some((newest.max(seen), now));
    }

    pub fn undecodable(&mut self) {
        self.lost.decode += 1;
    }

    /// One event handled, counted under its probe.
    pub fn count(&mut self, probe: &'static str) {
        *self.counts.entry(probe).or_default() += 1;
        self.total += 1;
    }

    /// Where the engine's clock may go at `now`: nowhere while unread records wait; to the
    /// newest record while they keep coming; else to now.
    pub fn engine_time(&self, now: u64) -> Option<u64> {
        if self.behind {
            return None;
        }
        Some(match self.last_ring {
            Some((ts, at)) if now.saturating_sub(at) < RECENT_NS => ts,
            _ => now,
        })
    }

    /// Takes the kernel's counters; returns a `lost` record when anything new was lost.
    pub fn losses(&mut self, counters: Option<Counters>, now: u64) -> Option<LostRecord> {
        if let Some(c) = counters {
            self.counters = c;
        }
        self.lost.ringbuf = self.counters.lost_ringbuf;
        self.lost.inflight = self.counters.lost_inflight;
        let new = self.lost.since(&self.lost_reported);
        if new.sum() == 0 {
            return None;
        }
        self.lost_reported = self.lost;
        Some(LostRecord {
            ts_ns: now,
            new,
            total: self.lost,
        })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn lost(&self) -> Lost {
        self.lost
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn by_probe(&self) -> BTreeMap<String, u64> {
        self.counts
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect()
    }
}

/// The probe an event is counted under.
pub(super) fn probe_of(ev: &Event) -> &'static str {
    if ev.probe == crate::agent::peers::PROBE {
        crate::agent::peers::PROBE
    } else {
        Event::probe_name(&ev.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_clock_waits_while_behind_and_follows_recent_records() {
        let mut p = Pump::default();
        assert_eq!(p.engine_time(5), Some(5), "nothing read: now");
        p.read(1_000, 2_000);
        assert_eq!(p.engine_time(2_000 + RECENT_NS - 1), Some(1_000));
        assert_eq!(p.engine_time(2_000 + RECENT_NS), Some(2_000 + RECENT_NS));
        p.read(500, 3_000);
        assert_eq!(p.engine_time(3_000), Some(1_000), "never backwards");
        p.behind = true;
        assert_eq!(p.engine_time(3_000), None);
    }

    #[test]
    fn losses_are_reported_once_each() {
        let mut p = Pump::default();
        assert!(p.losses(None, 1).is_none());
        p.undecodable();
        let rec = p.losses(None, 2).unwrap();
        assert_eq!((rec.new.decode, rec.total.decode), (1, 1));
        assert!(p.losses(None, 3).is_none());
        let c = Counters {
            lost_ringbuf: 4,
            ..Counters::default()
        };
        let rec = p.losses(Some(c), 4).unwrap();
        assert_eq!(
            (rec.new.ringbuf, rec.total.ringbuf, rec.total.decode),
            (4, 4, 1)
        );
    }
}
