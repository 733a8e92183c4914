//! Scenario workloads: real OpenSSL programs that reproduce each pathology.

#[derive(clap::Args, Debug, Clone)]
pub struct ScenarioArgs {
    /// Which scenario to run.
    pub name: String,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

pub fn run(_args: &ScenarioArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet")
}
