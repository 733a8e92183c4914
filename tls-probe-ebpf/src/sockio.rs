//! Socket syscalls made inside an SSL call: they tell which fd the SSL* uses, and, inside a
//! handshake call, carry the cleartext ServerHello, from which the negotiated version and
//! cipher are read at the record layer.
//!
//! Outside the per-call probes they also see two threads of a target with a read or write
//! in flight on one fd at the same moment (`SockOverlapEvent`).
//!
//! These tracepoints fire for every process on the machine, so they do two map lookups
//! keyed by tid (`INFLIGHT`, `SOCK_IN` at the exit) before filtering on the target map.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
};
use tls_probe_common::{
    SOCK_OVERLAP_GAP_NS, ServerHelloEvent, SockOverlapEvent, hello_flag, op, sys, target_flag,
};

use crate::{
    bio::{self, shape},
    maps::{EVENTS, FD_USE, INFLIGHT, SHARED_FD, SOCK_IN, SOCKIO_GEN},
    state::{FdUse, HELLO_BODY_NEXT, HELLO_DONE, Inflight, SockIn},
    util::{count_sockio, header, lost, now, sys_arg, sys_ret, target_flags, wakeup_flags},
};

/// Two threads entering I/O on one fd within this much of each other share it.
const SHARED_FD_NS: u64 = 50_000_000;
/// `flags` bits of a receive that leaves the TLS records where they are: it peeks, or it
/// reads the socket's error queue (timestamps, zero-copy completions).
const MSG_PEEK: u64 = 2;
const MSG_ERRQUEUE: u64 = 0x2000;
/// The largest TLS record body: 2^14 bytes of plaintext plus expansion.
const MAX_RECORD: u16 = 18_432;

/// One socket syscall as it enters: its kind, the shape of its buffer argument
/// (`bio::shape`: a buffer and its length, an iovec or a msghdr), and which argument holds
/// the receive flags (0: none).
#[derive(Clone, Copy)]
struct SysIo {
    kind: u32,
    shape: u32,
    flags_arg: usize,
}

/// The content type (20 to 24) of the TLS record whose 5-byte header starts at `buf`
/// (type, a record-layer version 3.1 to 3.3: TLS 1.3 records say 3.3 too, a plausible
/// length), or 0. Header fields only, never the payload.
#[inline(always)]
fn record_type(buf: u64) -> u32 {
    if buf == 0 {
        return 0;
    }
    let Some(h) = read_bytes::<5>(buf) else {
        return 0;
    };
    let len = be16(h[3], h[4]);
    if (20..=24).contains(&h[0])
        && h[1] == 3
        && (1..=3).contains(&h[2])
        && len > 0
        && len <= MAX_RECORD
    {
        u32::from(h[0])
    } else {
        0
    }
}

/// Whether thread `tid` is still inside the syscall on `key` it entered at `since`.
#[inline(always)]
fn in_flight(tid: u32, key: u64, since: u64) -> bool {
    // SAFETY: a plain value, copied out at once.
    unsafe { SOCK_IN.get(&tid) }.is_some_and(|s| s.key == key && s.since == since)
}

/// The syscall a thread is entering on a target's fd.
#[derive(Clone, Copy)]
struct Entering {
    tgid: u32,
    tid: u32,
    fd: u32,
    ts: u64,
    io: SysIo,
    /// Its buffer (plain forms), or 0.
    buf: u64,
    /// The handshake call the thread is inside, or 0.
    ssl: u64,
}

/// `b` entered while `u.busy_tid` was inside a syscall on the fd: one record, at most
/// every `SOCK_OVERLAP_GAP_NS` per fd.
#[inline(always)]
fn overlap(u: &mut FdUse, b: Entering) {
    if u.reported_ns != 0 && b.ts - u.reported_ns < SOCK_OVERLAP_GAP_NS {
        u.suppressed += 1;
        return;
    }
    let ev = SockOverlapEvent {
        hdr: header::<SockOverlapEvent>(b.tgid, b.tid, b.ts),
        a_since_ns: u.busy_since,
        ssl_a: u.busy_ssl,
        ssl_b: b.ssl,
        fd: b.fd as i32,
        tid_a: u.busy_tid,
        sys_a: u.busy_kind,
        sys_b: b.io.kind,
        rec_a: if u.busy_kind == sys::WRITE {
            record_type(u.busy_buf)
        } else {
            0
        },
        rec_b: if b.io.kind == sys::WRITE {
            record_type(b.buf)
        } else {
            0
        },
        suppressed: u.suppressed,
        _pad: 0,
    };
    if EVENTS
        .output::<SockOverlapEvent>(&ev, wakeup_flags())
        .is_err()
    {
        lost::<SockOverlapEvent>();
    }
    u.reported_ns = b.ts;
    u.suppressed = 0;
}

