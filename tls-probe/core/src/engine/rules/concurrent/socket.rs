//! concurrent_ssl_use seen at the socket: what a `SockOverlap` proves, and the evidence
//! that says which parts were seen and which inferred (see the module above).

use super::{ConcurrentEvidence, Conn, Latest, OverlapSeen, sys_name};
use crate::{engine::rules::Cx, event::SockOverlap};

/// The overlap as concurrent use of one connection, or None when the fd is not known to
/// carry TLS (then it is no proof).
pub(super) fn overlap(
    cx: &Cx<'_>,
    pid: u32,
    tid: u32,
    ts: u64,
    o: &SockOverlap,
) -> Option<(Latest, Conn)> {
    if o.tid_a == tid {
        return None;
    }
    let known = cx.state.ssl_of_fd(pid, Some(o.fd));
    let in_handshake = o.ssl_a.or(o.ssl_b);
    let record = o
        .record_b
        .map(|t| (tid, o.sys_b, t))
        .or(o.record_a.map(|t| (o.tid_a, o.sys_a, t)));
    let ssl = known.or(in_handshake);
    if ssl.is_none() && record.is_none() {
        // Not known to carry TLS: not proof (the shared-fd signal may open a window).
        return None;
    }
    let mut seen = vec![format!(
        "tid {} entered {}(fd {}) while tid {}'s {}(fd {}), entered {} us before, had not \
         returned (socket I/O tracepoints)",
        tid,
        sys_name(Some(o.sys_b)),
        o.fd,
        o.tid_a,
        sys_name(Some(o.sys_a)),
        o.fd,
        ts.saturating_sub(o.a_since_ns) / 1000
    )];
    let mut inferred = Vec::new();
    if let Some((t, sys, rec)) = record {
        seen.push(format!(
            "tid {t}'s {}'s buffer starts with a TLS {} record header",
            sys_name(Some(sys)),
            record_name(rec)
        ));
    }
    for (t, s) in [(o.tid_a, o.ssl_a), (tid, o.ssl_b)] {
        if let Some(s) = s {
            seen.push(format!(
                "tid {t} was inside a handshake call on SSL* {s:#x}"
            ));
        }
    }
    if let Some(k) = known {
        seen.push(format!(
            "fd {} is the socket of SSL* {k:#x}, seen in its earlier SSL calls",
            o.fd
        ));
    }
    inferred.push(match ssl {
        Some(s) => format!(
            "both syscalls were made by libssl inside SSL calls on SSL* {s:#x} (nothing \
             else reads or writes a TLS connection's socket): two SSL calls on it were in \
             flight at once"
        ),
        None => format!(
            "both syscalls were made by libssl inside SSL calls on the one SSL* that uses \
             fd {} (its SSL* was not seen: the connection predates the probes): two SSL \
             calls on it were in flight at once",
            o.fd
        ),
    });
    let n = 1 + u64::from(o.suppressed);
    let ev = ConcurrentEvidence {
        overlaps: n,
        per_call_overlaps: 0,
        socket_overlaps: n,
        connections: 0,
        seen_at: OverlapSeen::AtSocket,
        tid_a: o.tid_a,
        op_a: None,
        tid_b: tid,
        op_b: None,
        sys_a: Some(o.sys_a),
        sys_b: Some(o.sys_b),
        overlap_ns: None,
        a_in_flight_ns: Some(ts.saturating_sub(o.a_since_ns)),
        max_overlap_ns: 0,
        seen,
        inferred,
    };
    let conn = match ssl {
        Some(s) => Conn::Ssl(pid, s),
        None => Conn::Fd(pid, o.fd),
    };
    let l = Latest {
        pid,
        tid,
        ts,
        first_ns: ts,
        end_ns: ts,
        ssl,
        fd: Some(o.fd),
        ev,
    };
    Some((l, conn))
}

/// A TLS record content type's name.
fn record_name(t: u8) -> String {
    match t {
        20 => "change_cipher_spec".to_owned(),
        21 => "alert".to_owned(),
        22 => "handshake".to_owned(),
        23 => "application_data".to_owned(),
        24 => "heartbeat".to_owned(),
        t => format!("type {t}"),
    }
}
