//! The peers of connections made before attach: no `accept` or `connect` was seen for
//! them, so the agent resolves fd -> socket inode -> TCP table entry from /proc (the
//! process's own network namespace) and feeds the result to the engine as `peer` events,
//! like those of the probes. Done for every socket at attach, and later for an fd a
//! connection uses whose peer is still unknown.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
};

use procfs::{
    net::{TcpNetEntry, TcpState},
    process::{FDTarget, Process},
};

use crate::event::{Event, EventKind, PeerSide};

/// The probe name of the `peer` events read from /proc.
pub const PROBE: &str = "procfs";
/// A process's TCP tables are read at most this often for fds first seen after attach.
const RESCAN_NS: u64 = 200_000_000;
/// Fds looked up (or waiting for a lookup): one per connection whose peer was not seen in
/// `accept`/`connect`, as the engine's `max_connections`. A full table is emptied (an fd
/// then may be looked up again) and counted in `evicted.peer_lookups`.
pub const MAX_LOOKUPS: usize = 65_536;

/// `peer` events for the TCP sockets of `pid` (only those in `only`, when given), at
/// `ts_ns`, with probe "procfs".
pub fn peer_events(pid: u32, ts_ns: u64, only: Option<&BTreeSet<i32>>) -> Vec<Event> {
    let Ok(p) = Process::new(pid as i32) else {
        return Vec::new();
    };
    let Ok(fds) = p.fd() else {
        return Vec::new();
    };
    let sockets: Vec<(i32, u64)> = fds
        .filter_map(|fd| {
            let fd = fd.ok()?;
            match fd.target {
                FDTarget::Socket(inode) if only.is_none_or(|o| o.contains(&fd.fd)) => {
                    Some((fd.fd, inode))
                }
                _ => None,
            }
        })
        .collect();
    if sockets.is_empty() {
        return Vec::new();
    }
    let mut table = p.tcp().unwrap_or_default();
    table.extend(p.tcp6().unwrap_or_default());
    resolve(&sockets, &table)
        .into_iter()
        .map(|(fd, addr, side)| {
            let mut ev = Event::new(ts_ns, pid, 0, EventKind::Peer { fd, addr, side });
            ev.probe = PROBE.into();
            ev
        })
        .collect()
}

/// The peer of each socket fd found connected in `table`: (fd, "addr:port", side). A
/// socket whose local port some listening socket of the table has was accepted; any other
/// was opened by the process.
fn resolve(sockets: &[(i32, u64)], table: &[TcpNetEntry]) -> Vec<(i32, String, PeerSide)> {
    let listening: HashSet<u16> = table
        .iter()
        .filter(|e| e.state == TcpState::Listen)
        .map(|e| e.local_address.port())
        .collect();
    let by_inode: HashMap<u64, &TcpNetEntry> = table
        .iter()
        .filter(|e| e.inode != 0 && e.state != TcpState::Listen && e.remote_address.port() != 0)
        .map(|e| (e.inode, e))
        .collect();
    let mut out: Vec<(i32, String, PeerSide)> = sockets
        .iter()
        .filter_map(|&(fd, inode)| {
            let e = by_inode.get(&inode)?;
            let side = if listening.contains(&e.local_address.port()) {
                PeerSide::Accepted
            } else {
                PeerSide::Connected
            };
            Some((fd, unmapped(e.remote_address).to_string(), side))
        })
        .collect();
    out.sort_by_key(|(fd, ..)| *fd);
    out
}

/// An IPv4-mapped IPv6 address written as IPv4, as the decoder writes the probes' peers.
fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Fds seen on connections whose peer the engine does not know: looked up in /proc once
/// each (again after the fd is closed and reused), a process's tables at most every
/// [`RESCAN_NS`].
#[derive(Default)]
pub struct Lookups {
    tried: HashSet<(u32, i32)>,
    pending: BTreeMap<u32, BTreeSet<i32>>,
    scanned_ns: HashMap<u32, u64>,
    /// Entries dropped from the full `tried` table.
    evicted: u64,
}

impl Lookups {
    /// Notes what `ev` tells: an fd used by a connection (`known`: whether its peer is
    /// known already), or an fd closed.
    pub fn observe(&mut self, ev: &Event, known: impl Fn(u32, i32) -> bool) {
        match &ev.kind {
            EventKind::SslCall(crate::event::SslCall { fd: Some(fd), .. })
            | EventKind::SslFd { fd, .. }
            | EventKind::SslSetFd { fd, .. } => {
                let fd = *fd;
                if !self.tried.contains(&(ev.pid, fd)) && !known(ev.pid, fd) {
                    if crate::bounds::make_room_set(
                        &mut self.tried,
                        MAX_LOOKUPS,
                        &(ev.pid, fd),
                        &mut self.evicted,
                    ) {
                        // What was waiting is dropped with what was done.
                        self.pending.clear();
                    }
                    self.tried.insert((ev.pid, fd));
                    self.pending.entry(ev.pid).or_default().insert(fd);
                }
            }
            EventKind::Close { fd, .. } => {
                self.tried.remove(&(ev.pid, *fd));
                if let Some(p) = self.pending.get_mut(&ev.pid) {
                    p.remove(fd);
                }
            }
            _ => {}
        }
    }

