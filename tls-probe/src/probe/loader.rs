//! Loading the eBPF object, attaching its programs to targets, and reading counters.
//!
//! The programs are loaded once. Tracepoints are attached once (they filter on the
//! `TARGETS` map). Uprobes are attached per target process with a one-process scope, so
//! they never trap in other processes. The hot-path uprobes (per-call SSL_read/SSL_write
//! and SSL_get_error) can be attached and detached while running, without reloading,
//! because an attached uprobe costs a trap on every call even when its program returns
//! at once.

use std::{collections::HashMap, num::NonZeroU32, thread::JoinHandle};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        TracePoint, UProbe,
        trace_point::{TracePointLink, TracePointLinkId},
        uprobe::{UProbeLink, UProbeLinkId, UProbeScope},
    },
};
use tls_probe_common::{counter, target_flag};

use super::TlsLibrary;

/// The embedded eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tls-probe"));

/// (program, symbol) pairs attached on every call: the hot path.
pub const HOT_UPROBES: &[(&str, &str)] = &[
    ("ssl_read_enter", "SSL_read"),
    ("ssl_read_exit", "SSL_read"),
    ("ssl_read_ex_enter", "SSL_read_ex"),
    ("ssl_read_ex_exit", "SSL_read_ex"),
    ("ssl_write_enter", "SSL_write"),
    ("ssl_write_exit", "SSL_write"),
    ("ssl_write_ex_enter", "SSL_write_ex"),
    ("ssl_write_ex_exit", "SSL_write_ex"),
    ("ssl_peek_enter", "SSL_peek"),
    ("ssl_peek_exit", "SSL_peek"),
    ("ssl_peek_ex_enter", "SSL_peek_ex"),
    ("ssl_peek_ex_exit", "SSL_peek_ex"),
    ("ssl_get_error_enter", "SSL_get_error"),
    ("ssl_get_error_exit", "SSL_get_error"),
];

/// (program, symbol) pairs that fire about once per connection: always on.
pub const COLD_UPROBES: &[(&str, &str)] = &[
    ("ssl_do_handshake_enter", "SSL_do_handshake"),
    ("ssl_do_handshake_exit", "SSL_do_handshake"),
    ("ssl_accept_enter", "SSL_accept"),
    ("ssl_accept_exit", "SSL_accept"),
    ("ssl_connect_enter", "SSL_connect"),
    ("ssl_connect_exit", "SSL_connect"),
    ("ssl_free_enter", "SSL_free"),
];

/// Syscall tracepoints: (program == event name) in the `syscalls` category.
pub const TRACEPOINTS: &[&str] = &[
    "sys_enter_epoll_wait",
    "sys_exit_epoll_wait",
    "sys_enter_epoll_pwait",
    "sys_exit_epoll_pwait",
    "sys_enter_epoll_pwait2",
    "sys_exit_epoll_pwait2",
    "sys_enter_epoll_ctl",
    "sys_exit_epoll_ctl",
    "sys_enter_close",
    "sys_enter_accept4",
    "sys_exit_accept4",
    "sys_enter_accept",
    "sys_exit_accept",
    "sys_enter_connect",
    "sys_exit_connect",
];

/// Socket I/O tracepoints (tls-probe-ebpf/src/sockio.rs): the fd of an SSL call, the
/// ServerHello inside a handshake call, and two threads on one fd. They fire on every
/// read and write of every process, the most frequent syscalls of a busy server, so outside
/// full mode they are attached only while they can tell something (see
/// [`Probes::set_sockio`]).
pub const SOCKIO_TRACEPOINTS: &[&str] = &[
    "sys_enter_read",
    "sys_exit_read",
    "sys_enter_write",
    "sys_exit_write",
    "sys_enter_recvfrom",
    "sys_exit_recvfrom",
    "sys_enter_sendto",
    "sys_exit_sendto",
    "sys_enter_recvmsg",
    "sys_exit_recvmsg",
    "sys_enter_sendmsg",
    "sys_exit_sendmsg",
    "sys_enter_readv",
    "sys_exit_readv",
    "sys_enter_writev",
    "sys_exit_writev",
];

