//! One tls-probe run against a set of live processes: the only owner of the run's state.
//! Events go ring buffer -> decode -> tracker -> engine, and every output record goes to the
//! [`Sinks`] from one place.
//!
//! A viewer (the dashboard) joins after attach with [`Session::add_viewer`]: one more sink,
//! and a future that resolves when its user quits. While a viewer is open the session
//! outlives its targets: once every target has exited it writes the summary as usual, then
//! waits for the user (or a signal) so that the findings stay on screen.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    path::PathBuf,
    pin::Pin,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::SignalKind,
};

/// How often the ring buffer is read when no record woke the reader.
const RING_POLL: Duration = Duration::from_millis(20);

mod auto;
mod callsites;
mod host;
mod late;
mod pump;
mod sockio;
mod tick;
mod tree;

use super::{handoff, peers, privileges::check_privileges, proc, stats::Meter};
use crate::{
    Pipeline,
    decode::decode,
    engine::Config as EngineConfig,
    event::Event,
    probe::{LinkKind, Probes, TlsLibrary, discover},
    sink::{
        ClockAnchor, Flush, ProbeStats, Record, SCHEMA_VERSION, Sink, Sinks, Start, StopReason,
        Summary, Target, UprobeLinks,
        human::HumanSink,
        ndjson::{NdjsonSink, NdjsonWriter},
        record::ProbeMode,
    },
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
    /// Also trace the descendants of each pid: those there at attach, and those forked
    /// later (found once a second).
    pub children: bool,
    /// TLS libraries known for a pid before it maps them (`run`: the library the command
    /// will load, attached before it runs).
    pub libraries: BTreeMap<u32, TlsLibrary>,
    /// A pid without a TLS library yet is watched until it loads one, instead of an error.
    pub wait_for_library: bool,
    /// `--mode auto`: the per-call uprobes go on only for suspicious processes, for a
    /// while (`hot` is then false).
    pub auto: bool,
    /// `--mode auto` for a command started under tls-probe (`run`): each target gets one
    /// window of per-call probes as it starts, and the socket I/O tracepoints are on from the
    /// start, so that its first handshake and calls are seen. Attaching to a running process
    /// opens no window: there it would cost a busy server what full mode costs.
    pub window_at_start: bool,
    /// `watch`: trace every process of the host that runs OpenSSL, now and as they appear,
    /// instead of `pids`.
    pub host: Option<super::host::HostConfig>,
}

pub struct Session {
    cfg: AgentConfig,
    probes: Probes,
    events: Option<AsyncFd<RingBuf<MapData>>>,
    targets: Vec<Target>,
    /// Tracker + engine: the step `report` replays too.
    pipeline: Pipeline,
    /// The ring buffer's side: how far behind, what came, what was lost.
    pump: pump::Pump,
    /// Where records go.
    out: Output,
    started_ns: u64,
    /// Descendants not traced (no TLS library, or the attach failed): not tried again.
    skipped: BTreeSet<u32>,
    /// Processes watched for a TLS library loaded after attach, and for exec.
    late: late::Watch,
    /// `--mode auto`'s controller; None in the other modes.
    auto: Option<auto::Auto>,
    /// Outside full mode: when the socket I/O tracepoints are on.
    gate: Option<sockio::Gate>,
    /// Peers of connections made before attach, looked up in /proc.
    peers: peers::Lookups,
    /// `watch`: host-wide discovery and the cost budget.
    host: Option<host::HostState>,
    /// Stacks unwound into call sites, attached to the findings sent.
    call_sites: crate::callsite::Store,
}

/// What [`Session::add_viewer`] waits on.
pub type Quit = Pin<Box<dyn Future<Output = ()>>>;

/// Where a run's records go, and what they need to be written.
struct Output {
    sinks: Sinks,
    /// The first record, for a sink that joins later.
    start: Start,
    /// Rates from the kernel's counters, for the sinks that show them live.
    meter: Meter,
    /// The probes' rates at the last tick.
    last_stats: ProbeStats,
    /// Resolves when the viewer's user quits; None without a viewer.
    viewer: Option<Quit>,
}

