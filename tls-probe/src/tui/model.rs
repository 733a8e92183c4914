//! What the dashboard knows, and the rows each panel lists: filtered and sorted.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BTreeMap, BTreeSet},
};

use super::{HeaderInfo, handshakes::HandshakeView};
use crate::engine::{ConnSnapshot, Finding, Severity, Snapshot, ThreadSnapshot};

/// Findings kept; past this the oldest closed ones go first.
const MAX_FINDINGS: usize = 1000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ThreadSort {
    /// Wake-ups with no progress per second: the spinning thread on top.
    #[default]
    Wasted,
    Cpu,
    Wakeups,
    Tid,
}

impl ThreadSort {
    pub fn name(self) -> &'static str {
        match self {
            Self::Wasted => "wasted wake-ups",
            Self::Cpu => "CPU",
            Self::Wakeups => "wake-ups",
            Self::Tid => "tid",
        }
    }

    pub(super) fn next(self) -> Self {
        match self {
            Self::Wasted => Self::Cpu,
            Self::Cpu => Self::Wakeups,
            Self::Wakeups => Self::Tid,
            Self::Tid => Self::Wasted,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConnSort {
    /// WANT_READ + WANT_WRITE answers: the connection the loop keeps retrying on top.
    #[default]
    Wants,
    LastActive,
    Bytes,
    Fd,
}

impl ConnSort {
    pub fn name(self) -> &'static str {
        match self {
            Self::Wants => "WANT_* count",
            Self::LastActive => "last activity",
            Self::Bytes => "bytes",
            Self::Fd => "fd",
        }
    }

    pub(super) fn next(self) -> Self {
        match self {
            Self::Wants => Self::LastActive,
            Self::LastActive => Self::Bytes,
            Self::Bytes => Self::Fd,
            Self::Fd => Self::Wants,
        }
    }
}

/// What the agent told us. While paused the view draws a frozen copy.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub header: HeaderInfo,
    /// Every finding seen, open and closed, by id.
    pub findings: BTreeMap<u64, Finding>,
    pub snapshot: Option<Snapshot>,
    pub handshakes: HandshakeView,
    pub exited: BTreeSet<u32>,
    /// Some snapshot listed a connection.
    pub seen_connections: bool,
    /// CLOCK_MONOTONIC ns: the latest of the frame clock and the engine's clock.
    pub now_ns: u64,
}

impl Model {
    pub fn threads(&self) -> &[ThreadSnapshot] {
        self.snapshot.as_ref().map_or(&[], |s| &s.threads)
    }

    pub fn connections(&self) -> &[ConnSnapshot] {
        self.snapshot.as_ref().map_or(&[], |s| &s.connections)
    }