/// Kernel-side counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Records lost because the ring buffer was full, all kinds.
    pub lost_ringbuf: u64,
    /// The same, by record kind (`tls_probe_common::kind`).
    pub lost_by_kind: [u64; counter::LOST_KINDS as usize],
    pub lost_inflight: u64,
    pub uprobe_hits: u64,
    pub tracepoint_hits: u64,
    /// Reads and writes of the targets the socket I/O tracepoints saw.
    pub sockio_calls: u64,
}

/// One attached target process.
struct Target {
    lib: TlsLibrary,
    cold: Vec<(&'static str, UProbeLinkId)>,
    hot: Vec<(&'static str, UProbeLinkId)>,
    /// Symbols the library lacks, skipped.
    missing: Vec<&'static str>,
}

pub struct Probes {
    ebpf: Ebpf,
    targets: HashMap<u32, Target>,
    /// Links being detached in the background (see [`Probes::release`]).
    detaching: Vec<JoinHandle<()>>,
    /// The socket I/O tracepoints while attached.
    sockio: Vec<(&'static str, TracePointLinkId)>,
    /// Their links being closed in the background, after they were switched off.
    sockio_detaching: Option<JoinHandle<()>>,
}

/// libcrypto's error-raising functions: OpenSSL 3 first, then 1.1. One is attached,
/// always on (it fires only when OpenSSL raises an error). In OpenSSL 3 every error goes
/// through `ERR_vset_error` (`ERR_raise` calls `ERR_set_error`, which calls it; libssl's
/// `SSLfatal`, which raises SSL_R_BAD_WRITE_RETRY among others, calls it directly).
pub const ERROR_UPROBES: &[(&str, &str)] = &[
    ("err_set_error", "ERR_vset_error"),
    ("err_put_error", "ERR_put_error"),
];

/// How many threads close one batch of links. Measured here: each uprobe link takes
/// ~110 ms to close and the kernel serializes them (8 threads closed 25 links in 2.8 s, the
/// same as one), so one thread is enough; what matters is that the caller does not wait.
const DETACH_THREADS: usize = 1;

impl Probes {
    /// Loads every program into the kernel and attaches the syscall tracepoints.
    pub fn load() -> Result<Self> {
        ensure_tracefs()?;
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| {
            anyhow!(
                "loading the eBPF programs failed: {e}; tls-probe needs root (or CAP_BPF and CAP_PERFMON) and a kernel with BTF and uprobes"
            )
        })?;
        for name in HOT_UPROBES
            .iter()
            .chain(COLD_UPROBES)
            .map(|(name, _)| *name)
            .chain(["crypto_key_op"])
            .chain(ERROR_UPROBES.iter().map(|(name, _)| *name))
            .chain([ASYNC_PAUSE_UPROBE.0])
        {
            let prog: &mut UProbe = program(&mut ebpf, name)?;
            prog.load()
                .with_context(|| format!("loading eBPF program {name}"))?;
        }
        for name in TRACEPOINTS {
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            prog.load()
                .with_context(|| format!("loading eBPF program {name}"))?;
            prog.attach("syscalls", name)
                .with_context(|| format!("attaching to tracepoint syscalls:{name}"))?;
        }
        for name in SOCKIO_TRACEPOINTS {
            let prog: &mut TracePoint = program(&mut ebpf, name)?;
            prog.load()
                .with_context(|| format!("loading eBPF program {name}"))?;
        }
        // Thread exit (tls-probe-ebpf/src/lifecycle.rs): clears per-thread state, reports
        // the exit of a traced process at once.
        let prog: &mut TracePoint = program(&mut ebpf, "sched_process_exit")?;
        prog.load()
            .context("loading eBPF program sched_process_exit")?;
        prog.attach("sched", "sched_process_exit")
            .context("attaching to tracepoint sched:sched_process_exit")?;
        let mut probes = Self {
            ebpf,
            targets: HashMap::new(),
            detaching: Vec::new(),
            sockio: Vec::new(),
            sockio_detaching: None,
        };
        probes.set_sockio(true)?;
        Ok(probes)
    }

    /// Attaches or detaches the socket I/O tracepoints ([`SOCKIO_TRACEPOINTS`]). Detaching
    /// happens in the background; until it is done they keep firing, harmlessly.
    /// Returns whether they are as asked now: switching them on waits (returns false) while
    /// their previous links are still being closed.
    pub fn set_sockio(&mut self, on: bool) -> Result<bool> {
        if on && self.sockio.is_empty() {
            // The kernel refuses a program twice on one tracepoint (EEXIST): the old links
            // must be gone first (~70 ms each). Not blocking the agent's loop for that: the
            // caller asks again at its next step.
            if self
                .sockio_detaching
                .as_ref()
                .is_some_and(|h| !h.is_finished())
            {
                return Ok(false);
            }
            if let Some(h) = self.sockio_detaching.take() {
                let _ = h.join();
            }
            let started = std::time::Instant::now();
            for name in SOCKIO_TRACEPOINTS {
                let prog: &mut TracePoint = program(&mut self.ebpf, name)?;
                let id = prog
                    .attach("syscalls", name)
                    .with_context(|| format!("attaching to tracepoint syscalls:{name}"))?;
                self.sockio.push((name, id));
            }
            log::debug!("socket I/O tracepoints attached in {:?}", started.elapsed());
        } else if !on && !self.sockio.is_empty() {
            let links: Vec<TracePointLink> = std::mem::take(&mut self.sockio)
                .into_iter()
                .filter_map(|(name, id)| {
                    program::<TracePoint>(&mut self.ebpf, name)
                        .ok()?
                        .take_link(id)
                        .ok()
                })
                .collect();
            self.sockio_detaching = std::thread::Builder::new()
                .name("tls-probe-detach".to_owned())
                .spawn(move || drop(links))
                .ok();
        }
        Ok(true)
    }

    /// Whether the socket I/O tracepoints are attached.
    pub fn sockio_on(&self) -> bool {
        !self.sockio.is_empty()
    }

    /// Takes the ring buffer the programs write events to. Call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("the eBPF object has no EVENTS map"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Starts tracing `pid` through `lib`: adds it to the target filter and attaches the
    /// uprobes (the hot ones only when `hot`). Missing optional symbols are skipped.
    pub fn attach(&mut self, pid: u32, lib: TlsLibrary, hot: bool) -> Result<()> {
        if self.targets.contains_key(&pid) {
            return Ok(());
        }
        let mut targets: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("TARGETS")
                .ok_or_else(|| anyhow!("the eBPF object has no TARGETS map"))?,
        )?;
        targets
            .insert(pid, target_flag::TRACED, 0)
            .with_context(|| format!("adding pid {pid} to the target map"))?;
        let mut target = Target {
            lib,
            cold: Vec::new(),
            hot: Vec::new(),
            missing: Vec::new(),
        };
        let mut links = attach_uprobes(
            &mut self.ebpf,
            pid,
            &target.lib,
            COLD_UPROBES,
            &mut target.missing,
        )?;
        if let Some(crypto) = &target.lib.crypto {
            links.extend(attach_key_ops(&mut self.ebpf, pid, crypto)?);
            match attach_error_probe(&mut self.ebpf, pid, crypto) {
                Some(link) => links.push(link),
                None => target.missing.push("ERR_set_error"),
            }
            match attach_async_pause_probe(&mut self.ebpf, pid, crypto) {
                Some(link) => links.push(link),
                None => target.missing.push(ASYNC_PAUSE_UPROBE.1),
            }
        } else {
            target.missing.push("libcrypto key operations");
        }
        target.cold = links;
        if !target.lib.has("SSL_read") {
            bail!("{} has no SSL_read", target.lib.display_path);
        }
        self.targets.insert(pid, target);
        if hot {
            self.set_hot(pid, true)?;
        }
        Ok(())
    }

    /// Attaches or detaches the per-call uprobes of `pid`, without reloading anything, and
    /// tells the kernel side (`target_flag::HOT`): while they are off, non-empty epoll
    /// waits are aggregated. Detaching returns at once; the links are closed in the
    /// background (see [`Probes::release`]).
    pub fn set_hot(&mut self, pid: u32, on: bool) -> Result<()> {
        let Some(target) = self.targets.get_mut(&pid) else {
            bail!("pid {pid} is not attached")
        };
        if on && target.hot.is_empty() {
            let mut missing = Vec::new();
            // Returns first: a call entered while only its entry probe is attached would
            // leave state behind that its return never clears.
            let order: Vec<(&'static str, &'static str)> = HOT_UPROBES
                .iter()
                .filter(|(name, _)| name.ends_with("_exit"))
                .chain(
                    HOT_UPROBES
                        .iter()
                        .filter(|(name, _)| !name.ends_with("_exit")),
                )
                .copied()
                .collect();
            let started = std::time::Instant::now();
            target.hot = attach_uprobes(&mut self.ebpf, pid, &target.lib, &order, &mut missing)?;
            log::debug!(
                "per-call uprobes of pid {pid} attached in {:?}",
                started.elapsed()
            );
            for m in missing {
                if !target.missing.contains(&m) {
                    target.missing.push(m);
                }
            }
            self.set_flags(pid, target_flag::TRACED | target_flag::HOT);
        } else if !on {
            // The kernel side first: from now on the waits are aggregated again.
            self.set_flags(pid, target_flag::TRACED);
            let links: Vec<_> = self
                .targets
                .get_mut(&pid)
                .map(|t| t.hot.drain(..).collect())
                .unwrap_or_default();
            let links = take_links(&mut self.ebpf, links);
            self.release(links);
        }
        Ok(())
    }

    /// Updates `pid`'s flags in the target map, if it is there.
    fn set_flags(&mut self, pid: u32, flags: u32) {
        if let Some(map) = self.ebpf.map_mut("TARGETS")
            && let Ok(mut targets) = BpfHashMap::<_, u32, u32>::try_from(map)
            && targets.get(&pid, 0).is_ok()
        {
            let _ = targets.insert(pid, flags, 0);
        }
    }

    /// Closes `links` on a background thread: the kernel takes ~110 ms to remove each
    /// uprobe, so closing 14 on the agent's loop would stall it for 1.5 s at the end of
    /// every escalation window. [`Probes::wait_detached`] waits for them.
    fn release<L: Send + 'static>(&mut self, links: Vec<L>) {
        self.detaching.retain(|h| !h.is_finished());
        if links.is_empty() {
            return;
        }
        let per = links.len().div_ceil(DETACH_THREADS);
        let mut links = links;
        while !links.is_empty() {
            let batch: Vec<L> = links.drain(..per.min(links.len())).collect();
            match std::thread::Builder::new()
                .name("tls-probe-detach".to_owned())
                .spawn(move || drop(batch))
            {
                Ok(h) => self.detaching.push(h),
                // No thread: the links were dropped (closed) here with the closure.
                Err(e) => log::debug!("detaching on this thread: {e}"),
            }
        }
    }

