//! Processes that load their TLS library after tls-probe started: a target asked for with
//! `--wait-for-library` that maps none yet, or a descendant skipped for the same reason, is
//! looked at again once a second and attached when it maps a libssl (dlopen) or runs a new
//! program (exec). A traced process that execs a program with another TLS library is
//! moved over to it. Each is announced with a `target_attach` and its cause.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;

use super::{Session, tree};
use crate::{
    agent::proc,
    probe::discover,
    sink::{Record, TargetExit, record::AttachCause},
};

#[derive(Debug, Default)]
pub(super) struct Watch {
    /// Targets asked for that had no TLS library yet: the run goes on while any is alive.
    waiting: BTreeSet<u32>,
    /// The executable (device, inode) of each watched or traced pid when last seen.
    exes: BTreeMap<u32, (u64, u64)>,
    /// Traced processes that exited: reported and silenced, their (slow) uprobe detach left
    /// for the end of the tick, after the scan for new processes.
    exited: BTreeSet<u32>,
    /// Watched pids whose library was found but could not be attached: tried again only
    /// after an exec, not every second.
    failed: BTreeSet<u32>,
    /// Pids seen to run a new program that are not attached yet: the exec'd program maps
    /// its libssl a moment after the exec, and a look in between must not turn the exec into
    /// a plain library load.
    execed: BTreeSet<u32>,
}

impl Watch {
    pub(super) fn new(waiting: Vec<u32>) -> Self {
        let mut exes = BTreeMap::new();
        for &pid in &waiting {
            eprintln!(
                "tls-probe: pid {pid} ({}) maps no TLS library yet; it is attached when it loads one",
                discover::comm(pid)
            );
            if let Some(exe) = discover::exe_identity(pid) {
                exes.insert(pid, exe);
            }
        }
        Self {
            waiting: waiting.into_iter().collect(),
            exes,
            exited: BTreeSet::new(),
            failed: BTreeSet::new(),
            execed: BTreeSet::new(),
        }
    }

    /// Whether a target asked for is still waiting for its TLS library.
    pub(super) fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Whether `pid` has run a new program since the last look (false on the first look).
    fn exec_seen(&mut self, pid: u32) -> bool {
        let Some(now) = discover::exe_identity(pid) else {
            return false;
        };
        self.exes
            .insert(pid, now)
            .is_some_and(|before| before != now)
    }

    /// Remembers the program `pid` runs now, so that its next exec is seen.
    pub(super) fn note_exe(&mut self, pid: u32) {
        if let Some(exe) = discover::exe_identity(pid) {
            self.exes.insert(pid, exe);
        }
    }

    fn forget(&mut self, pid: u32) {
        self.waiting.remove(&pid);
        self.exes.remove(&pid);
        self.failed.remove(&pid);
        self.execed.remove(&pid);
    }
}

impl Session {
    /// A traced process exited (seen by the kernel's exit tracepoint, or on the tick):
    /// silence it and send `target_exit`, once. Its uprobes are detached by
    /// [`Session::detach_exited`] at the end of the tick: detaching takes the kernel about
    /// 100 ms a uprobe, and must not hold up the records being read or the scan that finds
    /// new processes (nginx's new workers while the old ones exit after a reload).
    pub(super) fn target_exited(&mut self, pid: u32, ts_ns: u64) -> Result<()> {
        if self.late.exited.contains(&pid) || !self.probes.pids().contains(&pid) {
            return Ok(());
        }
        self.probes.silence(pid);
        if let Some(auto) = &mut self.auto {
            auto.remove(pid);
        }
        if let Some(gate) = &mut self.gate {
            gate.remove(pid);
        }
        self.late.forget(pid);
        self.late.exited.insert(pid);
        let comm = self
            .targets
            .iter()
            .find(|t| t.pid == pid)
            .map(|t| t.comm.clone())
            .unwrap_or_default();
        let exit = TargetExit { pid, comm, ts_ns };
        self.out.sinks.record(Record::TargetExit(&exit))
    }

