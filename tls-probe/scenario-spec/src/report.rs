//! The scenario output contract: one `READY {json}` line when the threads and connections
//! of interest exist, one `DONE {json}` line at the end. Nothing else goes to stdout.
//!
//! ```text
//! READY {"scenario":"spin-loop","pid":4242,"threads":[{"role":"client","tid":4244,"fds":[5],"ssl":[94000000000000]}, ...]}
//! DONE {"scenario":"spin-loop","pid":4242,"elapsed_ms":3001,"counts":{"client_wakeups":812345, ...},
//!       "threads":[{"role":"client","tid":4244,"cpu_ms":2990,"counts":{...}}, ...]}
//! ```
//!
//! Each thread's `counts` use plain names ("wakeups", "want_read", ...). The top-level
//! `counts` in DONE sums them per role, naming each `{role}_{name}` ("client_wakeups",
//! "server_handshakes_full"): four client threads add up into one `client_*` set. `ssl`
//! (the SSL* values as numbers) appears only where a thread knows them.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::{Deserialize, Serialize};

/// Named event counters of one thread, or summed over threads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Counts(BTreeMap<String, u64>);

impl Counts {
    pub fn add(&mut self, key: &str, n: u64) {
        match self.0.get_mut(key) {
            Some(v) => *v += n,
            None => {
                self.0.insert(key.to_owned(), n);
            }
        }
    }

    pub fn inc(&mut self, key: &str) {
        self.add(key, 1);
    }

