//! Findings: what the engine concludes, in the form every sink reads.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use super::rules::{
    async_stall::AsyncStallEvidence, busy::BusyEvidence, churn::ChurnEvidence,
    concurrent::ConcurrentEvidence, resumption::ResumptionEvidence, saturation::SaturationEvidence,
    shutdown::ShutdownWriteEvidence, spin::SpinEvidence, write_retry::WriteRetryEvidence,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    SpinLoop,
    BusyEpollLoop,
    BadWriteRetry,
    ConcurrentSslUse,
    WantAsyncStall,
    HandshakeSaturation,
    LowSessionResumption,
    ConnectionChurn,
    WriteAfterShutdown,
}

impl FindingKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::SpinLoop => "spin_loop",
            Self::BusyEpollLoop => "busy_epoll_loop",
            Self::BadWriteRetry => "bad_write_retry",
            Self::ConcurrentSslUse => "concurrent_ssl_use",
            Self::WantAsyncStall => "want_async_stall",
            Self::HandshakeSaturation => "handshake_saturation",
            Self::LowSessionResumption => "low_session_resumption",
            Self::ConnectionChurn => "connection_churn",
            Self::WriteAfterShutdown => "write_after_shutdown",
        }
    }

    /// Its evidence is made of rates over a sliding window: once the process goes silent
    /// (its load stopped, or it exited) the window fills with silence and the rates fall,
    /// so its updates are not taken then (see `rules::Cx::update`).
    pub fn windowed(self) -> bool {
        matches!(
            self,
            Self::SpinLoop
                | Self::BusyEpollLoop
                | Self::HandshakeSaturation
                | Self::LowSessionResumption
                | Self::ConnectionChurn
        )
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingState {
    Open,
    Closed,
}

/// The numbers behind a finding, one struct per kind. Serialized externally tagged:
/// `"evidence": {"spin_loop": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    SpinLoop(SpinEvidence),
    BusyEpollLoop(BusyEvidence),
    BadWriteRetry(WriteRetryEvidence),
    ConcurrentSslUse(ConcurrentEvidence),
    WantAsyncStall(AsyncStallEvidence),
    HandshakeSaturation(SaturationEvidence),
    LowSessionResumption(ResumptionEvidence),
    ConnectionChurn(ChurnEvidence),
    WriteAfterShutdown(ShutdownWriteEvidence),
}

impl Evidence {
    pub fn kind(&self) -> FindingKind {
        match self {
            Self::SpinLoop(_) => FindingKind::SpinLoop,
            Self::BusyEpollLoop(_) => FindingKind::BusyEpollLoop,
            Self::BadWriteRetry(_) => FindingKind::BadWriteRetry,
            Self::ConcurrentSslUse(_) => FindingKind::ConcurrentSslUse,
            Self::WantAsyncStall(_) => FindingKind::WantAsyncStall,
            Self::HandshakeSaturation(_) => FindingKind::HandshakeSaturation,
            Self::LowSessionResumption(_) => FindingKind::LowSessionResumption,
            Self::ConnectionChurn(_) => FindingKind::ConnectionChurn,
            Self::WriteAfterShutdown(_) => FindingKind::WriteAfterShutdown,
        }
    }

    /// Whether this is a worse moment than `other` (same kind): a higher headline, or for
    /// low_session_resumption a lower one.
    pub fn worse_than(&self, other: &Evidence) -> bool {
        match self {
            Self::LowSessionResumption(_) => self.headline() < other.headline(),
            _ => self.headline() > other.headline(),
        }
    }

    /// The number whose movement makes an update worth emitting.
    pub fn headline(&self) -> f64 {
        match self {
            Self::SpinLoop(e) => e.wasted_wakeups_per_sec,
            Self::BusyEpollLoop(e) => e.immediate_wakeups_per_sec,
            Self::BadWriteRetry(e) => e.occurrences as f64,
            Self::ConcurrentSslUse(e) => e.overlaps as f64,
            Self::WantAsyncStall(e) => e.stalled_ns as f64,
            Self::HandshakeSaturation(e) => e.handshake_time_pct,
            Self::LowSessionResumption(e) => e.resumption_pct,
            Self::ConnectionChurn(e) => e.connections_per_sec,
            Self::WriteAfterShutdown(e) => e.occurrences as f64,
        }
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SpinLoop(e) => e.fmt(f),
            Self::BusyEpollLoop(e) => e.fmt(f),
            Self::BadWriteRetry(e) => e.fmt(f),
            Self::ConcurrentSslUse(e) => e.fmt(f),
            Self::WantAsyncStall(e) => e.fmt(f),
            Self::HandshakeSaturation(e) => e.fmt(f),
            Self::LowSessionResumption(e) => e.fmt(f),
            Self::ConnectionChurn(e) => e.fmt(f),
            Self::WriteAfterShutdown(e) => e.fmt(f),
        }
    }
}

/// One finding. Unknown values are `None` and serialize as `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Unique within one engine run; an opened, updated and closed finding keeps its id.
    pub id: u64,
    /// Always `evidence.kind()`; repeated so that readers can filter without the evidence.
    pub kind: FindingKind,
    pub state: FindingState,
    pub severity: Severity,
    pub pid: u32,
    pub comm: Option<String>,
    pub tid: Option<u32>,
    pub ssl: Option<u64>,
    pub fd: Option<i32>,
    pub peer: Option<String>,
    /// When the pathology started, as far as the engine saw.
    pub first_seen_ns: u64,
    /// When the condition last held.
    pub last_seen_ns: u64,
    /// When the finding closed; None while open.
    pub closed_ns: Option<u64>,
    /// The numbers at their worst while the finding was open, for the kinds made of
    /// windowed rates ([`FindingKind::windowed`]); None for the others.
    #[serde(default)]
    pub peak: Option<Peak>,
    pub evidence: Evidence,
    pub explanation: String,
    pub advice: String,
}

/// A finding's worst moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    pub ts_ns: u64,
    pub evidence: Evidence,
}

/// Where a finding is about: the parts of a finding a rule knows when it opens one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Subject {
    pub pid: u32,
    pub tid: Option<u32>,
    pub ssl: Option<u64>,
    pub fd: Option<i32>,
}

impl Finding {
    pub fn is_open(&self) -> bool {
        self.state == FindingState::Open
    }

    /// The one-line human form, as written to stderr.
    pub fn summary_line(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} pid={}", self.kind, self.pid)?;
        if let Some(comm) = &self.comm {
            write!(f, " ({comm})")?;
        }
        if let Some(tid) = self.tid {
            write!(f, " tid={tid}")?;
        }
        if let Some(fd) = self.fd {
            write!(f, " fd={fd}")?;
        }
        if let Some(ssl) = self.ssl {
            write!(f, " ssl={ssl:#x}")?;
        }
        if let Some(peer) = &self.peer {
            write!(f, " peer={peer}")?;
        }
        write!(f, ": {}", self.evidence)?;
        if !self.is_open() {
            f.write_str(" [closed]")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Opened,
    Updated,
    Closed,
}

/// A finding as it was when it opened, changed materially, or closed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FindingChange {
    pub change: Change,
    pub finding: Finding,
}
