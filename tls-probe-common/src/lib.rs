//! The wire ABI between the eBPF programs and the userspace agent.
//!
//! Every record the kernel writes to the ring buffer starts with an [`EventHeader`], whose
//! `kind` says which of the structs below follows. Only fixed-width integers and byte
//! arrays are used, padding is explicit, and each size is asserted at compile time so the
//! two sides cannot drift apart. The userspace decoder reads these bytes with length checks
//! and `read_unaligned`; nothing here is a domain type.
#![no_std]

/// Bumped whenever a struct below changes layout. The eBPF object carries it (symbol
/// `TLS_PROBE_WIRE_VERSION`) and the agent refuses an object built against another.
pub const WIRE_VERSION: u32 = 2;

// The programs read x86_64 user-space layouts: the packed 12-byte `struct epoll_event`, the
// `epoll_wait` syscall (arm64 has only `epoll_pwait`), x86_64 `pt_regs` for uprobe
// arguments, and the agent decodes x86-64 instructions to place its probes. Another target
// architecture would build and then misread every wait: refuse it here instead.
#[cfg(all(feature = "user", not(target_arch = "x86_64")))]
compile_error!(
    "tls-probe supports x86_64 only: its probes read x86_64 layouts (packed epoll_event, pt_regs, the epoll_wait syscall)"
);

/// Which record follows the header: the header's `kind` field. Each record struct names its
/// kind through [`WireRecord`], so the eBPF side writes and the decoder reads a struct and
/// its kind together; the numbers never appear apart from this enum.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    SslCall = 1,
    SslError = 2,
    SslFree = 3,
    EpollWait = 4,
    EpollCtl = 5,
    Close = 6,
    EpollIdle = 7,
    Peer = 8,
    ServerHello = 9,
    EpollBusy = 10,
    LibError = 11,
    SslFd = 12,
    SslSetFd = 13,
    TaskExit = 14,
    AsyncPause = 15,
    SockOverlap = 20,
    UserStack = 21,
}

impl Kind {
    /// Every kind, in number order.
    pub const ALL: [Kind; 17] = [
        Kind::SslCall,
        Kind::SslError,
        Kind::SslFree,
        Kind::EpollWait,
        Kind::EpollCtl,
        Kind::Close,
        Kind::EpollIdle,
        Kind::Peer,
        Kind::ServerHello,
        Kind::EpollBusy,
        Kind::LibError,
        Kind::SslFd,
        Kind::SslSetFd,
        Kind::TaskExit,
        Kind::AsyncPause,
        Kind::SockOverlap,
        Kind::UserStack,
    ];

    pub const fn from_u32(raw: u32) -> Option<Kind> {
        let mut i = 0;
        while i < Self::ALL.len() {
            if Self::ALL[i] as u32 == raw {
                return Some(Self::ALL[i]);
            }
            i += 1;
        }
        None
    }
}

// Each kind has its own ring-buffer loss counter (`counter::LOST_RINGBUF + kind`).
const _: () = {
    let mut i = 0;
    while i < Kind::ALL.len() {
        assert!((Kind::ALL[i] as u32) < counter::LOST_KINDS);
        i += 1;
    }
};

/// A record struct that follows an [`EventHeader`] whose `kind` is [`WireRecord::KIND`].
pub trait WireRecord: Copy {
    const KIND: Kind;
}

macro_rules! wire_records {
    ($($ty:ty => $kind:ident),* $(,)?) => {
        $(impl WireRecord for $ty {
            const KIND: Kind = Kind::$kind;
        })*
    };
}

/// Which syscall a [`PeerEvent`] came from: the side of the connection is in the name.
pub mod peer_sys {
    /// `accept4`: the process accepted the connection.
    pub const ACCEPT4: u32 = 0;
    /// `accept`: the process accepted the connection.
    pub const ACCEPT: u32 = 1;
    /// `connect`: the process opened the connection.
    pub const CONNECT: u32 = 2;
}

/// Address families a [`PeerEvent`] carries (Linux values).
pub mod family {
    pub const INET: u16 = 2;
    pub const INET6: u16 = 10;
}

