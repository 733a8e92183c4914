//! Per-thread scratch state kept between a probe's entry and its return.

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    pub ssl: u64,
    pub buf: u64,
    pub len: u64,
    /// `size_t *readbytes` / `*written` of the `_ex` calls, 0 otherwise.
    pub out_ptr: u64,
    pub start_ns: u64,
    pub sys_last_ret: i64,
    pub op: u32,
    /// Calls nested inside this one on the same thread (SSL_accept -> SSL_do_handshake).
    pub depth: u32,
    pub fd: i32,
    pub sys_calls: u32,
    pub sys_last_kind: u32,
    /// libcrypto key operations seen inside the call.
    pub key_ops: u32,
    /// The buffer of the `read` the thread is inside, for the ServerHello (sockio.rs).
    pub rd_buf: u64,
    /// ServerHello parsing: 0 nothing yet, `HELLO_BODY_NEXT` a handshake record header was
    /// read alone (its body comes in the next read), `HELLO_DONE` the hello was sent.
    pub hello: u32,
    /// The record length from that header.
    pub hello_len: u32,
    /// 1 when the probes sit on the callee of the function in `op` (placement.rs in the
    /// agent): the return converts the callee's result to the function's.
    pub callee: u32,
    /// 1 when OpenSSL's handshake state machine ran inside the call (node's SSL_read).
    pub statem: u32,
    /// Where the call's return address was on the stack at its entry, and its value: the
    /// return probe replaces it with the uprobe trampoline's address, so a stack taken
    /// inside the call (at an OpenSSL error) needs it to unwind past the call (stack.rs).
    pub ret_slot: u64,
    pub ret_addr: u64,
}

pub const HELLO_BODY_NEXT: u32 = 1;
pub const HELLO_DONE: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct SyscallArgs {
    pub start_ns: u64,
    pub args: [u64; 4],
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct GetErrorArgs {
    pub ssl: u64,
    pub ret: i64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct IdleWaits {
    pub first_ns: u64,
    pub blocked_ns: u64,
    pub count: u32,
    pub epfd: i32,
    pub syscall: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BusyWaits {
    pub first_ns: u64,
    pub blocked_ns: u64,
    /// The previous wait's first ready entry, kept across flushes.
    pub prev_data: u64,
    pub count: u32,
    pub quick: u32,
    pub repeats: u32,
    pub ready: u32,
    pub prev_events: u32,
    pub zero_timeout: u32,
    /// Quick waits in a row with the same first ready entry, kept across flushes.
    pub streak: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct FdUse {
    pub ts_ns: u64,
    pub tid: u32,
    /// The thread with the latest socket syscall in flight on the fd (0: none), as long as
    /// its `SOCK_IN` entry says the same; with when it entered, its `sys` kind, its buffer
    /// (plain forms) and the SSL* of the handshake call it is inside (or 0).
    pub busy_tid: u32,
    pub busy_since: u64,
    pub busy_buf: u64,
    pub busy_ssl: u64,
    pub busy_kind: u32,
    /// `SOCKIO_GEN` when it entered.
    pub busy_gen: u32,
    /// The last `SockOverlapEvent` sent for the fd, and the overlaps left out since.
    pub reported_ns: u64,
    pub suppressed: u32,
    pub _pad: u32,
}

/// A thread's socket syscall in flight (outside a probed I/O call), from its enter to its
/// exit tracepoint.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockIn {
    /// The `FD_USE` key: tgid << 32 | fd.
    pub key: u64,
    pub since: u64,
}

/// A socket read made outside any SSL call, kept until the thread's next probed SSL call
/// (memory BIOs: its bytes go into that call's read BIO). `ts_ns` 0: the read has not
/// returned yet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BioRead {
    pub buf: u64,
    pub ts_ns: u64,
    pub ret: i64,
    pub fd: i32,
    pub record_type: u32,
    /// A ServerHello the read carried (the client side), walked at the read's exit while
    /// the buffer is fresh: `hello_flags` has `BIO_HELLO_SEEN` then.
    pub hello_flags: u32,
    pub hello_version: u16,
    pub hello_cipher: u16,
}

/// In `BioRead::hello_flags`: a ServerHello was read (beside the `hello_flag` bits).
pub const BIO_HELLO_SEEN: u32 = 1 << 31;

/// A probed SSL call that made no socket syscall, waiting for the thread's next socket
/// write to carry its output.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BioAwait {
    pub ssl: u64,
    pub ts_ns: u64,
    /// Application bytes the call wrote.
    pub bytes: u64,
    pub op: u32,
    /// 1: a handshake call, or one the state machine ran inside.
    pub handshake: u32,
}

/// (tgid, SSL*): the key of the SSL* -> fd ties learned over memory BIOs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    pub ssl: u64,
    pub tgid: u32,
    pub _pad: u32,
}
