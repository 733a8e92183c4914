//! Prometheus metrics as a sink: the engine's snapshot, rendered in the Prometheus text
//! format (0.0.4) once a tick and published for the HTTP endpoint ([`super::metrics_http`]).
//!
//! Labels are `pid` and `comm` (and `tid` for per-thread gauges, bounded by the engine's
//! thread limit), never a per-connection value. Each render builds a fresh registry from the
//! current state, so a thread or process the engine retired leaves the exposition with it.

use std::collections::{BTreeMap, HashMap};

use anyhow::Result;
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
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
struct StageLabels {
    stage: &'static str,
}

/// Keeps what the engine's snapshot does not hold (calls by op, findings opened, losses)
/// and renders everything on each snapshot.
pub struct MetricsSink {
    publish: watch::Sender<String>,
    comms: HashMap<u32, String>,
    /// SSL calls per pid, indexed by `SslOp as usize`, counted from the events.
    ops: HashMap<u32, [u64; SslOp::ALL.len()]>,
    opened: BTreeMap<(u32, FindingKind), u64>,
    active: BTreeMap<(u32, FindingKind), i64>,
    lost: Lost,
    processes: Vec<ProcessSnapshot>,
    threads: Vec<ThreadSnapshot>,
}

impl MetricsSink {
    /// A sink and the receiver the HTTP endpoint serves from.
    pub fn new() -> (Self, watch::Receiver<String>) {
        let (tx, rx) = watch::channel(String::new());
        let sink = Self {
            publish: tx,
            comms: HashMap::new(),
            ops: HashMap::new(),
            opened: BTreeMap::new(),
            active: BTreeMap::new(),
            lost: Lost::default(),
            processes: Vec::new(),
            threads: Vec::new(),
        };
        sink.publish();
        (sink, rx)
    }

    fn comm(&self, pid: u32) -> String {
        self.comms.get(&pid).cloned().unwrap_or_default()
    }

    fn publish(&self) {
        let text = self.render();
        self.publish.send_replace(text);
    }

