//! Wire bytes -> [`Event`]: the only place that reads the kernel's `repr(C)` records.
//!
//! Every read is length-checked and done with `read_unaligned`; tags are converted with
//! checked matches. A record that does not parse is an error the caller counts, never a
//! panic.

use std::{
    mem::size_of,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use thiserror::Error;
use tls_probe_common::{
    CloseEvent, EPOLL_WAIT_HEAD, EpollBusyEvent, EpollCtlEvent, EpollIdleEvent, EpollWaitEvent,
    EventHeader, Kind, LibErrorEvent, MAX_READY, PeerEvent, ReadyEntry, ServerHelloEvent,
    SslCallEvent, SslErrorEvent, SslFreeEvent, WireRecord, epoll_sys, family, hello_flag, peer_sys,
    sys,
};

use crate::event::{
    BioVia, CtlOp, EpollBusy, EpollCtl, EpollIdle, EpollSyscall, EpollWait, Event, EventKind,
    PeerSide, RawStack, ReadyFd, SslCall, SslError, SslErrorCode, SslOp, SysKind,
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than the {need} bytes its kind {kind} needs")]
    Short { kind: u32, need: usize, got: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("unknown SSL op {0}")]
    UnknownOp(u32),
    #[error("unknown epoll syscall {0}")]
    UnknownSyscall(u32),
    #[error("unknown peer syscall {0}")]
    UnknownPeerSyscall(u32),
    #[error("unknown address family {0}")]
    UnknownFamily(u16),
    #[error("unknown memory-BIO tie {0}")]
    UnknownVia(u32),
    #[error("a user-stack record, which decode_stack reads")]
    Stack,
}

/// Reads a record `T` from the front of `bytes`, which must be at least `size_of::<T>()`
/// long.
fn read<T: WireRecord>(bytes: &[u8]) -> Result<T, DecodeError> {
    read_raw(bytes, T::KIND as u32)
}

/// Reads any plain struct (the header too); `kind` only names it in the error.
fn read_raw<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    let need = size_of::<T>();
    if bytes.len() < need {
        return Err(DecodeError::Short {
            kind,
            need,
            got: bytes.len(),
        });
    }
    // SAFETY: the length is checked above, the types are plain-old-data repr(C) structs
    // of integers (tls-probe-common), and read_unaligned makes no alignment assumption.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn epoll_syscall(raw: u32) -> Result<EpollSyscall, DecodeError> {
    match raw {
        epoll_sys::EPOLL_WAIT => Ok(EpollSyscall::EpollWait),
        epoll_sys::EPOLL_PWAIT => Ok(EpollSyscall::EpollPwait),
        epoll_sys::EPOLL_PWAIT2 => Ok(EpollSyscall::EpollPwait2),
        other => Err(DecodeError::UnknownSyscall(other)),
    }
}

/// An epoll wait record: a fixed head, then as many entries as the record's size class holds.
fn epoll_wait(bytes: &[u8]) -> Result<EpollWait, DecodeError> {
    if bytes.len() < EPOLL_WAIT_HEAD {
        return Err(DecodeError::Short {
            kind: Kind::EpollWait as u32,
            need: EPOLL_WAIT_HEAD,
            got: bytes.len(),
        });
    }
    // Read the head through a zero-padded full-size copy: the record may be cut short.
    let mut full = [0u8; size_of::<EpollWaitEvent>()];
    let n = bytes.len().min(full.len());
    full[..n].copy_from_slice(&bytes[..n]);
    let r: EpollWaitEvent = read(&full)?;
    let fits = (n - EPOLL_WAIT_HEAD) / size_of::<ReadyEntry>();
    let filled = (r.n_entries as usize).min(MAX_READY).min(fits);
    Ok(EpollWait {
        syscall: epoll_syscall(r.syscall)?,
        epfd: r.epfd,
        maxevents: r.maxevents,
        timeout_ns: (r.timeout_ns >= 0).then_some(r.timeout_ns),
        start_ns: r.start_ns,
        duration_ns: r.duration_ns,
        ret: r.ret,
        ready: r.entries[..filled]
            .iter()
            .map(|e| ReadyFd {
                events: e.events,
                data: e.data,
                fd: None,
                interest: None,
            })
            .collect(),
    })
}

fn ssl_op(raw: u32) -> Result<SslOp, DecodeError> {
    SslOp::ALL
        .get(raw as usize)
        .copied()
        .ok_or(DecodeError::UnknownOp(raw))
}