/// The probed libssl entry points. The value is the index of the symbol in [`SSL_OPS`].
pub mod op {
    pub const SSL_READ: u32 = 0;
    pub const SSL_READ_EX: u32 = 1;
    pub const SSL_WRITE: u32 = 2;
    pub const SSL_WRITE_EX: u32 = 3;
    pub const SSL_DO_HANDSHAKE: u32 = 4;
    pub const SSL_ACCEPT: u32 = 5;
    pub const SSL_CONNECT: u32 = 6;
    pub const SSL_PEEK: u32 = 7;
    pub const SSL_PEEK_EX: u32 = 8;
    /// OpenSSL's handshake state machine (`s->handshake_func`), which SSL_do_handshake and,
    /// while a handshake is not done, SSL_read/SSL_write run. Internal in libssl.so, but
    /// exported by programs that link OpenSSL statically and export its symbols (node): the
    /// one probe that sees node's handshakes, which it drives through SSL_read.
    pub const OSSL_STATEM_ACCEPT: u32 = 9;
    pub const OSSL_STATEM_CONNECT: u32 = 10;
    pub const COUNT: u32 = 11;

    /// Whether `op` is a handshake call (no application bytes).
    #[inline(always)]
    pub fn is_handshake(op: u32) -> bool {
        op == SSL_DO_HANDSHAKE
            || op == SSL_ACCEPT
            || op == SSL_CONNECT
            || op == OSSL_STATEM_ACCEPT
            || op == OSSL_STATEM_CONNECT
    }

    /// Whether `op` is the state machine itself, which the application's call runs.
    #[inline(always)]
    pub fn is_statem(op: u32) -> bool {
        op == OSSL_STATEM_ACCEPT || op == OSSL_STATEM_CONNECT
    }
}

/// Symbol names, indexed by the `op` constants.
pub const SSL_OPS: [&str; op::COUNT as usize] = [
    "SSL_read",
    "SSL_read_ex",
    "SSL_write",
    "SSL_write_ex",
    "SSL_do_handshake",
    "SSL_accept",
    "SSL_connect",
    "SSL_peek",
    "SSL_peek_ex",
    "ossl_statem_accept",
    "ossl_statem_connect",
];

/// Attach cookies (`bpf_get_attach_cookie`): which function a uprobe hit is in. Each uprobe
/// program is attached to several functions of one library, in one `uprobe_multi` link
/// (see [`program`]), and dispatches on the cookie. For libssl's I/O and handshake calls the
/// cookie is the [`op`] constant; the others are below.
pub mod cookie {
    /// `SSL_get_error`, in [`program::SSL_HOT_ENTER`]/[`program::SSL_HOT_EXIT`].
    pub const SSL_GET_ERROR: u64 = 0x100;
    /// `SSL_free`, in [`program::SSL_COLD_ENTER`].
    pub const SSL_FREE: u64 = 0x101;
    /// `SSL_set_fd(ssl, fd)`, in [`program::SSL_COLD_ENTER`].
    pub const SSL_SET_FD: u64 = 0x102;
    /// A libcrypto private-key or signature operation, in [`program::CRYPTO_ENTER`].
    pub const KEY_OP: u64 = 0x200;
    /// `ERR_vset_error(lib, reason, ...)` (OpenSSL 3): the reason is argument 1.
    pub const ERR_VSET_ERROR: u64 = 0x201;
    /// `ERR_put_error(lib, func, reason, ...)` (OpenSSL 1.1): the reason is argument 2.
    pub const ERR_PUT_ERROR: u64 = 0x202;
    /// `ASYNC_pause_job()`.
    pub const ASYNC_PAUSE_JOB: u64 = 0x203;

    /// Set on a probe placed on the internal function that up to two per-call functions
    /// (`SSL_read` and `SSL_read_ex`, ...) call with their own arguments: its first
    /// instruction is emulated where theirs is single-stepped (the agent's
    /// `probe::placement`). Bits 0-7 and 8-15: the two [`op`]s ([`NO_OP`] for none); bits
    /// 16-27 and 28-39: the offset in its page of the address each one's call returns to,
    /// which tells at the callee's entry which wrapper called it.
    pub const CALLEE: u64 = 1 << 63;
    pub const NO_OP: u64 = 0xff;

    /// The cookie of a callee site for the calls (op, return address) of its wrappers; at
    /// most two, the rest are ignored.
    pub fn callee(calls: &[(u32, u64)]) -> u64 {
        let mut c = CALLEE | NO_OP | (NO_OP << 8);
        for (i, &(op, ret)) in calls.iter().take(2).enumerate() {
            c &= !(0xff << (8 * i));
            c |= (op as u64 & 0xff) << (8 * i);
            c |= (ret & 0xfff) << (16 + 12 * i);
        }
        c
    }

