//! `tls-probe run -- CMD ARGS...`: start a command with the probes in place before it runs.
//!
//! The command is forked and held before exec, blocked on a pipe: tls-probe finds the TLS
//! library the program will load (OpenSSL linked into it, the libssl `ldd` resolves, or the
//! system libssl it may dlopen), attaches to the held pid — uprobes are placed on the
//! library's inode, so they fire once the program maps it — and then releases it. No
//! ptrace. Its first handshake is seen.
//!
//! tls-probe exits when every traced process has exited, with the command's exit status:
//! its exit code, or 128 + N when signal N killed it (as a shell reports it). When
//! tls-probe stops first, on `--duration` it waits for the command to exit; on a signal
//! (Ctrl-C, SIGTERM, SIGHUP) it sends the command SIGTERM, then waits. tls-probe's own
//! errors print `tls-probe: error: ...` and exit 1.

use std::{
    ffi::{CString, OsString},
    os::{fd::OwnedFd, unix::ffi::OsStrExt as _},
    path::Path,
    process::ExitCode,
};

use anyhow::{Context as _, Result, anyhow};
use nix::{
    fcntl::OFlag,
    sys::{
        signal::{Signal, kill},
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, Pid, execv, fork, pipe2},
};

use super::attach;
use crate::{cli::RunArgs, probe::discover, sink::StopReason};

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let name = args.command.first().ok_or_else(|| {
        anyhow!("no command: pass it after `--`, e.g. `tls-probe run -- curl https://example.org`")
    })?;
    let program = which::which(name).map_err(|e| {
        anyhow!(
            "cannot run {}: {e} (searched PATH); pass the command's path",
            Path::new(name).display()
        )
    })?;
    let lib = match &args.target.libssl {
        Some(path) => discover::library_at(path, &path.display().to_string())?,
        None => discover::library_for_program(&program)?,
    };
    let mut outputs = attach::open_outputs(&args.output)?;
    // The command shares the terminal: findings print as lines, not in a dashboard.
    outputs.dashboard = false;
    let mut child = Held::spawn(&program, &args.command)?;
    let mut cfg = attach::config(&args.output, vec![child.pid()]);
    cfg.libssl = args.target.libssl.clone();
    cfg.children = !args.target.no_children;
    cfg.libraries.insert(child.pid(), lib);
    // The command starts under the probes: its first handshake and calls are worth a
    // window, and there is no load yet for one to slow.
    cfg.window_at_start = true;
    let summary = attach::run_session(cfg, outputs, |_| child.release())?;
    attach::print_summary(&summary, false);
    match summary.stop_reason {
        StopReason::TargetsExited => {}
        StopReason::Signal => {
            let _ = kill(child.pid, Signal::SIGTERM);
        }
        StopReason::Duration => eprintln!(
            "tls-probe: tracing stopped after --duration; waiting for {} (pid {}) to exit",
            program.display(),
            child.pid
        ),
    }
    let code = match child.wait()? {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => 128 + sig as i32,
        other => anyhow::bail!("unexpected wait status of the command: {other:?}"),
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// A forked child held before exec until [`Held::release`]; killed on drop if never
/// released.
struct Held {
    pid: Pid,
    release: Option<OwnedFd>,
    reaped: bool,
}

impl Held {
    /// Forks; the child blocks reading a pipe and execs `program` once a byte arrives (it
    /// exits 125 without exec if the pipe closes first). Call while single-threaded: before
    /// the runtime starts.
    fn spawn(program: &Path, argv: &[OsString]) -> Result<Self> {
        let c = |s: &std::ffi::OsStr| {
            CString::new(s.as_bytes()).with_context(|| format!("{s:?} contains a NUL byte"))
        };
        let path = c(program.as_os_str())?;
        let args = argv.iter().map(|a| c(a)).collect::<Result<Vec<_>>>()?;
        let failed = format!("tls-probe: cannot execute {}: ", program.display());
        // The held child shows the command's name from the start (`start.targets[].comm`),
        // not tls-probe's; exec sets the same name.
        let comm = c(program.file_name().unwrap_or_default())?;
        let (rd, wr) =
            pipe2(OFlag::O_CLOEXEC).context("creating the pipe that holds the command")?;
        // SAFETY: tls-probe is single-threaded here (no runtime yet); the child only reads
        // a pipe and execs, or writes a message and exits.
        match unsafe { fork() }.context("forking the command")? {
            ForkResult::Child => {
                drop(wr);
                // Cut to 15 bytes by the kernel.
                let _ = nix::sys::prctl::set_name(&comm);
                let mut byte = [0u8; 1];
                let go = loop {
                    match nix::unistd::read(&rd, &mut byte) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        r => break r == Ok(1),
                    }
                };
                if !go {
                    // SAFETY: exits the child at once, without running the parent's handlers
                    // (nix 0.30 has no _exit).
                    unsafe { libc::_exit(125) };
                }
                let err = execv(&path, &args).unwrap_err();
                let msg = format!("{failed}{}\n", err.desc());
                let _ = nix::unistd::write(std::io::stderr(), msg.as_bytes());
                // SAFETY: as above.
                unsafe { libc::_exit(127) }
            }
            ForkResult::Parent { child } => {
                drop(rd);
                Ok(Self {
                    pid: child,
                    release: Some(wr),
                    reaped: false,
                })
            }
        }
    }

    fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Lets the command exec.
    fn release(&mut self) -> Result<()> {
        if let Some(fd) = self.release.take() {
            nix::unistd::write(&fd, b"x").context("releasing the command")?;
        }
        Ok(())
    }

    fn wait(&mut self) -> Result<WaitStatus> {
        loop {
            match waitpid(self.pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => {
                    self.reaped = true;
                    return r.context("waiting for the command");
                }
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Never released (tls-probe failed to attach): the command must not run untraced.
        if self.release.is_some() && !self.reaped {
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
        }
    }
}
