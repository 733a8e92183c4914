//! The one step from a decoded event to the engine's findings: the tracker fills in the
//! event's fds, then the engine ingests it. The live agent and `tls-probe report` both drive
//! this type, so a recording analysed again goes through exactly what the live run did.

use crate::{
    engine::{Config, Engine, Finding, FindingChange, Snapshot},
    event::Event,
    track::Tracker,
};

/// Tracker + engine, and the finding changes they produced that nobody has taken yet.
pub struct Pipeline {
    tracker: Tracker,
    engine: Engine,
    changes: Vec<FindingChange>,
}

impl Pipeline {
    pub fn new(config: Config) -> Self {
        Self {
            tracker: Tracker::new(),
            engine: Engine::new(config),
            changes: Vec::new(),
        }
    }

    /// One event through the pipeline. `observe` sees the event once its fds are filled in,
    /// before the engine ingests it (the agent's per-event bookkeeping and the NDJSON event
    /// line go there, so an event's line comes before the finding it opens); an error from it
    /// stops the event before the engine.
    pub fn push<E>(
        &mut self,
        ev: &mut Event,
        observe: impl FnOnce(&Event, &Engine) -> Result<(), E>,
    ) -> Result<(), E> {
        self.tracker.process(ev);
        observe(ev, &self.engine)?;
        self.engine.ingest(ev, &mut self.changes);
        Ok(())
    }

    /// Moves the engine's clock to `now_ns` (a tick, a snapshot, the end of a run): rate
    /// windows close and findings that went quiet close.
    pub fn advance(&mut self, now_ns: u64) {
        self.engine.advance(now_ns, &mut self.changes);
    }

    /// The finding changes made since the last call, in the order the engine made them.
    pub fn take_changes(&mut self) -> std::vec::Drain<'_, FindingChange> {
        self.changes.drain(..)
    }

    pub fn set_comm(&mut self, pid: u32, comm: &str) {
        self.engine.set_comm(pid, comm);
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// For seeding epoll registrations read from /proc at attach time.
    pub fn tracker_mut(&mut self) -> &mut Tracker {
        &mut self.tracker
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn findings(&self) -> Vec<Finding> {
        self.engine.findings()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.engine.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;

    #[test]
    fn observe_sees_the_event_before_the_engine_and_an_error_stops_it() {
        let mut p = Pipeline::new(Config::default());
        let mut ev = Event::new(1_000, 7, 7, EventKind::Close { fd: 5, ret: 0 });
        let mut seen = 0;
        let r: Result<(), &str> = p.push(&mut ev, |_, engine| {
            seen += 1;
            assert_eq!(engine.now_ns(), 0, "the engine has not ingested it yet");
            Err("stop")
        });
        assert_eq!(r, Err("stop"));
        assert_eq!(seen, 1);
        assert_eq!(p.engine().now_ns(), 0);
        p.push(&mut ev, |_, _| Ok::<(), ()>(())).unwrap();
        assert_eq!(p.engine().now_ns(), 1_000);
    }
}
