//! Handshake accounting: each connection's handshake classified full or resumed, and its
//! outcome; per thread and process the rates, latency and CPU histograms, and where the
//! thread's wall time goes (handshakes, other SSL I/O, blocked in epoll); connections per
//! peer; the kernel's listen-queue overflows.
//!
//! The rules, per (pid, SSL*), over every call from the first handshake call to completion:
//!
//! - A handshake **starts** with the first `SSL_do_handshake`/`SSL_accept`/`SSL_connect` on an
//!   SSL* (new, or freed and reused). Its **latency** is the wall time from that call's start
//!   to the return of the call that completed it; its **CPU** is the time inside its calls,
//!   summed (wall time inside the calls: preemption included).
//! - It **completes** when a handshake call returns 1, or when an SSL_read/SSL_write on it
//!   moves bytes (the handshake went on implicitly inside the I/O call). It is **full** when
//!   any of its calls, I/O calls included, made a libcrypto key operation (`key_ops > 0`:
//!   signing, verifying, decrypting), **resumed** otherwise.
//! - It **fails** when a call of it answers `SSL_ERROR_SSL` or `SSL_ERROR_SYSCALL`, and is
//!   **abandoned** (counted as failed too) when the SSL* is freed before completion. Otherwise
//!   it is in progress.
//! - **Implicit handshakes**: an SSL* first seen in SSL_read/SSL_write (no handshake call)
//!   is a handshake in progress only once one of its I/O calls makes a key operation before
//!   any moves bytes: it is then counted as a full handshake (`implicit_full_total`). With no
//!   key operation, it is indistinguishable from a connection established before tls-probe
//!   attached, so it is not counted at all, and implicit full handshakes are left out of the
//!   resumption rate, which would otherwise be biased low.
//! - A handshake call on a connection whose handshake completed starts a new handshake
//!   (renegotiation, or an SSL* reused without its SSL_free seen), except a call that returns
//!   1 at once with no key operation: a no-op.
//! - A connection's **lifetime** runs from its first handshake call to SSL_free; connections
//!   first seen mid-life are not measured.
//! - **Side**: the process is the client of a connection it opened (`connect` peer event),
//!   that it called SSL_connect on, or whose ServerHello it read; the server of one it
//!   accepted, called SSL_accept on, or whose ServerHello it wrote. The first evidence
//!   wins. Client-side handshakes are left out of the resumption rate (`rated`): a process
//!   with both ends (a proxy, a test harness) would count each connection twice, and its
//!   own outgoing sessions say nothing about whether its clients resume. A handshake of
//!   unknown side is counted.
//! - The **ServerHello** (`server_hello`) gives the negotiated version and cipher, counted
//!   at completion, and in TLS 1.3 a second resumption signal: a `pre_shared_key` extension.
//!   In TLS 1.3 the psk decides full or resumed; completed TLS 1.3 handshakes whose psk
//!   presence disagrees with the key-operation classification are counted (`psk_disagree`),
//!   so the two signals cross-check.

pub mod names;
mod snapshot;
pub(crate) mod stats;

use rustc_hash::FxHashMap;

pub use self::snapshot::{
    HandshakeSnapshot, NameCount, NewConnectionsSnapshot, PeerSnapshot, TimeShareSnapshot,
};
pub(crate) use self::snapshot::{new_connections, side_snapshot, time_share};
use self::stats::{HsProc, HsSide, PeerStats, peer_host};
use super::{
    config::Config,
    keys::{ConnKey, ThreadKey},
};
use crate::event::{ServerHello, SslCall, SslErrorCode, SslOp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Started by a handshake call, or an implicit one that made key operations.
    InProgress,
    /// First seen in I/O calls that moved nothing and made no key operation: a handshake
    /// running inside SSL_read/SSL_write, or an idle connection from before attach.
    Maybe,
    Done,
    Failed,
    /// Seen mid-life: nothing to account.
    Unknown,
}

#[derive(Clone, Debug)]
struct HsConn {
    start_ns: u64,
    /// The thread that started the handshake.
    tid: u32,
    cpu_ns: u64,
    key_ops: u64,
    phase: Phase,
    explicit: bool,
    /// Its start was seen: a new connection, whose lifetime is measured.
    counted: bool,
    /// The peer host, once known.
    peer: Option<String>,
    full: Option<bool>,
    /// The process is the client of this connection (Some(true)), the server, or unknown.
    client: Option<bool>,
}

