//! OpenSSL's async jobs: a uprobe on libcrypto's `ASYNC_pause_job` (the same symbol in 1.1
//! and 3). It fires only when an async job pauses, i.e. once per SSL_ERROR_WANT_ASYNC
//! answer, and never in a program that does not use async mode, so it is always on: a job
//! that keeps pausing (a stuck offload engine) shows here at once, with the SSL* of the
//! handshake call it runs in, and the agent turns on the per-call probes to see the rest.

use tls_probe_common::AsyncPauseEvent;

use crate::{
    maps::{EVENTS, INFLIGHT},
    util::{header, lost, now, target, wakeup_flags},
};

/// `int ASYNC_pause_job(void)`: runs on the job's own stack, on the thread that started
/// it, so the thread's in-flight SSL call is the one that will answer WANT_ASYNC.
#[inline(always)]
pub fn paused() -> u32 {
    let Some((tgid, tid)) = target() else {
        return 0;
    };
    // SAFETY: the pointer is to this thread's own entry, read at once.
    let ssl = INFLIGHT.get_ptr(&tid).map_or(0, |c| unsafe { (*c).ssl });
    let ev = AsyncPauseEvent {
        hdr: header::<AsyncPauseEvent>(tgid, tid, now()),
        ssl,
    };
    if EVENTS
        .output::<AsyncPauseEvent>(&ev, wakeup_flags())
        .is_err()
    {
        lost::<AsyncPauseEvent>();
    }
    0
}
