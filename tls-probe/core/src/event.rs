//! Decoded events: the typed form of what the probes saw.
//!
//! These are domain types. The decoder (`decode.rs`) builds them from wire records; the fd
//! tracker (`track.rs`) fills in the fds that need state to know; the engine, the NDJSON
//! sink and the replay path all consume them. They serialize as the `data` of an
//! `{"type":"event"}` NDJSON line and deserialize back for `tls-probe report`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The ready entries of one wait: up to 4 inline (most waits return a handful), more on the
/// heap.
pub type ReadyList = smallvec::SmallVec<[ReadyFd; 4]>;

/// An `SSL_ERROR_*` code, named as users read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum SslErrorCode {
    None,
    Ssl,
    WantRead,
    WantWrite,
    WantX509Lookup,
    Syscall,
    ZeroReturn,
    WantConnect,
    WantAccept,
    WantAsync,
    WantAsyncJob,
    WantClientHelloCb,
    WantRetryVerify,
    /// A code this build does not know; the raw value is kept.
    #[serde(untagged)]
    Other(i32),
}

impl SslErrorCode {
    pub fn from_raw(code: i32) -> Self {
        match code {
            0 => Self::None,
            1 => Self::Ssl,
            2 => Self::WantRead,
            3 => Self::WantWrite,
            4 => Self::WantX509Lookup,
            5 => Self::Syscall,
            6 => Self::ZeroReturn,
            7 => Self::WantConnect,
            8 => Self::WantAccept,
            9 => Self::WantAsync,
            10 => Self::WantAsyncJob,
            11 => Self::WantClientHelloCb,
            12 => Self::WantRetryVerify,
            other => Self::Other(other),
        }
    }

    /// True for the codes that mean "call again later": no progress, no failure.
    pub fn is_want(self) -> bool {
        matches!(
            self,
            Self::WantRead
                | Self::WantWrite
                | Self::WantX509Lookup
                | Self::WantConnect
                | Self::WantAccept
                | Self::WantAsync
                | Self::WantAsyncJob
                | Self::WantClientHelloCb
                | Self::WantRetryVerify
        )
    }

    pub fn name(self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::String(s)) => s,
            _ => format!("{self:?}"),
        }
    }
}

/// Which libssl function a call event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub enum SslOp {
    #[serde(rename = "SSL_read")]
    Read,
    #[serde(rename = "SSL_read_ex")]
    ReadEx,
    #[serde(rename = "SSL_write")]
    Write,
    #[serde(rename = "SSL_write_ex")]
    WriteEx,
    #[serde(rename = "SSL_do_handshake")]
    DoHandshake,
    #[serde(rename = "SSL_accept")]
    Accept,
    #[serde(rename = "SSL_connect")]
    Connect,
    #[serde(rename = "SSL_peek")]
    Peek,
    #[serde(rename = "SSL_peek_ex")]
    PeekEx,
    /// OpenSSL's handshake state machine, probed where the program exports it (node, whose
    /// handshakes run inside SSL_read): one record per step the application's call ran.
    #[serde(rename = "ossl_statem_accept")]
    StatemAccept,
    #[serde(rename = "ossl_statem_connect")]
    StatemConnect,
}

impl SslOp {
    pub const ALL: [SslOp; 11] = [
        Self::Read,
        Self::ReadEx,
        Self::Write,
        Self::WriteEx,
        Self::DoHandshake,
        Self::Accept,
        Self::Connect,
        Self::Peek,
        Self::PeekEx,
        Self::StatemAccept,
        Self::StatemConnect,
    ];

    /// The symbol name, verbatim.
    pub fn symbol(self) -> &'static str {
        tls_probe_common::SSL_OPS[self as usize]
    }

    pub fn is_read(self) -> bool {
        matches!(self, Self::Read | Self::ReadEx | Self::Peek | Self::PeekEx)
    }

    pub fn is_write(self) -> bool {
        matches!(self, Self::Write | Self::WriteEx)
    }

    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            Self::DoHandshake
                | Self::Accept
                | Self::Connect
                | Self::StatemAccept
                | Self::StatemConnect
        )
    }

    /// True for the `_ex` variants, which return 1/0 and report bytes through a pointer.
    pub fn is_ex(self) -> bool {
        matches!(self, Self::ReadEx | Self::WriteEx | Self::PeekEx)
    }
}

/// Which epoll wait syscall returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpollSyscall {
    EpollWait,
    EpollPwait,
    EpollPwait2,
}

