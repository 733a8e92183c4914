//! The kernel side, seen from userspace: find the TLS library, load and attach the eBPF
//! programs, and read their ring buffer and counters.

pub mod discover;
pub mod loader;

pub use discover::{TlsLibrary, find_tls_library, library_at};
pub use loader::{Counters, Probes};
