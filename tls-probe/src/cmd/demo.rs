//! `tls-probe demo`

use std::process::ExitCode;

use crate::cli::DemoArgs;

pub fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
