//! One tls-probe run against a set of live processes.

use std::{collections::BTreeMap, io::Write, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::SignalKind,
};

use super::proc;
use crate::{
    decode::decode,
    engine::{Change, Config as EngineConfig, Engine, Finding, FindingChange},
    event::Event,
    probe::{Counters, Probes, TlsLibrary, discover},
    sink::{
        human,
        ndjson::{NdjsonWriter, SCHEMA_VERSION},
    },
    track::Tracker,
};

#[derive(Clone, Debug, Default)]
pub struct AgentConfig {
    pub pids: Vec<u32>,
    pub libssl: Option<PathBuf>,
    pub duration: Option<Duration>,
    /// Write every decoded event to the NDJSON output.
    pub events: bool,
    /// Print every decoded event as a line on stdout (with `--events` and no `-o`).
    pub print_events: bool,
    /// Attach the per-call uprobes (SSL_read/SSL_write/SSL_get_error) from the start.
    pub hot: bool,
}

/// A traced process, as reported in `start`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Target {
    pub pid: u32,
    pub comm: String,
    pub library_path: String,
    pub library_version: Option<String>,
    /// Optional symbols the library lacks, skipped.
    pub missing_symbols: Vec<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Duration,
    Signal,
    TargetsExited,
}

/// Events lost, by where they were lost.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lost {
    /// The ring buffer was full: lost in the kernel.
    pub ringbuf: u64,
    /// A per-thread scratch map was full: a call could not be tracked.
    pub inflight: u64,
    /// A record that did not decode.
    pub decode: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub stop_reason: StopReason,
    pub duration_ns: u64,
    pub events: u64,
    pub events_by_probe: BTreeMap<String, u64>,
    pub lost: Lost,
    pub uprobe_hits: u64,
    pub tracepoint_hits: u64,
    /// Every finding of the run, in its final state.
    pub findings: Vec<Finding>,
}

#[derive(Serialize)]
struct StartRecord<'a> {
    schema_version: u32,
    tool_version: &'a str,
    targets: &'a [Target],
    probe_mode: &'a str,
    /// CLOCK_MONOTONIC ns (the clock of every `ts_ns`) and Unix ns at the same instant.
    clock: ClockAnchor,
}

#[derive(Serialize)]
struct ClockAnchor {
    monotonic_ns: u64,
    unix_ns: u64,
}

#[derive(Serialize)]
struct LostRecord {
    ringbuf: u64,
    inflight: u64,
    decode: u64,
    total: Lost,
}

#[derive(Serialize)]
struct TargetExit {
    pid: u32,
    comm: String,
    ts_ns: u64,
}

pub struct Session {
    cfg: AgentConfig,
    probes: Probes,
    events: Option<AsyncFd<RingBuf<MapData>>>,
    targets: Vec<Target>,
    tracker: Tracker,
    engine: Engine,
    changes: Vec<FindingChange>,
    /// Print finding changes as lines on stderr.
    print_findings: bool,
    out: Option<NdjsonWriter>,
    stdout: std::io::BufWriter<std::io::Stdout>,
    counts: BTreeMap<&'static str, u64>,
    total: u64,
    lost: Lost,
    last_counters: Counters,
    started_ns: u64,
}

fn probe_key(ev: &Event) -> &'static str {
    Event::probe_name(&ev.kind)
}