/// A peer record: the probe name (the syscall) and the event.
fn peer(r: &PeerEvent) -> Result<(&'static str, EventKind), DecodeError> {
    let (probe, side) = match r.syscall {
        peer_sys::ACCEPT4 => ("accept4", PeerSide::Accepted),
        peer_sys::ACCEPT => ("accept", PeerSide::Accepted),
        peer_sys::CONNECT => ("connect", PeerSide::Connected),
        other => return Err(DecodeError::UnknownPeerSyscall(other)),
    };
    let ip = match r.family {
        family::INET => IpAddr::from([r.addr[0], r.addr[1], r.addr[2], r.addr[3]]),
        family::INET6 => {
            let v6 = Ipv6Addr::from(r.addr);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        other => return Err(DecodeError::UnknownFamily(other)),
    };
    let addr = SocketAddr::new(ip, r.port).to_string();
    Ok((
        probe,
        EventKind::Peer {
            fd: r.fd,
            addr,
            side,
        },
    ))
}

/// A [`RawStack`] if `bytes` is a user-stack record (`None` for any other kind, which
/// [`decode`] reads).
pub fn decode_stack(bytes: &[u8]) -> Option<Result<RawStack, DecodeError>> {
    let hdr: EventHeader = read_raw(bytes, 0).ok()?;
    if hdr.kind != Kind::UserStack as u32 {
        return None;
    }
    Some(user_stack(bytes))
}

fn user_stack(bytes: &[u8]) -> Result<RawStack, DecodeError> {
    let r: tls_probe_common::UserStackEvent = read(bytes)?;
    let op = match r.op {
        tls_probe_common::NO_OP => None,
        raw => Some(ssl_op(raw)?),
    };
    let len = (r.len as usize).min(r.stack.len());
    Ok(RawStack {
        ts_ns: r.hdr.ts_ns,
        pid: r.hdr.pid,
        tid: r.hdr.tid,
        ip: r.ip,
        sp: r.sp,
        bp: r.bp,
        ssl: (r.ssl != 0).then_some(r.ssl),
        op,
        at_error: r.why == tls_probe_common::stack_why::ERROR,
        ret: (r.ret_slot != 0).then_some((r.ret_slot, r.ret_addr)),
        stack: r.stack[..len].to_vec(),
    })
}

pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let hdr: EventHeader = read_raw(bytes, 0)?;
    let kind = Kind::from_u32(hdr.kind).ok_or(DecodeError::UnknownKind(hdr.kind))?;
    let kind = match kind {
        Kind::SslCall => {
            let r: SslCallEvent = read(bytes)?;
            let has_sys = r.sys_calls > 0;
            EventKind::SslCall(SslCall {
                op: ssl_op(r.op)?,
                ssl: r.ssl,
                buf: r.buf,
                len: r.len,
                ret: r.ret,
                bytes: r.bytes,
                start_ns: r.start_ns,
                duration_ns: r.duration_ns,
                fd: (r.fd >= 0).then_some(r.fd),
                fd_seen: r.fd >= 0,
                sys_calls: r.sys_calls,
                sys_last: match r.sys_last_kind {
                    sys::READ => Some(SysKind::Read),
                    sys::WRITE => Some(SysKind::Write),
                    _ => None,
                },
                sys_last_ret: has_sys.then_some(r.sys_last_ret),
                key_ops: r.key_ops,
            })
        }
        Kind::SslError => {
            let r: SslErrorEvent = read(bytes)?;
            EventKind::SslError(SslError {
                ssl: r.ssl,
                ret_arg: r.ret_arg,
                code: SslErrorCode::from_raw(r.code),
            })
        }
        Kind::SslFree => {
            let r: SslFreeEvent = read(bytes)?;
            EventKind::SslFree { ssl: r.ssl }
        }
        Kind::EpollWait => EventKind::EpollWait(epoll_wait(bytes)?),
        Kind::EpollIdle => {
            let r: EpollIdleEvent = read(bytes)?;
            EventKind::EpollIdle(EpollIdle {
                syscall: epoll_syscall(r.syscall)?,
                epfd: r.epfd,
                count: r.count,
                first_ns: r.first_ns,
                blocked_ns: r.blocked_ns,
            })
        }
        Kind::EpollCtl => {
            let r: EpollCtlEvent = read(bytes)?;
            EventKind::EpollCtl(EpollCtl {
                op: match r.op {
                    libc::EPOLL_CTL_ADD => CtlOp::Add,
                    libc::EPOLL_CTL_MOD => CtlOp::Mod,
                    libc::EPOLL_CTL_DEL => CtlOp::Del,
                    other => CtlOp::Other(other),
                },
                epfd: r.epfd,
                fd: r.fd,
                events: r.events,
                data: r.data,
                ret: r.ret,
            })
        }
        Kind::Close => {
            let r: CloseEvent = read(bytes)?;
            EventKind::Close {
                fd: r.fd,
                ret: r.ret,
            }
        }
        Kind::Peer => {
            let r: PeerEvent = read(bytes)?;
            let (probe, kind) = peer(&r)?;
            let mut ev = Event::new(hdr.ts_ns, hdr.pid, hdr.tid, kind);
            ev.probe = std::borrow::Cow::Borrowed(probe);
            return Ok(ev);
        }
        Kind::ServerHello => {
            let r: ServerHelloEvent = read(bytes)?;
            EventKind::ServerHello(crate::event::ServerHello {
                ssl: r.ssl,
                fd: (r.fd >= 0).then_some(r.fd),
                version: r.version,
                cipher: r.cipher,
                psk: r.flags & hello_flag::PSK != 0,
                hello_retry: r.flags & hello_flag::HELLO_RETRY != 0,
                sent: r.flags & hello_flag::SENT != 0,
            })
        }
        Kind::SslFd => {
            let r: tls_probe_common::SslFdEvent = read(bytes)?;
            EventKind::SslFd {
                ssl: r.ssl,
                fd: r.fd,
                via: match r.via {
                    tls_probe_common::bio_via::READ => BioVia::Read,
                    tls_probe_common::bio_via::WRITE => BioVia::Write,
                    other => return Err(DecodeError::UnknownVia(other)),
                },
                op: ssl_op(r.op)?,
                record_type: r.record_type,
                sys_bytes: r.sys_bytes,
            }
        }
        Kind::SslSetFd => {
            let r: tls_probe_common::SslSetFdEvent = read(bytes)?;
            EventKind::SslSetFd {
                ssl: r.ssl,
                fd: r.fd,
            }
        }
        Kind::TaskExit => {
            let r: tls_probe_common::TaskExitEvent = read(bytes)?;
            EventKind::TaskExit {
                cleared: r.cleared,
                group_dead: r.group_dead != 0,
            }
        }
        Kind::EpollBusy => {
            let r: EpollBusyEvent = read(bytes)?;
            EventKind::EpollBusy(EpollBusy {
                syscall: epoll_syscall(r.syscall)?,
                epfd: r.epfd,
                count: r.count,
                quick: r.quick,
                repeats: r.repeats,
                zero_timeout: r.zero_timeout,
                ready_total: r.ready,
                first_ns: r.first_ns,
                blocked_ns: r.blocked_ns,
                last_ready: ReadyFd {
                    events: r.last_events,
                    data: r.last_data,
                    fd: None,
                    interest: None,
                },
            })
        }
        Kind::LibError => {
            let r: LibErrorEvent = read(bytes)?;
            let op = match r.op {
                tls_probe_common::NO_OP => None,
                raw => Some(ssl_op(raw)?),
            };
            EventKind::LibError {
                lib: r.lib,
                reason: r.reason,
                reason_name: lib_reason_name(r.lib, r.reason).map(str::to_owned),
                ssl: (op.is_some() && r.ssl != 0).then_some(r.ssl),
                op,
                fd: (op.is_some() && r.fd >= 0).then_some(r.fd),
            }
        }
        Kind::AsyncPause => {
            let r: tls_probe_common::AsyncPauseEvent = read(bytes)?;
            EventKind::AsyncPause {
                ssl: (r.ssl != 0).then_some(r.ssl),
            }
        }
        Kind::SockOverlap => sock_overlap(bytes)?,
        Kind::UserStack => return Err(DecodeError::Stack),
    };
    Ok(Event::new(hdr.ts_ns, hdr.pid, hdr.tid, kind))
}

