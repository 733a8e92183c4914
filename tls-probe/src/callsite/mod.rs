//! Call sites: which application function makes the bad calls behind a finding.
//!
//! The kernel copies the registers and the top of the user stack at a probed SSL call of a
//! thread the agent armed for an open finding (a few samples, spaced), and at the OpenSSL
//! errors that name a misused API (`tls-probe-ebpf/src/stack.rs`). Here each sample is
//! unwound at once from the `.eh_frame` CFI of the files the process maps (framehop; frame
//! pointers where there is no CFI), each frame named from `.symtab`/`.dynsym` and DWARF
//! line info (object + addr2line), and the stack bytes dropped. The session then attaches
//! [`CallSites`] to the finding records it sends: the engine never sees a stack.
//!
//! Only native frames are unwound: a Python or node program's own functions are
//! interpreter frames, which show as the interpreter's C functions.

mod object;
mod process;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::{
    engine::{CallSite, CallSites, Finding, FindingKind, Frame},
    event::{RawStack, SslOp},
};

/// Stacks the kernel takes for a thread once armed (spaced by `STACK_GAP_NS`).
pub const ARM_BUDGET: u32 = 8;
/// Samples kept per thread, newest last.
const PER_THREAD: usize = 32;
/// Threads with samples kept; past it the whole table is cleared.
const MAX_THREADS: usize = 1024;
/// Call sites shown per finding.
const MAX_SITES: usize = 4;
/// A stack taken this long before a finding's first_seen still counts for it: the stack
/// of the OpenSSL error that opens a finding is taken just before the error's record.
const BEFORE_NS: u64 = 1_000_000_000;
/// A process's mappings are read again for an address in none of them at most this often.
const RELOAD_NS: u64 = 1_000_000_000;

/// What makes two samples the same call site: the call, and the caller ([`caller_key`]).
type SiteKey = (Option<String>, Option<String>);

#[derive(Debug, PartialEq)]
struct Sample {
    ts_ns: u64,
    ssl: Option<u64>,
    op: Option<SslOp>,
    at_error: bool,
    frames: Vec<Frame>,
}

/// Whether a sample is of the calls a finding of `kind` is about: a spin's reads and
/// writes, a bad retry's writes (and its error), a saturated thread's handshakes.
fn relevant(kind: FindingKind, s: &Sample) -> bool {
    let op = s.op;
    match kind {
        FindingKind::BadWriteRetry | FindingKind::WriteAfterShutdown => {
            s.at_error || op.is_some_and(SslOp::is_write)
        }
        _ if s.at_error => false,
        FindingKind::SpinLoop => op.is_some_and(|o| o.is_read() || o.is_write()),
        FindingKind::HandshakeSaturation
        | FindingKind::LowSessionResumption
        | FindingKind::ConnectionChurn => op.is_some_and(SslOp::is_handshake),
        FindingKind::BusyEpollLoop
        | FindingKind::ConcurrentSslUse
        | FindingKind::WantAsyncStall => true,
    }
}

#[derive(Default)]
pub struct Store {
    files: process::Files,
    /// Per pid: its unwinder, and when its mappings were read.
    procs: HashMap<u32, (process::Process, u64)>,
    /// Per pid: its executable mappings, as last read.
    maps: HashMap<u32, Vec<process::MapEntry>>,
    samples: HashMap<(u32, u32), VecDeque<Sample>>,
    /// Threads armed in the kernel, with the finding that wanted them.
    armed: HashMap<u32, u64>,
    /// Open findings whose thread was armed.
    arming_done: HashSet<u64>,
    /// Per finding id: the samples it had when last sent.
    sent: HashMap<u64, u32>,
    /// Samples unwound so far (for the logs).
    pub unwound: u64,
}

/// What the session must do in the kernel after a finding change.
#[derive(Debug, PartialEq, Eq)]
pub enum Arming {
    Arm(u32),
    Disarm(u32),
}

