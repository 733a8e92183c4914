//! A scenario run as a child process, the way `tls-probe demo` runs it: the separate
//! `tls-probe-scenarios` program (the workloads link OpenSSL; tls-probe does not), found by
//! [`locate`], started with `--wait-stdin`, read up to READY, released when the caller is
//! ready (e.g. has attached its probes), then read for DONE. The child dies with its parent
//! (PR_SET_PDEATHSIG) and is killed on drop, so a workload never outlives whoever started it.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    thread::{self, JoinHandle},
};

use anyhow::{Context, Result, bail};
use tls_probe_scenario_spec::{
    PROGRAM, ScenarioName,
    report::{self, Done, Ready},
};

/// Names the workload program explicitly, before the other places are searched.
pub const ENV: &str = "TLS_PROBE_SCENARIOS";

/// Finds the workload program: `$TLS_PROBE_SCENARIOS`, else `tls-probe-scenarios` next to
/// this executable (as `cargo build` and the release tarball leave them), else on PATH.
pub fn locate() -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let beside = exe
        .as_deref()
        .and_then(Path::parent)
        .map(|d| d.join(PROGRAM));
    find(std::env::var_os(ENV), beside, std::env::var_os("PATH"))
}

fn find(env: Option<OsString>, beside: Option<PathBuf>, path: Option<OsString>) -> Result<PathBuf> {
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "{ENV}={} names no file; point it at the {PROGRAM} program, or unset it to search \
             next to tls-probe and on PATH",
            p.display()
        );
    }
    if let Some(p) = beside.as_ref().filter(|p| p.is_file()) {
        return Ok(p.clone());
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    if let Ok(p) = which::which_in(PROGRAM, path, cwd) {
        return Ok(p);
    }
    let beside = beside.map_or_else(
        || "next to tls-probe (its path is unknown)".to_owned(),
        |p| p.display().to_string(),
    );
    bail!(
        "`tls-probe demo` runs its workloads with a separate program, {PROGRAM} (they link \
         OpenSSL, tls-probe does not), and found none: searched ${ENV} (unset), {beside} and \
         PATH. Install it from the same release tarball as tls-probe, or build it with \
         `cargo build --release -p {PROGRAM}`, or set {ENV}=/path/to/{PROGRAM}"
    )
}

/// The scenario process: `tls-probe-scenarios NAME --wait-stdin`, held at READY until
/// [`Process::release`]. Killed on drop if still running.
pub struct Process {
    name: ScenarioName,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    /// Reads the rest of stdout after READY, for DONE.
    done: Option<JoinHandle<Option<Done>>>,
    stderr: Option<JoinHandle<()>>,
}

impl Process {
    /// Starts `exe NAME --wait-stdin --duration SECS`, with `exe` the workload program.
    pub fn spawn(exe: &Path, name: ScenarioName, secs: f64) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.args([name.as_str(), "--wait-stdin", "--duration"])
            .arg(secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of this process.
        unsafe {
            cmd.pre_exec(|| {
                // The workload must not outlive its parent, however the parent ends.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} {name}", exe.display()))?;
        let stdout = child.stdout.take().map(BufReader::new);
        let stderr = child.stderr.take().map(|e| {
            // The caller reports DONE its own way; anything else (warnings, errors) goes
            // to our stderr as it comes.
            let summary = format!("scenario {name} ran ");
            thread::spawn(move || {
                for line in BufReader::new(e).lines().map_while(Result::ok) {
                    if !line.starts_with(&summary) {
                        eprintln!("{line}");
                    }
                }
            })
        });
        Ok(Self {
            name,
            stdin: child.stdin.take(),
            child,
            stdout,
            done: None,
            stderr,
        })
    }

    /// Waits for READY (the scenario's threads and connections exist), then keeps reading
    /// stdout in the background for DONE, and calls `on_done` with it when it comes.
    pub fn ready(&mut self, on_done: impl FnOnce(&Done) + Send + 'static) -> Result<Ready> {
        let mut out = self.stdout.take().context("ready called twice")?;
        let mut line = String::new();
        let ready = loop {
            line.clear();
            if out.read_line(&mut line).context("reading the scenario")? == 0 {
                let status = self.child.wait().context("waiting for the scenario")?;
                bail!(
                    "the {} scenario exited before it was ready ({status}); its errors are above",
                    self.name
                );
            }
            if let Some(ready) = report::parse_ready(line.trim_end()) {
                break ready;
            }
        };
        self.done = Some(thread::spawn(move || {
            let done = out
                .lines()
                .map_while(Result::ok)
                .find_map(|l| report::parse_done(&l))?;
            on_done(&done);
            Some(done)
        }));
        Ok(ready)
    }

    /// Lets the load start.
    pub fn release(&mut self) -> Result<()> {
        let mut stdin = self.stdin.take().context("release called twice")?;
        writeln!(stdin, "go").context("starting the scenario")
    }

    /// Waits for the scenario to exit (killing it first if `kill`) and returns its DONE.
    pub fn finish(&mut self, kill: bool) -> Result<(ExitStatus, Option<Done>)> {
        if kill {
            let _ = self.child.kill();
        }
        let status = self.child.wait().context("waiting for the scenario")?;
        let done = self.done.take().and_then(|h| h.join().ok()).flatten();
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
        Ok((status, done))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_found_by_env_then_beside_then_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let exe = b.join(PROGRAM);
        std::fs::write(&exe, "").expect("write");
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let path = Some(OsString::from(format!("{}:{}", a.display(), b.display())));
        assert_eq!(find(None, None, path.clone()).expect("on PATH"), exe);
        assert_eq!(
            find(None, Some(exe.clone()), None).expect("beside"),
            exe,
            "next to tls-probe"
        );
        assert_eq!(
            find(Some(exe.clone().into()), None, None).expect("env"),
            exe
        );
        let err = find(Some(a.join("nope").into()), Some(exe.clone()), path)
            .expect_err("a wrong env var is an error, not a fallback")
            .to_string();
        assert!(
            err.contains("TLS_PROBE_SCENARIOS=") && err.contains("names no file"),
            "{err}"
        );
        let err = find(None, Some(a.join(PROGRAM)), Some(a.into_os_string()))
            .expect_err("absent")
            .to_string();
        for needle in ["tls-probe-scenarios", "cargo build --release -p", "PATH"] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }
}
