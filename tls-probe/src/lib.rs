//! tls-probe: an eBPF profiler for TLS event loops.
//!
//! The data takes one path:
//!
//! ```text
//! probe  (load + attach the eBPF programs, read the ring buffer)             this crate
//!   -> decode  (wire bytes -> event::Event; the only reader of repr(C) records) tls-probe-core
//!   -> track   (fills in fds: epoll data -> fd, SSL* -> fd)                   tls-probe-core
//!   -> engine  (pure: events in, metrics and findings out)                    tls-probe-core
//!   -> sink    (NDJSON file, human lines, Prometheus endpoint, TUI)           this crate
//!
//! replay  (an NDJSON export -> its records; its events through the same
//!          tls_probe_core::Pipeline the live session drives, for `report`)
//! ```

pub mod agent;
pub mod callsite;
pub mod cli;
pub mod cmd;
pub mod probe;
pub mod sink;
pub mod tui;

// The pure core (tls-probe/core): decode, track, engine, the record schema and the pipeline.
// Re-exported under their old paths so that the agent and the sinks read `crate::engine`.
pub use tls_probe_core::{Pipeline, bounds, decode, engine, event, pipeline, replay, track};
