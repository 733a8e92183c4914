//! Socket syscalls made inside an SSL call: they tell which fd the SSL* uses.
//!
//! These tracepoints fire for every process on the machine, so they do one map lookup
//! keyed by tid: only threads inside a probed SSL call have an `INFLIGHT` entry.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use tls_probe_common::{op, sys, target_flag};

use crate::{
    maps::{FD_USE, INFLIGHT, SHARED_FD},
    state::FdUse,
    util::{now, target_flags},
};

/// Two threads entering I/O on one fd within this much of each other share it.
const SHARED_FD_NS: u64 = 50_000_000;

/// While a target's per-call uprobes are off: remembers which thread last did I/O on `fd`
/// and counts I/O by another thread soon after (two threads on one socket: the cheap sign
/// of concurrent SSL use). One LRU lookup and update per read/write of a target.
#[inline(always)]
fn note_fd_use(ctx: &TracePointContext) {
    let Some((tgid, tid, flags)) = target_flags() else {
        return;
    };
    if flags & target_flag::HOT != 0 {
        return;
    }
    // SAFETY: reading the syscall's first argument from the tracepoint record.
    let fd = unsafe { ctx.read_at::<u64>(ARG0) }.unwrap_or(u64::MAX) as u32;
    let key = ((tgid as u64) << 32) | fd as u64;
    let ts = now();
    if let Some(u) = FD_USE.get_ptr_mut(key) {
        // SAFETY: a plain entry, updated in place.
        let u = unsafe { &mut *u };
        if u.tid != tid {
            if ts - u.ts_ns < SHARED_FD_NS {
                match SHARED_FD.get_ptr_mut(tgid) {
                    // SAFETY: a plain counter.
                    Some(n) => unsafe { *n += 1 },
                    None => {
                        let _ = SHARED_FD.insert(tgid, 1, 0);
                    }
                }
            }
            u.tid = tid;
        }
        u.ts_ns = ts;
    } else {
        let _ = FD_USE.insert(
            key,
            FdUse {
                ts_ns: ts,
                tid,
                _pad: 0,
            },
            0,
        );
    }
}

/// Offset of the first syscall argument (and of `ret` on exit) in the tracepoint record.
const ARG0: usize = 16;

#[inline(always)]
fn on_enter(ctx: &TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(cur) = INFLIGHT.get_ptr_mut(tid) else {
        note_fd_use(ctx);
        return 0;
    };
    // SAFETY: this thread's own entry, read once.
    let cur_op = unsafe { (*cur).op };
    let io =
        cur_op != op::SSL_DO_HANDSHAKE && cur_op != op::SSL_ACCEPT && cur_op != op::SSL_CONNECT;
    if io && target_flags().is_some_and(|(_, _, flags)| flags & target_flag::HOT == 0) {
        // An I/O call entered while the per-call probes were on, whose return probe went
        // away before it returned (e.g. a blocking SSL_read across the end of an
        // escalation window): stale. Drop it, or the thread would never be seen again.
        let _ = INFLIGHT.remove(tid);
        note_fd_use(ctx);
        return 0;
    }
    // SAFETY: reading the syscall's first argument from the tracepoint record.
    let fd = unsafe { ctx.read_at::<u64>(ARG0) }.unwrap_or(u64::MAX) as i64;
    // SAFETY: this thread's own entry.
    let cur = unsafe { &mut *cur };
    cur.fd = fd as i32;
    cur.sys_calls += 1;
    0
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext, kind: u32) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(cur) = INFLIGHT.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: reading `ret` from the tracepoint record.
    let ret = unsafe { ctx.read_at::<i64>(ARG0) }.unwrap_or(0);
    // SAFETY: this thread's own entry.
    let cur = unsafe { &mut *cur };
    cur.sys_last_ret = ret;
    cur.sys_last_kind = kind;
    0
}

macro_rules! sock_tracepoints {
    ($($enter:ident, $exit:ident => $kind:expr;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            on_enter(&ctx)
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            on_exit(&ctx, $kind)
        }
    )*};
}

sock_tracepoints! {
    sys_enter_read, sys_exit_read => sys::READ;
    sys_enter_write, sys_exit_write => sys::WRITE;
    sys_enter_recvfrom, sys_exit_recvfrom => sys::READ;
    sys_enter_sendto, sys_exit_sendto => sys::WRITE;
    sys_enter_recvmsg, sys_exit_recvmsg => sys::READ;
    sys_enter_sendmsg, sys_exit_sendmsg => sys::WRITE;
    sys_enter_readv, sys_exit_readv => sys::READ;
    sys_enter_writev, sys_exit_writev => sys::WRITE;
}
