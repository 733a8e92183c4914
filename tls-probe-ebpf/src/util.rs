//! Small helpers every program uses.

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use tls_probe_common::{EventHeader, counter};

use crate::maps::{COUNTERS, TARGETS};

/// The current (tgid, tid) if the process is a target.
#[inline(always)]
pub fn target() -> Option<(u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is a plain u32 copied out immediately.
    unsafe { TARGETS.get(tgid) }?;
    Some((tgid, id as u32))
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn header(kind: u32, tgid: u32, tid: u32, ts_ns: u64) -> EventHeader {
    EventHeader {
        kind,
        pid: tgid,
        tid,
        _pad: 0,
        ts_ns,
    }
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; programs do not preempt each other on one CPU.
        unsafe { *p += 1 };
    }
}

/// Counts a record of `kind` that did not fit in the ring buffer.
#[inline(always)]
pub fn lost(kind: u32) {
    bump(counter::LOST_RINGBUF + kind);
}

/// The current (tgid, tid, target flags) if the process is a target.
#[inline(always)]
pub fn target_flags() -> Option<(u32, u32, u32)> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: the value is a plain u32 copied out immediately.
    let flags = unsafe { TARGETS.get(tgid) }.copied()?;
    Some((tgid, id as u32, flags))
}
