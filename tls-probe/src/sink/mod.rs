//! Where the engine's output goes. The session hands every [`Record`] to each [`Sink`] in
//! one place ([`Sinks`]); each sink decides what it shows: the NDJSON export, the human
//! lines on stderr, the Prometheus endpoint, and later the TUI. No sink holds detection
//! logic: findings and metrics come from the engine.

pub mod human;
pub mod metrics;
pub mod metrics_http;
pub mod ndjson;
pub mod record;

use anyhow::Result;

pub use self::record::{
    ClockAnchor, Lost, LostRecord, OwnedRecord, Record, SCHEMA_VERSION, Start, StopReason, Summary,
    Target, TargetExit,
};

/// When the session asks the sinks to make their output visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// The end of a ring-buffer batch: readers of a pipe or terminal should see the lines now.
    Batch,
    /// Once a second, and after `start`.
    Tick,
}

/// A consumer of the session's records. `record` is called for every event with `--events`
/// (hundreds of thousands a second): it must not allocate or make a syscall per event.
pub trait Sink {
    fn record(&mut self, rec: Record<'_>) -> Result<()>;

    fn flush(&mut self, _at: Flush) -> Result<()> {
        Ok(())
    }

    /// Whether this sink looks at `Record::Event`s; when none does, events are not handed out.
    fn wants_events(&self) -> bool {
        false
    }
}

/// The sinks of one session, fed from one place.
#[derive(Default)]
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
    events: bool,
}

impl Sinks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, sink: Box<dyn Sink>) {
        self.events |= sink.wants_events();
        self.sinks.push(sink);
    }

    pub fn with(mut self, sink: impl Sink + 'static) -> Self {
        self.push(Box::new(sink));
        self
    }

    pub fn wants_events(&self) -> bool {
        self.events
    }

    /// Hands `rec` to every sink, even after one fails; returns the first error.
    pub fn record(&mut self, rec: Record<'_>) -> Result<()> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            if let Err(e) = s.record(rec)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    pub fn flush(&mut self, at: Flush) -> Result<()> {
        let mut first = Ok(());
        for s in &mut self.sinks {
            if let Err(e) = s.flush(at)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}
