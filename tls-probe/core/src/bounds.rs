//! Bounded tables: what each of the tracker's, the engine's and the agent's tables dropped
//! because it was full, counted per table and reported in-band in every `snapshot` and in
//! the `summary` (`evicted`), as losses are in `lost`. The bounds are next to the tables:
//! `engine/config.rs` (`max_*`) for the engine, [`crate::track`] and
//! `agent/peers.rs` for theirs; docs/architecture.md lists them all.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hash},
};

use serde::{Deserialize, Serialize};

/// Entries dropped from a full table since the start, per table. (The engine's connections
/// and threads have their own `evicted_connections_total` and `evicted_threads_total`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Evicted {
    /// Engine: socket peers ((pid, fd) -> address) not recorded because the table was full.
    pub peers: u64,
    /// Engine: ServerHellos not kept because the table was full.
    pub server_hellos: u64,
    /// Engine: closed findings dropped, the oldest first.
    pub closed_findings: u64,
    /// Tracker: SSL* <-> fd ties dropped by emptying the full table.
    pub ssl_fds: u64,
    /// Tracker: epoll registrations (data -> fd) dropped by emptying the full table.
    pub epoll_registrations: u64,
    /// Tracker: epoll instances seen in a wait, forgotten by emptying the full set (each is
    /// read again from /proc on its next wait).
    pub epoll_instances: u64,
    /// Tracker: per-thread last ready fds dropped by emptying the full table.
    pub ready_fds: u64,
    /// Agent: fds whose peer was looked up in /proc, forgotten by emptying the full table.
    pub peer_lookups: u64,
}

impl Evicted {
    /// The sum over every table.
    pub fn total(&self) -> u64 {
        self.peers
            + self.server_hellos
            + self.closed_findings
            + self.ssl_fds
            + self.epoll_registrations
            + self.epoll_instances
            + self.ready_fds
            + self.peer_lookups
    }

    /// Adds the counts of the tables `other` has that this one does not fill.
    pub fn add(&mut self, other: &Evicted) {
        self.peers += other.peers;
        self.server_hellos += other.server_hellos;
        self.closed_findings += other.closed_findings;
        self.ssl_fds += other.ssl_fds;
        self.epoll_registrations += other.epoll_registrations;
        self.epoll_instances += other.epoll_instances;
        self.ready_fds += other.ready_fds;
        self.peer_lookups += other.peer_lookups;
    }
}

/// Makes room for a new key in a table bounded by `cap`: a new key in a full table first
/// empties it, and the entries dropped are added to `evicted`. Emptying (rather than
/// dropping some entry) keeps the result deterministic and flushes entries leaked by lost
/// events; the entries still live come back from the next event (or /proc read) that names
/// them. Returns whether the table was emptied.
pub fn make_room<K: Hash + Eq, V, S: BuildHasher>(
    map: &mut HashMap<K, V, S>,
    cap: usize,
    key: &K,
    evicted: &mut u64,
) -> bool {
    if map.len() < cap || map.contains_key(key) {
        return false;
    }
    *evicted += map.len() as u64;
    map.clear();
    true
}

/// [`make_room`] for a set.
pub fn make_room_set<K: Hash + Eq, S: BuildHasher>(
    set: &mut HashSet<K, S>,
    cap: usize,
    key: &K,
    evicted: &mut u64,
) -> bool {
    if set.len() < cap || set.contains(key) {
        return false;
    }
    *evicted += set.len() as u64;
    set.clear();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_is_emptied_for_a_new_key_and_counted() {
        let mut m = HashMap::new();
        let mut evicted = 0;
        for k in 0..10u32 {
            make_room(&mut m, 4, &k, &mut evicted);
            m.insert(k, ());
            assert!(m.len() <= 4);
        }
        // 0..4 fill it, 4 empties it (4 dropped), 4..8 fill it, 8 empties it (4 dropped).
        assert_eq!((m.len(), evicted), (2, 8));
        // A key already in the table never empties it.
        assert!(!make_room(&mut m, 2, &9, &mut evicted));
        let mut s = HashSet::new();
        let mut evicted = 0;
        for k in 0..5u32 {
            make_room_set(&mut s, 2, &k, &mut evicted);
            s.insert(k);
        }
        assert_eq!((s.len(), evicted), (1, 4));
    }
}

