//! Host-wide discovery for `tls-probe watch`: which processes on the host run OpenSSL, now
//! and as they appear.
//!
//! The existing discovery ([`discover::find_tls_library`]: a libssl in `/proc/PID/maps`, or
//! OpenSSL's symbols in the executable) is run on every process of the host, but each
//! expensive look is made once per reason to look:
//!
//! - a pid not seen before gets one full discovery (its maps, and the executable's symbols
//!   unless that executable, by device and inode, was already read: the answer is cached);
//! - a pid that runs a new program (`/proc/PID/exe` names another inode) gets another;
//! - a pid whose address space grew or shrank (`vsize` in `/proc/PID/stat`, which a
//!   `dlopen` of libssl changes) gets a look at its maps for a libssl.
//!
//! Young processes (first seen under [`YOUNG_NS`] ago) are looked at on every scan (every
//! [`SCAN_INTERVAL`]): a program that links libssl maps it within milliseconds of its exec,
//! and a short-lived one must be found before it is gone. Older ones are looked at once a
//! second: Python's `import ssl` in a long-running process is found within a second too.
//! tls-probe never picks itself or its own descendants.

use std::{
    collections::{HashMap, HashSet},
    fs,
    time::Duration,
};

use procfs::process::Process;

use crate::probe::{TlsLibrary, discover};

/// How often `/proc` is listed for new processes.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(200);
/// A process first seen less than this long ago is looked at on every scan.
const YOUNG_NS: u64 = 5_000_000_000;
/// An older process is looked at this often.
const OLD_EVERY_NS: u64 = 1_000_000_000;
/// Executables whose symbols were read, by (device, inode): at most this many answers are
/// kept (the cache is cleared when full).
const MAX_EXE_CACHE: usize = 8_192;

/// Which processes `watch` takes.
#[derive(Clone, Debug, Default)]
pub struct HostConfig {
    /// Only these command names (or executable file names); empty: all.
    pub include: Vec<String>,
    /// Never these.
    pub exclude: Vec<String>,
    /// Only descendants of these pids; empty: all.
    pub descendants_of: Vec<u32>,
    /// The host-wide probe cost budget, in nanoseconds of probe time per second.
    pub budget_ns_per_sec: f64,
    /// Trace at most this many processes at once.
    pub max_processes: usize,
}

impl HostConfig {
    /// Whether a process with this comm and executable name is selected.
    pub fn selects(&self, comm: &str, exe_name: &str) -> bool {
        let is = |names: &[String]| {
            names
                .iter()
                .any(|n| n == comm || n == exe_name || short(n) == comm)
        };
        (self.include.is_empty() || is(&self.include)) && !is(&self.exclude)
    }
}

/// The first 15 bytes of a name: the kernel cuts comm there.
fn short(name: &str) -> &str {
    let mut end = 0;
    for (i, c) in name.char_indices() {
        if i + c.len_utf8() > 15 {
            break;
        }
        end = i + c.len_utf8();
    }
    &name[..end]
}

/// Why a process is picked up after the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// There at the first scan, or new and already running OpenSSL when first seen.
    Present,
    /// It ran a new program since the last look.
    Exec,
    /// Its maps gained a libssl.
    LibraryLoaded,
}

#[derive(Debug)]
struct Seen {
    first_ns: u64,
    last_look_ns: u64,
    exe: Option<(u64, u64)>,
    vsize: u64,
    /// Not to be picked (excluded by name, tls-probe itself, a kernel thread, or its
    /// attach failed): looked at again only after an exec.
    passed: bool,
    /// It ran a new program since first seen: its libssl, when it maps one, came with it.
    execed: bool,
}

/// The scanner's memory of every process it has seen and not picked.
#[derive(Debug)]
pub struct Scanner {
    cfg: HostConfig,
    me: u32,
    seen: HashMap<u32, Seen>,
    /// Whether an executable, by (device, inode), carries OpenSSL.
    exe_tls: HashMap<(u64, u64), bool>,
    first: bool,
}

fn exe_name(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.trim_end_matches(" (deleted)").to_owned())
        })
        .unwrap_or_default()
}

/// The executable of `pid`, as the process sees it (a path inside its mount namespace).
pub fn executable(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string())
}