    /// Whether links handed to the background are still being closed (their probes still
    /// trap, at the cost of a hit each, until they are).
    pub fn closing_links(&self) -> bool {
        self.detaching.iter().any(|h| !h.is_finished())
            || self
                .sockio_detaching
                .as_ref()
                .is_some_and(|h| !h.is_finished())
    }

    /// Waits until every link handed to the background has been closed.
    pub fn wait_detached(&mut self) {
        if let Some(h) = self.sockio_detaching.take() {
            let _ = h.join();
        }
        for h in self.detaching.drain(..) {
            let _ = h.join();
        }
    }

    /// Read/write syscalls of `pid` that another of its threads had made on the same fd
    /// just before, counted in the kernel while its per-call uprobes are off (0 if none).
    pub fn shared_fd_uses(&self, pid: u32) -> u64 {
        self.ebpf
            .map("SHARED_FD")
            .and_then(|m| BpfHashMap::<_, u32, u64>::try_from(m).ok())
            .and_then(|m| m.get(&pid, 0).ok())
            .unwrap_or(0)
    }

    /// True when the per-call uprobes of `pid` are attached.
    pub fn is_hot(&self, pid: u32) -> bool {
        self.targets.get(&pid).is_some_and(|t| !t.hot.is_empty())
    }

    /// Symbols skipped for `pid` because its library lacks them.
    pub fn missing_symbols(&self, pid: u32) -> &[&'static str] {
        self.targets.get(&pid).map_or(&[], |t| &t.missing)
    }

