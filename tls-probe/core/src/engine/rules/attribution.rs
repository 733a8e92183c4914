//! Which connection an OpenSSL error raised on a thread is about, from what the probes
//! know at that moment, and how each part was learned: seen in the very call, or inferred
//! from the thread's last connection (the always-on signals).
//!
//! The error probe reads the probed SSL call the thread is inside. With the per-call probes
//! on, that is the failing SSL_write itself: its SSL* and fd are seen. With them off (the
//! default mode between windows, light mode), only the handshake calls are probed, and the
//! connection is the thread's last one: the SSL* of its last probed call (its handshake)
//! and the fd of that connection, or of the socket the thread last connected. A thread that
//! serves many connections makes that a guess; the SSL_free and close() the thread makes
//! next, right after the error, usually name the failing connection, and the rules take
//! them as a better guess (still inferred).

use serde::{Deserialize, Serialize};

use super::LibErrorAt;
use crate::engine::state::State;

/// How a finding's SSL* or fd was learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// Seen: the probed SSL call the error was raised in (the per-call probes were on, or
    /// it was a handshake call).
    SslCallInFlight,
    /// Seen: the record of the SSL call itself (the per-call probes saw the retry).
    SslCall,
    /// Seen earlier: the fd the connection's calls did I/O on.
    ConnectionFd,
    /// Inferred: the SSL* of the last probed SSL call the thread made (with the per-call
    /// probes off, its last handshake).
    ThreadLastConnection,
    /// Inferred: the fd of the socket the thread last connected.
    ThreadLastSocket,
    /// Inferred: the SSL* the thread freed right after the error.
    FreedAfter,
    /// Inferred: the fd the thread closed right after the error.
    ClosedAfter,
}

impl Attribution {
    /// True when the probes saw it, rather than it being inferred.
    pub fn seen(self) -> bool {
        matches!(
            self,
            Self::SslCallInFlight | Self::SslCall | Self::ConnectionFd
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::SslCallInFlight => "seen in the SSL call the error was raised in",
            Self::SslCall => "seen in the SSL call's own record",
            Self::ConnectionFd => "seen in the connection's earlier calls",
            Self::ThreadLastConnection => "inferred: the thread's last SSL connection",
            Self::ThreadLastSocket => "inferred: the socket the thread last connected",
            Self::FreedAfter => "inferred: the SSL* the thread freed right after",
            Self::ClosedAfter => "inferred: the fd the thread closed right after",
        }
    }
}

/// An error's connection, as far as it is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Attributed {
    pub ssl: Option<(u64, Attribution)>,
    pub fd: Option<(i32, Attribution)>,
}

pub(crate) fn attribute(state: &State, e: &LibErrorAt<'_>) -> Attributed {
    let thread = state.threads.get(&(e.pid, e.tid));
    let ssl = match e.ssl {
        Some(ssl) => Some((ssl, Attribution::SslCallInFlight)),
        None => thread
            .and_then(|t| t.last_ssl)
            .map(|ssl| (ssl, Attribution::ThreadLastConnection)),
    };
    let conn_fd = ssl
        .and_then(|(ssl, _)| state.conns.get(&(e.pid, ssl)))
        .and_then(|c| c.fd);
    let fd = match (e.fd, conn_fd) {
        (Some(fd), _) if e.ssl.is_some() => Some((fd, Attribution::SslCallInFlight)),
        (_, Some(fd)) => Some((fd, Attribution::ConnectionFd)),
        _ => thread
            .and_then(|t| t.last_socket)
            .map(|fd| (fd, Attribution::ThreadLastSocket)),
    };
    Attributed { ssl, fd }
}
