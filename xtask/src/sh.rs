//! Running the tools xtask drives: where they run, which PATH they see, and how a failure
//! is reported.

use std::{
    env,
    ffi::{OsStr, OsString},
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// The workspace root: the parent of xtask's own manifest directory, whatever the cwd is.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// Cargo's bin directory (`$CARGO_HOME/bin`, default `~/.cargo/bin`), where `cargo install`
/// puts bpf-linker.
pub fn cargo_bin_dir() -> PathBuf {
    match env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home).join("bin"),
        None => {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo/bin")
        }
    }
}

/// PATH for every child: the caller's PATH with cargo's bin directory added at the end when
/// it is missing, so a freshly installed bpf-linker is found by rustc and by our checks.
pub fn child_path() -> &'static OsStr {
    static PATH: OnceLock<OsString> = OnceLock::new();
    PATH.get_or_init(|| {
        let current = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
        let bin = cargo_bin_dir();
        if !dirs.contains(&bin) {
            dirs.push(bin);
        }
        env::join_paths(dirs).unwrap_or(current)
    })
}

/// The first `name` in [`child_path`], as a child would find it. (A dependency such as
/// `which` would add a Cargo.lock entry for a few lines of code.)
pub fn find_program(name: &str) -> Option<PathBuf> {
    env::split_paths(child_path())
        .map(|dir| dir.join(name))
        .find(|path| {
            fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
        })
}

/// A command that runs in the workspace root with [`child_path`] as its PATH.
/// `cargo` and `rustc` run on the pinned host toolchain unless their first argument names
/// another (`+nightly-...`), which rustup lets win over `RUSTUP_TOOLCHAIN`.
pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    let program = program.as_ref();
    let mut command = Command::new(program);
    command.current_dir(root()).env("PATH", child_path());
    if program == "cargo" || program == "rustc" {
        command.env("RUSTUP_TOOLCHAIN", crate::toolchain::HOST);
    }
    command
}

/// The command as a user would type it (PATH left out), for progress lines and errors.
pub fn display(command: &Command) -> String {
    let mut words: Vec<String> = command
        .get_envs()
        .filter(|(key, _)| *key != "PATH")
        .filter_map(|(key, value)| {
            Some(format!(
                "{}={}",
                key.to_string_lossy(),
                value?.to_string_lossy()
            ))
        })
        .collect();
    words.push(command.get_program().to_string_lossy().into_owned());
    words.extend(command.get_args().map(|arg| {
        let arg = arg.to_string_lossy();
        if arg.contains(['*', ' ', '$']) {
            format!("'{arg}'")
        } else {
            arg.into_owned()
        }
    }));
    words.join(" ")
}

/// Runs a command with inherited stdio and fails, naming the command, unless it exits 0.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = display(command);
    eprintln!("+ {shown}");
    let status = command
        .status()
        .with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a quick query and returns its stdout, or None when the program is missing or fails.
pub fn query(command: &mut Command) -> Option<String> {
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Like [`query`], but keeps stdout even when the program exits non-zero (`dpkg-query`
/// exits 1 when any package is unknown, and still prints the others).
pub fn query_any_status(command: &mut Command) -> Option<String> {
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether this process runs as root (the owner of /proc/self is the effective uid).
pub fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Seconds since `start`, for progress lines.
pub fn secs(start: Instant) -> String {
    format!("{:.2} s", start.elapsed().as_secs_f64())
}

/// Builds the release agent and the scenario program, which bench, demo and dist all run.
pub fn build_release_binaries() -> Result<()> {
    run(cmd("cargo").args([
        "build",
        "--release",
        "--package",
        "tls-probe",
        "--package",
        "tls-probe-scenarios",
    ]))
    .context("building the release agent (tls-probe) and the scenario program (tls-probe-scenarios) failed")
}
