//! Every kernel tracepoint tls-probe attaches, with the kernels and architectures that have
//! it and what is lost where one is absent; and the oldest kernel tls-probe runs on.
//!
//! The program of each tracepoint is named after it in `tls-probe-ebpf`; the unit test at the
//! bottom checks that every name here exists in the embedded object.

use anyhow::{Result, bail};

/// A kernel version, major and minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kernel(pub u32, pub u32);

impl std::fmt::Display for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// The oldest kernel tls-probe runs on: the BPF ring buffer (5.8), and attach cookies on
/// uprobe links (5.15), which tell the per-call probes' functions apart. uprobe_multi links
/// (6.6) are used where the kernel has them, with one link per function as the fallback.
pub const MIN_KERNEL: Kernel = Kernel(5, 15);

/// Whether a tracepoint must attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Attaching fails without it.
    Required,
    /// Skipped where the kernel lacks it; the text says what is not seen then.
    Optional(&'static str),
}

/// One tracepoint: `category:name`, its program in the object is `name`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    pub category: &'static str,
    pub name: &'static str,
    /// The first kernel that has it (on the architectures that have the syscall).
    pub since: Kernel,
    pub need: Need,
}

const fn required(category: &'static str, name: &'static str) -> Tracepoint {
    Tracepoint {
        category,
        name,
        since: MIN_KERNEL,
        need: Need::Required,
    }
}

const fn syscall(name: &'static str) -> Tracepoint {
    required("syscalls", name)
}

const EPOLL_WAIT_ONLY_X86: Need = Need::Optional(
    "waits made through epoll_wait itself (x86_64 has it; arm64 has only epoll_pwait)",
);
const PWAIT2: Need = Need::Optional("waits made through epoll_pwait2 (Linux 5.11+)");

/// Attached at load, for the whole run: epoll waits and registrations, close, the peers of
/// new connections, and thread exit.
pub const ALWAYS: &[Tracepoint] = &[
    Tracepoint {
        need: EPOLL_WAIT_ONLY_X86,
        ..syscall("sys_enter_epoll_wait")
    },
    Tracepoint {
        need: EPOLL_WAIT_ONLY_X86,
        ..syscall("sys_exit_epoll_wait")
    },
    syscall("sys_enter_epoll_pwait"),
    syscall("sys_exit_epoll_pwait"),
    Tracepoint {
        since: Kernel(5, 11),
        need: PWAIT2,
        ..syscall("sys_enter_epoll_pwait2")
    },
    Tracepoint {
        since: Kernel(5, 11),
        need: PWAIT2,
        ..syscall("sys_exit_epoll_pwait2")
    },
    syscall("sys_enter_epoll_ctl"),
    syscall("sys_exit_epoll_ctl"),
    syscall("sys_enter_close"),
    syscall("sys_enter_accept4"),
    syscall("sys_exit_accept4"),
    syscall("sys_enter_accept"),
    syscall("sys_exit_accept"),
    syscall("sys_enter_connect"),
    syscall("sys_exit_connect"),
    // Clears per-thread state, reports the exit of a traced process at once.
    required("sched", "sched_process_exit"),
];

/// Socket I/O (tls-probe-ebpf/src/sockio.rs): the fd of an SSL call, the ServerHello inside
/// a handshake call, two threads on one fd. They fire on every read and write of every
/// process, so outside full mode they are attached only while they can tell something.
pub const SOCKIO: &[Tracepoint] = &[
    syscall("sys_enter_read"),
    syscall("sys_exit_read"),
    syscall("sys_enter_write"),
    syscall("sys_exit_write"),
    syscall("sys_enter_recvfrom"),
    syscall("sys_exit_recvfrom"),
    syscall("sys_enter_sendto"),
    syscall("sys_exit_sendto"),
    syscall("sys_enter_recvmsg"),
    syscall("sys_exit_recvmsg"),
    syscall("sys_enter_sendmsg"),
    syscall("sys_exit_sendmsg"),
    syscall("sys_enter_readv"),
    syscall("sys_exit_readv"),
    syscall("sys_enter_writev"),
    syscall("sys_exit_writev"),
];

/// The kernel version in a `uname -r` release string ("6.18.0-1-amd64" -> 6.18).
pub fn parse_release(release: &str) -> Option<Kernel> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some(Kernel(major, minor))
}

/// Refuses a kernel older than [`MIN_KERNEL`], naming what it lacks. An unreadable release
/// is let through: loading the programs then says what failed.
pub fn check_kernel(release: &str) -> Result<()> {
    match parse_release(release) {
        Some(k) if k < MIN_KERNEL => bail!(
            "this kernel is {release}; tls-probe needs Linux {MIN_KERNEL} or newer (the BPF ring buffer, 5.8, and attach cookies on uprobes, 5.15); run it on a newer kernel"
        ),
        _ => Ok(()),
    }
}

/// Whether tracefs lists the tracepoint: an optional one that fails to attach is skipped
/// only when the kernel really lacks it.
pub fn exists(tp: &Tracepoint) -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|root| {
            std::path::Path::new(root)
                .join("events")
                .join(tp.category)
                .join(tp.name)
                .exists()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_and_old_kernels_are_refused_with_the_reason() {
        assert_eq!(parse_release("6.18.0-1-amd64"), Some(Kernel(6, 18)));
        assert_eq!(parse_release("5.15.167"), Some(Kernel(5, 15)));
        assert_eq!(parse_release("4.19"), Some(Kernel(4, 19)));
        assert_eq!(parse_release("garbage"), None);
        assert!(check_kernel("5.15.0").is_ok());
        assert!(check_kernel("6.18.0-rc1").is_ok());
        assert!(check_kernel("not a version").is_ok());
        let err = check_kernel("5.10.0-28-amd64").unwrap_err().to_string();
        assert!(
            err.contains("5.10.0-28-amd64") && err.contains("5.15"),
            "{err}"
        );
    }

    #[test]
    fn every_tracepoint_is_listed_once_and_only_optional_ones_are_newer_than_the_minimum() {
        let mut names: Vec<_> = ALWAYS.iter().chain(SOCKIO).map(|t| t.name).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        for tp in ALWAYS.iter().chain(SOCKIO) {
            if tp.since > MIN_KERNEL {
                assert!(matches!(tp.need, Need::Optional(_)), "{}", tp.name);
            }
        }
    }
}
