//! Engine tests on synthetic traces. [`Sim`] writes a trace the way the probes and the
//! tracker would, one event at a time, and feeds it to an engine as it goes.

mod active;
mod bounds;
mod busy;
mod concurrent;
mod determinism;
mod handshake;
mod handshake_rules;
mod handshake_side;
mod idle;
mod incidents;
mod peers;
mod spin;
mod state;

use super::{Change, Config, Engine, Finding, FindingChange, FindingKind, epoll_bits::*};
use crate::event::{
    EpollIdle, EpollSyscall, EpollWait, Event, EventKind, ReadyFd, SslCall, SslError, SslErrorCode,
    SslOp, SysKind,
};

pub(super) const PID: u32 = 4242;
pub(super) const TID: u32 = 4243;
pub(super) const US: u64 = 1_000;
pub(super) const MS: u64 = 1_000_000;
pub(super) const SEC: u64 = 1_000_000_000;
/// Where traces start: an arbitrary monotonic time, not 0.
pub(super) const T0: u64 = 1_000 * SEC;

/// How a failing call reports its code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorReport {
    /// An SslError event follows, as when SSL_get_error is probed.
    GetError,
    /// Nothing follows: the engine infers from the last syscall.
    Infer,
}

pub(super) struct Sim {
    pub engine: Engine,
    pub now: u64,
    pub pid: u32,
    /// Every change, with the trace time it was pushed at.
    pub changes: Vec<(u64, FindingChange)>,
    pub report: ErrorReport,
    /// Time a call takes.
    pub call_ns: u64,
}

/// A ready entry for fd `fd`, registered with `interest`; `data` is the fd, as many loops do.
pub(super) fn ready(fd: i32, events: u32, interest: u32) -> ReadyFd {
    ReadyFd {
        events,
        data: fd as u64,
        fd: Some(fd),
        interest: Some(interest),
    }
}

pub(super) fn call(op: SslOp, ssl: u64, fd: i32, ret: i64, bytes: u64) -> SslCall {
    SslCall {
        op,
        ssl,
        buf: 0x7000_0000,
        len: 16_384,
        ret,
        bytes,
        start_ns: 0,
        duration_ns: 0,
        fd: Some(fd),
        fd_seen: true,
        sys_calls: 1,
        sys_last: Some(if op.is_write() {
            SysKind::Write
        } else {
            SysKind::Read
        }),
        sys_last_ret: Some(if ret > 0 { ret } else { -11 }),
        key_ops: 0,
    }
}

impl Sim {
    pub fn new() -> Self {
        Self::with_config(Config::default())
    }

    pub fn with_config(cfg: Config) -> Self {
        let mut engine = Engine::new(cfg);
        engine.set_comm(PID, "nginx");
        Self {
            engine,
            now: T0,
            pid: PID,
            changes: Vec::new(),
            report: ErrorReport::GetError,
            call_ns: 2 * US,
        }
    }

    pub fn feed(&mut self, tid: u32, kind: EventKind) {
        let ev = Event::new(self.now, self.pid, tid, kind);
        let mut out = Vec::new();
        self.engine.ingest(&ev, &mut out);
        let now = self.now;
        self.changes.extend(out.into_iter().map(|c| (now, c)));
    }

    /// Lets time pass with no event at all.
    pub fn idle(&mut self, ns: u64) {
        self.now += ns;
        let mut out = Vec::new();
        self.engine.advance(self.now, &mut out);
        let now = self.now;
        self.changes.extend(out.into_iter().map(|c| (now, c)));
    }

    /// An epoll wait that blocked `blocked_ns` and returned `ready`.
    pub fn wait(
        &mut self,
        tid: u32,
        timeout_ns: Option<i64>,
        blocked_ns: u64,
        ready: Vec<ReadyFd>,
    ) {
        let start_ns = self.now;
        self.now += blocked_ns;
        let w = EpollWait {
            syscall: EpollSyscall::EpollWait,
            epfd: 3,
            maxevents: 512,
            timeout_ns,
            start_ns,
            duration_ns: blocked_ns,
            ret: ready.len() as i64,
            ready: ready.into(),
        };
        self.feed(tid, EventKind::EpollWait(w));
    }

    /// `count` immediate empty waits (timeout 0, nothing ready) over `span_ns`, each
    /// blocking 1 µs, as the kernel reports them: one aggregate at the end.
    pub fn empty_waits(&mut self, tid: u32, count: u32, span_ns: u64) {
        let first_ns = self.now;
        self.now += span_ns;
        let w = EpollIdle {
            syscall: EpollSyscall::EpollWait,
            epfd: 3,
            count,
            first_ns,
            blocked_ns: u64::from(count) * US,
        };
        self.feed(tid, EventKind::EpollIdle(w));
    }

    /// An SSL call taking `call_ns`; a failing one is followed by its SSL_get_error when
    /// `report` says so.
    pub fn ssl(&mut self, tid: u32, mut c: SslCall, code: Option<SslErrorCode>) {
        c.start_ns = self.now;
        c.duration_ns = self.call_ns;
        self.now += self.call_ns;
        let (ssl, ret) = (c.ssl, c.ret);
        self.feed(tid, EventKind::SslCall(c));
        if ret <= 0 && self.report == ErrorReport::GetError {
            let code = code.unwrap_or(SslErrorCode::Syscall);
            self.now += 200;
            self.feed(
                tid,
                EventKind::SslError(SslError {
                    ssl,
                    ret_arg: ret,
                    code,
                }),
            );
        }
        self.now += US;
    }

