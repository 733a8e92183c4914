//! SSL* -> socket fd over memory BIOs (Python's asyncio `ssl.SSLObject`, node): the socket
//! syscalls happen in the event loop, outside the SSL call, and the bytes move through
//! `BIO_write`/`BIO_read`, which are not probed (they run once per socket read or write).
//!
//! Instead, per thread: a socket read outside any SSL call whose bytes are a TLS record,
//! followed by a probed handshake or read call that makes no socket syscall, fed that call
//! (`bio_via::READ`); and a probed handshake or write call that made no socket syscall,
//! followed by the thread's next socket write whose bytes are a TLS record, sent that call's
//! output (`bio_via::WRITE`). Confirmations:
//! - the record's content type must be one the call takes or makes (handshake calls move
//!   handshake, change-cipher-spec or alert records; I/O calls application data or alerts),
//!   so a read or write of another connection whose own SSL call was not probed (outside an
//!   escalation window) does not pass;
//! - byte counts: a read call must have returned application bytes, fewer than the socket
//!   read brought (a record adds its header and tag); a write call's socket write must be
//!   longer than what the call wrote. A read call that returned nothing proves nothing (a
//!   connection shutting down reads its peer's close_notify in SSL_shutdown, not probed, and
//!   the loop's next SSL_read may be another connection's).
//!
//! Only the 5-byte record header is read, and of a handshake record in a handshake call the
//! ServerHello's header fields (as `crate::sockio` does for socket BIOs): version, cipher,
//! extension types. Never the random, the session id or any payload.
//!
//! Cost: the socket I/O tracepoints (already on whenever they can tell anything) do one more
//! per-thread map update per read of a target, and an SSL call that made no syscall one or
//! two lookups. A tie is sent only when new or changed (`SSL_FD`).

use aya_ebpf::{helpers::bpf_probe_read_user, programs::TracePointContext};
use tls_probe_common::{ServerHelloEvent, SslFdEvent, bio_via, hello_flag, op, sys};

use crate::{
    maps::{BIO_AWAIT, BIO_READ, EVENTS, LOOP_WORK, SSL_FD},
    sockio::walk_server_hello,
    state::{BIO_HELLO_SEEN, BioAwait, BioRead, SslKey},
    util::{header, lost, now, sys_arg, sys_ret, wakeup_flags},
};

/// A syscall's buffer argument: a plain buffer and length, an iovec array (readv/writev),
/// or a msghdr (recvmsg/sendmsg).
pub mod shape {
    pub const PLAIN: u32 = 0;
    pub const IOVEC: u32 = 1;
    pub const MSGHDR: u32 = 2;
}

/// How long a read or an SSL call stays a candidate: the event loop moves bytes between the
/// socket and the BIO within microseconds of the call.
const FRESH_NS: u64 = 10_000_000;

const REC_CCS: u8 = 0x14;
const REC_ALERT: u8 = 0x15;
const REC_HANDSHAKE: u8 = 0x16;
const REC_APP_DATA: u8 = 0x17;

/// The content type and length of the TLS record header at `buf` (`len` bytes there), if
/// it is one.
#[inline(always)]
fn record_header(buf: u64, len: u64) -> Option<(u8, u64)> {
    if buf == 0 || len < 5 {
        return None;
    }
    // SAFETY: copies the 5-byte record header (type, version, length) of a user buffer;
    // fails cleanly if unmapped. Never the payload.
    let h = unsafe { bpf_probe_read_user(buf as *const [u8; 5]) }.ok()?;
    ((REC_CCS..=REC_APP_DATA).contains(&h[0]) && h[1] == 3 && h[2] <= 4)
        .then_some((h[0], (u64::from(h[3]) << 8) | u64::from(h[4])))
}