    /// Marks the sockets of `pid` as looked up (at attach, all of them were).
    pub fn mark_all(&mut self, pid: u32, events: &[Event]) {
        for ev in events {
            if let EventKind::Peer { fd, .. } = ev.kind {
                self.tried.insert((pid, fd));
            }
        }
    }

    /// The `peer` events of the fds waiting for a lookup whose process is due one.
    pub fn resolve_due(&mut self, now_ns: u64) -> Vec<Event> {
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|(pid, fds)| {
                !fds.is_empty()
                    && self
                        .scanned_ns
                        .get(pid)
                        .is_none_or(|t| now_ns.saturating_sub(*t) >= RESCAN_NS)
            })
            .map(|(pid, _)| *pid)
            .collect();
        let mut out = Vec::new();
        for pid in due {
            let fds = self.pending.remove(&pid).unwrap_or_default();
            self.scanned_ns.insert(pid, now_ns);
            out.extend(peer_events(pid, now_ns, Some(&fds)));
        }
        out
    }

    /// Entries dropped because the table was full, since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Forgets a process that is no longer traced.
    pub fn forget(&mut self, pid: u32) {
        self.tried.retain(|(p, _)| *p != pid);
        self.pending.remove(&pid);
        self.scanned_ns.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    use super::*;

    #[test]
    fn sockets_made_before_are_resolved_with_their_side() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, from) = listener.accept().unwrap();
        let me = std::process::id();
        let evs = peer_events(me, 7, None);
        let find = |fd: i32| {
            evs.iter().find_map(|e| match &e.kind {
                EventKind::Peer { fd: f, addr, side } if *f == fd => Some((addr.clone(), *side)),
                _ => None,
            })
        };
        assert_eq!(
            find(server.as_raw_fd()),
            Some((from.to_string(), PeerSide::Accepted)),
            "{evs:?}"
        );
        assert_eq!(
            find(client.as_raw_fd()),
            Some((format!("127.0.0.1:{port}"), PeerSide::Connected)),
            "{evs:?}"
        );
        assert_eq!(find(listener.as_raw_fd()), None, "a listener has no peer");
        assert!(evs.iter().all(|e| e.probe == PROBE && e.ts_ns == 7));
        // Only the fds asked for.
        let only = BTreeSet::from([client.as_raw_fd()]);
        let evs = peer_events(me, 7, Some(&only));
        assert_eq!(evs.len(), 1, "{evs:?}");
    }

    #[test]
    fn an_fd_is_looked_up_once_until_closed() {
        let call = |fd| {
            Event::new(
                1,
                9,
                9,
                EventKind::SslCall(crate::event::SslCall {
                    op: crate::event::SslOp::Read,
                    ssl: 0x10,
                    buf: 0,
                    len: 0,
                    ret: 1,
                    bytes: 1,
                    start_ns: 0,
                    duration_ns: 0,
                    fd: Some(fd),
                    fd_seen: true,
                    sys_calls: 0,
                    sys_last: None,
                    sys_last_ret: None,
                    key_ops: 0,
                }),
            )
        };
        let mut l = Lookups::default();
        l.observe(&call(5), |_, _| false);
        l.observe(&call(5), |_, _| false);
        l.observe(&call(6), |_, _| true);
        assert_eq!(l.pending.get(&9).map(|s| s.len()), Some(1));
        l.observe(
            &Event::new(2, 9, 9, EventKind::Close { fd: 5, ret: 0 }),
            |_, _| false,
        );
        assert!(l.pending[&9].is_empty());
        l.observe(&call(5), |_, _| false);
        assert_eq!(l.pending[&9], BTreeSet::from([5]));
    }

    #[test]
    fn peer_lookups_are_capped_and_evictions_counted() {
        let mut l = Lookups::default();
        for fd in 0..MAX_LOOKUPS as i32 + 7 {
            let kind = EventKind::SslFd {
                ssl: 0x1000,
                fd,
                via: crate::event::BioVia::Read,
                op: crate::event::SslOp::Read,
                record_type: 23,
                sys_bytes: 1,
            };
            let ev = Event::new(1, 7, 7, kind);
            l.observe(&ev, |_, _| false);
            assert!(l.tried.len() <= MAX_LOOKUPS);
        }
        assert_eq!(l.evicted(), MAX_LOOKUPS as u64);
        assert_eq!(l.tried.len(), 7);
    }
}
