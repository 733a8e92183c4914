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
    /// Where in the application the bad calls come from, unwound from a few stacks taken
    /// while the finding was open (or at the OpenSSL error itself). Filled by the agent, not
    /// the engine; None until a stack was taken, and in `report` replays.
    #[serde(default)]
    pub call_sites: Option<CallSites>,
}

/// The application code behind a finding: its sampled stacks, grouped by call site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallSites {
    /// Stacks taken for the finding.
    pub samples: u32,
    /// Distinct call sites (the call and its first frame outside libssl/libcrypto), most
    /// sampled first; at most 4.
    pub sites: Vec<CallSite>,
    /// What the frames cannot show, e.g. that only native frames are unwound (a Python or
    /// node program's own functions are interpreter frames, not shown).
    pub note: Option<String>,
}

/// One call site of a finding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallSite {
    /// The OpenSSL function the application called ("SSL_write"), when known.
    pub call: Option<String>,
    /// The first frame outside libssl/libcrypto: the application function that made the
    /// call. None when the unwind did not get out of them.
    pub caller: Option<Frame>,
    /// Stacks with this call site, and their share of the finding's stacks.
    pub samples: u32,
    pub share_pct: f64,
    /// One of its stacks, innermost frame first (at most 24 frames).
    pub stack: Vec<Frame>,
}

/// One frame of a stack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    /// The instruction (innermost frame) or return address, in the process.
    pub address: u64,
    /// The file the address is in, as the process maps it.
    pub object: String,
    /// The address in the file's own address space (what `addr2line -e object` takes).
    pub object_address: u64,
    /// The function, demangled; None when the file has no symbol covering the address.
    pub function: Option<String>,
    /// `address` minus the function's start.
    pub offset: Option<u64>,
    /// Source file and line, when the file (or its separate debug file) has debug info.
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Where the name came from: `debug_info`, `symtab`, `dynsym`, or `none` (stripped).
    pub symbols: SymbolSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SymbolSource {
    DebugInfo,
    Symtab,
    Dynsym,
    None,
}

impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.function, self.offset) {
            (Some(func), Some(off)) => write!(f, "{func}+{off:#x}")?,
            (Some(func), None) => f.write_str(func)?,
            _ if self.object.starts_with('[') => {
                write!(f, "{:#x} (in no file the process maps)", self.address)?
            }
            _ => write!(
                f,
                "{:#x} (no symbols for {} (stripped))",
                self.object_address, self.object
            )?,
        }
        if let (Some(file), Some(line)) = (&self.file, self.line) {
            write!(f, " at {file}:{line}")?;
        }
        Ok(())
    }
}

impl fmt::Display for CallSite {
    /// "SSL_read from pump_connection+0x4c at pump.c:42 (98%)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.call.as_deref().unwrap_or("the SSL call"))?;
        match &self.caller {
            Some(c) => write!(f, " from {c}")?,
            None => f.write_str(" (the stack did not leave libssl/libcrypto)")?,
        }
        write!(f, " ({:.0}%)", self.share_pct)
    }
}

impl CallSites {
    /// One line: the top call site, how many others, and of how many sampled calls.
    pub fn headline(&self) -> String {
        let mut s = match self.sites.first() {
            Some(top) => top.to_string(),
            None => "no call site".to_owned(),
        };
        let others = self.sites.len().saturating_sub(1);
        if others > 0 {
            s.push_str(&format!(" and {others} other site(s)"));
        }
        s.push_str(&format!(", of {} sampled call(s)", self.samples));
        if self.note.is_some() {
            s.push_str(", native frames only");
        }
        s
    }

    /// Every site, the top site's stack (innermost first, each frame with its file), and
    /// the note: the lines `report` and the dashboard show.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for site in &self.sites {
            out.push(format!(
                "{site}, {} of {} sampled calls",
                site.samples, self.samples
            ));
        }
        if let Some(top) = self.sites.first() {
            out.push("stack of the top site, innermost first:".to_owned());
            for (i, fr) in top.stack.iter().enumerate() {
                let object = fr.object.rsplit('/').next().unwrap_or(&fr.object);
                out.push(format!("  #{i:<2} {fr} in {object}"));
            }
        }
        if let Some(note) = &self.note {
            out.push(note.clone());
        }
        out
    }
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