/// What a connection's last ServerHello negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub version: u16,
    pub cipher: u16,
    pub psk: bool,
    pub hello_retry: bool,
}

/// Handshake accounting of every process and thread.
#[derive(Default)]
pub(crate) struct HsState {
    conns: FxHashMap<ConnKey, HsConn>,
    pub threads: FxHashMap<ThreadKey, HsSide>,
    pub procs: FxHashMap<u32, HsProc>,
    /// TcpExtListenOverflows: the first sample, the latest, and when it last rose.
    pub overflows: Option<ListenOverflows>,
    /// (pid, SSL*) -> its last ServerHello, until SSL_free. Kept apart from `conns`
    /// because the hello comes inside the call whose record follows it.
    hellos: FxHashMap<ConnKey, (Hello, bool)>,
    /// ServerHellos not kept because `hellos` was full.
    pub evicted_hellos: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ListenOverflows {
    pub first: u64,
    pub last: u64,
    pub rose_ns: Option<u64>,
}

impl ListenOverflows {
    pub fn since_attach(&self) -> u64 {
        self.last.saturating_sub(self.first)
    }
}

impl HsState {
    /// Whether (pid, ssl) has a completed handshake classified full (Some(true)) or resumed.
    pub fn full(&self, key: ConnKey) -> Option<bool> {
        self.conns.get(&key).and_then(|c| c.full)
    }

    /// What the connection's ServerHello negotiated, if one was seen.
    pub fn hello(&self, key: ConnKey) -> Option<Hello> {
        self.hellos.get(&key).map(|h| h.0)
    }

    /// A ServerHello seen on connection `key`: written by the process (`sent`, it is the
    /// server) or read by it. A HelloRetryRequest is replaced by the ServerHello after it.
    pub fn server_hello(&mut self, cfg: &Config, key: ConnKey, h: &ServerHello) {
        if !self.hellos.contains_key(&key) && self.hellos.len() >= cfg.max_connections {
            self.evicted_hellos += 1;
            return;
        }
        let hello = Hello {
            version: h.version,
            cipher: h.cipher,
            psk: h.psk,
            hello_retry: h.hello_retry,
        };
        if hello.hello_retry && self.hellos.get(&key).is_some_and(|o| !o.0.hello_retry) {
            return;
        }
        self.hellos.insert(key, (hello, h.sent));
        if let Some(c) = self.conns.get_mut(&key) {
            c.client.get_or_insert(!h.sent);
        }
    }

    pub fn listen_overflows(&mut self, now: u64, total: u64) {
        let o = self.overflows.get_or_insert(ListenOverflows {
            first: total,
            last: total,
            rose_ns: None,
        });
        if total > o.last {
            o.rose_ns = Some(now);
        }
        o.last = total;
    }

    /// Time blocked in epoll waits, for the thread's time share.
    pub fn blocked(&mut self, key: ThreadKey, now: u64, ns: u64) {
        if let Some(t) = self.threads.get_mut(&key) {
            t.window.current(now).blocked_ns += ns;
        }
    }

    pub fn forget_thread(&mut self, key: ThreadKey) {
        self.threads.remove(&key);
    }

    pub fn retain_procs(&mut self, keep: impl Fn(u32) -> bool) {
        self.procs.retain(|pid, _| keep(*pid));
    }