    /// Which wrapper's op a hit on a callee site with `cookie` is, from the return address
    /// on top of the stack at the callee's entry; None when the callee was called from
    /// anywhere else.
    #[inline(always)]
    pub fn callee_op(cookie: u64, return_address: u64) -> Option<u32> {
        let page = return_address & 0xfff;
        for i in 0..2 {
            let op = (cookie >> (8 * i)) & 0xff;
            if op != NO_OP && (cookie >> (16 + 12 * i)) & 0xfff == page {
                return Some(op as u32);
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::op;

        #[test]
        fn a_callee_cookie_tells_its_wrappers_apart_by_return_address() {
            let c = callee(&[(op::SSL_READ, 0x35453), (op::SSL_READ_EX, 0x354c9)]);
            assert_ne!(c & CALLEE, 0);
            // Any mapping of the library: only the offset in the page counts.
            assert_eq!(callee_op(c, 0x7f12_3456_7453), Some(op::SSL_READ));
            assert_eq!(callee_op(c, 0x7f12_3456_74c9), Some(op::SSL_READ_EX));
            assert_eq!(callee_op(c, 0x7f12_3456_7000), None);
            // One wrapper only (a library without the `_ex` form).
            let one = callee(&[(op::SSL_WRITE, 0x1234)]);
            assert_eq!(callee_op(one, 0x5234), Some(op::SSL_WRITE));
            assert_eq!(callee_op(one, 0x5fff), None);
        }
    }
}

/// The uprobe programs, by name: the eBPF crate defines them, the agent attaches them.
/// Each exists twice in the object: under this name in a `uprobe.multi` section (one link
/// per library for all its functions, unregistered in one batch), and under the name with
/// [`program::SINGLE_SUFFIX`] in a plain `uprobe` section, for kernels without
/// uprobe_multi (before 6.6), attached one perf-event link per function.
pub mod program {
    /// Entry of the per-call libssl functions (SSL_read, SSL_write, their `_ex` and peek
    /// forms, SSL_get_error): attached only while a process is escalated.
    pub const SSL_HOT_ENTER: &str = "ssl_hot_enter";
    /// Their returns.
    pub const SSL_HOT_EXIT: &str = "ssl_hot_exit";
    /// Entry of the once-per-connection libssl functions (the handshake calls, SSL_free):
    /// always on.
    pub const SSL_COLD_ENTER: &str = "ssl_cold_enter";
    /// Returns of the handshake calls.
    pub const SSL_COLD_EXIT: &str = "ssl_cold_exit";
    /// libcrypto: key operations, the error-raising function, ASYNC_pause_job: always on.
    pub const CRYPTO_ENTER: &str = "crypto_enter";
    /// The per-function fallback twin of each program above has this suffix.
    pub const SINGLE_SUFFIX: &str = "_single";
    /// Every uprobe program name above.
    pub const ALL: [&str; 5] = [
        SSL_HOT_ENTER,
        SSL_HOT_EXIT,
        SSL_COLD_ENTER,
        SSL_COLD_EXIT,
        CRYPTO_ENTER,
    ];
}

/// Which epoll syscall an [`EpollWaitEvent`] came from.
pub mod epoll_sys {
    pub const EPOLL_WAIT: u32 = 0;
    pub const EPOLL_PWAIT: u32 = 1;
    pub const EPOLL_PWAIT2: u32 = 2;
}

/// Which socket syscall was the last one made inside an SSL call.
pub mod sys {
    pub const NONE: u32 = 0;
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
}

/// Indexes into the per-CPU counter array `COUNTERS`.
pub mod counter {
    /// A per-thread scratch map was full, so a call could not be tracked.
    pub const LOST_INFLIGHT: u32 = 0;
    /// Uprobe hits, all programs (for the overhead estimate).
    pub const UPROBE_HITS: u32 = 1;
    /// Tracepoint hits that passed the target filter.
    pub const TRACEPOINT_HITS: u32 = 2;
    /// Reads and writes of a target seen by the socket I/O tracepoints (each one an enter
    /// and an exit hit, both also in `TRACEPOINT_HITS`): what the sockio gate weighs.
    pub const SOCKIO_CALLS: u32 = 3;
    /// `LOST_RINGBUF + kind`: a ring-buffer reserve failed for a record of that `kind`,
    /// so the event was lost in the kernel.
    pub const LOST_RINGBUF: u32 = 8;
    /// Record kinds with a lost counter: `kind` values below this.
    pub const LOST_KINDS: u32 = 24;
    pub const COUNT: u32 = LOST_RINGBUF + LOST_KINDS;
}

/// The most ready entries copied out of one `epoll_wait` result.
pub const MAX_READY: usize = 32;

/// Flags in the `TARGETS` map value.
pub mod target_flag {
    /// The process is traced.
    pub const TRACED: u32 = 1;
    /// The per-call uprobes are attached: every non-empty epoll wait is sent on its own
    /// (the SSL calls after it need it). Without it, runs of them are aggregated
    /// ([`EpollBusyEvent`](crate::EpollBusyEvent)) and socket fds shared between threads
    /// are counted (`SHARED_FD`), and socket syscalls of two threads in flight on one fd
    /// at once are reported ([`SockOverlapEvent`](crate::SockOverlapEvent)).
    pub const HOT: u32 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    pub kind: u32,
    /// Thread group id (the user's "pid").
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when the record was made.
    pub ts_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);

/// The return of one SSL_read/SSL_write/handshake call, with what happened inside it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslCallEvent {
    pub hdr: EventHeader,
    pub ssl: u64,
    /// The caller's buffer pointer (read or write); 0 for handshake calls.
    pub buf: u64,
    /// The requested length (`num`).
    pub len: u64,
    /// The function's return value, sign-extended.
    pub ret: i64,
    /// Bytes moved: `ret` when positive for the plain calls, `*readbytes`/`*written` for `_ex`.
    pub bytes: u64,
    pub start_ns: u64,
    pub duration_ns: u64,
    /// Return of the last socket syscall made inside the call (e.g. -11 for EAGAIN).
    pub sys_last_ret: i64,
    /// The socket fd the call used, or -1 when it made no socket syscall.
    pub fd: i32,
    /// One of the `op` constants.
    pub op: u32,
    /// How many socket syscalls the call made.
    pub sys_calls: u32,
    /// One of the `sys` constants: the kind of the last socket syscall.
    pub sys_last_kind: u32,
    /// Private-key or signature operations in libcrypto (EVP_DigestSign, EVP_DigestVerify,
    /// EVP_PKEY_decrypt) made inside the call: a handshake with any is a full handshake.
    pub key_ops: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SslCallEvent>() == 112);

/// The return of `SSL_get_error(ssl, ret)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslErrorEvent {
    pub hdr: EventHeader,
    pub ssl: u64,
    /// The `ret` argument the caller passed.
    pub ret_arg: i64,
    /// The `SSL_ERROR_*` code returned.
    pub code: i32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SslErrorEvent>() == 48);

