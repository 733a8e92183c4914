//! What the agent reads from /proc about its targets: epoll registrations that predate
//! attach, thread CPU time, and liveness.

use std::{fs, path::Path};

use procfs::process::{Process, Stat};

use crate::{
    event::{CtlOp, EpollCtl, Event, EventKind},
    track::parse_epoll_fdinfo,
};

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64);
    ts.unwrap_or(0)
}

/// Unix time now, in ns.
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn alive(pid: u32) -> bool {
    // A zombie has no maps left to probe; treat it as gone.
    stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// /proc/PID/stat, if `pid` exists.
fn stat(pid: u32) -> Option<Stat> {
    Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()
}

/// User plus system time in a `Stat`, in ns.
fn cpu_ns(stat: &Stat) -> u64 {
    let ticks = match procfs::ticks_per_second() {
        0 => 100,
        t => t,
    };
    (stat.utime + stat.stime) * (1_000_000_000 / ticks)
}

/// The epoll fds of `pid`.
pub fn epoll_fds(pid: u32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let link = fs::read_link(e.path()).ok()?;
        (link == Path::new("anon_inode:[eventpoll]"))
            .then(|| e.file_name().to_str()?.parse().ok())
            .flatten()
    })
    .collect()
}

/// The registrations of one epoll instance, as `Fdinfo` events.
pub fn epoll_registrations(pid: u32, epfd: i32, ts_ns: u64) -> Vec<Event> {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")) else {
        return Vec::new();
    };
    parse_epoll_fdinfo(&text)
        .into_iter()
        .map(|(fd, events, data)| {
            Event::new(
                ts_ns,
                pid,
                0,
                EventKind::EpollCtl(EpollCtl {
                    op: CtlOp::Fdinfo,
                    epfd,
                    fd,
                    events,
                    data,
                    ret: 0,
                }),
            )
        })
        .collect()
}

/// The kernel's `TcpExtListenOverflows` counter, as seen from `pid`'s network namespace.
pub fn listen_overflows(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/net/netstat")).ok()?;
    parse_listen_overflows(&text)
}

/// Finds `ListenOverflows` in the `TcpExt:` header/value line pair of /proc/net/netstat.
fn parse_listen_overflows(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    while let Some(header) = lines.next() {
        let values = lines.next()?;
        if !header.starts_with("TcpExt:") {
            continue;
        }
        let i = header
            .split_whitespace()
            .position(|h| h == "ListenOverflows")?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}

/// Read-like and write-like syscalls `pid` has made so far (`syscr + syscw` of
/// /proc/PID/io), or None when unreadable.
pub fn io_syscalls(pid: u32) -> Option<u64> {
    let io = Process::new(i32::try_from(pid).ok()?).ok()?.io().ok()?;
    Some(io.syscr + io.syscw)
}

/// CPU time (user + system) of every thread of `pid`, as `ThreadCpu` events.
pub fn thread_cpu(pid: u32, ts_ns: u64) -> Vec<Event> {
    let Some(tasks) = i32::try_from(pid)
        .ok()
        .and_then(|p| Process::new(p).ok()?.tasks().ok())
    else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let task = task.ok()?;
            let stat = task.stat().ok()?;
            Some(Event::new(
                ts_ns,
                pid,
                u32::try_from(task.tid).ok()?,
                EventKind::ThreadCpu {
                    cpu_ns: cpu_ns(&stat),
                },
            ))
        })
        .collect()
}

/// CPU time (user + system) of `pid` so far, its exited threads included.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    stat(pid).map(|s| cpu_ns(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_overflows_parse() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\n\
                    TcpExt: 0 17 17\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(parse_listen_overflows(text), Some(17));
        assert_eq!(parse_listen_overflows("IpExt: A\nIpExt: 1\n"), None);
        assert!(listen_overflows(std::process::id()).is_some());
    }

    #[test]
    fn own_threads_have_cpu_time_and_we_are_alive() {
        let pid = std::process::id();
        assert!(alive(pid));
        assert!(!alive(u32::MAX - 1));
        let evs = thread_cpu(pid, 1);
        assert!(!evs.is_empty());
        assert!(evs.iter().any(|e| e.tid == pid));
        assert!(process_cpu_ns(pid).is_some());
        assert_eq!(process_cpu_ns(u32::MAX - 1), None);
    }

    #[test]
    fn epoll_registrations_are_read_from_fdinfo() {
        let ep = nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::empty()).unwrap();
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        ep.add(
            &a,
            nix::sys::epoll::EpollEvent::new(nix::sys::epoll::EpollFlags::EPOLLIN, 0xabcdef),
        )
        .unwrap();
        let pid = std::process::id();
        use std::os::fd::AsRawFd;
        let epfd = ep.0.as_raw_fd();
        assert!(epoll_fds(pid).contains(&epfd));
        let regs = epoll_registrations(pid, epfd, 5);
        assert_eq!(regs.len(), 1);
        let EventKind::EpollCtl(c) = &regs[0].kind else {
            panic!()
        };
        assert_eq!((c.fd, c.data), (a.as_raw_fd(), 0xabcdef));
        // The kernel always reports EPOLLERR|EPOLLHUP as part of the interest.
        assert_eq!(c.events & libc::EPOLLIN as u32, libc::EPOLLIN as u32);
    }
}
