//! Leaving fast. The kernel unregisters a syscall tracepoint link in ~40-70 ms, one after
//! another (each waits for a tracepoint synchronisation under a global mutex), so closing
//! the ~30 of them when tls-probe exits held the terminal, or the script that stopped it,
//! for one to two seconds. By the time this runs the summary is written, the targets are
//! out of the kernel filter (every program returns at once for them) and the uprobes, the
//! only probes that cost a target more than a filtered tracepoint hit, are detached. What
//! is left is handed to a short-lived detached process that waits for tls-probe to be gone
//! (a pidfd of it becomes readable) and then exits: the last reference to each BPF fd is
//! its, so its exit pays for the unregistering while tls-probe's own exit is quick.

use std::{
    ffi::CString,
    fs,
    os::fd::{AsFd, FromRawFd, OwnedFd, RawFd},
};

use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::{prctl, wait::waitpid},
    unistd::{ForkResult, close, fork, setsid},
};

/// The name the holder shows in `ps` while the kernel finishes.
const HOLDER_COMM: &str = "tls-probe-exit";

/// Whether an fd (by its `/proc/self/fd` link) is one the holder must keep: a BPF object
/// (link, program, map) or the perf event a tracepoint link sits on. Everything else (the
/// terminal, pipes, sockets, the output file) is closed in the holder at once, so that
/// nobody waiting on them waits for it.
fn keep(link: &str) -> bool {
    link.starts_with("anon_inode:bpf") || link == "anon_inode:[perf_event]"
}

/// Forks the holder of this process's BPF fds, if there are any. Returns at once; the
/// caller then drops its own copies of the fds, which is quick because the holder still
/// references them. A failure only costs the slow exit.
pub fn hand_off_bpf_fds() {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let mut close_fds = Vec::new();
    let mut kept = 0usize;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        match fs::read_link(entry.path()) {
            Ok(link) if keep(&link.to_string_lossy()) => kept += 1,
            _ => close_fds.push(fd),
        }
    }
    if kept == 0 {
        return;
    }
    let comm = CString::new(HOLDER_COMM).unwrap_or_default();
    // Whoever closes an fd last pays for its release: the holder must outlive this
    // process. A pidfd of it becomes readable once it has exited, files closed.
    // nix 0.30 has no pidfd_open, hence the raw syscall.
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) } as RawFd;
    if pidfd < 0 {
        log::debug!("pidfd_open failed: closing the BPF fds here");
        return;
    }
    // SAFETY: a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // SAFETY: the children call only async-signal-safe functions (close, setsid, prctl,
    // fork, poll, _exit) before exiting; nothing allocates or takes a lock.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            for &fd in &close_fds {
                // Fds of this child only (none of them is the pidfd, opened after the list).
                let _ = close(fd);
            }
            let _ = setsid();
            // A grandchild holds the fds, so that the holder is nobody's child to reap.
            // SAFETY: as above.
            if let Ok(ForkResult::Parent { .. }) = unsafe { fork() } {
                // SAFETY: exits at once, running none of the parent's exit handlers (nix
                // 0.30 has no _exit).
                unsafe { libc::_exit(0) };
            }
            let _ = prctl::set_name(&comm);
            let mut gone = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
            while poll(&mut gone, PollTimeout::NONE).is_ok_and(|n| n == 0) {}
            // SAFETY: as above; exiting closes the BPF fds.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            // Our own copy of the pidfd, no longer needed here.
            drop(pidfd);
            let _ = waitpid(child, None);
            log::debug!("{kept} BPF fds handed to a {HOLDER_COMM} process to close");
        }
        Err(e) => log::debug!("no holder for the BPF fds ({e}): closing them here"),
    }
}

#[cfg(test)]
mod tests {
    use super::keep;

    #[test]
    fn keeps_only_bpf_objects_and_perf_events() {
        for link in [
            "anon_inode:bpf-link",
            "anon_inode:bpf-map",
            "anon_inode:bpf-prog",
            "anon_inode:[perf_event]",
        ] {
            assert!(keep(link), "{link}");
        }
        for link in [
            "/dev/pts/0",
            "pipe:[1234]",
            "socket:[99]",
            "/tmp/run.ndjson",
            "anon_inode:[eventpoll]",
            "anon_inode:[eventfd]",
        ] {
            assert!(!keep(link), "{link}");
        }
    }
}