    /// Detaches the processes that exited. Call last in the tick.
    pub(super) fn detach_exited(&mut self) {
        for pid in std::mem::take(&mut self.late.exited) {
            self.peers.forget(pid);
            self.call_sites.forget(pid);
            self.probes.detach(pid);
            // `watch` runs for days over a host's short-lived processes: nothing of an
            // exited one is kept (`attach` keeps its escalation totals for the summary).
            if self.host.is_some() {
                self.pipeline.tracker_mut().forget(pid);
                self.targets.retain(|t| t.pid != pid);
                if let Some(auto) = &mut self.auto {
                    auto.forget(pid);
                }
            }
        }
    }

    /// Whether `pid` exited and waits for its detach.
    pub(super) fn has_exited(&self, pid: u32) -> bool {
        self.late.exited.contains(&pid)
    }

    /// Attaches to watched processes that now map a TLS library, and moves traced processes
    /// that exec'd a program with another TLS library over to it.
    pub(super) fn adopt_late(&mut self, now: u64) -> Result<()> {
        let watched: Vec<u32> = self
            .late
            .waiting
            .iter()
            .chain(&self.skipped)
            .copied()
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        for pid in watched {
            if !proc::alive(pid) {
                if self.late.waiting.contains(&pid) {
                    let exit = TargetExit {
                        pid,
                        comm: discover::comm(pid),
                        ts_ns: now,
                    };
                    self.out.sinks.record(Record::TargetExit(&exit))?;
                }
                self.late.forget(pid);
                self.skipped.remove(&pid);
                continue;
            }
            let exec = self.late.exec_seen(pid);
            if exec {
                self.late.failed.remove(&pid);
                self.late.execed.insert(pid);
            }
            // A full discovery reads the executable's symbols: only when something changed.
            let maps_libssl = discover::maps_libssl(pid);
            if self.late.failed.contains(&pid) || (!exec && !maps_libssl) {
                continue;
            }
            let lib = match tree::library(&self.cfg, pid) {
                Ok(lib) => lib,
                Err(e) => {
                    log::debug!("pid {pid} still has no TLS library: {e}");
                    // It maps a libssl that will not do: wait for the next exec. (An exec'd
                    // program without one may still dlopen it: keep looking.)
                    if maps_libssl {
                        self.late.failed.insert(pid);
                    }
                    continue;
                }
            };
            match tree::attach_target(&mut self.probes, pid, lib, self.cfg.hot) {
                Ok(target) => {
                    self.late.waiting.remove(&pid);
                    self.skipped.remove(&pid);
                    let parent = discover::parent_pid(pid).unwrap_or(0);
                    let cause = if self.late.execed.remove(&pid) {
                        AttachCause::Exec
                    } else {
                        AttachCause::LibraryLoaded
                    };
                    self.adopted(target, parent, cause, now)?;
                }
                Err(e) => {
                    log::info!("attaching to pid {pid} failed: {e:#}");
                    self.late.failed.insert(pid);
                }
            }
        }
        // `--libssl` names the library for every process: nothing to re-discover.
        if self.cfg.libssl.is_some() {
            return Ok(());
        }
        for pid in self.probes.pids() {
            if !self.late.exec_seen(pid) {
                continue;
            }
            // A program that maps no TLS library (yet) keeps what it has: `run` places the
            // probes on the library the command will load before it loads it.
            let Ok(lib) = discover::find_tls_library(pid) else {
                continue;
            };
            let old = self
                .targets
                .iter()
                .find(|t| t.pid == pid)
                .map(|t| format!("/proc/{pid}/root{}", t.library_path))
                .and_then(|p| discover::file_identity(std::path::Path::new(&p)));
            if old.is_some() && old == discover::file_identity(&lib.path) {
                continue;
            }
            self.probes.detach(pid);
            match tree::attach_target(&mut self.probes, pid, lib, self.cfg.hot) {
                Ok(target) => {
                    let parent = discover::parent_pid(pid).unwrap_or(0);
                    self.adopted(target, parent, AttachCause::Exec, now)?;
                }
                Err(e) => {
                    eprintln!(
                        "tls-probe: pid {pid} ran a new program; attaching to it failed: {e:#}"
                    );
                    self.skipped.insert(pid);
                }
            }
        }
        Ok(())
    }
}
