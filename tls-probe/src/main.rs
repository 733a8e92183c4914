use std::process::ExitCode;

use clap::Parser;
use tls_probe::{
    cli::{Cli, Command},
    cmd,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attach(args) => cmd::attach::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Report(args) => cmd::report::run(&args),
        Command::Run(args) => cmd::run::run(args),
        Command::Watch(args) => cmd::watch::run(args),
        Command::Generate(args) => cmd::generate::run(&args),
    };
    match result {
        Ok(code) => code,
        // A closed pipe (`tls-probe ... | head`) is the reader's choice, not a failure.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tls-probe: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