    pub fn open_findings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.values().filter(|f| f.is_open())
    }

    /// A process's name, from the snapshot or the header.
    pub fn comm(&self, pid: u32) -> Option<&str> {
        let snap = self.snapshot.as_ref().and_then(|s| {
            s.processes
                .iter()
                .find(|p| p.pid == pid)
                .and_then(|p| p.comm.as_deref())
        });
        snap.or_else(|| {
            let t = self.header.targets.iter().find(|t| t.pid == pid)?;
            Some(t.comm.as_str())
        })
    }

    /// The worst open finding about this thread.
    pub fn thread_severity(&self, pid: u32, tid: u32) -> Option<Severity> {
        self.open_findings()
            .filter(|f| f.pid == pid && f.tid == Some(tid))
            .map(|f| f.severity)
            .max()
    }

    /// The worst open finding about this connection (by SSL*, else by fd).
    pub fn conn_severity(&self, c: &ConnSnapshot) -> Option<Severity> {
        self.open_findings()
            .filter(|f| f.pid == c.pid && about_conn(f, c))
            .map(|f| f.severity)
            .max()
    }

    /// Findings matching `filter` (lower case); open before closed, most severe first,
    /// then by their key number.
    pub fn findings_by_severity(&self, filter: &str) -> Vec<&Finding> {
        let mut v: Vec<&Finding> = self
            .findings
            .values()
            .filter(|f| filter.is_empty() || finding_haystack(f).contains(filter))
            .collect();
        v.sort_by(|a, b| {
            (b.is_open(), b.severity)
                .cmp(&(a.is_open(), a.severity))
                .then(b.evidence.headline().total_cmp(&a.evidence.headline()))
                .then(a.id.cmp(&b.id))
        });
        v
    }

    pub fn threads_sorted(&self, filter: &str, sort: ThreadSort) -> Vec<&ThreadSnapshot> {
        let mut v: Vec<&ThreadSnapshot> = self
            .threads()
            .iter()
            .filter(|t| filter.is_empty() || thread_haystack(self, t).contains(filter))
            .collect();
        let cpu = |t: &ThreadSnapshot| t.cpu_pct.unwrap_or(-1.0);
        v.sort_by(|a, b| {
            match sort {
                ThreadSort::Wasted => b
                    .wakeups_no_progress_per_sec
                    .total_cmp(&a.wakeups_no_progress_per_sec)
                    .then(cpu(b).total_cmp(&cpu(a))),
                ThreadSort::Cpu => cpu(b).total_cmp(&cpu(a)),
                ThreadSort::Wakeups => b.wakeups_per_sec.total_cmp(&a.wakeups_per_sec),
                ThreadSort::Tid => Ordering::Equal,
            }
            .then((a.pid, a.tid).cmp(&(b.pid, b.tid)))
        });
        v
    }

    pub fn connections_sorted(&self, filter: &str, sort: ConnSort) -> Vec<&ConnSnapshot> {
        let mut v: Vec<&ConnSnapshot> = self
            .connections()
            .iter()
            .filter(|c| filter.is_empty() || conn_haystack(c).contains(filter))
            .collect();
        let key = |c: &ConnSnapshot| match sort {
            ConnSort::Wants => Reverse(c.want_read_total + c.want_write_total),
            ConnSort::LastActive => Reverse(c.last_seen_ns),
            ConnSort::Bytes => Reverse(c.read_bytes_total + c.written_bytes_total),
            ConnSort::Fd => Reverse(0),
        };
        v.sort_by_key(|c| (key(c), c.pid, c.fd.unwrap_or(i32::MAX), c.ssl));
        v
    }

    pub(super) fn insert(&mut self, f: Finding) {
        self.findings.insert(f.id, f);
        if self.findings.len() > MAX_FINDINGS {
            let victim = self
                .findings
                .values()
                .filter(|f| !f.is_open())
                .min_by_key(|f| (f.last_seen_ns, f.id))
                .or_else(|| self.findings.values().next())
                .map(|f| f.id);
            if let Some(id) = victim {
                self.findings.remove(&id);
            }
        }
    }
}

/// The rows of processes that exited stay as the last snapshot before the exit showed
/// them: the engine frees their connections and ages out their threads, but the user
/// looking at what went wrong wants to see them as they were.
pub(super) fn keep_exited(exited: &BTreeSet<u32>, old: &Snapshot, new: &mut Snapshot) {
    if exited.is_empty() {
        return;
    }
    fn keep<T: Clone>(old: &[T], new: &mut Vec<T>, gone: impl Fn(&T) -> bool) {
        new.retain(|r| !gone(r));
        new.extend(old.iter().filter(|r| gone(r)).cloned());
    }
    keep(&old.processes, &mut new.processes, |p| {
        exited.contains(&p.pid)
    });
    keep(&old.threads, &mut new.threads, |t| exited.contains(&t.pid));
    keep(&old.connections, &mut new.connections, |c| {
        exited.contains(&c.pid)
    });
    new.processes.sort_by_key(|p| p.pid);
    new.threads.sort_by_key(|t| (t.pid, t.tid));
    new.connections.sort_by_key(|c| (c.pid, c.ssl));
}

pub(super) fn about_conn(f: &Finding, c: &ConnSnapshot) -> bool {
    match f.ssl {
        Some(ssl) => ssl == c.ssl,
        None => f.fd.is_some() && f.fd == c.fd,
    }
}

/// Lower-case text a filter is matched against.
fn finding_haystack(f: &Finding) -> String {
    let mut s = format!(
        "{} pid {} {}",
        f.kind,
        f.pid,
        f.comm.as_deref().unwrap_or("")
    );
    if let Some(tid) = f.tid {
        s += &format!(" tid {tid}");
    }
    if let Some(fd) = f.fd {
        s += &format!(" fd {fd}");
    }
    if let Some(peer) = &f.peer {
        s += &format!(" {peer}");
    }
    s.to_lowercase()
}

fn thread_haystack(m: &Model, t: &ThreadSnapshot) -> String {
    format!(
        "pid {} tid {} {}",
        t.pid,
        t.tid,
        m.comm(t.pid).unwrap_or("")
    )
    .to_lowercase()
}

fn conn_haystack(c: &ConnSnapshot) -> String {
    let fd = c.fd.map_or_else(String::new, |fd| format!("fd {fd}"));
    format!(
        "pid {} tid {} {fd} {:#x} {}",
        c.pid,
        c.tid,
        c.ssl,
        c.peer.as_deref().unwrap_or("")
    )
    .to_lowercase()
}