/// The cgroup of `pid` (its cgroup v2 path, or on v1 the `pids`/`memory` hierarchy's, else
/// the first line's), from `/proc/PID/cgroup`: a container runtime puts each container in
/// its own cgroup, so this names the container.
pub fn cgroup(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    cgroup_of(&text)
}

fn cgroup_of(text: &str) -> Option<String> {
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            Some((it.next()?, it.next()?))
        })
        .collect();
    entries
        .iter()
        .find(|(ctl, _)| ctl.is_empty())
        .or_else(|| {
            entries
                .iter()
                .find(|(ctl, _)| ctl.split(',').any(|c| c == "pids" || c == "memory"))
        })
        .or(entries.first())
        .map(|(_, path)| (*path).to_owned())
}

/// Whether `pid` is one of `roots` or descends from one (up to 64 generations).
fn descends(pid: u32, roots: &[u32]) -> bool {
    let mut p = pid;
    for _ in 0..64 {
        if roots.contains(&p) {
            return true;
        }
        match discover::parent_pid(p) {
            Some(pp) if pp > 0 && pp != p => p = pp,
            _ => return false,
        }
    }
    false
}

/// The pids of the processes on the host (not threads), from listing `/proc`.
fn pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The address-space size of `pid` (changes on mmap, so on dlopen).
fn vsize(pid: u32) -> Option<u64> {
    let stat = Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    Some(stat.vsize)
}

impl Scanner {
    pub fn new(cfg: HostConfig) -> Self {
        Self {
            cfg,
            me: std::process::id(),
            seen: HashMap::new(),
            exe_tls: HashMap::new(),
            first: true,
        }
    }

    pub fn config(&self) -> &HostConfig {
        &self.cfg
    }

    /// Whether `pid` is tls-probe or one of its descendants (its handoff holder).
    fn is_self(&self, pid: u32) -> bool {
        descends(pid, &[self.me])
    }

    /// Whether `pid` is outside `--descendants-of`.
    fn outside(&self, pid: u32) -> bool {
        !self.cfg.descendants_of.is_empty() && !descends(pid, &self.cfg.descendants_of)
    }

    /// A process whose attach failed: not tried again until it execs.
    pub fn pass(&mut self, pid: u32, now: u64) {
        let exe = discover::exe_identity(pid);
        self.seen.insert(
            pid,
            Seen {
                first_ns: now,
                last_look_ns: now,
                exe,
                vsize: vsize(pid).unwrap_or(0),
                passed: true,
                execed: false,
            },
        );
    }

    /// Forgets `pid`, so that the next scan looks at it as new (one left alone while the cap
    /// on traced processes was reached).
    pub fn forget(&mut self, pid: u32) {
        self.seen.remove(&pid);
    }

    /// Lists `/proc` and returns the processes that now run OpenSSL and are not `traced`,
    /// with their library and why. A pid it returns is forgotten: the caller traces it, or
    /// calls [`Scanner::pass`].
    pub fn scan(&mut self, now: u64, traced: &HashSet<u32>) -> Vec<(u32, TlsLibrary, Found)> {
        let first = std::mem::take(&mut self.first);
        let live = pids();
        let live_set: HashSet<u32> = live.iter().copied().collect();
        self.seen.retain(|pid, _| live_set.contains(pid));
        let mut out = Vec::new();
        for pid in live {
            if traced.contains(&pid) {
                self.seen.remove(&pid);
                continue;
            }
            if let Some(found) = self.look(pid, now, first) {
                self.seen.remove(&pid);
                out.push((pid, found.0, found.1));
            }
        }
        out
    }

