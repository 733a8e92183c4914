//! The engine is deterministic: the same events give the same findings, with the same ids,
//! in the same order, in every run. `tls-probe report` relies on it to replay a recording
//! to what the live run found, and the order of findings opened in one tick must not come
//! from a hash seed.

use super::*;

/// What a change is about: the change, the kind, the thread, the fd and the finding's id.
type Seen = (Change, FindingKind, Option<u32>, Option<i32>, u64);

/// Twelve threads that each poll with a zero timeout, and twelve connections that each
/// spin, all at once: every finding opens in the same few ticks.
fn many_at_once() -> Vec<Seen> {
    let mut sim = Sim::new();
    sim.every(200 * US, 3 * SEC, |s| {
        for i in 0..12 {
            s.wait(TID + 100 + i, Some(0), US, vec![]);
        }
        for i in 0..12 {
            s.spin_once(TID + 200 + i, 0x1000 + u64::from(i), 40 + i as i32);
        }
    });
    sim.idle(10 * SEC);
    sim.changes
        .iter()
        .map(|(_, c)| {
            let f = &c.finding;
            (c.change, f.kind, f.tid, f.fd, f.id)
        })
        .collect()
}

#[test]
fn the_same_events_give_the_same_findings_in_the_same_order() {
    let first = many_at_once();
    let opened = |kind| {
        first
            .iter()
            .filter(|c| c.0 == Change::Opened && c.1 == kind)
            .count()
    };
    // The case is one where order could vary: many findings of each kind.
    assert!(opened(FindingKind::BusyEpollLoop) >= 6, "{first:?}");
    assert!(opened(FindingKind::SpinLoop) >= 6, "{first:?}");
    for _ in 0..4 {
        assert_eq!(many_at_once(), first);
    }
}
