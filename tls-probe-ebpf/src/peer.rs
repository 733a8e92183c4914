//! Syscall tracepoints that learn each connection's peer once, when it is made: the
//! address `accept`/`accept4` wrote for the new fd, or the one `connect` was given.
//!
//! They share the per-thread `SYSCALL_ARGS` scratch with the epoll programs (a thread is in
//! one syscall at a time); the stashed value carries a tag, so an exit never reads another
//! syscall's arguments left behind by an exit that was not seen.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use tls_probe_common::{EventHeader, PeerEvent, counter, family, peer_sys};

use crate::{
    maps::{EVENTS, SYSCALL_ARGS},
    state::SyscallArgs,
    util::{bump, header, lost, now, sys_arg, sys_ret, target, wakeup_flags},
};

/// Marks a `SYSCALL_ARGS` entry as made by these programs; the low bits are the `peer_sys`.
const TAG: u64 = 0x7065_6572 << 32;
const EINPROGRESS: i64 = 115;
/// Bytes of a sockaddr up to the end of the address: sockaddr_in, sockaddr_in6.
const IN_LEN: u64 = 8;
const IN6_LEN: u64 = 24;

/// A user sockaddr of `len` usable bytes: (family, port in host order, address bytes),
/// for AF_INET and AF_INET6 only.
#[inline(always)]
fn read_sockaddr(ptr: u64, len: u64) -> Option<(u16, u16, [u8; 16])> {
    if ptr == 0 || len < IN_LEN {
        return None;
    }
    // SAFETY: bounded reads of the user's sockaddr; a fault is an error, not a crash.
    let head = unsafe { bpf_probe_read_user(ptr as *const [u8; 8]) }.ok()?;
    let fam = u16::from_le_bytes([head[0], head[1]]);
    let port = u16::from_be_bytes([head[2], head[3]]);
    let mut addr = [0u8; 16];
    if fam == family::INET {
        addr[..4].copy_from_slice(&head[4..8]);
    } else if fam == family::INET6 && len >= IN6_LEN {
        // SAFETY: as above; `sin6_addr` is at offset 8.
        addr = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) }.ok()?;
    } else {
        return None;
    }
    Some((fam, port, addr))
}

#[inline(always)]
fn stash(tid: u32, args: [u64; 4]) {
    let st = SyscallArgs {
        start_ns: now(),
        args,
    };
    if SYSCALL_ARGS.insert(&tid, &st, 0).is_err() {
        bump(counter::LOST_INFLIGHT);
    }
}

/// The thread's stashed arguments if they are this program's (`peer_sys` value `sys`).
#[inline(always)]
fn take(tid: u32, sys: u32) -> Option<SyscallArgs> {
    // SAFETY: copied out at once.
    let st = (unsafe { SYSCALL_ARGS.get(&tid) }).copied()?;
    if st.args[3] != TAG | u64::from(sys) {
        return None;
    }
    let _ = SYSCALL_ARGS.remove(&tid);
    Some(st)
}

#[inline(always)]
fn emit(hdr: EventHeader, fd: i32, sys: u32, (fam, port, addr): (u16, u16, [u8; 16])) {
    let ev = PeerEvent {
        hdr,
        fd,
        syscall: sys,
        family: fam,
        port,
        _pad: 0,
        addr,
    };
    if EVENTS.output::<PeerEvent>(&ev, wakeup_flags()).is_err() {
        lost::<PeerEvent>();
    }
}

/// accept/accept4(fd, upeer_sockaddr, upeer_addrlen, ...): keep the pointers and the
/// buffer's size (`*upeer_addrlen` on entry) until the new fd is known.
#[inline(always)]
fn accept_enter(ctx: &TracePointContext, sys: u32) -> u32 {
    let Some((_, tid)) = target() else { return 0 };
    bump(counter::TRACEPOINT_HITS);
    // accept and accept4 both take (fd, upeer_sockaddr, upeer_addrlen).
    let (sa, lenp) = (sys_arg(ctx, 1, 0), sys_arg(ctx, 2, 0));
    if sa == 0 || lenp == 0 {
        // No address asked for: nothing to learn (see `PeerEvent`).
        return 0;
    }
    // SAFETY: the caller's int length.
    let buf_len = unsafe { bpf_probe_read_user(lenp as *const i32) }.unwrap_or(0);
    if buf_len < IN_LEN as i32 {
        return 0;
    }
    stash(tid, [sa, lenp, buf_len as u64, TAG | u64::from(sys)]);
    0
}

#[inline(always)]
fn accept_exit(ctx: &TracePointContext, sys: u32) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    bump(counter::TRACEPOINT_HITS);
    let Some(st) = take(tid, sys) else { return 0 };
    // The new fd, or -errno.
    let ret = sys_ret(ctx, -1);
    if ret < 0 {
        return 0;
    }
    // The kernel wrote min(buffer, address) bytes and the address's real length.
    // SAFETY: the caller's int length.
    let written = unsafe { bpf_probe_read_user(st.args[1] as *const i32) }.unwrap_or(0);
    let written = if written < 0 { 0 } else { written as u64 };
    let usable = if written < st.args[2] {
        written
    } else {
        st.args[2]
    };
    if let Some(peer) = read_sockaddr(st.args[0], usable) {
        emit(header::<PeerEvent>(tgid, tid, now()), ret as i32, sys, peer);
    }
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    accept_enter(&ctx, peer_sys::ACCEPT4)
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx, peer_sys::ACCEPT4)
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    accept_enter(&ctx, peer_sys::ACCEPT)
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx, peer_sys::ACCEPT)
}

/// connect(fd, uservaddr, addrlen): the address is read on entry (it is the caller's
/// input) and packed into the scratch slots: fd, family and port; then the 16 address bytes.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = target() else { return 0 };
    bump(counter::TRACEPOINT_HITS);
    // connect(fd, uservaddr, addrlen).
    let (fd, sa, len) = (
        sys_arg(&ctx, 0, 0),
        sys_arg(&ctx, 1, 0),
        sys_arg(&ctx, 2, 0),
    );
    let Some((fam, port, addr)) = read_sockaddr(sa, len & 0xffff_ffff) else {
        return 0;
    };
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&addr[..8]);
    hi.copy_from_slice(&addr[8..]);
    stash(
        tid,
        [
            (fd & 0xffff_ffff) | (u64::from(fam) << 32) | (u64::from(port) << 48),
            u64::from_le_bytes(lo),
            u64::from_le_bytes(hi),
            TAG | u64::from(peer_sys::CONNECT),
        ],
    );
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    bump(counter::TRACEPOINT_HITS);
    let Some(st) = take(tid, peer_sys::CONNECT) else {
        return 0;
    };
    let ret = sys_ret(&ctx, -1);
    // Connected, or (non-blocking) under way: the connection exists either way.
    if ret != 0 && ret != -EINPROGRESS {
        return 0;
    }
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&st.args[1].to_le_bytes());
    addr[8..].copy_from_slice(&st.args[2].to_le_bytes());
    let packed = st.args[0];
    emit(
        header::<PeerEvent>(tgid, tid, now()),
        packed as u32 as i32,
        peer_sys::CONNECT,
        ((packed >> 32) as u16, (packed >> 48) as u16, addr),
    );
    0
}