    /// Stops tracing `pid` (e.g. after it exited). Detach errors of a dead process are ignored.
    pub fn detach(&mut self, pid: u32) {
        self.silence(pid);
        let Some(mut target) = self.targets.remove(&pid) else {
            return;
        };
        let links = target.hot.drain(..).chain(target.cold.drain(..)).collect();
        let links = take_links(&mut self.ebpf, links);
        self.release(links);
    }

    /// Removes `pid` from the in-kernel target filter: every program stops writing records
    /// for it at once, while its uprobes stay attached. Detaching ~20 uprobes takes the
    /// kernel seconds (about 100 ms each here); silencing first lets the last records be
    /// read and the summary be written before that, instead of a busy target overflowing
    /// the ring buffer meanwhile.
    pub fn silence(&mut self, pid: u32) {
        if let Some(map) = self.ebpf.map_mut("TARGETS")
            && let Ok(mut targets) = BpfHashMap::<_, u32, u32>::try_from(map)
        {
            let _ = targets.remove(&pid);
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.targets.keys().copied().collect()
    }

    /// Reads the kernel counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or_else(|| anyhow!("the eBPF object has no COUNTERS map"))?;
        let arr: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        let sum = |i: u32| -> Result<u64> { Ok(arr.get(&i, 0)?.iter().sum()) };
        let mut lost_by_kind = [0u64; counter::LOST_KINDS as usize];
        for (kind, slot) in lost_by_kind.iter_mut().enumerate() {
            *slot = sum(counter::LOST_RINGBUF + kind as u32)?;
        }
        Ok(Counters {
            lost_ringbuf: lost_by_kind.iter().sum(),
            lost_by_kind,
            lost_inflight: sum(counter::LOST_INFLIGHT)?,
            uprobe_hits: sum(counter::UPROBE_HITS)?,
            tracepoint_hits: sum(counter::TRACEPOINT_HITS)?,
            sockio_calls: sum(counter::SOCKIO_CALLS)?,
        })
    }
}

