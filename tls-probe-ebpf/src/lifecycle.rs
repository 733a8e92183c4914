//! Thread exit: `sched:sched_process_exit` fires in the exiting thread, for every thread
//! of every process. The per-thread maps are keyed by tid, and a thread that dies inside a
//! probed call (pthread_exit from a callback, exit() from another thread, a kill) never
//! runs the return probe that would remove its entry: delete them here, whatever the
//! process, so a stale entry never outlives its thread (tids are reused). For traced
//! processes, tell userspace, which learns of a process's exit at once from `group_dead`
//! instead of on its next once-a-second look.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use tls_probe_common::TaskExitEvent;

use crate::{
    maps::{
        BIO_AWAIT, BIO_READ, EVENTS, GETERR_ARGS, IDLE_WAITS, INFLIGHT, LOOP_WORK, SOCK_IN,
        SYSCALL_ARGS, TARGETS,
    },
    util::{header, lost, now, wakeup_flags},
};

/// Offset of `bool group_dead` in the tracepoint's record
/// (/sys/kernel/tracing/events/sched/sched_process_exit/format, Linux 6.x).
const GROUP_DEAD_OFFSET: usize = 32;

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let mut cleared = 0;
    cleared += u32::from(INFLIGHT.remove(&tid).is_ok());
    cleared += u32::from(SYSCALL_ARGS.remove(&tid).is_ok());
    cleared += u32::from(IDLE_WAITS.remove(&tid).is_ok());
    cleared += u32::from(GETERR_ARGS.remove(&tid).is_ok());
    // A socket syscall it died in (not counted: a blocked read is no probed call).
    let _ = SOCK_IN.remove(&tid);
    // Candidates only: not counted as left behind.
    let _ = BIO_READ.remove(&tid);
    let _ = BIO_AWAIT.remove(&tid);
    let _ = LOOP_WORK.remove(&tid);
    // SAFETY: the value is a plain u32, not kept.
    if unsafe { TARGETS.get(&tgid) }.is_none() {
        return 0;
    }
    // SAFETY: reads one byte of the tracepoint record, inside its fixed fields.
    let group_dead = unsafe { ctx.read_at::<u8>(GROUP_DEAD_OFFSET) }.unwrap_or(0);
    let ev = TaskExitEvent {
        hdr: header::<TaskExitEvent>(tgid, tid, now()),
        cleared,
        group_dead: u32::from(group_dead != 0),
    };
    if EVENTS.output::<TaskExitEvent>(&ev, wakeup_flags()).is_err() {
        lost::<TaskExitEvent>();
    }
    0
}
