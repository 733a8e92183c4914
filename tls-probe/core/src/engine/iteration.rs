//! One thread's event loop: the last epoll wait and the SSL calls made until the next one
//! (an "iteration"), and the failing call still waiting for its SSL_get_error.

use crate::event::{EpollBusy, EpollWait, SslCall, SslErrorCode, SslOp, SysKind};

/// A failing SSL call whose SSL_get_error has not arrived yet.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub ts: u64,
    pub call: SslCall,
    /// An async job paused on this thread, for this SSL*, during the call
    /// (`ASYNC_pause_job`, always probed): the call answers WANT_ASYNC.
    pub async_paused: bool,
}

impl Pending {
    /// The code SSL_get_error would have given, guessed: WANT_ASYNC after an async job
    /// paused inside the call; else from the last socket syscall, EAGAIN on a read meaning
    /// WANT_READ, on a write WANT_WRITE. None when it cannot be told.
    pub fn inferred_code(&self) -> Option<SslErrorCode> {
        const EAGAIN: i64 = -11;
        if self.async_paused {
            return Some(SslErrorCode::WantAsync);
        }
        match (self.call.sys_last, self.call.sys_last_ret) {
            (Some(SysKind::Read), Some(EAGAIN)) => Some(SslErrorCode::WantRead),
            (Some(SysKind::Write), Some(EAGAIN)) => Some(SslErrorCode::WantWrite),
            _ => None,
        }
    }
}

/// One ready entry of the wait that started the iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReadySlot {
    pub fd: Option<i32>,
    pub events: u32,
    pub interest: Option<u32>,
}

/// A connection the iteration made SSL calls on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Touched {
    pub ssl: u64,
    pub fd: Option<i32>,
    pub op: SslOp,
    pub progress: bool,
    /// The last call's SSL_get_error answer (reported or inferred), None on success/unknown.
    pub code: Option<SslErrorCode>,
}

/// Whether a connection's fd was among the ready entries of the iteration's wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Ready(ReadySlot),
    NotReady,
    Unknown,
}

#[derive(Debug, Default)]
pub(crate) struct Iteration {
    pub active: bool,
    /// Started by an epoll wait; false for a pseudo-iteration of a thread that waits in
    /// something not probed (poll, select, another thread's epoll).
    pub epoll: bool,
    pub started_ns: u64,
    pub timeout_ns: Option<i64>,
    pub blocked_ns: u64,
    pub ret: i64,
    pub ready: Vec<ReadySlot>,
    pub touched: Vec<Touched>,
    pub calls: u32,
    pub progress: bool,
    /// The last call failed (ret <= 0): in a pseudo-iteration, the next call starts a new one.
    pub last_failed: bool,
    /// Started by a wait aggregated while the per-call probes were off: its calls are not
    /// all seen, so neither its progress nor its readiness can be judged.
    pub untraced: bool,
}

impl Iteration {
    fn reset(&mut self, ts: u64, epoll: bool) {
        self.active = true;
        self.epoll = epoll;
        self.started_ns = ts;
        self.timeout_ns = None;
        self.blocked_ns = 0;
        self.ret = 0;
        self.ready.clear();
        self.touched.clear();
        self.calls = 0;
        self.progress = false;
        self.last_failed = false;
        self.untraced = false;
    }

    pub fn start_wait(&mut self, ts: u64, w: &EpollWait) {
        self.reset(ts, true);
        self.timeout_ns = w.timeout_ns;
        self.blocked_ns = w.duration_ns;
        self.ret = w.ret;
        self.ready.extend(w.ready.iter().map(|r| ReadySlot {
            fd: r.fd,
            events: r.events,
            interest: r.interest,
        }));
    }

    /// The last of a run of immediate empty waits aggregated in the kernel (timeout 0,
    /// nothing ready), which blocked `blocked_ns`.
    pub fn start_empty(&mut self, ts: u64, blocked_ns: u64) {
        self.reset(ts, true);
        self.timeout_ns = Some(0);
        self.blocked_ns = blocked_ns;
    }

    /// The last of a run of non-empty waits aggregated in the kernel while the per-call
    /// probes were off, which blocked `blocked_ns`.
    pub fn start_busy(&mut self, ts: u64, blocked_ns: u64, w: &EpollBusy) {
        self.reset(ts, true);
        self.untraced = true;
        self.timeout_ns = (w.zero_timeout == w.count).then_some(0);
        self.blocked_ns = blocked_ns;
        self.ret = i64::from((w.ready_total / w.count.max(1)).max(1));
        self.ready.push(ReadySlot {
            fd: w.last_ready.fd,
            events: w.last_ready.events,
            interest: w.last_ready.interest,
        });
    }

    pub fn start_pseudo(&mut self, ts: u64) {
        self.reset(ts, false);
    }

    /// Records a completed call on connection `ssl`. A call that moved bytes on the socket
    /// counts as progress for the loop, though not for the connection's counters.
    pub fn record(&mut self, call: &SslCall, fd: Option<i32>, code: Option<SslErrorCode>) {
        let progress = call.made_progress() || moved_socket_bytes(call);
        self.calls += 1;
        self.progress |= progress;
        self.last_failed = call.ret <= 0;
        // Calls on one connection come in runs: look at the last entry first.
        let pos = match self.touched.last() {
            Some(t) if t.ssl == call.ssl => Some(self.touched.len() - 1),
            _ => self.touched.iter().position(|t| t.ssl == call.ssl),
        };
        match pos {
            Some(i) => {
                let t = &mut self.touched[i];
                t.fd = fd.or(t.fd);
                t.op = call.op;
                t.progress |= progress;
                t.code = code;
            }
            None => self.touched.push(Touched {
                ssl: call.ssl,
                fd,
                op: call.op,
                progress,
                code,
            }),
        }
    }

    /// Where `fd` stood in the ready list of the wait that started this iteration.
    pub fn readiness(&self, fd: Option<i32>) -> Readiness {
        if !self.epoll {
            return Readiness::Unknown;
        }
        if self.ret <= 0 {
            // A timeout or an error: nothing was ready.
            return Readiness::NotReady;
        }
        if let Some(fd) = fd
            && let Some(slot) = self.ready.iter().find(|r| r.fd == Some(fd))
        {
            return Readiness::Ready(*slot);
        }
        let all_known =
            self.ready.iter().all(|r| r.fd.is_some()) && self.ret as usize <= self.ready.len();
        if fd.is_some() && all_known {
            Readiness::NotReady
        } else {
            Readiness::Unknown
        }
    }

    /// True when the wait returned at once: a zero timeout, or blocked under `max_blocked_ns`.
    pub fn immediate(&self, max_blocked_ns: u64) -> bool {
        self.timeout_ns == Some(0) || self.blocked_ns < max_blocked_ns
    }
}

/// True for a failing call that made more than one socket syscall before the one that
/// would block: OpenSSL stops at the first EAGAIN, so the earlier ones moved bytes. Part
/// of a record came in (or went out): no TLS progress yet, but no wasted wake-up either,
/// since a 16 KiB record that crosses a network in 1448-byte segments takes a wake-up each.
fn moved_socket_bytes(call: &SslCall) -> bool {
    const EAGAIN: i64 = -11;
    call.ret <= 0 && call.sys_calls >= 2 && call.sys_last_ret == Some(EAGAIN)
}

/// A thread's loop state.
#[derive(Debug, Default)]
pub(crate) struct LoopState {
    pub pending: Option<Pending>,
    pub iter: Iteration,
    /// The thread has been seen in an epoll wait; otherwise its calls form pseudo-iterations.
    pub epoll_mode: bool,
}