/// While a target's per-call uprobes are off, for a thread outside any probed I/O call
/// (`ssl`: the handshake call it is inside, or 0):
///
/// - `share`: remembers which thread last did I/O on `fd` and counts I/O by another thread
///   soon after (two threads on one socket: the cheap sign of concurrent SSL use);
/// - notes the syscall as in flight on `fd` until its exit (`SOCK_IN`), and reports a
///   thread entering one there while another thread's is still in flight: two SSL calls
///   on one connection at the same moment.
///
/// One LRU lookup and update per read/write of a target, a hash insert and delete more.
#[inline(always)]
fn note_fd_use(ctx: &TracePointContext, io: SysIo, ssl: u64, share: bool) {
    let Some((tgid, tid, flags)) = target_flags() else {
        return;
    };
    if share {
        count_sockio();
        // Outside any SSL call: first, the memory-BIO tie (`crate::bio`).
        bio::sys_enter(ctx, io.kind, io.shape, tgid, tid);
    }
    if flags & target_flag::HOT != 0 {
        return;
    }
    let fd = sys_arg(ctx, 0, u64::MAX) as u32;
    let key = ((tgid as u64) << 32) | fd as u64;
    let ts = now();
    let generation = SOCKIO_GEN.get(0).copied().unwrap_or(0);
    let moves_records =
        io.flags_arg == 0 || sys_arg(ctx, io.flags_arg, 0) & (MSG_PEEK | MSG_ERRQUEUE) == 0;
    let tracked = generation != 0 && moves_records;
    let buf = if io.shape == shape::PLAIN {
        sys_arg(ctx, 1, 0)
    } else {
        0
    };
    if tracked {
        let _ = SOCK_IN.insert(&tid, &SockIn { key, since: ts }, 0);
    }
    if let Some(u) = FD_USE.get_ptr_mut(&key) {
        // SAFETY: a plain entry, updated in place.
        let u = unsafe { &mut *u };
        if share {
            if u.tid != tid {
                if ts - u.ts_ns < SHARED_FD_NS {
                    match SHARED_FD.get_ptr_mut(&tgid) {
                        // SAFETY: a plain counter.
                        Some(n) => unsafe { *n += 1 },
                        None => {
                            let _ = SHARED_FD.insert(&tgid, &1, 0);
                        }
                    }
                }
                u.tid = tid;
            }
            u.ts_ns = ts;
        }
        if !tracked {
            return;
        }
        let busy =
            u.busy_tid != 0 && u.busy_gen == generation && in_flight(u.busy_tid, key, u.busy_since);
        if busy && u.busy_tid != tid {
            // The older syscall stays the one in flight: it may outlast this one.
            let b = Entering {
                tgid,
                tid,
                fd,
                ts,
                io,
                buf,
                ssl,
            };
            overlap(u, b);
            return;
        }
        u.busy_tid = tid;
        u.busy_since = ts;
        u.busy_buf = buf;
        u.busy_ssl = ssl;
        u.busy_kind = io.kind;
        u.busy_gen = generation;
    } else {
        let _ = FD_USE.insert(
            &key,
            &FdUse {
                // A handshake's I/O is no use of the fd for the shared-fd count: a thread
                // pool's acceptor handing the connection on must not count.
                ts_ns: if share { ts } else { 0 },
                tid: if share { tid } else { 0 },
                busy_tid: if tracked { tid } else { 0 },
                busy_since: ts,
                busy_buf: buf,
                busy_ssl: ssl,
                busy_kind: io.kind,
                busy_gen: generation,
                reported_ns: 0,
                suppressed: 0,
                _pad: 0,
            },
            0,
        );
    }
}

/// The thread's socket syscall returned: it is no longer in flight on its fd.
#[inline(always)]
fn end_sock_in(tid: u32) {
    // SAFETY: a plain value, copied out at once.
    let Some(s) = unsafe { SOCK_IN.get(&tid) }.copied() else {
        return;
    };
    let _ = SOCK_IN.remove(&tid);
    if let Some(u) = FD_USE.get_ptr_mut(&s.key) {
        // SAFETY: a plain entry, updated in place.
        let u = unsafe { &mut *u };
        if u.busy_tid == tid && u.busy_since == s.since {
            u.busy_tid = 0;
        }
    }
}

/// TLS record header: type (0x16 handshake), version (0x03 0x0x), length.
const RECORD_HEADER: u64 = 5;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_SERVER_HELLO: u8 = 2;
/// Handshake header (4) + legacy_version (2) + random (32): where the session id starts.
const SESSION_ID_AT: u64 = 4 + 2 + 32;
const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
const EXT_PRE_SHARED_KEY: u16 = 0x0029;
const EXT_KEY_SHARE: u16 = 0x0033;
/// Extensions looked at, at most: a ServerHello from OpenSSL 3 carries 2 to 6.
const MAX_EXTENSIONS: u32 = 12;