    /// The exposition of the current state.
    pub fn render(&self) -> String {
        let mut reg = Registry::with_prefix("tls_probe");
        let p = |pid: u32| ProcLabels {
            pid,
            comm: self.comm(pid),
        };

        let calls = Family::<OpLabels, Counter>::default();
        let mut pids: Vec<_> = self.ops.keys().copied().collect();
        pids.sort_unstable();
        for pid in pids {
            for (op, n) in SslOp::ALL.iter().zip(self.ops[&pid]) {
                if n > 0 {
                    let l = OpLabels {
                        pid,
                        comm: self.comm(pid),
                        op: op.symbol(),
                    };
                    calls.get_or_create(&l).inc_by(n);
                }
            }
        }
        reg.register("ssl_calls", "SSL calls that returned, by function", calls);

        let results = Family::<ResultLabels, Counter>::default();
        let bytes = Family::<DirLabels, Counter>::default();
        let handshakes = Family::<KindLabels, Counter>::default();
        let versions = Family::<VersionLabels, Counter>::default();
        let ciphers = Family::<CipherLabels, Counter>::default();
        let latency = Family::<QuantileLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let wakeups = Family::<ProgressLabels, Counter>::default();
        let conns = Family::<ProcLabels, Gauge>::default();
        for ps in &self.processes {
            let (pid, comm) = (ps.pid, self.comm(ps.pid));
            let failing = ps.want_read_total + ps.want_write_total + ps.failed_total;
            for (result, n) in [
                ("ok", ps.ssl_calls_total.saturating_sub(failing)),
                ("want_read", ps.want_read_total),
                ("want_write", ps.want_write_total),
                ("failed", ps.failed_total),
            ] {
                let comm = comm.clone();
                results
                    .get_or_create(&ResultLabels { pid, comm, result })
                    .inc_by(n);
            }
            for (direction, n) in [
                ("read", ps.read_bytes_total),
                ("written", ps.written_bytes_total),
            ] {
                let comm = comm.clone();
                bytes
                    .get_or_create(&DirLabels {
                        pid,
                        comm,
                        direction,
                    })
                    .inc_by(n);
            }
            // Full or resumed once the engine classified them (key operations, or the
            // TLS 1.3 psk); handshakes it saw no classifying evidence for stay unknown.
            let (full, resumed) = ps
                .handshakes
                .as_ref()
                .map_or((0, 0), |h| (h.full_total, h.resumed_total));
            let unknown = ps.handshakes_total.saturating_sub(full + resumed);
            for (kind, n) in [("full", full), ("resumed", resumed), ("unknown", unknown)] {
                handshakes
                    .get_or_create(&KindLabels {
                        pid,
                        comm: comm.clone(),
                        kind,
                    })
                    .inc_by(n);
            }
            if let Some(h) = &ps.handshakes {
                for v in &h.tls_versions {
                    versions
                        .get_or_create(&VersionLabels {
                            pid,
                            comm: comm.clone(),
                            version: v.name.clone(),
                        })
                        .inc_by(v.total);
                }
                for c in &h.ciphers {
                    ciphers
                        .get_or_create(&CipherLabels {
                            pid,
                            comm: comm.clone(),
                            cipher: c.name.clone(),
                        })
                        .inc_by(c.total);
                }
                for (quantile, ns) in [("0.5", h.latency_p50_ns), ("0.99", h.latency_p99_ns)] {
                    if let Some(ns) = ns {
                        latency
                            .get_or_create(&QuantileLabels {
                                pid,
                                comm: comm.clone(),
                                quantile,
                            })
                            .set(ns as f64 / 1e9);
                    }
                }
            }
            let no_progress = ps.wakeups_no_progress_total;
            for (progress, n) in [
                ("true", ps.wakeups_total.saturating_sub(no_progress)),
                ("false", no_progress),
            ] {
                let comm = comm.clone();
                wakeups
                    .get_or_create(&ProgressLabels {
                        pid,
                        comm,
                        progress,
                    })
                    .inc_by(n);
            }
            conns.get_or_create(&p(pid)).set(ps.connections_open as i64);
        }
        reg.register(
            "ssl_call_results",
            "SSL calls by result: ok, want_read, want_write, failed (ok includes other WANT_* answers)",
            results,
        );
        reg.register(
            "ssl_bytes",
            "Application bytes moved by SSL calls, by direction",
            bytes,
        );
        reg.register(
            "handshakes",
            "TLS handshakes, by kind: full, resumed, or unknown (no classifying evidence)",
            handshakes,
        );
        reg.register(
            "handshake_versions",
            "Completed handshakes by negotiated TLS version, from the cleartext ServerHello",
            versions,
        );
        reg.register(
            "handshake_ciphers",
            "Completed handshakes by negotiated cipher suite, from the cleartext ServerHello",
            ciphers,
        );
        reg.register(
            "handshake_latency_seconds",
            "Handshake wall time, first handshake call to completion, by quantile",
            latency,
        );
        reg.register(
            "wakeups",
            "Epoll wake-ups of threads making SSL calls, by whether an SSL call made progress",
            wakeups,
        );
        reg.register(
            "connections_open",
            "SSL connections the engine tracks",
            conns,
        );

        let opened = Family::<KindLabels, Counter>::default();
        let active = Family::<KindLabels, Gauge>::default();
        for (&(pid, kind), &n) in &self.opened {
            let l = KindLabels {
                pid,
                comm: self.comm(pid),
                kind: kind.name(),
            };
            opened.get_or_create(&l).inc_by(n);
            let now = self.active.get(&(pid, kind)).copied().unwrap_or(0);
            active.get_or_create(&l).set(now.max(0));
        }
        reg.register("findings_opened", "Findings opened, by kind", opened);
        reg.register("findings_active", "Findings open now, by kind", active);

        let cpu = Family::<ThreadLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for t in &self.threads {
            if let Some(pct) = t.cpu_pct {
                let l = ThreadLabels {
                    pid: t.pid,
                    comm: self.comm(t.pid),
                    tid: t.tid,
                };
                cpu.get_or_create(&l).set(pct / 100.0);
            }
        }
        reg.register(
            "thread_cpu_ratio",
            "Share of one core a thread used between its last two samples",
            cpu,
        );

        let lost = Family::<StageLabels, Counter>::default();
        for (stage, n) in [
            ("ringbuf", self.lost.ringbuf),
            ("inflight", self.lost.inflight),
            ("decode", self.lost.decode),
        ] {
            lost.get_or_create(&StageLabels { stage }).inc_by(n);
        }
        reg.register(
            "lost_events",
            "Events lost: ring buffer full (ringbuf), call state map full (inflight), undecodable (decode)",
            lost,
        );

        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &reg);
        out
    }
}

impl Sink for MetricsSink {
    fn record(&mut self, rec: Record<'_>) -> Result<()> {
        match rec {
            Record::Event(ev) => {
                if let EventKind::SslCall(c) = &ev.kind {
                    match self.ops.get_mut(&ev.pid) {
                        Some(ops) => ops[c.op as usize] += 1,
                        None => {
                            let mut ops = [0; SslOp::ALL.len()];
                            ops[c.op as usize] = 1;
                            self.ops.insert(ev.pid, ops);
                        }
                    }
                }
            }
            Record::Start(start) => {
                for t in &start.targets {
                    self.comms.insert(t.pid, t.comm.clone());
                }
                self.publish();
            }
            Record::Finding(change) => {
                let key = (change.finding.pid, change.finding.kind);
                match change.change {
                    Change::Opened => {
                        *self.opened.entry(key).or_default() += 1;
                        *self.active.entry(key).or_default() += 1;
                    }
                    Change::Closed => *self.active.entry(key).or_default() -= 1,
                    Change::Updated => {}
                }
            }
            Record::Snapshot(s) => {
                for ps in &s.processes {
                    if let Some(c) = &ps.comm {
                        self.comms.insert(ps.pid, c.clone());
                    }
                }
                self.processes.clone_from(&s.processes);
                self.threads.clone_from(&s.threads);
                self.publish();
            }
            Record::Lost(l) => self.lost = l.total,
            Record::TargetAttach(a) => {
                self.comms.insert(a.target.pid, a.target.comm.clone());
            }
            Record::TargetExit(_) => {}
            Record::Summary(s) => {
                self.lost = s.lost;
                self.processes.clone_from(&s.processes);
                self.publish();
            }
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