/// Syscall tracepoints need tracefs; mount it when the machine has not (as root we can).
fn ensure_tracefs() -> Result<()> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    let events = std::path::Path::new(TRACEFS).join("events/syscalls");
    if events.exists() || std::path::Path::new("/sys/kernel/debug/tracing/events/syscalls").exists()
    {
        return Ok(());
    }
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        anyhow!(
            "tracefs is not mounted and mounting it on {TRACEFS} failed ({e}); mount it with `sudo mount -t tracefs nodev {TRACEFS}` and run tls-probe as root"
        )
    })?;
    if !events.exists() {
        bail!(
            "this kernel has no syscall tracepoints ({} is missing); tls-probe needs CONFIG_FTRACE_SYSCALLS",
            events.display()
        );
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
    Ok(prog.try_into()?)
}

/// Takes the owned links out of their programs, so that they can be closed elsewhere.
fn take_links(ebpf: &mut Ebpf, ids: Vec<(&'static str, UProbeLinkId)>) -> Vec<UProbeLink> {
    ids.into_iter()
        .filter_map(|(name, id)| program::<UProbe>(ebpf, name).ok()?.take_link(id).ok())
        .collect()
}

/// The first of [`ERROR_UPROBES`] that attaches to `crypto` (aya resolves the symbol).
fn attach_error_probe(
    ebpf: &mut Ebpf,
    pid: u32,
    crypto: &super::CryptoLibrary,
) -> Option<(&'static str, UProbeLinkId)> {
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid)?);
    for &(name, symbol) in ERROR_UPROBES {
        let Ok(prog) = program::<UProbe>(ebpf, name) else {
            continue;
        };
        match prog.attach(symbol, &crypto.path, scope) {
            Ok(link) => return Some((name, link)),
            Err(e) => log::debug!("{symbol} in {}: {e}", crypto.display_path),
        }
    }
    None
}

