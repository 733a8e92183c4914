//! Syscall tracepoints for the event loop: epoll waits, epoll_ctl, and close.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use tls_probe_common::{
    BUSY_FLUSH_COUNT, BUSY_FLUSH_NS, BUSY_QUICK_NS, BUSY_REPEAT_STREAK, CloseEvent,
    EPOLL_WAIT_SMALL_ENTRIES, EpollBusyEvent, EpollCtlEvent, EpollIdleEvent, EpollWaitRecord,
    IDLE_FLUSH_COUNT, IDLE_FLUSH_NS, MAX_READY, ReadyEntry, epoll_sys, target_flag,
};

use crate::{
    maps::{BUSY_WAITS, EVENTS, FD_USE, IDLE_WAITS, LOOP_WORK, SYSCALL_ARGS},
    state::{BusyWaits, IdleWaits, SyscallArgs},
    util::{bump, header, lost, now, sys_arg, sys_ret, target, target_flags, wakeup_flags},
};

/// `struct epoll_event` is packed on x86_64: u32 events, then u64 data.
const EPOLL_EVENT_SIZE: u64 = 12;

/// Stash the first four arguments (or a derived value) until the syscall returns.
#[inline(always)]
fn stash(tid: u32, args: [u64; 4]) {
    let st = SyscallArgs {
        start_ns: now(),
        args,
    };
    if SYSCALL_ARGS.insert(&tid, &st, 0).is_err() {
        bump(tls_probe_common::counter::LOST_INFLIGHT);
    }
}

