//! The kernel side, seen from userspace: find the TLS library, load and attach the eBPF
//! programs, and read their ring buffer and counters.

pub mod discover;
pub mod embedded;
pub mod inventory;
pub mod loader;
pub mod placement;

pub use discover::{CryptoLibrary, TlsLibrary, find_crypto, find_tls_library, library_at};
pub use loader::{Counters, LinkKind, Probes};
