//! The output records: what every sink receives, and what an NDJSON export holds one per
//! line as `{"type": ..., "data": {...}}`. The schema is documented in `docs/json-schema.md`.
//!
//! [`Record`] borrows (the live path serializes without copying); [`OwnedRecord`] is the same
//! envelope read back (`tls-probe report`). Both are adjacently tagged so that the NDJSON
//! envelope is exactly serde's `{"type", "data"}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    engine::{FindingChange, ProcessSnapshot, Snapshot},
    event::Event,
};

/// Bumped when a record's fields change incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

/// One record, borrowed, as the session hands it to each sink.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Record<'a> {
    Start(&'a Start),
    Event(&'a Event),
    Finding(&'a FindingChange),
    Snapshot(&'a Snapshot),
    Lost(&'a LostRecord),
    TargetAttach(&'a TargetAttach),
    TargetExit(&'a TargetExit),
    Summary(&'a Summary),
}

/// One record as read back from an export.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum OwnedRecord {
    Start(Start),
    Event(Event),
    Finding(Box<FindingChange>),
    Snapshot(Box<Snapshot>),
    Lost(LostRecord),
    TargetAttach(TargetAttach),
    TargetExit(TargetExit),
    Summary(Box<Summary>),
}

impl Record<'_> {
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

/// The first record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Start {
    pub schema_version: u32,
    pub tool_version: String,
    pub targets: Vec<Target>,
    pub probe_mode: ProbeMode,
    /// What each mode traces, by mode name.
    #[serde(default)]
    pub probe_modes: BTreeMap<String, String>,
    /// How the uprobes are linked on this kernel (absent in recordings made before).
    #[serde(default)]
    pub uprobe_links: UprobeLinks,
    /// Optional tracepoints this kernel lacks, skipped (e.g. `sys_enter_epoll_pwait2` before
    /// Linux 5.11). Empty on a kernel that has them all, and in older recordings.
    #[serde(default)]
    pub missing_tracepoints: Vec<String>,
    /// Whether the export holds every decoded event (`--events`), so that it can be replayed.
    pub events: bool,
    pub clock: ClockAnchor,
}

/// How much is probed: the `--mode` a run was started with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeMode {
    /// The per-call probes go on for a suspicious process, for a while (the default).
    #[default]
    Auto,
    /// Every SSL call is probed from the start.
    Full,
    /// The per-call probes are off.
    Light,
}

impl ProbeMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Full => "full",
            Self::Light => "light",
        }
    }
}

impl std::fmt::Display for ProbeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a process's per-call probes were turned on in auto mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscalationReason {
    /// Only in recordings made before attach stopped opening a window; read so that
    /// `report` still takes them.
    Attach,
    /// The window a command started under tls-probe (`run`) gets as it starts.
    Start,
    /// One fd reported ready again and again (the kernel's aggregated waits).
    RepeatedWakeups,
    /// An OpenSSL error raised in libssl.
    SslError,
    /// Two threads doing I/O on one fd.
    SharedFd,
    /// An async job pausing again and again.
    AsyncPause,
}

/// Why the socket I/O tracepoints are wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SocketIoWhy {
    /// Full mode: always.
    FullMode,
    /// A process is escalated: the fds of its SSL calls.
    PerCall,
    /// A target has several threads: two threads on one fd.
    Threads,
    /// Handshakes in the last 2 s: the ServerHello.
    Handshakes,
    /// SSL calls that do no socket I/O of their own (memory BIOs): their fds.
    MemoryBio,
}