/// The tracker's and the agent's tables past their bounds.
#[cfg(test)]
mod table_tests {
    use crate::{
        event::{
            CtlOp, EpollCtl, EpollSyscall, EpollWait, Event, EventKind, ReadyFd, SslCall, SslOp,
            SysKind,
        },
        track::{MAX_EPOLL_INSTANCES, MAX_READY_THREADS, MAX_REGISTRATIONS, MAX_SSL_FDS, Tracker},
    };

    /// An SSL_read on `ssl` whose read syscall was on `fd`.
    fn call(ssl: u64, fd: i32) -> SslCall {
        SslCall {
            op: SslOp::Read,
            ssl,
            buf: 0x7000_0000,
            len: 16_384,
            ret: 1,
            bytes: 1,
            start_ns: 0,
            duration_ns: 0,
            fd: Some(fd),
            fd_seen: true,
            sys_calls: 1,
            sys_last: Some(SysKind::Read),
            sys_last_ret: Some(1),
            key_ops: 0,
        }
    }

    fn ev(pid: u32, tid: u32, kind: EventKind) -> Event {
        Event::new(1, pid, tid, kind)
    }

    fn ctl(epfd: i32, fd: i32, data: u64) -> EventKind {
        EventKind::EpollCtl(EpollCtl {
            op: CtlOp::Add,
            epfd,
            fd,
            events: 1,
            data,
            ret: 0,
        })
    }

    fn wait(epfd: i32, data: u64) -> EventKind {
        EventKind::EpollWait(EpollWait {
            syscall: EpollSyscall::EpollWait,
            epfd,
            maxevents: 64,
            timeout_ns: None,
            start_ns: 1,
            duration_ns: 1,
            ret: 1,
            ready: smallvec::smallvec![ReadyFd {
                events: 1,
                data,
                fd: None,
                interest: None,
            }],
        })
    }

    #[test]
    fn ssl_fd_ties_are_capped_and_evictions_counted() {
        let mut t = Tracker::new();
        let n = MAX_SSL_FDS + 10;
        for i in 0..n {
            let c = call(0x1000 + i as u64 * 16, i as i32);
            t.process(&mut ev(7, 7, EventKind::SslCall(c)));
            assert!(t.table_sizes()[0] <= MAX_SSL_FDS);
        }
        assert_eq!(t.evicted().ssl_fds, MAX_SSL_FDS as u64);
        assert_eq!(t.table_sizes()[0], 10);
        // The newest ties survive.
        assert_eq!(t.fd_of(7, 0x1000 + (n as u64 - 1) * 16), Some(n as i32 - 1));
    }

    #[test]
    fn epoll_registrations_are_capped_and_evictions_counted() {
        let mut t = Tracker::new();
        let n = MAX_REGISTRATIONS + 5;
        for i in 0..n {
            t.process(&mut ev(7, 7, ctl(3, 10 + i as i32, 0x9000 + i as u64)));
        }
        assert_eq!(t.evicted().epoll_registrations, MAX_REGISTRATIONS as u64);
        assert_eq!(t.table_sizes()[1], 5);
        // A registration kept still names its fd.
        let mut w = ev(7, 7, wait(3, 0x9000 + n as u64 - 1));
        t.process(&mut w);
        let EventKind::EpollWait(w) = &w.kind else {
            unreachable!()
        };
        assert_eq!(w.ready[0].fd, Some(10 + n as i32 - 1));
    }

    #[test]
    fn epoll_instances_and_ready_fds_are_capped_and_evictions_counted() {
        let mut t = Tracker::new();
        let n = MAX_EPOLL_INSTANCES.max(MAX_READY_THREADS) + 3;
        for i in 0..n {
            // One registration per instance, so the wait's ready entry has an fd.
            let epfd = 100_000 + i as i32;
            t.process(&mut ev(7, 7, ctl(epfd, 5, 1)));
            t.process(&mut ev(7, 10 + i as u32, wait(epfd, 1)));
            let sizes = t.table_sizes();
            assert!(sizes[2] <= MAX_EPOLL_INSTANCES && sizes[3] <= MAX_READY_THREADS);
        }
        assert!(t.evicted().epoll_instances >= MAX_EPOLL_INSTANCES as u64);
        assert!(t.evicted().ready_fds >= MAX_READY_THREADS as u64);
        assert!(t.take_pending_seeds().len() <= MAX_EPOLL_INSTANCES);
    }
}
