//! The user stack behind a finding: the registers and the top of the stack at the entry of
//! a probed SSL call, for the agent to unwind (from `.eh_frame`, in userspace) into the
//! application function that made the call.
//!
//! Taken only for threads the agent armed (`STACK_ARM`, a few samples per finding, spaced by
//! `STACK_GAP_NS`) and at the OpenSSL errors that name a misused API (at most
//! `STACK_ERR_PER_THREAD` per thread). Only the thread's stack memory is copied, and it
//! stops where the call's own buffer starts, when the program keeps that buffer on its
//! stack: the data it reads or writes is never copied (the return address into the caller
//! lies below the caller's locals, so the call site is still there; the frames above it are
//! not).

use aya_ebpf::{helpers::generated::bpf_probe_read_user, programs::ProbeContext};
use tls_probe_common::{
    STACK_CHUNK, STACK_ERR_PER_THREAD, STACK_GAP_NS, UserStackEvent, stack_why,
};

use crate::{
    maps::{EVENTS, STACK_ARM, STACK_ERR},
    util::{header, lost, now, wakeup_flags},
};

/// At the entry of an application's SSL call: a stack if the thread is armed and due.
/// `buf`: the call's buffer `(pointer, length)`, or `(0, 0)`.
#[inline(always)]
pub fn if_armed(ctx: &ProbeContext, tgid: u32, tid: u32, ssl: u64, op: u32, buf: (u64, u64)) {
    let Some(arm) = STACK_ARM.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: the agent's entry for this thread; only this thread's probes write it.
    let arm = unsafe { &mut *arm };
    let ts = now();
    if arm.budget == 0 || ts < arm.next_ns {
        return;
    }
    arm.budget -= 1;
    arm.next_ns = ts + STACK_GAP_NS;
    capture(
        ctx,
        (tgid, tid, ts),
        (ssl, op),
        stack_why::ARMED,
        buf,
        (0, 0),
    );
}

/// At an OpenSSL error that names a misused API: its stack, a few per thread.
/// `buf` as in [`if_armed`], for the probed call the error is raised in; `ret`: that call's
/// return address slot and value at its entry (its return probe has replaced it since).
#[inline(always)]
pub fn at_error(
    ctx: &ProbeContext,
    (tgid, tid): (u32, u32),
    (ssl, op): (u64, u32),
    buf: (u64, u64),
    ret: (u64, u64),
) {
    let taken = match STACK_ERR.get_ptr_mut(&tid) {
        // SAFETY: this thread's own entry.
        Some(n) => unsafe {
            if *n >= STACK_ERR_PER_THREAD {
                return;
            }
            *n += 1;
            true
        },
        None => STACK_ERR.insert(&tid, &1, 0).is_ok(),
    };
    if taken {
        capture(
            ctx,
            (tgid, tid, now()),
            (ssl, op),
            stack_why::ERROR,
            buf,
            ret,
        );
    }
}

#[inline(always)]
fn capture(
    ctx: &ProbeContext,
    (tgid, tid, ts): (u32, u32, u64),
    (ssl, op): (u64, u32),
    why: u32,
    (buf, buf_len): (u64, u64),
    (ret_slot, ret_addr): (u64, u64),
) {
    let Some(mut entry) = EVENTS.reserve::<UserStackEvent>(0) else {
        lost::<UserStackEvent>();
        return;
    };
    let (ip, sp, bp) = regs(ctx);
    let p = entry.as_mut_ptr();
    // SAFETY: `p` is the reservation, exclusively ours until submitted; every field is
    // written before the record is submitted, `stack` up to `len`.
    unsafe {
        (*p).hdr = header::<UserStackEvent>(tgid, tid, ts);
        (*p).ip = ip;
        (*p).sp = sp;
        (*p).bp = bp;
        (*p).ssl = ssl;
        (*p).op = op;
        (*p).why = why;
        (*p).ret_slot = ret_slot;
        (*p).ret_addr = ret_addr;
        (*p)._pad = 0;
        let dst = (*p).stack.as_mut_ptr();
        let mut len = 0u32;
        let mut i = 0usize;
        while i < tls_probe_common::STACK_BYTES / STACK_CHUNK {
            let off = i * STACK_CHUNK;
            let lo = sp + off as u64;
            let src = lo as *const _;
            // The thread's stack memory only: from its stack pointer up to the call's
            // buffer, if that is on the stack.
            if buf_len > 0 && buf < lo + STACK_CHUNK as u64 && buf + buf_len > lo {
                // Below CHUNK already (buf < lo + CHUNK); the mask shows it the verifier.
                let n = (buf.saturating_sub(lo) & (STACK_CHUNK as u64 - 1)) as u32;
                if n > 0 && bpf_probe_read_user(dst.add(off).cast(), n, src) == 0 {
                    len += n;
                }
                break;
            }
            if bpf_probe_read_user(dst.add(off).cast(), STACK_CHUNK as u32, src) != 0 {
                break;
            }
            len += STACK_CHUNK as u32;
            i += 1;
        }
        (*p).len = len;
    }
    entry.submit(wakeup_flags());
}

/// Instruction, stack and frame pointer of the probed thread.
#[inline(always)]
fn regs(ctx: &ProbeContext) -> (u64, u64, u64) {
    #[cfg(bpf_target_arch = "x86_64")]
    {
        // SAFETY: the probe's own register set.
        unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp, (*ctx.regs).rbp) }
    }
    #[cfg(not(bpf_target_arch = "x86_64"))]
    {
        let _ = ctx;
        (0, 0, 0)
    }
}