fn sock_overlap(bytes: &[u8]) -> Result<EventKind, DecodeError> {
    let r: tls_probe_common::SockOverlapEvent = read(bytes)?;
    let sys_kind = |raw| match raw {
        sys::WRITE => SysKind::Write,
        _ => SysKind::Read,
    };
    let record = |t: u32| u8::try_from(t).ok().filter(|t| (20..=24).contains(t));
    Ok(EventKind::SockOverlap(crate::event::SockOverlap {
        fd: r.fd,
        tid_a: r.tid_a,
        a_since_ns: r.a_since_ns,
        sys_a: sys_kind(r.sys_a),
        sys_b: sys_kind(r.sys_b),
        ssl_a: (r.ssl_a != 0).then_some(r.ssl_a),
        ssl_b: (r.ssl_b != 0).then_some(r.ssl_b),
        record_a: record(r.rec_a),
        record_b: record(r.rec_b),
        suppressed: r.suppressed,
    }))
}

/// The OpenSSL error reasons tls-probe names.
fn lib_reason_name(lib: i32, reason: i32) -> Option<&'static str> {
    use tls_probe_common::ossl;
    match (lib, reason) {
        (ossl::ERR_LIB_SSL, ossl::SSL_R_BAD_WRITE_RETRY) => Some("bad_write_retry"),
        (ossl::ERR_LIB_SSL, ossl::SSL_R_PROTOCOL_IS_SHUTDOWN) => Some("protocol_is_shutdown"),
        (ossl::ERR_LIB_SSL, ossl::SSL_R_UNEXPECTED_EOF_WHILE_READING) => {
            Some("unexpected_eof_while_reading")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use tls_probe_common::{ReadyEntry, op};

    use super::*;

    fn bytes_of<T: Copy>(v: &T) -> Vec<u8> {
        // SAFETY: test-only view of a repr(C) POD value as bytes.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn hdr(kind: u32) -> EventHeader {
        EventHeader {
            kind,
            pid: 42,
            tid: 43,
            _pad: 0,
            ts_ns: 1_000,
        }
    }

    #[test]
    fn ssl_call_ex_with_fd_and_eagain() {
        let rec = SslCallEvent {
            hdr: hdr(Kind::SslCall as u32),
            ssl: 0x5555,
            buf: 0x7777,
            len: 4096,
            ret: 0,
            bytes: 0,
            start_ns: 900,
            duration_ns: 100,
            sys_last_ret: -11,
            fd: 7,
            op: op::SSL_READ_EX,
            sys_calls: 1,
            sys_last_kind: sys::READ,
            key_ops: 2,
            _pad: 0,
        };
        let ev = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(ev.probe, "SSL_read_ex");
        assert_eq!((ev.pid, ev.tid, ev.ts_ns), (42, 43, 1_000));
        let EventKind::SslCall(c) = ev.kind else {
            panic!("not a call: {ev:?}")
        };
        assert_eq!(c.op, SslOp::ReadEx);
        assert_eq!(c.fd, Some(7));
        assert!(c.fd_seen);
        assert_eq!(c.sys_last, Some(SysKind::Read));
        assert_eq!(c.sys_last_ret, Some(-11));
        assert!(!c.made_progress());
        assert_eq!(c.key_ops, 2);
    }

    #[test]
    fn a_user_stack_decodes_to_its_copied_bytes_only_and_is_not_an_event() {
        let mut rec = tls_probe_common::UserStackEvent {
            hdr: hdr(Kind::UserStack as u32),
            ip: 0x7f00_0000_1000,
            sp: 0x7ffe_0000_0000,
            bp: 0,
            ssl: 0x55aa,
            op: op::SSL_WRITE,
            why: tls_probe_common::stack_why::ERROR,
            len: 1024,
            _pad: 0,
            ret_slot: 0x7ffe_0000_0100,
            ret_addr: 0x5555_0000_1234,
            stack: [7; tls_probe_common::STACK_BYTES],
        };
        let s = decode_stack(&bytes_of(&rec)).unwrap().unwrap();
        assert_eq!(
            (s.pid, s.tid, s.ts_ns, s.ip),
            (42, 43, 1_000, 0x7f00_0000_1000)
        );
        assert_eq!(
            (s.ssl, s.op, s.at_error),
            (Some(0x55aa), Some(SslOp::Write), true)
        );
        assert_eq!(s.stack.len(), 1024);
        assert_eq!(s.ret, Some((0x7ffe_0000_0100, 0x5555_0000_1234)));
        // A length past the array is cut to it; a short record is an error.
        rec.len = u32::MAX;
        assert_eq!(
            decode_stack(&bytes_of(&rec)).unwrap().unwrap().stack.len(),
            tls_probe_common::STACK_BYTES
        );
        assert!(matches!(
            decode_stack(&bytes_of(&rec)[..100]),
            Some(Err(DecodeError::Short { .. }))
        ));
        // Other kinds are not stacks.
        assert!(decode_stack(&bytes_of(&hdr(Kind::SslFree as u32))).is_none());
    }

    #[test]
    fn memory_bio_tie_decodes_and_a_bad_via_is_an_error() {
        let mut rec = tls_probe_common::SslFdEvent {
            hdr: hdr(Kind::SslFd as u32),
            ssl: 0x55aa,
            sys_bytes: 517,
            fd: 7,
            via: tls_probe_common::bio_via::WRITE,
            op: tls_probe_common::op::SSL_DO_HANDSHAKE,
            record_type: 0x16,
            _pad: [0; 3],
        };
        let ev = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(ev.probe, "write");
        assert_eq!(
            ev.kind,
            EventKind::SslFd {
                ssl: 0x55aa,
                fd: 7,
                via: BioVia::Write,
                op: SslOp::DoHandshake,
                record_type: 0x16,
                sys_bytes: 517,
            }
        );
        rec.via = 9;
        assert_eq!(decode(&bytes_of(&rec)), Err(DecodeError::UnknownVia(9)));
        assert!(matches!(
            decode(&bytes_of(&rec)[..40]),
            Err(DecodeError::Short { kind: 12, .. })
        ));
    }

    #[test]
    fn task_exit_decodes_and_a_short_one_is_an_error() {
        let rec = tls_probe_common::TaskExitEvent {
            hdr: hdr(Kind::TaskExit as u32),
            cleared: 2,
            group_dead: 1,
        };
        let ev = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(ev.probe, "sched_process_exit");
        assert_eq!(
            ev.kind,
            EventKind::TaskExit {
                cleared: 2,
                group_dead: true
            }
        );
        let short = &bytes_of(&rec)[..28];
        assert!(matches!(
            decode(short),
            Err(DecodeError::Short { kind: 14, .. })
        ));
    }

    #[test]
    fn async_pause_decodes_with_or_without_its_ssl_and_a_short_one_is_an_error() {
        let mut rec = tls_probe_common::AsyncPauseEvent {
            hdr: hdr(Kind::AsyncPause as u32),
            ssl: 0x55aa,
        };
        let ev = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(ev.probe, "ASYNC_pause_job");
        assert_eq!(ev.kind, EventKind::AsyncPause { ssl: Some(0x55aa) });
        rec.ssl = 0;
        let ev = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(ev.kind, EventKind::AsyncPause { ssl: None });
        assert!(matches!(
            decode(&bytes_of(&rec)[..31]),
            Err(DecodeError::Short { kind: 15, .. })
        ));
    }

    #[test]
    fn socket_overlaps_decode_their_records_and_a_short_one_is_an_error() {
        let rec = tls_probe_common::SockOverlapEvent {
            hdr: hdr(Kind::SockOverlap as u32),
            a_since_ns: 5,
            ssl_a: 0,
            ssl_b: 0x55aa,
            fd: 7,
            tid_a: 12,
            sys_a: sys::READ,
            sys_b: sys::WRITE,
            rec_a: 0,
            rec_b: 23,
            suppressed: 3,
            _pad: 0,
        };
        let ev = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(ev.probe, "socket_overlap");
        let EventKind::SockOverlap(o) = ev.kind else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (o.fd, o.tid_a, o.sys_a, o.sys_b, o.ssl_a, o.ssl_b),
            (7, 12, SysKind::Read, SysKind::Write, None, Some(0x55aa))
        );
        assert_eq!((o.record_a, o.record_b, o.suppressed), (None, Some(23), 3));
        assert!(matches!(
            decode(&bytes_of(&rec)[..79]),
            Err(DecodeError::Short { kind: 20, .. })
        ));
    }

    #[test]
    fn ssl_call_without_syscall_has_no_fd() {
        let rec = SslCallEvent {
            hdr: hdr(Kind::SslCall as u32),
            fd: -1,
            op: op::SSL_WRITE,
            ret: 10,
            bytes: 10,
            ..Default::default()
        };
        let EventKind::SslCall(c) = decode(&bytes_of(&rec)).unwrap().kind else {
            panic!()
        };
        assert_eq!(c.fd, None);
        assert_eq!(c.sys_last_ret, None);
        assert!(c.made_progress());
    }

    #[test]
    fn epoll_wait_entries_are_bounded_by_n_entries() {
        let mut rec = EpollWaitEvent {
            hdr: hdr(Kind::EpollWait as u32),
            ret: 3,
            n_entries: 2,
            timeout_ns: -1,
            syscall: epoll_sys::EPOLL_PWAIT,
            ..Default::default()
        };
        rec.entries[0] = ReadyEntry {
            events: libc::EPOLLOUT as u32,
            _pad: 0,
            data: 9,
        };
        rec.entries[1] = ReadyEntry {
            events: libc::EPOLLIN as u32,
            _pad: 0,
            data: 0xdead_0000_0000_000a,
        };
        let ev = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(ev.probe, "epoll_pwait");
        let EventKind::EpollWait(w) = ev.kind else {
            panic!()
        };
        assert_eq!(w.timeout_ns, None);
        assert_eq!(w.ready.len(), 2);
        assert_eq!(w.ready[1].data, 0xdead_0000_0000_000a);
    }

    #[test]
    fn a_small_record_holds_only_its_size_class() {
        let mut rec = EpollWaitEvent {
            hdr: hdr(Kind::EpollWait as u32),
            ret: 1,
            n_entries: 1,
            ..Default::default()
        };
        rec.entries[0].data = 7;
        rec.entries[2].data = 99;
        let b = bytes_of(&rec);
        let small = &b[..tls_probe_common::EPOLL_WAIT_SMALL];
        let EventKind::EpollWait(w) = decode(small).unwrap().kind else {
            panic!()
        };
        assert_eq!(w.ready.len(), 1);
        assert_eq!(w.ready[0].data, 7);
        // A record that claims more entries than it carries yields only what it carries.
        rec.n_entries = 5;
        let b = bytes_of(&rec);
        let EventKind::EpollWait(w) = decode(&b[..tls_probe_common::EPOLL_WAIT_SMALL])
            .unwrap()
            .kind
        else {
            panic!()
        };
        assert_eq!(w.ready.len(), 2);
        assert!(matches!(decode(&b[..40]), Err(DecodeError::Short { .. })));
    }

    #[test]
    fn idle_aggregates_decode() {
        let rec = EpollIdleEvent {
            hdr: hdr(Kind::EpollIdle as u32),
            first_ns: 10,
            blocked_ns: 500,
            count: 4096,
            epfd: 5,
            syscall: epoll_sys::EPOLL_WAIT,
            _pad: 0,
        };
        let ev = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(ev.probe, "epoll_wait");
        let EventKind::EpollIdle(w) = ev.kind else {
            panic!()
        };
        assert_eq!(
            (w.count, w.epfd, w.first_ns, w.blocked_ns),
            (4096, 5, 10, 500)
        );
    }

    #[test]
    fn n_entries_past_the_array_is_clamped() {
        let rec = EpollWaitEvent {
            hdr: hdr(Kind::EpollWait as u32),
            n_entries: 1000,
            ..Default::default()
        };
        let EventKind::EpollWait(w) = decode(&bytes_of(&rec)).unwrap().kind else {
            panic!()
        };
        assert_eq!(w.ready.len(), MAX_READY);
    }

    #[test]
    fn short_and_unknown_records_are_errors() {
        assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::Short { .. })));
        let rec = SslCallEvent {
            hdr: hdr(Kind::SslCall as u32),
            ..Default::default()
        };
        let b = bytes_of(&rec);
        assert_eq!(
            decode(&b[..50]),
            Err(DecodeError::Short {
                kind: Kind::SslCall as u32,
                need: size_of::<SslCallEvent>(),
                got: 50
            })
        );
        assert_eq!(
            decode(&bytes_of(&hdr(99))),
            Err(DecodeError::UnknownKind(99))
        );
        let bad_op = SslCallEvent {
            hdr: hdr(Kind::SslCall as u32),
            op: 77,
            ..Default::default()
        };
        assert_eq!(decode(&bytes_of(&bad_op)), Err(DecodeError::UnknownOp(77)));
    }

    fn peer_rec(syscall: u32, fam: u16, port: u16, addr: &[u8]) -> PeerEvent {
        let mut r = PeerEvent {
            hdr: hdr(Kind::Peer as u32),
            fd: 12,
            syscall,
            family: fam,
            port,
            ..Default::default()
        };
        r.addr[..addr.len()].copy_from_slice(addr);
        r
    }

    #[test]
    fn peers_decode_both_families() {
        let ev = decode(&bytes_of(&peer_rec(
            peer_sys::ACCEPT4,
            family::INET,
            5678,
            &[1, 2, 3, 4],
        )))
        .unwrap();
        assert_eq!(ev.probe, "accept4");
        assert_eq!(
            ev.kind,
            EventKind::Peer {
                fd: 12,
                addr: "1.2.3.4:5678".to_owned(),
                side: PeerSide::Accepted
            }
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        let ev = decode(&bytes_of(&peer_rec(
            peer_sys::CONNECT,
            family::INET6,
            443,
            &v6,
        )))
        .unwrap();
        assert_eq!(ev.probe, "connect");
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["kind"], "peer");
        assert_eq!(json["addr"], "[::1]:443");
        assert_eq!(json["side"], "connected");
        // A v4 client on a dual-stack socket: written as IPv4, so its host matches.
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1];
        let ev = decode(&bytes_of(&peer_rec(
            peer_sys::ACCEPT,
            family::INET6,
            40000,
            &mapped,
        )))
        .unwrap();
        assert_eq!(ev.probe, "accept");
        assert!(
            matches!(&ev.kind, EventKind::Peer { addr, .. } if addr == "127.0.0.1:40000"),
            "{ev:?}"
        );
    }

    #[test]
    fn bad_peer_records_are_errors() {
        let b = bytes_of(&peer_rec(peer_sys::ACCEPT4, family::INET, 1, &[1, 2, 3, 4]));
        assert_eq!(
            decode(&b[..40]),
            Err(DecodeError::Short {
                kind: Kind::Peer as u32,
                need: size_of::<PeerEvent>(),
                got: 40
            })
        );
        let unix = peer_rec(peer_sys::ACCEPT4, 1, 0, &[]);
        assert_eq!(decode(&bytes_of(&unix)), Err(DecodeError::UnknownFamily(1)));
        let bad = peer_rec(9, family::INET, 1, &[1, 2, 3, 4]);
        assert_eq!(
            decode(&bytes_of(&bad)),
            Err(DecodeError::UnknownPeerSyscall(9))
        );
    }

    #[test]
    fn error_codes_are_named() {
        let rec = SslErrorEvent {
            hdr: hdr(Kind::SslError as u32),
            ssl: 1,
            ret_arg: -1,
            code: 2,
            _pad: 0,
        };
        let ev = decode(&bytes_of(&rec)).unwrap();
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["code"], "want_read");
        assert_eq!(json["probe"], "SSL_get_error");
        assert_eq!(json["kind"], "ssl_error");
    }

    #[test]
    fn server_hellos_decode_flags() {
        let rec = ServerHelloEvent {
            hdr: hdr(Kind::ServerHello as u32),
            ssl: 0x5555,
            fd: 7,
            version: 0x0304,
            cipher: 0x1302,
            flags: hello_flag::PSK | hello_flag::SENT | hello_flag::SUPPORTED_VERSIONS,
            _pad: 0,
        };
        let ev = decode(&bytes_of(&rec)).unwrap();
        assert_eq!(ev.probe, "write");
        let EventKind::ServerHello(h) = &ev.kind else {
            panic!("not a server hello: {ev:?}");
        };
        assert_eq!(
            (h.ssl, h.fd, h.version, h.cipher),
            (0x5555, Some(7), 0x0304, 0x1302)
        );
        assert!(h.psk && h.sent && !h.hello_retry);
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["kind"], "server_hello");
        let read_side = ServerHelloEvent {
            fd: -1,
            flags: hello_flag::HELLO_RETRY,
            ..rec
        };
        let ev = decode(&bytes_of(&read_side)).unwrap();
        assert_eq!(ev.probe, "read");
        let EventKind::ServerHello(h) = &ev.kind else {
            panic!("not a server hello: {ev:?}");
        };
        assert_eq!(h.fd, None);
        assert!(h.hello_retry && !h.sent && !h.psk);
        assert_eq!(
            decode(&bytes_of(&rec)[..40]),
            Err(DecodeError::Short {
                kind: Kind::ServerHello as u32,
                need: size_of::<ServerHelloEvent>(),
                got: 40
            })
        );
    }
}
