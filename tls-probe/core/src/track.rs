//! Fills in what a single probe record cannot know: which fd an SSL* uses, and which fd
//! (with which interest mask) an epoll ready entry stands for.
//!
//! nginx and most event loops store a pointer, not the fd, in `epoll_event.data`, so the
//! tracker keeps every registration seen through `epoll_ctl` (or read from
//! `/proc/PID/fdinfo` for the ones made before tls-probe attached) and maps `data` back.
//! An SSL* is mapped to the fd of the socket syscalls made inside its calls, or, over memory
//! BIOs, to the fd the kernel tied it to (`SslFd`, from the socket I/O just before or after
//! its calls); the mapping is kept for later calls that make no syscall and dropped on
//! `SSL_free` and `close`.
//! Pure and deterministic: events in, the same events enriched out.
//!
//! Every table is bounded (the `MAX_*` below): a new key in a full table empties it first,
//! and what was dropped is counted in [`Tracker::evicted`] (see [`crate::bounds`]).

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    bounds::{Evicted, make_room, make_room_set},
    event::{CtlOp, Event, EventKind},
};

/// SSL* <-> fd ties: one per live connection of the targets (the engine's `max_connections`).
pub const MAX_SSL_FDS: usize = 65_536;
/// Epoll registrations: one per fd in each epoll set of the targets (nginx: one per
/// connection and listener per worker), twice the connections.
pub const MAX_REGISTRATIONS: usize = 131_072;
/// Epoll instances seen in a wait, and the per-thread last ready fd: one per thread at most
/// (the engine's `max_threads`).
pub const MAX_EPOLL_INSTANCES: usize = 16_384;
pub const MAX_READY_THREADS: usize = 16_384;

#[derive(Clone, Copy, Debug)]
struct Registration {
    fd: i32,
    interest: u32,
}

#[derive(Default, Debug)]
pub struct Tracker {
    /// (pid, epfd, data) -> registration.
    by_data: FxHashMap<(u32, i32, u64), Registration>,
    /// (pid, epfd, fd) -> data, to undo a registration on MOD/DEL/close.
    by_fd: FxHashMap<(u32, i32, i32), u64>,
    /// (pid, SSL*) -> fd.
    ssl_fd: FxHashMap<(u32, u64), i32>,
    /// (pid, fd) -> SSL*, to drop the mapping on close.
    fd_ssl: FxHashMap<(u32, i32), u64>,
    /// (pid, epfd) seen in a wait: their registrations are known or were asked for.
    known_epfds: FxHashSet<(u32, i32)>,
    /// (pid, epfd) whose registrations predate attach and should be read from fdinfo.
    pending_seed: Vec<(u32, i32)>,
    /// Memory-BIO ties that moved an SSL* to another fd while its old one was still open.
    pub bio_disagreements: u64,
    /// (pid, tid) -> the one fd its last epoll wait reported ready, when it reported one.
    last_ready: FxHashMap<(u32, u32), i32>,
    /// What the bounded tables above dropped (`ssl_fds`, `epoll_registrations`,
    /// `epoll_instances`, `ready_fds`).
    evicted: Evicted,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Epoll instances first seen in a wait since the last call: the caller should read their
    /// registrations from `/proc/PID/fdinfo/EPFD` and feed them back as `CtlOp::Fdinfo` events.
    pub fn take_pending_seeds(&mut self) -> Vec<(u32, i32)> {
        std::mem::take(&mut self.pending_seed)
    }

    /// Marks an epoll instance as known, e.g. after seeding it at attach time.
    pub fn mark_seeded(&mut self, pid: u32, epfd: i32) {
        self.known_epfds.insert((pid, epfd));
    }

    /// Drops everything kept for `pid` (it exited: the kernel closed its fds without a
    /// `close` for the tracker to see). `watch` calls it, so that a host's short-lived
    /// processes leave nothing behind.
    pub fn forget(&mut self, pid: u32) {
        self.by_data.retain(|k, _| k.0 != pid);
        self.by_fd.retain(|k, _| k.0 != pid);
        self.ssl_fd.retain(|k, _| k.0 != pid);
        self.fd_ssl.retain(|k, _| k.0 != pid);
        self.known_epfds.retain(|k| k.0 != pid);
        self.pending_seed.retain(|k| k.0 != pid);
        self.last_ready.retain(|k, _| k.0 != pid);
    }