/// `SSL_free(ssl)` was called: the end of a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslFreeEvent {
    pub hdr: EventHeader,
    pub ssl: u64,
}
const _: () = assert!(core::mem::size_of::<SslFreeEvent>() == 32);

/// `SSL_set_fd(ssl, fd)` was called: the application gave the SSL* its socket (a socket
/// BIO). Once per connection, for the programs that attach sockets this way (nginx,
/// haproxy, curl, Python's `ssl` sockets), so that their connections have an fd from the
/// start without the socket I/O tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslSetFdEvent {
    pub hdr: EventHeader,
    pub ssl: u64,
    pub fd: i32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SslSetFdEvent>() == 40);

/// One entry of the user's `epoll_event` array (which is packed on x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadyEntry {
    pub events: u32,
    pub _pad: u32,
    pub data: u64,
}
const _: () = assert!(core::mem::size_of::<ReadyEntry>() == 16);

/// The return of `epoll_wait`, `epoll_pwait` or `epoll_pwait2`, with room for `N` ready
/// entries. The kernel writes the smallest size class that holds what was ready: `N` is
/// `EPOLL_WAIT_SMALL_ENTRIES` or `MAX_READY` ([`EpollWaitEvent`]). Readers must take the
/// entry count from the record's length as well as from `n_entries`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpollWaitRecord<const N: usize> {
    pub hdr: EventHeader,
    pub start_ns: u64,
    pub duration_ns: u64,
    /// The timeout in nanoseconds; -1 blocks forever.
    pub timeout_ns: i64,
    /// The syscall's return: the ready count, or -errno.
    pub ret: i64,
    pub epfd: i32,
    pub maxevents: i32,
    /// One of the `epoll_sys` constants.
    pub syscall: u32,
    /// How many of `entries` are filled (at most `N`, at most `ret`).
    pub n_entries: u32,
    pub entries: [ReadyEntry; N],
}

