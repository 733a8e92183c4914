//! The process tree of each target: descendants there at attach, and those forked later
//! (nginx workers after a reload), found once a second and attached like the others.

use anyhow::Result;

use super::{AgentConfig, Session};
use crate::{
    agent::proc,
    probe::{Probes, TlsLibrary, discover},
    sink::{Record, Target, TargetAttach, record::AttachCause},
};

/// The TLS library of `pid`: `--libssl` when given, else the one it maps.
pub(super) fn library(cfg: &AgentConfig, pid: u32) -> Result<TlsLibrary, discover::DiscoverError> {
    if let Some(lib) = cfg.libraries.get(&pid) {
        return Ok(lib.clone());
    }
    match &cfg.libssl {
        Some(path) => {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Err(discover::DiscoverError::NoProcess(pid));
            }
            discover::library_at(path, &path.display().to_string())
        }
        None => discover::find_tls_library(pid),
    }
}

/// Attaches the probes to `pid` and describes it as a target.
pub(super) fn attach_target(
    probes: &mut Probes,
    pid: u32,
    lib: TlsLibrary,
    hot: bool,
) -> Result<Target> {
    let comm = discover::comm(pid);
    let library_path = lib.display_path.clone();
    let library_version = lib.version.clone();
    if let Err(e) = probes.attach(pid, lib, hot) {
        // Leave nothing half attached: out of the target filter, links dropped.
        probes.detach(pid);
        return Err(e);
    }
    Ok(Target {
        pid,
        comm,
        library_path,
        library_version,
        missing_symbols: probes
            .missing_symbols(pid)
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        executable: crate::agent::host::executable(pid),
        cgroup: crate::agent::host::cgroup(pid),
    })
}

impl Session {
    /// Attaches to the descendants of the traced processes that are not traced yet, and
    /// sends a `target_attach` for each. One without a TLS library is skipped for good.
    pub(super) fn adopt_children(&mut self, now: u64) -> Result<()> {
        if !self.cfg.children {
            return Ok(());
        }
        let traced = self.probes.pids();
        if traced.is_empty() {
            return Ok(());
        }
        for (pid, parent) in discover::descendants(&traced) {
            if traced.contains(&pid) || self.skipped.contains(&pid) {
                continue;
            }
            let target = library(&self.cfg, pid)
                .map_err(anyhow::Error::from)
                .and_then(|lib| attach_target(&mut self.probes, pid, lib, self.cfg.hot));
            let target = match target {
                Ok(t) => t,
                Err(e) => {
                    log::info!("not tracing pid {pid}, child of {parent}: {e:#}");
                    self.skipped.insert(pid);
                    continue;
                }
            };
            self.adopted(target, parent, AttachCause::Child, now)?;
        }
        Ok(())
    }

    /// Announces a target attached after the start with a `target_attach`, and reads what
    /// /proc knows of it, as at attach: epoll registrations made before, and a first CPU
    /// sample.
    pub(super) fn adopted(
        &mut self,
        target: Target,
        parent: u32,
        cause: AttachCause,
        now: u64,
    ) -> Result<()> {
        let pid = target.pid;
        self.call_sites.watch(pid);
        self.pipeline.set_comm(pid, &target.comm);
        self.auto_add(pid)?;
        self.targets.retain(|t| t.pid != pid);
        self.targets.push(target.clone());
        let rec = TargetAttach {
            target,
            parent_pid: parent,
            ts_ns: now,
            cause,
        };
        self.out.sinks.record(Record::TargetAttach(&rec))?;
        for epfd in proc::epoll_fds(pid) {
            self.pipeline.tracker_mut().mark_seeded(pid, epfd);
            for ev in proc::epoll_registrations(pid, epfd, now) {
                self.handle(ev)?;
            }
        }
        self.seed_peers(pid, now)?;
        for ev in proc::thread_cpu(pid, now) {
            self.handle(ev)?;
        }
        Ok(())
    }
}