    /// What the tracker's tables dropped because they were full, since the start.
    pub fn evicted(&self) -> Evicted {
        self.evicted
    }

    /// How many entries the tracker's tables hold now: SSL* ties, epoll registrations,
    /// epoll instances, per-thread ready fds.
    pub fn table_sizes(&self) -> [usize; 4] {
        [
            self.ssl_fd.len(),
            self.by_data.len(),
            self.known_epfds.len(),
            self.last_ready.len(),
        ]
    }

    /// The fd currently mapped to an SSL*, if any.
    pub fn fd_of(&self, pid: u32, ssl: u64) -> Option<i32> {
        self.ssl_fd.get(&(pid, ssl)).copied()
    }

    /// Enriches `ev` in place and updates the mappings.
    pub fn process(&mut self, ev: &mut Event) {
        let (pid, tid) = (ev.pid, ev.tid);
        match &mut ev.kind {
            EventKind::SslCall(call) => {
                if let (true, Some(fd)) = (call.fd_seen, call.fd) {
                    self.map_ssl(pid, call.ssl, fd);
                } else if call.fd.is_none() {
                    call.fd = self.fd_of(pid, call.ssl);
                }
                if call.fd.is_none()
                    && call.sys_calls == 0
                    && !call.op.is_handshake()
                    && let Some(&fd) = self.last_ready.get(&(pid, tid))
                    && !self.fd_ssl.contains_key(&(pid, fd))
                {
                    // Over memory BIOs, an I/O call on an SSL* tied to no socket yet (one
                    // that was connected before attach and moves no bytes, so neither its
                    // reads nor its writes tie it), made after a wait that reported one fd
                    // ready, which no connection has: that fd. A later tie from the kernel
                    // overrides it.
                    self.map_ssl(pid, call.ssl, fd);
                    call.fd = Some(fd);
                }
            }
            EventKind::SslFd { ssl, fd, .. } => {
                let (ssl, fd) = (*ssl, *fd);
                if self
                    .fd_of(pid, ssl)
                    .is_some_and(|old| old != fd && self.fd_ssl.get(&(pid, old)) == Some(&ssl))
                {
                    // Its old socket is still open: the ties disagree.
                    self.bio_disagreements += 1;
                }
                self.map_ssl(pid, ssl, fd);
            }
            // The application's own word: no disagreement to count.
            EventKind::SslSetFd { ssl, fd } => {
                if *fd >= 0 {
                    self.map_ssl(pid, *ssl, *fd);
                }
            }
            EventKind::SslFree { ssl } => {
                if let Some(fd) = self.ssl_fd.remove(&(pid, *ssl)) {
                    self.fd_ssl.remove(&(pid, fd));
                }
            }
            EventKind::Close { fd, .. } => self.close(pid, *fd),
            EventKind::EpollCtl(ctl) => {
                if ctl.ret < 0 {
                    return;
                }
                match ctl.op {
                    CtlOp::Add | CtlOp::Mod | CtlOp::Fdinfo => {
                        self.unregister(pid, ctl.epfd, ctl.fd);
                        self.room_for_registration(pid, ctl.epfd, ctl.fd, ctl.data);
                        self.by_data.insert(
                            (pid, ctl.epfd, ctl.data),
                            Registration {
                                fd: ctl.fd,
                                interest: ctl.events,
                            },
                        );
                        self.by_fd.insert((pid, ctl.epfd, ctl.fd), ctl.data);
                        if ctl.op == CtlOp::Fdinfo {
                            self.known_epfds.insert((pid, ctl.epfd));
                        }
                    }
                    CtlOp::Del => self.unregister(pid, ctl.epfd, ctl.fd),
                    CtlOp::Other(_) => {}
                }
            }
            EventKind::EpollWait(wait) => {
                self.room_for_epfd(pid, wait.epfd);
                if self.known_epfds.insert((pid, wait.epfd)) {
                    self.pending_seed.push((pid, wait.epfd));
                }
                for ready in &mut wait.ready {
                    if let Some(reg) = self.by_data.get(&(pid, wait.epfd, ready.data)) {
                        ready.fd = Some(reg.fd);
                        ready.interest = Some(reg.interest);
                    }
                }
                if let [crate::event::ReadyFd { fd: Some(fd), .. }] = wait.ready.as_slice() {
                    make_room(
                        &mut self.last_ready,
                        MAX_READY_THREADS,
                        &(pid, tid),
                        &mut self.evicted.ready_fds,
                    );
                    self.last_ready.insert((pid, tid), *fd);
                } else {
                    self.last_ready.remove(&(pid, tid));
                }
            }
            EventKind::EpollBusy(busy) => {
                self.room_for_epfd(pid, busy.epfd);
                if self.known_epfds.insert((pid, busy.epfd)) {
                    self.pending_seed.push((pid, busy.epfd));
                }
                let ready = &mut busy.last_ready;
                if let Some(reg) = self.by_data.get(&(pid, busy.epfd, ready.data)) {
                    ready.fd = Some(reg.fd);
                    ready.interest = Some(reg.interest);
                }
            }
            EventKind::SslError(_)
            | EventKind::LibError { .. }
            | EventKind::EpollIdle(_)
            | EventKind::ThreadCpu { .. }
            | EventKind::ListenOverflows { .. }
            | EventKind::Peer { .. }
            | EventKind::ServerHello(_)
            | EventKind::TaskExit { .. }
            | EventKind::AsyncPause { .. }
            | EventKind::SockOverlap(_) => {}
        }
    }