    /// Sets a counter that is a level rather than a sum over events (e.g. connections open).
    pub fn set(&mut self, key: &str, n: u64) {
        self.0.insert(key.to_owned(), n);
    }

    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    pub fn merge(&mut self, other: &Counts) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }

    /// Adds `other` with each key named `{prefix}_{key}` (unless it already starts so).
    pub fn merge_prefixed(&mut self, prefix: &str, other: &Counts) {
        for (k, v) in &other.0 {
            match k
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('_'))
            {
                Some(_) => self.add(k, *v),
                None => self.add(&format!("{prefix}_{k}"), *v),
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// A thread of interest, as announced in READY.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadInfo {
    /// "client", "server", "reader", "writer", ...
    pub role: String,
    /// Linux thread id (gettid).
    pub tid: i32,
    /// Socket fds of this thread's connections of interest (for churny scenarios, the
    /// listening socket or the current connection).
    pub fds: Vec<i32>,
    /// SSL* values of those connections, when the thread has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssl: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub scenario: String,
    pub pid: u32,
    pub threads: Vec<ThreadInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadDone {
    pub role: String,
    pub tid: i32,
    /// CPU time (user + system) the thread used, from CLOCK_THREAD_CPUTIME_ID.
    pub cpu_ms: u64,
    pub counts: Counts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub scenario: String,
    pub pid: u32,
    /// Wall time from the start of the load (after READY and --wait-stdin) to the end.
    pub elapsed_ms: u64,
    /// Every thread's counts summed per role, as `{role}_{name}`.
    pub counts: Counts,
    pub threads: Vec<ThreadDone>,
}

impl Done {
    pub fn new(scenario: &str, pid: u32, elapsed_ms: u64, threads: Vec<ThreadDone>) -> Self {
        let mut counts = Counts::default();
        for t in &threads {
            counts.merge_prefixed(&t.role, &t.counts);
        }
        Self {
            scenario: scenario.to_owned(),
            pid,
            elapsed_ms,
            counts,
            threads,
        }
    }

    /// One human line for stderr.
    pub fn summary(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let cpu: Vec<String> = self
            .threads
            .iter()
            .map(|t| format!("{}:{}ms", t.role, t.cpu_ms))
            .collect();
        format!(
            "scenario {} ran {:.1}s: {}; thread cpu {}",
            self.scenario,
            self.elapsed_ms as f64 / 1000.0,
            counts.join(" "),
            cpu.join(" ")
        )
    }
}

pub const READY_TAG: &str = "READY";
pub const DONE_TAG: &str = "DONE";

fn line<T: Serialize>(tag: &str, value: &T) -> String {
    // These types are maps of strings and integers: serialization cannot fail.
    let json = serde_json::to_string(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    format!("{tag} {json}")
}

pub fn ready_line(ready: &Ready) -> String {
    line(READY_TAG, ready)
}

pub fn done_line(done: &Done) -> String {
    line(DONE_TAG, done)
}

/// Reads a READY line back (for the demo and tests). None for any other line.
pub fn parse_ready(text: &str) -> Option<Ready> {
    serde_json::from_str(text.strip_prefix("READY ")?).ok()
}

/// Reads a DONE line back (for the demo and tests). None for any other line.
pub fn parse_done(text: &str) -> Option<Done> {
    serde_json::from_str(text.strip_prefix("DONE ")?).ok()
}

/// Writes one line to stdout and flushes it. A closed stdout (broken pipe) is not an
/// error: whoever was reading has gone, and the scenario still finishes cleanly.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    let res = writeln!(out, "{text}").and_then(|()| out.flush());
    match res {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to stdout failed"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> Counts {
        let mut c = Counts::default();
        for (k, v) in pairs {
            c.add(k, *v);
        }
        c
    }

    #[test]
    fn ready_line_is_tag_space_json() {
        let ready = Ready {
            scenario: "spin-loop".into(),
            pid: 42,
            threads: vec![
                ThreadInfo {
                    role: "client".into(),
                    tid: 43,
                    fds: vec![5],
                    ssl: vec![],
                },
                ThreadInfo {
                    role: "server".into(),
                    tid: 44,
                    fds: vec![7, 8],
                    ssl: vec![99],
                },
            ],
        };
        let text = ready_line(&ready);
        assert_eq!(
            text,
            r#"READY {"scenario":"spin-loop","pid":42,"threads":[{"role":"client","tid":43,"fds":[5]},{"role":"server","tid":44,"fds":[7,8],"ssl":[99]}]}"#
        );
        assert!(!text.contains('\n'));
        assert_eq!(parse_ready(&text), Some(ready));
        assert_eq!(parse_ready("DONE {}"), None);
    }

    #[test]
    fn done_sums_thread_counts_per_role() {
        let threads = vec![
            ThreadDone {
                role: "server".into(),
                tid: 2,
                cpu_ms: 30,
                counts: counts(&[("handshakes", 7), ("server_x", 1)]),
            },
            ThreadDone {
                role: "client".into(),
                tid: 3,
                cpu_ms: 10,
                counts: counts(&[("handshakes", 3), ("a", 1)]),
            },
            ThreadDone {
                role: "client".into(),
                tid: 4,
                cpu_ms: 20,
                counts: counts(&[("handshakes", 4)]),
            },
        ];
        let done = Done::new("handshake-storm", 1, 3000, threads);
        assert_eq!(done.counts.get("client_handshakes"), 7);
        assert_eq!(done.counts.get("server_handshakes"), 7);
        assert_eq!(
            done.counts.get("server_x"),
            1,
            "an existing role prefix is not doubled"
        );
        assert_eq!(done.counts.get("client_a"), 1);
        assert_eq!(done.counts.get("handshakes"), 0);
        let text = done_line(&done);
        assert!(
            text.starts_with(
                r#"DONE {"scenario":"handshake-storm","pid":1,"elapsed_ms":3000,"counts":{"client_a":1,"client_handshakes":7,"server_handshakes":7,"server_x":1},"threads":[{"role":"server","tid":2,"cpu_ms":30,"counts":{"handshakes":7,"server_x":1}}"#
            ),
            "{text}"
        );
        assert_eq!(parse_done(&text), Some(done.clone()));
        assert_eq!(
            done.summary(),
            "scenario handshake-storm ran 3.0s: client_a=1 client_handshakes=7 server_handshakes=7 server_x=1; thread cpu server:30ms client:10ms client:20ms"
        );
    }

    #[test]
    fn set_overwrites_and_add_accumulates() {
        let mut c = Counts::default();
        c.inc("x");
        c.add("x", 2);
        c.set("open", 5);
        c.set("open", 4);
        assert_eq!(c.get("x"), 3);
        assert_eq!(c.get("open"), 4);
    }
}
