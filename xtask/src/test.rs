//! `cargo xtask test`: formatting, lints, unit tests and the privileged integration tests, in
//! that order, stopping at the first failure.

use std::{process::Command, time::Instant};

use anyhow::{Result, bail};

use crate::{
    setup,
    sh::{self, cmd},
    toolchain,
};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Do not check or install prerequisites first.
    #[arg(long)]
    skip_setup: bool,
    /// Skip the privileged integration tests (they attach real eBPF probes and need root).
    #[arg(long)]
    no_privileged: bool,
    /// Passed to both test runs after `--`: a test name filter, or libtest flags such as
    /// `--nocapture`.
    #[arg(last = true, value_name = "FILTER")]
    filter: Vec<String>,
}

struct Step {
    name: &'static str,
    command: Command,
    /// Printed after the failure, to say what to do about it.
    hint: &'static str,
}

pub fn run(args: &TestArgs) -> Result<()> {
    let integration = integration_tests(args)?;
    if !args.skip_setup {
        setup::ensure(setup::Needs::Everything)?;
    }

    let steps = steps(&args.filter, integration, args.skip_setup);
    let names: Vec<&str> = steps.iter().map(|step| step.name).collect();
    let skipped = if integration {
        ""
    } else {
        "; SKIPPED: privileged integration tests"
    };
    for (i, mut step) in steps.into_iter().enumerate() {
        eprintln!("\n==> [{}/{}] {}", i + 1, names.len(), step.name);
        let start = Instant::now();
        if let Err(err) = sh::run(&mut step.command) {
            eprintln!(
                "\ntest: FAILED at step `{}`; passed: {}; not run: {}{skipped}",
                step.name,
                list(&names[..i]),
                list(&names[i + 1..]),
            );
            bail!("step `{}` failed: {err:#}; {}", step.name, step.hint);
        }
        eprintln!("ok: {} ({})", step.name, sh::secs(start));
    }
    eprintln!("\ntest: passed: {}{skipped}", list(&names));
    Ok(())
}

