//! `tls-probe attach`

use std::process::ExitCode;

use crate::cli::AttachArgs;

pub fn run(_args: AttachArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
