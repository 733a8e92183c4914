//! `tls-probe attach`: attach to running processes.

use std::{process::ExitCode, time::Duration};

use anyhow::{Result, bail};

use crate::{
    agent::{AgentConfig, Session},
    cli::{AttachArgs, OutputArgs},
    sink::ndjson,
};

/// Validates the output flags and opens the output before anything is attached.
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

pub fn config(o: &OutputArgs, pids: Vec<u32>) -> AgentConfig {
    AgentConfig {
        pids,
        libssl: None,
        duration: o.duration.map(Duration::from_secs_f64),
        events: o.events && o.output.is_some(),
        print_events: o.events && o.output.is_none(),
        hot: true,
    }
}

pub fn run(args: AttachArgs) -> Result<ExitCode> {
    let out = open_output(&args.output)?;
    let mut cfg = config(&args.output, args.pids.clone());
    cfg.libssl = args.libssl.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(async {
        let session = Session::attach(cfg, out)?;
        session.run().await
    })?;
    eprintln!(
        "tls-probe: {} events in {:.1}s, {} lost in the kernel",
        summary.events,
        summary.duration_ns as f64 / 1e9,
        summary.lost.ringbuf + summary.lost.inflight
    );
    Ok(ExitCode::SUCCESS)
}
