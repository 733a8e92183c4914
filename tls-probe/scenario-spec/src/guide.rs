//! What each scenario is for, and what it declares a profiler attached to it must find:
//! what it runs, the findings expected (kind, where, and when), or why there should be
//! none, and which of its DONE counts tell the story.
//!
//! The declarations are the one source of truth for the demo: `tls-probe demo` prints its
//! "expect" lines from them ([`Guide::expect`]) and sets the findings it saw against them
//! in its recap, and a test runs the demo on every scenario and checks that each declared
//! finding is seen and nothing else is. A finding added to the engine that fires on a
//! scenario fails that test until the scenario declares it.

use crate::{MIXED_PARTS, ScenarioName};

/// One scenario, as the demo explains it.
#[derive(Clone, Copy, Debug)]
pub struct Guide {
    /// What the workload does.
    pub runs: &'static str,
    /// The findings a correct profiler reports. Empty when the workload behaves well.
    pub findings: &'static [Expected],
    /// When `findings` is empty: why a finding would be a false positive.
    pub no_finding: Option<&'static str>,
    /// The DONE counts worth showing, per role: (count name, label).
    pub counts: &'static [(&'static str, &'static [(&'static str, &'static str)])],
}

/// A finding a scenario declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The finding kind, as the engine names it (`spin_loop`).
    pub kind: &'static str,
    /// Where the finding points.
    pub on: On,
    /// When and how it shows, in words ("within ~2 s: ...").
    pub shows: &'static str,
}

/// Where a finding points: a thread of one of these roles, or the whole process (the
/// findings about a process's handshakes and connections name no thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum On {
    Roles(&'static [&'static str]),
    Process,
}

impl Guide {
    /// What the user should see while it runs, made from the declarations.
    pub fn expect(&self) -> String {
        self.expect_in(None)
    }

    fn expect_in(&self, prefix: Option<&str>) -> String {
        if let Some(why) = self.no_finding {
            return format!("no finding: {why}");
        }
        let each: Vec<String> = self
            .findings
            .iter()
            .map(|f| {
                let at = match f.on {
                    On::Process => "on the process".to_owned(),
                    On::Roles(roles) => {
                        let roles: Vec<String> = roles.iter().map(|r| role_in(prefix, r)).collect();
                        format!("on the {} thread", roles.join(" or "))
                    }
                };
                format!("a {} finding {at} {}", f.kind, f.shows)
            })
            .collect();
        each.join("; ")
    }
}

/// A part of a demo: one scenario's threads, their roles prefixed with `prefix` when
/// several share the process (the `mixed` scenario).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub prefix: Option<&'static str>,
    pub name: ScenarioName,
}

/// What a finding is held against: its kind, and the role of the thread it names (None
/// for a finding on the process, or on a thread that is not one of the workload's).
pub type Seen<'a> = (&'a str, Option<&'a str>);

impl Part {
    /// The role as it appears in READY and DONE, e.g. "spin-client" or "client".
    pub fn role(&self, role: &str) -> String {
        role_in(self.prefix, role)
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

    /// What this part should show, with its roles as they appear in READY.
    pub fn expect(&self) -> String {
        self.guide().expect_in(self.prefix)
    }

    /// Whether `seen` is the declared finding `f` of this part.
    pub fn matches(&self, f: &Expected, seen: Seen<'_>) -> bool {
        seen.0 == f.kind
            && match (f.on, seen.1) {
                (On::Process, None) => true,
                (On::Roles(roles), Some(role)) => roles.iter().any(|r| self.role(r) == role),
                _ => false,
            }
    }

    /// Where `f` points, as the recap says it: "spin-client", "reader or writer", "the
    /// process".
    pub fn place(&self, f: &Expected) -> String {
        match f.on {
            On::Process => "the process".to_owned(),
            On::Roles(roles) => {
                let roles: Vec<String> = roles.iter().map(|r| self.role(r)).collect();
                roles.join(" or ")
            }
        }
    }
}

fn role_in(prefix: Option<&str>, role: &str) -> String {
    match prefix {
        Some(p) => format!("{p}-{role}"),
        None => role.to_owned(),
    }
}

/// The parts a scenario is made of: itself, or for `mixed` the scenarios it combines.
pub fn parts(name: ScenarioName) -> Vec<Part> {
    match name {
        ScenarioName::Mixed => MIXED_PARTS
            .iter()
            .map(|&(prefix, name)| Part {
                prefix: Some(prefix),
                name,
            })
            .collect(),
        name => vec![Part { prefix: None, name }],
    }
}

/// Every finding kind some scenario declares, each once.
pub fn declared_kinds() -> Vec<&'static str> {
    let mut kinds = Vec::new();
    for name in ScenarioName::ALL {
        for f in guide(name).findings {
            if !kinds.contains(&f.kind) {
                kinds.push(f.kind);
            }
        }
    }
    kinds
}