    fn map_ssl(&mut self, pid: u32, ssl: u64, fd: i32) {
        // The two directions are one table: emptied together, counted once.
        let n = &mut self.evicted.ssl_fds;
        if make_room(&mut self.ssl_fd, MAX_SSL_FDS, &(pid, ssl), n)
            || make_room(&mut self.fd_ssl, MAX_SSL_FDS, &(pid, fd), n)
        {
            self.ssl_fd.clear();
            self.fd_ssl.clear();
        }
        if let Some(old_fd) = self.ssl_fd.insert((pid, ssl), fd)
            && old_fd != fd
        {
            self.fd_ssl.remove(&(pid, old_fd));
        }
        if let Some(old_ssl) = self.fd_ssl.insert((pid, fd), ssl)
            && old_ssl != ssl
        {
            self.ssl_fd.remove(&(pid, old_ssl));
        }
    }

    /// Room for a registration: a full table is emptied (both directions), and so is the
    /// set of known epoll instances, so that each is read again from /proc on its next wait.
    fn room_for_registration(&mut self, pid: u32, epfd: i32, fd: i32, data: u64) {
        let n = &mut self.evicted.epoll_registrations;
        if make_room(&mut self.by_data, MAX_REGISTRATIONS, &(pid, epfd, data), n)
            || make_room(&mut self.by_fd, MAX_REGISTRATIONS, &(pid, epfd, fd), n)
        {
            self.by_data.clear();
            self.by_fd.clear();
            self.known_epfds.clear();
            self.pending_seed.clear();
        }
    }

    /// Room for an epoll instance; a full set is emptied (their registrations stay) and the
    /// pending seeds with it.
    fn room_for_epfd(&mut self, pid: u32, epfd: i32) {
        if make_room_set(
            &mut self.known_epfds,
            MAX_EPOLL_INSTANCES,
            &(pid, epfd),
            &mut self.evicted.epoll_instances,
        ) {
            self.pending_seed.clear();
        }
    }

    fn unregister(&mut self, pid: u32, epfd: i32, fd: i32) {
        if let Some(data) = self.by_fd.remove(&(pid, epfd, fd)) {
            self.by_data.remove(&(pid, epfd, data));
        }
    }

    fn close(&mut self, pid: u32, fd: i32) {
        if let Some(ssl) = self.fd_ssl.remove(&(pid, fd)) {
            self.ssl_fd.remove(&(pid, ssl));
        }
        // A closed fd leaves every epoll set of the process (we assume no dup'd copies).
        let stale: Vec<(u32, i32, i32)> = self
            .by_fd
            .keys()
            .filter(|&&(p, epfd, f)| p == pid && (f == fd || epfd == fd))
            .copied()
            .collect();
        for (p, epfd, f) in stale {
            self.unregister(p, epfd, f);
        }
        self.known_epfds.remove(&(pid, fd));
    }
}

