//! `cargo xtask bench`: what tls-probe costs the programs it watches, measured side by side
//! with no probe and with bpftrace, on nginx and on the spin-loop scenario. Variants are
//! interleaved round-robin within each repetition, so slow drift of a shared machine hits
//! all of them alike; the results are ratios to the baseline of the same run.

mod agent;
pub(crate) mod machine;
mod measure;
mod nginx;
pub(crate) mod proc;
pub(crate) mod report;
mod workload;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use self::{
    measure::Ctx,
    report::{Results, Settings},
    workload::{Detail, Workload},
};
use crate::{setup, sh};

const WARMUP_S: u32 = 1;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 5, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..))]
    duration: u32,
    /// Measurements of each variant of each workload.
    #[arg(long, default_value_t = 3, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    repetitions: u32,
    /// Check that every step works: 1 s per measurement, one repetition, results in a
    /// scratch directory (not bench/). Fails if any step produced no numbers.
    #[arg(long)]
    smoke: bool,
    /// Only this workload (repeatable).
    #[arg(long = "workload", value_enum, value_name = "NAME")]
    workloads: Vec<Workload>,
    /// Only this variant besides the baseline (repeatable).
    #[arg(long = "variant", value_enum, value_name = "NAME")]
    variants: Vec<Variant>,
    /// Write results.md and results.json here (default: bench/, or the scratch directory
    /// with --smoke).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Keep the scratch directory (nginx config and logs, agent outputs).
    #[arg(long)]
    keep_temp: bool,
    /// Do not check or install prerequisites first.
    #[arg(long)]
    skip_setup: bool,
}

/// What is attached to the target while it is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Nothing attached.
    Baseline,
    /// `tls-probe attach --mode auto` (the default), measured in its steady state (after
    /// attach's window and link closing).
    Auto,
    /// The same, measured as a user pays it: the load starts, tls-probe attaches 0.5 s in
    /// and runs until 0.5 s before the load ends, attach, windows and stop included.
    AutoAttach,
    /// The same over a 30 s attach (several escalation windows), keep-alive only.
    AutoAttach30,
    /// `tls-probe attach --mode light`.
    Light,
    /// `tls-probe attach --mode full`.
    Full,
    /// bpftrace with uprobes on SSL_read/SSL_write/SSL_get_error and epoll_wait tracepoints.
    Bpftrace,
    /// `tls-probe watch` (default mode, host-wide discovery and budget) while 10 idle TLS
    /// processes run beside nginx, keep-alive only, in its steady state. Limited to the
    /// bench's own programs (`--include-comm nginx --include-comm openssl --descendants-of`
    /// the bench): the machines are shared, and other programs' probes would cost what is
    /// measured here.
    Watch,
}

impl Variant {
    /// Whether this variant is measured on `workload`: the from-attach ones only on nginx
    /// (the scenario is started for each measurement, so its whole run is "from attach"
    /// already), the 30 s one only on keep-alive.
    pub fn applies_to(self, workload: Workload) -> bool {
        match self {
            Self::AutoAttach => workload.needs_nginx(),
            Self::AutoAttach30 | Self::Watch => workload == Workload::Keepalive,
            _ => true,
        }
    }

    /// For the from-attach variants: how long the load runs, in s, given the bench's
    /// measurement duration.
    pub fn load_seconds_from_attach(self, duration: u32) -> Option<u32> {
        match self {
            Self::AutoAttach => Some(duration.max(3)),
            Self::AutoAttach30 => Some(if duration < 5 { 6 } else { 30 }),
            _ => None,
        }
    }

    const ALL: [Variant; 8] = [
        Self::Baseline,
        Self::AutoAttach,
        Self::AutoAttach30,
        Self::Auto,
        Self::Light,
        Self::Full,
        Self::Bpftrace,
        Self::Watch,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Auto => "auto",
            Self::AutoAttach => "auto-attach",
            Self::AutoAttach30 => "auto-attach-30",
            Self::Light => "light",
            Self::Full => "full",
            Self::Bpftrace => "bpftrace",
            Self::Watch => "watch",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Baseline => "baseline (no probe)",
            Self::Auto => "tls-probe auto, steady state",
            Self::AutoAttach => "tls-probe auto, from attach",
            Self::AutoAttach30 => "tls-probe auto, 30 s from attach",
            Self::Light => "tls-probe light",
            Self::Full => "tls-probe full",
            Self::Bpftrace => "bpftrace (full mode's probes)",
            Self::Watch => "tls-probe watch (+ 10 idle TLS processes)",
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let started = Instant::now();
    if !args.skip_setup {
        setup::ensure(setup::Needs::Everything)?;
        setup::ensure_bench_extras();
    }
    if !sh::is_root() {
        bail!(
            "the bench attaches eBPF probes to nginx and to the scenario: run it as root \
             (`sudo -E env \"PATH=$PATH\" cargo xtask bench`)"
        );
    }
    let (duration, repetitions) = if args.smoke {
        (1, 1)
    } else {
        (args.duration, args.repetitions)
    };
    sh::build_release_binaries()?;

    let bpftrace = sh::find_program("bpftrace");
    let settings = Settings {
        duration_s: duration,
        repetitions,
        warmup_s: WARMUP_S,
        workloads: chosen(&args.workloads, &Workload::ALL),
        variants: variants(&args.variants, bpftrace.is_some()),
    };
    let scratch = proc::TempDir::new(args.keep_temp)?;
    // Where cargo put them: CARGO_TARGET_DIR when set (relative to the workspace).
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| sh::root().join("target"), |d| sh::root().join(d))
        .join("release");
    let ctx = Ctx {
        tls_probe: release.join("tls-probe"),
        scenarios: release.join("tls-probe-scenarios"),
        bpftrace,
        dir: scratch.path().to_owned(),
        duration,
    };
    let date_utc = machine::date_utc();
    let loadavg_start = machine::loadavg();
    let runs = measure::measure_all(&ctx, &settings)?;
    let medians = report::medians(&settings, &runs);
    let results = Results {
        schema_version: 1,
        smoke: args.smoke,
        date_utc,
        machine: machine::machine(loadavg_start),
        software: machine::software(ctx.bpftrace.as_deref()),
        settings,
        runs,
        medians,
        elapsed_s: started.elapsed().as_secs_f64(),
    };