/// The server's handshakes, for the handshake floods.
const HANDSHAKE_COUNTS: &[(&str, &[(&str, &str)])] = &[(
    "server",
    &[
        ("handshakes_full", "full handshakes"),
        ("handshakes_resumed", "resumed"),
    ],
)];

pub fn guide(name: ScenarioName) -> Guide {
    match name {
        ScenarioName::Healthy => Guide {
            runs: "16 TLS echo connections done right: epoll interest follows what libssl \
                   asks for; busy for the first half, then idle",
            findings: &[],
            no_finding: Some(
                "every WANT_READ comes after a read that drained the socket; a busy but \
                 correct event loop is not a pathology",
            ),
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
            findings: &[Expected {
                kind: "spin_loop",
                on: On::Roles(&["client"]),
                shows: "within ~2 s: tens of thousands of wake-ups a second that move no bytes",
            }],
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
        ScenarioName::AsyncioSpin => Guide {
            runs: "a Python asyncio client over memory BIOs (ssl.SSLObject) leaves a writer \
                   callback armed while SSLObject.read() wants READ, on a connection whose \
                   server thread never answers",
            findings: &[Expected {
                kind: "spin_loop",
                on: On::Roles(&["client"]),
                shows: "within ~2 s: the socket's EPOLLOUT wake-ups and the SSL_read_ex calls \
                        on the SSL* tied to it, which move no bytes",
            }],
            no_finding: None,
            counts: &[(
                "client",
                &[
                    ("wakeups", "epoll wake-ups"),
                    ("want_read", "SSLObject.read() answered WANT_READ"),
                ],
            )],
        },
        ScenarioName::BusyPoll => Guide {
            runs: "a client calls epoll_wait with a zero timeout in a tight loop, on an idle \
                   connection",
            findings: &[Expected {
                kind: "busy_epoll_loop",
                on: On::Roles(&["client"]),
                shows: "within a second or two: millions of empty waits, counted in the kernel \
                        rather than streamed",
            }],
            no_finding: None,
            counts: &[("client", &[("empty_wakeups", "empty epoll waits")])],
        },
        ScenarioName::BadWriteRetry => Guide {
            runs: "a pipelining client retries SSL_write after WANT_WRITE with another \
                   request's buffer (the libcurl bug); libssl fails it and the client \
                   reconnects",
            findings: &[Expected {
                kind: "bad_write_retry",
                on: On::Roles(&["client"]),
                shows: "about a second in, when the server first stalls, updated on every \
                        reconnect",
            }],
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
                   handshakes, one connection each, no session resumption",
            findings: &[
                Expected {
                    kind: "handshake_saturation",
                    on: On::Roles(&["server"]),
                    shows: "within a few seconds: the server thread spends most of its time \
                            inside handshakes",
                },
                Expected {
                    kind: "low_session_resumption",
                    on: On::Process,
                    shows: "as the handshakes add up: none of them resumes a session",
                },
                Expected {
                    kind: "connection_churn",
                    on: On::Process,
                    shows: "as the connections add up: each carries one handshake and little \
                            else",
                },
            ],
            no_finding: None,
            counts: HANDSHAKE_COUNTS,
        },
        ScenarioName::ResumedHandshakes => Guide {
            runs: "the handshake flood with session tickets: clients offer their last \
                   session and nearly every handshake resumes, but each still on a new \
                   connection",
            // Unlike handshake-storm: no handshake_saturation (resumed handshakes are cheap,
            // many more a second for the same CPU) and no low_session_resumption.
            findings: &[Expected {
                kind: "connection_churn",
                on: On::Process,
                shows: "as the connections add up: hundreds a second, living milliseconds; \
                        but no handshake_saturation or low_session_resumption, since nearly \
                        every handshake resumes",
            }],
            no_finding: None,
            counts: HANDSHAKE_COUNTS,
        },
        ScenarioName::ConcurrentSsl => Guide {
            runs: "a reader and a writer thread call SSL_read and SSL_write on the same SSL* \
                   at once, which libssl does not support",
            findings: &[Expected {
                kind: "concurrent_ssl_use",
                on: On::Roles(&["reader", "writer"]),
                shows: "within a second, counting overlapping calls",
            }],
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
            findings: &[Expected {
                kind: "want_async_stall",
                on: On::Roles(&["server"]),
                shows: "within a second or two, critical after a second of stall, closed when \
                        the handshake completes",
            }],
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
            findings: &[Expected {
                kind: "want_async_stall",
                on: On::Roles(&["server"]),
                shows: "twice: WANT_ASYNC on the connection holding the job, WANT_ASYNC_JOB \
                        (the pool is exhausted) on the other",
            }],
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
            findings: &[],
            no_finding: Some(
                "a WANT_ASYNC or two per handshake is how async mode works; brief pauses \
                 that resolve at once are not a stall",
            ),
            counts: &[(
                "server",
                &[
                    ("handshakes", "handshakes"),
                    ("want_async", "WANT_ASYNC answers"),
                ],
            )],
        },
        // Its parts declare what it shows (see `parts`).
        ScenarioName::Mixed => Guide {
            runs: "a TLS service with a spin loop, a handshake storm and healthy connections \
                   side by side in one process",
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
    fn every_scenario_declares_findings_or_why_none() {
        for name in ScenarioName::ALL {
            for part in parts(name) {
                let g = part.guide();
                assert!(!g.runs.is_empty() && !part.expect().is_empty(), "{name}");
                assert!(
                    g.findings.is_empty() == g.no_finding.is_some(),
                    "{name}: either expected findings or a reason for none"
                );
                assert!(!g.counts.is_empty(), "{name}");
            }
        }
    }

    #[test]
    fn expect_is_made_from_the_declarations() {
        let storm = guide(ScenarioName::HandshakeStorm).expect();
        for kind in [
            "a handshake_saturation finding on the server thread",
            "a low_session_resumption finding on the process",
            "a connection_churn finding on the process",
        ] {
            assert!(storm.contains(kind), "{kind}: {storm}");
        }
        let mixed = parts(ScenarioName::Mixed);
        assert!(
            mixed[0]
                .expect()
                .starts_with("a spin_loop finding on the spin-client thread within"),
            "{}",
            mixed[0].expect()
        );
        assert!(mixed[2].expect().starts_with("no finding: "));
        let concurrent = guide(ScenarioName::ConcurrentSsl).expect();
        assert!(concurrent.contains("on the reader or writer thread"));
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

    #[test]
    fn a_declared_finding_matches_its_kind_and_place() {
        let mixed = parts(ScenarioName::Mixed);
        let (spin, storm) = (mixed[0], mixed[1]);
        let spin_loop = &spin.guide().findings[0];
        assert!(spin.matches(spin_loop, ("spin_loop", Some("spin-client"))));
        assert!(!spin.matches(spin_loop, ("spin_loop", Some("client"))));
        assert!(!spin.matches(spin_loop, ("spin_loop", None)));
        assert!(!spin.matches(spin_loop, ("busy_epoll_loop", Some("spin-client"))));
        let churn = &storm.guide().findings[2];
        assert!(storm.matches(churn, ("connection_churn", None)));
        assert!(!storm.matches(churn, ("connection_churn", Some("storm-server"))));
        assert_eq!(storm.place(churn), "the process");
        assert_eq!(storm.place(&storm.guide().findings[0]), "storm-server");
    }
}