impl<const N: usize> Default for EpollWaitRecord<N> {
    fn default() -> Self {
        Self {
            hdr: EventHeader::default(),
            start_ns: 0,
            duration_ns: 0,
            timeout_ns: 0,
            ret: 0,
            epfd: 0,
            maxevents: 0,
            syscall: 0,
            n_entries: 0,
            entries: [ReadyEntry::default(); N],
        }
    }
}

/// The largest size class.
pub type EpollWaitEvent = EpollWaitRecord<MAX_READY>;
const _: () = assert!(core::mem::size_of::<EpollWaitEvent>() == EPOLL_WAIT_HEAD + 16 * MAX_READY);

const _: () =
    assert!(core::mem::size_of::<EpollWaitRecord<EPOLL_WAIT_SMALL_ENTRIES>>() == EPOLL_WAIT_SMALL);

/// Bytes of an [`EpollWaitEvent`] before `entries`.
pub const EPOLL_WAIT_HEAD: usize = 72;
/// Entries in the small size class of an [`EpollWaitEvent`] record.
pub const EPOLL_WAIT_SMALL_ENTRIES: usize = 2;
/// Bytes of a small [`EpollWaitEvent`] record.
pub const EPOLL_WAIT_SMALL: usize = EPOLL_WAIT_HEAD + 16 * EPOLL_WAIT_SMALL_ENTRIES;

/// Immediate empty epoll waits (timeout 0, nothing ready) of one thread, aggregated in the
/// kernel: a busy-polling loop makes millions a second, which no event stream can carry.
/// Flushed before the thread's next non-empty wait, or every `IDLE_FLUSH_COUNT` waits,
/// or when `IDLE_FLUSH_NS` have passed since the first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollIdleEvent {
    pub hdr: EventHeader,
    /// Start of the first wait aggregated.
    pub first_ns: u64,
    /// Time spent inside the waits, summed.
    pub blocked_ns: u64,
    pub count: u32,
    pub epfd: i32,
    /// One of the `epoll_sys` constants (of the last wait).
    pub syscall: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<EpollIdleEvent>() == 56);

pub const IDLE_FLUSH_COUNT: u32 = 4096;
pub const IDLE_FLUSH_NS: u64 = 20_000_000;

/// The return of `epoll_ctl(epfd, op, fd, event)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollCtlEvent {
    pub hdr: EventHeader,
    pub data: u64,
    pub ret: i64,
    pub epfd: i32,
    pub op: i32,
    pub fd: i32,
    pub events: u32,
}
const _: () = assert!(core::mem::size_of::<EpollCtlEvent>() == 56);

/// `close(fd)` in a target.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub hdr: EventHeader,
    pub ret: i64,
    pub fd: i32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CloseEvent>() == 40);

/// The peer of a connection, read once when it is made: `accept`/`accept4` returned a new
/// fd (the address the kernel wrote to the caller's `upeer_sockaddr`), or `connect`
/// succeeded or started (`ret` 0 or -EINPROGRESS; the address the caller passed). Only
/// AF_INET and AF_INET6 are sent; an accept whose caller passed no address buffer (NULL)
/// sends nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerEvent {
    pub hdr: EventHeader,
    /// The connection's fd: the accepted fd, or connect's socket.
    pub fd: i32,
    /// One of the `peer_sys` constants.
    pub syscall: u32,
    /// `family::INET` or `family::INET6`.
    pub family: u16,
    /// The peer's port, host byte order.
    pub port: u16,
    pub _pad: u32,
    /// The address in network byte order: 4 bytes for INET, 16 for INET6, zeros after.
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PeerEvent>() == 56);

