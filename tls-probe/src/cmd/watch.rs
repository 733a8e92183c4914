//! `tls-probe watch`: the whole host, unattended (a systemd service, a DaemonSet pod).
//!
//! The same session as `attach`, with host-wide discovery instead of a pid list
//! ([`crate::agent::host`]), the host-wide cost budget ([`crate::agent::budget`]), findings
//! as lines on stderr (the journal), `/metrics` with a bounded number of labelled
//! processes, and an NDJSON file that rotates.

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};

use super::attach::{Outputs, print_summary};
use crate::{
    agent::{AgentConfig, Session, host::HostConfig},
    cli::{OutputArgs, WatchArgs},
    sink::{
        Sinks,
        human::HumanSink,
        metrics::MetricsSink,
        metrics_http,
        ndjson::{NdjsonSink, Rotation},
    },
};

pub fn run(args: WatchArgs) -> Result<ExitCode> {
    let output = OutputArgs {
        output: args.output.clone(),
        events: false,
        force: args.force,
        duration: args.duration,
        metrics_addr: args.metrics_addr.clone(),
        mode: args.mode,
        no_tui: true,
    };
    if args.output.is_none() && args.metrics_addr.is_none() {
        bail!(
            "tls-probe watch needs somewhere to put what it finds: pass --metrics-addr ADDR (Prometheus), -o FILE (NDJSON), or both"
        );
    }
    // With rotation, a file an earlier run left (a restarted service) is rotated away, not
    // refused or overwritten.
    if args.rotate_size > 0
        && let Some(path) = args.output.as_deref()
        && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file())
    {
        crate::sink::ndjson::shift(path, args.rotate_keep)?;
    }
    let outputs = Outputs {
        ndjson: super::attach::open_output(&output)?,
        metrics: output
            .metrics_addr
            .as_deref()
            .map(metrics_http::bind)
            .transpose()?,
        dashboard: false,
    };
    let mut cfg = super::attach::config(&output, Vec::new());
    // Every process is found by the host scan; descendants are processes like any other.
    cfg.children = false;
    cfg.host = Some(HostConfig {
        include: args.include_comm.clone(),
        exclude: args.exclude_comm.clone(),
        descendants_of: args.descendants_of.clone(),
        budget_ns_per_sec: args.budget_pct / 100.0 * 1e9,
        max_processes: args.max_processes as usize,
    });
    let rotation = (args.rotate_size > 0).then_some(Rotation {
        size: args.rotate_size,
        keep: args.rotate_keep,
    });
    let summary = session(cfg, outputs, rotation, args.metrics_max_processes as usize)?;
    print_summary(&summary, false);
    Ok(ExitCode::SUCCESS)
}

fn session(
    cfg: AgentConfig,
    outputs: Outputs,
    rotation: Option<Rotation>,
    metrics_max: usize,
) -> Result<crate::agent::Summary> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut sinks = Sinks::new().with(HumanSink::new(false, true));
        if let Some(out) = outputs.ndjson {
            let mut sink = NdjsonSink::new(out, false);
            if let Some(r) = rotation {
                sink = sink.rotating(r);
            }
            sinks.push(Box::new(sink));
        }
        if let Some(listener) = outputs.metrics {
            let addr = listener
                .local_addr()
                .context("reading the metrics address")?;
            let (sink, published) = MetricsSink::with_process_cap(metrics_max);
            metrics_http::spawn(listener, published)?;
            sinks.push(Box::new(sink));
            eprintln!("tls-probe: serving Prometheus metrics at http://{addr}/metrics");
        }
        let session = Session::attach_with(cfg, sinks)?;
        eprintln!(
            "tls-probe: watching the host: {} processes with a TLS library traced now; new ones are picked up as they appear",
            session.targets().len()
        );
        session.run().await
    })
}
