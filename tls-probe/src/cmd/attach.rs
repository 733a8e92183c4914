//! `tls-probe attach`: attach to running processes.
//!
//! On a terminal the findings go to the live dashboard; with `--no-tui`, or when stdout is
//! not a terminal or carries other output (`-o -`, `--events`), they print as lines on
//! stderr. Either way `-o FILE` gets the same records.

use std::{net::TcpListener, process::ExitCode, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{
    agent::{AgentConfig, Session, Summary},
    cli::{AttachArgs, OutputArgs},
    sink::{
        Sinks,
        human::HumanSink,
        metrics::MetricsSink,
        metrics_http,
        ndjson::{self, NdjsonSink},
        tui::TuiSink,
    },
    tui::{self, Dashboard, DashboardOptions},
};

/// Validates the output flags and opens the NDJSON output before anything is attached.
pub fn open_output(o: &OutputArgs) -> Result<Option<ndjson::NdjsonWriter>> {
    if let Some(d) = o.duration
        && !(d > 0.0 && d.is_finite())
    {
        bail!("--duration {d}: must be a positive number of seconds");
    }
    if o.force && o.output.is_none() {
        bail!("--force only applies with -o FILE");
    }
    o.output
        .as_deref()
        .map(|p| ndjson::open(p, o.force))
        .transpose()
}

/// Everything a session writes to, opened and bound before anything is attached, so that a
/// typo in a path or a port in use costs nothing.
pub struct Outputs {
    pub ndjson: Option<ndjson::NdjsonWriter>,
    pub metrics: Option<TcpListener>,
    /// Open the live dashboard once the probes are attached.
    pub dashboard: bool,
}

pub fn open_outputs(o: &OutputArgs) -> Result<Outputs> {
    let ndjson = open_output(o)?;
    let metrics = o
        .metrics_addr
        .as_deref()
        .map(metrics_http::bind)
        .transpose()?;
    Ok(Outputs {
        ndjson,
        metrics,
        dashboard: tui::wanted(o.no_tui, o.stdout_claimed()),
    })
}

pub fn config(o: &OutputArgs, pids: Vec<u32>) -> AgentConfig {
    AgentConfig {
        pids,
        libssl: None,
        duration: o.duration.map(Duration::from_secs_f64),
        events: o.events && o.output.is_some(),
        print_events: o.events && o.output.is_none(),
        hot: o.mode == crate::cli::ProbeMode::Full,
        children: true,
        libraries: Default::default(),
        wait_for_library: false,
        auto: o.mode == crate::cli::ProbeMode::Auto,
        window_at_start: false,
        host: None,
    }
}

/// The sinks of a session: the terminal lines, the NDJSON output and the metrics endpoint;
/// and what they said on stderr, for the dashboard to repeat. Call inside the runtime (the
/// endpoint is a task on it).
pub fn sinks(
    cfg: &AgentConfig,
    ndjson: Option<ndjson::NdjsonWriter>,
    metrics: Option<TcpListener>,
) -> Result<(Sinks, Vec<String>)> {
    let mut notices = Vec::new();
    let mut sinks = Sinks::new().with(HumanSink::new(cfg.print_events, true));
    if let Some(out) = ndjson {
        sinks.push(Box::new(NdjsonSink::new(out, cfg.events)));
    }
    if let Some(listener) = metrics {
        let addr = listener
            .local_addr()
            .context("reading the metrics address")?;
        let (sink, published) = MetricsSink::new();
        metrics_http::spawn(listener, published)?;
        sinks.push(Box::new(sink));
        let text = format!("serving Prometheus metrics at http://{addr}/metrics");
        eprintln!("tls-probe: {text}");
        notices.push(text);
    }
    Ok((sinks, notices))
}

/// Attaches and runs a session on a current-thread runtime until it stops. Once the probes
/// are in place it opens the dashboard (when wanted) and calls `attached` with it (`demo`
/// starts its load there). The dashboard is closed, and the terminal restored, when this
/// returns, whatever it returns.
pub fn run_session(
    cfg: AgentConfig,
    outputs: Outputs,
    attached: impl FnOnce(Option<&Dashboard>) -> Result<()>,
) -> Result<Summary> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (sinks, notices) = sinks(&cfg, outputs.ndjson, outputs.metrics)?;
        // Attach errors print on the normal screen: the dashboard opens only after.
        let mut session = Session::attach_with(cfg, sinks)?;
        let dash = outputs.dashboard.then(open_dashboard).flatten();
        attached(dash.as_ref())?;
        if let Some(dash) = dash {
            for text in notices {
                dash.notice(text);
            }
            let stopped = dash.stopped();
            let quit = async {
                stopped.await;
                // The terminal is back; the summary follows once the last records are read.
                eprintln!("tls-probe: the dashboard closed; finishing");
            };
            session.add_viewer(TuiSink::new(dash), quit)?;
        }
        session.run().await
    })
}

/// The dashboard on this terminal; on failure, says why and goes on with lines.
fn open_dashboard() -> Option<Dashboard> {
    match tui::start_dashboard(DashboardOptions::new(crate::agent::proc::monotonic_ns)) {
        Ok(dash) => Some(dash),
        Err(e) => {
            eprintln!("tls-probe: cannot open the dashboard ({e}); printing findings as lines");
            None
        }
    }
}

pub fn run(args: AttachArgs) -> Result<ExitCode> {
    let mut pids = args.pids.clone();
    for pid in crate::probe::discover::pids_by_comms(&args.comm)? {
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    let outputs = open_outputs(&args.output)?;
    let mut cfg = config(&args.output, pids);
    cfg.libssl = args.target.libssl.clone();
    cfg.children = !args.target.no_children;
    cfg.wait_for_library = args.wait_for_library;
    let mut dashboard = false;
    let summary = run_session(cfg, outputs, |dash| {
        dashboard = dash.is_some();
        Ok(())
    })?;
    print_summary(&summary, dashboard);
    Ok(ExitCode::SUCCESS)
}

/// The closing lines on stderr: the findings again when the dashboard hid them, and the
/// event and loss counts.
pub fn print_summary(summary: &Summary, dashboard: bool) {
    if dashboard {
        // The lines were not printed while the dashboard was up: leave the findings in the
        // scrollback.
        for f in &summary.findings {
            let severity = tui::view::fmt::severity_long(f.severity);
            eprintln!("tls-probe: {severity} {}", f.summary_line());
        }
    }
    eprintln!(
        "tls-probe: {} events in {:.1}s, {} lost in the kernel",
        summary.events,
        summary.duration_ns as f64 / 1e9,
        summary.lost.ringbuf + summary.lost.inflight
    );
}
