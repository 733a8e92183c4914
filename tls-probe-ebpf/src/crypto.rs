//! Uprobes on libcrypto, always on: the key operations (inside a handshake call they mark
//! a full handshake), the error-raising function and ASYNC_pause_job. One program for all,
//! in one uprobe_multi link, dispatching on the attach cookie.

use aya_ebpf::programs::ProbeContext;
use tls_probe_common::cookie;

use crate::{
    asyncjob, errors, ssl,
    twin::{attach_cookie, twin_uprobe},
};

twin_uprobe!(crypto_enter, crypto_enter_single => enter);

#[inline(always)]
fn enter(ctx: &ProbeContext) -> u32 {
    match attach_cookie(ctx) {
        cookie::KEY_OP => ssl::key_op(),
        cookie::ERR_VSET_ERROR => errors::raised(ctx, 1),
        cookie::ERR_PUT_ERROR => errors::raised(ctx, 2),
        cookie::ASYNC_PAUSE_JOB => asyncjob::paused(),
        _ => 0,
    }
}
