//! Thin wrappers over the few Linux calls the scenarios make directly: epoll, socket
//! options, thread ids and per-thread CPU time.
//!
//! The scenarios use epoll through libc on purpose: the profiler watches `epoll_wait`
//! and `epoll_ctl`, so each call here is one syscall with the arguments the caller chose.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::Context;

pub const IN: u32 = libc::EPOLLIN as u32;
pub const OUT: u32 = libc::EPOLLOUT as u32;

/// An epoll instance, level-triggered unless the caller asks otherwise.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> anyhow::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative return is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1 failed");
        }
        // SAFETY: fd was just returned by epoll_create1 and nothing else owns it.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> anyhow::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event for the duration of the call.
        let ret = unsafe { libc::epoll_ctl(self.raw(), op, fd, &mut ev) };
        if ret < 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!("epoll_ctl(op {op}, fd {fd}, events {events:#x}) failed")
            });
        }
        Ok(())
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> anyhow::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> anyhow::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    /// One `epoll_wait`. Returns the ready count; an interrupted wait counts as zero.
    pub fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> anyhow::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: events is a writable buffer of `max` epoll_event entries.
        let n = unsafe { libc::epoll_wait(self.raw(), events.as_mut_ptr(), max, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err).context("epoll_wait failed");
        }
        Ok(n as usize)
    }
}

/// A listener on a free port of 127.0.0.1, and its address: every scenario's peer.
pub fn listen_loopback() -> anyhow::Result<(std::net::TcpListener, std::net::SocketAddr)> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0 failed")?;
    let addr = listener
        .local_addr()
        .context("reading the listener address failed")?;
    Ok((listener, addr))
}

/// A zeroed event buffer for [`Epoll::wait`].
pub fn event_buf(len: usize) -> Vec<libc::epoll_event> {
    vec![libc::epoll_event { events: 0, u64: 0 }; len]
}

/// The ready bits and token of one event (copied out: the struct is packed on x86_64).
pub fn event_parts(ev: &libc::epoll_event) -> (u32, u64) {
    (ev.events, ev.u64)
}

/// Milliseconds from now until `deadline`, at most `cap`, rounded up so a wait never
/// returns just before the deadline and spins.
pub fn timeout_ms(deadline: Instant, cap: Duration) -> i32 {
    let left = deadline.saturating_duration_since(Instant::now()).min(cap);
    let ms = left.as_micros().div_ceil(1000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> anyhow::Result<()> {
    // SAFETY: value is a c_int that outlives the call; the length matches.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error()).with_context(|| {
            format!("setsockopt(fd {fd}, level {level}, option {name}, {value}) failed")
        });
    }
    Ok(())
}

/// Sets SO_SNDBUF (the kernel doubles it). Fixing it also turns off send autotuning.
pub fn set_sndbuf(fd: RawFd, bytes: i32) -> anyhow::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, bytes)
}

/// Sets SO_RCVBUF (the kernel doubles it). Fixing it also turns off receive autotuning.
pub fn set_rcvbuf(fd: RawFd, bytes: i32) -> anyhow::Result<()> {
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)
}

/// Waits up to `timeout` for `fd` to become readable (e.g. a listener with a pending
/// connection). Returns whether it is.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> anyhow::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: pfd is one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err).with_context(|| format!("poll on fd {fd} failed"));
    }
    Ok(n > 0)
}

/// The calling thread's Linux thread id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// CPU time (user + system) the calling thread has used so far.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if ret != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_rounds_up_and_caps() {
        let soon = Instant::now() + Duration::from_micros(1500);
        let ms = timeout_ms(soon, Duration::from_secs(1));
        assert!((1..=2).contains(&ms), "got {ms}");
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(timeout_ms(later, Duration::from_millis(100)), 100);
        assert_eq!(
            timeout_ms(
                Instant::now() - Duration::from_secs(1),
                Duration::from_secs(1)
            ),
            0
        );
    }

    #[test]
    fn epoll_reports_a_writable_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let ep = Epoll::new().expect("epoll");
        ep.add(client.as_raw_fd(), IN | OUT, 7).expect("add");
        let mut evs = event_buf(4);
        let n = ep.wait(&mut evs, 1000).expect("wait");
        assert_eq!(n, 1);
        let (bits, token) = event_parts(&evs[0]);
        assert_eq!(token, 7);
        assert_ne!(bits & OUT, 0);
        assert!(thread_cpu() > Duration::ZERO);
        assert!(gettid() > 0);
    }
}
