//! The NDJSON export schema as `docs/json-schema.md` documents it, written out again on its
//! own (not the crate's types), so that a field renamed, added or dropped in the code fails
//! here until the document and this mirror follow.
//!
//! Every struct denies unknown fields. [`check_line`] also serializes what it read back and
//! compares it with the line, which catches omitted fields (unknown values must be `null`) and
//! values of the wrong shape.

#![allow(dead_code, reason = "fields exist to be checked, not read")]
#![allow(
    clippy::large_enum_variant,
    reason = "a test reads a few thousand lines, one at a time"
)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

type Ns = u64;

#[derive(Debug, Serialize, Deserialize)]
#[serde(
    tag = "type",
    content = "data",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Record {
    Start(Start),
    Event(Event),
    Finding(FindingChange),
    Snapshot(Snapshot),
    Lost(LostRecord),
    TargetAttach(TargetAttach),
    TargetExit(TargetExit),
    Summary(Summary),
}

impl Record {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::Event(_) => "event",
            Self::Finding(_) => "finding",
            Self::Snapshot(_) => "snapshot",
            Self::Lost(_) => "lost",
            Self::TargetAttach(_) => "target_attach",
            Self::TargetExit(_) => "target_exit",
            Self::Summary(_) => "summary",
        }
    }
}

/// Parses one line against the schema; panics naming the line and what differs.
pub fn check_line(n: usize, line: &str) -> Record {
    let raw: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {n}: {e}"));
    let rec: Record = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("line {n} does not match the schema: {e}\n{line}"));
    let back = serde_json::to_value(&rec).unwrap();
    assert_eq!(
        back, raw,
        "line {n}: a field is missing, or has a value the schema does not allow"
    );
    rec
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    pub schema_version: u32,
    pub tool_version: String,
    pub targets: Vec<Target>,
    pub probe_mode: ProbeMode,
    pub probe_modes: BTreeMap<String, String>,
    pub uprobe_links: UprobeLinks,
    pub missing_tracepoints: Vec<String>,
    pub events: bool,
    pub clock: Clock,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UprobeLinks {
    UprobeMulti,
    PerFunction,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    Full,
    Light,
    Auto,
}

/// What the probes do and cost (snapshot and summary).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeStatus {
    pub mode: ProbeMode,
    pub uprobe_hits_per_sec: f64,
    pub tracepoint_hits_per_sec: f64,
    pub uprobe_hit_cost_ns: f64,
    pub tracepoint_hit_cost_ns: f64,
    pub estimated_cost_ns_per_sec: f64,
    pub estimated_cost_pct: Option<f64>,
    pub processes: Vec<ProcessProbes>,
    pub socket_io: Option<SocketIo>,
    pub closing_links: bool,
    /// `watch` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// `watch`'s host-wide probe cost budget.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub limit_ns_per_sec: f64,
    pub estimated_cost_ns_per_sec: f64,
    pub over: bool,
    pub sampled_pids: Vec<u32>,
}

/// The socket I/O tracepoints' state.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketIo {
    pub attached: bool,
    pub why: Vec<SocketIoReason>,
    pub sampled: bool,
    pub calls_per_sec: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketIoReason {
    FullMode,
    PerCall,
    Threads,
    Handshakes,
    MemoryBio,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessProbes {
    pub pid: u32,
    pub per_call: bool,
    pub reason: Option<EscalationReason>,
    pub escalations_total: u64,
    pub confirmed_total: u64,
    pub escalated_ns_total: Ns,
    pub holdoff_ns: Ns,
    /// `watch` only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sampled: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    Attach,
    Start,
    RepeatedWakeups,
    SslError,
    SharedFd,
    AsyncPause,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    pub library_path: String,
    pub library_version: Option<String>,
    pub missing_symbols: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clock {
    pub monotonic_ns: Ns,
    pub unix_ns: Ns,
}

/// Events: `kind` selects the fields that follow the common ones.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    SslCall(SslCall),
    SslError(SslError),
    SslFree(SslFree),
    EpollWait(EpollWait),
    EpollIdle(EpollIdle),
    EpollCtl(EpollCtl),
    Close(Close),
    Peer(Peer),
    ThreadCpu(ThreadCpu),
    ListenOverflows(ListenOverflows),
    ServerHello(ServerHello),
    TaskExit(TaskExit),
    EpollBusy(EpollBusy),
    LibError(LibError),
    AsyncPause(AsyncPause),
    SockOverlap(SockOverlap),
    SslFd(SslFd),
    SslSetFd(SslSetFd),
}

macro_rules! event {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub ts_ns: Ns,
            pub pid: u32,
            pub tid: u32,
            pub probe: String,
            $(pub $field: $ty,)*
        }
    };
}

