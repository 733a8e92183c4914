//! Syscall tracepoints for the event loop: epoll waits, epoll_ctl, and close.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use tls_probe_common::{
    CloseEvent, EpollCtlEvent, EpollWaitEvent, MAX_READY, ReadyEntry, epoll_sys, kind,
};

use crate::{
    maps::{EVENTS, SYSCALL_ARGS},
    state::SyscallArgs,
    util::{bump, header, lost, now, target},
};

const ARG0: usize = 16;
/// `struct epoll_event` is packed on x86_64: u32 events, then u64 data.
const EPOLL_EVENT_SIZE: u64 = 12;

#[inline(always)]
unsafe fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: the caller names an argument slot of this syscall's record.
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * n) }.unwrap_or(0)
}

/// Stash the first four arguments (or a derived value) until the syscall returns.
#[inline(always)]
fn stash(tid: u32, args: [u64; 4]) {
    let st = SyscallArgs {
        start_ns: now(),
        args,
    };
    if SYSCALL_ARGS.insert(tid, st, 0).is_err() {
        bump(tls_probe_common::counter::LOST_INFLIGHT);
    }
}

#[inline(always)]
fn wait_enter(ctx: &TracePointContext, pwait2: bool) -> u32 {
    let Some((_, tid)) = target() else { return 0 };
    bump(tls_probe_common::counter::TRACEPOINT_HITS);
    // SAFETY: epoll_wait/epoll_pwait/epoll_pwait2 all take (epfd, events, maxevents, timeout).
    let (epfd, events, maxevents, timeout) =
        unsafe { (arg(ctx, 0), arg(ctx, 1), arg(ctx, 2), arg(ctx, 3)) };
    let timeout_ns: i64 = if pwait2 {
        // A `struct __kernel_timespec *`; NULL blocks forever.
        if timeout == 0 {
            -1
        } else {
            // SAFETY: reads two i64 from the user's timespec.
            let sec = unsafe { bpf_probe_read_user(timeout as *const i64) }.unwrap_or(0);
            let nsec = unsafe { bpf_probe_read_user((timeout + 8) as *const i64) }.unwrap_or(0);
            // Clamp to ~100 years so the product fits in i64 (no 128-bit math in BPF).
            let sec = if sec > 3_153_600_000 {
                3_153_600_000
            } else {
                sec
            };
            sec * 1_000_000_000 + nsec
        }
    } else {
        let ms = timeout as u32 as i32 as i64;
        if ms < 0 { -1 } else { ms * 1_000_000 }
    };
    stash(tid, [epfd, events, maxevents, timeout_ns as u64]);
    0
}

#[inline(always)]
fn wait_exit(ctx: &TracePointContext, syscall: u32) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    bump(tls_probe_common::counter::TRACEPOINT_HITS);
    // SAFETY: copied out at once.
    let Some(st) = (unsafe { SYSCALL_ARGS.get(tid) }).copied() else {
        return 0;
    };
    let _ = SYSCALL_ARGS.remove(tid);
    // SAFETY: the exit record's `ret`.
    let ret = unsafe { ctx.read_at::<i64>(ARG0) }.unwrap_or(0);
    let ts = now();
    let Some(mut entry) = EVENTS.reserve::<EpollWaitEvent>(0) else {
        lost(kind::EPOLL_WAIT);
        return 0;
    };
    let p = entry.as_mut_ptr();
    let n = if ret > 0 {
        if ret as usize > MAX_READY {
            MAX_READY
        } else {
            ret as usize
        }
    } else {
        0
    };
    // SAFETY: `p` is a reserved, 8-byte aligned EpollWaitEvent in the ring buffer; every
    // field is written before submit except the entries past `n_entries`, which userspace
    // never reads.
    unsafe {
        (*p).hdr = header(kind::EPOLL_WAIT, tgid, tid, ts);
        (*p).start_ns = st.start_ns;
        (*p).duration_ns = ts - st.start_ns;
        (*p).timeout_ns = st.args[3] as i64;
        (*p).ret = ret;
        (*p).epfd = st.args[0] as i32;
        (*p).maxevents = st.args[2] as i32;
        (*p).syscall = syscall;
        let base = st.args[1];
        let mut filled = 0u32;
        for i in 0..MAX_READY {
            if i >= n {
                break;
            }
            let src = (base + i as u64 * EPOLL_EVENT_SIZE) as *const [u8; 12];
            let Ok(raw) = bpf_probe_read_user(src) else {
                break;
            };
            (*p).entries[i] = ReadyEntry {
                events: u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
                _pad: 0,
                data: u64::from_le_bytes([
                    raw[4], raw[5], raw[6], raw[7], raw[8], raw[9], raw[10], raw[11],
                ]),
            };
            filled += 1;
        }
        (*p).n_entries = filled;
    }
    entry.submit(0);
    0
}

