//! What tls-probe's scenario workloads are, shared by the program that runs them
//! (`tls-probe-scenarios`, which links OpenSSL) and the profiler that attaches to them
//! (`tls-probe demo`, which must not): their names, the stdout contract they speak
//! (`report`: one `READY {json}` line, one `DONE {json}` line), and what each one declares
//! a profiler should find (`guide`). Nothing here links libssl.

pub mod guide;
pub mod report;

use clap::ValueEnum;

/// The name of the program that runs the workloads.
pub const PROGRAM: &str = "tls-probe-scenarios";

/// The scenarios, by the name given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    /// Correct non-blocking echo client and server: load for half the run, then idle.
    Healthy,
    /// EPOLLOUT left armed while SSL_read says WANT_READ: epoll_wait never sleeps.
    SpinLoop,
    /// epoll_wait with a zero timeout in a tight loop on an idle TLS connection.
    BusyPoll,
    /// SSL_write retried with a different buffer after WANT_WRITE; reconnect, repeat.
    BadWriteRetry,
    /// A flood of full RSA-2048 handshakes on a single-threaded epoll server.
    HandshakeStorm,
    /// The same flood with session caching and tickets: most handshakes resume.
    ResumedHandshakes,
    /// SSL_read and SSL_write on the same SSL* from two threads at once.
    ConcurrentSsl,
    /// spin-loop, handshake-storm and healthy side by side in one process.
    Mixed,
    /// An async-mode server whose offload engine is stuck: SSL_do_handshake answers
    /// WANT_ASYNC for seconds.
    AsyncStall,
    /// An async-mode server whose engine answers at once: brief WANT_ASYNC pauses.
    AsyncQuick,
    /// async-stall with a one-job pool: a second connection answers WANT_ASYNC_JOB.
    AsyncNoJobs,
    /// A Python asyncio client over memory BIOs (ssl.SSLObject) with a writer callback left
    /// armed while SSLObject.read() wants READ: runs python3.
    AsyncioSpin,
}

impl ScenarioName {
    pub const ALL: [ScenarioName; 12] = [
        Self::Healthy,
        Self::SpinLoop,
        Self::BusyPoll,
        Self::BadWriteRetry,
        Self::HandshakeStorm,
        Self::ResumedHandshakes,
        Self::ConcurrentSsl,
        Self::Mixed,
        Self::AsyncStall,
        Self::AsyncQuick,
        Self::AsyncNoJobs,
        Self::AsyncioSpin,
    ];

    /// The command-line name, e.g. "spin-loop".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::SpinLoop => "spin-loop",
            Self::BusyPoll => "busy-poll",
            Self::BadWriteRetry => "bad-write-retry",
            Self::HandshakeStorm => "handshake-storm",
            Self::ResumedHandshakes => "resumed-handshakes",
            Self::ConcurrentSsl => "concurrent-ssl",
            Self::Mixed => "mixed",
            Self::AsyncStall => "async-stall",
            Self::AsyncQuick => "async-quick",
            Self::AsyncNoJobs => "async-no-jobs",
            Self::AsyncioSpin => "asyncio-spin",
        }
    }
}

impl std::fmt::Display for ScenarioName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ScenarioName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|n| n.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|n| n.as_str()).collect();
                anyhow::anyhow!("unknown scenario {s:?}; valid names: {}", names.join(", "))
            })
    }
}

/// The parts of `mixed`, by role prefix and the scenario that each runs.
pub const MIXED_PARTS: [(&str, ScenarioName); 3] = [
    ("spin", ScenarioName::SpinLoop),
    ("storm", ScenarioName::HandshakeStorm),
    ("healthy", ScenarioName::Healthy),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_clap_and_from_str() {
        for name in ScenarioName::ALL {
            assert_eq!(
                name.as_str().parse::<ScenarioName>().expect("from_str"),
                name
            );
            assert_eq!(
                name.to_possible_value().expect("value").get_name(),
                name.as_str()
            );
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "spinloop".parse::<ScenarioName>().expect_err("unknown");
        assert!(err.to_string().contains("spin-loop, busy-poll"), "{err}");
    }
}