/// The probes' mode, per process whether the per-call probes are on, and an estimate of
/// their cost. Filled in by the agent, not derived from events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeStatus {
    pub mode: ProbeMode,
    pub uprobe_hits_per_sec: f64,
    pub tracepoint_hits_per_sec: f64,
    /// The measured cost of one hit on this kind of machine.
    pub uprobe_hit_cost_ns: f64,
    pub tracepoint_hit_cost_ns: f64,
    /// Hits per second times their cost: CPU time the probes take from the targets, per
    /// second of wall time.
    pub estimated_cost_ns_per_sec: f64,
    /// The same as a share of the targets' CPU time (None before two samples).
    pub estimated_cost_pct: Option<f64>,
    pub processes: Vec<ProcessProbes>,
    /// The socket I/O tracepoints (read/write/send/recv and their vector forms), which
    /// outside full mode are attached only while they can tell something.
    #[serde(default)]
    pub socket_io: Option<SocketIoStatus>,
    /// Probes switched off are still being detached in the background (the kernel takes
    /// ~0.1 s per uprobe and tracepoint): until then they trap and cost a hit each.
    #[serde(default)]
    pub closing_links: bool,
    /// `watch`: the host-wide probe cost budget and what it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
}

/// `watch`'s host-wide budget: the estimate of all probes' cost against the limit, and the
/// processes sampled to stay under it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetStatus {
    pub limit_ns_per_sec: f64,
    pub estimated_cost_ns_per_sec: f64,
    pub over: bool,
    /// Traced 1 s in every 10, the busiest first.
    pub sampled_pids: Vec<u32>,
}

/// Whether the socket I/O tracepoints are attached, why, and at what rate they fire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SocketIoStatus {
    pub attached: bool,
    /// Why they are wanted.
    pub why: Vec<SocketIoWhy>,
    /// Over their budget (1% of a core) they are attached 1 s in every 10.
    pub sampled: bool,
    /// The targets' reads and writes a second, measured the last time they were attached.
    pub calls_per_sec: Option<f64>,
}

/// One process's per-call probes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessProbes {
    pub pid: u32,
    /// The per-call uprobes are attached now.
    pub per_call: bool,
    /// `auto` only: why they were last turned on, how often, how often that confirmed a
    /// finding, for how long in all, and the hold-off before the next window.
    pub reason: Option<EscalationReason>,
    pub escalations_total: u64,
    pub confirmed_total: u64,
    pub escalated_ns_total: u64,
    pub holdoff_ns: u64,
    /// `watch`: over the host-wide budget, this process is traced 1 s in every 10.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sampled: bool,
}

/// How the uprobes are linked: what attaching and detaching them costs.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UprobeLinks {
    /// One uprobe_multi link per program and library (kernel 6.6+): each set of probes
    /// attaches in one call and unregisters in one batch.
    UprobeMulti,
    /// One perf-event link per probed function (older kernels): each unregisters on its
    /// own, about 100 ms apiece.
    #[default]
    PerFunction,
}

/// A traced process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    pub library_path: String,
    pub library_version: Option<String>,
    /// Optional symbols the library lacks, skipped.
    pub missing_symbols: Vec<String>,
    /// The executable (`/proc/PID/exe`, as the process sees it) and the cgroup (from
    /// `/proc/PID/cgroup`: a container's own), for `watch`; absent when unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// CLOCK_MONOTONIC ns (the clock of every `*_ns` timestamp) and Unix ns at the same instant:
/// `unix = ts_ns - monotonic_ns + unix_ns`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClockAnchor {
    pub monotonic_ns: u64,
    pub unix_ns: u64,
}

/// Events lost, by where they were lost.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lost {
    /// The ring buffer was full: lost in the kernel.
    pub ringbuf: u64,
    /// A per-thread scratch map was full: a call could not be tracked.
    pub inflight: u64,
    /// A record that did not decode: dropped in userspace.
    pub decode: u64,
}

impl Lost {
    pub fn sum(&self) -> u64 {
        self.ringbuf + self.inflight + self.decode
    }

    pub fn since(&self, earlier: &Lost) -> Lost {
        Lost {
            ringbuf: self.ringbuf.saturating_sub(earlier.ringbuf),
            inflight: self.inflight.saturating_sub(earlier.inflight),
            decode: self.decode.saturating_sub(earlier.decode),
        }
    }
}

/// Losses since the previous `lost` record (`new`), and since the start (`total`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LostRecord {
    pub ts_ns: u64,
    pub new: Lost,
    pub total: Lost,
}