/// Bits of [`ServerHelloEvent::flags`].
pub mod hello_flag {
    /// The ServerHello carries a `pre_shared_key` extension (0x0029): TLS 1.3 resumption.
    pub const PSK: u32 = 1;
    /// A HelloRetryRequest (its `key_share` names only a group): a real ServerHello follows.
    pub const HELLO_RETRY: u32 = 2;
    /// The process wrote it (it is the server); otherwise it read it (the client).
    pub const SENT: u32 = 4;
    /// `version` came from a `supported_versions` extension (0x002b), not `legacy_version`.
    pub const SUPPORTED_VERSIONS: u32 = 8;
}

/// The cleartext ServerHello of a handshake, walked in the kernel at the record layer: a
/// `write` inside a handshake call (the server) or a `read` (the client) whose buffer is a
/// handshake record starting with a ServerHello. Only the header fields below leave the
/// kernel; the random and the session id are skipped, never copied.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerHelloEvent {
    pub hdr: EventHeader,
    pub ssl: u64,
    /// The socket the record went through.
    pub fd: i32,
    /// The negotiated version: `supported_versions` when present (TLS 1.3), else
    /// `legacy_version` (e.g. 0x0303 for TLS 1.2).
    pub version: u16,
    /// The IANA cipher suite id, e.g. 0x1301 (TLS_AES_128_GCM_SHA256).
    pub cipher: u16,
    /// `hello_flag` bits.
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ServerHelloEvent>() == 48);
/// A thread of a traced process exited (`sched:sched_process_exit`). `cleared` counts the
/// per-thread kernel entries it left behind (an SSL call, a syscall's arguments, pending
/// idle waits, an SSL_get_error call) that the exit program deleted: non-zero when the
/// thread died inside a probed call. `group_dead` is 1 when it was the process's last
/// thread: the process has exited.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskExitEvent {
    pub hdr: EventHeader,
    pub cleared: u32,
    pub group_dead: u32,
}
const _: () = assert!(core::mem::size_of::<TaskExitEvent>() == 32);
/// Non-empty epoll waits of one thread, aggregated in the kernel while the process's
/// per-call uprobes are off: a run of waits that returned at once (timeout 0, or blocked
/// under `BUSY_QUICK_NS`), ended by a wait that blocked longer (included), by
/// `BUSY_FLUSH_COUNT` waits, or by `BUSY_FLUSH_NS` since the first. A spin loop's waits
/// report the same fd ready again and again, thousands of times in a row: `repeats`
/// counts the waits of such runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EpollBusyEvent {
    pub hdr: EventHeader,
    /// Start of the first wait aggregated.
    pub first_ns: u64,
    /// Time spent inside the waits, summed.
    pub blocked_ns: u64,
    /// `epoll_event.data` of the last wait's first ready entry.
    pub last_data: u64,
    /// Waits aggregated.
    pub count: u32,
    /// Of them, waits that returned at once (zero timeout, or under `BUSY_QUICK_NS`).
    pub quick: u32,
    /// Quick waits with one or two ready entries whose first (data and events) was the same
    /// as that of each of the `BUSY_REPEAT_STREAK` such waits before: a loop woken for one fd
    /// again and again.
    pub repeats: u32,
    /// Ready entries (the waits' returns), summed.
    pub ready: u32,
    /// EPOLL* bits of the last wait's first ready entry.
    pub last_events: u32,
    pub epfd: i32,
    /// One of the `epoll_sys` constants (of the last wait).
    pub syscall: u32,
    /// Waits made with a zero timeout.
    pub zero_timeout: u32,
}
const _: () = assert!(core::mem::size_of::<EpollBusyEvent>() == 80);

pub const BUSY_FLUSH_COUNT: u32 = 4096;
pub const BUSY_FLUSH_NS: u64 = 20_000_000;
/// A wait that blocked less than this returned "at once" (as the engine's
/// `busy_max_blocked_ns`).
pub const BUSY_QUICK_NS: u64 = 50_000;
/// How many quick waits in a row must have reported the same first ready entry before the
/// next one counts as a repeat.
pub const BUSY_REPEAT_STREAK: u32 = 64;