    /// A completed call and its SSL_get_error answer, on connection `key` by thread `tid`.
    /// `peer` is the connection's address when the process accepted it; `outbound` tells
    /// whether the process opened (Some(true)) or accepted the connection, when known.
    pub fn call(
        &mut self,
        cfg: &Config,
        (key, tid): (ConnKey, u32),
        now: u64,
        (call, code): (&SslCall, Option<SslErrorCode>),
        (peer, outbound): (Option<&str>, Option<bool>),
    ) {
        let hs_call = call.op.is_handshake();
        let progress = call.made_progress();
        let failed = matches!(code, Some(SslErrorCode::Ssl | SslErrorCode::Syscall));
        let phase = self.conns.get(&key).map(|c| c.phase);
        let start = match phase {
            None if hs_call => Some(true),
            None if call.key_ops > 0 => Some(false),
            None => {
                let phase = if progress || failed {
                    Phase::Unknown
                } else {
                    Phase::Maybe
                };
                self.conns.insert(key, HsConn::new(call, tid, phase, false));
                None
            }
            Some(Phase::Maybe) if hs_call || call.key_ops > 0 => Some(hs_call),
            Some(Phase::Done | Phase::Failed | Phase::Unknown) if hs_call => {
                (call.ret != 1 || call.key_ops > 0).then_some(true)
            }
            _ => None,
        };
        if let Some(explicit) = start {
            let counted = phase.is_none_or(|p| p == Phase::Maybe);
            let mut c = HsConn::new(call, tid, Phase::InProgress, explicit);
            c.counted = counted;
            c.peer = self.conns.get(&key).and_then(|o| o.peer.clone());
            self.conns.insert(key, c);
            self.started(cfg, key, tid, now);
        }
        if let Some(peer) = peer {
            self.learn_peer(cfg, key, now, peer);
        }
        let side = outbound
            .or(match call.op {
                SslOp::Connect | SslOp::StatemConnect => Some(true),
                SslOp::Accept | SslOp::StatemAccept => Some(false),
                _ => None,
            })
            .or_else(|| self.hellos.get(&key).map(|h| !h.1));
        if let (Some(side), Some(c)) = (side, self.conns.get_mut(&key)) {
            c.client.get_or_insert(side);
        }
        let in_handshake = self
            .conns
            .get(&key)
            .is_some_and(|c| c.phase == Phase::InProgress);
        let side = self.thread(cfg, (key.0, tid), now);
        let b = side.window.current(now);
        if in_handshake || hs_call {
            b.handshake_ns += call.duration_ns;
        } else {
            b.io_ns += call.duration_ns;
        }
        if !in_handshake {
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.cpu_ns += call.duration_ns;
        c.key_ops += u64::from(call.key_ops);
        if failed {
            c.phase = Phase::Failed;
            let c = c.clone();
            self.ended(cfg, key.0, &c, now, false);
        } else if progress {
            c.phase = Phase::Done;
            c.full = Some(c.key_ops > 0);
            let c = c.clone();
            self.completed(cfg, key, tid, &c, now);
        }
    }

    /// SSL_free (`freed`), or the engine dropped the connection.
    pub fn conn_end(&mut self, cfg: &Config, key: ConnKey, now: u64, freed: bool) {
        self.hellos.remove(&key);
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        if c.phase == Phase::InProgress {
            if freed {
                self.ended(cfg, key.0, &c, now, true);
            } else {
                self.each_side(key.0, c.tid, |s| {
                    s.in_progress = s.in_progress.saturating_sub(1)
                });
            }
        }
        if freed && c.counted && c.phase != Phase::Maybe {
            let lifetime = now.saturating_sub(c.start_ns);
            if let Some(p) = self.procs.get_mut(&key.0) {
                p.lifetime.saturating_record(lifetime.max(1));
                p.connections_ended += 1;
                if let Some(ps) = c.peer.as_ref().and_then(|h| p.peers.get_mut(h)) {
                    ps.ended(now, lifetime);
                }
            }
        }
    }

    fn thread(&mut self, cfg: &Config, key: ThreadKey, now: u64) -> &mut HsSide {
        self.threads
            .entry(key)
            .or_insert_with(|| HsSide::new(now, cfg.window_ns))
    }

    fn proc(&mut self, cfg: &Config, pid: u32, now: u64) -> &mut HsProc {
        self.procs
            .entry(pid)
            .or_insert_with(|| HsProc::new(now, cfg.window_ns, cfg.resumption_window_ns))
    }

    fn each_side(&mut self, pid: u32, tid: u32, mut f: impl FnMut(&mut HsSide)) {
        if let Some(p) = self.procs.get_mut(&pid) {
            f(&mut p.side);
        }
        if let Some(t) = self.threads.get_mut(&(pid, tid)) {
            f(t);
        }
    }

    fn started(&mut self, cfg: &Config, key: ConnKey, tid: u32, now: u64) {
        self.proc(cfg, key.0, now);
        self.thread(cfg, (key.0, tid), now);
        self.each_side(key.0, tid, |s| {
            s.totals.started += 1;
            s.in_progress += 1;
            s.window.current(now).started += 1;
        });
        let peer = self.conns.get(&key).and_then(|c| c.peer.clone());
        if let Some(host) = peer {
            self.count_peer_connection(cfg, key.0, &host, now);
        }
    }

    fn learn_peer(&mut self, cfg: &Config, key: ConnKey, now: u64, peer: &str) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.peer.is_some() || matches!(c.phase, Phase::Unknown) {
            return;
        }
        let host = peer_host(peer).to_owned();
        c.peer = Some(host.clone());
        if c.counted && c.phase != Phase::Maybe {
            self.count_peer_connection(cfg, key.0, &host, now);
        }
    }

