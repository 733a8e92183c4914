//! Metrics as of now, per process, thread and connection, in the form every sink reads.

use serde::{Deserialize, Serialize};

use super::{
    epoll_bits,
    handshake::{self, HandshakeSnapshot, NewConnectionsSnapshot, TimeShareSnapshot},
    state::{Conn, ConnKey, State, Thread, ThreadKey},
};
use crate::event::{SslErrorCode, SslOp};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub now_ns: u64,
    pub processes: Vec<ProcessSnapshot>,
    pub threads: Vec<ThreadSnapshot>,
    pub connections: Vec<ConnSnapshot>,
    pub open_findings: usize,
    pub evicted_connections_total: u64,
    pub evicted_threads_total: u64,
    /// SSL_get_error answers that matched no failing call.
    pub unmatched_ssl_errors_total: u64,
    /// The kernel's listen-queue overflows (TcpExtListenOverflows, host-wide) since the first
    /// sample after attach; None before any sample.
    pub listen_overflows_total: Option<u64>,
    /// What is probed and what it costs, as the agent reports it (None in a replay).
    #[serde(default)]
    pub probes: Option<crate::record::ProbeStatus>,
    /// What the other bounded tables dropped because they were full (the engine's here,
    /// the tracker's and the agent's added by the agent).
    #[serde(default)]
    pub evicted: crate::bounds::Evicted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessSnapshot {
    pub pid: u32,
    pub comm: Option<String>,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub threads: usize,
    pub connections_open: usize,
    pub connections_total: u64,
    pub connections_freed_total: u64,
    pub ssl_calls_total: u64,
    pub read_bytes_total: u64,
    pub written_bytes_total: u64,
    pub want_read_total: u64,
    pub want_write_total: u64,
    pub failed_total: u64,
    pub handshakes_total: u64,
    pub wakeups_total: u64,
    pub wakeups_no_progress_total: u64,
    /// Handshakes of the process; None before its first.
    pub handshakes: Option<HandshakeSnapshot>,
    /// Connections whose handshake start was seen, their rate and lifetime, per peer.
    pub new_connections: Option<NewConnectionsSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadSnapshot {
    pub pid: u32,
    pub tid: u32,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// CPU use between the last two samples, in percent of one core.
    pub cpu_pct: Option<f64>,
    pub wakeups_per_sec: f64,
    pub wakeups_no_progress_per_sec: f64,
    pub ssl_calls_per_sec: f64,
    pub wakeups_total: u64,
    pub wakeups_no_progress_total: u64,
    pub immediate_wakeups_total: u64,
    pub ssl_calls_total: u64,
    /// The wait that started the current iteration; None for a thread not seen in epoll.
    pub last_wait: Option<WaitSnapshot>,
    /// Handshakes of the thread; None for a thread that made no SSL call.
    pub handshakes: Option<HandshakeSnapshot>,
    /// Where the thread's wall time went over the recent window; None for a thread that
    /// made no SSL call.
    pub time_share: Option<TimeShareSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaitSnapshot {
    pub returned_ns: u64,
    /// None means "block forever".
    pub timeout_ns: Option<i64>,
    pub blocked_ns: u64,
    pub ret: i64,
    pub ready: Vec<ReadySnapshot>,
    /// SSL calls made since the wait returned, and whether any made progress.
    pub ssl_calls: u32,
    pub progress: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadySnapshot {
    pub fd: Option<i32>,
    pub events: String,
    pub interest: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnSnapshot {
    pub pid: u32,
    pub ssl: u64,
    pub fd: Option<i32>,
    /// The fd was closed; the SSL* has not been freed yet.
    pub closed: bool,
    pub peer: Option<String>,
    /// The thread of the last call.
    pub tid: u32,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub read_bytes_total: u64,
    pub written_bytes_total: u64,
    pub want_read_total: u64,
    pub want_write_total: u64,
    pub last_want: Option<SslErrorCode>,
    /// A handshake call completed, or application data moved.
    pub handshake_done: bool,
    /// "full" or "resumed" once the handshake completed, as classified by key operations.
    pub handshake_kind: Option<String>,
    /// Negotiated, from the cleartext ServerHello ("TLS 1.3"); None when it was not seen
    /// (a handshake before attach, or one run inside SSL_read/SSL_write).
    pub tls_version: Option<String>,
    /// The cipher suite's IANA name, or "0xC0AD" when not in the name table; None likewise.
    pub cipher: Option<String>,
    /// Per op, only the ops called.
    pub ops: Vec<OpSnapshot>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpSnapshot {
    pub op: SslOp,
    pub calls_total: u64,
    pub progress_total: u64,
    pub want_read_total: u64,
    pub want_write_total: u64,
    pub want_other_total: u64,
    pub failed_total: u64,
    pub transferred_bytes_total: u64,
}

pub(crate) fn build(state: &State, now: u64, open_findings: usize) -> Snapshot {
    let mut pids: Vec<u32> = state.procs.keys().copied().collect();
    pids.sort_unstable();
    let processes = pids
        .iter()
        .map(|&pid| {
            let p = &state.procs[&pid];
            let hs = state.hs.procs.get(&pid);
            ProcessSnapshot {
                pid,
                comm: state.comm(pid).map(str::to_owned),
                first_seen_ns: p.first_seen_ns,
                last_seen_ns: p.last_seen_ns,
                threads: state.threads.keys().filter(|k| k.0 == pid).count(),
                connections_open: state.conns.keys().filter(|k| k.0 == pid).count(),
                connections_total: p.connections_total,
                connections_freed_total: p.connections_freed_total,
                ssl_calls_total: p.ssl_calls_total,
                read_bytes_total: p.bytes_read_total,
                written_bytes_total: p.bytes_written_total,
                want_read_total: p.want_read_total,
                want_write_total: p.want_write_total,
                failed_total: p.failed_total,
                handshakes_total: p.handshakes_total,
                wakeups_total: p.wakeups_total,
                wakeups_no_progress_total: p.wakeups_no_progress_total,
                handshakes: hs.map(|h| handshake::side_snapshot(&h.side, now)),
                new_connections: hs.map(|h| handshake::new_connections(h, now)),
            }
        })
        .collect();

    let mut tkeys: Vec<ThreadKey> = state.threads.keys().copied().collect();
    tkeys.sort_unstable();
    let threads = tkeys
        .iter()
        .map(|&k| thread(state, k, &state.threads[&k], now))
        .collect();

    let mut ckeys: Vec<ConnKey> = state.conns.keys().copied().collect();
    ckeys.sort_unstable();
    let connections = ckeys
        .iter()
        .map(|&k| conn(state, k, &state.conns[&k]))
        .collect();

    Snapshot {
        now_ns: now,
        processes,
        threads,
        connections,
        open_findings,
        evicted_connections_total: state.evicted_connections_total,
        evicted_threads_total: state.evicted_threads_total,
        unmatched_ssl_errors_total: state.unmatched_ssl_errors_total,
        listen_overflows_total: state.hs.overflows.map(|o| o.since_attach()),
        probes: None,
        evicted: crate::bounds::Evicted {
            peers: state.evicted_peers,
            server_hellos: state.hs.evicted_hellos,
            ..Default::default()
        },
    }
}

fn thread(state: &State, (pid, tid): ThreadKey, t: &Thread, now: u64) -> ThreadSnapshot {
    let hs = state.hs.threads.get(&(pid, tid));
    let s = t.window.summary(now, |_| true).total;
    let secs = t.window.span_secs();
    let it = &t.lp.iter;
    let last_wait = (it.active && it.epoll).then(|| WaitSnapshot {
        returned_ns: it.started_ns,
        timeout_ns: it.timeout_ns,
        blocked_ns: it.blocked_ns,
        ret: it.ret,
        ready: it
            .ready
            .iter()
            .map(|r| ReadySnapshot {
                fd: r.fd,
                events: epoll_bits::names(r.events),
                interest: r.interest.map(epoll_bits::names),
            })
            .collect(),
        ssl_calls: it.calls,
        progress: it.progress,
    });
    ThreadSnapshot {
        pid,
        tid,
        first_seen_ns: t.first_seen_ns,
        last_seen_ns: t.last_seen_ns,
        cpu_pct: t.cpu_pct,
        wakeups_per_sec: f64::from(s.wakeups) / secs,
        wakeups_no_progress_per_sec: f64::from(s.no_progress) / secs,
        ssl_calls_per_sec: f64::from(s.calls) / secs,
        wakeups_total: t.wakeups_total,
        wakeups_no_progress_total: t.no_progress_total,
        immediate_wakeups_total: t.immediate_total,
        ssl_calls_total: t.ssl_calls_total,
        last_wait,
        handshakes: hs.map(|h| handshake::side_snapshot(h, now)),
        time_share: hs.map(|h| handshake::time_share(h, now)),
    }
}

fn conn(state: &State, (pid, ssl): ConnKey, c: &Conn) -> ConnSnapshot {
    let ops = SslOp::ALL
        .iter()
        .zip(c.ops.iter())
        .filter(|(_, s)| s.calls > 0)
        .map(|(&op, s)| OpSnapshot {
            op,
            calls_total: s.calls,
            progress_total: s.progress,
            want_read_total: s.want_read,
            want_write_total: s.want_write,
            want_other_total: s.want_other,
            failed_total: s.failed,
            transferred_bytes_total: s.bytes,
        })
        .collect();
    ConnSnapshot {
        pid,
        ssl,
        fd: c.fd,
        closed: c.closed,
        peer: state.peer(pid, c.fd).map(str::to_owned),
        tid: c.tid,
        first_seen_ns: c.first_seen_ns,
        last_seen_ns: c.last_seen_ns,
        read_bytes_total: c.bytes_read,
        written_bytes_total: c.bytes_written,
        want_read_total: c.want_read,
        want_write_total: c.want_write,
        last_want: c.last_want,
        handshake_done: c.handshake_done,
        handshake_kind: state
            .hs
            .full((pid, ssl))
            .map(|full| if full { "full" } else { "resumed" }.to_owned()),
        tls_version: state
            .hs
            .hello((pid, ssl))
            .map(|h| handshake::names::version_name(h.version)),
        cipher: state
            .hs
            .hello((pid, ssl))
            .map(|h| handshake::names::cipher_name(h.cipher)),
        ops,
    }
}