/// OpenSSL raised an error (`ERR_set_error(lib, reason, ...)` in OpenSSL 3,
/// `ERR_put_error(lib, func, reason, ...)` in 1.1): rare in a healthy program, and the
/// reason names what went wrong, e.g. `SSL_R_BAD_WRITE_RETRY` (127) in `ERR_LIB_SSL` (20).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LibErrorEvent {
    pub hdr: EventHeader,
    pub lib: i32,
    pub reason: i32,
    /// The SSL* of the probed SSL call the thread is inside when the error is raised (a
    /// handshake call always is; an I/O call only while the per-call probes are on), or 0.
    pub ssl: u64,
    /// That call's `op`, or [`NO_OP`] when the thread is inside no probed call.
    pub op: u32,
    /// The socket fd that call did I/O on so far, or -1.
    pub fd: i32,
}
const _: () = assert!(core::mem::size_of::<LibErrorEvent>() == 48);

/// `op` of a record made outside any probed SSL call.
pub const NO_OP: u32 = u32::MAX;

/// An OpenSSL async job paused (`ASYNC_pause_job`, libcrypto): in async mode
/// (`SSL_MODE_ASYNC`) the SSL call running the job returns -1 and `SSL_get_error` answers
/// SSL_ERROR_WANT_ASYNC. Fires once per such answer, and never in a program that does not
/// use async mode. `ssl` is the SSL* of the probed SSL call the thread is inside (the
/// handshake calls always are; the I/O calls only while the per-call probes are on), or 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AsyncPauseEvent {
    pub hdr: EventHeader,
    pub ssl: u64,
}
const _: () = assert!(core::mem::size_of::<AsyncPauseEvent>() == 32);

/// How a [`SslFdEvent`] tied an SSL* to a socket over memory BIOs.
pub mod bio_via {
    /// The thread's last socket read outside any SSL call (its bytes a TLS record) was
    /// followed by this SSL call making no socket syscall: the bytes went in through the
    /// read BIO (`BIO_write`), as asyncio and node do.
    pub const READ: u32 = 1;
    /// This SSL call made no socket syscall, and the thread's next socket write (its bytes a
    /// TLS record of the kind the call makes) carried its output out of the write BIO.
    pub const WRITE: u32 = 2;
}

/// An SSL* whose calls make no socket syscall (memory BIOs: asyncio, node) tied to the
/// socket its bytes go through, from the socket syscalls its thread makes just before or
/// just after the call. Sent when the kernel learns a new or changed tie, not per call.
/// Only the 5-byte TLS record header of the syscall's buffer is read, never the payload.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslFdEvent {
    pub hdr: EventHeader,
    pub ssl: u64,
    /// The byte count of the socket syscall (its return for a read, its length for a write).
    pub sys_bytes: i64,
    pub fd: i32,
    /// One of the `bio_via` constants.
    pub via: u32,
    /// The `op` of the SSL call.
    pub op: u32,
    /// The TLS record header's content type (0x16 handshake, 0x17 application data, ...).
    pub record_type: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<SslFdEvent>() == 56);

/// OpenSSL's library and reason codes the agent names.
pub mod ossl {
    pub const ERR_LIB_SSL: i32 = 20;
    pub const SSL_R_BAD_WRITE_RETRY: i32 = 127;
    /// A write on a connection that already sent its close_notify, or failed fatally
    /// (OpenSSL sends an alert then, which shuts the write side too).
    pub const SSL_R_PROTOCOL_IS_SHUTDOWN: i32 = 207;
    /// The peer closed the connection without a close_notify: every server sees it.
    pub const SSL_R_UNEXPECTED_EOF_WHILE_READING: i32 = 294;
}

/// Two threads of a process with a socket syscall in flight on one fd at the same time:
/// thread `hdr.tid` entered a read or write on `fd` (at `hdr.ts_ns`) while thread `tid_a`
/// was between the enter and the exit of one on it (since `a_since_ns`). Seen by the
/// socket I/O tracepoints while the process's per-call uprobes are off; only the syscalls
/// that consume or carry TLS records are counted (not a `MSG_PEEK` or `MSG_ERRQUEUE`
/// receive). At most one record per fd every `SOCK_OVERLAP_GAP_NS`; `suppressed` counts
/// the overlaps on the fd left out since the last one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOverlapEvent {
    pub hdr: EventHeader,
    /// When thread `tid_a` entered its syscall.
    pub a_since_ns: u64,
    /// The SSL* of the probed SSL call (a handshake call) each thread was inside, or 0.
    pub ssl_a: u64,
    pub ssl_b: u64,
    pub fd: i32,
    pub tid_a: u32,
    /// `sys` constants: what each syscall was.
    pub sys_a: u32,
    pub sys_b: u32,
    /// The TLS record content type (20 to 24) that a write's buffer starts with, read from
    /// its 5-byte record header (type, version 3.x, length); 0 when not a write, or when
    /// the buffer does not start with a record header. Header fields only.
    pub rec_a: u32,
    pub rec_b: u32,
    pub suppressed: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SockOverlapEvent>() == 80);