#[inline(always)]
fn is_handshake_op(op: u32) -> bool {
    op::is_handshake(op)
}

#[inline(always)]
fn read_bytes<const N: usize>(addr: u64) -> Option<[u8; N]> {
    // SAFETY: bpf_probe_read_user copies from a user address and fails cleanly if it is
    // not mapped; only handshake header fields are read, never application data.
    unsafe { bpf_probe_read_user(addr as *const [u8; N]) }.ok()
}

#[inline(always)]
fn be16(b0: u8, b1: u8) -> u16 {
    (u16::from(b0) << 8) | u16::from(b1)
}

/// Walks a ServerHello message starting at `msg` (its handshake header), of which `avail`
/// bytes are in the buffer. Returns (version, cipher, flags) without the `SENT` bit.
#[inline(always)]
pub(crate) fn walk_server_hello(msg: u64, avail: u64) -> Option<(u16, u16, u32)> {
    let h = read_bytes::<6>(msg)?;
    if h[0] != HANDSHAKE_SERVER_HELLO {
        return None;
    }
    let msg_len = (u64::from(h[1]) << 16) | (u64::from(h[2]) << 8) | u64::from(h[3]);
    let end = (4 + msg_len).min(avail);
    let mut version = be16(h[4], h[5]);
    let sid_len = u64::from(read_bytes::<1>(msg + SESSION_ID_AT)?[0]);
    if sid_len > 32 {
        return None;
    }
    let mut off = SESSION_ID_AT + 1 + sid_len;
    if off + 3 > end {
        return None;
    }
    // cipher_suite (2), legacy_compression_method (1), extensions length (2).
    let c = read_bytes::<5>(msg + off)?;
    let cipher = be16(c[0], c[1]);
    let mut flags = 0;
    off += 3;
    if off + 2 <= end {
        let ext_end = (off + 2 + u64::from(be16(c[3], c[4]))).min(end);
        off += 2;
        for _ in 0..MAX_EXTENSIONS {
            if off + 4 > ext_end {
                break;
            }
            let Some(e) = read_bytes::<4>(msg + off) else {
                break;
            };
            let (ty, len) = (be16(e[0], e[1]), be16(e[2], e[3]));
            off += 4;
            if ty == EXT_SUPPORTED_VERSIONS && len == 2 && off + 2 <= ext_end {
                if let Some(v) = read_bytes::<2>(msg + off) {
                    version = be16(v[0], v[1]);
                    flags |= hello_flag::SUPPORTED_VERSIONS;
                }
            } else if ty == EXT_PRE_SHARED_KEY {
                flags |= hello_flag::PSK;
            } else if ty == EXT_KEY_SHARE && len == 2 {
                // RFC 8446 4.2.8: a HelloRetryRequest's key_share holds only the group.
                flags |= hello_flag::HELLO_RETRY;
            }
            off += u64::from(len);
        }
    }
    Some((version, cipher, flags))
}

