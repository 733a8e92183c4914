//! `cargo xtask soak`: tls-probe attached for minutes to a busy nginx (a master and 4
//! workers) in each mode, through three phases of loopback load:
//!
//! 1. churn: TLS connections with no keep-alive (wrk with `Connection: close`), about half of
//!    them full handshakes (a server with no session cache or tickets) and half resumed;
//! 2. idle: thousands of concurrent TLS connections held open with nothing sent;
//! 3. keep-alive: wrk's ordinary keep-alive load.
//!
//! Every second it samples the agent's RSS and CPU and what its NDJSON says (the engine's
//! table sizes, evictions, losses, findings). It writes a table (bench/soak.md), the samples
//! (bench/soak.json) and a plot (bench/soak.png). The goals (flat RSS under 64 MiB, no
//! loss, no finding, the summary's handshakes equal to nginx's own count) are reported, not
//! asserted: this is a benchmark.

mod nginx;
mod plot;
mod report;

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::Value;

use self::nginx::{Nginx, Served};
use crate::{
    bench::{
        machine,
        proc::{self, Guard},
    },
    setup, sh,
    sh::cmd,
};

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// TLS connections of churn per mode (no keep-alive; half to a server that cannot
    /// resume, half to one that can).
    #[arg(long, default_value_t = 1_000_000)]
    connections: u64,
    /// The churn phase ends after this many seconds even short of --connections (the
    /// connection rate of a shared 2-core machine is a few hundred a second per mode).
    #[arg(long, default_value_t = 3600)]
    churn_max_secs: u64,
    /// Concurrent idle TLS connections held open in the idle phase.
    #[arg(long, default_value_t = 10_000)]
    idle: u32,
    /// Seconds the idle connections are held.
    #[arg(long, default_value_t = 60)]
    idle_secs: u32,
    /// Seconds of keep-alive load (wrk -t2 -c100).
    #[arg(long, default_value_t = 60)]
    keepalive_secs: u32,
    /// The modes to soak, one after the other.
    #[arg(long, value_delimiter = ',', default_values_t = ["auto".to_owned(), "full".to_owned()])]
    modes: Vec<String>,
    /// A short run (20,000 connections, 1,000 idle for 10 s, 10 s of keep-alive), written
    /// to a scratch directory: checks the harness.
    #[arg(long)]
    smoke: bool,
    /// Where to write soak.{md,json,png} (default bench/, or scratch for --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    skip_setup: bool,
    /// Keep the scratch directory (nginx logs, the NDJSON of each mode).
    #[arg(long)]
    keep_temp: bool,
}

/// Which load is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Churn,
    Idle,
    Keepalive,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Churn, Phase::Idle, Phase::Keepalive];
    pub fn name(self) -> &'static str {
        match self {
            Phase::Churn => "churn",
            Phase::Idle => "idle",
            Phase::Keepalive => "keep-alive",
        }
    }
}

/// One second of a mode's run.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub phase: Phase,
    pub rss_kib: u64,
    /// The agent's CPU over the last second, % of one core.
    pub cpu_pct: f64,
    /// Sizes of the engine's tables in the latest snapshot.
    pub connections: usize,
    pub threads: usize,
    pub processes: usize,
    /// Evictions so far: connections, threads, and the `evicted` object's sum.
    pub evicted: u64,
    pub lost: u64,
    pub findings_opened: usize,
    /// Connections nginx logged so far.
    pub server_connections: u64,
}

