use std::process::ExitCode;

use clap::Parser;
use tls_probe_scenarios::{ScenarioArgs, run};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = ScenarioArgs::parse();
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tls-probe-scenarios: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
