//! What the engine remembers: connections keyed by (pid, SSL*) and mapped to their fd,
//! threads with their event loop, processes with their totals.

use rustc_hash::{FxHashMap, FxHashSet};

pub(crate) use super::keys::{ConnKey, ThreadKey};
use super::{
    config::Config,
    handshake::HsState,
    iteration::LoopState,
    window::{Counts, Window},
};
use crate::event::{SslCall, SslErrorCode, SslOp};

/// Calls and results of one op on one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OpStats {
    pub calls: u64,
    /// Moved bytes or completed a handshake.
    pub progress: u64,
    pub want_read: u64,
    pub want_write: u64,
    /// Other WANT_* answers (async, x509 lookup, ...).
    pub want_other: u64,
    /// Failed with an error, or with a code that could not be told.
    pub failed: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub fd: Option<i32>,
    /// The fd was closed; the SSL* lives until SSL_free.
    pub closed: bool,
    /// The thread of the last call.
    pub tid: u32,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub ops: [OpStats; SslOp::ALL.len()],
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub want_read: u64,
    pub want_write: u64,
    pub last_want: Option<SslErrorCode>,
    /// A handshake call completed, or application data moved.
    pub handshake_done: bool,
}

impl Conn {
    fn new(now: u64, tid: u32) -> Self {
        Self {
            fd: None,
            closed: false,
            tid,
            first_seen_ns: now,
            last_seen_ns: now,
            ops: [OpStats::default(); SslOp::ALL.len()],
            bytes_read: 0,
            bytes_written: 0,
            want_read: 0,
            want_write: 0,
            last_want: None,
            handshake_done: false,
        }
    }

    /// Counts a completed call with its SSL_get_error answer.
    fn record(&mut self, call: &SslCall, code: Option<SslErrorCode>) {
        let s = &mut self.ops[call.op as usize];
        s.calls += 1;
        s.bytes += call.bytes;
        if call.made_progress() {
            s.progress += 1;
        }
        if call.op.is_read() {
            if !is_peek(call.op) {
                self.bytes_read += call.bytes;
            }
        } else if call.op.is_write() {
            self.bytes_written += call.bytes;
        }
        // Application data moves only once the handshake is done: a connection set up
        // before attach has no handshake call to tell it.
        if call.made_progress() {
            self.handshake_done = true;
        }
        if call.ret <= 0 {
            match code {
                Some(SslErrorCode::WantRead) => {
                    s.want_read += 1;
                    self.want_read += 1;
                }
                Some(SslErrorCode::WantWrite) => {
                    s.want_write += 1;
                    self.want_write += 1;
                }
                Some(c) if c.is_want() => s.want_other += 1,
                _ => s.failed += 1,
            }
            if let Some(c) = code.filter(|c| c.is_want()) {
                self.last_want = Some(c);
            }
        }
    }
}

/// Per-bucket loop counters of a thread, for its rates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LoopCounts {
    pub wakeups: u32,
    pub no_progress: u32,
    pub calls: u32,
}

impl Counts for LoopCounts {
    fn merge(&mut self, o: &Self) {
        self.wakeups += o.wakeups;
        self.no_progress += o.no_progress;
        self.calls += o.calls;
    }
}

#[derive(Debug)]
pub(crate) struct Thread {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub lp: LoopState,
    /// The last ThreadCpu sample: (ts_ns, cpu_ns).
    pub cpu_sample: Option<(u64, u64)>,
    /// CPU use between the last two samples, in percent of one core.
    pub cpu_pct: Option<f64>,
    pub wakeups_total: u64,
    pub no_progress_total: u64,
    pub immediate_total: u64,
    pub ssl_calls_total: u64,
    pub window: Window<LoopCounts>,
    /// The SSL* of the last probed SSL call the thread made (with the per-call probes off,
    /// its last handshake): the connection it most likely works on.
    pub last_ssl: Option<u64>,
    /// The fd of the last socket the thread connected.
    pub last_socket: Option<i32>,
    /// The last async job pause on the thread, with the SSL* of the probed call it paused
    /// in: (ssl, ts).
    pub async_pause: Option<(u64, u64)>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Process {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub connections_total: u64,
    pub connections_freed_total: u64,
    pub ssl_calls_total: u64,
    pub bytes_read_total: u64,
    pub bytes_written_total: u64,
    pub want_read_total: u64,
    pub want_write_total: u64,
    pub failed_total: u64,
    pub handshakes_total: u64,
    pub wakeups_total: u64,
    pub wakeups_no_progress_total: u64,
}

/// The other end of a socket.
pub(crate) struct Peer {
    pub addr: String,
    /// The process opened the connection (`connect`): the peer is a server, not a client
    /// coming to this process, so it is left out of the per-peer connection counts that
    /// `connection_churn` and `low_session_resumption` read.
    pub outbound: bool,
}

#[derive(Default)]
pub(crate) struct State {
    pub conns: FxHashMap<ConnKey, Conn>,
    /// (pid, fd) -> SSL* of the live connection using that fd.
    pub fds: FxHashMap<(u32, i32), u64>,
    pub threads: FxHashMap<ThreadKey, Thread>,
    pub procs: FxHashMap<u32, Process>,
    pub comms: FxHashMap<u32, String>,
    /// (pid, fd) -> peer address, from `peer` events or `set_peer`; dropped when the fd
    /// closes.
    pub peers: FxHashMap<(u32, i32), Peer>,
    /// pid -> time of its latest probe event (agent samples from /proc not counted): when
    /// the process went silent (stopped working, or exited).
    pub last_event_ns: FxHashMap<u32, u64>,
    /// Handshakes, time shares, connections per peer, listen overflows.
    pub hs: HsState,
    pub evicted_connections_total: u64,
    pub evicted_threads_total: u64,
    pub unmatched_ssl_errors_total: u64,
    /// Peers not recorded because `peers` was full (`max_connections`).
    pub evicted_peers: u64,
}

impl State {
    pub fn comm(&self, pid: u32) -> Option<&str> {
        self.comms.get(&pid).map(String::as_str)
    }