#[tracepoint]
pub fn sys_enter_epoll_wait(ctx: TracePointContext) -> u32 {
    wait_enter(&ctx, false)
}

#[tracepoint]
pub fn sys_exit_epoll_wait(ctx: TracePointContext) -> u32 {
    wait_exit(&ctx, epoll_sys::EPOLL_WAIT)
}

#[tracepoint]
pub fn sys_enter_epoll_pwait(ctx: TracePointContext) -> u32 {
    wait_enter(&ctx, false)
}

#[tracepoint]
pub fn sys_exit_epoll_pwait(ctx: TracePointContext) -> u32 {
    wait_exit(&ctx, epoll_sys::EPOLL_PWAIT)
}

#[tracepoint]
pub fn sys_enter_epoll_pwait2(ctx: TracePointContext) -> u32 {
    wait_enter(&ctx, true)
}

#[tracepoint]
pub fn sys_exit_epoll_pwait2(ctx: TracePointContext) -> u32 {
    wait_exit(&ctx, epoll_sys::EPOLL_PWAIT2)
}

#[tracepoint]
pub fn sys_enter_epoll_ctl(ctx: TracePointContext) -> u32 {
    let Some((_, tid)) = target() else { return 0 };
    bump(tls_probe_common::counter::TRACEPOINT_HITS);
    // SAFETY: epoll_ctl(epfd, op, fd, struct epoll_event *event).
    let (epfd, op, fd, evp) = unsafe { (arg(&ctx, 0), arg(&ctx, 1), arg(&ctx, 2), arg(&ctx, 3)) };
    let (events, data) = if evp == 0 {
        (0u64, 0u64)
    } else {
        // SAFETY: 12 bytes of the user's epoll_event.
        match unsafe { bpf_probe_read_user(evp as *const [u8; 12]) } {
            Ok(raw) => (
                u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as u64,
                u64::from_le_bytes([
                    raw[4], raw[5], raw[6], raw[7], raw[8], raw[9], raw[10], raw[11],
                ]),
            ),
            Err(_) => (0, 0),
        }
    };
    // Pack epfd/op/fd/events into the four slots: the exit needs all of them plus data.
    stash(
        tid,
        [
            (epfd & 0xffff_ffff) | (op << 32),
            fd & 0xffff_ffff,
            events,
            data,
        ],
    );
    0
}

#[tracepoint]
pub fn sys_exit_epoll_ctl(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    // SAFETY: copied out at once.
    let Some(st) = (unsafe { SYSCALL_ARGS.get(tid) }).copied() else {
        return 0;
    };
    let _ = SYSCALL_ARGS.remove(tid);
    // SAFETY: the exit record's `ret`.
    let ret = unsafe { ctx.read_at::<i64>(ARG0) }.unwrap_or(0);
    let ev = EpollCtlEvent {
        hdr: header(kind::EPOLL_CTL, tgid, tid, now()),
        data: st.args[3],
        ret,
        epfd: st.args[0] as u32 as i32,
        op: (st.args[0] >> 32) as u32 as i32,
        fd: st.args[1] as u32 as i32,
        events: st.args[2] as u32,
    };
    if EVENTS.output::<EpollCtlEvent>(&ev, 0).is_err() {
        lost(kind::EPOLL_CTL);
    }
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    // SAFETY: close(fd).
    let fd = unsafe { arg(&ctx, 0) } as u32 as i32;
    let ev = CloseEvent {
        hdr: header(kind::CLOSE, tgid, tid, now()),
        ret: 0,
        fd,
        _pad: 0,
    };
    if EVENTS.output::<CloseEvent>(&ev, 0).is_err() {
        lost(kind::CLOSE);
    }
    0
}
