use std::process::ExitCode;

use clap::Parser;
use tls_probe::{
    cli::{Cli, Command},
    cmd, scenario,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach(args) => cmd::attach::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Scenario(args) => scenario::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tls-probe: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
