//! What each scenario is for, in words: what it runs, what a profiler attached to it
//! should find, and which of its DONE counts tell the story. `tls-probe demo` prints
//! these around a run; they are kept next to the workloads so they stay true to them.

use super::{ScenarioName, mixed};

/// One scenario, as the demo explains it.
#[derive(Clone, Copy, Debug)]
pub struct Guide {
    /// What the workload does.
    pub runs: &'static str,
    /// What the user should see while it runs.
    pub expect: &'static str,
    /// The finding kinds a correct profiler reports, each with the roles of the threads
    /// it may name (any one of them).
    pub findings: &'static [(&'static str, &'static [&'static str])],
    /// When `findings` is empty: why there should be none, or why there is none yet.
    pub no_finding: Option<NoFinding>,
    /// The DONE counts worth showing, per role: (count name, label).
    pub counts: &'static [(&'static str, &'static [(&'static str, &'static str)])],
}

/// Why a scenario should end without a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoFinding {
    /// The workload behaves well: a finding would be a false positive.
    Correct(&'static str),
    /// The workload misbehaves in a way tls-probe does not detect yet.
    NotYet(&'static str),
}

/// A part of a demo: one scenario's threads, their roles prefixed with `prefix` when
/// several share the process (the `mixed` scenario).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub prefix: Option<&'static str>,
    pub name: ScenarioName,
}

impl Part {
    /// The role as it appears in READY and DONE, e.g. "spin-client" or "client".
    pub fn role(&self, role: &str) -> String {
        match self.prefix {
            Some(p) => format!("{p}-{role}"),
            None => role.to_owned(),
        }
    }

    /// Whether a READY/DONE role belongs to this part.
    pub fn owns(&self, role: &str) -> bool {
        match self.prefix {
            Some(p) => role.strip_prefix(p).is_some_and(|r| r.starts_with('-')),
            None => true,
        }
    }

    pub fn guide(&self) -> Guide {
        guide(self.name)
    }
}

/// The parts a scenario is made of: itself, or for `mixed` the scenarios it combines.
pub fn parts(name: ScenarioName) -> Vec<Part> {
    match name {
        ScenarioName::Mixed => mixed::PARTS
            .iter()
            .map(|&(prefix, name)| Part {
                prefix: Some(prefix),
                name,
            })
            .collect(),
        name => vec![Part { prefix: None, name }],
    }
}