#[inline(always)]
fn wait_enter(ctx: &TracePointContext, pwait2: bool) -> u32 {
    let Some((_, tid)) = target() else { return 0 };
    bump(tls_probe_common::counter::TRACEPOINT_HITS);
    // epoll_wait/epoll_pwait/epoll_pwait2 all take (epfd, events, maxevents, timeout).
    let (epfd, events, maxevents, timeout) = (
        sys_arg(ctx, 0, 0),
        sys_arg(ctx, 1, 0),
        sys_arg(ctx, 2, 0),
        sys_arg(ctx, 3, 0),
    );
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

/// Emits the thread's aggregated empty waits, if any.
#[inline(always)]
fn flush_idle(tgid: u32, tid: u32, ts: u64) {
    // SAFETY: copied out at once.
    let Some(idle) = (unsafe { IDLE_WAITS.get(&tid) }).copied() else {
        return;
    };
    let _ = IDLE_WAITS.remove(&tid);
    let ev = EpollIdleEvent {
        hdr: header::<EpollIdleEvent>(tgid, tid, ts),
        first_ns: idle.first_ns,
        blocked_ns: idle.blocked_ns,
        count: idle.count,
        epfd: idle.epfd,
        syscall: idle.syscall,
        _pad: 0,
    };
    if EVENTS
        .output::<EpollIdleEvent>(&ev, wakeup_flags())
        .is_err()
    {
        lost::<EpollIdleEvent>();
    }
}

/// Counts an immediate empty wait into the thread's aggregate; flushes it when full or old.
#[inline(always)]
fn aggregate_idle(tgid: u32, tid: u32, st: &SyscallArgs, ts: u64, syscall: u32) {
    let blocked = ts - st.start_ns;
    let flush = if let Some(idle) = IDLE_WAITS.get_ptr_mut(&tid) {
        // SAFETY: this thread's own entry.
        let idle = unsafe { &mut *idle };
        idle.count += 1;
        idle.blocked_ns += blocked;
        idle.syscall = syscall;
        idle.count >= IDLE_FLUSH_COUNT || ts - idle.first_ns >= IDLE_FLUSH_NS
    } else {
        let idle = IdleWaits {
            first_ns: st.start_ns,
            blocked_ns: blocked,
            count: 1,
            epfd: st.args[0] as i32,
            syscall,
            _pad: 0,
        };
        if IDLE_WAITS.insert(&tid, &idle, 0).is_err() {
            bump(tls_probe_common::counter::LOST_INFLIGHT);
        }
        false
    };
    if flush {
        flush_idle(tgid, tid, ts);
    }
}

/// Fills and submits a wait record with room for `N` entries.
#[inline(always)]
fn emit_wait<const N: usize>(
    tgid: u32,
    tid: u32,
    st: &SyscallArgs,
    ret: i64,
    ts: u64,
    syscall: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<EpollWaitRecord<N>>(0) else {
        lost::<EpollWaitRecord<N>>();
        return;
    };
    let p = entry.as_mut_ptr();
    let n = if ret > 0 {
        if ret as usize > N { N } else { ret as usize }
    } else {
        0
    };
    // SAFETY: `p` is a reserved, 8-byte aligned record in the ring buffer; every field is
    // written before submit except the entries past `n_entries`, which userspace never reads.
    unsafe {
        (*p).hdr = header::<EpollWaitRecord<N>>(tgid, tid, ts);
        (*p).start_ns = st.start_ns;
        (*p).duration_ns = ts - st.start_ns;
        (*p).timeout_ns = st.args[3] as i64;
        (*p).ret = ret;
        (*p).epfd = st.args[0] as i32;
        (*p).maxevents = st.args[2] as i32;
        (*p).syscall = syscall;
        let base = st.args[1];
        let mut filled = 0u32;
        for i in 0..N {
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
    entry.submit(wakeup_flags());
}

/// Reads the first ready entry of the user's array: (data, events).
#[inline(always)]
fn first_entry(base: u64) -> (u64, u32) {
    // SAFETY: 12 bytes of the user's packed epoll_event.
    match unsafe { bpf_probe_read_user(base as *const [u8; 12]) } {
        Ok(raw) => (
            u64::from_le_bytes([
                raw[4], raw[5], raw[6], raw[7], raw[8], raw[9], raw[10], raw[11],
            ]),
            u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]),
        ),
        Err(_) => (0, 0),
    }
}

/// Counts a non-empty wait into the thread's aggregate (per-call uprobes off); flushes it
/// when the wait blocked (ending a run of quick ones), when full, or when old.
#[inline(always)]
fn aggregate_busy(tgid: u32, tid: u32, st: &SyscallArgs, ret: i64, ts: u64, syscall: u32) {
    let blocked = ts - st.start_ns;
    let zero = st.args[3] == 0;
    let quick = zero || blocked < BUSY_QUICK_NS;
    let (data, events) = first_entry(st.args[1]);
    let Some(b) = BUSY_WAITS.get_ptr_mut(&tid) else {
        let b = BusyWaits {
            first_ns: st.start_ns,
            blocked_ns: blocked,
            prev_data: data,
            count: 1,
            quick: quick as u32,
            repeats: 0,
            ready: ret as u32,
            prev_events: events,
            zero_timeout: zero as u32,
            streak: 0,
            _pad: 0,
        };
        if BUSY_WAITS.insert(&tid, &b, 0).is_err() {
            bump(tls_probe_common::counter::LOST_INFLIGHT);
        }
        if !quick {
            flush_busy(tgid, tid, ts, st.args[0] as i32, syscall);
        }
        return;
    };
    // SAFETY: this thread's own entry.
    let b = unsafe { &mut *b };
    if b.count == 0 {
        b.first_ns = st.start_ns;
    }
    // A busy server is woken for the same connection twice in a row now and then; a loop
    // that spins on one fd is woken for it (alone, or next to one other) thousands of times
    // in a row. A server with many ready fds gets them in a stable order, the same one
    // first each time: only waits with one or two ready count.
    b.streak = if quick && ret <= 2 && b.prev_data == data && b.prev_events == events {
        b.streak + 1
    } else {
        0
    };
    let repeat = b.streak >= BUSY_REPEAT_STREAK;
    b.count += 1;
    b.quick += quick as u32;
    b.repeats += repeat as u32;
    b.ready += ret as u32;
    b.blocked_ns += blocked;
    b.zero_timeout += zero as u32;
    b.prev_data = data;
    b.prev_events = events;
    if !quick || b.count >= BUSY_FLUSH_COUNT || ts - b.first_ns >= BUSY_FLUSH_NS {
        flush_busy(tgid, tid, ts, st.args[0] as i32, syscall);
    }
}

/// Emits the thread's aggregated non-empty waits, if any, and starts a new aggregate
/// (keeping the previous wait's first entry).
#[inline(always)]
fn flush_busy(tgid: u32, tid: u32, ts: u64, epfd: i32, syscall: u32) {
    let Some(b) = BUSY_WAITS.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: this thread's own entry.
    let b = unsafe { &mut *b };
    if b.count == 0 {
        return;
    }
    let ev = EpollBusyEvent {
        hdr: header::<EpollBusyEvent>(tgid, tid, ts),
        first_ns: b.first_ns,
        blocked_ns: b.blocked_ns,
        last_data: b.prev_data,
        count: b.count,
        quick: b.quick,
        repeats: b.repeats,
        ready: b.ready,
        last_events: b.prev_events,
        epfd,
        syscall,
        zero_timeout: b.zero_timeout,
    };
    b.count = 0;
    b.quick = 0;
    b.repeats = 0;
    b.ready = 0;
    b.blocked_ns = 0;
    b.zero_timeout = 0;
    if EVENTS
        .output::<EpollBusyEvent>(&ev, wakeup_flags())
        .is_err()
    {
        lost::<EpollBusyEvent>();
    }
}

#[inline(always)]
fn wait_exit(ctx: &TracePointContext, syscall: u32) -> u32 {
    let Some((tgid, tid, flags)) = target_flags() else {
        return 0;
    };
    bump(tls_probe_common::counter::TRACEPOINT_HITS);
    // SAFETY: copied out at once.
    let Some(st) = (unsafe { SYSCALL_ARGS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = SYSCALL_ARGS.remove(&tid);
    let ret = sys_ret(ctx, 0);
    let ts = now();
    // Whether the loop had work since its previous wait (that wait reported fds ready, or
    // it moved bytes since), and from now on whether this one reports any.
    let worked = match LOOP_WORK.get_ptr_mut(&tid) {
        Some(w) => {
            // SAFETY: this thread's own entry, updated in place.
            let w = unsafe { &mut *w };
            let had = *w != 0;
            *w = u32::from(ret > 0);
            had
        }
        None => {
            if ret > 0 {
                let _ = LOOP_WORK.insert(&tid, &1, 0);
            }
            false
        }
    };
    if ret == 0 && st.args[3] == 0 {
        if worked {
            // The loop had work since its last wait and polls once more before running the
            // callbacks that work queued (asyncio does whenever callbacks are ready): its
            // turn, not a busy poll.
            return 0;
        }
        // Timeout 0, nothing ready: a busy poll. Count it, don't stream it.
        aggregate_idle(tgid, tid, &st, ts, syscall);
        return 0;
    }
    if ret > 0 && flags & target_flag::HOT == 0 {
        // Per-call uprobes off: nothing needs each wait on its own. Aggregate.
        aggregate_busy(tgid, tid, &st, ret, ts, syscall);
        return 0;
    }
    flush_idle(tgid, tid, ts);
    flush_busy(tgid, tid, ts, st.args[0] as i32, syscall);
    if ret <= EPOLL_WAIT_SMALL_ENTRIES as i64 {
        emit_wait::<EPOLL_WAIT_SMALL_ENTRIES>(tgid, tid, &st, ret, ts, syscall);
    } else {
        emit_wait::<MAX_READY>(tgid, tid, &st, ret, ts, syscall);
    }
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
    // epoll_ctl(epfd, op, fd, struct epoll_event *event).
    let (epfd, op, fd, evp) = (
        sys_arg(&ctx, 0, 0),
        sys_arg(&ctx, 1, 0),
        sys_arg(&ctx, 2, 0),
        sys_arg(&ctx, 3, 0),
    );
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
    let Some(st) = (unsafe { SYSCALL_ARGS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = SYSCALL_ARGS.remove(&tid);
    let ret = sys_ret(&ctx, 0);
    let ev = EpollCtlEvent {
        hdr: header::<EpollCtlEvent>(tgid, tid, now()),
        data: st.args[3],
        ret,
        epfd: st.args[0] as u32 as i32,
        op: (st.args[0] >> 32) as u32 as i32,
        fd: st.args[1] as u32 as i32,
        events: st.args[2] as u32,
    };
    if EVENTS.output::<EpollCtlEvent>(&ev, wakeup_flags()).is_err() {
        lost::<EpollCtlEvent>();
    }
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    // close(fd).
    let fd = sys_arg(&ctx, 0, 0) as u32 as i32;
    // The fd number may go to another thread's new socket next: not a shared fd.
    let _ = FD_USE.remove(&(((tgid as u64) << 32) | fd as u32 as u64));
    let ev = CloseEvent {
        hdr: header::<CloseEvent>(tgid, tid, now()),
        ret: 0,
        fd,
        _pad: 0,
    };
    if EVENTS.output::<CloseEvent>(&ev, wakeup_flags()).is_err() {
        lost::<CloseEvent>();
    }
    0
}
