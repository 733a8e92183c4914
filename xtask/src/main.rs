//! `cargo xtask`: the project's own setup, test and demo commands (see README.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod dist;
mod openssl11;
mod setup;
mod sh;
mod soak;
mod test;
mod toolchain;

#[derive(Parser, Debug)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Set up, test, demo and benchmark tls-probe"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check every prerequisite and install what is missing (fast when nothing is).
    Setup,
    /// Set up, then run fmt, clippy, unit tests and the privileged integration tests.
    Test(test::TestArgs),
    /// Set up, build the release agent and the scenario program, and run
    /// `tls-probe demo ARGS...`.
    Demo(demo::DemoArgs),
    /// Build the release tarball: tls-probe (no libssl), its split debug info, the
    /// scenario program, man pages and shell completions, in target/dist/.
    Dist(dist::DistArgs),
    /// Set up, build the release agent and measure what probing costs nginx and the
    /// spin-loop scenario, against no probe and bpftrace; writes bench/results.{md,json}.
    Bench(bench::BenchArgs),
    /// Set up, build the release agent and soak it on nginx with 4 workers in each mode:
    /// a million TLS connections of churn, 10,000 idle connections, keep-alive load; writes
    /// bench/soak.{md,json,png}.
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Setup => setup::ensure(setup::Needs::Everything),
        Command::Test(args) => test::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Dist(args) => dist::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Soak(args) => soak::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn demo_passes_every_argument_through_even_help() {
        let cli = Cli::parse_from(["cargo xtask", "demo", "--help", "spin", "--duration", "5"]);
        let Command::Demo(args) = cli.command else {
            panic!("parsed as {cli:?}")
        };
        assert_eq!(args.args, ["--help", "spin", "--duration", "5"]);
    }
}
