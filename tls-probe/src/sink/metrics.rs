//! Prometheus metrics as a sink: the engine's snapshot, rendered in the Prometheus text
//! format (0.0.4) once a tick and published for the HTTP endpoint ([`super::metrics_http`]).
//!
//! Labels are `pid` and `comm` (and `tid` for per-thread gauges, bounded by the engine's
//! thread limit), never a per-connection value. The registry is built once, around one
//! collector that writes every metric family from the current state at each encode, so a
//! thread or process the engine retired leaves the exposition with it.
//!
//! `watch` caps the labelled processes ([`MetricsSink::with_process_cap`]): the first N
//! traced processes get their own series; the findings of the others are summed into one
//! overflow series (pid="0", comm="_other"), and their per-process series are left out. A
//! process that exits leaves the exposition (its opened findings are added to the overflow
//! series, so that the sum by kind never goes down) and frees its slot. It also adds
//! `target_info` (pid, comm, executable, cgroup; value 1, to join on pid) and the number of
//! processes traced and unlabelled.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use anyhow::Result;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text},
    metrics::{TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::sync::watch;

use super::{Lost, Record, Sink};
use crate::{
    engine::{Change, FindingKind, ProcessSnapshot, ThreadSnapshot},
    event::{EventKind, SslOp},
};

/// The `Content-Type` of what [`MetricsSink`] publishes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcLabels {
    pid: u32,
    comm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirLabels {
    pid: u32,
    comm: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    pid: u32,
    comm: String,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    pid: u32,
    comm: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    pid: u32,
    comm: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    pid: u32,
    comm: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CipherLabels {
    pid: u32,
    comm: String,
    cipher: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabels {
    pid: u32,
    comm: String,
    quantile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgressLabels {
    pid: u32,
    comm: String,
    progress: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ThreadLabels {
    pid: u32,
    comm: String,
    tid: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NoLabels {}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    pid: u32,
    comm: String,
    executable: String,
    cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// The sink: a registry built once around the one [`Exposition`] collector, re-encoded
/// and published whenever the state changes in a way a scrape should see.
pub struct MetricsSink {
    publish: watch::Sender<String>,
    registry: Registry,
    exposition: Arc<Exposition>,
}

/// The registry's collector: each encode writes every metric family from the current
/// [`State`], so a thread or process the engine retired leaves the exposition with it.
#[derive(Debug, Default)]
struct Exposition(Mutex<State>);

impl Exposition {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.state().encode(&mut encoder)
    }
}

/// What the exposition shows: the engine's last snapshot, and what that snapshot does not
/// hold (calls by op, findings opened, losses), counted from the records.
#[derive(Debug, Default)]
struct State {
    comms: HashMap<u32, String>,
    /// SSL calls per pid, indexed by `SslOp as usize`, counted from the events.
    ops: BTreeMap<u32, [u64; SslOp::ALL.len()]>,
    opened: BTreeMap<(u32, FindingKind), u64>,
    active: BTreeMap<(u32, FindingKind), i64>,
    lost: Lost,
    processes: Vec<ProcessSnapshot>,
    threads: Vec<ThreadSnapshot>,
    /// Open findings by id: their subject, kind and whether they are critical now.
    open: HashMap<u64, (u32, FindingKind, bool)>,
    /// `watch`: at most this many labelled processes.
    cap: Option<usize>,
    labelled: std::collections::BTreeSet<u32>,
    /// `watch`: the traced processes' executable and cgroup.
    info: BTreeMap<u32, (String, String)>,
    /// Findings opened in processes that left the exposition (and in unlabelled ones).
    overflow_opened: BTreeMap<FindingKind, u64>,
}

/// The overflow series' labels.
const OTHER_PID: u32 = 0;
const OTHER_COMM: &str = "_other";

impl MetricsSink {
    /// A sink and the receiver the HTTP endpoint serves from.
    pub fn new() -> (Self, watch::Receiver<String>) {
        Self::with(State::default())
    }

    /// The same, with at most `cap` labelled processes (`watch`).
    pub fn with_process_cap(cap: usize) -> (Self, watch::Receiver<String>) {
        Self::with(State {
            cap: Some(cap),
            ..State::default()
        })
    }

    fn with(state: State) -> (Self, watch::Receiver<String>) {
        let (tx, rx) = watch::channel(String::new());
        let exposition = Arc::new(Exposition(Mutex::new(state)));
        let mut registry = Registry::with_prefix("tls_probe");
        registry.register_collector(Box::new(Arc::clone(&exposition)));
        let sink = Self {
            publish: tx,
            registry,
            exposition,
        };
        sink.publish();
        (sink, rx)
    }

    fn publish(&self) {
        let text = self.render();
        self.publish.send_replace(text);
    }

    /// The exposition of the current state.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Writes one metric family (named with the registry's prefix): its HELP and TYPE lines,
/// then one sample per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, sample) in samples {
        sample.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl State {
    fn comm(&self, pid: u32) -> String {
        self.comms.get(&pid).cloned().unwrap_or_default()
    }

    /// Whether `pid` has series of its own (always, without a cap).
    fn shown(&self, pid: u32) -> bool {
        self.cap.is_none() || self.labelled.contains(&pid)
    }

    /// Gives `pid` series of its own while there is room under the cap.
    fn admit(&mut self, pid: u32) {
        if let Some(cap) = self.cap
            && self.labelled.len() < cap
        {
            self.labelled.insert(pid);
        }
    }

    /// The (pid, comm) a finding of `pid` is counted under.
    fn finding_labels(&self, pid: u32) -> (u32, String) {
        if self.shown(pid) {
            (pid, self.comm(pid))
        } else {
            (OTHER_PID, OTHER_COMM.to_owned())
        }
    }

    /// `watch`: a traced process exited: it leaves the exposition and frees its slot.
    fn forget(&mut self, pid: u32) {
        if self.cap.is_none() {
            return;
        }
        self.labelled.remove(&pid);
        self.info.remove(&pid);
        self.comms.remove(&pid);
        self.ops.remove(&pid);
        let gone: Vec<(u32, FindingKind)> = self
            .opened
            .keys()
            .filter(|(p, _)| *p == pid)
            .copied()
            .collect();
        for key in gone {
            if let Some(n) = self.opened.remove(&key) {
                *self.overflow_opened.entry(key.1).or_default() += n;
            }
            self.active.remove(&key);
        }
        self.open.retain(|_, (p, ..)| *p != pid);
    }

    /// `(labels, value)` for each process and each `(label, value)` that `each` gives it.
    fn per_process<'a, L, T, I>(
        &'a self,
        mut each: impl FnMut(&'a ProcessSnapshot, u32, String) -> I + 'a,
    ) -> impl Iterator<Item = (L, T)> + 'a
    where
        I: IntoIterator<Item = (L, T)> + 'a,
    {
        self.processes
            .iter()
            .filter(|ps| self.shown(ps.pid))
            .flat_map(move |ps| each(ps, ps.pid, self.comm(ps.pid)))
    }

    fn encode(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        family(
            enc,
            "ssl_calls",
            "SSL calls that returned, by function.",
            self.ops
                .iter()
                .filter(|(pid, _)| self.shown(**pid))
                .flat_map(|(&pid, ops)| {
                    SslOp::ALL
                        .iter()
                        .zip(*ops)
                        .filter(|&(_, n)| n > 0)
                        .map(move |(op, n)| {
                            let op = op.symbol();
                            (
                                OpLabels {
                                    pid,
                                    comm: self.comm(pid),
                                    op,
                                },
                                ConstCounter::new(n),
                            )
                        })
                }),
        )?;
        family(
            enc,
            "ssl_call_results",
            "SSL calls by result: ok, want_read, want_write, failed (ok includes other WANT_* answers).",
            self.per_process(|ps, pid, comm| {
                let failing = ps.want_read_total + ps.want_write_total + ps.failed_total;
                [
                    ("ok", ps.ssl_calls_total.saturating_sub(failing)),
                    ("want_read", ps.want_read_total),
                    ("want_write", ps.want_write_total),
                    ("failed", ps.failed_total),
                ]
                .map(|(result, n)| {
                    let comm = comm.clone();
                    (ResultLabels { pid, comm, result }, ConstCounter::new(n))
                })
            }),
        )?;
        family(
            enc,
            "ssl_bytes",
            "Application bytes moved by SSL calls, by direction.",
            self.per_process(|ps, pid, comm| {
                [
                    ("read", ps.read_bytes_total),
                    ("written", ps.written_bytes_total),
                ]
                .map(|(direction, n)| {
                    let comm = comm.clone();
                    (
                        DirLabels {
                            pid,
                            comm,
                            direction,
                        },
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        family(
            enc,
            "handshakes",
            "TLS handshakes, by kind: full, resumed, or unknown (no classifying evidence).",
            self.per_process(|ps, pid, comm| {
                // Full or resumed once the engine classified them (key operations, or the
                // TLS 1.3 psk); handshakes it saw no classifying evidence for stay unknown.
                let (full, resumed) = ps
                    .handshakes
                    .as_ref()
                    .map_or((0, 0), |h| (h.full_total, h.resumed_total));
                let unknown = ps.handshakes_total.saturating_sub(full + resumed);
                [("full", full), ("resumed", resumed), ("unknown", unknown)].map(|(kind, n)| {
                    let comm = comm.clone();
                    (KindLabels { pid, comm, kind }, ConstCounter::new(n))
                })
            }),
        )?;
        family(
            enc,
            "handshake_versions",
            "Completed handshakes by negotiated TLS version, from the cleartext ServerHello.",
            self.per_process(|ps, pid, comm| {
                let versions = ps.handshakes.iter().flat_map(|h| &h.tls_versions);
                versions.map(move |v| {
                    let (comm, version) = (comm.clone(), v.name.clone());
                    (
                        VersionLabels { pid, comm, version },
                        ConstCounter::new(v.total),
                    )
                })
            }),
        )?;
        family(
            enc,
            "handshake_ciphers",
            "Completed handshakes by negotiated cipher suite, from the cleartext ServerHello.",
            self.per_process(|ps, pid, comm| {
                let ciphers = ps.handshakes.iter().flat_map(|h| &h.ciphers);
                ciphers.map(move |c| {
                    let (comm, cipher) = (comm.clone(), c.name.clone());
                    (
                        CipherLabels { pid, comm, cipher },
                        ConstCounter::new(c.total),
                    )
                })
            }),
        )?;
        family(
            enc,
            "handshake_latency_seconds",
            "Handshake wall time, first handshake call to completion, by quantile.",
            self.per_process(|ps, pid, comm| {
                let quantiles = ps.handshakes.iter().flat_map(|h| {
                    [("0.5", h.latency_p50_ns), ("0.99", h.latency_p99_ns)]
                        .into_iter()
                        .filter_map(|(q, ns)| Some((q, ns?)))
                });
                quantiles.map(move |(quantile, ns)| {
                    let comm = comm.clone();
                    let seconds = ns as f64 / 1e9;
                    (
                        QuantileLabels {
                            pid,
                            comm,
                            quantile,
                        },
                        ConstGauge::new(seconds),
                    )
                })
            }),
        )?;
        family(
            enc,
            "wakeups",
            "Epoll wake-ups of threads making SSL calls, by whether an SSL call made progress.",
            self.per_process(|ps, pid, comm| {
                let no_progress = ps.wakeups_no_progress_total;
                [
                    ("true", ps.wakeups_total.saturating_sub(no_progress)),
                    ("false", no_progress),
                ]
                .map(|(progress, n)| {
                    let comm = comm.clone();
                    (
                        ProgressLabels {
                            pid,
                            comm,
                            progress,
                        },
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        family(
            enc,
            "connections_open",
            "SSL connections the engine tracks.",
            self.per_process(|ps, pid, comm| {
                let open = ConstGauge::new(ps.connections_open as i64);
                [(ProcLabels { pid, comm }, open)]
            }),
        )?;

        // Summed by label set: every unlabelled process counts under the overflow series.
        let mut opened: BTreeMap<(u32, String, &'static str), (u64, i64)> = BTreeMap::new();
        for (&(pid, kind), &n) in &self.opened {
            let (p, c) = self.finding_labels(pid);
            let e = opened.entry((p, c, kind.name())).or_default();
            e.0 += n;
            e.1 += self.active.get(&(pid, kind)).copied().unwrap_or(0).max(0);
        }
        for (kind, &n) in &self.overflow_opened {
            let e = opened
                .entry((OTHER_PID, OTHER_COMM.to_owned(), kind.name()))
                .or_default();
            e.0 += n;
        }
        let kind_labels = |(pid, comm, kind): &(u32, String, &'static str)| KindLabels {
            pid: *pid,
            comm: comm.clone(),
            kind,
        };
        family(
            enc,
            "findings_opened",
            "Findings opened, by kind.",
            opened
                .iter()
                .map(|(key, &(n, _))| (kind_labels(key), ConstCounter::new(n))),
        )?;
        family(
            enc,
            "findings_active",
            "Findings open now, by kind.",
            opened
                .iter()
                .map(|(key, &(_, now))| (kind_labels(key), ConstGauge::new(now))),
        )?;
        let mut critical: BTreeMap<(u32, String, &'static str), i64> =
            opened.keys().map(|k| (k.clone(), 0)).collect();
        for &(pid, kind, crit) in self.open.values() {
            if crit {
                let (p, c) = self.finding_labels(pid);
                *critical.entry((p, c, kind.name())).or_default() += 1;
            }
        }
        family(
            enc,
            "findings_critical",
            "Findings open now whose severity is critical, by kind (what the example alerting rules fire on).",
            critical
                .iter()
                .map(|(key, &n)| (kind_labels(key), ConstGauge::new(n))),
        )?;
        if self.cap.is_some() {
            family(
                enc,
                "target_info",
                "Each traced process with its own series: its executable and cgroup (value 1; join on pid).",
                self.info.iter().filter(|(pid, _)| self.shown(**pid)).map(
                    |(&pid, (executable, cgroup))| {
                        (
                            InfoLabels {
                                pid,
                                comm: self.comm(pid),
                                executable: executable.clone(),
                                cgroup: cgroup.clone(),
                            },
                            ConstGauge::new(1),
                        )
                    },
                ),
            )?;
            let unlabelled = self.info.keys().filter(|p| !self.shown(**p)).count();
            family(
                enc,
                "processes_traced",
                "Processes traced now.",
                [(NoLabels {}, ConstGauge::new(self.info.len() as i64))],
            )?;
            family(
                enc,
                "processes_unlabelled",
                "Processes traced now beyond the label cap: their findings count under pid=\"0\", comm=\"_other\".",
                [(NoLabels {}, ConstGauge::new(unlabelled as i64))],
            )?;
        }
        family(
            enc,
            "thread_cpu_ratio",
            "Share of one core a thread used between its last two samples.",
            self.threads
                .iter()
                .filter(|t| self.shown(t.pid))
                .filter_map(|t| {
                    let (pid, tid) = (t.pid, t.tid);
                    let labels = ThreadLabels {
                        pid,
                        comm: self.comm(pid),
                        tid,
                    };
                    Some((labels, ConstGauge::new(t.cpu_pct? / 100.0)))
                }),
        )?;
        family(
            enc,
            "lost_events",
            "Events lost: ring buffer full (ringbuf), call state map full (inflight), undecodable (decode).",
            [
                ("ringbuf", self.lost.ringbuf),
                ("inflight", self.lost.inflight),
                ("decode", self.lost.decode),
            ]
            .map(|(stage, n)| (StageLabels { stage }, ConstCounter::new(n))),
        )
    }

    fn target(&mut self, t: &super::Target) {
        self.comms.insert(t.pid, t.comm.clone());
        if self.cap.is_some() {
            self.admit(t.pid);
            self.info.insert(
                t.pid,
                (
                    t.executable.clone().unwrap_or_default(),
                    t.cgroup.clone().unwrap_or_default(),
                ),
            );
        }
    }

    /// Takes in one record; whether the exposition should be published again.
    fn update(&mut self, rec: Record<'_>) -> bool {
        match rec {
            Record::Event(ev) => {
                if let EventKind::SslCall(c) = &ev.kind {
                    self.ops.entry(ev.pid).or_insert([0; SslOp::ALL.len()])[c.op as usize] += 1;
                }
                false
            }
            Record::Start(start) => {
                for t in &start.targets {
                    self.target(t);
                }
                true
            }
            Record::Finding(change) => {
                let f = &change.finding;
                let key = (f.pid, f.kind);
                let critical = f.severity == crate::engine::Severity::Critical;
                match change.change {
                    Change::Opened => {
                        self.admit(f.pid);
                        *self.opened.entry(key).or_default() += 1;
                        *self.active.entry(key).or_default() += 1;
                        self.open.insert(f.id, (f.pid, f.kind, critical));
                    }
                    Change::Closed => {
                        // A finding of a process forgotten at its exit is gone already.
                        if self.open.remove(&f.id).is_some()
                            && let Some(n) = self.active.get_mut(&key)
                        {
                            *n -= 1;
                        }
                    }
                    Change::Updated => {
                        if let Some(o) = self.open.get_mut(&f.id) {
                            o.2 = critical;
                        }
                    }
                }
                // Published with the next snapshot (within a second), so that a scrape
                // never sees a finding ahead of the counters it was made from.
                false
            }
            Record::Snapshot(s) => {
                for ps in &s.processes {
                    if let Some(c) = &ps.comm {
                        self.comms.insert(ps.pid, c.clone());
                    }
                }
                self.processes.clone_from(&s.processes);
                self.threads.clone_from(&s.threads);
                true
            }
            Record::Lost(l) => {
                self.lost = l.total;
                false
            }
            Record::TargetAttach(a) => {
                self.target(&a.target);
                false
            }
            Record::TargetExit(e) => {
                self.forget(e.pid);
                false
            }
            Record::Summary(s) => {
                self.lost = s.lost;
                self.processes.clone_from(&s.processes);
                true
            }
        }
    }
}

impl Sink for MetricsSink {
    fn record(&mut self, rec: Record<'_>) -> Result<()> {
        let changed = self.exposition.state().update(rec);
        if changed {
            self.publish();
        }
        Ok(())
    }

    fn wants_events(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fixtures::{handshake_snapshot, snapshot_at};

    fn ssl_call(pid: u32, op: SslOp) -> crate::event::Event {
        crate::event::Event::new(
            1,
            pid,
            pid,
            EventKind::SslCall(crate::event::SslCall {
                op,
                ssl: 0x1000,
                buf: 0,
                len: 4096,
                ret: -1,
                bytes: 0,
                start_ns: 0,
                duration_ns: 10,
                fd: Some(7),
                fd_seen: true,
                sys_calls: 1,
                sys_last: None,
                sys_last_ret: None,
                key_ops: 0,
            }),
        )
    }

    /// Everything the sink exposes after a run's records: calls counted from events,
    /// findings opened and closed, losses, the snapshot's processes and threads.
    fn run_exposition() -> String {
        use crate::{
            engine::FindingChange,
            sink::record::{Lost, LostRecord},
            tui::fixtures::{busy, spin},
        };
        let (mut sink, rx) = MetricsSink::new();
        for op in [SslOp::Read, SslOp::Read, SslOp::Write] {
            sink.record(Record::Event(&ssl_call(4242, op))).unwrap();
        }
        for (change, finding) in [
            (Change::Opened, spin()),
            (Change::Opened, busy()),
            (Change::Closed, busy()),
        ] {
            sink.record(Record::Finding(&FindingChange { change, finding }))
                .unwrap();
        }
        let total = Lost {
            ringbuf: 5,
            inflight: 2,
            decode: 1,
        };
        sink.record(Record::Lost(&LostRecord {
            ts_ns: 1,
            new: total,
            total,
        }))
        .unwrap();
        let mut snap = snapshot_at(1_000_000_000, 1_003);
        snap.processes[0].handshakes = Some(handshake_snapshot());
        sink.record(Record::Snapshot(&snap)).unwrap();
        rx.borrow().clone()
    }

    /// The whole exposition, in a stable order: families in registration order, samples
    /// by pid, then in the order each family lists them.
    #[test]
    fn exposition_after_a_run() {
        insta::assert_snapshot!(run_exposition());
    }

    #[test]
    fn a_thread_the_engine_retired_leaves_the_exposition() {
        let (mut sink, rx) = MetricsSink::new();
        let mut snap = snapshot_at(1_000_000_000, 3);
        sink.record(Record::Snapshot(&snap)).unwrap();
        assert!(
            rx.borrow().contains(r#"tid="4245"} 0.34"#),
            "{}",
            *rx.borrow()
        );
        snap.threads.retain(|t| t.tid != 4245);
        sink.record(Record::Snapshot(&snap)).unwrap();
        let text = rx.borrow().clone();
        assert!(!text.contains(r#"tid="4245""#), "{text}");
        assert!(text.contains(r#"tid="4244"} 0.035"#), "{text}");
    }

    #[test]
    fn handshakes_by_kind_version_cipher_and_latency() {
        let (mut sink, rx) = MetricsSink::new();
        let mut snap = snapshot_at(1_000_000_000, 1_003);
        snap.processes[0].handshakes = Some(handshake_snapshot());
        sink.record(Record::Snapshot(&snap)).unwrap();
        let text = rx.borrow().clone();
        for line in [
            r#"tls_probe_handshakes_total{pid="4242",comm="spin_server",kind="full"} 990"#,
            r#"tls_probe_handshakes_total{pid="4242",comm="spin_server",kind="resumed"} 10"#,
            r#"tls_probe_handshakes_total{pid="4242",comm="spin_server",kind="unknown"} 3"#,
            r#"tls_probe_handshake_versions_total{pid="4242",comm="spin_server",version="TLS 1.3"} 1000"#,
            r#"cipher="TLS_AES_256_GCM_SHA384"} 1000"#,
            r#"tls_probe_handshake_latency_seconds{pid="4242",comm="spin_server",quantile="0.99"} 0.0095"#,
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
    }
}
