//! Where the engine's output goes. The session hands every [`Record`] to each [`Sink`] in
//! one place ([`Sinks`]); each sink decides what it shows: the NDJSON export, the human
//! lines on stderr, the Prometheus endpoint, and the dashboard. No sink holds detection
//! logic: findings and metrics come from the engine.

pub mod human;
pub mod metrics;
pub mod metrics_http;
pub mod ndjson;
pub mod tui;

use anyhow::Result;
pub use tls_probe_core::record;

pub use self::record::{
    ClockAnchor, Lost, LostRecord, OwnedRecord, Record, SCHEMA_VERSION, Start, StopReason, Summary,
    Target, TargetAttach, TargetExit, UprobeLinks,
};

/// When the session asks the sinks to make their output visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// The end of a ring-buffer batch: readers of a pipe or terminal should see the lines now.
    Batch,
    /// Once a second, and after `start`.
    Tick,
}

/// How the probes are doing, once a second: for sinks that show it live. Not an NDJSON
/// record: the export's `summary` holds the counts these rates come from.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProbeStats {
    pub ts_ns: u64,
    /// Events read from the ring buffer per second, over the last tick.
    pub events_per_sec: f64,
    /// Events lost so far, everywhere (ring buffer, in-flight state, decode).
    pub lost_total: u64,
    /// The probes' estimated share of the targets' CPU time over the last tick, in percent;
    /// None until two samples exist or when no target is left.
    pub overhead_pct: Option<f64>,
    /// Probe hits per second over the last tick, counted in the kernel.
    pub uprobe_hits_per_sec: f64,
    pub tracepoint_hits_per_sec: f64,
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

    /// Once a second, after the snapshot.
    fn stats(&mut self, _stats: &ProbeStats) {}

    /// Another sink (the dashboard) owns the terminal now: write nothing more to it.
    fn quiet(&mut self) {}
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

    pub fn stats(&mut self, stats: &ProbeStats) {
        for s in &mut self.sinks {
            s.stats(stats);
        }
    }

    pub fn quiet(&mut self) {
        for s in &mut self.sinks {
            s.quiet();
        }
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
