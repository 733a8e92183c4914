//! The correlation engine.
