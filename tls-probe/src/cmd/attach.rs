//! `tls-probe attach`: attach to running processes.

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
    },
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
}

pub fn open_outputs(o: &OutputArgs) -> Result<Outputs> {
    let ndjson = open_output(o)?;
    let metrics = o
        .metrics_addr
        .as_deref()
        .map(metrics_http::bind)
        .transpose()?;
    Ok(Outputs { ndjson, metrics })
}

pub fn config(o: &OutputArgs, pids: Vec<u32>) -> AgentConfig {
    AgentConfig {
        pids,
        libssl: None,
        duration: o.duration.map(Duration::from_secs_f64),
        events: o.events && o.output.is_some(),
        print_events: o.events && o.output.is_none(),
        hot: o.mode == crate::cli::ProbeMode::Full,
    }
}

/// The sinks of a session: the terminal, the NDJSON output and the metrics endpoint. Call
/// inside the runtime (the endpoint is a task on it).
pub fn sinks(cfg: &AgentConfig, outputs: Outputs) -> Result<Sinks> {
    let mut sinks = Sinks::new().with(HumanSink::new(cfg.print_events, true));
    if let Some(out) = outputs.ndjson {
        sinks.push(Box::new(NdjsonSink::new(out, cfg.events)));
    }
    if let Some(listener) = outputs.metrics {
        let addr = listener
            .local_addr()
            .context("reading the metrics address")?;
        let (sink, published) = MetricsSink::new();
        metrics_http::spawn(listener, published)?;
        sinks.push(Box::new(sink));
        eprintln!("tls-probe: serving Prometheus metrics at http://{addr}/metrics");
    }
    Ok(sinks)
}

/// Attaches and runs a session on a current-thread runtime until it stops.
pub fn run_session(cfg: AgentConfig, outputs: Outputs) -> Result<Summary> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let sinks = sinks(&cfg, outputs)?;
        Session::attach_with(cfg, sinks)?.run().await
    })
}

pub fn run(args: AttachArgs) -> Result<ExitCode> {
    let outputs = open_outputs(&args.output)?;
    let mut cfg = config(&args.output, args.pids.clone());
    cfg.libssl = args.libssl.clone();
    let summary = run_session(cfg, outputs)?;
    eprintln!(
        "tls-probe: {} events in {:.1}s, {} lost in the kernel",
        summary.events,
        summary.duration_ns as f64 / 1e9,
        summary.lost.ringbuf + summary.lost.inflight
    );
    Ok(ExitCode::SUCCESS)
}
