//! Uprobes on libssl: the I/O and handshake calls, SSL_get_error and SSL_free.
//!
//! Four programs, each attached to several functions in one `uprobe_multi` link and told
//! which by its attach cookie (`tls_probe_common::cookie`): the per-call set (switched on
//! and off with escalation, so it must detach in one batch) and the once-per-connection
//! set, each an entry and a return program. Each also exists as a plain-`uprobe` twin for
//! kernels without uprobe_multi (see `crate::twin`).

use aya_ebpf::{
    helpers::bpf_probe_read_user,
    programs::{ProbeContext, RetProbeContext},
};
use tls_probe_common::{
    SslCallEvent, SslErrorEvent, SslFreeEvent, SslSetFdEvent, cookie, counter, op, target_flag,
};

use crate::{
    bio,
    maps::{EVENTS, GETERR_ARGS, INFLIGHT},
    stack,
    state::{GetErrorArgs, Inflight},
    twin::{attach_cookie, twin_uprobe, twin_uretprobe},
    util::{bump, header, lost, now, target, target_flags, wakeup_flags},
};

twin_uprobe!(ssl_hot_enter, ssl_hot_enter_single => hot_enter);
twin_uretprobe!(ssl_hot_exit, ssl_hot_exit_single => hot_exit);
twin_uprobe!(ssl_cold_enter, ssl_cold_enter_single => cold_enter);
twin_uretprobe!(ssl_cold_exit, ssl_cold_exit_single => cold_exit);

/// SSL_read/SSL_write/SSL_peek (and `_ex`), SSL_get_error: entry.
#[inline(always)]
fn hot_enter(ctx: &ProbeContext) -> u32 {
    match attach_cookie(ctx) {
        cookie::SSL_GET_ERROR => get_error_enter(ctx),
        c if c & cookie::CALLEE != 0 => {
            // On the callee's first instruction the return address into the wrapper that
            // called it is on top of the stack.
            // SAFETY: 8 bytes of the target's stack, copied out.
            let ret_addr =
                unsafe { bpf_probe_read_user(stack_pointer(ctx) as *const u64) }.unwrap_or(0);
            match cookie::callee_op(c, ret_addr) {
                Some(op) => enter(ctx, op, true),
                // Called from elsewhere in the library: not an application call.
                None => 0,
            }
        }
        op => enter(ctx, op as u32, false),
    }
}

/// Their returns.
#[inline(always)]
fn hot_exit(ctx: &RetProbeContext) -> u32 {
    match attach_cookie(ctx) {
        cookie::SSL_GET_ERROR => get_error_exit(ctx),
        c => exit(ctx, c & cookie::CALLEE != 0),
    }
}

/// The stack pointer at the probe. The agent places probes on callees on x86_64 only.
#[inline(always)]
fn stack_pointer(ctx: &ProbeContext) -> u64 {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: the probe's own register set.
        unsafe { (*ctx.regs).rsp }
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        let _ = ctx;
        0
    }
}

/// Returns of the handshake calls.
#[inline(always)]
fn cold_exit(ctx: &RetProbeContext) -> u32 {
    exit(ctx, false)
}

/// SSL_do_handshake/SSL_accept/SSL_connect, ossl_statem_accept/ossl_statem_connect (where
/// exported), SSL_free: entry.
#[inline(always)]
fn cold_enter(ctx: &ProbeContext) -> u32 {
    match attach_cookie(ctx) {
        cookie::SSL_FREE => free(ctx),
        cookie::SSL_SET_FD => set_fd(ctx),
        op => enter(ctx, op as u32, false),
    }
}