/// libcrypto's `ASYNC_pause_job` (OpenSSL 1.1 and 3 alike): always on, like
/// [`ERROR_UPROBES`], because it fires only when an async job pauses (once per
/// SSL_ERROR_WANT_ASYNC answer), never in a program that does not use async mode.
pub const ASYNC_PAUSE_UPROBE: (&str, &str) = ("async_pause_job", "ASYNC_pause_job");

/// [`ASYNC_PAUSE_UPROBE`] on `crypto` (aya resolves the symbol), if it has it.
fn attach_async_pause_probe(
    ebpf: &mut Ebpf,
    pid: u32,
    crypto: &super::CryptoLibrary,
) -> Option<(&'static str, UProbeLinkId)> {
    let scope = UProbeScope::OneProcess(NonZeroU32::new(pid)?);
    let (name, symbol) = ASYNC_PAUSE_UPROBE;
    let prog = program::<UProbe>(ebpf, name).ok()?;
    match prog.attach(symbol, &crypto.path, scope) {
        Ok(link) => Some((name, link)),
        Err(e) => {
            log::debug!("{symbol} in {}: {e}", crypto.display_path);
            None
        }
    }
}

/// One program, attached to each libcrypto key operation the library has.
fn attach_key_ops(
    ebpf: &mut Ebpf,
    pid: u32,
    crypto: &super::CryptoLibrary,
) -> Result<Vec<(&'static str, UProbeLinkId)>> {
    const PROGRAM: &str = "crypto_key_op";
    let scope = UProbeScope::OneProcess(
        NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be a target"))?,
    );
    let mut links = Vec::new();
    for symbol in super::discover::KEY_OPS {
        if !crypto.symbols.contains(symbol) {
            continue;
        }
        let prog: &mut UProbe = program(ebpf, PROGRAM)?;
        let link = prog.attach(symbol, &crypto.path, scope).with_context(|| {
            format!(
                "attaching {PROGRAM} to {symbol} in {} for pid {pid}",
                crypto.display_path
            )
        })?;
        links.push((PROGRAM, link));
    }
    Ok(links)
}

fn attach_uprobes(
    ebpf: &mut Ebpf,
    pid: u32,
    lib: &TlsLibrary,
    set: &[(&'static str, &'static str)],
    missing: &mut Vec<&'static str>,
) -> Result<Vec<(&'static str, UProbeLinkId)>> {
    let scope = UProbeScope::OneProcess(
        NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be a target"))?,
    );
    let mut links = Vec::new();
    for &(name, symbol) in set {
        if !lib.has(symbol) {
            if !missing.contains(&symbol) {
                missing.push(symbol);
            }
            continue;
        }
        let prog: &mut UProbe = program(ebpf, name)?;
        let link = prog.attach(symbol, &lib.path, scope).with_context(|| {
            format!(
                "attaching {name} to {symbol} in {} for pid {pid}",
                lib.display_path
            )
        })?;
        links.push((name, link));
    }
    Ok(links)
}