    pub fn read(&mut self, tid: u32, ssl: u64, fd: i32, bytes: u64) {
        self.ssl(tid, call(SslOp::Read, ssl, fd, bytes as i64, bytes), None);
    }

    pub fn read_want(&mut self, tid: u32, ssl: u64, fd: i32) {
        self.ssl(
            tid,
            call(SslOp::Read, ssl, fd, -1, 0),
            Some(SslErrorCode::WantRead),
        );
    }

    /// SSL_write of `(buf, len)`.
    pub fn write(
        &mut self,
        tid: u32,
        ssl: u64,
        fd: i32,
        (buf, len): (u64, u64),
        ret: i64,
        code: Option<SslErrorCode>,
    ) {
        let mut c = call(SslOp::Write, ssl, fd, ret, ret.max(0) as u64);
        c.buf = buf;
        c.len = len;
        if code == Some(SslErrorCode::Ssl) {
            // OpenSSL rejects a bad retry before any I/O.
            c.sys_calls = 0;
            c.sys_last = None;
            c.sys_last_ret = None;
        }
        self.ssl(tid, c, code);
    }

    pub fn free(&mut self, tid: u32, ssl: u64) {
        self.feed(tid, EventKind::SslFree { ssl });
    }

    pub fn close(&mut self, tid: u32, fd: i32) {
        self.feed(tid, EventKind::Close { fd, ret: 0 });
    }

    pub fn cpu(&mut self, tid: u32, cpu_ns: u64) {
        self.feed(tid, EventKind::ThreadCpu { cpu_ns });
    }

    /// Runs `f` every `period_ns` for `duration_ns` of trace time.
    pub fn every(&mut self, period_ns: u64, duration_ns: u64, mut f: impl FnMut(&mut Self)) {
        let end = self.now + duration_ns;
        while self.now < end {
            let t = self.now;
            f(self);
            self.now = self.now.max(t + period_ns);
        }
    }

    /// One wasted wake-up: fd reported ready for EPOLLOUT (armed with EPOLLIN), SSL_read
    /// answers WANT_READ.
    pub fn spin_once(&mut self, tid: u32, ssl: u64, fd: i32) {
        self.wait(
            tid,
            Some(-1),
            2 * US,
            vec![ready(fd, EPOLLOUT, EPOLLIN | EPOLLOUT)],
        );
        self.read_want(tid, ssl, fd);
    }

    /// One healthy wake-up: data ready, read until WANT_READ.
    pub fn drain_once(&mut self, tid: u32, ssl: u64, fd: i32, blocked_ns: u64) {
        self.wait(tid, Some(-1), blocked_ns, vec![ready(fd, EPOLLIN, EPOLLIN)]);
        self.read(tid, ssl, fd, 512);
        self.read_want(tid, ssl, fd);
    }

    /// A handshake call (`SSL_do_handshake`) answering `ret`, with `key_ops` key operations;
    /// a failing one reports `code` (WANT_READ when None).
    pub fn handshake(
        &mut self,
        tid: u32,
        ssl: u64,
        fd: i32,
        ret: i64,
        key_ops: u32,
        code: Option<SslErrorCode>,
    ) {
        let mut c = call(SslOp::DoHandshake, ssl, fd, ret, 0);
        c.buf = 0;
        c.len = 0;
        c.key_ops = key_ops;
        let code = if ret == 1 {
            None
        } else {
            Some(code.unwrap_or(SslErrorCode::WantRead))
        };
        self.ssl(tid, c, code);
    }

    /// A server handshake: ClientHello read and signed (WANT_READ), then completed with no
    /// key operation if `full`; or completed in one call with none if resumed.
    pub fn server_handshake(&mut self, tid: u32, ssl: u64, fd: i32, full: bool) {
        self.handshake(tid, ssl, fd, -1, u32::from(full), None);
        self.handshake(tid, ssl, fd, 1, 0, None);
    }

    /// SSL_read of `bytes` (WANT_READ when 0) with `key_ops` key operations inside.
    pub fn read_ops(&mut self, tid: u32, ssl: u64, fd: i32, bytes: u64, key_ops: u32) {
        let ret = if bytes > 0 { bytes as i64 } else { -1 };
        let mut c = call(SslOp::Read, ssl, fd, ret, bytes);
        c.key_ops = key_ops;
        let code = (bytes == 0).then_some(SslErrorCode::WantRead);
        self.ssl(tid, c, code);
    }

    pub fn listen_overflows(&mut self, total: u64) {
        self.feed(TID, EventKind::ListenOverflows { total });
    }

    /// The changes of `kind` of type `change`, with the time they came.
    pub fn changes_of(&self, change: Change, kind: FindingKind) -> Vec<(u64, &Finding)> {
        self.changes
            .iter()
            .filter(|(_, c)| c.change == change && c.finding.kind == kind)
            .map(|(t, c)| (*t, &c.finding))
            .collect()
    }

    pub fn opened(&self, kind: FindingKind) -> Vec<&Finding> {
        self.changes_of(Change::Opened, kind)
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    /// Panics, showing every change, unless there were none.
    pub fn assert_quiet(&self) {
        let lines: Vec<String> = self
            .changes
            .iter()
            .map(|(t, c)| format!("{:?} at +{} ms: {}", c.change, (t - T0) / MS, c.finding))
            .collect();
        assert!(
            lines.is_empty(),
            "expected no finding, got:\n{}",
            lines.join("\n")
        );
        assert!(self.engine.findings().is_empty());
    }
}