    pub fn peer(&self, pid: u32, fd: Option<i32>) -> Option<&str> {
        self.peers.get(&(pid, fd?)).map(|p| p.addr.as_str())
    }

    /// A probe event of `pid` at `now`.
    pub fn touch(&mut self, pid: u32, now: u64) {
        let t = self.last_event_ns.entry(pid).or_insert(now);
        *t = (*t).max(now);
    }

    /// How long `pid` has been without a probe event; None if it never had one.
    pub fn silent_ns(&self, pid: u32, now: u64) -> Option<u64> {
        self.last_event_ns.get(&pid).map(|t| now.saturating_sub(*t))
    }

    pub fn cpu_pct(&self, key: ThreadKey) -> Option<f64> {
        self.threads.get(&key)?.cpu_pct
    }

    pub fn ssl_of_fd(&self, pid: u32, fd: Option<i32>) -> Option<u64> {
        self.fds.get(&(pid, fd?)).copied()
    }

    pub fn proc_mut(&mut self, pid: u32, now: u64) -> &mut Process {
        let p = self.procs.entry(pid).or_insert_with(|| Process {
            first_seen_ns: now,
            ..Process::default()
        });
        p.last_seen_ns = p.last_seen_ns.max(now);
        p
    }

    /// The thread, created if new. The caller keeps the thread count bounded.
    pub fn thread_mut(&mut self, key: ThreadKey, now: u64, window_ns: u64) -> &mut Thread {
        let t = self.threads.entry(key).or_insert_with(|| Thread {
            first_seen_ns: now,
            last_seen_ns: now,
            lp: LoopState::default(),
            cpu_sample: None,
            cpu_pct: None,
            wakeups_total: 0,
            no_progress_total: 0,
            immediate_total: 0,
            ssl_calls_total: 0,
            window: Window::new(now, window_ns),
            last_ssl: None,
            last_socket: None,
            async_pause: None,
        });
        t.last_seen_ns = t.last_seen_ns.max(now);
        t
    }

    /// Counts a completed call on its connection (created if new) and process, and maps the
    /// connection to `call.fd`. Returns the connection's fd.
    pub fn record_call(
        &mut self,
        key: ConnKey,
        tid: u32,
        now: u64,
        call: &SslCall,
        code: Option<SslErrorCode>,
    ) -> Option<i32> {
        let pid = key.0;
        let mut created = false;
        let conn = self.conns.entry(key).or_insert_with(|| {
            created = true;
            Conn::new(now, tid)
        });
        conn.tid = tid;
        conn.last_seen_ns = conn.last_seen_ns.max(now);
        let progress = call.made_progress();
        conn.record(call, code);
        if let Some(fd) = call.fd {
            self.map_fd(key, fd);
        }
        let fd = self.conns.get(&key).and_then(|c| c.fd);

        let p = self.proc_mut(pid, now);
        p.connections_total += u64::from(created);
        p.ssl_calls_total += 1;
        if call.op.is_read() {
            if !is_peek(call.op) {
                p.bytes_read_total += call.bytes;
            }
        } else if call.op.is_write() {
            p.bytes_written_total += call.bytes;
        } else if progress {
            p.handshakes_total += 1;
        }
        if call.ret <= 0 {
            match code {
                Some(SslErrorCode::WantRead) => p.want_read_total += 1,
                Some(SslErrorCode::WantWrite) => p.want_write_total += 1,
                Some(c) if c.is_want() => {}
                _ => p.failed_total += 1,
            }
        }
        fd
    }