impl EpollSyscall {
    pub fn name(self) -> &'static str {
        match self {
            Self::EpollWait => "epoll_wait",
            Self::EpollPwait => "epoll_pwait",
            Self::EpollPwait2 => "epoll_pwait2",
        }
    }
}

/// The last socket syscall made inside an SSL call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SysKind {
    Read,
    Write,
}

/// The return of an SSL I/O or handshake call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SslCall {
    pub op: SslOp,
    /// The SSL* as a number.
    pub ssl: u64,
    /// Caller's buffer pointer (0 for handshakes). A pointer value, never the bytes.
    pub buf: u64,
    pub len: u64,
    pub ret: i64,
    pub bytes: u64,
    pub start_ns: u64,
    pub duration_ns: u64,
    /// The socket fd: seen inside the call, or remembered for this SSL*. None when unknown
    /// (e.g. memory BIOs).
    pub fd: Option<i32>,
    /// True when `fd` was seen in a syscall inside this very call.
    pub fd_seen: bool,
    pub sys_calls: u32,
    pub sys_last: Option<SysKind>,
    /// The last socket syscall's return (e.g. -11 for EAGAIN); None without a syscall.
    pub sys_last_ret: Option<i64>,
    /// libcrypto private-key/signature operations inside the call (sign, verify, decrypt).
    /// A handshake that makes any is a full handshake; a resumed one makes none. 0 when the
    /// libcrypto probes are not attached.
    #[serde(default)]
    pub key_ops: u32,
}

impl SslCall {
    /// True when the call moved application bytes or completed a handshake.
    pub fn made_progress(&self) -> bool {
        if self.op.is_handshake() {
            self.ret == 1
        } else {
            self.bytes > 0
        }
    }
}

/// The return of `SSL_get_error(ssl, ret)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SslError {
    pub ssl: u64,
    pub ret_arg: i64,
    pub code: SslErrorCode,
}

/// One ready entry of an epoll wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyFd {
    /// The EPOLL* bits reported ready.
    pub events: u32,
    /// The user's `epoll_event.data` as registered.
    pub data: u64,
    /// The fd that `data` was registered for, when known from `epoll_ctl` or fdinfo.
    pub fd: Option<i32>,
    /// The interest mask registered for that fd, when known.
    pub interest: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollWait {
    pub syscall: EpollSyscall,
    pub epfd: i32,
    pub maxevents: i32,
    /// None means block forever.
    pub timeout_ns: Option<i64>,
    pub start_ns: u64,
    pub duration_ns: u64,
    /// The ready count, or -errno.
    pub ret: i64,
    /// Up to `MAX_READY` ready entries as the user received them; a few inline, so that a
    /// wait costs no allocation on the decode -> engine path.
    pub ready: ReadyList,
}

/// Immediate empty waits (timeout 0, nothing ready) of one thread, aggregated in the
/// kernel. Each stands for `count` wake-ups with no ready fd and no progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollIdle {
    pub syscall: EpollSyscall,
    pub epfd: i32,
    pub count: u32,
    /// Start of the first wait aggregated; the event's `ts_ns` is the last one's return.
    pub first_ns: u64,
    /// Time spent inside the waits, summed.
    pub blocked_ns: u64,
}

/// Non-empty epoll waits of one thread aggregated in the kernel while the process's
/// per-call probes are off (`--mode light`, or `auto` between escalations): a run of waits
/// that returned at once, ended by one that blocked (included). Nothing says what the
/// loop did after each, so they count as wake-ups whose progress is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollBusy {
    pub syscall: EpollSyscall,
    pub epfd: i32,
    /// Waits aggregated.
    pub count: u32,
    /// Of them, waits that returned at once (zero timeout, or blocked under 50 µs).
    pub quick: u32,
    /// Quick waits with one or two ready entries whose first was the same (data and events)
    /// as that of the 64 such waits before it: a loop woken again and again for the same fd.
    pub repeats: u32,
    pub zero_timeout: u32,
    /// Ready entries (the waits' returns), summed.
    pub ready_total: u32,
    /// Start of the first wait aggregated; the event's `ts_ns` is the last one's return.
    pub first_ns: u64,
    /// Time spent inside the waits, summed.
    pub blocked_ns: u64,
    /// The last wait's first ready entry.
    pub last_ready: ReadyFd,
}

/// Where an epoll registration came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CtlOp {
    Add,
    Mod,
    Del,
    /// Read from `/proc/PID/fdinfo/EPFD` at attach time, for registrations made before.
    Fdinfo,
    Other(i32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollCtl {
    pub op: CtlOp,
    pub epfd: i32,
    pub fd: i32,
    pub events: u32,
    pub data: u64,
    pub ret: i64,
}

/// Which end of a connection the traced process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerSide {
    /// The process accepted it (`accept`, `accept4`): the peer is a client.
    Accepted,
    /// The process opened it (`connect`): the peer is a server.
    Connected,
}