impl Session {
    /// Finds each target's TLS library, loads the programs and attaches. Writes `start`.
    pub fn attach(cfg: AgentConfig, out: Option<NdjsonWriter>) -> Result<Self> {
        if cfg.pids.is_empty() {
            bail!("no target: pass --pid PID");
        }
        let mut libs: Vec<(u32, TlsLibrary)> = Vec::new();
        for &pid in &cfg.pids {
            let lib = match &cfg.libssl {
                Some(path) => {
                    if !PathBuf::from(format!("/proc/{pid}")).exists() {
                        return Err(discover::DiscoverError::NoProcess(pid).into());
                    }
                    discover::library_at(path, &path.display().to_string())?
                }
                None => discover::find_tls_library(pid)?,
            };
            libs.push((pid, lib));
        }
        check_privileges()?;
        let mut probes = Probes::load()?;
        let ring = probes.take_events()?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as
        // the AsyncFd that owns the RingBuf lives.
        let events = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the ring buffer with the event loop")?;
        let mut targets = Vec::new();
        for (pid, lib) in libs {
            let target = Target {
                pid,
                comm: discover::comm(pid),
                library_path: lib.display_path.clone(),
                library_version: lib.version.clone(),
                missing_symbols: Vec::new(),
            };
            probes.attach(pid, lib, cfg.hot)?;
            targets.push(Target {
                missing_symbols: probes
                    .missing_symbols(pid)
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                ..target
            });
        }
        let now = proc::monotonic_ns();
        let mut session = Self {
            probes,
            events: Some(events),
            targets,
            tracker: Tracker::new(),
            engine: Engine::new(EngineConfig::default()),
            changes: Vec::new(),
            print_findings: true,
            out,
            stdout: std::io::BufWriter::new(std::io::stdout()),
            counts: BTreeMap::new(),
            total: 0,
            lost: Lost::default(),
            last_counters: Counters::default(),
            started_ns: now,
            cfg,
        };
        for t in &session.targets {
            session.engine.set_comm(t.pid, &t.comm);
        }
        session.write_start(now)?;
        for t in &session.targets {
            eprintln!(
                "tls-probe: attached to pid {} ({}) through {}{}",
                t.pid,
                t.comm,
                t.library_path,
                if t.missing_symbols.is_empty() {
                    String::new()
                } else {
                    format!(" (skipped missing {})", t.missing_symbols.join(", "))
                }
            );
        }
        // Registrations made before we attached are only in /proc.
        for pid in session.probes.pids() {
            for epfd in proc::epoll_fds(pid) {
                session.tracker.mark_seeded(pid, epfd);
                for ev in proc::epoll_registrations(pid, epfd, now) {
                    session.handle(ev)?;
                }
            }
        }
        Ok(session)
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    fn write_start(&mut self, now: u64) -> Result<()> {
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        out.record(
            "start",
            &StartRecord {
                schema_version: SCHEMA_VERSION,
                tool_version: env!("CARGO_PKG_VERSION"),
                targets: &self.targets,
                probe_mode: if self.cfg.hot { "full" } else { "light" },
                clock: ClockAnchor {
                    monotonic_ns: now,
                    unix_ns: proc::wall_ns(),
                },
            },
        )?;
        out.flush()
    }

    /// One event through the pipeline: tracker, counts, sinks.
    fn handle(&mut self, mut ev: Event) -> Result<()> {
        self.tracker.process(&mut ev);
        *self.counts.entry(probe_key(&ev)).or_default() += 1;
        self.total += 1;
        if self.cfg.events
            && let Some(out) = self.out.as_mut()
        {
            out.record("event", &ev)?;
        }
        if self.cfg.print_events {
            writeln!(self.stdout, "{}", human::event_line(&ev)).context("writing to stdout")?;
        }
        self.engine.ingest(&ev, &mut self.changes);
        self.emit_changes()
    }

    /// Writes the finding changes the engine produced.
    fn emit_changes(&mut self) -> Result<()> {
        for change in self.changes.drain(..) {
            if self.print_findings {
                let verb = match change.change {
                    Change::Opened => "FINDING",
                    Change::Updated => "update ",
                    Change::Closed => "closed ",
                };
                eprintln!("tls-probe: {verb} {}", change.finding.summary_line());
                if change.change == Change::Opened {
                    eprintln!("           why: {}", change.finding.explanation);
                    eprintln!("           fix: {}", change.finding.advice);
                }
            }
            if let Some(out) = self.out.as_mut() {
                out.record("finding", &change)?;
            }
        }
        Ok(())
    }

    /// Handles up to one batch of events from the ring buffer; returns whether the batch
    /// limit stopped it (more may be waiting).
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<bool> {
        let mut batch = Vec::new();
        let mut full = false;
        while let Some(item) = ring.next() {
            match decode(&item) {
                Ok(ev) => batch.push(ev),
                Err(err) => {
                    self.lost.decode += 1;
                    log::debug!("bad record: {err}");
                }
            }
            if batch.len() >= 1024 {
                full = true;
                break;
            }
        }
        for ev in batch {
            self.handle(ev)?;
        }
        for (pid, epfd) in self.tracker.take_pending_seeds() {
            for ev in proc::epoll_registrations(pid, epfd, proc::monotonic_ns()) {
                self.handle(ev)?;
            }
        }
        if self.cfg.print_events {
            self.stdout.flush().context("writing to stdout")?;
        }
        Ok(full)
    }

    /// Once a second: kernel counters, thread CPU, target liveness.
    fn tick(&mut self) -> Result<bool> {
        let now = proc::monotonic_ns();
        let c = self.probes.counters()?;
        let d_ring = c.lost_ringbuf - self.last_counters.lost_ringbuf;
        let d_inflight = c.lost_inflight - self.last_counters.lost_inflight;
        self.lost.ringbuf = c.lost_ringbuf;
        self.lost.inflight = c.lost_inflight;
        self.last_counters = c;
        if d_ring + d_inflight > 0 {
            eprintln!(
                "tls-probe: lost {d_ring} events (ring buffer full) and {d_inflight} call states"
            );
            if let Some(out) = self.out.as_mut() {
                out.record(
                    "lost",
                    &LostRecord {
                        ringbuf: d_ring,
                        inflight: d_inflight,
                        decode: 0,
                        total: self.lost,
                    },
                )?;
            }
        }
        for pid in self.probes.pids() {
            if !proc::alive(pid) {
                self.probes.detach(pid);
                let comm = self
                    .targets
                    .iter()
                    .find(|t| t.pid == pid)
                    .map(|t| t.comm.clone())
                    .unwrap_or_default();
                eprintln!("tls-probe: pid {pid} ({comm}) exited");
                if let Some(out) = self.out.as_mut() {
                    out.record(
                        "target_exit",
                        &TargetExit {
                            pid,
                            comm,
                            ts_ns: now,
                        },
                    )?;
                }
                continue;
            }
            for ev in proc::thread_cpu(pid, now) {
                self.handle(ev)?;
            }
        }
        self.engine.advance(now, &mut self.changes);
        self.emit_changes()?;
        if let Some(out) = self.out.as_mut() {
            out.record("snapshot", &self.engine.snapshot())?;
        }
        if let Some(out) = self.out.as_mut() {
            out.flush()?;
        }
        Ok(!self.probes.pids().is_empty())
    }

    /// Runs until the duration ends, a signal arrives, or every target exits; then writes
    /// the summary. The summary is written on every path that gets here.
    pub async fn run(mut self) -> Result<Summary> {
        let mut events = self.events.take().context("run called twice")?;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
        let mut sighup = tokio::signal::unix::signal(SignalKind::hangup())?;
        let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
        let deadline = self.cfg.duration.map(|d| tokio::time::Instant::now() + d);
        let sleep = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        let result: Result<StopReason> = async {
            loop {
                tokio::select! {
                    guard = events.readable_mut() => {
                        let mut guard = guard.context("waiting for the ring buffer")?;
                        // The kernel signals new data only once the reader has caught up:
                        // after a full batch, stay ready and come back for the rest.
                        if !self.drain(guard.get_inner_mut())? {
                            guard.clear_ready();
                        }
                    }
                    _ = ticker.tick() => {
                        if !self.tick()? {
                            return Ok(StopReason::TargetsExited);
                        }
                    }
                    _ = &mut sleep => return Ok(StopReason::Duration),
                    _ = sigint.recv() => return Ok(StopReason::Signal),
                    _ = sigterm.recv() => return Ok(StopReason::Signal),
                    _ = sighup.recv() => return Ok(StopReason::Signal),
                }
            }
        }
        .await;
        // Whatever stopped us, read what is left and close the output with a summary.
        let reason = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = self.finish(&mut events, StopReason::Signal);
                return Err(e);
            }
        };
        self.finish(&mut events, reason)
    }

    fn finish(
        &mut self,
        events: &mut AsyncFd<RingBuf<MapData>>,
        reason: StopReason,
    ) -> Result<Summary> {
        // Detach first, so that the drain below ends however busy the targets are; then
        // drain fully (the batch limit in `drain` only keeps the loop responsive).
        for pid in self.probes.pids() {
            self.probes.detach(pid);
        }
        while self.drain(events.get_mut())? {}
        self.engine.advance(proc::monotonic_ns(), &mut self.changes);
        self.emit_changes()?;
        let c = self.probes.counters().unwrap_or(self.last_counters);
        self.lost.ringbuf = c.lost_ringbuf;
        self.lost.inflight = c.lost_inflight;
        let summary = Summary {
            stop_reason: reason,
            duration_ns: proc::monotonic_ns() - self.started_ns,
            events: self.total,
            events_by_probe: self
                .counts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            lost: self.lost,
            uprobe_hits: c.uprobe_hits,
            tracepoint_hits: c.tracepoint_hits,
            findings: self.engine.findings(),
        };
        if let Some(out) = self.out.as_mut() {
            out.record("summary", &summary)?;
            out.flush()?;
        }
        let _ = self.stdout.flush();
        for pid in self.probes.pids() {
            self.probes.detach(pid);
        }
        Ok(summary)
    }
}

/// Fails early, with what to do, when tls-probe lacks the privileges to load eBPF.
fn check_privileges() -> Result<()> {
    use nix::unistd::Uid;
    if Uid::effective().is_root() {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let has = |c: u64| eff & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "tls-probe is not running as root and lacks {}: run it with sudo, or grant the capabilities with `sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep $(which tls-probe)`",
        missing.join(" and ")
    )
}