impl Session {
    /// [`Session::attach_with`] the human lines on the terminal and, when given, the NDJSON
    /// output.
    pub fn attach(cfg: AgentConfig, out: Option<NdjsonWriter>) -> Result<Self> {
        let mut sinks = Sinks::new().with(HumanSink::new(cfg.print_events, true));
        if let Some(out) = out {
            sinks.push(Box::new(NdjsonSink::new(out, cfg.events)));
        }
        Self::attach_with(cfg, sinks)
    }

    /// Finds each target's TLS library, loads the programs and attaches. Sends `start`.
    pub fn attach_with(cfg: AgentConfig, sinks: Sinks) -> Result<Self> {
        let mut host = cfg.host.clone().map(host::HostState::new);
        if cfg.pids.is_empty() && host.is_none() {
            bail!("no target: pass --pid PID");
        }
        let mut libs: Vec<(u32, TlsLibrary)> = Vec::new();
        if let Some(h) = &mut host {
            let found = h
                .scanner
                .scan(proc::monotonic_ns(), &std::collections::HashSet::new());
            let max = h.scanner.config().max_processes;
            for (pid, lib, _) in found.into_iter().take(max) {
                libs.push((pid, lib));
            }
        }
        let mut waiting = Vec::new();
        for &pid in &cfg.pids {
            match tree::library(&cfg, pid) {
                Ok(lib) => libs.push((pid, lib)),
                Err(e) if cfg.wait_for_library && e.is_not_found() => waiting.push(pid),
                Err(e) => return Err(e.into()),
            }
        }
        // Descendants there now: one without a TLS library is skipped with a notice.
        let mut skipped = BTreeSet::new();
        let mut parents = BTreeMap::new();
        if cfg.children {
            for (pid, parent) in discover::descendants(&cfg.pids) {
                if libs.iter().any(|(p, _)| *p == pid) {
                    continue;
                }
                match tree::library(&cfg, pid) {
                    Ok(lib) => {
                        libs.push((pid, lib));
                        parents.insert(pid, parent);
                    }
                    Err(e) => {
                        eprintln!("tls-probe: skipping pid {pid}, child of {parent}: {e}");
                        skipped.insert(pid);
                    }
                }
            }
        }
        check_privileges()?;
        // Full mode keeps the socket I/O tracepoints on. The other modes' gate attaches them
        // when it wants them (sockio.rs), and for a grace after attach when the targets are
        // quiet enough that they cost nothing much: connections made then get their fds.
        let quiet =
            !cfg.hot && sockio::quiet_at_attach(&libs.iter().map(|l| l.0).collect::<Vec<_>>());
        let mut probes = Probes::load(cfg.hot || quiet || (cfg.auto && cfg.window_at_start))?;
        let ring = probes.take_events()?;
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for as long as
        // the AsyncFd that owns the RingBuf lives.
        let events = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("registering the ring buffer with the event loop")?;
        let mut targets = Vec::new();
        for (pid, lib) in libs {
            match tree::attach_target(&mut probes, pid, lib, cfg.hot) {
                Ok(target) => targets.push(target),
                Err(e) if host.is_some() => {
                    // One process that cannot be traced does not stop a host-wide watch.
                    eprintln!(
                        "tls-probe: not tracing pid {pid} ({}): {e:#}",
                        discover::comm(pid)
                    );
                    if let Some(h) = &mut host {
                        h.scanner.pass(pid, proc::monotonic_ns());
                    }
                }
                Err(e) => match parents.get(&pid) {
                    Some(parent) => {
                        eprintln!("tls-probe: skipping pid {pid}, child of {parent}: {e:#}");
                        skipped.insert(pid);
                    }
                    None => return Err(e),
                },
            }
        }
        let now = proc::monotonic_ns();
        let start = Start {
            schema_version: SCHEMA_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            targets: targets.clone(),
            probe_mode: if cfg.auto {
                ProbeMode::Auto
            } else if cfg.hot {
                ProbeMode::Full
            } else {
                ProbeMode::Light
            },
            probe_modes: auto::mode_descriptions(),
            uprobe_links: match probes.link_kind() {
                LinkKind::Multi => UprobeLinks::UprobeMulti,
                LinkKind::PerFunction => UprobeLinks::PerFunction,
            },
            missing_tracepoints: probes
                .missing_tracepoints()
                .iter()
                .map(|&name| name.to_owned())
                .collect(),
            events: cfg.events,
            clock: ClockAnchor {
                monotonic_ns: now,
                unix_ns: proc::wall_ns(),
            },
        };
        let mut session = Self {
            probes,
            events: Some(events),
            targets,
            pipeline: Pipeline::new(EngineConfig::default()),
            pump: pump::Pump::default(),
            out: Output {
                sinks,
                start,
                meter: Meter::default(),
                last_stats: ProbeStats::default(),
                viewer: None,
            },
            started_ns: now,
            skipped,
            late: late::Watch::new(waiting),
            auto: cfg.auto.then(auto::Auto::new),
            gate: (!cfg.hot)
                .then(|| sockio::Gate::new(quiet.then(|| now + sockio::ATTACH_GRACE_NS))),
            peers: peers::Lookups::default(),
            host,
            call_sites: crate::callsite::Store::default(),
            cfg,
        };
        for t in &session.targets {
            session.late.note_exe(t.pid);
            session.call_sites.watch(t.pid);
        }
        for t in &session.targets {
            session.pipeline.set_comm(t.pid, &t.comm);
        }
        session
            .out
            .sinks
            .record(Record::Start(&session.out.start))?;
        session.out.sinks.flush(Flush::Tick)?;
        for pid in session.probes.pids() {
            session.auto_add(pid)?;
        }
        // Registrations made before we attached are only in /proc.
        for pid in session.probes.pids() {
            for epfd in proc::epoll_fds(pid) {
                session.pipeline.tracker_mut().mark_seeded(pid, epfd);
                for ev in proc::epoll_registrations(pid, epfd, now) {
                    session.handle(ev)?;
                }
            }
            session.seed_peers(pid, now)?;
            // A first CPU sample now, so a finding in the first second has the thread's CPU.
            for ev in proc::thread_cpu(pid, now) {
                session.handle(ev)?;
            }
        }
        Ok(session)
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Adds a sink that owns the terminal (the dashboard): it gets the `start` record and
    /// the state so far, the other sinks stop writing to the terminal, and the run ends when
    /// `quit` resolves.
    pub fn add_viewer(
        &mut self,
        mut sink: impl Sink + 'static,
        quit: impl Future<Output = ()> + 'static,
    ) -> Result<()> {
        self.out.sinks.quiet();
        sink.record(Record::Start(&self.out.start))?;
        sink.record(Record::Snapshot(&self.snapshot()))?;
        self.out.sinks.push(Box::new(sink));
        self.out.viewer = Some(Box::pin(quit));
        Ok(())
    }

    /// The peers of every TCP socket `pid` has now: connections made before attach had no
    /// `accept` or `connect` to tell them.
    fn seed_peers(&mut self, pid: u32, now: u64) -> Result<()> {
        let events = peers::peer_events(pid, now, None);
        self.peers.mark_all(pid, &events);
        for ev in events {
            self.handle(ev)?;
        }
        Ok(())
    }

    /// One event through the pipeline: tracker, counts, sinks, engine.
    fn handle(&mut self, mut ev: Event) -> Result<()> {
        if let crate::event::EventKind::TaskExit {
            group_dead: true, ..
        } = ev.kind
        {
            self.target_exited(ev.pid, ev.ts_ns)?;
        }
        let Self {
            pipeline,
            peers,
            auto,
            gate,
            pump,
            out,
            ..
        } = self;
        pipeline.push(&mut ev, |ev, engine| {
            peers.observe(ev, |pid, fd| engine.peer_known(pid, fd));
            if let Some(auto) = auto {
                auto.observe(ev);
            }
            if let Some(gate) = gate {
                gate.observe(ev);
            }
            pump.count(pump::probe_of(ev));
            if out.sinks.wants_events() {
                out.sinks.record(Record::Event(ev))?;
            }
            Ok::<(), anyhow::Error>(())
        })?;
        self.emit_changes()
    }

    /// The engine's snapshot, with what the probes are doing.
    fn snapshot(&self) -> crate::engine::Snapshot {
        let mut snapshot = self.pipeline.snapshot();
        snapshot.probes = Some(self.probe_status());
        snapshot.evicted = self.evicted(snapshot.evicted);
        snapshot
    }

    /// The engine's evictions with the tracker's and the peer lookups'.
    fn evicted(&self, engine: crate::bounds::Evicted) -> crate::bounds::Evicted {
        let mut e = engine;
        e.add(&self.pipeline.tracker().evicted());
        e.peer_lookups += self.peers.evicted();
        e
    }

    /// Hands the finding changes the engine produced to the sinks.
    fn emit_changes(&mut self) -> Result<()> {
        let mut first = Ok(());
        let changes: Vec<_> = self.pipeline.take_changes().collect();
        for mut change in changes {
            self.with_call_sites(&mut change.finding);
            if let Err(e) = self.out.sinks.record(Record::Finding(&change))
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }

    /// Handles up to one batch of events from the ring buffer; returns whether the batch
    /// limit stopped it (more may be waiting).
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<bool> {
        let mut batch = Vec::new();
        let mut full = false;
        while let Some(item) = ring.next() {
            if let Some(stack) = crate::decode::decode_stack(&item) {
                match stack {
                    Ok(s) => self.call_sites.ingest(&s, proc::monotonic_ns()),
                    Err(err) => {
                        self.pump.undecodable();
                        log::debug!("bad stack record: {err}");
                    }
                }
                continue;
            }
            match decode(&item) {
                Ok(ev) => batch.push(ev),
                Err(err) => {
                    self.pump.undecodable();
                    log::debug!("bad record: {err}");
                }
            }
            if batch.len() >= 1024 {
                full = true;
                break;
            }
        }
        if let Some(newest) = batch.iter().map(|e| e.ts_ns).max() {
            self.pump.read(newest, proc::monotonic_ns());
        }
        for ev in batch {
            self.handle(ev)?;
        }
        for (pid, epfd) in self.pipeline.tracker_mut().take_pending_seeds() {
            for ev in proc::epoll_registrations(pid, epfd, proc::monotonic_ns()) {
                self.handle(ev)?;
            }
        }
        for ev in self.peers.resolve_due(proc::monotonic_ns()) {
            self.handle(ev)?;
        }
        self.out.sinks.flush(Flush::Batch)?;
        Ok(full)
    }

    /// Runs until the duration ends, a signal arrives, the viewer's user quits, or every
    /// target exits; then sends the summary. With a viewer, when every target has exited
    /// it then waits for the user to quit (or a signal): `--duration` bounds the tracing,
    /// and there is nothing left to trace. On an error (e.g. the output's disk is full) it
    /// stops at once: what the sinks have is flushed when they still take it, and no summary
    /// is sent.
    pub async fn run(mut self) -> Result<Summary> {
        let mut events = self.events.take().context("run called twice")?;
        let viewer = self.out.viewer.is_some();
        let mut quit: Quit = self
            .out
            .viewer
            .take()
            .unwrap_or_else(|| Box::pin(std::future::pending()));
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // `--mode auto` decides ten times a second, so that an escalation starts well
        // within the time a pathology must be flagged in.
        let mut escalation = tokio::time::interval(Duration::from_millis(100));
        escalation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // The probes submit records without waking the reader (a wakeup costs the target
        // an interrupt per record; see tls-probe-ebpf's util::wakeup_flags) unless the
        // buffer fills up: read it on a short timer.
        let mut scan = tokio::time::interval(super::host::SCAN_INTERVAL);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut poll = tokio::time::interval(RING_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
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
                        self.pump.behind = self.drain(guard.get_inner_mut())?;
                        if !self.pump.behind {
                            guard.clear_ready();
                        } else {
                            // Still behind: the ring buffer stays ready, and this task would
                            // never let the runtime drive its timers, starving the ticker
                            // (no lost records, CPU samples or snapshots while a busy target
                            // outruns the reader). Yield so the timer and signals get polled.
                            drop(guard);
                            tokio::task::yield_now().await;
                        }
                    }
                    _ = poll.tick() => {
                        self.pump.behind = self.drain(events.get_mut())?;
                        if self.pump.behind {
                            poll.reset_immediately();
                        }
                    }
                    _ = ticker.tick() => {
                        if !self.tick()? {
                            return Ok(StopReason::TargetsExited);
                        }
                    }
                    _ = escalation.tick(), if self.auto.is_some() || self.gate.is_some() => {
                        self.auto_step()?;
                    }
                    _ = scan.tick(), if self.host.is_some() => {
                        self.host_scan()?;
                    }
                    _ = &mut sleep => return Ok(StopReason::Duration),
                    // q or Ctrl-C in the dashboard: in raw mode Ctrl-C is a key, not SIGINT.
                    _ = &mut quit => return Ok(StopReason::Signal),
                    _ = sigint.recv() => return Ok(StopReason::Signal),
                    _ = sigterm.recv() => return Ok(StopReason::Signal),
                    _ = sighup.recv() => return Ok(StopReason::Signal),
                }
            }
        }
        .await;
        match result {
            Ok(reason) => {
                let summary = self.finish(&mut events, reason)?;
                if viewer && reason == StopReason::TargetsExited {
                    tokio::select! {
                        _ = &mut quit => {}
                        _ = sigint.recv() => {}
                        _ = sigterm.recv() => {}
                        _ = sighup.recv() => {}
                    }
                }
                Ok(summary)
            }
            Err(e) => {
                let _ = self.out.sinks.flush(Flush::Tick);
                self.detach_all();
                Err(e)
            }
        }
    }

    /// Detaches the uprobes, each link on its own thread (their probe points go within
    /// ~20 ms, the kernel's synchronisation after that within ~100 ms), then hands the
    /// tracepoints and every other BPF object to a process that closes them as it exits
    /// ([`handoff`]): tls-probe itself is gone ~0.1 s after it was told to stop.
    fn detach_all(&mut self) {
        let t = std::time::Instant::now();
        for pid in self.probes.pids() {
            self.probes.detach(pid);
        }
        self.probes.wait_detached();
        handoff::hand_off_bpf_fds();
        log::debug!("stop: detached in {:?}", t.elapsed());
    }

    /// Detaches, reads what is left in the ring buffer, closes the engine's clock and sends
    /// the summary.
    fn finish(
        &mut self,
        events: &mut AsyncFd<RingBuf<MapData>>,
        reason: StopReason,
    ) -> Result<Summary> {
        // Silence the targets first, so that the drain below ends however busy they are;
        // write the summary; only then pay for the slow uprobe detach.
        for pid in self.probes.pids() {
            self.probes.silence(pid);
        }
        let summary = self.final_records(events, reason);
        self.detach_all();
        summary
    }

    fn final_records(
        &mut self,
        events: &mut AsyncFd<RingBuf<MapData>>,
        reason: StopReason,
    ) -> Result<Summary> {
        // Drain fully: the batch limit in `drain` only keeps the loop responsive.
        while self.drain(events.get_mut())? {}
        let end = proc::monotonic_ns();
        self.pipeline.advance(end);
        self.emit_changes()?;
        self.report_lost(end)?;
        self.send_stats(end);
        let c = *self.pump.counters();
        let snapshot = self.pipeline.snapshot();
        let summary = Summary {
            stop_reason: reason,
            end_ns: end,
            duration_ns: end.saturating_sub(self.started_ns),
            events: self.pump.total(),
            events_by_probe: self.pump.by_probe(),
            lost: self.pump.lost(),
            uprobe_hits: c.uprobe_hits,
            tracepoint_hits: c.tracepoint_hits,
            memory_bio_disagreements: self.pipeline.tracker().bio_disagreements,
            probes: Some(self.probe_status()),
            evicted: self.evicted(snapshot.evicted),
            processes: snapshot.processes,
            findings: self
                .pipeline
                .findings()
                .into_iter()
                .map(|mut f| {
                    f.call_sites = self.call_sites.summarize(&f);
                    f
                })
                .collect(),
        };
        self.out.sinks.record(Record::Summary(&summary))?;
        self.out.sinks.flush(Flush::Tick)?;
        Ok(summary)
    }
}
