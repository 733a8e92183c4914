//! The processes the bench starts (nginx, wrk, the agents, the scenario) and the scratch
//! directory they share: each is stopped and reaped on every path out, errors included.

use std::{
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A child process that is killed and reaped when dropped, unless it was stopped already.
pub struct Guard {
    name: String,
    child: Option<Child>,
}

impl Guard {
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its exit status if it has exited (it is then reaped), or None while it runs.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        let child = self
            .child
            .as_mut()
            .expect("the child is taken only by stop");
        let name = &self.name;
        child
            .try_wait()
            .with_context(|| format!("checking whether {name} is running"))
    }

    /// Sends `signal` (unless it has exited), waits up to `timeout`, then kills it. Returns
    /// its exit status, or an error naming it when it had to be killed.
    pub fn stop(self, signal: Signal, timeout: Duration) -> Result<ExitStatus> {
        self.end(Some(signal), timeout)
    }

    /// Waits up to `timeout` for it to exit by itself, then kills it.
    pub fn wait(self, timeout: Duration) -> Result<ExitStatus> {
        self.end(None, timeout)
    }

    fn end(mut self, signal: Option<Signal>, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().expect("ended once");
        if let Some(signal) = signal
            && child.try_wait()?.is_none()
        {
            signal_pid(child.id(), signal);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let after = signal.map_or_else(String::new, |signal| format!(" of {signal}"));
                bail!(
                    "{} (pid {}) did not exit within {timeout:?}{after}; killed it",
                    self.name,
                    child.id()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Sends a signal, ignoring a process that is already gone.
pub fn signal_pid(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// User plus system CPU time of a process so far, in clock ticks (a zombie still has it).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .stat()
        .ok()?;
    Some(stat.utime + stat.stime)
}

/// Clock ticks to seconds.
pub fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second() as f64
}

/// A private scratch directory, removed when dropped unless `keep` is set.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new(keep: bool) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("tls-probe-bench.{}.{nanos:09}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating the scratch directory {}", path.display()))?;
        Ok(Self { path, keep })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: kept the scratch directory {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Polls `check` every 20 ms until it returns Some, the deadline passes, or `alive` says
/// the process it waits on has gone; `what` names the wait in the error.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<bool>,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return Ok(found);
        }
        if !alive()? {
            // One last look: it may have written what we wait for, then exited.
            return check().with_context(|| format!("exited while waiting for {what}"));
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last `max` bytes of a log file, for error messages.
pub fn tail(path: &Path, max: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    let tail = text[start..].trim();
    if tail.is_empty() {
        format!("({} is empty)", path.display())
    } else {
        format!("{}:\n{tail}", path.display())
    }
}
