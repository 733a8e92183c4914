//! The keys every engine table shares, in a module of their own so that the state and the
//! handshake tables both read them without depending on each other.

/// A connection: (pid, SSL*).
pub(crate) type ConnKey = (u32, u64);
/// A thread: (pid, tid).
pub(crate) type ThreadKey = (u32, u32);