/// A cleartext ServerHello seen at the record layer inside a handshake call: what it
/// negotiated. Only header fields: the random and the session id never leave the kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    pub ssl: u64,
    pub fd: Option<i32>,
    /// `supported_versions` when present, else `legacy_version`: 0x0304 is TLS 1.3.
    pub version: u16,
    /// The IANA cipher suite id.
    pub cipher: u16,
    /// A `pre_shared_key` extension: a resumed TLS 1.3 handshake.
    pub psk: bool,
    /// A HelloRetryRequest, not the final ServerHello.
    pub hello_retry: bool,
    /// The process wrote it (the server side); false: it read it (the client side).
    pub sent: bool,
}

/// Two threads of a process with a socket read or write in flight on one fd at the same
/// moment, seen by the socket I/O tracepoints while its per-call probes were off: thread
/// `tid` (the event's) entered its syscall at the event's `ts_ns` while thread `tid_a`'s,
/// entered at `a_since_ns`, had not returned. Receives that peek or read the error queue
/// are not counted: only syscalls that move TLS records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockOverlap {
    pub fd: i32,
    pub tid_a: u32,
    pub a_since_ns: u64,
    pub sys_a: SysKind,
    pub sys_b: SysKind,
    /// The SSL* of the handshake call each thread was inside, if it was in one.
    pub ssl_a: Option<u64>,
    pub ssl_b: Option<u64>,
    /// The content type (20 change_cipher_spec, 21 alert, 22 handshake, 23
    /// application_data, 24 heartbeat) of the TLS record that a write's buffer starts with,
    /// read from the record header; None for a read, or a buffer that starts with none.
    pub record_a: Option<u8>,
    pub record_b: Option<u8>,
    /// Overlaps on the fd the kernel left out since the previous one (one record per fd
    /// every 10 ms at most).
    pub suppressed: u32,
}

/// How an SSL* over memory BIOs was tied to its socket (see [`EventKind::SslFd`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BioVia {
    /// The thread's socket read just before the call fed its read BIO.
    Read,
    /// The thread's socket write just after the call sent its write BIO's output.
    Write,
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    SslCall(SslCall),
    SslError(SslError),
    SslFree {
        ssl: u64,
    },
    EpollWait(EpollWait),
    EpollIdle(EpollIdle),
    EpollCtl(EpollCtl),
    Close {
        fd: i32,
        ret: i64,
    },
    /// A connection's peer, learned once when it was made: `accept`/`accept4` returned `fd`,
    /// or `connect` on `fd` succeeded or started. `addr` is "1.2.3.4:5678" or "[::1]:5678"
    /// (an IPv4-mapped IPv6 address is written as IPv4).
    Peer {
        fd: i32,
        addr: String,
        side: PeerSide,
    },
    /// A sample of a thread's CPU time (utime+stime), read by the agent from
    /// `/proc/PID/task/TID/stat` about once a second. Not a probe: `probe` is "procfs".
    ThreadCpu {
        cpu_ns: u64,
    },
    /// The kernel's `TcpExtListenOverflows` counter (host-wide, from `/proc/net/netstat`),
    /// read by the agent about once a second: SYNs dropped because an accept queue was full.
    /// Not a probe: `probe` is "procfs".
    ListenOverflows {
        total: u64,
    },
    /// The ServerHello of a handshake, read from the `write` (server) or `read` (client)
    /// made inside the handshake call.
    ServerHello(ServerHello),
    /// A thread of the process exited (`sched:sched_process_exit`). `cleared` per-thread
    /// kernel entries it left behind (non-zero when it died inside a probed call) were
    /// deleted; `group_dead` when it was the last thread: the process exited.
    TaskExit {
        cleared: u32,
        group_dead: bool,
    },
    EpollBusy(EpollBusy),
    /// OpenSSL raised an error (`ERR_set_error`, or `ERR_put_error` in 1.1) on this
    /// thread: `lib` and `reason` are OpenSSL's codes (lib 20 is libssl; reason 127 there is
    /// SSL_R_BAD_WRITE_RETRY, 207 SSL_R_PROTOCOL_IS_SHUTDOWN). `reason_name` names the
    /// reasons tls-probe knows.
    LibError {
        lib: i32,
        reason: i32,
        reason_name: Option<String>,
        /// The SSL* of the probed SSL call the thread was inside (a handshake call, or an
        /// I/O call while the per-call probes are on), with that call and the fd it did I/O
        /// on so far. None when the thread was inside no probed call.
        #[serde(default)]
        ssl: Option<u64>,
        #[serde(default)]
        op: Option<SslOp>,
        #[serde(default)]
        fd: Option<i32>,
    },
    /// An OpenSSL async job paused on this thread (`ASYNC_pause_job`): the SSL call running
    /// it answers SSL_ERROR_WANT_ASYNC. `ssl` is the SSL* of the probed call the thread is
    /// inside (a handshake call, or an I/O call while the per-call probes are on).
    AsyncPause {
        ssl: Option<u64>,
    },
    /// Two threads with a read or write in flight on one fd at once.
    SockOverlap(SockOverlap),
    /// An SSL* whose calls make no socket syscall (memory BIOs: Python's asyncio, node)
    /// tied to its socket: the thread's socket `read` (`via` read) just before the call `op`,
    /// or its `write` just after it (`via` write), moved a TLS record of `record_type` (22
    /// handshake, 23 application data) of `sys_bytes` bytes. Sent when the tie is new or
    /// changes; the calls of `ssl` then carry `fd`.
    /// `SSL_set_fd(ssl, fd)`: the application gave the SSL* its socket.
    SslSetFd {
        ssl: u64,
        fd: i32,
    },
    SslFd {
        ssl: u64,
        fd: i32,
        via: BioVia,
        op: SslOp,
        record_type: u8,
        sys_bytes: i64,
    },
}