    fn count_peer_connection(&mut self, cfg: &Config, pid: u32, host: &str, now: u64) {
        let p = self.proc(cfg, pid, now);
        if !p.peers.contains_key(host) && p.peers.len() >= cfg.max_peers {
            p.untracked_peer_connections += 1;
            return;
        }
        let ps = p
            .peers
            .entry(host.to_owned())
            .or_insert_with(|| PeerStats::new(now, cfg.window_ns));
        ps.connections_total += 1;
        ps.last_seen_ns = now;
        ps.window.current(now).opened += 1;
    }

    fn completed(&mut self, cfg: &Config, key: ConnKey, tid: u32, c: &HsConn, now: u64) {
        let pid = key.0;
        let hello = self
            .hellos
            .get(&key)
            .map(|h| h.0)
            .filter(|h| !h.hello_retry);
        // TLS 1.3 says it in the clear: a `pre_shared_key` in the ServerHello is a resumption.
        // That beats key operations, which miss a handshake whose signing happened while the
        // libcrypto probes were still attaching; older versions only have the key operations.
        let key_op_full = c.key_ops > 0;
        let full = match hello {
            Some(h) if h.version == stats::TLS13 => !h.psk,
            _ => key_op_full,
        };
        let latency = now.saturating_sub(c.start_ns).max(1);
        let cpu = c.cpu_ns.max(1);
        // Only explicit, server-side handshakes count towards the resumption rate (see the
        // module doc).
        let rated = (c.explicit || !full) && c.client != Some(true);
        let peer = c.peer.as_ref().and_then(|h| {
            let ps = self.procs.get_mut(&pid)?.peers.get_mut(h)?;
            if full {
                ps.full_total += 1;
            } else {
                ps.resumed_total += 1;
            }
            Some(ps.connections_total > 1)
        });
        self.thread(cfg, (pid, c.tid), now);
        self.each_side(pid, c.tid, |s| {
            s.in_progress = s.in_progress.saturating_sub(1);
        });
        self.thread(cfg, (pid, tid), now);
        self.each_side(pid, tid, |s| {
            s.totals.completed += 1;
            if full {
                s.totals.full += 1;
                s.totals.implicit_full += u64::from(!c.explicit);
            } else {
                s.totals.resumed += 1;
            }
            s.latency.saturating_record(latency);
            s.cpu.saturating_record(cpu);
            if let Some(h) = hello {
                s.hello(h, key_op_full);
            }
            let b = s.window.current(now);
            count_completion(b, full, rated, cpu, peer);
        });
        if let Some(p) = self.procs.get_mut(&pid) {
            count_completion(p.long.current(now), full, rated, cpu, peer);
        }
    }

    fn ended(&mut self, cfg: &Config, pid: u32, c: &HsConn, now: u64, abandoned: bool) {
        self.proc(cfg, pid, now);
        self.each_side(pid, c.tid, |s| {
            s.in_progress = s.in_progress.saturating_sub(1);
            s.totals.failed += 1;
            s.totals.abandoned += u64::from(abandoned);
            s.window.current(now).failed += 1;
        });
    }
}

fn count_completion(
    b: &mut stats::HsCounts,
    full: bool,
    rated: bool,
    cpu: u64,
    returning: Option<bool>,
) {
    b.completed += 1;
    if full {
        b.full_cpu_ns += cpu;
    }
    if rated {
        if full {
            b.full += 1;
        } else {
            b.resumed += 1;
        }
    }
    if let Some(r) = returning {
        b.peer_known += 1;
        b.returning += u32::from(r);
    }
}

impl HsConn {
    fn new(call: &SslCall, tid: u32, phase: Phase, explicit: bool) -> Self {
        Self {
            start_ns: call.start_ns,
            tid,
            cpu_ns: 0,
            key_ops: 0,
            phase,
            explicit,
            counted: false,
            peer: None,
            full: None,
            client: None,
        }
    }
}