impl Store {
    /// Unwinds and names a stack sample, and keeps it for the findings of its thread.
    pub fn ingest(&mut self, s: &RawStack, now_ns: u64) {
        let reload = match self.procs.get(&s.pid) {
            None => true,
            Some((p, at)) => !p.covers(s.ip) && now_ns.saturating_sub(*at) > RELOAD_NS,
        };
        if reload {
            // The live mappings, else those noted when the process was watched (it may
            // have exited since its stack was taken: a client that fails and quits).
            if let Some(maps) = process::exec_maps(s.pid) {
                self.maps.insert(s.pid, maps);
            }
            let Some(maps) = self.maps.get(&s.pid) else {
                return;
            };
            let p = process::Process::load(s.pid, maps, &mut self.files);
            self.procs.insert(s.pid, (p, now_ns));
        }
        let Some((p, _)) = self.procs.get_mut(&s.pid) else {
            return;
        };
        let frames = p.unwind(s);
        self.unwound += 1;
        if self.samples.len() >= MAX_THREADS && !self.samples.contains_key(&(s.pid, s.tid)) {
            self.samples.clear();
        }
        let q = self.samples.entry((s.pid, s.tid)).or_default();
        if q.len() >= PER_THREAD {
            q.pop_front();
        }
        q.push_back(Sample {
            ts_ns: s.ts_ns,
            ssl: s.ssl,
            op: s.op,
            at_error: s.at_error,
            frames,
        });
    }

    /// Notes the mappings of a process as it is attached, so that a stack it leaves as it
    /// exits can still be unwound. Reads no file.
    pub fn watch(&mut self, pid: u32) {
        if let Some(maps) = process::exec_maps(pid) {
            self.maps.insert(pid, maps);
        }
    }

    /// The process is gone: its notes go too (its samples stay for its findings).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
        self.procs.remove(&pid);
    }

    /// What the kernel must do for a finding that was opened, updated or closed: arm its
    /// thread for a few stacks while it is open, disarm it when it closes.
    pub fn arming(&mut self, f: &Finding) -> Option<Arming> {
        let tid = f.tid?;
        if f.is_open() {
            // Once per finding: a new finding on a thread armed for another one arms it
            // afresh, its updates do not.
            if !self.arming_done.insert(f.id) {
                return None;
            }
            self.armed.insert(tid, f.id);
            Some(Arming::Arm(tid))
        } else {
            self.sent.remove(&f.id);
            self.arming_done.remove(&f.id);
            match self.armed.get(&tid) {
                Some(&id) if id == f.id => {
                    self.armed.remove(&tid);
                    Some(Arming::Disarm(tid))
                }
                _ => None,
            }
        }
    }

    /// Attaches the call sites known for `f`; returns whether it has more samples than when
    /// it was last sent.
    pub fn attach(&mut self, f: &mut Finding) -> bool {
        f.call_sites = self.summarize(f);
        let n = f.call_sites.as_ref().map_or(0, |c| c.samples);
        let before = self.sent.insert(f.id, n).unwrap_or(0);
        n > before
    }

    /// The call sites of `f`, from the samples of its thread (or process) taken while it was
    /// open, on its SSL* when both name one.
    pub fn summarize(&self, f: &Finding) -> Option<CallSites> {
        let from = f.first_seen_ns.saturating_sub(BEFORE_NS);
        let to = f.closed_ns.unwrap_or(u64::MAX);
        let samples: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|((pid, tid), _)| *pid == f.pid && f.tid.is_none_or(|t| t == *tid))
            .flat_map(|(_, q)| q.iter())
            .filter(|s| s.ts_ns >= from && s.ts_ns <= to && relevant(f.kind, s))
            .filter(|s| match (f.ssl, s.ssl) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            })
            .collect();
        if samples.is_empty() {
            return None;
        }
        let total = samples.len() as u32;
        // (call, caller) -> (stacks, the first of them).
        let mut groups: BTreeMap<SiteKey, (u32, &Sample)> = BTreeMap::new();
        for s in &samples {
            let (call, caller) = split(s);
            let key = (call, caller.map(caller_key));
            groups.entry(key).or_insert((0, s)).0 += 1;
        }
        let mut sites: Vec<CallSite> = groups
            .into_iter()
            .map(|((call, _), (n, s))| CallSite {
                call,
                caller: split(s).1.cloned(),
                samples: n,
                share_pct: 100.0 * n as f64 / total as f64,
                stack: s.frames.clone(),
            })
            .collect();
        sites.sort_by_key(|s| std::cmp::Reverse(s.samples));
        sites.truncate(MAX_SITES);
        let interpreted = samples
            .iter()
            .flat_map(|s| &s.frames)
            .any(|fr| interpreter(&fr.object));
        Some(CallSites {
            samples: total,
            sites,
            note: interpreted.then(|| {
                "native frames only: the interpreter's own frames (the Python or JavaScript \
                 functions) are not unwound"
                    .to_owned()
            }),
        })
    }
}

