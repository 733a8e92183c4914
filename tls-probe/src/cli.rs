//! Command-line interface: what the user can type.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::scenario::ScenarioArgs;

#[derive(Parser, Debug)]
#[command(name = "tls-probe", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to running processes and report their TLS event-loop behaviour.
    Attach(AttachArgs),
    /// Run a built-in scenario workload and attach to it.
    Demo(DemoArgs),
    /// Run one scenario workload by itself (the programs `demo` attaches to).
    Scenario(ScenarioArgs),
    /// Read an NDJSON export and print a report; re-runs the engine when it holds events.
    Report(ReportArgs),
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Write NDJSON to FILE (`-` for stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write every decoded probe event to the output.
    #[arg(long)]
    pub events: bool,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// What to probe: `full` traces every SSL_read/SSL_write/SSL_get_error call (a uprobe
    /// trap each, expensive on busy servers); `light` keeps only syscall tracepoints and the
    /// once-per-connection handshake probes.
    #[arg(long, value_enum, default_value_t = ProbeMode::Full)]
    pub mode: ProbeMode,
}

/// How much to probe.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProbeMode {
    /// Every SSL call (per-call uprobes on the hot path).
    #[default]
    Full,
    /// Syscall tracepoints and handshake probes only.
    Light,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AttachArgs {
    /// Process id to attach to (repeatable).
    #[arg(short, long = "pid", value_name = "PID", required = true)]
    pub pids: Vec<u32>,
    /// Use this TLS library instead of the one found in /proc/PID/maps.
    #[arg(long, value_name = "PATH")]
    pub libssl: Option<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// The scenario to run: healthy, spin-loop, busy-poll, bad-write-retry,
    /// handshake-storm, resumed-handshakes, concurrent-ssl or mixed (the default: a spin
    /// loop, a handshake storm and healthy connections in one process). --duration
    /// defaults to 20 s.
    pub scenario: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// An NDJSON export written by `tls-probe attach -o FILE` (`-` for stdin).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}
