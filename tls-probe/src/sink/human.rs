//! Human-readable lines for a terminal: one per event with `--events`.

use std::fmt::Write as _;

use crate::event::{Event, EventKind, SslErrorCode};

/// EPOLL* bit names, in the order users read them.
const EPOLL_BITS: &[(u32, &str)] = &[
    (libc::EPOLLIN as u32, "EPOLLIN"),
    (libc::EPOLLPRI as u32, "EPOLLPRI"),
    (libc::EPOLLOUT as u32, "EPOLLOUT"),
    (libc::EPOLLERR as u32, "EPOLLERR"),
    (libc::EPOLLHUP as u32, "EPOLLHUP"),
    (libc::EPOLLRDHUP as u32, "EPOLLRDHUP"),
    (libc::EPOLLEXCLUSIVE as u32, "EPOLLEXCLUSIVE"),
    (libc::EPOLLONESHOT as u32, "EPOLLONESHOT"),
    (libc::EPOLLET as u32, "EPOLLET"),
];

/// "EPOLLIN|EPOLLOUT" for a mask; "0" for none.
pub fn epoll_mask(mask: u32) -> String {
    let mut out = String::new();
    let mut rest = mask;
    for &(bit, name) in EPOLL_BITS {
        if mask & bit != 0 {
            if !out.is_empty() {
                out.push('|');
            }
            out.push_str(name);
            rest &= !bit;
        }
    }
    if rest != 0 {
        if !out.is_empty() {
            out.push('|');
        }
        let _ = write!(out, "{rest:#x}");
    }
    if out.is_empty() {
        out.push('0');
    }
    out
}

fn fd(fd: Option<i32>) -> String {
    fd.map_or_else(|| "?".to_owned(), |f| f.to_string())
}

/// One line describing an event.
pub fn event_line(ev: &Event) -> String {
    let mut s = format!(
        "{:>10.6} {:>7}/{:<7} {:<16} ",
        ev.ts_ns as f64 / 1e9,
        ev.pid,
        ev.tid,
        ev.probe
    );
    match &ev.kind {
        EventKind::SslCall(c) => {
            let _ = write!(
                s,
                "ssl={:#x} fd={} len={} ret={} bytes={} {}us",
                c.ssl,
                fd(c.fd),
                c.len,
                c.ret,
                c.bytes,
                c.duration_ns / 1000
            );
        }
        EventKind::SslError(e) => {
            let _ = write!(s, "ssl={:#x} ret={} -> {}", e.ssl, e.ret_arg, e.code.name());
            if e.code == SslErrorCode::Ssl {
                s.push_str(" (fatal)");
            }
        }
        EventKind::SslFree { ssl } => {
            let _ = write!(s, "ssl={ssl:#x}");
        }
        EventKind::EpollWait(w) => {
            let timeout = w
                .timeout_ns
                .map_or("inf".to_owned(), |t| format!("{}ms", t / 1_000_000));
            let _ = write!(
                s,
                "epfd={} timeout={} blocked={}us ready={}",
                w.epfd,
                timeout,
                w.duration_ns / 1000,
                w.ret
            );
            for r in &w.ready {
                let _ = write!(s, " fd{}:{}", fd(r.fd), epoll_mask(r.events));
            }
        }
        EventKind::EpollIdle(w) => {
            let _ = write!(
                s,
                "epfd={} {} empty waits with timeout 0 in {}us (aggregated)",
                w.epfd,
                w.count,
                ev.ts_ns.saturating_sub(w.first_ns) / 1000
            );
        }
        EventKind::EpollCtl(c) => {
            let _ = write!(
                s,
                "{:?} epfd={} fd={} interest={} data={:#x}",
                c.op,
                c.epfd,
                c.fd,
                epoll_mask(c.events),
                c.data
            );
        }
        EventKind::Close { fd, .. } => {
            let _ = write!(s, "fd={fd}");
        }
        EventKind::ThreadCpu { cpu_ns } => {
            let _ = write!(s, "cpu={}ms", cpu_ns / 1_000_000);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_named() {
        assert_eq!(epoll_mask(0x1 | 0x4), "EPOLLIN|EPOLLOUT");
        assert_eq!(epoll_mask(0), "0");
        assert_eq!(epoll_mask(1 << 31 | 1), "EPOLLIN|EPOLLET");
        assert_eq!(epoll_mask(0x100_0000), "0x1000000");
    }
}
