//! `cargo xtask demo`: set up, build the release agent and the scenario program beside it,
//! and hand over to `tls-probe demo` (which finds `tls-probe-scenarios` next to itself).

use std::os::unix::process::CommandExt;

use anyhow::{Context, Result};

use crate::{setup, sh};

#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct DemoArgs {
    /// Passed to `tls-probe demo` as they are (`cargo xtask demo --help` shows its options).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub(crate) args: Vec<String>,
}

/// Replaces this process with the agent, so it inherits stdio and signals, and its exit code
/// is ours. Returns only if something failed.
pub fn run(args: &DemoArgs) -> Result<()> {
    setup::ensure(setup::Needs::Build)?;
    if !sh::root().join("target/release/tls-probe").exists() {
        eprintln!(
            "building tls-probe and the demo workloads (release): about 4 min the first time on \
             2 cores, seconds after"
        );
    }
    sh::build_release_binaries()?;
    let binary = sh::root().join("target/release/tls-probe");
    let mut demo = sh::cmd(&binary);
    demo.arg("demo").args(&args.args);
    eprintln!("+ {}", sh::display(&demo));
    let err = demo.exec();
    Err(err).with_context(|| format!("could not run {}", binary.display()))
}
