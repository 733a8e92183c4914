//! A scenario run as a child process, the way `tls-probe demo` runs it: started with
//! `--wait-stdin`, read up to READY, released when the caller is ready (e.g. has attached
//! its probes), then read for DONE. The child dies with its parent (PR_SET_PDEATHSIG) and
//! is killed on drop, so a workload never outlives whoever started it.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::Path,
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    thread::{self, JoinHandle},
};

use anyhow::{Context, Result, bail};

use super::{
    ScenarioName,
    report::{self, Done, Ready},
};

/// The scenario process: `tls-probe scenario NAME --wait-stdin`, held at READY until
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
    /// Starts `exe scenario NAME --wait-stdin --duration SECS`, with `exe` this very
    /// binary when None.
    pub fn spawn(exe: Option<&Path>, name: ScenarioName, secs: f64) -> Result<Self> {
        let exe = match exe {
            Some(p) => p.to_owned(),
            // The real path rather than /proc/self/exe, so that the child's comm is ours.
            None => std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
        };
        let mut cmd = Command::new(&exe);
        cmd.args(["scenario", name.as_str(), "--wait-stdin", "--duration"])
            .arg(secs.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe and touches no memory of this process.
        unsafe {
            cmd.pre_exec(|| {
                // The workload must not outlive its parent, however the parent ends.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} scenario {name}", exe.display()))?;
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
