//! Small helpers every program uses.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    programs::TracePointContext,
};
use tls_probe_common::{EventHeader, WireRecord, counter};

use crate::maps::{COUNTERS, TARGETS};

/// The current (tgid, tid) if the process is a target.
#[inline(always)]
pub fn target() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is a plain u32 copied out immediately.
    unsafe { TARGETS.get(&tgid) }?;
    Some((tgid, id as u32))
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn header<T: WireRecord>(tgid: u32, tid: u32, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind: T::KIND as u32,
        pid: tgid,
        tid,
        _pad: 0,
        ts_ns,
    }
}

#[inline(always)]
pub fn bump(index: u32) {
    bump_by(index, 1);
}

#[inline(always)]
pub fn bump_by(index: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; programs do not preempt each other on one CPU.
        unsafe { *p += n };
    }
}

/// Counts a read or write of a target seen by the socket I/O tracepoints: its enter and
/// exit hits.
#[inline(always)]
pub fn count_sockio() {
    bump_by(counter::TRACEPOINT_HITS, 2);
    bump(counter::SOCKIO_CALLS);
}

/// Counts a record of `kind` that did not fit in the ring buffer.
#[inline(always)]
pub fn lost<T: WireRecord>() {
    bump(counter::LOST_RINGBUF + T::KIND as u32);
}

/// The current (tgid, tid, target flags) if the process is a target.
#[inline(always)]
pub fn target_flags() -> Option<(u32, u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is a plain u32 copied out immediately.
    let flags = unsafe { TARGETS.get(&tgid) }.copied()?;
    Some((tgid, id as u32, flags))
}

/// Unread bytes in the ring buffer above which a record wakes the agent up.
const WAKEUP_BYTES: u64 = 1024 * 1024;

/// The flags to submit a record with. A wakeup is an irq_work self-interrupt on the
/// target's CPU, which costs a virtual machine an exit: at tens of thousands of records a
/// second that is most of what the records cost the target. So records are submitted
/// without one while the buffer has room, and the agent reads it on a short timer; only a
/// buffer filling up (a burst the timer would not drain in time) wakes it early.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
    if crate::maps::EVENTS.query(BPF_RB_AVAIL_DATA as u64) > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Offset of the first syscall argument (and of `ret` at exit) in a syscall tracepoint's
/// record: after the common header and the syscall number.
const SYS_ARG0: usize = 16;

/// Argument `n` of the syscall at its enter tracepoint, or `default` if it cannot be read.
#[inline(always)]
pub fn sys_arg(ctx: &TracePointContext, n: usize, default: u64) -> u64 {
    // SAFETY: every syscall enter record has six u64 argument slots from SYS_ARG0 on.
    unsafe { ctx.read_at::<u64>(SYS_ARG0 + 8 * n) }.unwrap_or(default)
}

/// The syscall's return value at its exit tracepoint, or `default` if it cannot be read.
#[inline(always)]
pub fn sys_ret(ctx: &TracePointContext, default: i64) -> i64 {
    // SAFETY: every syscall exit record has `ret` at SYS_ARG0.
    unsafe { ctx.read_at::<i64>(SYS_ARG0) }.unwrap_or(default)
}