/// The call (the outermost OpenSSL frame) and the caller (the first frame outside OpenSSL)
/// of a sample.
fn split(s: &Sample) -> (Option<String>, Option<&Frame>) {
    let Some(first) = s.frames.first() else {
        return (s.op.map(|o| o.symbol().to_owned()), None);
    };
    // OpenSSL as a shared library, or linked into the program (node): then its frames are
    // told by their names, in the object the probe is in.
    let shared = is_openssl_file(&first.object);
    let in_tls = |fr: &Frame| {
        if shared {
            is_openssl_file(&fr.object)
        } else {
            fr.object == first.object && fr.function.as_deref().is_some_and(openssl_name)
        }
    };
    let idx = s.frames.iter().position(|fr| !in_tls(fr));
    let outer_tls = match idx {
        Some(0) | None => None,
        Some(i) => s.frames.get(i - 1),
    };
    let call = outer_tls
        .and_then(|fr| fr.function.clone())
        .or_else(|| s.op.map(|o| o.symbol().to_owned()));
    (call, idx.and_then(|i| s.frames.get(i)))
}

/// What makes two callers the same: the function (or, unnamed, the address) and the file.
fn caller_key(fr: &Frame) -> String {
    match &fr.function {
        Some(f) => format!("{f}+{:x}@{}", fr.offset.unwrap_or(0), fr.object),
        None => format!("{:x}@{}", fr.object_address, fr.object),
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn is_openssl_file(path: &str) -> bool {
    let name = file_name(path);
    name.starts_with("libssl") || name.starts_with("libcrypto")
}

/// OpenSSL's function names, for an OpenSSL linked into the program.
fn openssl_name(name: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "SSL_", "ssl_", "ssl3_", "tls_", "tls1_", "dtls", "ossl_", "ERR_", "statem_", "state_",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
        || matches!(name, "read_state_machine" | "write_state_machine")
}

fn interpreter(path: &str) -> bool {
    let name = file_name(path);
    name.starts_with("libpython") || name.starts_with("python") || name == "node"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SymbolSource;

    fn frame(object: &str, function: Option<&str>) -> Frame {
        Frame {
            address: 0x1000,
            object: object.to_owned(),
            object_address: 0x1000,
            function: function.map(str::to_owned),
            offset: function.map(|_| 0x10),
            file: None,
            line: None,
            symbols: if function.is_some() {
                SymbolSource::Symtab
            } else {
                SymbolSource::None
            },
        }
    }

    fn sample(ts_ns: u64, op: Option<SslOp>, at_error: bool, frames: Vec<Frame>) -> Sample {
        Sample {
            ts_ns,
            ssl: Some(0xabc),
            op,
            at_error,
            frames,
        }
    }

    const SSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    const CRYPTO: &str = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3";

    #[test]
    fn the_caller_is_the_first_frame_outside_libssl_and_libcrypto() {
        let s = sample(
            0,
            None,
            true,
            vec![
                frame(CRYPTO, Some("ERR_vset_error")),
                frame(SSL, None),
                frame(SSL, Some("SSL_write")),
                frame("/usr/bin/app", Some("flush_output")),
                frame("/usr/bin/app", Some("main")),
            ],
        );
        let (call, caller) = split(&s);
        assert_eq!(call.as_deref(), Some("SSL_write"));
        assert_eq!(
            caller.and_then(|c| c.function.as_deref()),
            Some("flush_output")
        );
    }

    #[test]
    fn openssl_linked_into_the_program_is_told_by_its_names() {
        let s = sample(
            0,
            Some(SslOp::Read),
            false,
            vec![
                frame("/usr/bin/node", Some("ssl3_read_internal")),
                frame("/usr/bin/node", Some("SSL_read")),
                frame("/usr/bin/node", Some("node::crypto::TLSWrap::ClearOut")),
            ],
        );
        let (call, caller) = split(&s);
        assert_eq!(call.as_deref(), Some("SSL_read"));
        assert_eq!(
            caller.and_then(|c| c.function.as_deref()),
            Some("node::crypto::TLSWrap::ClearOut")
        );
    }

    #[test]
    fn a_stack_that_never_leaves_openssl_has_no_caller_and_the_probed_call() {
        let s = sample(0, Some(SslOp::Write), false, vec![frame(SSL, None)]);
        assert_eq!(split(&s), (Some("SSL_write".to_owned()), None));
    }

    fn finding(kind: FindingKind, id: u64, open: bool) -> Finding {
        let mut f = crate::tui::fixtures::spin();
        f.id = id;
        f.kind = kind;
        f.tid = Some(7);
        f.ssl = Some(0xabc);
        f.first_seen_ns = 10_000_000_000;
        if !open {
            f.state = crate::engine::FindingState::Closed;
            f.closed_ns = Some(20_000_000_000);
        }
        f
    }

    #[test]
    fn sites_are_counted_per_finding_from_its_own_calls() {
        let mut store = Store::default();
        let app = |name: &str| vec![frame(SSL, Some("SSL_read")), frame("/app", Some(name))];
        let q = store
            .samples
            .entry((crate::tui::fixtures::PID, 7))
            .or_default();
        for i in 0..6 {
            q.push_back(sample(
                11_000_000_000 + i,
                Some(SslOp::Read),
                false,
                app("pump"),
            ));
        }
        q.push_back(sample(
            11_500_000_000,
            Some(SslOp::Read),
            false,
            app("drain"),
        ));
        // A handshake and an error stack of the same thread: not the spin's calls.
        q.push_back(sample(
            11_600_000_000,
            Some(SslOp::Connect),
            false,
            app("dial"),
        ));
        q.push_back(sample(11_700_000_000, None, true, app("resend")));
        // Before the finding opened (and its second of grace): not its.
        q.push_back(sample(1_000_000_000, Some(SslOp::Read), false, app("old")));

        let cs = store
            .summarize(&finding(FindingKind::SpinLoop, 1, true))
            .expect("call sites");
        assert_eq!(cs.samples, 7);
        let names: Vec<_> = cs
            .sites
            .iter()
            .map(|s| {
                (
                    s.caller.as_ref().and_then(|c| c.function.clone()),
                    s.samples,
                )
            })
            .collect();
        assert_eq!(
            names,
            [(Some("pump".to_owned()), 6), (Some("drain".to_owned()), 1)]
        );
        assert!((cs.sites[0].share_pct - 600.0 / 7.0).abs() < 1e-9);

        let retry = store
            .summarize(&finding(FindingKind::BadWriteRetry, 2, true))
            .expect("the error's stack");
        assert_eq!(retry.samples, 1);
    }

    #[test]
    fn a_thread_is_armed_once_per_finding_and_disarmed_by_the_one_that_armed_it() {
        let mut store = Store::default();
        let spin = finding(FindingKind::SpinLoop, 1, true);
        assert_eq!(store.arming(&spin), Some(Arming::Arm(7)));
        assert_eq!(store.arming(&spin), None, "an update does not re-arm");
        let retry = finding(FindingKind::BadWriteRetry, 2, true);
        assert_eq!(store.arming(&retry), Some(Arming::Arm(7)));
        assert_eq!(
            store.arming(&finding(FindingKind::SpinLoop, 1, false)),
            None
        );
        assert_eq!(
            store.arming(&finding(FindingKind::BadWriteRetry, 2, false)),
            Some(Arming::Disarm(7))
        );
    }
}