event!(SslCall {
    op: SslOp,
    ssl: u64,
    buf: u64,
    len: u64,
    ret: i64,
    bytes: u64,
    start_ns: Ns,
    duration_ns: Ns,
    fd: Option<i32>,
    fd_seen: bool,
    sys_calls: u32,
    sys_last: Option<SysKind>,
    sys_last_ret: Option<i64>,
    key_ops: u32,
});
event!(SslError {
    ssl: u64,
    ret_arg: i64,
    code: Code,
});
event!(SslFree { ssl: u64 });
event!(EpollWait {
    syscall: EpollSyscall,
    epfd: i32,
    maxevents: i32,
    timeout_ns: Option<i64>,
    start_ns: Ns,
    duration_ns: Ns,
    ret: i64,
    ready: Vec<ReadyFd>,
});
event!(EpollIdle {
    syscall: EpollSyscall,
    epfd: i32,
    count: u32,
    first_ns: Ns,
    blocked_ns: Ns,
});
event!(EpollCtl {
    op: CtlOp,
    epfd: i32,
    fd: i32,
    events: u32,
    data: u64,
    ret: i64,
});
event!(Close { fd: i32, ret: i64 });
event!(Peer {
    fd: i32,
    addr: String,
    side: PeerSide,
});
event!(ThreadCpu { cpu_ns: Ns });
event!(ListenOverflows { total: u64 });
event!(ServerHello {
    ssl: u64,
    fd: Option<i32>,
    version: u16,
    cipher: u16,
    psk: bool,
    hello_retry: bool,
    sent: bool,
});
event!(TaskExit {
    cleared: u32,
    group_dead: bool,
});
event!(EpollBusy {
    syscall: EpollSyscall,
    epfd: i32,
    count: u32,
    quick: u32,
    repeats: u32,
    zero_timeout: u32,
    ready_total: u32,
    first_ns: Ns,
    blocked_ns: Ns,
    last_ready: ReadyFd,
});
event!(LibError {
    lib: i32,
    reason: i32,
    reason_name: Option<String>,
    ssl: Option<u64>,
    op: Option<SslOp>,
    fd: Option<i32>,
});
event!(AsyncPause { ssl: Option<u64> });
event!(SockOverlap {
    fd: i32,
    tid_a: u32,
    a_since_ns: Ns,
    sys_a: SysKind,
    sys_b: SysKind,
    ssl_a: Option<u64>,
    ssl_b: Option<u64>,
    record_a: Option<u8>,
    record_b: Option<u8>,
    suppressed: u32,
});
event!(SslSetFd { ssl: u64, fd: i32 });
event!(SslFd {
    ssl: u64,
    fd: i32,
    via: BioVia,
    op: SslOp,
    record_type: u8,
    sys_bytes: i64,
});

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BioVia {
    Read,
    Write,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerSide {
    Accepted,
    Connected,
}

#[derive(Debug, Serialize, Deserialize)]
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
    #[serde(rename = "ossl_statem_accept")]
    StatemAccept,
    #[serde(rename = "ossl_statem_connect")]
    StatemConnect,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SysKind {
    Read,
    Write,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpollSyscall {
    EpollWait,
    EpollPwait,
    EpollPwait2,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CtlOp {
    Add,
    Mod,
    Del,
    Fdinfo,
    Other(i32),
}

/// An SSL_get_error code: a name, or the raw number for one not known.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Code {
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
    #[serde(untagged)]
    Other(i32),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadyFd {
    pub events: u32,
    pub data: u64,
    pub fd: Option<i32>,
    pub interest: Option<u32>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingChange {
    pub change: Change,
    pub finding: Finding,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Opened,
    Updated,
    Closed,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    pub id: u64,
    pub kind: String,
    pub state: FindingState,
    pub severity: Severity,
    pub pid: u32,
    pub comm: Option<String>,
    pub tid: Option<u32>,
    pub ssl: Option<u64>,
    pub fd: Option<i32>,
    pub peer: Option<String>,
    pub first_seen_ns: Ns,
    pub last_seen_ns: Ns,
    pub closed_ns: Option<Ns>,
    pub peak: Option<Peak>,
    pub evidence: Evidence,
    pub explanation: String,
    pub advice: String,
    pub call_sites: Option<CallSites>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSites {
    pub samples: u32,
    pub sites: Vec<CallSite>,
    pub note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSite {
    pub call: Option<String>,
    pub caller: Option<Frame>,
    pub samples: u32,
    pub share_pct: f64,
    pub stack: Vec<Frame>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Frame {
    pub address: u64,
    pub object: String,
    pub object_address: u64,
    pub function: Option<String>,
    pub offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub symbols: SymbolSource,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SymbolSource {
    DebugInfo,
    Symtab,
    Dynsym,
    None,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peak {
    pub ts_ns: Ns,
    pub evidence: Evidence,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FindingState {
    Open,
    Closed,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Evidence {
    SpinLoop(SpinEvidence),
    BusyEpollLoop(BusyEvidence),
    BadWriteRetry(WriteRetryEvidence),
    ConcurrentSslUse(ConcurrentEvidence),
    WantAsyncStall(AsyncStallEvidence),
    HandshakeSaturation(SaturationEvidence),
    LowSessionResumption(ResumptionEvidence),
    ConnectionChurn(ChurnEvidence),
    WriteAfterShutdown(ShutdownWriteEvidence),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpinEvidence {
    pub wasted_wakeups_per_sec: f64,
    pub wakeups_per_sec: f64,
    pub no_progress_pct: f64,
    pub wasted_wakeups_total: u64,
    pub wasted_wakeups_inferred: u64,
    pub ssl_error: Option<Code>,
    pub op: Option<SslOp>,
    pub ready_events: Option<String>,
    pub ready_events_mask: Option<u32>,
    pub interest: Option<String>,
    pub interest_mask: Option<u32>,
    pub mismatch: Option<String>,
    pub thread_cpu_pct: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusyEvidence {
    pub immediate_wakeups_per_sec: f64,
    pub wakeups_per_sec: f64,
    pub no_progress_pct: f64,
    pub zero_timeout_pct: f64,
    pub avg_blocked_ns: Ns,
    pub avg_ready_fds: f64,
    pub timeout_ns: Option<i64>,
    pub ready_fd: Option<i32>,
    pub ready_events: Option<String>,
    pub interest: Option<String>,
    pub thread_cpu_pct: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRetryEvidence {
    pub occurrences: u64,
    pub reason: Option<String>,
    pub connection_from: Option<Attribution>,
    pub fd_from: Option<Attribution>,
    pub arguments_seen: bool,
    pub moved_buffer: u64,
    pub shorter_length: u64,
    pub connections: u64,
    pub ssl_errors_after: u64,
    pub connections_dropped_after: u64,
    pub dropped_after_ns: Option<Ns>,
    pub reconnect_after_ns: Option<Ns>,
    pub moved_buffer_accepted: u64,
    pub op: Option<SslOp>,
    pub previous_answer: Option<Code>,
    pub previous_buf: Option<u64>,
    pub buf: Option<u64>,
    pub previous_len_bytes: Option<u64>,
    pub len_bytes: Option<u64>,
    pub fate: Option<String>,
    pub peers: Vec<PeerCount>,
    pub related_finding_ids: Vec<u64>,
}

/// How a finding's SSL* or fd was learned: the first three seen, the rest inferred.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    SslCallInFlight,
    SslCall,
    ConnectionFd,
    ThreadLastConnection,
    ThreadLastSocket,
    FreedAfter,
    ClosedAfter,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownWriteEvidence {
    pub occurrences: u64,
    pub op: Option<SslOp>,
    pub connection_from: Option<Attribution>,
    pub fd_from: Option<Attribution>,
    pub previous_error: Option<String>,
    pub previous_error_ago_ns: Option<Ns>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerCount {
    pub peer: String,
    pub occurrences: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrentEvidence {
    pub overlaps: u64,
    pub per_call_overlaps: u64,
    pub socket_overlaps: u64,
    pub connections: u64,
    pub seen_at: OverlapSeen,
    pub tid_a: u32,
    pub op_a: Option<SslOp>,
    pub tid_b: u32,
    pub op_b: Option<SslOp>,
    pub sys_a: Option<SysKind>,
    pub sys_b: Option<SysKind>,
    pub overlap_ns: Option<Ns>,
    pub a_in_flight_ns: Option<Ns>,
    pub max_overlap_ns: Ns,
    pub seen: Vec<String>,
    pub inferred: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapSeen {
    PerCall,
    AtSocket,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncStallEvidence {
    pub waits: u64,
    pub stalled_ns: Ns,
    pub calls_duration_ns: Ns,
    pub ssl_error: Code,
    pub op: SslOp,
    pub resolved: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaturationEvidence {
    pub handshakes_per_sec: f64,
    pub completed_per_sec: f64,
    pub handshake_time_pct: f64,
    pub epoll_blocked_pct: f64,
    pub ssl_io_pct: f64,
    pub full_per_sec: f64,
    pub resumed_per_sec: f64,
    pub resumption_pct: Option<f64>,
    pub full_cpu_mean_ns: Option<Ns>,
    pub latency_p50_ns: Option<Ns>,
    pub latency_p99_ns: Option<Ns>,
    pub listen_overflows_total: Option<u64>,
    pub thread_cpu_pct: Option<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumptionEvidence {
    pub window_ns: Ns,
    pub handshakes: u64,
    pub full: u64,
    pub resumed: u64,
    pub resumption_pct: f64,
    pub returning_pct: f64,
    pub handshakes_per_sec: f64,
    pub full_cpu_mean_ns: Option<Ns>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnEvidence {
    pub peer: String,
    pub connections_per_sec: f64,
    pub connections_total: u64,
    pub lifetime_p50_ns: Option<Ns>,
    pub full_handshakes_total: u64,
    pub resumed_handshakes_total: u64,
    pub related_finding_ids: Vec<u64>,
    pub bad_write_retries: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub now_ns: Ns,
    pub processes: Vec<ProcessSnapshot>,
    pub threads: Vec<ThreadSnapshot>,
    pub connections: Vec<ConnSnapshot>,
    pub open_findings: u64,
    pub evicted_connections_total: u64,
    pub evicted_threads_total: u64,
    pub unmatched_ssl_errors_total: u64,
    pub listen_overflows_total: Option<u64>,
    pub probes: Option<ProbeStatus>,
    pub evicted: Evicted,
}

/// What each bounded table dropped because it was full (snapshot and summary).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evicted {
    pub peers: u64,
    pub server_hellos: u64,
    pub closed_findings: u64,
    pub ssl_fds: u64,
    pub epoll_registrations: u64,
    pub epoll_instances: u64,
    pub ready_fds: u64,
    pub peer_lookups: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSnapshot {
    pub pid: u32,
    pub comm: Option<String>,
    pub first_seen_ns: Ns,
    pub last_seen_ns: Ns,
    pub threads: u64,
    pub connections_open: u64,
    pub connections_total: u64,
    pub connections_freed_total: u64,
    pub ssl_calls_total: u64,
    pub read_bytes_total: u64,
    pub written_bytes_total: u64,
    pub want_read_total: u64,
    pub want_write_total: u64,
    pub failed_total: u64,
    pub handshakes_total: u64,
    pub wakeups_total: u64,
    pub wakeups_no_progress_total: u64,
    pub handshakes: Option<HandshakeSnapshot>,
    pub new_connections: Option<NewConnectionsSnapshot>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandshakeSnapshot {
    pub started_total: u64,
    pub completed_total: u64,
    pub full_total: u64,
    pub resumed_total: u64,
    pub implicit_full_total: u64,
    pub failed_total: u64,
    pub abandoned_total: u64,
    pub in_progress: u64,
    pub started_per_sec: f64,
    pub completed_per_sec: f64,
    pub full_per_sec: f64,
    pub resumed_per_sec: f64,
    pub failed_per_sec: f64,
    pub resumption_pct: Option<f64>,
    pub latency_p50_ns: Option<Ns>,
    pub latency_p99_ns: Option<Ns>,
    pub cpu_p50_ns: Option<Ns>,
    pub cpu_p99_ns: Option<Ns>,
    pub full_cpu_mean_ns: Option<Ns>,
    pub server_hello_total: u64,
    pub psk_total: u64,
    pub psk_disagree_total: u64,
    pub tls_versions: Vec<NameCount>,
    pub ciphers: Vec<NameCount>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameCount {
    pub name: String,
    pub total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeShareSnapshot {
    pub handshake_pct: f64,
    pub ssl_io_pct: f64,
    pub epoll_blocked_pct: f64,
    pub other_pct: f64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConnectionsSnapshot {
    pub per_sec: f64,
    pub total: u64,
    pub ended_total: u64,
    pub lifetime_p50_ns: Option<Ns>,
    pub lifetime_p99_ns: Option<Ns>,
    pub peers: Vec<PeerSnapshot>,
    pub untracked_peer_connections_total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSnapshot {
    pub peer: String,
    pub connections_total: u64,
    pub connections_per_sec: f64,
    pub ended_total: u64,
    pub lifetime_p50_ns: Option<Ns>,
    pub full_total: u64,
    pub resumed_total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadSnapshot {
    pub pid: u32,
    pub tid: u32,
    pub first_seen_ns: Ns,
    pub last_seen_ns: Ns,
    pub cpu_pct: Option<f64>,
    pub wakeups_per_sec: f64,
    pub wakeups_no_progress_per_sec: f64,
    pub ssl_calls_per_sec: f64,
    pub wakeups_total: u64,
    pub wakeups_no_progress_total: u64,
    pub immediate_wakeups_total: u64,
    pub ssl_calls_total: u64,
    pub last_wait: Option<WaitSnapshot>,
    pub handshakes: Option<HandshakeSnapshot>,
    pub time_share: Option<TimeShareSnapshot>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitSnapshot {
    pub returned_ns: Ns,
    pub timeout_ns: Option<i64>,
    pub blocked_ns: Ns,
    pub ret: i64,
    pub ready: Vec<ReadySnapshot>,
    pub ssl_calls: u32,
    pub progress: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadySnapshot {
    pub fd: Option<i32>,
    pub events: String,
    pub interest: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnSnapshot {
    pub pid: u32,
    pub ssl: u64,
    pub fd: Option<i32>,
    pub closed: bool,
    pub peer: Option<String>,
    pub tid: u32,
    pub first_seen_ns: Ns,
    pub last_seen_ns: Ns,
    pub read_bytes_total: u64,
    pub written_bytes_total: u64,
    pub want_read_total: u64,
    pub want_write_total: u64,
    pub last_want: Option<Code>,
    pub handshake_done: bool,
    pub handshake_kind: Option<HandshakeKind>,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    pub ops: Vec<OpSnapshot>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandshakeKind {
    Full,
    Resumed,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpSnapshot {
    pub op: SslOp,
    pub calls_total: u64,
    pub progress_total: u64,
    pub want_read_total: u64,
    pub want_write_total: u64,
    pub want_other_total: u64,
    pub failed_total: u64,
    pub transferred_bytes_total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lost {
    pub ringbuf: u64,
    pub inflight: u64,
    pub decode: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LostRecord {
    pub ts_ns: Ns,
    pub new: Lost,
    pub total: Lost,
}

/// A `start` target's fields, then `parent_pid` and `ts_ns`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetAttach {
    pub pid: u32,
    pub comm: String,
    pub library_path: String,
    pub library_version: Option<String>,
    pub missing_symbols: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    pub parent_pid: u32,
    pub ts_ns: Ns,
    pub cause: AttachCause,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttachCause {
    Child,
    LibraryLoaded,
    Exec,
    Discovered,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetExit {
    pub pid: u32,
    pub comm: String,
    pub ts_ns: Ns,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Duration,
    Signal,
    TargetsExited,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub stop_reason: StopReason,
    pub end_ns: Ns,
    pub duration_ns: Ns,
    pub events: u64,
    pub events_by_probe: BTreeMap<String, u64>,
    pub lost: Lost,
    pub uprobe_hits: u64,
    pub tracepoint_hits: u64,
    pub memory_bio_disagreements: u64,
    pub probes: Option<ProbeStatus>,
    pub evicted: Evicted,
    pub processes: Vec<ProcessSnapshot>,
    pub findings: Vec<Finding>,
}
