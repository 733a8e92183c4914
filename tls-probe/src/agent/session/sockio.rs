//! When the socket I/O tracepoints are worth their cost outside full mode.
//!
//! They fire on every read and write of every process; on a keep-alive server that is two
//! to four tracepoint hits per request for nothing, unless one of these holds:
//!
//! - a process has its per-call uprobes on (an escalation window): they map each SSL call
//!   to its fd;
//! - handshakes happened in the last [`HANDSHAKE_HOLD_NS`]: inside a handshake call they
//!   read the cleartext ServerHello (version, cipher, TLS 1.3 psk);
//! - a process has more than one thread: two threads doing I/O on one fd is the cheap
//!   sign of one SSL object used concurrently.
//!
//! At attach they are on; the first decision comes with the first tick.

use std::collections::BTreeSet;

use anyhow::Result;

use super::Session;
use crate::event::{Event, EventKind};

/// How long after the last handshake call the tracepoints stay on.
pub const HANDSHAKE_HOLD_NS: u64 = 2_000_000_000;

#[derive(Debug, Default)]
pub(super) struct Gate {
    /// Processes with more than one thread, at the last tick.
    multi_threaded: BTreeSet<u32>,
    /// Event time of the newest handshake call.
    last_handshake_ns: Option<u64>,
}

/// The decision itself.
pub fn wanted(
    any_hot: bool,
    multi_threaded: bool,
    last_handshake_ns: Option<u64>,
    now: u64,
) -> bool {
    any_hot
        || multi_threaded
        || last_handshake_ns.is_some_and(|t| now.saturating_sub(t) < HANDSHAKE_HOLD_NS)
}

impl Gate {
    pub fn observe(&mut self, ev: &Event) {
        if let EventKind::SslCall(c) = &ev.kind
            && c.op.is_handshake()
        {
            self.last_handshake_ns = Some(self.last_handshake_ns.unwrap_or(0).max(ev.ts_ns));
        }
    }

    /// `threads` of `pid` at this tick.
    pub fn threads(&mut self, pid: u32, threads: usize) {
        if threads > 1 {
            self.multi_threaded.insert(pid);
        } else {
            self.multi_threaded.remove(&pid);
        }
    }

    pub fn remove(&mut self, pid: u32) {
        self.multi_threaded.remove(&pid);
    }
}

impl Session {
    /// Attaches or detaches the socket I/O tracepoints as [`wanted`] says (not in full
    /// mode, where they stay on).
    pub(super) fn sockio_step(&mut self, now: u64) -> Result<()> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        let pids = self.probes.pids();
        let traced = |p: &&u32| pids.contains(p);
        let want = wanted(
            pids.iter().any(|&p| self.probes.is_hot(p)),
            gate.multi_threaded.iter().any(|p| traced(&p)),
            gate.last_handshake_ns,
            now,
        );
        if want != self.probes.sockio_on() {
            log::debug!("socket I/O tracepoints {}", if want { "on" } else { "off" });
            self.probes.set_sockio(want)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn on_only_while_they_can_tell_something() {
        // A single-threaded keep-alive server, no handshakes for a while: off.
        assert!(!wanted(false, false, Some(10 * S), 20 * S));
        assert!(!wanted(false, false, None, 20 * S));
        // Each reason alone turns them on.
        assert!(wanted(true, false, None, 20 * S));
        assert!(wanted(false, true, None, 20 * S));
        assert!(wanted(false, false, Some(19 * S), 20 * S));
        // The hold ends HANDSHAKE_HOLD_NS after the last handshake call.
        assert!(wanted(false, false, Some(18 * S + 1), 20 * S));
        assert!(!wanted(false, false, Some(18 * S), 20 * S));
    }
}