/// Entry of any SSL I/O or handshake call: remember the arguments for the return probe.
/// `callee`: the probe is on the internal function the call goes through, whose fourth
/// argument is always the byte count's pointer and whose result is the `_ex` form's.
#[inline(always)]
fn enter(ctx: &ProbeContext, op: u32, callee: bool) -> u32 {
    let Some((tgid, tid, flags)) = target_flags() else {
        return 0;
    };
    let is_io = !op::is_handshake(op);
    // The per-call probes are switched off in the kernel first (`HOT` cleared) and their
    // links closed in the background, which takes ~100 ms each: until then they still trap.
    if is_io && flags & target_flag::HOT == 0 {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if let Some(cur) = INFLIGHT.get_ptr_mut(&tid) {
        // SAFETY: the pointer is to this thread's own entry.
        let cur = unsafe { &mut *cur };
        // A call nested in the outer one (SSL_accept -> SSL_do_handshake): the outer
        // call is the one the application made. Only that nesting exists in libssl: any
        // other entry is stale (its return was never seen, e.g. the return probe was
        // attached or detached while the call ran) and must not swallow this call.
        // So is the state machine run by the application's call on the same SSL*
        // (SSL_do_handshake, or SSL_read driving node's handshakes).
        let nests = (op == op::SSL_DO_HANDSHAKE
            && (cur.op == op::SSL_ACCEPT || cur.op == op::SSL_CONNECT))
            || op::is_statem(op);
        if cur.ssl == ssl && nests {
            cur.depth += 1;
            cur.statem |= op::is_statem(op) as u32;
            return 0;
        }
        // Otherwise start afresh.
    }
    let is_ex = op == op::SSL_READ_EX || op == op::SSL_WRITE_EX || op == op::SSL_PEEK_EX;
    // At the entry, before the return probe takes it over: the return address.
    let sp = stack_pointer(ctx);
    let state = Inflight {
        ssl,
        buf: if is_io { ctx.arg(1).unwrap_or(0) } else { 0 },
        len: if is_io { ctx.arg(2).unwrap_or(0) } else { 0 },
        out_ptr: if is_ex || callee {
            ctx.arg(3).unwrap_or(0)
        } else {
            0
        },
        start_ns: now(),
        sys_last_ret: 0,
        op,
        depth: 1,
        fd: -1,
        sys_calls: 0,
        sys_last_kind: 0,
        key_ops: 0,
        rd_buf: 0,
        hello: 0,
        hello_len: 0,
        callee: callee as u32,
        statem: 0,
        ret_slot: sp,
        // SAFETY: 8 bytes of the target's stack, copied out.
        ret_addr: unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0),
    };
    if INFLIGHT.insert(&tid, &state, 0).is_err() {
        bump(counter::LOST_INFLIGHT);
    }
    // The application's call (not one nested in it): its stack, if a finding wants it.
    stack::if_armed(ctx, tgid, tid, ssl, op, (state.buf, state.len));
    0
}

/// Return of any SSL I/O or handshake call: emit one record. `callee`: the return of a
/// callee site ([`enter`]).
#[inline(always)]
fn exit(ctx: &RetProbeContext, callee: bool) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    let Some(cur) = INFLIGHT.get_ptr_mut(&tid) else {
        return 0;
    };
    // SAFETY: the pointer is to this thread's own entry.
    let cur = unsafe { &mut *cur };
    if callee && cur.callee == 0 {
        // A callee entered from elsewhere in the library: its entry recorded nothing.
        return 0;
    }
    if cur.depth > 1 {
        cur.depth -= 1;
        return 0;
    }
    let st = *cur;
    let _ = INFLIGHT.remove(&tid);

    let ts = now();
    // The return is `int` in every probed function: sign-extend the low 32 bits.
    let ret_raw: u64 = ctx.ret();
    let mut ret = ret_raw as u32 as i32 as i64;
    let is_ex = st.op == op::SSL_READ_EX || st.op == op::SSL_WRITE_EX || st.op == op::SSL_PEEK_EX;
    let bytes = if st.callee != 0 {
        // The callee returns > 0 with the count behind the pointer; the wrapper turns that
        // into its own result, as recorded here: the count (plain form) or 1 (`_ex`), and
        // for `_ex` a negative result into 0.
        let n = if ret > 0 {
            // SAFETY: the size_t the callee wrote its count to; only the count is read.
            unsafe { bpf_probe_read_user(st.out_ptr as *const u64) }.unwrap_or(0)
        } else {
            0
        };
        ret = match (is_ex, ret > 0) {
            (true, true) => 1,
            (true, false) => ret.max(0),
            (false, true) => n as i64,
            (false, false) => ret,
        };
        n
    } else if st.out_ptr != 0 {
        if ret == 1 {
            // SAFETY: a size_t the caller passed for the count; only the count is read.
            unsafe { bpf_probe_read_user(st.out_ptr as *const u64) }.unwrap_or(0)
        } else {
            0
        }
    } else if ret > 0 && !op::is_handshake(st.op) {
        ret as u64
    } else {
        0
    };
    // An SSL* tied to a socket over memory BIOs does no socket I/O inside its calls: a
    // syscall seen there is a callback's or OpenSSL's own (node's handshake callbacks,
    // libcrypto reading /dev/urandom to reseed), not its socket.
    let fd = if st.fd >= 0 && bio::is_tied(tgid, st.ssl) {
        -1
    } else {
        st.fd
    };
    if bytes > 0 || (op::is_handshake(st.op) && ret == 1) {
        bio::worked(tid);
    }
    if st.sys_calls == 0 {
        // No socket syscall inside: a memory BIO (or nothing to move). Its record comes
        // after the tie it may make, so the agent knows the fd before it reads the call.
        let handshake = op::is_handshake(st.op) || st.statem != 0;
        bio::after_call(tgid, tid, ts, st.ssl, st.op, handshake, bytes);
    }
    let ev = SslCallEvent {
        hdr: header::<SslCallEvent>(tgid, tid, ts),
        ssl: st.ssl,
        buf: st.buf,
        len: st.len,
        ret,
        bytes,
        start_ns: st.start_ns,
        duration_ns: ts - st.start_ns,
        sys_last_ret: st.sys_last_ret,
        fd,
        op: st.op,
        sys_calls: st.sys_calls,
        sys_last_kind: st.sys_last_kind,
        key_ops: st.key_ops,
        _pad: 0,
    };
    if EVENTS.output::<SslCallEvent>(&ev, wakeup_flags()).is_err() {
        lost::<SslCallEvent>();
    }
    0
}