    /// One process: its library and why, when it is to be traced now.
    fn look(&mut self, pid: u32, now: u64, first: bool) -> Option<(TlsLibrary, Found)> {
        let exe = discover::exe_identity(pid);
        let vs;
        let why = match self.seen.get_mut(&pid) {
            None => {
                vs = vsize(pid).unwrap_or(0);
                let passed =
                    exe.is_none() || pid == self.me || self.is_self(pid) || self.outside(pid);
                self.seen.insert(
                    pid,
                    Seen {
                        first_ns: now,
                        last_look_ns: now,
                        exe,
                        vsize: vs,
                        passed,
                        execed: false,
                    },
                );
                if passed {
                    return None;
                }
                Found::Present
            }
            Some(s) => {
                let young = now.saturating_sub(s.first_ns) < YOUNG_NS;
                if !young && now.saturating_sub(s.last_look_ns) < OLD_EVERY_NS {
                    return None;
                }
                s.last_look_ns = now;
                if exe.is_some() && exe != s.exe {
                    s.exe = exe;
                    s.passed = false;
                    s.execed = true;
                    s.vsize = vsize(pid).unwrap_or(0);
                    Found::Exec
                } else if s.passed {
                    return None;
                } else {
                    vs = vsize(pid).unwrap_or(0);
                    if vs == s.vsize {
                        return None;
                    }
                    s.vsize = vs;
                    if s.execed {
                        Found::Exec
                    } else {
                        Found::LibraryLoaded
                    }
                }
            }
        };
        let comm = discover::comm(pid);
        if !self.cfg.selects(&comm, &exe_name(pid)) {
            if let Some(s) = self.seen.get_mut(&pid) {
                s.passed = true;
            }
            return None;
        }
        let maps_libssl = discover::maps_libssl(pid);
        let known = exe.and_then(|e| self.exe_tls.get(&e).copied());
        if !maps_libssl && known == Some(false) {
            return None;
        }
        match discover::find_tls_library(pid) {
            Ok(lib) => {
                if let Some(e) = exe {
                    self.remember(e, lib.is_linked_in());
                }
                let why = if first { Found::Present } else { why };
                Some((lib, why))
            }
            Err(e) => {
                log::debug!("pid {pid} ({comm}): no TLS library: {e}");
                if let Some(e) = exe
                    && !maps_libssl
                {
                    self.remember(e, false);
                }
                None
            }
        }
    }

    fn remember(&mut self, exe: (u64, u64), tls: bool) {
        if self.exe_tls.len() >= MAX_EXE_CACHE {
            self.exe_tls.clear();
        }
        self.exe_tls.insert(exe, tls);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_and_exclude_by_comm_or_executable() {
        let mut cfg = HostConfig::default();
        assert!(cfg.selects("nginx", "nginx"));
        cfg.exclude = vec!["sshd".into()];
        assert!(!cfg.selects("sshd", "sshd") && cfg.selects("nginx", "nginx"));
        cfg.include = vec!["nginx".into(), "python3".into()];
        assert!(cfg.selects("nginx", "nginx"));
        assert!(cfg.selects("x", "python3"), "by executable name");
        assert!(!cfg.selects("curl", "curl"));
        cfg.include = vec!["a-very-long-program-name".into()];
        assert!(
            cfg.selects("a-very-long-pro", "other"),
            "comm is cut at 15 bytes"
        );
    }

    #[test]
    fn cgroup_v2_then_v1() {
        assert_eq!(
            cgroup_of("0::/system.slice/docker-abc.scope\n").as_deref(),
            Some("/system.slice/docker-abc.scope")
        );
        let v1 = "12:cpu,cpuacct:/a\n5:memory:/kubepods/pod1/c1\n1:name=systemd:/x\n";
        assert_eq!(cgroup_of(v1).as_deref(), Some("/kubepods/pod1/c1"));
        assert_eq!(cgroup_of("").as_deref(), None);
    }

    #[test]
    fn descendants_of_walks_up_the_parents() {
        let me = std::process::id();
        let parent = discover::parent_pid(me).unwrap();
        assert!(descends(me, &[parent]) && descends(me, &[me]));
        assert!(!descends(parent, &[me]));
        let mut s = Scanner::new(HostConfig {
            descendants_of: vec![me],
            ..HostConfig::default()
        });
        assert!(s.outside(parent) && !s.outside(me));
        assert!(
            s.scan(1, &HashSet::new()).is_empty(),
            "only tls-probe's own tree, itself excluded"
        );
    }

    #[test]
    fn the_scanner_never_picks_itself() {
        let mut s = Scanner::new(HostConfig::default());
        let me = std::process::id();
        assert!(s.is_self(me));
        let found = s.scan(1, &HashSet::new());
        assert!(found.iter().all(|(pid, ..)| *pid != me));
    }
}
