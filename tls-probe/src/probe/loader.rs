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
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{
        TracePoint, UProbe,
        trace_point::{TracePointLink, TracePointLinkId},
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeLinkId, UProbeScope},
    },
    sys::{UProbeMultiFeature, is_uprobe_multi_supported},
};
use tls_probe_common::{cookie, counter, op, program, target_flag};

use super::{
    TlsLibrary, embedded,
    inventory::{self, Need},
    placement::Placement,
};

/// The embedded eBPF object, built by build.rs.
pub(super) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tls-probe"));

/// A uprobe program and the functions of one library it is attached to, each with the
/// attach cookie that tells the program which function a hit is in. One set is one link:
/// a uprobe_multi link where the kernel has them (one batched unregister for all its
/// points), else one perf-event link per function that aya manages as one.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSet {
    /// The program's name in the `uprobe.multi` section; the plain twin has
    /// [`program::SINGLE_SUFFIX`] appended.
    pub program: &'static str,
    /// (symbol, cookie).
    pub points: &'static [(&'static str, u64)],
}

/// The per-call libssl functions, attached only while a process is escalated (or always,
/// in full mode): entries, then returns.
const HOT_POINTS: &[(&str, u64)] = &[
    ("SSL_read", op::SSL_READ as u64),
    ("SSL_read_ex", op::SSL_READ_EX as u64),
    ("SSL_write", op::SSL_WRITE as u64),
    ("SSL_write_ex", op::SSL_WRITE_EX as u64),
    ("SSL_peek", op::SSL_PEEK as u64),
    ("SSL_peek_ex", op::SSL_PEEK_EX as u64),
    ("SSL_get_error", cookie::SSL_GET_ERROR),
];
/// Returns before entries: a call entered while only its entry probe is attached would leave
/// state behind that its return never clears.
pub const HOT_SETS: [ProbeSet; 2] = [
    ProbeSet {
        program: program::SSL_HOT_EXIT,
        points: HOT_POINTS,
    },
    ProbeSet {
        program: program::SSL_HOT_ENTER,
        points: HOT_POINTS,
    },
];

/// The libssl functions called about once per connection: always on. The state machine's
/// entry points are for OpenSSL linked into the program, as in node, which exports them
/// and whose handshakes run inside SSL_read: a few hits per handshake (and one per
/// post-handshake message, such as a TLS 1.3 session ticket, that SSL_read hands it).
/// A libssl shared object hides them (3.x) or is driven through SSL_do_handshake and
/// friends by its programs (1.1 exports them): they are not attached there, nor reported
/// missing.
const HANDSHAKE_POINTS: &[(&str, u64)] = &[
    ("SSL_do_handshake", op::SSL_DO_HANDSHAKE as u64),
    ("SSL_accept", op::SSL_ACCEPT as u64),
    ("SSL_connect", op::SSL_CONNECT as u64),
    ("ossl_statem_accept", op::OSSL_STATEM_ACCEPT as u64),
    ("ossl_statem_connect", op::OSSL_STATEM_CONNECT as u64),
];

/// Points attached where the library has them, and not reported missing where it has not.
const OPTIONAL: [&str; 2] = ["ossl_statem_accept", "ossl_statem_connect"];
pub const COLD_SETS: [ProbeSet; 2] = [
    ProbeSet {
        program: program::SSL_COLD_EXIT,
        points: HANDSHAKE_POINTS,
    },
    ProbeSet {
        program: program::SSL_COLD_ENTER,
        points: &[
            ("SSL_do_handshake", op::SSL_DO_HANDSHAKE as u64),
            ("SSL_accept", op::SSL_ACCEPT as u64),
            ("SSL_connect", op::SSL_CONNECT as u64),
            ("ossl_statem_accept", op::OSSL_STATEM_ACCEPT as u64),
            ("ossl_statem_connect", op::OSSL_STATEM_CONNECT as u64),
            ("SSL_free", cookie::SSL_FREE),
            ("SSL_set_fd", cookie::SSL_SET_FD),
        ],
    },
];