/// What a load generator reported.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Client {
    pub requests: u64,
    pub socket_errors: u64,
    pub connections: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseResult {
    pub phase: Phase,
    pub seconds: f64,
    pub client: Client,
    pub server: Served,
    pub findings: Vec<String>,
    pub rss_end_kib: u64,
    pub rss_max_kib: u64,
    pub cpu_mean_pct: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ModeResult {
    pub mode: String,
    pub phases: Vec<PhaseResult>,
    pub samples: Vec<Sample>,
    /// From the summary.
    pub events: u64,
    pub lost: Value,
    pub uprobe_hits: u64,
    pub tracepoint_hits: u64,
    pub evicted: Value,
    pub handshakes_completed: u64,
    pub handshakes_full: u64,
    pub handshakes_resumed: u64,
    pub summary_findings: Vec<String>,
    pub stop_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SoakResults {
    pub date_utc: String,
    pub loadavg_start: Option<String>,
    pub loadavg_end: Option<String>,
    pub cpus: usize,
    pub connections_target: u64,
    pub churn_max_secs: u64,
    pub idle: u32,
    pub idle_secs: u32,
    pub keepalive_secs: u32,
    pub modes: Vec<ModeResult>,
    pub elapsed_s: f64,
}

pub fn run(args: &SoakArgs) -> Result<()> {
    let started = Instant::now();
    if !args.skip_setup {
        setup::ensure(setup::Needs::Everything)?;
    }
    if !sh::is_root() {
        bail!("the soak attaches eBPF probes to nginx: run it as root");
    }
    let (connections, idle, idle_secs, keepalive_secs) = if args.smoke {
        (20_000, 1_000, 10, 10)
    } else {
        (
            args.connections,
            args.idle,
            args.idle_secs,
            args.keepalive_secs,
        )
    };
    let churn_max = Duration::from_secs(args.churn_max_secs);
    raise_nofile(u64::from(idle) + 1024)?;
    sh::build_release_binaries()?;
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| sh::root().join("target"), |d| sh::root().join(d))
        .join("release");
    let binary = release.join("tls-probe");
    let scratch = proc::TempDir::new(args.keep_temp)?;
    let date_utc = machine::date_utc();
    let loadavg_start = machine::loadavg();
    let mut modes = Vec::new();
    for mode in &args.modes {
        let dir = scratch.path().join(mode);
        fs::create_dir_all(&dir)?;
        let load = Load {
            connections,
            churn_max,
            idle,
            idle_secs,
            keepalive_secs,
        };
        modes.push(
            run_mode(&binary, mode, &dir, &load).with_context(|| format!("soak in {mode} mode"))?,
        );
    }
    let results = SoakResults {
        date_utc,
        loadavg_start,
        loadavg_end: machine::loadavg(),
        cpus: thread::available_parallelism().map_or(1, |n| n.get()),
        connections_target: connections,
        churn_max_secs: args.churn_max_secs,
        idle,
        idle_secs,
        keepalive_secs,
        modes,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    let out = match (&args.out, args.smoke) {
        (Some(out), _) => out.clone(),
        (None, true) => scratch.path().join("results"),
        (None, false) => sh::root().join("bench"),
    };
    fs::create_dir_all(&out)?;
    let markdown = report::markdown(&results);
    fs::write(out.join("soak.md"), &markdown)?;
    fs::write(
        out.join("soak.json"),
        serde_json::to_string_pretty(&results)? + "\n",
    )?;
    plot::plot(&results, &out.join("soak.png"))?;
    eprintln!("\n{markdown}");
    eprintln!(
        "soak: wrote {}/soak.{{md,json,png}} ({})",
        out.display(),
        sh::secs(started)
    );
    Ok(())
}

struct Load {
    connections: u64,
    churn_max: Duration,
    idle: u32,
    idle_secs: u32,
    keepalive_secs: u32,
}

/// wrk and idle connections need many fds (wrk and nginx inherit this limit): the soft
/// limit is raised to `want`, within the hard limit (raising that needs CAP_SYS_RESOURCE,
/// which containers often lack).
fn raise_nofile(want: u64) -> Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if hard < want {
        bail!(
            "wrk needs {want} open files for the idle connections, and the hard limit \
             (ulimit -Hn) is {hard}: raise it, or pass a smaller --idle"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, soft.max(want), hard)
        .with_context(|| format!("raising RLIMIT_NOFILE to {want} for wrk and nginx"))
}

fn run_mode(binary: &Path, mode: &str, dir: &Path, load: &Load) -> Result<ModeResult> {
    eprintln!("soak: {mode} mode");
    let mut nginx = Nginx::start(dir)?;
    let ndjson = dir.join("tls-probe.ndjson");
    let stderr = dir.join("tls-probe.stderr");
    let mut command = cmd(binary);
    command
        .args([
            "attach",
            "--pid",
            &nginx.master().to_string(),
            "--mode",
            mode,
        ])
        .arg("-o")
        .arg(&ndjson)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr)?);
    eprintln!("+ {}", sh::display(&command));
    let mut agent = Guard::new("tls-probe", command.spawn()?);
    proc::wait_for(
        "tls-probe to attach (a `start` line)",
        Duration::from_secs(120),
        || Ok(agent.exited()?.is_none()),
        || {
            let text = fs::read_to_string(&ndjson).ok()?;
            text.starts_with(r#"{"type":"start""#).then_some(())
        },
    )
    .with_context(|| proc::tail(&stderr, 3000))?;
    let mut mon = Monitor::new(agent.pid(), &ndjson);
    let mut phases = Vec::new();
    let mut served_total = Served::default();

    // Churn until nginx has logged the connections asked for.
    let wrk_args = |port: u16, extra: &[&str]| {
        let mut a: Vec<String> = ["-t1", "-c16", "-d3600s", "-H", "Connection: close"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a.push(format!("https://127.0.0.1:{port}/"));
        a
    };
    let full = wrk(dir, "churn-full", &wrk_args(nginx.full_port, &[]))?;
    let resumed = wrk(dir, "churn-resumed", &wrk_args(nginx.resumed_port, &[]))?;
    let mut clients = vec![full, resumed];
    let churn_start = Instant::now();
    let phase = mon.run_phase(
        Phase::Churn,
        &mut nginx,
        &mut served_total,
        &mut clients,
        |s| s.connections >= load.connections || churn_start.elapsed() >= load.churn_max,
    )?;
    phases.push(phase);

    // Idle: each connection's first request goes at once (so nginx logs it), the next in
    // an hour; wrk ends after idle_secs.
    let per_thread = load.idle.div_ceil(2);
    let script = dir.join("idle.lua");
    fs::write(
        &script,
        format!(
            "local n = 0\nfunction delay()\n  n = n + 1\n  if n <= {per_thread} then return 0 end\n  return 3600000\nend\n"
        ),
    )?;
    let idle_args: Vec<String> = vec![
        "-t2".into(),
        format!("-c{}", per_thread * 2),
        format!("-d{}s", load.idle_secs),
        "-s".into(),
        script.display().to_string(),
        format!("https://127.0.0.1:{}/", nginx.resumed_port),
    ];
    let mut clients = vec![wrk(dir, "idle", &idle_args)?];
    let phase = mon.run_phase(
        Phase::Idle,
        &mut nginx,
        &mut served_total,
        &mut clients,
        |_| false,
    )?;
    phases.push(phase);

    let ka_args: Vec<String> = vec![
        "-t2".into(),
        "-c100".into(),
        format!("-d{}s", load.keepalive_secs),
        format!("https://127.0.0.1:{}/", nginx.resumed_port),
    ];
    let mut clients = vec![wrk(dir, "keepalive", &ka_args)?];
    let phase = mon.run_phase(
        Phase::Keepalive,
        &mut nginx,
        &mut served_total,
        &mut clients,
        |_| false,
    )?;
    phases.push(phase);

    let stopping = Instant::now();
    let status = agent
        .stop(Signal::SIGINT, Duration::from_secs(180))
        .with_context(|| proc::tail(&stderr, 3000))?;
    let stop_s = stopping.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "tls-probe exited with {status}; {}",
            proc::tail(&stderr, 3000)
        );
    }
    mon.read_new();
    let summary = mon
        .summary
        .take()
        .with_context(|| format!("{} has no summary line", ndjson.display()))?;
    drop(nginx);
    Ok(mode_result(mode, phases, mon.samples, &summary, stop_s))
}