pub fn guide(name: ScenarioName) -> Guide {
    match name {
        ScenarioName::Healthy => Guide {
            runs: "16 TLS echo connections done right: epoll interest follows what libssl \
                   asks for; busy for the first half, then idle",
            expect: "no finding: every WANT_READ comes after a read that drained the socket",
            findings: &[],
            no_finding: Some(NoFinding::Correct(
                "a busy but correct event loop is not a pathology",
            )),
            counts: &[
                (
                    "client",
                    &[
                        ("round_trips", "round trips"),
                        ("read_bytes", "echoed"),
                        ("want_read", "WANT_READ"),
                    ],
                ),
                ("server", &[("want_write", "WANT_WRITE")]),
            ],
        },
        ScenarioName::SpinLoop => Guide {
            runs: "a client keeps EPOLLOUT armed while SSL_read wants READ, on a connection \
                   whose server never answers",
            expect: "a spin_loop finding on the client thread within ~2 s: tens of thousands \
                     of wake-ups a second that move no bytes",
            findings: &[("spin_loop", &["client"])],
            no_finding: None,
            counts: &[(
                "client",
                &[
                    ("wakeups", "epoll wake-ups"),
                    ("want_read", "SSL_read calls answered WANT_READ"),
                    ("read_bytes", "read"),
                ],
            )],
        },
        ScenarioName::BusyPoll => Guide {
            runs: "a client calls epoll_wait with a zero timeout in a tight loop, on an idle \
                   connection",
            expect: "a busy_epoll_loop finding on the client thread: millions of empty \
                     waits, counted in the kernel rather than streamed",
            findings: &[("busy_epoll_loop", &["client"])],
            no_finding: None,
            counts: &[("client", &[("empty_wakeups", "empty epoll waits")])],
        },
        ScenarioName::BadWriteRetry => Guide {
            runs: "a pipelining client retries SSL_write after WANT_WRITE with another \
                   request's buffer (the libcurl bug); libssl fails it and the client \
                   reconnects",
            expect: "a bad_write_retry finding on the client thread about a second in, when \
                     the server first stalls: one per connection hit, each opened at its \
                     retry from OpenSSL's error, with the drop and reconnect that follow",
            findings: &[("bad_write_retry", &["client"])],
            no_finding: None,
            counts: &[(
                "client",
                &[
                    ("want_write", "WANT_WRITE"),
                    ("bad_write_retries", "bad write retries"),
                    ("reconnects", "reconnects"),
                    ("requests_completed", "requests completed"),
                ],
            )],
        },
        ScenarioName::HandshakeStorm => Guide {
            runs: "4 clients flood a single-threaded epoll server with full RSA-2048 \
                   handshakes, no session resumption",
            expect: "the server thread near 100% CPU doing handshakes; tls-probe has no \
                     handshake finding yet, so the recap shows the server's handshakes and CPU",
            findings: &[],
            no_finding: Some(NoFinding::NotYet(
                "handshake saturation is not detected yet (a later issue): see the \
                 server's handshakes and CPU below",
            )),
            counts: &[(
                "server",
                &[
                    ("handshakes_full", "full handshakes"),
                    ("handshakes_resumed", "resumed"),
                ],
            )],
        },
        ScenarioName::ResumedHandshakes => Guide {
            runs: "the handshake flood with session tickets: clients offer their last \
                   session and nearly every handshake resumes",
            expect: "many more handshakes a second than handshake-storm for the same CPU; \
                     no finding",
            findings: &[],
            no_finding: Some(NoFinding::Correct("resumed handshakes are cheap")),
            counts: &[(
                "server",
                &[
                    ("handshakes_full", "full handshakes"),
                    ("handshakes_resumed", "resumed"),
                ],
            )],
        },
        ScenarioName::ConcurrentSsl => Guide {
            runs: "a reader and a writer thread call SSL_read and SSL_write on the same SSL* \
                   at once, which libssl does not support",
            expect: "a concurrent_ssl_use finding on the reader or writer thread within a \
                     second, counting overlapping calls",
            findings: &[("concurrent_ssl_use", &["reader", "writer"])],
            no_finding: None,
            counts: &[
                ("reader", &[("ssl_read_calls", "SSL_read calls")]),
                ("writer", &[("ssl_write_calls", "SSL_write calls")]),
            ],
        },
        ScenarioName::AsyncStall => Guide {
            runs: "a server in OpenSSL's async mode (SSL_MODE_ASYNC) whose offload engine is \
                   stuck: one connection's SSL_do_handshake answers WANT_ASYNC on every retry \
                   (every 10 ms) for 70% of the run, then completes and echoes",
            expect: "a want_async_stall finding on the server thread within a second or two, \
                     critical after a second of stall, closed when the handshake completes",
            findings: &[("want_async_stall", &["server"])],
            no_finding: None,
            counts: &[(
                "server",
                &[
                    ("want_async", "WANT_ASYNC answers"),
                    ("async_pauses", "ASYNC_pause_job calls"),
                    ("stall_ms", "stalled (ms)"),
                    ("echoes", "echoes after it"),
                ],
            )],
        },
        ScenarioName::AsyncNoJobs => Guide {
            runs: "the stuck async engine on a server thread with a single async job: one \
                   connection's handshake holds it, paused, for 70% of the run, and the other \
                   connection's SSL_do_handshake finds no job (WANT_ASYNC_JOB) on every retry",
            expect: "two want_async_stall findings on the server thread: WANT_ASYNC on the \
                     connection holding the job, WANT_ASYNC_JOB (the pool is exhausted) on the \
                     other",
            findings: &[("want_async_stall", &["server"])],
            no_finding: None,
            counts: &[(
                "server",
                &[
                    ("want_async", "WANT_ASYNC answers"),
                    ("want_async_job", "WANT_ASYNC_JOB answers"),
                    ("handshakes", "handshakes"),
                ],
            )],
        },
        ScenarioName::AsyncQuick => Guide {
            runs: "the same async-mode server with an engine that answers at once: every \
                   handshake pauses twice for microseconds; clients connect back to back",
            expect: "no finding: a WANT_ASYNC or two per handshake is how async mode works",
            findings: &[],
            no_finding: Some(NoFinding::Correct(
                "brief async pauses that resolve at once are not a stall",
            )),
            counts: &[(
                "server",
                &[
                    ("handshakes", "handshakes"),
                    ("want_async", "WANT_ASYNC answers"),
                ],
            )],
        },
        ScenarioName::Mixed => Guide {
            runs: "a TLS service with a spin loop, a handshake storm and healthy connections \
                   side by side in one process",
            expect: "a spin_loop finding on spin-client; none on healthy-*, whose event \
                     loops do as much work but all of it useful",
            findings: &[],
            no_finding: None,
            counts: &[],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_says_what_it_expects() {
        for name in ScenarioName::ALL {
            for part in parts(name) {
                let g = part.guide();
                assert!(!g.runs.is_empty() && !g.expect.is_empty(), "{name}");
                assert!(
                    g.findings.is_empty() == g.no_finding.is_some(),
                    "{name}: either expected findings or a reason for none"
                );
                assert!(!g.counts.is_empty(), "{name}");
            }
        }
    }

    #[test]
    fn mixed_parts_own_their_prefixed_roles() {
        let parts = parts(ScenarioName::Mixed);
        let spin = parts[0];
        assert_eq!(spin.role("client"), "spin-client");
        assert!(spin.owns("spin-client"));
        assert!(!spin.owns("spinner-client"));
        assert!(!spin.owns("storm-server"));
        let single = super::parts(ScenarioName::SpinLoop)[0];
        assert_eq!(single.role("client"), "client");
        assert!(single.owns("server"));
    }
}