/// libcrypto, always on: the key operations (a full handshake signs or decrypts; a resumed
/// one does not), the error-raising function of OpenSSL 3 (every error, including libssl's
/// `SSLfatal` such as SSL_R_BAD_WRITE_RETRY, goes through `ERR_vset_error`) or of 1.1
/// (`ERR_put_error`: only the first of the two present is attached), and `ASYNC_pause_job`
/// (once per SSL_ERROR_WANT_ASYNC answer, never outside async mode).
pub const CRYPTO_SET: ProbeSet = ProbeSet {
    program: program::CRYPTO_ENTER,
    points: &[
        ("EVP_DigestSign", cookie::KEY_OP),
        ("EVP_DigestVerify", cookie::KEY_OP),
        ("EVP_PKEY_decrypt", cookie::KEY_OP),
        ("ERR_vset_error", cookie::ERR_VSET_ERROR),
        ("ERR_put_error", cookie::ERR_PUT_ERROR),
        ("ASYNC_pause_job", cookie::ASYNC_PAUSE_JOB),
    ],
};

/// How uprobe links are made on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// One uprobe_multi link per [`ProbeSet`] (kernel 6.6+ with the process-wide pid
    /// filter fix): attached in one call, unregistered in one batch.
    Multi,
    /// One perf-event link per function (older kernels): each unregisters on its own,
    /// ~100 ms apiece here.
    PerFunction,
}

impl LinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Multi => "uprobe_multi",
            Self::PerFunction => "per_function",
        }
    }

    /// The name of `set`'s program in the object for this kind of link.
    fn program(self, set: &ProbeSet) -> String {
        match self {
            Self::Multi => set.program.to_owned(),
            Self::PerFunction => format!("{}{}", set.program, program::SINGLE_SUFFIX),
        }
    }

    /// Every program this kind of link loads.
    pub(super) fn programs(self) -> Vec<String> {
        HOT_SETS
            .iter()
            .chain(&COLD_SETS)
            .chain([&CRYPTO_SET])
            .map(|set| self.program(set))
            .collect()
    }
}

/// The points of `set` that `has` says the library defines, as aya attach points; for
/// libcrypto's error functions only the first present. A function that `placement` moved
/// to its callee is attached there, once for all the functions sharing it. Returns the
/// symbols skipped too.
pub fn points_for(
    set: &ProbeSet,
    has: impl Fn(&str) -> bool,
    placement: &Placement,
) -> (Vec<UProbeAttachPoint<'static>>, Vec<&'static str>) {
    let mut points = Vec::new();
    let mut missing = Vec::new();
    let mut error_fn = false;
    let mut sites = Vec::new();
    for &(symbol, cookie) in set.points {
        let is_error_fn = cookie == cookie::ERR_VSET_ERROR || cookie == cookie::ERR_PUT_ERROR;
        if !has(symbol) || (is_error_fn && error_fn) {
            if !is_error_fn && !OPTIONAL.contains(&symbol) {
                missing.push(symbol);
            }
            continue;
        }
        error_fn |= is_error_fn;
        if let Some(site) = placement.site_of(symbol) {
            if !sites.contains(&site.file_offset) {
                sites.push(site.file_offset);
                points.push(UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(site.file_offset),
                    cookie: Some(site.cookie),
                });
            }
            continue;
        }
        let location = match placement.entry_of(symbol) {
            Some(offset) => UProbeAttachLocation::AbsoluteOffset(offset),
            None => UProbeAttachLocation::Symbol(symbol),
        };
        points.push(UProbeAttachPoint {
            location,
            cookie: Some(cookie),
        });
    }
    (points, missing)
}

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
    cold: Vec<(String, UProbeLinkId)>,
    hot: Vec<(String, UProbeLinkId)>,
    /// Symbols the library lacks, skipped.
    missing: Vec<&'static str>,
}

