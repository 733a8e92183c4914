//! The live agent: attach to targets, pump events from the ring buffer through the
//! tracker and the engine, and hand every record to the sinks until told to stop.

pub mod budget;
pub mod escalate;
mod handoff;
pub mod host;
mod peers;
mod privileges;
pub mod proc;
mod session;
pub mod stats;

pub use session::{AgentConfig, Quit, Session};

pub use crate::sink::{Lost, StopReason, Summary, Target};
