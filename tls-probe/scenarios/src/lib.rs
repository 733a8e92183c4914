//! Scenario workloads: small real OpenSSL programs that each reproduce one TLS event-loop
//! pathology, or behave well on purpose. They are the ground truth for the detectors.
//!
//! Each links the system libssl dynamically, generates a self-signed RSA-2048 identity
//! at startup, runs its own epoll loop(s) with its own TLS peer on 127.0.0.1 in the same
//! process, stops by itself after `--duration`, and speaks the stdout contract in
//! `report.rs`: one `READY {json}` line once its threads and connections exist, one
//! `DONE {json}` line with its counts at the end. With `--wait-stdin` it waits for a
//! line (or EOF) on stdin between the two, before starting the load, so that a profiler
//! can attach first.
//!
//! `mixed` runs spin-loop, handshake-storm and healthy side by side in one process, with
//! roles named after their part ("spin-client"). What each scenario is for and the
//! findings it declares are in `tls-probe-scenario-spec` (re-exported here as `guide`),
//! which the profiler reads without linking OpenSSL; this crate is the `tls-probe-scenarios`
//! program that `tls-probe demo` starts as a child, held at READY.

mod async_engine;
mod async_stall;
mod asyncio_spin;
mod concurrent;
mod conn;
mod echo;
mod healthy;
mod mixed;
mod runner;
mod spin;
mod storm;
mod sys;
#[cfg(test)]
mod tests_run;
mod tls;
mod write_retry;

use std::{process::ExitCode, time::Duration};

pub use tls_probe_scenario_spec::{MIXED_PARTS, ScenarioName, guide, report};

use self::runner::Runner;

/// `tls-probe-scenarios NAME [--duration SECS] [--wait-stdin]`.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "tls-probe-scenarios",
    version,
    about = "Run one of tls-probe's scenario workloads: a real OpenSSL program with a TLS \
             event-loop pathology (or none), for `tls-probe demo` or for attaching to by hand",
    long_about = None
)]
pub struct ScenarioArgs {
    /// Which scenario to run.
    #[arg(value_enum)]
    pub name: ScenarioName,
    /// Stop after this many seconds of load (counted from the start, after READY).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// After printing READY, wait for a line (or EOF) on stdin before starting the load.
    #[arg(long)]
    pub wait_stdin: bool,
}

pub fn run(args: &ScenarioArgs) -> anyhow::Result<ExitCode> {
    let duration = Duration::try_from_secs_f64(args.duration)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "--duration must be a positive number of seconds, got {}",
                args.duration
            )
        })?;
    if args.name == ScenarioName::AsyncioSpin {
        // Execs python3: returns only on failure.
        match asyncio_spin::exec(duration, args.wait_stdin)? {}
    }
    execute(args.name, duration, args.wait_stdin, Output::Print)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether [`execute`] speaks the stdout contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// READY and DONE on stdout, a summary on stderr.
    Print,
    /// Nothing printed; the caller reads the returned [`report::Done`].
    Quiet,
}

/// Runs one scenario in this process and returns its DONE record.
pub fn execute(
    name: ScenarioName,
    duration: Duration,
    wait_stdin: bool,
    output: Output,
) -> anyhow::Result<report::Done> {
    let mut runner = Runner::new(name.as_str(), duration, wait_stdin);
    if output == Output::Quiet {
        runner = runner.quiet();
    }
    setup(name, &mut runner)
        .map_err(|e| e.context(format!("setting up scenario {name} failed")))?;
    runner
        .run()
        .map_err(|e| e.context(format!("scenario {name} failed")))
}

/// Starts a scenario's threads on `runner`; they wait at [`runner::Ctl::ready`].
fn setup(name: ScenarioName, runner: &mut Runner) -> anyhow::Result<()> {
    match name {
        ScenarioName::Healthy => healthy::run(runner),
        ScenarioName::SpinLoop => spin::run(runner, spin::Flavor::SpinLoop),
        ScenarioName::BusyPoll => spin::run(runner, spin::Flavor::BusyPoll),
        ScenarioName::BadWriteRetry => write_retry::run(runner),
        ScenarioName::HandshakeStorm => storm::run(runner, storm::Resumption::Never),
        ScenarioName::ResumedHandshakes => storm::run(runner, storm::Resumption::Reuse),
        ScenarioName::ConcurrentSsl => concurrent::run(runner),
        ScenarioName::Mixed => mixed::run(runner),
        ScenarioName::AsyncStall => async_stall::run(runner, async_stall::Flavor::Stall),
        ScenarioName::AsyncQuick => async_stall::run(runner, async_stall::Flavor::Quick),
        ScenarioName::AsyncNoJobs => async_stall::run(runner, async_stall::Flavor::NoJobs),
        ScenarioName::AsyncioSpin => anyhow::bail!(
            "asyncio-spin is a Python program (it execs python3): run it as \
             `tls-probe-scenarios asyncio-spin`, not in-process"
        ),
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser, ValueEnum};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ScenarioArgs,
    }

    #[test]
    fn names_round_trip_through_clap_and_from_str() {
        for name in ScenarioName::ALL {
            let cli = Cli::try_parse_from(["x", name.as_str()]).expect("parse");
            assert_eq!(cli.args.name, name);
            assert_eq!(
                name.as_str().parse::<ScenarioName>().expect("from_str"),
                name
            );
            assert_eq!(
                name.to_possible_value().expect("value").get_name(),
                name.as_str()
            );
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "spinloop".parse::<ScenarioName>().expect_err("unknown");
        assert!(err.to_string().contains("spin-loop, busy-poll"), "{err}");
        let err = Cli::try_parse_from(["x", "nope"])
            .err()
            .expect("clap error")
            .to_string();
        assert!(
            err.contains("handshake-storm") && err.contains("concurrent-ssl"),
            "{err}"
        );
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from(["x", "busy-poll", "--duration", "2.5", "--wait-stdin"])
            .expect("parse");
        assert_eq!(cli.args.duration, 2.5);
        assert!(cli.args.wait_stdin);
        let cli = Cli::try_parse_from(["x", "healthy"]).expect("parse");
        assert_eq!(cli.args.duration, 10.0);
        assert!(!cli.args.wait_stdin);
    }

    #[test]
    fn bad_duration_is_a_clear_error() {
        let args = ScenarioArgs {
            name: ScenarioName::Healthy,
            duration: -1.0,
            wait_stdin: false,
        };
        let err = run(&args).expect_err("negative");
        assert!(err.to_string().contains("--duration"), "{err}");
    }
}