pub struct Probes {
    ebpf: Ebpf,
    links: LinkKind,
    targets: HashMap<u32, Target>,
    /// Links being detached in the background (see [`Probes::release`]).
    detaching: Vec<JoinHandle<()>>,
    /// The socket I/O tracepoints while attached.
    sockio: Vec<(&'static str, TracePointLinkId)>,
    /// Their links being closed in the background, after they were switched off.
    sockio_detaching: Option<JoinHandle<()>>,
    /// How many times they were attached: the kernel's `SOCKIO_GEN` while they are.
    sockio_gen: u32,
    /// Optional tracepoints this kernel lacks (see [`inventory`]).
    missing_tracepoints: Vec<&'static str>,
}

/// Threads that close one batch of links. A link's unregister takes ~100 ms here, most of
/// it waiting for the kernel's synchronisation after the probe points are already gone; a
/// link per thread lets every link's points go at once instead of one link after another.
const DETACH_THREADS: usize = 4;

impl Probes {
    /// Loads every program into the kernel and attaches the syscall tracepoints; the socket
    /// I/O ones only with `sockio` (full mode). Outside full mode the agent attaches them when
    /// it wants them: attached here and detached at the first decision, they would keep
    /// trapping every read and write of the targets for the second the kernel takes to
    /// unregister them, right after attach.
    pub fn load(sockio: bool) -> Result<Self> {
        let uname = nix::sys::utsname::uname().context("uname")?;
        inventory::check_kernel(&uname.release().to_string_lossy())?;
        ensure_tracefs()?;
        embedded::check_wire_version(EBPF_OBJECT)?;
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| {
            anyhow!(
                "loading the eBPF programs failed: {e}; tls-probe needs root (or CAP_BPF and CAP_PERFMON) and a kernel with BTF and uprobes"
            )
        })?;
        // TLS_PROBE_UPROBE_LINKS=per_function forces the fallback (tests, odd kernels).
        let forced = std::env::var("TLS_PROBE_UPROBE_LINKS").is_ok_and(|v| v == "per_function");
        let links = match is_uprobe_multi_supported(UProbeMultiFeature::ProcessScopedPidFilter) {
            _ if forced => LinkKind::PerFunction,
            Ok(true) => LinkKind::Multi,
            Ok(false) => LinkKind::PerFunction,
            Err(e) => {
                log::debug!("probing for uprobe_multi failed ({e}): one link per function");
                LinkKind::PerFunction
            }
        };
        for name in links.programs() {
            let prog: &mut UProbe = program(&mut ebpf, &name)?;
            prog.load()
                .with_context(|| format!("loading eBPF program {name}"))?;
        }
        let mut missing_tracepoints = Vec::new();
        for tp in inventory::ALWAYS {
            let prog: &mut TracePoint = program(&mut ebpf, tp.name)?;
            prog.load()
                .with_context(|| format!("loading eBPF program {}", tp.name))?;
            match prog.attach(tp.category, tp.name) {
                Ok(_) => {}
                Err(e) => match tp.need {
                    Need::Optional(lost) if !inventory::exists(tp) => {
                        log::warn!(
                            "this kernel has no tracepoint {}:{}: not seen: {lost}",
                            tp.category,
                            tp.name
                        );
                        missing_tracepoints.push(tp.name);
                    }
                    _ => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "attaching to tracepoint {}:{} (needed; tls-probe supports Linux {} and newer)",
                            tp.category,
                            tp.name,
                            inventory::MIN_KERNEL
                        )));
                    }
                },
            }
        }
        for tp in inventory::SOCKIO {
            let prog: &mut TracePoint = program(&mut ebpf, tp.name)?;
            prog.load()
                .with_context(|| format!("loading eBPF program {}", tp.name))?;
        }
        let mut probes = Self {
            ebpf,
            links,
            targets: HashMap::new(),
            detaching: Vec::new(),
            sockio: Vec::new(),
            sockio_detaching: None,
            sockio_gen: 0,
            missing_tracepoints,
        };
        probes.set_sockio(sockio)?;
        Ok(probes)
    }

    /// Attaches or detaches the socket I/O tracepoints ([`inventory::SOCKIO`]). Detaching
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
            for tp in inventory::SOCKIO {
                let prog: &mut TracePoint = program(&mut self.ebpf, tp.name)?;
                let id = prog.attach(tp.category, tp.name).with_context(|| {
                    format!("attaching to tracepoint {}:{}", tp.category, tp.name)
                })?;
                self.sockio.push((tp.name, id));
            }
            // Every enter has its exit from now on: syscalls entered from here are in
            // flight until their exit is seen.
            self.sockio_gen = self.sockio_gen.wrapping_add(1).max(1);
            self.set_sockio_gen(self.sockio_gen);
            log::debug!("socket I/O tracepoints attached in {:?}", started.elapsed());
        } else if !on && !self.sockio.is_empty() {
            // Before any link goes: an exit missed from here on must not leave a syscall
            // looking in flight.
            self.set_sockio_gen(0);
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

    /// Writes the kernel's `SOCKIO_GEN` (see tls-probe-ebpf/src/maps.rs).
    fn set_sockio_gen(&mut self, generation: u32) {
        let set = self
            .ebpf
            .map_mut("SOCKIO_GEN")
            .and_then(|m| Array::<_, u32>::try_from(m).ok())
            .map(|mut a| a.set(0, &generation, 0));
        if !matches!(set, Some(Ok(()))) {
            log::warn!("setting SOCKIO_GEN to {generation} failed: overlaps on one fd go unseen");
        }
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
            .insert(&pid, &target_flag::TRACED, 0)
            .with_context(|| format!("adding pid {pid} to the target map"))?;
        let mut target = Target {
            lib,
            cold: Vec::new(),
            hot: Vec::new(),
            missing: Vec::new(),
        };
        if !target.lib.has("SSL_read") {
            bail!("{} has no SSL_read", target.lib.display_path);
        }
        let started = std::time::Instant::now();
        for set in &COLD_SETS {
            target
                .cold
                .extend(self.attach_set(pid, set, &target.lib, &mut target.missing)?);
        }
        match &target.lib.crypto {
            Some(crypto) => {
                let (points, missing) = points_for(
                    &CRYPTO_SET,
                    |s| crypto.symbols.contains(s),
                    &Placement::default(),
                );
                if !points.iter().any(|p| {
                    p.cookie == Some(cookie::ERR_VSET_ERROR)
                        || p.cookie == Some(cookie::ERR_PUT_ERROR)
                }) {
                    target.missing.push("ERR_set_error");
                }
                target.missing.extend(
                    missing
                        .into_iter()
                        .filter(|s| !super::discover::KEY_OPS.contains(s)),
                );
                let name = self.links.program(&CRYPTO_SET);
                let prog: &mut UProbe = program(&mut self.ebpf, &name)?;
                let id = prog
                    .attach(points, &crypto.path, scope(pid)?)
                    .with_context(|| {
                        format!(
                            "attaching {name} to libcrypto {} for pid {pid}",
                            crypto.display_path
                        )
                    })?;
                target.cold.push((name, id));
            }
            None => target.missing.push("libcrypto key operations"),
        }
        log::debug!(
            "always-on uprobes of pid {pid} attached in {:?} ({})",
            started.elapsed(),
            self.links.as_str()
        );
        self.targets.insert(pid, target);
        if hot {
            self.set_hot(pid, true)?;
        }
        Ok(())
    }

    /// How this kernel's uprobe links are made (in the `start` record).
    /// Optional tracepoints this kernel lacks, skipped at load.
    pub fn missing_tracepoints(&self) -> &[&'static str] {
        &self.missing_tracepoints
    }

    pub fn link_kind(&self) -> LinkKind {
        self.links
    }

    /// Attaches `set` to the functions of `lib` it has, as one link; records the ones it
    /// lacks in `missing`. None when the library has none of them.
    fn attach_set(
        &mut self,
        pid: u32,
        set: &ProbeSet,
        lib: &TlsLibrary,
        missing: &mut Vec<&'static str>,
    ) -> Result<Option<(String, UProbeLinkId)>> {
        let linked_in = lib.is_linked_in();
        let (points, skipped) = points_for(
            set,
            |s| lib.has(s) && (linked_in || !OPTIONAL.contains(&s)),
            &lib.placement,
        );
        for s in skipped {
            if !missing.contains(&s) {
                missing.push(s);
            }
        }
        if points.is_empty() {
            return Ok(None);
        }
        let name = self.links.program(set);
        let prog: &mut UProbe = program(&mut self.ebpf, &name)?;
        let id = prog
            .attach(points, &lib.path, scope(pid)?)
            .with_context(|| format!("attaching {name} to {} for pid {pid}", lib.display_path))?;
        Ok(Some((name, id)))
    }

    /// Attaches or detaches the per-call uprobes of `pid`, without reloading anything, and
    /// tells the kernel side (`target_flag::HOT`): while they are off, non-empty epoll
    /// waits are aggregated. Detaching returns at once; the links (two: entries and
    /// returns) are closed in the background, each on its own thread (see
    /// [`Probes::release`]).
    pub fn set_hot(&mut self, pid: u32, on: bool) -> Result<()> {
        let Some(target) = self.targets.get(&pid) else {
            bail!("pid {pid} is not attached")
        };
        if on && target.hot.is_empty() {
            let lib = target.lib.clone();
            let mut missing = Vec::new();
            let started = std::time::Instant::now();
            let mut hot = Vec::new();
            for set in &HOT_SETS {
                hot.extend(self.attach_set(pid, set, &lib, &mut missing)?);
            }
            log::debug!(
                "per-call uprobes of pid {pid} attached in {:?}",
                started.elapsed()
            );
            if let Some(target) = self.targets.get_mut(&pid) {
                target.hot = hot;
                for m in missing {
                    if !target.missing.contains(&m) {
                        target.missing.push(m);
                    }
                }
            }
            self.set_flags(pid, target_flag::TRACED | target_flag::HOT);
        } else if !on {
            // The kernel side first: from now on the waits are aggregated again.
            self.set_flags(pid, target_flag::TRACED);
            let links: Vec<_> = self
                .targets
                .get_mut(&pid)
                .map(|t| std::mem::take(&mut t.hot))
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
            let _ = targets.insert(&pid, &flags, 0);
        }
    }

    /// Closes `links` on background threads, up to [`DETACH_THREADS`] at once: the kernel
    /// takes ~100 ms to unregister a link, which would stall the agent's loop at the end
    /// of every escalation window. [`Probes::wait_detached`] waits for them.
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

    /// Waits until every uprobe link handed to the background has been closed: the probes
    /// a target pays a trap for. Socket I/O tracepoint links still closing are not waited
    /// for: they cost a filtered hit each, and at exit the process that holds the last BPF
    /// fds closes them (crate::agent's hand-off).
    pub fn wait_detached(&mut self) {
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

    /// Puts an attached `pid` back in the target filter after [`Probes::silence`], with its
    /// per-call flag as it is.
    pub fn unsilence(&mut self, pid: u32) {
        let Some(target) = self.targets.get(&pid) else {
            return;
        };
        let flags = if target.hot.is_empty() {
            target_flag::TRACED
        } else {
            target_flag::TRACED | target_flag::HOT
        };
        if let Some(map) = self.ebpf.map_mut("TARGETS")
            && let Ok(mut targets) = BpfHashMap::<_, u32, u32>::try_from(map)
        {
            let _ = targets.insert(&pid, &flags, 0);
        }
    }

    /// Asks the kernel for `budget` stacks of thread `tid` at its next SSL calls (see
    /// tls-probe-ebpf/src/stack.rs), or, with 0, for none.
    pub fn arm_stacks(&mut self, tid: u32, budget: u32) {
        if let Some(map) = self.ebpf.map_mut("STACK_ARM")
            && let Ok(mut arm) = BpfHashMap::<_, u32, tls_probe_common::StackArm>::try_from(map)
        {
            let res = if budget == 0 {
                arm.remove(&tid)
            } else {
                let v = tls_probe_common::StackArm {
                    budget,
                    ..Default::default()
                };
                arm.insert(&tid, &v, 0)
            };
            if let Err(e) = res {
                log::debug!("STACK_ARM for tid {tid}: {e}");
            }
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
fn take_links(ebpf: &mut Ebpf, ids: Vec<(String, UProbeLinkId)>) -> Vec<UProbeLink> {
    ids.into_iter()
        .filter_map(|(name, id)| program::<UProbe>(ebpf, &name).ok()?.take_link(id).ok())
        .collect()
}

/// The one-process scope of a target's uprobes.
fn scope(pid: u32) -> Result<UProbeScope> {
    Ok(UProbeScope::OneProcess(
        NonZeroU32::new(pid).ok_or_else(|| anyhow!("pid 0 cannot be a target"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::placement::CalleeSite;

    fn locations(points: &[UProbeAttachPoint<'static>]) -> Vec<(String, u64)> {
        points
            .iter()
            .map(|p| {
                let at = match p.location {
                    UProbeAttachLocation::Symbol(s) => s.to_owned(),
                    UProbeAttachLocation::AbsoluteOffset(o) => format!("{o:#x}"),
                    UProbeAttachLocation::SymbolOffset(s, o) => format!("{s}+{o:#x}"),
                };
                (at, p.cookie.unwrap_or_default())
            })
            .collect()
    }

    #[test]
    fn every_function_the_library_has_gets_its_cookie_and_the_others_are_missing() {
        let (points, missing) = points_for(
            &HOT_SETS[1],
            |s| !s.starts_with("SSL_peek"),
            &Placement::default(),
        );
        assert_eq!(
            locations(&points),
            [
                ("SSL_read".into(), op::SSL_READ as u64),
                ("SSL_read_ex".into(), op::SSL_READ_EX as u64),
                ("SSL_write".into(), op::SSL_WRITE as u64),
                ("SSL_write_ex".into(), op::SSL_WRITE_EX as u64),
                ("SSL_get_error".into(), cookie::SSL_GET_ERROR),
            ]
        );
        assert_eq!(missing, ["SSL_peek", "SSL_peek_ex"]);
    }

    #[test]
    fn functions_sharing_a_callee_site_are_one_point_there() {
        let read = CalleeSite {
            file_offset: 0x35290,
            address: 0x35290,
            functions: vec!["SSL_read", "SSL_read_ex"],
            cookie: cookie::callee(&[(op::SSL_READ, 0x35453), (op::SSL_READ_EX, 0x354c9)]),
        };
        let placement = Placement {
            sites: vec![read.clone()],
            ..Placement::default()
        };
        let (points, missing) = points_for(&HOT_SETS[0], |_| true, &placement);
        let at = locations(&points);
        assert_eq!(at[0], ("0x35290".into(), read.cookie));
        assert_eq!(at[1].0, "SSL_write");
        assert_eq!(at.len(), 6, "{at:?}");
        assert!(missing.is_empty());
    }

    #[test]
    fn only_the_first_error_function_of_libcrypto_is_attached() {
        let (points, missing) = points_for(&CRYPTO_SET, |_| true, &Placement::default());
        let at = locations(&points);
        assert!(at.contains(&("ERR_vset_error".into(), cookie::ERR_VSET_ERROR)));
        assert!(!at.iter().any(|(s, _)| s == "ERR_put_error"));
        assert!(missing.is_empty());
        // OpenSSL 1.1: ERR_put_error only.
        let (points, _) = points_for(
            &CRYPTO_SET,
            |s| s != "ERR_vset_error",
            &Placement::default(),
        );
        assert!(locations(&points).contains(&("ERR_put_error".into(), cookie::ERR_PUT_ERROR)));
    }
}