/// The ServerHello in the handshake record at `buf` (`len` bytes there, a record of
/// `rec_len`): (version, cipher, `hello_flag` bits).
#[inline(always)]
fn server_hello_at(buf: u64, len: u64, rec_len: u64) -> Option<(u16, u16, u32)> {
    walk_server_hello(buf + 5, (len - 5).min(rec_len))
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "one record's fields, each a plain value"
)]
fn emit_hello(
    tgid: u32,
    tid: u32,
    ts: u64,
    ssl: u64,
    fd: i32,
    version: u16,
    cipher: u16,
    flags: u32,
) {
    let ev = ServerHelloEvent {
        hdr: header::<ServerHelloEvent>(tgid, tid, ts),
        ssl,
        fd,
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
fn is_write(op: u32) -> bool {
    op == op::SSL_WRITE || op == op::SSL_WRITE_EX
}

/// Whether a record of type `ty` can carry what a call takes or makes: a `handshake` call
/// (or one the state machine ran inside), else an I/O call.
#[inline(always)]
fn fits(handshake: bool, ty: u8) -> bool {
    if handshake {
        ty == REC_HANDSHAKE || ty == REC_CCS || ty == REC_ALERT
    } else {
        ty == REC_APP_DATA || ty == REC_ALERT
    }
}

/// The first buffer and its length of a syscall's buffer argument.
#[inline(always)]
fn first_buffer(ctx: &TracePointContext, shape: u32) -> (u64, u64) {
    match shape {
        shape::PLAIN => (sys_arg(ctx, 1, 0), sys_arg(ctx, 2, 0)),
        shape::IOVEC => first_iovec(sys_arg(ctx, 1, 0)),
        _ => {
            // struct msghdr: msg_name, msg_namelen (padded), msg_iov at 16.
            let msg = sys_arg(ctx, 1, 0);
            if msg == 0 {
                return (0, 0);
            }
            // SAFETY: copies one pointer of the caller's msghdr.
            let iov = unsafe { bpf_probe_read_user((msg + 16) as *const u64) }.unwrap_or(0);
            first_iovec(iov)
        }
    }
}

#[inline(always)]
fn first_iovec(iov: u64) -> (u64, u64) {
    if iov == 0 {
        return (0, 0);
    }
    // SAFETY: copies the caller's first struct iovec (base, len).
    unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.map_or((0, 0), |v| (v[0], v[1]))
}

/// Whether the buffer of the write syscall at its enter begins with a TLS record header.
#[inline(always)]
pub fn is_record(ctx: &TracePointContext, shape: u32) -> bool {
    let (buf, len) = first_buffer(ctx, shape);
    record_header(buf, len).is_some()
}

/// A socket read or write of a target thread, outside any probed SSL call, at its enter.
#[inline(always)]
pub fn sys_enter(ctx: &TracePointContext, kind: u32, shape: u32, tgid: u32, tid: u32) {
    let fd = sys_arg(ctx, 0, u64::MAX) as i32;
    if kind == sys::WRITE {
        worked(tid);
    }
    if kind == sys::READ {
        // Only plain reads: what asyncio (recv_into) and node (read) use.
        if shape != shape::PLAIN {
            return;
        }
        let r = BioRead {
            buf: sys_arg(ctx, 1, 0),
            ts_ns: 0,
            ret: 0,
            fd,
            record_type: 0,
            hello_flags: 0,
            hello_version: 0,
            hello_cipher: 0,
        };
        let _ = BIO_READ.insert(&tid, &r, 0);
        return;
    }
    // SAFETY: copied out at once.
    let Some(wait) = (unsafe { BIO_AWAIT.get(&tid) }).copied() else {
        return;
    };
    let _ = BIO_AWAIT.remove(&tid);
    let ts = now();
    if ts.saturating_sub(wait.ts_ns) > FRESH_NS {
        return;
    }
    let (buf, len) = first_buffer(ctx, shape);
    let Some((ty, rec_len)) = record_header(buf, len) else {
        return;
    };
    let handshake = wait.handshake != 0;
    if fits(handshake, ty) && (handshake || len > wait.bytes) {
        tie(
            tgid,
            tid,
            ts,
            wait.ssl,
            fd,
            bio_via::WRITE,
            wait.op,
            ty,
            len as i64,
        );
        // The server's first flight: its ServerHello.
        if handshake
            && ty == REC_HANDSHAKE
            && let Some((version, cipher, flags)) = server_hello_at(buf, len, rec_len)
        {
            let flags = flags | hello_flag::SENT;
            emit_hello(tgid, tid, ts, wait.ssl, fd, version, cipher, flags);
        }
    }
}

/// The exit of a read outside any probed SSL call: keeps it if its bytes are a TLS record.
#[inline(always)]
pub fn sys_exit_read(ctx: &TracePointContext, tid: u32) {
    let Some(r) = BIO_READ.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: this thread's own entry.
    let r = unsafe { &mut *r };
    if r.ts_ns != 0 {
        return;
    }
    let ret = sys_ret(ctx, 0);
    let len = ret.max(0) as u64;
    match record_header(r.buf, len) {
        Some((ty, rec_len)) => {
            worked(tid);
            r.ts_ns = now();
            r.ret = ret;
            r.record_type = u32::from(ty);
            // The client reads the server's first flight, its ServerHello first.
            if ty == REC_HANDSHAKE
                && let Some((version, cipher, flags)) = server_hello_at(r.buf, len, rec_len)
            {
                r.hello_flags = flags | BIO_HELLO_SEEN;
                r.hello_version = version;
                r.hello_cipher = cipher;
            }
        }
        None => {
            let _ = BIO_READ.remove(&tid);
        }
    }
}

/// A probed SSL call returned without a socket syscall inside: tie it to the thread's last
/// TLS read, and wait for its output on the next write. `handshake`: a handshake call, or
/// one the handshake state machine ran inside (node's SSL_read); `bytes`: the application
/// bytes the call moved.
#[inline(always)]
pub fn after_call(
    tgid: u32,
    tid: u32,
    ts: u64,
    ssl: u64,
    call_op: u32,
    handshake: bool,
    bytes: u64,
) {
    let write = is_write(call_op) && !handshake;
    if !write {
        // SAFETY: copied out at once.
        if let Some(r) = (unsafe { BIO_READ.get(&tid) }).copied()
            && r.ts_ns != 0
        {
            let _ = BIO_READ.remove(&tid);
            let ty = r.record_type as u8;
            let counts = handshake || (bytes > 0 && (bytes as i64) < r.ret);
            if ts.saturating_sub(r.ts_ns) <= FRESH_NS && fits(handshake, ty) && counts {
                tie(tgid, tid, ts, ssl, r.fd, bio_via::READ, call_op, ty, r.ret);
                if handshake && r.hello_flags & BIO_HELLO_SEEN != 0 {
                    let flags = r.hello_flags & !BIO_HELLO_SEEN;
                    emit_hello(
                        tgid,
                        tid,
                        ts,
                        ssl,
                        r.fd,
                        r.hello_version,
                        r.hello_cipher,
                        flags,
                    );
                }
            }
        }
    }
    if handshake || (write && bytes > 0) {
        let wait = BioAwait {
            ssl,
            ts_ns: ts,
            bytes,
            op: call_op,
            handshake: u32::from(handshake),
        };
        let _ = BIO_AWAIT.insert(&tid, &wait, 0);
    } else {
        // A read call: the next write is not known to be its.
        let _ = BIO_AWAIT.remove(&tid);
    }
}

/// Records `ssl` -> `fd`; reports it when new or changed.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "one record's fields, each a plain value"
)]
fn tie(tgid: u32, tid: u32, ts: u64, ssl: u64, fd: i32, via: u32, call_op: u32, ty: u8, n: i64) {
    let key = SslKey { ssl, tgid, _pad: 0 };
    // SAFETY: a plain i32 copied out at once.
    if unsafe { SSL_FD.get(&key) }.copied() == Some(fd) {
        return;
    }
    let _ = SSL_FD.insert(&key, &fd, 0);
    let ev = SslFdEvent {
        hdr: header::<SslFdEvent>(tgid, tid, ts),
        ssl,
        sys_bytes: n,
        fd,
        via,
        op: call_op,
        record_type: ty,
        _pad: [0; 3],
    };
    if EVENTS.output::<SslFdEvent>(&ev, wakeup_flags()).is_err() {
        lost::<SslFdEvent>();
    }
}

/// The thread did work since its last epoll wait (`LOOP_WORK`).
#[inline(always)]
pub fn worked(tid: u32) {
    let _ = LOOP_WORK.insert(&tid, &1, 0);
}

/// Whether `ssl` is tied to a socket over memory BIOs.
#[inline(always)]
pub fn is_tied(tgid: u32, ssl: u64) -> bool {
    // SAFETY: only the presence of the entry is read.
    unsafe { SSL_FD.get(&SslKey { ssl, tgid, _pad: 0 }) }.is_some()
}

/// SSL_free: forget the tie.
#[inline(always)]
pub fn forget(tgid: u32, ssl: u64) {
    let _ = SSL_FD.remove(&SslKey { ssl, tgid, _pad: 0 });
}
