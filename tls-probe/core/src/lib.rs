//! The pure core of tls-probe: everything between the wire bytes and the records the sinks
//! receive, with no kernel, terminal or async runtime in sight.
//!
//! ```text
//! decode   wire bytes -> event::Event (the only reader of the repr(C) records)
//! track    fills in fds: epoll data -> fd, SSL* -> fd
//! engine   events in, metrics and findings out; time is the events' own clock
//! record   the output schema: what every sink receives and an NDJSON export holds
//! pipeline track -> engine, the one step both the live agent and `report` drive
//! replay   an NDJSON export -> its records; its events through a fresh pipeline
//! ```
//!
//! This crate depends on no aya, tokio, ratatui or OpenSSL, so Cargo keeps the flow one way:
//! the agent (probes, ring buffer, /proc) feeds it, and the sinks read what it returns.

pub mod bounds;
pub mod decode;
pub mod engine;
pub mod event;
pub mod pipeline;
pub mod record;
pub mod replay;
pub mod track;

pub use pipeline::Pipeline;
