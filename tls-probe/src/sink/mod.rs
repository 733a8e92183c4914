//! Where the engine's output goes: an NDJSON stream, and human-readable lines.

pub mod human;
pub mod ndjson;