fn mode_result(
    mode: &str,
    phases: Vec<PhaseResult>,
    samples: Vec<Sample>,
    s: &Value,
    stop_s: f64,
) -> ModeResult {
    let procs = s["processes"].as_array().cloned().unwrap_or_default();
    let hs = |field: &str| -> u64 {
        procs
            .iter()
            .filter_map(|p| p["handshakes"][field].as_u64())
            .sum()
    };
    ModeResult {
        mode: mode.to_owned(),
        phases,
        samples,
        events: s["events"].as_u64().unwrap_or(0),
        lost: s["lost"].clone(),
        uprobe_hits: s["uprobe_hits"].as_u64().unwrap_or(0),
        tracepoint_hits: s["tracepoint_hits"].as_u64().unwrap_or(0),
        evicted: s["evicted"].clone(),
        handshakes_completed: hs("completed_total"),
        handshakes_full: hs("full_total"),
        handshakes_resumed: hs("resumed_total"),
        summary_findings: s["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| format!("{} (pid {})", f["kind"].as_str().unwrap_or("?"), f["pid"]))
            .collect(),
        stop_s,
    }
}

/// `wrk ARGS`, its output to DIR/wrk-TAG.out.
fn wrk(dir: &Path, tag: &str, args: &[String]) -> Result<(Guard, PathBuf)> {
    let out = dir.join(format!("wrk-{tag}.out"));
    let mut command = cmd("wrk");
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out)?)
        .stderr(Stdio::null());
    eprintln!("+ {}", sh::display(&command));
    let child: Child = command
        .spawn()
        .context("could not start wrk: is it installed (`cargo xtask setup`)?")?;
    Ok((Guard::new(format!("wrk {tag}"), child), out))
}