/// `buf` holds `len` bytes a handshake call wrote (`sent`) or read. If they are a
/// ServerHello (or, for a read, the header of a handshake record whose body comes next),
/// emit one `ServerHelloEvent`.
#[inline(always)]
fn server_hello(cur: &mut Inflight, buf: u64, len: u64, sent: bool) {
    let body_next = cur.hello == HELLO_BODY_NEXT;
    if body_next {
        cur.hello = 0;
    }
    // Only a read carries on a header that a read began.
    let (msg, avail) = if body_next && !sent {
        (buf, len.min(u64::from(cur.hello_len)))
    } else {
        if len < RECORD_HEADER {
            return;
        }
        let Some(r) = read_bytes::<5>(buf) else {
            return;
        };
        if r[0] != CONTENT_HANDSHAKE || r[1] != 3 {
            return;
        }
        let rec_len = u64::from(be16(r[3], r[4]));
        if len == RECORD_HEADER {
            // OpenSSL without read-ahead reads the record header alone, then its body.
            if !sent {
                cur.hello = HELLO_BODY_NEXT;
                cur.hello_len = rec_len as u32;
            }
            return;
        }
        (buf + RECORD_HEADER, (len - RECORD_HEADER).min(rec_len))
    };
    let Some((version, cipher, mut flags)) = walk_server_hello(msg, avail) else {
        return;
    };
    if sent {
        flags |= hello_flag::SENT;
    }
    cur.hello = HELLO_DONE;
    let id = bpf_get_current_pid_tgid();
    let ev = ServerHelloEvent {
        hdr: header::<ServerHelloEvent>((id >> 32) as u32, id as u32, now()),
        ssl: cur.ssl,
        fd: cur.fd,
        version,
        cipher,
        flags,
        _pad: 0,
    };
    if EVENTS
        .output::<ServerHelloEvent>(&ev, wakeup_flags())
        .is_err()
    {
        lost::<ServerHelloEvent>();
    }
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, io: SysIo) -> u32 {
    let (kind, plain_buf) = (io.kind, io.shape == shape::PLAIN);
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(cur) = INFLIGHT.get_ptr_mut(&tid) else {
        note_fd_use(ctx, io, 0, true);
        return 0;
    };
    // SAFETY: this thread's own entry, read once.
    let cur_op = unsafe { (*cur).op };
    let io_call = !op::is_handshake(cur_op);
    if io_call && target_flags().is_some_and(|(_, _, flags)| flags & target_flag::HOT == 0) {
        // An I/O call entered while the per-call probes were on, whose return probe went
        // away before it returned (e.g. a blocking SSL_read across the end of an
        // escalation window): stale. Drop it, or the thread would never be seen again.
        let _ = INFLIGHT.remove(&tid);
        note_fd_use(ctx, io, 0, true);
        return 0;
    }
    count_sockio();
    let fd = sys_arg(ctx, 0, u64::MAX) as i64;
    // SAFETY: this thread's own entry, read once.
    let in_handshake = unsafe { is_handshake_op((*cur).op) || (*cur).statem != 0 };
    if kind == sys::WRITE
        && (in_handshake || (0..=2).contains(&fd))
        && !bio::is_record(ctx, io.shape)
    {
        // Not the connection's socket: a callback the call ran wrote elsewhere (node's
        // handshake-done callback runs inside the state machine: a log line, a wakeup of
        // its event loop). A handshake writes whole records (a retry of a partial flight
        // that does not is left out: its fd is known from the flight's first write); an
        // I/O call's retry may write the rest of a record, so for those only stdout and
        // stderr are left out.
        return 0;
    }
    if !io_call {
        // Inside a handshake call: in flight on its fd too (a handshake is an SSL call).
        // SAFETY: this thread's own entry, read once.
        note_fd_use(ctx, io, unsafe { (*cur).ssl }, false);
    }
    // SAFETY: this thread's own entry.
    let cur = unsafe { &mut *cur };
    cur.fd = fd as i32;
    cur.sys_calls += 1;
    if plain_buf && cur.hello != HELLO_DONE && is_handshake_op(cur.op) {
        // The buffer and its length.
        let buf = sys_arg(ctx, 1, 0);
        if kind == sys::WRITE {
            let len = sys_arg(ctx, 2, 0);
            if buf != 0 {
                server_hello(cur, buf, len, true);
            }
        } else {
            cur.rd_buf = buf;
        }
    }
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, kind: u32) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    end_sock_in(tid);
    let Some(cur) = INFLIGHT.get_ptr_mut(&tid) else {
        if kind == sys::READ {
            bio::sys_exit_read(ctx, tid);
        }
        return 0;
    };
    let ret = sys_ret(ctx, 0);
    // SAFETY: this thread's own entry.
    let cur = unsafe { &mut *cur };
    cur.sys_last_ret = ret;
    cur.sys_last_kind = kind;
    if cur.rd_buf != 0 {
        let buf = cur.rd_buf;
        cur.rd_buf = 0;
        if ret > 0 && cur.hello != HELLO_DONE {
            server_hello(cur, buf, ret as u64, false);
        }
    }
    0
}

macro_rules! sock_tracepoints {
    ($($enter:ident, $exit:ident => $kind:expr, $shape:expr, $flags_arg:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            on_enter(&ctx, SysIo { kind: $kind, shape: $shape, flags_arg: $flags_arg })
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $kind)
        }
    )*};
}

// The shape of the buffer argument (`bio::shape`), then the argument that holds a
// receive's flags (0: none): recvfrom(fd, buf, len, flags, ...), recvmsg(fd, msg, flags).
sock_tracepoints! {
    sys_enter_read, sys_exit_read => sys::READ, shape::PLAIN, 0;
    sys_enter_write, sys_exit_write => sys::WRITE, shape::PLAIN, 0;
    sys_enter_recvfrom, sys_exit_recvfrom => sys::READ, shape::PLAIN, 3;
    sys_enter_sendto, sys_exit_sendto => sys::WRITE, shape::PLAIN, 0;
    sys_enter_recvmsg, sys_exit_recvmsg => sys::READ, shape::MSGHDR, 2;
    sys_enter_sendmsg, sys_exit_sendmsg => sys::WRITE, shape::MSGHDR, 0;
    sys_enter_readv, sys_exit_readv => sys::READ, shape::IOVEC, 0;
    sys_enter_writev, sys_exit_writev => sys::WRITE, shape::IOVEC, 0;
}