/// At most one [`SockOverlapEvent`] per fd this often.
pub const SOCK_OVERLAP_GAP_NS: u64 = 10_000_000;

/// Bytes of the user stack a [`UserStackEvent`] carries, from the stack pointer up: enough
/// for the frames above an SSL call in the programs tested (a few hundred bytes each).
pub const STACK_BYTES: usize = 8192;

/// The stack is copied in pieces of this size, so that a copy stopped by the end of the
/// stack's mapping keeps what came before it.
pub const STACK_CHUNK: usize = 1024;

/// Why a [`UserStackEvent`] was taken.
pub mod stack_why {
    /// The thread was armed by the agent (`STACK_ARM`): a finding wants its call site.
    pub const ARMED: u32 = 1;
    /// OpenSSL raised an error that names a misused API (a bad write retry, a write after
    /// shutdown): the error's own stack, at most `STACK_ERR_PER_THREAD` per thread.
    pub const ERROR: u32 = 2;
}

/// Value of the `STACK_ARM` map (tid -> this): how many more stacks to take, and not before
/// when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackArm {
    /// Stacks still to take; the entry stays at 0 until the agent deletes it.
    pub budget: u32,
    pub _pad: u32,
    /// The next stack is taken at or after this time (`bpf_ktime_get_ns`).
    pub next_ns: u64,
}
const _: () = assert!(core::mem::size_of::<StackArm>() == 16);

/// Two armed stacks of one thread are at least this far apart: a handful of samples spread
/// over a spin, not eight consecutive calls.
pub const STACK_GAP_NS: u64 = 20_000_000;

/// Stacks taken for OpenSSL errors per thread (see [`stack_why::ERROR`]).
pub const STACK_ERR_PER_THREAD: u32 = 4;

/// The registers and the top of the user stack at the entry of a probed SSL call (or at
/// the OpenSSL error): what the agent unwinds, in memory, into the call site. The stack
/// bytes are whatever the program keeps on its stack; they are used only for unwinding and
/// never written to any output.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserStackEvent {
    pub hdr: EventHeader,
    /// The user registers at the probe: instruction, stack and frame pointer.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The SSL* of the call, or 0.
    pub ssl: u64,
    /// The call's `op`, or [`NO_OP`].
    pub op: u32,
    /// [`stack_why`].
    pub why: u32,
    /// Bytes of `stack` that were copied, from `sp` up.
    pub len: u32,
    pub _pad: u32,
    /// For a stack taken inside a probed call (at an OpenSSL error): where that call's
    /// return address is on the stack, and what it was at the call's entry. Its return
    /// probe has since put the uprobe trampoline's address there. 0, 0 otherwise.
    pub ret_slot: u64,
    pub ret_addr: u64,
    pub stack: [u8; STACK_BYTES],
}
const _: () = assert!(core::mem::size_of::<UserStackEvent>() == 88 + STACK_BYTES);

wire_records! {
    SslCallEvent => SslCall,
    SslErrorEvent => SslError,
    SslFreeEvent => SslFree,
    EpollCtlEvent => EpollCtl,
    CloseEvent => Close,
    EpollIdleEvent => EpollIdle,
    PeerEvent => Peer,
    ServerHelloEvent => ServerHello,
    EpollBusyEvent => EpollBusy,
    LibErrorEvent => LibError,
    SslFdEvent => SslFd,
    SslSetFdEvent => SslSetFd,
    TaskExitEvent => TaskExit,
    AsyncPauseEvent => AsyncPause,
    SockOverlapEvent => SockOverlap,
    UserStackEvent => UserStack,
}

/// Every size class of a wait record is one kind.
impl<const N: usize> WireRecord for EpollWaitRecord<N> {
    const KIND: Kind = Kind::EpollWait;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: the types are repr(C), contain only integers, and have explicit padding.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::StackArm {}
}