/// A process that joined the run after `start`: a new descendant of a traced process.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetAttach {
    /// The same fields as a `start` target.
    #[serde(flatten)]
    pub target: Target,
    /// Its parent when tls-probe found it (a traced process, or a descendant of one).
    pub parent_pid: u32,
    /// When tls-probe attached (it looks once a second).
    pub ts_ns: u64,
    /// Why it was attached then.
    #[serde(default)]
    pub cause: AttachCause,
}

/// Why a target was attached after the start.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AttachCause {
    /// A new descendant of a traced process.
    #[default]
    Child,
    /// A watched process mapped a TLS library (dlopen) after tls-probe started.
    LibraryLoaded,
    /// A watched or traced process ran a new program (exec) with a TLS library.
    Exec,
    /// `watch`: a process new on the host, running OpenSSL when first seen.
    Discovered,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TargetExit {
    pub pid: u32,
    pub comm: String,
    /// When tls-probe noticed (it checks once a second).
    pub ts_ns: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Duration,
    Signal,
    TargetsExited,
}

/// The last record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub stop_reason: StopReason,
    /// CLOCK_MONOTONIC ns at which the engine was last advanced: where a replay ends.
    pub end_ns: u64,
    pub duration_ns: u64,
    pub events: u64,
    pub events_by_probe: BTreeMap<String, u64>,
    pub lost: Lost,
    pub uprobe_hits: u64,
    pub tracepoint_hits: u64,
    /// Memory-BIO ties that moved an SSL* to another socket while its first was still open:
    /// the two signals disagreed (0 when they always agree).
    #[serde(default)]
    pub memory_bio_disagreements: u64,
    /// The probes' mode and cost at the end, and each process's escalations.
    #[serde(default)]
    pub probes: Option<ProbeStatus>,
    /// What each bounded table dropped because it was full, over the run (as in `snapshot`).
    #[serde(default)]
    pub evicted: crate::bounds::Evicted,
    /// Per-process totals at the end.
    pub processes: Vec<ProcessSnapshot>,
    /// Every finding of the run, in its final state.
    pub findings: Vec<crate::engine::Finding>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_type_and_data_and_reads_back() {
        let exit = TargetExit {
            pid: 7,
            comm: "x".into(),
            ts_ns: 9,
        };
        let line = serde_json::to_string(&Record::TargetExit(&exit)).unwrap();
        assert_eq!(
            line,
            r#"{"type":"target_exit","data":{"pid":7,"comm":"x","ts_ns":9}}"#
        );
        let back: OwnedRecord = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, OwnedRecord::TargetExit(e) if e == exit));
    }

    #[test]
    fn target_attach_is_a_start_target_with_its_parent() {
        let attach = TargetAttach {
            target: Target {
                pid: 8,
                comm: "nginx".into(),
                library_path: "/lib/libssl.so.3".into(),
                library_version: Some("3".into()),
                missing_symbols: Vec::new(),
                executable: None,
                cgroup: None,
            },
            parent_pid: 7,
            ts_ns: 9,
            cause: AttachCause::LibraryLoaded,
        };
        let line = serde_json::to_string(&Record::TargetAttach(&attach)).unwrap();
        assert_eq!(
            line,
            r#"{"type":"target_attach","data":{"pid":8,"comm":"nginx","library_path":"/lib/libssl.so.3","library_version":"3","missing_symbols":[],"parent_pid":7,"ts_ns":9,"cause":"library_loaded"}}"#
        );
        let back: OwnedRecord = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, OwnedRecord::TargetAttach(a) if a == attach));
    }

    #[test]
    fn lost_since_saturates() {
        let a = Lost {
            ringbuf: 5,
            inflight: 1,
            decode: 0,
        };
        let b = Lost {
            ringbuf: 2,
            inflight: 1,
            decode: 3,
        };
        assert_eq!(
            a.since(&b),
            Lost {
                ringbuf: 3,
                inflight: 0,
                decode: 0
            }
        );
        assert_eq!(a.sum(), 6);
    }
}