/// One decoded event, with who and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// CLOCK_MONOTONIC nanoseconds when the probe fired (the return, for calls).
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// The symbol or syscall verbatim: "SSL_read_ex", "SSL_get_error", "epoll_wait", ...
    /// Borrowed from a static name when decoded (no allocation per event); owned when read
    /// back from an export.
    pub probe: Cow<'static, str>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn probe_name(kind: &EventKind) -> &'static str {
        match kind {
            EventKind::SslCall(c) => c.op.symbol(),
            EventKind::SslError(_) => "SSL_get_error",
            EventKind::SslFree { .. } => "SSL_free",
            EventKind::EpollWait(w) => w.syscall.name(),
            EventKind::EpollIdle(w) => w.syscall.name(),
            EventKind::EpollCtl(c) => match c.op {
                CtlOp::Fdinfo => "fdinfo",
                _ => "epoll_ctl",
            },
            EventKind::Close { .. } => "close",
            // `accept` is told from `accept4` by the decoder, which sets the probe itself.
            EventKind::Peer { side, .. } => match side {
                PeerSide::Accepted => "accept4",
                PeerSide::Connected => "connect",
            },
            EventKind::ThreadCpu { .. } | EventKind::ListenOverflows { .. } => "procfs",
            EventKind::ServerHello(h) => {
                if h.sent {
                    "write"
                } else {
                    "read"
                }
            }
            EventKind::TaskExit { .. } => "sched_process_exit",
            EventKind::EpollBusy(w) => w.syscall.name(),
            EventKind::LibError { .. } => "ERR_set_error",
            EventKind::AsyncPause { .. } => "ASYNC_pause_job",
            EventKind::SockOverlap(_) => "socket_overlap",
            EventKind::SslSetFd { .. } => "SSL_set_fd",
            EventKind::SslFd { via, .. } => match via {
                BioVia::Read => "read",
                BioVia::Write => "write",
            },
        }
    }

    pub fn new(ts_ns: u64, pid: u32, tid: u32, kind: EventKind) -> Self {
        Self {
            ts_ns,
            pid,
            tid,
            probe: Cow::Borrowed(Self::probe_name(&kind)),
            kind,
        }
    }
}

/// The registers and top of the user stack at a probed SSL call (or an OpenSSL error), as
/// the kernel copied them for a finding's call site. Not an [`Event`]: the agent unwinds it
/// at once (`crate::callsite`) and drops the bytes; it never reaches a sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawStack {
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The SSL* of the call, when known.
    pub ssl: Option<u64>,
    /// The call the stack was taken at; None when taken at an error outside a probed call.
    pub op: Option<SslOp>,
    /// Taken at an OpenSSL error (its stack is inside libcrypto), not at a call's entry.
    pub at_error: bool,
    /// Inside a probed call: (where its return address is, what it was). The call's return
    /// probe has replaced it on the stack with the uprobe trampoline's address.
    pub ret: Option<(u64, u64)>,
    /// The stack from `sp` up.
    pub stack: Vec<u8>,
}
