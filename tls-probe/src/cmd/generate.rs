//! `tls-probe generate DIR` (hidden): the man pages and shell completions, made from the
//! clap definitions in cli.rs so that they cannot disagree with `--help`. `cargo xtask
//! dist` puts them in the release tarball.

use std::{fs, path::Path, process::ExitCode};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs};

pub fn run(args: &GenerateArgs) -> Result<ExitCode> {
    write_all(&args.dir)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `dir/man/tls-probe.1` (and one page per subcommand, `tls-probe-attach.1`, ...)
/// and `dir/completions/` for bash, zsh and fish.
pub fn write_all(dir: &Path) -> Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "tls-probe", &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_and_completions_cover_the_commands_but_not_generate() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_all(dir.path()).expect("generate");
        let page = fs::read_to_string(dir.path().join("man/tls-probe.1")).expect("man page");
        assert!(page.contains("attach") && page.contains("demo"), "{page}");
        assert!(dir.path().join("man/tls-probe-attach.1").is_file());
        let bash = fs::read_to_string(dir.path().join("completions/tls-probe.bash")).expect("bash");
        assert!(bash.contains("--pid"), "bash completion lacks --pid");
        assert!(dir.path().join("completions/_tls-probe").is_file());
        assert!(dir.path().join("completions/tls-probe.fish").is_file());
        assert!(
            !page.contains("generate"),
            "the hidden command shows in the man page"
        );
    }

    #[test]
    fn version_names_the_commit() {
        let v = Cli::command().render_version();
        assert!(
            v.contains(env!("CARGO_PKG_VERSION")) && v.contains("(commit "),
            "{v}"
        );
    }
}