    let out = match (&args.out, args.smoke) {
        (Some(out), _) => out.clone(),
        (None, true) => ctx.dir.join("results"),
        (None, false) => sh::root().join("bench"),
    };
    let markdown = report::markdown(&results);
    write_results(&out, &results, &markdown)?;
    eprintln!("\n{markdown}");
    if args.smoke {
        smoke_check(&results)?;
        eprintln!(
            "bench: smoke OK: {} runs, every one produced numbers ({})",
            results.runs.len(),
            sh::secs(started)
        );
    } else {
        eprintln!(
            "bench: wrote {}/results.md and results.json ({})",
            out.display(),
            sh::secs(started)
        );
    }
    Ok(())
}

/// The selection, in canonical order, or everything when nothing was chosen.
fn chosen<T: Copy + PartialEq>(picked: &[T], all: &[T]) -> Vec<T> {
    all.iter()
        .copied()
        .filter(|x| picked.is_empty() || picked.contains(x))
        .collect()
}

/// The variants to run: always the baseline (the ratios need it); bpftrace where installed.
fn variants(picked: &[Variant], have_bpftrace: bool) -> Vec<Variant> {
    let mut variants = chosen(picked, &Variant::ALL);
    if !variants.contains(&Variant::Baseline) {
        variants.insert(0, Variant::Baseline);
    }
    if !have_bpftrace && variants.contains(&Variant::Bpftrace) {
        eprintln!(
            "bench: bpftrace is not installed: its variant is SKIPPED (`apt-get install bpftrace`)"
        );
        variants.retain(|&v| v != Variant::Bpftrace);
    }
    variants
}

/// The smoke run's only check: every step ran and produced numbers. No timing assertions.
fn smoke_check(results: &Results) -> Result<()> {
    let expected = results
        .settings
        .workloads
        .iter()
        .map(|&w| {
            results
                .settings
                .variants
                .iter()
                .filter(|v| v.applies_to(w))
                .count()
        })
        .sum::<usize>();
    let mut problems = Vec::new();
    if results.runs.len() != expected {
        problems.push(format!("{} runs, expected {expected}", results.runs.len()));
    }
    for run in &results.runs {
        let name = format!("{} {}", run.workload.name(), run.variant.name());
        if run.value.is_nan() || run.value <= 0.0 {
            problems.push(format!("{name}: no {} measured", run.unit));
        }
        match &run.detail {
            Detail::Wrk {
                requests,
                nginx_log,
                ..
            } => {
                if *requests == 0 {
                    problems.push(format!("{name}: wrk completed no request"));
                }
                if run.workload == Workload::Handshake
                    && nginx_log.as_ref().is_none_or(|log| log.requests == 0)
                {
                    problems.push(format!("{name}: nginx logged no handshake request"));
                }
            }
            Detail::Scenario { client_wakeups, .. } => {
                if *client_wakeups == 0 {
                    problems.push(format!("{name}: the scenario's client never woke up"));
                }
            }
        }
        if run.variant != Variant::Baseline {
            if run.agent_cost.is_none() {
                problems.push(format!(
                    "{name}: the agent's CPU and memory were not sampled"
                ));
            }
            if run.agent_counted.as_ref().is_none_or(|c| c.events == 0) {
                problems.push(format!("{name}: the agent counted no event"));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "the smoke bench ran but some steps produced no numbers:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(())
}

fn write_results(out: &Path, results: &Results, markdown: &str) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(results)? + "\n";
    fs::write(out.join("results.json"), json)
        .with_context(|| format!("writing {}/results.json", out.display()))?;
    fs::write(out.join("results.md"), markdown)
        .with_context(|| format!("writing {}/results.md", out.display()))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn baseline_is_always_measured_and_bpftrace_only_when_installed() {
        assert_eq!(
            variants(&[Variant::Full], true),
            [Variant::Baseline, Variant::Full]
        );
        assert_eq!(
            variants(&[], false),
            [
                Variant::Baseline,
                Variant::AutoAttach,
                Variant::AutoAttach30,
                Variant::Auto,
                Variant::Light,
                Variant::Full,
                Variant::Watch
            ]
        );
        assert_eq!(variants(&[], true), Variant::ALL);
    }

    #[test]
    fn bench_arguments_parse() {
        let cli = Cli::parse_from([
            "cargo xtask",
            "bench",
            "--smoke",
            "--workload",
            "spin-loop",
            "--variant",
            "bpftrace",
        ]);
        let Command::Bench(args) = cli.command else {
            panic!("parsed as {cli:?}")
        };
        assert!(args.smoke);
        assert_eq!(args.workloads, [Workload::SpinLoop]);
        assert_eq!(args.variants, [Variant::Bpftrace]);
        assert_eq!((args.duration, args.repetitions), (5, 3));
    }
}
