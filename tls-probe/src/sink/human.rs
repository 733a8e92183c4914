//! Human-readable lines for a terminal: findings and what happens to the targets on
//! stderr, and one line per event on stdout with `--events` (without `-o`).

use std::{
    fmt::Write as _,
    io::{BufWriter, Stdout, Write as _},
};

use anyhow::{Context as _, Result};

use super::{Flush, Record, Sink};
use crate::{
    engine::{Change, FindingChange},
    event::{Event, EventKind, PeerSide, SslErrorCode, SysKind},
};

/// The terminal as a sink.
pub struct HumanSink {
    /// Print every event on stdout.
    events: Option<BufWriter<Stdout>>,
    /// Print findings and target changes on stderr.
    notes: bool,
}

impl HumanSink {
    pub fn new(print_events: bool, notes: bool) -> Self {
        Self {
            events: print_events.then(|| BufWriter::new(std::io::stdout())),
            notes,
        }
    }
}

impl Sink for HumanSink {
    fn record(&mut self, rec: Record<'_>) -> Result<()> {
        if let (Record::Event(ev), Some(out)) = (rec, self.events.as_mut()) {
            return writeln!(out, "{}", event_line(ev)).context("writing to stdout");
        }
        if !self.notes {
            return Ok(());
        }
        match rec {
            Record::Start(start) => {
                for t in &start.targets {
                    let skipped = if t.missing_symbols.is_empty() {
                        String::new()
                    } else {
                        format!(" (skipped missing {})", t.missing_symbols.join(", "))
                    };
                    eprintln!(
                        "tls-probe: attached to pid {} ({}) through {}{skipped}",
                        t.pid, t.comm, t.library_path
                    );
                }
            }
            Record::Finding(change) => eprint!("{}", finding_lines(change)),
            Record::Lost(lost) => eprintln!(
                "tls-probe: lost {} events (ring buffer full), {} call states and {} undecodable records",
                lost.new.ringbuf, lost.new.inflight, lost.new.decode
            ),
            Record::TargetAttach(a) => {
                let why = match a.cause {
                    super::record::AttachCause::Child => format!("child of {}", a.parent_pid),
                    super::record::AttachCause::LibraryLoaded => {
                        format!("it loaded {}", a.target.library_path)
                    }
                    super::record::AttachCause::Exec => {
                        format!("it ran a new program using {}", a.target.library_path)
                    }
                    super::record::AttachCause::Discovered => {
                        format!("a new process using {}", a.target.library_path)
                    }
                };
                eprintln!(
                    "tls-probe: attached to pid {} ({}), {why}",
                    a.target.pid, a.target.comm
                );
            }
            Record::TargetExit(exit) => {
                eprintln!("tls-probe: pid {} ({}) exited", exit.pid, exit.comm);
            }
            Record::Event(_) | Record::Snapshot(_) | Record::Summary(_) => {}
        }
        Ok(())
    }

    fn flush(&mut self, _at: Flush) -> Result<()> {
        match self.events.as_mut() {
            Some(out) => out.flush().context("writing to stdout"),
            None => Ok(()),
        }
    }

    fn wants_events(&self) -> bool {
        self.events.is_some()
    }

    fn quiet(&mut self) {
        self.notes = false;
        self.events = None;
    }
}

/// The stderr lines for a finding change: the summary, and for a new finding why and what
/// to do.
pub fn finding_lines(change: &FindingChange) -> String {
    let verb = match change.change {
        Change::Opened => "FINDING",
        Change::Updated => "update ",
        Change::Closed => "closed ",
    };
    let f = &change.finding;
    let mut s = format!("tls-probe: {verb} {}\n", f.summary_line());
    if change.change == Change::Opened {
        let _ = writeln!(s, "           why: {}", f.explanation);
        let _ = writeln!(s, "           fix: {}", f.advice);
    }
    if let Some(cs) = &f.call_sites {
        let _ = writeln!(s, "           where: {}", cs.headline());
    }
    s
}

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
        EventKind::SslSetFd { ssl, fd } => {
            let _ = write!(s, "ssl={ssl:#x} fd={fd}");
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
        EventKind::Peer { fd, addr, side } => {
            let side = match side {
                PeerSide::Accepted => "accepted",
                PeerSide::Connected => "connected",
            };
            let _ = write!(s, "fd={fd} peer={addr} {side}");
        }
        EventKind::ListenOverflows { total } => {
            let _ = write!(s, "TcpExtListenOverflows={total}");
        }
        EventKind::ThreadCpu { cpu_ns } => {
            let _ = write!(s, "cpu={}ms", cpu_ns / 1_000_000);
        }
        EventKind::ServerHello(h) => {
            let _ = write!(
                s,
                "ssl={:#x} fd={} ServerHello {} {}{}{}",
                h.ssl,
                fd(h.fd),
                crate::engine::tls_names::version_name(h.version),
                crate::engine::tls_names::cipher_name(h.cipher),
                if h.psk { " psk" } else { "" },
                if h.hello_retry { " hello-retry" } else { "" }
            );
        }
        EventKind::TaskExit {
            cleared,
            group_dead,
        } => {
            let _ = write!(s, "cleared={cleared} group_dead={group_dead}");
        }
        EventKind::EpollBusy(w) => {
            let _ = write!(
                s,
                "epfd={} {} ready waits ({} at once, {} same fd again) in {}us (aggregated) last fd{}:{}",
                w.epfd,
                w.count,
                w.quick,
                w.repeats,
                ev.ts_ns.saturating_sub(w.first_ns) / 1000,
                fd(w.last_ready.fd),
                epoll_mask(w.last_ready.events)
            );
        }
        EventKind::LibError {
            lib,
            reason,
            reason_name,
            ssl,
            op,
            fd: call_fd,
        } => {
            if let Some(ssl) = ssl {
                let _ = write!(s, "ssl={ssl:#x} fd={} ", fd(*call_fd));
            }
            let _ = write!(
                s,
                "lib={lib} reason={reason}{}",
                reason_name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            );
            if let Some(op) = op {
                let _ = write!(s, " in {}", op.symbol());
            }
        }
        EventKind::AsyncPause { ssl } => match ssl {
            Some(ssl) => {
                let _ = write!(s, "ssl={ssl:#x} async job paused (WANT_ASYNC)");
            }
            None => s.push_str("async job paused (WANT_ASYNC)"),
        },
        EventKind::SockOverlap(o) => {
            let sys = |k| match k {
                SysKind::Read => "read",
                SysKind::Write => "write",
            };
            let _ = write!(
                s,
                "fd={} {} entered while tid {}'s {} in flight for {}us",
                o.fd,
                sys(o.sys_b),
                o.tid_a,
                sys(o.sys_a),
                ev.ts_ns.saturating_sub(o.a_since_ns) / 1000
            );
        }
        EventKind::SslFd {
            ssl,
            fd,
            via,
            op,
            record_type,
            sys_bytes,
        } => {
            let when = match via {
                crate::event::BioVia::Read => "before",
                crate::event::BioVia::Write => "after",
            };
            let _ = write!(
                s,
                "ssl={ssl:#x} fd={fd} memory BIO: {sys_bytes} bytes (record type {record_type}) {when} {}",
                op.symbol()
            );
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