    /// Maps the connection `key` (if known) to `fd`, taking the fd from any other.
    pub fn map_fd(&mut self, key: ConnKey, fd: i32) {
        let (pid, ssl) = key;
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.fd == Some(fd) {
            return;
        }
        if let Some(old) = conn.fd
            && self.fds.get(&(pid, old)) == Some(&ssl)
        {
            self.fds.remove(&(pid, old));
        }
        conn.fd = Some(fd);
        conn.closed = false;
        if let Some(prev) = self.fds.insert((pid, fd), ssl)
            && prev != ssl
            && let Some(c) = self.conns.get_mut(&(pid, prev))
            && c.fd == Some(fd)
        {
            // The fd was reused without a close seen: the old connection lost it.
            c.fd = None;
        }
    }

    /// Handshake accounting of a completed call, with the peer of the connection's fd.
    pub fn record_handshake(
        &mut self,
        cfg: &Config,
        (key, tid): (ConnKey, u32),
        now: u64,
        done: (&SslCall, Option<SslErrorCode>),
        fd: Option<i32>,
    ) {
        let known = fd.and_then(|fd| self.peers.get(&(key.0, fd)));
        let peer = known.filter(|p| !p.outbound);
        let outbound = known.map(|p| p.outbound);
        self.hs.call(
            cfg,
            (key, tid),
            now,
            done,
            (peer.map(|p| p.addr.as_str()), outbound),
        );
    }

    /// Forgets a connection (SSL_free, eviction). Returns it.
    pub fn remove_conn(&mut self, key: ConnKey) -> Option<Conn> {
        let conn = self.conns.remove(&key)?;
        if let Some(fd) = conn.fd
            && self.fds.get(&(key.0, fd)) == Some(&key.1)
        {
            self.fds.remove(&(key.0, fd));
        }
        Some(conn)
    }

    /// An fd was closed: unmaps it and its peer. Returns the SSL* that used it.
    pub fn close_fd(&mut self, pid: u32, fd: i32) -> Option<u64> {
        self.peers.remove(&(pid, fd));
        let ssl = self.fds.remove(&(pid, fd))?;
        if let Some(c) = self.conns.get_mut(&(pid, ssl)) {
            c.fd = None;
            c.closed = true;
        }
        Some(ssl)
    }

    /// Connections to evict: idle for `idle_ns`, plus the least recently seen ones beyond
    /// `keep` (so that a full table frees a tenth of itself at once, not one per insert).
    pub fn conns_to_evict(&self, now: u64, idle_ns: u64, keep: usize) -> Vec<ConnKey> {
        stale(&self.conns, now, idle_ns, keep, |c| c.last_seen_ns)
    }

    pub fn threads_to_evict(&self, now: u64, idle_ns: u64, keep: usize) -> Vec<ThreadKey> {
        stale(&self.threads, now, idle_ns, keep, |t| t.last_seen_ns)
    }

    /// Drops processes that have no connection or thread left and have been idle.
    pub fn retire_procs(&mut self, now: u64, idle_ns: u64) {
        let live: FxHashSet<u32> = self
            .conns
            .keys()
            .map(|k| k.0)
            .chain(self.threads.keys().map(|k| k.0))
            .collect();
        self.procs
            .retain(|pid, p| live.contains(pid) || now.saturating_sub(p.last_seen_ns) < idle_ns);
        let procs = &self.procs;
        self.last_event_ns
            .retain(|pid, t| procs.contains_key(pid) || now.saturating_sub(*t) < idle_ns);
        self.hs.retain_procs(|pid| procs.contains_key(&pid));
    }
}

/// Peeked bytes stay in libssl and are read again: not counted as read.
fn is_peek(op: SslOp) -> bool {
    matches!(op, SslOp::Peek | SslOp::PeekEx)
}

fn stale<K: Copy + Ord, V>(
    map: &FxHashMap<K, V>,
    now: u64,
    idle_ns: u64,
    keep: usize,
    last_seen: impl Fn(&V) -> u64,
) -> Vec<K> {
    let excess = map.len().saturating_sub(keep);
    if excess == 0 {
        return map
            .iter()
            .filter(|(_, v)| now.saturating_sub(last_seen(v)) >= idle_ns)
            .map(|(k, _)| *k)
            .collect();
    }
    let mut by_age: Vec<(u64, K)> = map.iter().map(|(k, v)| (last_seen(v), *k)).collect();
    let mut out: Vec<K> = Vec::new();
    {
        by_age.select_nth_unstable(excess - 1);
        out.extend(by_age.drain(..excess).map(|(_, k)| k));
    }
    out.extend(
        by_age
            .iter()
            .filter(|(t, _)| now.saturating_sub(*t) >= idle_ns)
            .map(|(_, k)| *k),
    );
    out
}