/// What wrk printed: `N requests in ...` and `Socket errors: connect A, read B, write C,
/// timeout D`.
fn wrk_counts(text: &str) -> Client {
    let mut c = Client::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(n) = line.split_once(" requests in").map(|(n, _)| n) {
            c.requests += n.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            c.socket_errors += rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    c
}

/// Follows the agent: its /proc numbers and its NDJSON, once a second.
struct Monitor {
    pid: u32,
    ndjson: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    start: Instant,
    last: Option<(Instant, u64)>,
    samples: Vec<Sample>,
    latest: Sample,
    findings: Vec<(Phase, String)>,
    phase: Phase,
    summary: Option<Value>,
}

impl Monitor {
    fn new(pid: u32, ndjson: &Path) -> Self {
        Self {
            pid,
            ndjson: ndjson.to_owned(),
            offset: 0,
            partial: Vec::new(),
            start: Instant::now(),
            last: None,
            samples: Vec::new(),
            latest: Sample {
                t_s: 0.0,
                phase: Phase::Churn,
                rss_kib: 0,
                cpu_pct: 0.0,
                connections: 0,
                threads: 0,
                processes: 0,
                evicted: 0,
                lost: 0,
                findings_opened: 0,
                server_connections: 0,
            },
            findings: Vec::new(),
            phase: Phase::Churn,
            summary: None,
        }
    }

    /// Samples once a second while the clients run; when `done` says the phase has done
    /// its work, stops them with SIGINT (wrk prints its counts then).
    fn run_phase(
        &mut self,
        phase: Phase,
        nginx: &mut Nginx,
        served_total: &mut Served,
        clients: &mut Vec<(Guard, PathBuf)>,
        done: impl Fn(&Served) -> bool,
    ) -> Result<PhaseResult> {
        eprintln!("soak: phase {}", phase.name());
        self.phase = phase;
        let begun = Instant::now();
        let first_sample = self.samples.len();
        let findings_before = self.findings.len();
        let mut served = Served::default();
        let mut next = Instant::now();
        loop {
            next += Duration::from_secs(1);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            let s = nginx.served();
            add(&mut served, &s);
            add(served_total, &s);
            self.sample(served_total.connections);
            if self.samples.len().is_multiple_of(10) {
                let l = &self.latest;
                eprintln!(
                    "soak: {:>5.0} s {}: nginx {} connections ({} resumed), agent {} MiB {:.0}% CPU, engine {} conns, lost {}, findings {}",
                    l.t_s,
                    phase.name(),
                    served.connections,
                    served.resumed,
                    l.rss_kib / 1024,
                    l.cpu_pct,
                    l.connections,
                    l.lost,
                    l.findings_opened
                );
            }
            let mut all_exited = true;
            for (g, _) in clients.iter_mut() {
                all_exited &= g.exited()?.is_some();
            }
            if all_exited || done(&served) {
                break;
            }
        }
        let mut client = Client::default();
        for (g, out) in clients.drain(..) {
            g.stop(Signal::SIGINT, Duration::from_secs(30))?;
            let c = wrk_counts(&fs::read_to_string(&out).unwrap_or_default());
            client.requests += c.requests;
            client.socket_errors += c.socket_errors;
        }
        client.connections = match phase {
            Phase::Churn => client.requests,
            _ => 0,
        };
        // nginx writes its logs each second: the last requests of the phase.
        thread::sleep(Duration::from_millis(1500));
        let s = nginx.served();
        add(&mut served, &s);
        add(served_total, &s);
        let samples = &self.samples[first_sample..];
        let cpu_mean_pct =
            samples.iter().map(|s| s.cpu_pct).sum::<f64>() / samples.len().max(1) as f64;
        Ok(PhaseResult {
            phase,
            seconds: begun.elapsed().as_secs_f64(),
            client,
            server: served,
            findings: self.findings[findings_before..]
                .iter()
                .map(|(_, k)| k.clone())
                .collect(),
            rss_end_kib: samples.last().map_or(0, |s| s.rss_kib),
            rss_max_kib: samples.iter().map(|s| s.rss_kib).max().unwrap_or(0),
            cpu_mean_pct,
        })
    }

    fn sample(&mut self, server_connections: u64) {
        self.read_new();
        let now = Instant::now();
        let ticks = proc::cpu_ticks(self.pid).unwrap_or(0);
        let cpu_pct = match self.last {
            Some((at, t)) => {
                100.0 * proc::ticks_to_secs(ticks.saturating_sub(t))
                    / now.duration_since(at).as_secs_f64().max(1e-3)
            }
            None => 0.0,
        };
        self.last = Some((now, ticks));
        let rss_kib = i32::try_from(self.pid)
            .ok()
            .and_then(|p| procfs::process::Process::new(p).ok())
            .and_then(|p| p.status().ok())
            .and_then(|s| s.vmrss)
            .unwrap_or(0);
        let l = &mut self.latest;
        l.t_s = now.duration_since(self.start).as_secs_f64();
        l.phase = self.phase;
        l.rss_kib = rss_kib;
        l.cpu_pct = cpu_pct;
        l.findings_opened = self.findings.len();
        l.server_connections = server_connections;
        self.samples.push(l.clone());
    }

    /// Reads the whole lines the agent wrote since the last call.
    fn read_new(&mut self) {
        let Ok(mut f) = fs::File::open(&self.ndjson) else {
            return;
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let lines: Vec<u8> = self.partial.drain(..=end).collect();
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            let d = &v["data"];
            match v["type"].as_str() {
                Some("snapshot") => {
                    let len = |k: &str| d[k].as_array().map_or(0, Vec::len);
                    self.latest.connections = len("connections");
                    self.latest.threads = len("threads");
                    self.latest.processes = len("processes");
                    let evicted_obj: u64 = d["evicted"]
                        .as_object()
                        .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
                    self.latest.evicted = d["evicted_connections_total"].as_u64().unwrap_or(0)
                        + d["evicted_threads_total"].as_u64().unwrap_or(0)
                        + evicted_obj;
                }
                Some("lost") => {
                    self.latest.lost = d["total"]
                        .as_object()
                        .map_or(0, |o| o.values().filter_map(Value::as_u64).sum());
                }
                Some("finding") if d["change"] == "opened" => {
                    let f = &d["finding"];
                    self.findings.push((
                        self.phase,
                        format!("{} (pid {})", f["kind"].as_str().unwrap_or("?"), f["pid"]),
                    ));
                }
                Some("summary") => self.summary = Some(d.clone()),
                _ => {}
            }
        }
    }
}

fn add(total: &mut Served, s: &Served) {
    total.requests += s.requests;
    total.connections += s.connections;
    total.resumed += s.resumed;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_counts_requests_and_socket_errors() {
        let out = "Running 10s test\n  2 threads and 100 connections\n  123456 requests in 10.00s, 1.2MB read\n  Socket errors: connect 3, read 4, write 0, timeout 5\nRequests/sec: 12345.6\n";
        let c = wrk_counts(out);
        assert_eq!((c.requests, c.socket_errors), (123_456, 12));
    }
}
