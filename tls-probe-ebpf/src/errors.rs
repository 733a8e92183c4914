//! OpenSSL's error queue: a uprobe on libcrypto's `ERR_vset_error` (OpenSSL 3) or
//! `ERR_put_error` (1.1). It fires only when OpenSSL raises an error, which a healthy
//! program does rarely, so it is always on: a bad write retry shows here at once, with its
//! (lib, reason) and, when the thread is inside a probed SSL call, that call's SSL* and fd.

use aya_ebpf::programs::ProbeContext;
use tls_probe_common::{LibErrorEvent, NO_OP};

use crate::{
    maps::{EVENTS, INFLIGHT},
    stack,
    util::{header, lost, now, target, wakeup_flags},
};

/// `ERR_LIB_SSL`, and its reasons `SSL_R_BAD_WRITE_RETRY`, `SSL_R_PROTOCOL_IS_SHUTDOWN`.
const ERR_LIB_SSL: i32 = 20;
const SSL_R_BAD_WRITE_RETRY: i32 = 127;
const SSL_R_PROTOCOL_IS_SHUTDOWN: i32 = 207;

/// `void ERR_vset_error(int lib, int reason, const char *fmt, va_list args)` (OpenSSL 3;
/// `ERR_set_error` has the same first two arguments and calls it), reason at argument 1;
/// `void ERR_put_error(int lib, int func, int reason, const char *file, int line)` (1.1),
/// reason at argument 2.
#[inline(always)]
pub fn raised(ctx: &ProbeContext, reason_arg: usize) -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    let lib = ctx.arg::<u64>(0).unwrap_or(0) as u32 as i32;
    let reason = ctx.arg::<u64>(reason_arg).unwrap_or(0) as u32 as i32;
    // The call the error is raised in, when it is probed: which connection it is about.
    // SAFETY: the pointer is to this thread's own entry, read at once.
    let (ssl, op, fd, buf, ret) =
        INFLIGHT
            .get_ptr(&tid)
            .map_or((0, NO_OP, -1, (0, 0), (0, 0)), |c| unsafe {
                (
                    (*c).ssl,
                    (*c).op,
                    (*c).fd,
                    ((*c).buf, (*c).len),
                    ((*c).ret_slot, (*c).ret_addr),
                )
            });
    // The errors that name a misused API: their stack (through the application's call),
    // before the record, so the agent has it when the finding opens.
    if lib == ERR_LIB_SSL
        && (reason == SSL_R_BAD_WRITE_RETRY || reason == SSL_R_PROTOCOL_IS_SHUTDOWN)
    {
        stack::at_error(ctx, (tgid, tid), (ssl, op), buf, ret);
    }
    let ev = LibErrorEvent {
        hdr: header::<LibErrorEvent>(tgid, tid, now()),
        lib,
        reason,
        ssl,
        op,
        fd,
    };
    if EVENTS.output::<LibErrorEvent>(&ev, wakeup_flags()).is_err() {
        lost::<LibErrorEvent>();
    }
    0
}