/// The steps in the order they run; `filter` goes to both test runs.
fn steps(filter: &[String], integration: bool, skip_setup: bool) -> Vec<Step> {
    let mut steps = vec![
        Step {
            name: "fmt",
            command: cargo(&[&toolchain::ebpf_arg(), "fmt", "--all", "--", "--check"]),
            hint: "run `cargo +<the nightly in tls-probe-ebpf/rust-toolchain.toml> fmt --all` to fix",
        },
        Step {
            name: "clippy (host)",
            // The eBPF crate builds only for bpfel-unknown-none: it gets its own step.
            command: cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "tls-probe-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            hint: "fix the lints above",
        },
        Step {
            name: "clippy (eBPF)",
            command: cargo(&[
                &toolchain::ebpf_arg(),
                "clippy",
                "--package",
                "tls-probe-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ]),
            hint: "fix the lints above",
        },
        Step {
            name: "unit tests",
            command: with_filter(
                cargo(&[
                    "test",
                    "--workspace",
                    "--exclude",
                    "tls-probe-ebpf",
                    "--lib",
                    "--bins",
                ]),
                &[],
                filter,
            ),
            hint: "see the failing tests above",
        },
    ];
    if integration {
        steps.push(Step {
            name: "integration tests (privileged)",
            // `--test '*'`: the integration binaries (tests/it/, tests/stubs/); `--tests`
            // would run the unit tests again.
            // One at a time: each test attaches real probes. `--no-fail-fast` here and above:
            // report every failing test binary, not only the first.
            command: with_filter(
                cargo(&[
                    "test",
                    "--no-fail-fast",
                    "--package",
                    "tls-probe",
                    "--test",
                    "*",
                ]),
                &["--test-threads=1"],
                filter,
            ),
            hint: "see the failing tests above",
        });
    }
    if integration {
        // Last: proves the bench still runs end to end (1 s loads, no timing assertions).
        // It attaches probes too, so it needs root like the step above. Its setup adds
        // bpftrace (best effort) to what `setup::ensure` checked.
        let mut bench = cargo(&["xtask", "bench", "--smoke"]);
        if skip_setup {
            bench.arg("--skip-setup");
        }
        steps.push(Step {
            name: "bench (smoke)",
            command: bench,
            hint: "run `cargo xtask bench --smoke --keep-temp` and read the kept logs",
        });
    }
    steps
}

/// Whether to run the integration tests; fails up front, before any build, when they
/// would need root and we are not root.
fn integration_tests(args: &TestArgs) -> Result<bool> {
    if args.no_privileged {
        eprintln!(
            "!!! --no-privileged: the privileged integration tests (tls-probe/tests/*.rs) will NOT run.\n\
             !!! They are the only tests that attach real eBPF probes; run `cargo xtask test` as root for them."
        );
        return Ok(false);
    }
    let dir = sh::root().join("tls-probe/tests");
    let has_tests = std::fs::read_dir(&dir)
        .map(|entries| {
            entries.flatten().any(|entry| {
                let path = entry.path();
                path.extension().is_some_and(|ext| ext == "rs") || path.join("main.rs").is_file()
            })
        })
        .unwrap_or(false);
    if !has_tests {
        eprintln!(
            "!!! no integration tests in {}: that step will not run",
            dir.display()
        );
        return Ok(false);
    }
    if !sh::is_root() {
        bail!(
            "the integration tests attach eBPF probes and need root: run `sudo -E env \"PATH=$PATH\" cargo xtask test`, \
             or `cargo xtask test --no-privileged` to skip them"
        );
    }
    Ok(true)
}

fn cargo(args: &[&str]) -> Command {
    let mut command = cmd("cargo");
    command.args(args);
    command
}

/// Adds `-- <libtest args> <user filter>` to a `cargo test` command, when there are any.
fn with_filter(mut command: Command, libtest: &[&str], filter: &[String]) -> Command {
    if !libtest.is_empty() || !filter.is_empty() {
        command.arg("--").args(libtest).args(filter);
    }
    command
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn filter_and_libtest_flags_reach_both_test_runs() {
        let cli = Cli::parse_from([
            "cargo xtask",
            "test",
            "--no-privileged",
            "--",
            "decode",
            "--nocapture",
        ]);
        let Command::Test(args) = cli.command else {
            panic!("parsed as {cli:?}")
        };
        assert!(args.no_privileged && !args.skip_setup);
        let shown: Vec<(&str, String)> = steps(&args.filter, true, false)
            .iter()
            .map(|step| (step.name, sh::display(&step.command)))
            .collect();
        let tail = |name: &str| {
            let (_, command) = shown.iter().find(|(n, _)| *n == name).expect(name);
            command.split_once(" -- ").map(|(_, tail)| tail.to_owned())
        };
        assert_eq!(
            tail("unit tests").as_deref(),
            Some("decode --nocapture"),
            "{shown:?}"
        );
        assert_eq!(
            tail("integration tests (privileged)").as_deref(),
            Some("--test-threads=1 decode --nocapture"),
            "{shown:?}"
        );
        assert_eq!(tail("fmt").as_deref(), Some("--check"));
    }

    #[test]
    fn without_a_filter_only_the_integration_run_gets_libtest_args() {
        let steps = steps(&[], true, false);
        let unit = steps.iter().find(|step| step.name == "unit tests").unwrap();
        assert!(!sh::display(&unit.command).contains(" -- "));
        let names: Vec<&str> = steps.iter().map(|step| step.name).collect();
        assert_eq!(
            names,
            [
                "fmt",
                "clippy (host)",
                "clippy (eBPF)",
                "unit tests",
                "integration tests (privileged)",
                "bench (smoke)"
            ]
        );
        assert_eq!(super::steps(&[], false, false).len(), 4);
    }
}
