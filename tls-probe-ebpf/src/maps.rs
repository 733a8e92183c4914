//! Every map the programs use, with the reason for its size.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tls_probe_common::{StackArm, counter};

use crate::state::{
    BioAwait, BioRead, BusyWaits, FdUse, GetErrorArgs, IdleWaits, Inflight, SockIn, SslKey,
    SyscallArgs,
};

/// All events to userspace. 8 MiB holds ~80k SSL call records or ~14k full epoll records:
/// about 0.1 s of the worst scenario rate (a spin loop at ~500k wake-ups/s) if the reader
/// stalls. A reserve failure is counted in `COUNTERS[LOST_RINGBUF]`, never silent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// tgid -> flags (`target_flag`). Userspace fills it; every program filters on it first.
/// 4096 traced processes is far more than anyone attaches to.
#[map]
pub static TARGETS: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// tid -> the SSL call the thread is inside. One entry per thread at most.
#[map]
pub static INFLIGHT: HashMap<u32, Inflight> = HashMap::with_max_entries(16384, 0);

/// tid -> arguments of the epoll, accept or connect syscall the thread is inside (a thread
/// is in one syscall at a time).
#[map]
pub static SYSCALL_ARGS: HashMap<u32, SyscallArgs> = HashMap::with_max_entries(16384, 0);

/// tid -> the immediate empty waits not yet flushed (see `EpollIdleEvent`).
#[map]
pub static IDLE_WAITS: HashMap<u32, IdleWaits> = HashMap::with_max_entries(16384, 0);

/// tid -> arguments of the SSL_get_error call the thread is inside.
#[map]
pub static GETERR_ARGS: HashMap<u32, GetErrorArgs> = HashMap::with_max_entries(16384, 0);

/// Counters that userspace sums over CPUs (see `tls_probe_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// tid -> the quick non-empty waits not yet flushed (see `EpollBusyEvent`), kept between
/// flushes for the previous wait's first ready entry. LRU: threads that exited age out.
#[map]
pub static BUSY_WAITS: LruHashMap<u32, BusyWaits> = LruHashMap::with_max_entries(16384, 0);

/// (tgid << 32 | fd) -> the thread that last entered a read/write syscall on it, while the
/// process's per-call uprobes are off. LRU: one entry per fd in use, old fds age out.
#[map]
pub static FD_USE: LruHashMap<u64, FdUse> = LruHashMap::with_max_entries(65536, 0);

/// tgid -> read/write syscalls that entered on an fd another thread of the process had
/// entered one on within `SHARED_FD_NS`: the cheap trigger for concurrent SSL use.
/// Userspace reads it; 4096 as `TARGETS`.
#[map]
pub static SHARED_FD: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// tid -> the socket syscall the thread is inside, between the enter and exit tracepoints
/// (a thread is in one syscall at a time). 16384 as `INFLIGHT`; a full map only means an
/// overlap is not seen.
#[map]
pub static SOCK_IN: HashMap<u32, SockIn> = HashMap::with_max_entries(16384, 0);

/// Index 0: the generation of the socket I/O tracepoints' links, written by userspace
/// once every enter and exit program is attached, and set to 0 before they are detached.
/// A syscall entered under another generation (or 0) may have an exit that was never seen:
/// it is not taken as in flight.
#[map]
pub static SOCKIO_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// tid -> the thread's last socket read outside an SSL call whose bytes are a TLS record
/// (see `crate::bio`). One per thread; LRU so threads that exited age out.
#[map]
pub static BIO_READ: LruHashMap<u32, BioRead> = LruHashMap::with_max_entries(16384, 0);

/// tid -> the last probed SSL call that made no socket syscall, until the thread's next
/// socket write (see `crate::bio`). One per thread; LRU as `BIO_READ`.
#[map]
pub static BIO_AWAIT: LruHashMap<u32, BioAwait> = LruHashMap::with_max_entries(16384, 0);

/// tid -> 1 when the thread had work since its last epoll wait: that wait reported fds
/// ready, or since then a socket read returned bytes, a socket write was made outside any
/// SSL call, or a probed SSL call made progress. An empty zero-timeout wait after that is
/// the loop's turn (asyncio polls so whenever it has callbacks ready), not a busy poll.
/// LRU as `BIO_READ`.
#[map]
pub static LOOP_WORK: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);

/// (tgid, SSL*) -> the socket fd last tied to it over memory BIOs: a tie is reported once,
/// and again only when it changes. One per live memory-BIO connection; 65536 as `FD_USE`.
/// Deleted on SSL_free.
#[map]
pub static SSL_FD: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(65536, 0);

/// tid -> the stacks the agent wants of the thread (`crate::stack`): written by the agent
/// when a finding wants its call site, deleted when it has them or the finding closes. A
/// few findings are open at a time; 1024 threads is plenty, and a full map only means a
/// finding shows no call site.
#[map]
pub static STACK_ARM: HashMap<u32, StackArm> = HashMap::with_max_entries(1024, 0);

/// tid -> stacks taken at OpenSSL errors (`crate::stack::at_error`), capped per thread. LRU
/// as `BIO_READ`: threads that exited age out.
#[map]
pub static STACK_ERR: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);
