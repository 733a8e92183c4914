//! tls-probe: an eBPF profiler for TLS event loops.
//!
//! The data takes one path:
//!
//! ```text
//! probe (load + attach the eBPF programs, read the ring buffer)
//!   -> decode  (wire bytes -> event::Event; the only place that reads repr(C) records)
//!   -> track   (fills in fds: epoll data -> fd, SSL* -> fd)
//!   -> engine  (pure: events in, metrics and findings out)
//!   -> sink    (NDJSON file, human lines, Prometheus endpoint, TUI)
//!
//! replay  (an NDJSON export -> its records; events -> track -> engine again, for `report`)
//! ```

pub mod agent;
pub mod bounds;
pub mod cli;
pub mod cmd;
pub mod decode;
pub mod engine;
pub mod event;
pub mod probe;
pub mod replay;
pub mod sink;
pub mod track;
pub mod tui;