/// A private-key or signature operation in libcrypto. Inside an SSL call it marks a full
/// handshake (a resumed one signs and verifies nothing); elsewhere it is ignored.
#[inline(always)]
pub fn key_op() -> u32 {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    if let Some(cur) = INFLIGHT.get_ptr_mut(&tid) {
        // SAFETY: this thread's own entry.
        unsafe { (*cur).key_ops += 1 };
    }
    0
}

#[inline(always)]
fn get_error_enter(ctx: &ProbeContext) -> u32 {
    let Some((_, tid, flags)) = target_flags() else {
        return 0;
    };
    if flags & target_flag::HOT == 0 {
        return 0;
    }
    let args = GetErrorArgs {
        ssl: ctx.arg(0).unwrap_or(0),
        ret: ctx.arg::<u64>(1).unwrap_or(0) as u32 as i32 as i64,
    };
    if GETERR_ARGS.insert(&tid, &args, 0).is_err() {
        bump(counter::LOST_INFLIGHT);
    }
    0
}

#[inline(always)]
fn get_error_exit(ctx: &RetProbeContext) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    // SAFETY: copied out at once.
    let Some(args) = (unsafe { GETERR_ARGS.get(&tid) }).copied() else {
        return 0;
    };
    let _ = GETERR_ARGS.remove(&tid);
    let code: u64 = ctx.ret();
    let ev = SslErrorEvent {
        hdr: header::<SslErrorEvent>(tgid, tid, now()),
        ssl: args.ssl,
        ret_arg: args.ret,
        code: code as u32 as i32,
        _pad: 0,
    };
    if EVENTS.output::<SslErrorEvent>(&ev, wakeup_flags()).is_err() {
        lost::<SslErrorEvent>();
    }
    0
}

/// `SSL_set_fd(ssl, fd)`: the connection's socket, from the start.
#[inline(always)]
fn set_fd(ctx: &ProbeContext) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    let ev = SslSetFdEvent {
        hdr: header::<SslSetFdEvent>(tgid, tid, now()),
        ssl: ctx.arg(0).unwrap_or(0),
        fd: ctx.arg::<u64>(1).unwrap_or(u64::MAX) as i32,
        _pad: 0,
    };
    if EVENTS.output::<SslSetFdEvent>(&ev, wakeup_flags()).is_err() {
        lost::<SslSetFdEvent>();
    }
    0
}

#[inline(always)]
fn free(ctx: &ProbeContext) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    let ssl = ctx.arg(0).unwrap_or(0);
    bio::forget(tgid, ssl);
    let ev = SslFreeEvent {
        hdr: header::<SslFreeEvent>(tgid, tid, now()),
        ssl,
    };
    if EVENTS.output::<SslFreeEvent>(&ev, wakeup_flags()).is_err() {
        lost::<SslFreeEvent>();
    }
    0
}