/// Parses the epoll registrations in the text of `/proc/PID/fdinfo/EPFD`.
///
/// Lines look like `tfd:        5 events:       19 data:                5  pos:0 ino:...`,
/// with `events` and `data` in hex.
pub fn parse_epoll_fdinfo(text: &str) -> Vec<(i32, u32, u64)> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let mut field = |name: &str| {
                if it.next()? != name {
                    return None;
                }
                it.next()
            };
            let fd = field("tfd:")?.parse().ok()?;
            let events = u32::from_str_radix(field("events:")?, 16).ok()?;
            let data = u64::from_str_radix(field("data:")?, 16).ok()?;
            Some((fd, events, data))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EpollCtl, EpollSyscall, EpollWait, ReadyFd, SslCall, SslOp};

    fn call(ssl: u64, fd: Option<i32>) -> Event {
        Event::new(
            1,
            10,
            11,
            EventKind::SslCall(SslCall {
                op: SslOp::Read,
                ssl,
                buf: 0,
                len: 10,
                ret: -1,
                bytes: 0,
                start_ns: 0,
                duration_ns: 1,
                fd,
                fd_seen: fd.is_some(),
                sys_calls: u32::from(fd.is_some()),
                sys_last: None,
                sys_last_ret: None,
                key_ops: 0,
            }),
        )
    }

    fn call_fd(ev: &Event) -> Option<i32> {
        match &ev.kind {
            EventKind::SslCall(c) => c.fd,
            _ => panic!("not a call"),
        }
    }

    fn ctl(op: CtlOp, epfd: i32, fd: i32, events: u32, data: u64) -> Event {
        Event::new(
            1,
            10,
            11,
            EventKind::EpollCtl(EpollCtl {
                op,
                epfd,
                fd,
                events,
                data,
                ret: 0,
            }),
        )
    }

    fn wait(epfd: i32, data: u64) -> Event {
        Event::new(
            1,
            10,
            11,
            EventKind::EpollWait(EpollWait {
                syscall: EpollSyscall::EpollWait,
                epfd,
                maxevents: 8,
                timeout_ns: Some(0),
                start_ns: 0,
                duration_ns: 1,
                ret: 1,
                ready: smallvec::smallvec![ReadyFd {
                    events: 4,
                    data,
                    fd: None,
                    interest: None,
                }],
            }),
        )
    }

    fn ready(ev: &Event) -> (Option<i32>, Option<u32>) {
        match &ev.kind {
            EventKind::EpollWait(w) => (w.ready[0].fd, w.ready[0].interest),
            _ => panic!("not a wait"),
        }
    }

    #[test]
    fn ssl_fd_is_remembered_and_dropped_on_close_and_free() {
        let mut t = Tracker::new();
        t.process(&mut call(0xa, Some(7)));
        let mut later = call(0xa, None);
        t.process(&mut later);
        assert_eq!(call_fd(&later), Some(7));

        t.process(&mut Event::new(
            2,
            10,
            11,
            EventKind::Close { fd: 7, ret: 0 },
        ));
        let mut after_close = call(0xa, None);
        t.process(&mut after_close);
        assert_eq!(call_fd(&after_close), None);

        t.process(&mut call(0xb, Some(8)));
        t.process(&mut Event::new(3, 10, 11, EventKind::SslFree { ssl: 0xb }));
        let mut after_free = call(0xb, None);
        t.process(&mut after_free);
        assert_eq!(call_fd(&after_free), None);
    }

    fn tie(ssl: u64, fd: i32) -> Event {
        Event::new(
            1,
            10,
            11,
            EventKind::SslFd {
                ssl,
                fd,
                via: crate::event::BioVia::Write,
                op: SslOp::DoHandshake,
                record_type: 0x16,
                sys_bytes: 517,
            },
        )
    }

    #[test]
    fn memory_bio_tie_gives_later_calls_their_fd_and_a_move_while_open_is_counted() {
        let mut t = Tracker::new();
        t.process(&mut tie(0xa, 7));
        let mut later = call(0xa, None);
        t.process(&mut later);
        assert_eq!(call_fd(&later), Some(7));
        assert_eq!(t.bio_disagreements, 0);
        // fd 7 still open: a tie to 9 disagrees.
        t.process(&mut tie(0xa, 9));
        assert_eq!(t.bio_disagreements, 1);
        assert_eq!(t.fd_of(10, 0xa), Some(9));
        // After a close, a new tie is no disagreement.
        t.process(&mut Event::new(
            2,
            10,
            11,
            EventKind::Close { fd: 9, ret: 0 },
        ));
        t.process(&mut tie(0xa, 12));
        assert_eq!(t.bio_disagreements, 1);
        assert_eq!(t.fd_of(10, 0xa), Some(12));
    }

    #[test]
    fn an_untied_memory_bio_call_after_one_ready_fd_takes_it() {
        let mut t = Tracker::new();
        let data = 0x7f00_0000_0009;
        t.process(&mut ctl(CtlOp::Add, 3, 9, 0x4, data));
        t.process(&mut wait(3, data));
        let mut spin = call(0xa, None);
        t.process(&mut spin);
        assert_eq!(call_fd(&spin), Some(9));
        // Another SSL* after the same wait: the fd is taken.
        let mut other = call(0xb, None);
        t.process(&mut other);
        assert_eq!(call_fd(&other), None);
        // A wait with nothing resolvable ready: no guess.
        t.process(&mut wait(3, 0x1234));
        let mut later = call(0xc, None);
        t.process(&mut later);
        assert_eq!(call_fd(&later), None);
        // A kernel tie overrides the guess.
        t.process(&mut tie(0xa, 12));
        assert_eq!(t.fd_of(10, 0xa), Some(12));
    }

    #[test]
    fn fd_reused_by_a_new_ssl_moves_the_mapping() {
        let mut t = Tracker::new();
        t.process(&mut call(0xa, Some(7)));
        t.process(&mut call(0xb, Some(7)));
        assert_eq!(t.fd_of(10, 0xa), None);
        assert_eq!(t.fd_of(10, 0xb), Some(7));
    }

    #[test]
    fn epoll_data_pointer_maps_back_to_fd_and_interest() {
        let mut t = Tracker::new();
        let data = 0x7f00_dead_beef;
        t.process(&mut ctl(CtlOp::Add, 3, 9, 0x1 | 0x4, data));
        let mut w = wait(3, data);
        t.process(&mut w);
        assert_eq!(ready(&w), (Some(9), Some(0x5)));

        t.process(&mut ctl(CtlOp::Mod, 3, 9, 0x1, data));
        let mut w = wait(3, data);
        t.process(&mut w);
        assert_eq!(ready(&w), (Some(9), Some(0x1)));

        t.process(&mut ctl(CtlOp::Del, 3, 9, 0, 0));
        let mut w = wait(3, data);
        t.process(&mut w);
        assert_eq!(ready(&w), (None, None));
    }

    #[test]
    fn unknown_epfd_is_requested_once_for_seeding() {
        let mut t = Tracker::new();
        t.process(&mut wait(3, 1));
        t.process(&mut wait(3, 1));
        assert_eq!(t.take_pending_seeds(), vec![(10, 3)]);
        assert!(t.take_pending_seeds().is_empty());
        t.process(&mut ctl(CtlOp::Fdinfo, 3, 5, 0x1, 1));
        let mut w = wait(3, 1);
        t.process(&mut w);
        assert_eq!(ready(&w), (Some(5), Some(1)));
    }

    #[test]
    fn closing_an_fd_drops_its_registration() {
        let mut t = Tracker::new();
        t.process(&mut ctl(CtlOp::Add, 3, 9, 1, 9));
        t.process(&mut Event::new(
            2,
            10,
            11,
            EventKind::Close { fd: 9, ret: 0 },
        ));
        let mut w = wait(3, 9);
        t.process(&mut w);
        assert_eq!(ready(&w), (None, None));
    }

    #[test]
    fn fdinfo_lines_parse() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
            tfd:        5 events:       19 data:                5  pos:0 ino:3f1 sdev:8\n\
            tfd:       12 events: 80000005 data:     7f3a2c001234  pos:0 ino:3f2 sdev:8\n";
        assert_eq!(
            parse_epoll_fdinfo(text),
            vec![(5, 0x19, 5), (12, 0x8000_0005, 0x7f3a_2c00_1234)]
        );
    }
}
