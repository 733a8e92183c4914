//! The probing agents under comparison: tls-probe in each mode, and bpftrace with the
//! per-call probes a user would write by hand. Each is started, waited on until it has
//! attached, sampled for its own CPU and memory, and stopped with SIGINT.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::Value;

use super::proc::{self, Guard};
use crate::sh::{self, cmd};

/// How long attaching may take: loading and verifying the eBPF programs is slow on a
/// loaded 2-core machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A probing agent attached to one process.
pub struct Agent {
    kind: Kind,
    guard: Guard,
    stdout: PathBuf,
    stderr: PathBuf,
    start: Option<Sample>,
}

enum Kind {
    /// Writes NDJSON to this file.
    TlsProbe {
        ndjson: PathBuf,
        /// Snapshot lines written before the measurement started.
        snapshots_before: usize,
    },
    Bpftrace,
}

/// What the agent counted, from its own output at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counted {
    /// tls-probe: `summary.data.events`; bpftrace: the sum of its counters.
    pub events: u64,
    /// tls-probe: `summary.data.lost` as written; bpftrace: null (it counts in maps).
    pub lost: Option<Value>,
    /// The sum of `lost`.
    pub lost_total: Option<u64>,
    /// tls-probe: `uprobe_hits` and `tracepoint_hits`; bpftrace: per probe.
    pub hits: BTreeMap<String, u64>,
    pub stop_reason: Option<String>,
    /// tls-probe: the median over the measurement of its own estimate of the probes' cost
    /// (`probes.estimated_cost_pct` in each snapshot: hits counted in the kernel times the
    /// cost of a hit, as a share of the target's CPU time). Free of the machine's noise.
    pub estimated_cost_pct: Option<f64>,
}

/// The agent's own cost over the measured load.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cost {
    /// User plus system CPU time over the load, as a percentage of one core.
    pub cpu_pct: f64,
    pub cpu_s: f64,
    /// VmHWM: the peak resident set at the end of the load.
    pub max_rss_kib: Option<u64>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    ticks: u64,
    hwm_kib: Option<u64>,
}

impl Agent {
    /// `tls-probe attach --pid PID --mode MODE -o FILE`, ready once FILE has its `start`
    /// line.
    pub fn tls_probe(binary: &Path, mode: &str, pid: u32, dir: &Path, tag: &str) -> Result<Self> {
        let ndjson = dir.join(format!("{tag}.ndjson"));
        let mut command = cmd(binary);
        command
            .args(["attach", "--pid", &pid.to_string(), "--mode", mode, "-o"])
            .arg(&ndjson);
        Self::steady(command, mode, ndjson, dir, tag)
    }

    /// `tls-probe watch --include-comm nginx --include-comm openssl --descendants-of XTASK
    /// -o FILE` (default mode): the bench's own nginx and idle processes, not those of
    /// whatever else runs on the machine; measured in its steady state as
    /// [`Agent::tls_probe`].
    pub fn tls_probe_watch(binary: &Path, dir: &Path, tag: &str) -> Result<Self> {
        let ndjson = dir.join(format!("{tag}.ndjson"));
        let mut command = cmd(binary);
        command
            .args([
                "watch",
                "--include-comm",
                "nginx",
                "--include-comm",
                "openssl",
            ])
            .arg("--descendants-of")
            .arg(std::process::id().to_string())
            .arg("-o")
            .arg(&ndjson);
        Self::steady(command, "auto", ndjson, dir, tag)
    }

    fn steady(
        command: std::process::Command,
        mode: &str,
        ndjson: PathBuf,
        dir: &Path,
        tag: &str,
    ) -> Result<Self> {
        let mut agent = Self::spawn(
            command,
            Kind::TlsProbe {
                ndjson: ndjson.clone(),
                snapshots_before: 0,
            },
            dir,
            tag,
        )?;
        let guard = &mut agent.guard;
        proc::wait_for(
            "tls-probe to attach (a `start` line in its output)",
            ATTACH_TIMEOUT,
            || Ok(guard.exited()?.is_none()),
            || {
                let text = fs::read_to_string(&ndjson).ok()?;
                let (first, _) = text.split_once('\n')?;
                first.contains(r#""type":"start""#).then_some(())
            },
        )
        .with_context(|| agent.failure("tls-probe attach"))?;
        // The steady state is measured, not attach's transients: a mode may start with the
        // socket I/O tracepoints on (full mode, or a grace when the target was quiet at
        // attach), and auto may open a window on a signal. Start from the third snapshot (2 s in) that
        // shows the per-call probes off and no link still being closed in the background
        // (until then they still trap).
        let guard = &mut agent.guard;
        proc::wait_for(
            "tls-probe's attach transients to end (a third snapshot with per_call and \
             closing_links false)",
            ATTACH_TIMEOUT,
            || Ok(guard.exited()?.is_none()),
            || {
                let text = fs::read_to_string(&ndjson).ok()?;
                let snapshots: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains(r#""type":"snapshot""#))
                    .collect();
                let last = snapshots.last()?;
                (snapshots.len() >= 3
                    && (mode != "auto"
                        || (last.contains(r#""per_call":false"#)
                            && !last.contains(r#""per_call":true"#)))
                    && last.contains(r#""closing_links":false"#))
                .then_some(())
            },
        )
        .with_context(|| agent.failure(&format!("tls-probe attach --mode {mode}")))?;
        let written = snapshot_lines(&ndjson).len();
        if let Kind::TlsProbe {
            snapshots_before, ..
        } = &mut agent.kind
        {
            *snapshots_before = written;
        }
        agent.start = agent.sample();
        Ok(agent)
    }

    /// `tls-probe attach --pid PID -o FILE --duration SECS` in the default mode, measured
    /// from the moment it is started: nothing is waited for but the process itself, so
    /// attach, its first window and the links closing after it are all in the measurement.
    pub fn tls_probe_from_attach(
        binary: &Path,
        pid: u32,
        seconds: f64,
        dir: &Path,
        tag: &str,
    ) -> Result<Self> {
        let ndjson = dir.join(format!("{tag}.ndjson"));
        let mut command = cmd(binary);
        command
            .args(["attach", "--pid", &pid.to_string(), "--duration"])
            .arg(format!("{seconds:.1}"))
            .arg("-o")
            .arg(&ndjson);
        let mut agent = Self::spawn(
            command,
            Kind::TlsProbe {
                ndjson,
                snapshots_before: 0,
            },
            dir,
            tag,
        )?;
        agent.start = agent.sample();
        Ok(agent)
    }

    /// bpftrace with the probes of tls-probe's full mode (uprobes and uretprobes on the
    /// target's libssl calls, uprobes on libcrypto's key operations and errors, the
    /// syscall tracepoints), counting into a map. Ready after its
    /// "Attaching N probes..." line and, where bpftrace supports it, its notice that every
    /// probe is attached.
    pub fn bpftrace(binary: &Path, pid: u32, dir: &Path, tag: &str) -> Result<Self> {
        let libssl = library_of(pid, "libssl.so")?;
        let libcrypto = library_of(pid, "libcrypto.so")?;
        let script = dir.join(format!("{tag}.bt"));
        fs::write(&script, bpftrace_script(&libssl, &libcrypto, pid))?;
        let mut command = cmd(binary);
        command
            .env("__BPFTRACE_NOTIFY_PROBES_ATTACHED", "1")
            .args(["-B", "none", "-p", &pid.to_string()])
            .arg(&script);
        let mut agent = Self::spawn(command, Kind::Bpftrace, dir, tag)?;
        let (stdout, stderr) = (agent.stdout.clone(), agent.stderr.clone());
        let guard = &mut agent.guard;
        proc::wait_for(
            "bpftrace's \"Attaching N probes...\" line",
            ATTACH_TIMEOUT,
            || Ok(guard.exited()?.is_none()),
            || contains(&stdout, "Attaching ").then_some(()),
        )
        .with_context(|| agent.failure("bpftrace"))?;
        // bpftrace prints "Attaching" before it attaches; this (test-only) notice comes after.
        // Without it (another version) the line above is all there is to go by.
        let guard = &mut agent.guard;
        let notified = proc::wait_for(
            "bpftrace's attached notice",
            Duration::from_secs(10),
            || Ok(guard.exited()?.is_none()),
            || contains(&stderr, "__BPFTRACE_NOTIFY_PROBES_ATTACHED").then_some(()),
        );
        if notified.is_err() {
            agent.guard.exited()?.map_or(Ok(()), |status| {
                Err(anyhow::anyhow!("bpftrace exited ({status})"))
                    .with_context(|| agent.failure("bpftrace"))
            })?;
        }
        agent.start = agent.sample();
        Ok(agent)
    }

    fn spawn(
        mut command: std::process::Command,
        kind: Kind,
        dir: &Path,
        tag: &str,
    ) -> Result<Self> {
        let stdout = dir.join(format!("{tag}.stdout"));
        let stderr = dir.join(format!("{tag}.stderr"));
        command
            .stdin(Stdio::null())
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?);
        let shown = sh::display(&command);
        let child = command
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        Ok(Self {
            kind,
            guard: Guard::new(shown, child),
            stdout,
            stderr,
            start: None,
        })
    }

    fn failure(&self, what: &str) -> String {
        format!(
            "{what} failed; {}\n{}",
            proc::tail(&self.stderr, 3000),
            proc::tail(&self.stdout, 1000)
        )
    }

    fn sample(&self) -> Option<Sample> {
        let pid = self.guard.pid();
        let ticks = proc::cpu_ticks(pid)?;
        let hwm_kib = procfs::process::Process::new(i32::try_from(pid).ok()?)
            .and_then(|process| process.status())
            .ok()
            .and_then(|status| status.vmhwm);
        Some(Sample {
            at: Instant::now(),
            ticks,
            hwm_kib,
        })
    }

    /// The agent's CPU and peak memory since it attached; call it as the load ends.
    pub fn cost(&self) -> Option<Cost> {
        let (start, end) = (self.start?, self.sample()?);
        let cpu_s = proc::ticks_to_secs(end.ticks.saturating_sub(start.ticks));
        let wall = end.at.duration_since(start.at).as_secs_f64();
        Some(Cost {
            cpu_pct: if wall > 0.0 {
                100.0 * cpu_s / wall
            } else {
                0.0
            },
            cpu_s,
            max_rss_kib: end.hwm_kib.or(start.hwm_kib),
        })
    }

    /// Stops the agent with SIGINT and reads what it counted.
    pub fn stop(self) -> Result<Counted> {
        let failure = self.failure("stopping the agent");
        let status = self
            .guard
            .stop(Signal::SIGINT, STOP_TIMEOUT)
            .with_context(|| failure.clone())?;
        if !status.success() {
            bail!("the agent exited with {status}; {failure}");
        }
        match &self.kind {
            Kind::TlsProbe {
                ndjson,
                snapshots_before,
            } => {
                let mut counted = tls_probe_summary(ndjson)?;
                counted.estimated_cost_pct = estimated_cost(ndjson, *snapshots_before);
                Ok(counted)
            }
            Kind::Bpftrace => Ok(bpftrace_counts(&fs::read_to_string(&self.stdout)?)),
        }
    }
}

/// The snapshot lines tls-probe has written so far.
fn snapshot_lines(ndjson: &Path) -> Vec<String> {
    fs::read_to_string(ndjson)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""type":"snapshot""#))
        .map(str::to_owned)
        .collect()
}

/// The median of `probes.estimated_cost_pct` over the snapshots written after the first
/// `before` ones (the measurement; the last one, written on the way out, is left out).
fn estimated_cost(ndjson: &Path, before: usize) -> Option<f64> {
    let lines = snapshot_lines(ndjson);
    let measured = lines.get(before..lines.len().saturating_sub(1))?;
    let mut pcts: Vec<f64> = measured
        .iter()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["data"]["probes"]["estimated_cost_pct"].as_f64()
        })
        .collect();
    if pcts.is_empty() {
        return None;
    }
    pcts.sort_by(f64::total_cmp);
    Some(pcts[pcts.len() / 2])
}

fn contains(path: &Path, needle: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|text| text.contains(needle))
}

/// The library the process maps whose file name starts with `prefix` (`libssl.so`,
/// `libcrypto.so`), as its path in /proc/PID/maps.
fn library_of(pid: u32, prefix: &str) -> Result<PathBuf> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .with_context(|| format!("reading /proc/{pid}/maps"))?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(prefix))
        })
        .map(PathBuf::from)
        .with_context(|| format!("pid {pid} maps no {prefix}*: bpftrace has nothing to probe"))
}

/// The probes of `tls-probe attach --mode full` (tls-probe/src/probe/loader.rs), so that the
/// bench compares the same probes: libssl functions with an entry and a return probe...
const BPFTRACE_SSL_CALLS: &[&str] = &[
    "SSL_read",
    "SSL_read_ex",
    "SSL_write",
    "SSL_write_ex",
    "SSL_peek",
    "SSL_peek_ex",
    "SSL_get_error",
    "SSL_do_handshake",
    "SSL_accept",
    "SSL_connect",
];
/// ...libssl functions with an entry probe...
const BPFTRACE_SSL_ENTRIES: &[&str] = &["SSL_free"];
/// ...libcrypto functions with an entry probe (key operations, errors)...
const BPFTRACE_CRYPTO_ENTRIES: &[&str] = &[
    "EVP_DigestSign",
    "EVP_DigestVerify",
    "EVP_PKEY_decrypt",
    "ERR_vset_error",
];
/// ...syscalls with an enter and an exit tracepoint...
const BPFTRACE_SYSCALLS: &[&str] = &[
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "read",
    "write",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "readv",
    "writev",
    "accept4",
    "accept",
    "connect",
];
/// ...and syscalls with an enter tracepoint.
const BPFTRACE_SYSCALL_ENTRIES: &[&str] = &["close"];

/// The script: full mode's probes, each counting into a map. `-p` does not confine library
/// uprobes in bpftrace before 0.20, so every probe also filters on the pid (the load
/// generator's own SSL calls still trap there).
fn bpftrace_script(libssl: &Path, libcrypto: &Path, pid: u32) -> String {
    let (ssl, crypto) = (libssl.display(), libcrypto.display());
    let mut probes = Vec::new();
    for function in BPFTRACE_SSL_CALLS {
        probes.push(format!("uprobe:{ssl}:{function}"));
        probes.push(format!("uretprobe:{ssl}:{function}"));
    }
    for function in BPFTRACE_SSL_ENTRIES {
        probes.push(format!("uprobe:{ssl}:{function}"));
    }
    for function in BPFTRACE_CRYPTO_ENTRIES {
        probes.push(format!("uprobe:{crypto}:{function}"));
    }
    for syscall in BPFTRACE_SYSCALLS {
        probes.push(format!("tracepoint:syscalls:sys_enter_{syscall}"));
        probes.push(format!("tracepoint:syscalls:sys_exit_{syscall}"));
    }
    for syscall in BPFTRACE_SYSCALL_ENTRIES {
        probes.push(format!("tracepoint:syscalls:sys_enter_{syscall}"));
    }
    format!(
        "{} /pid == {pid}/ {{ @calls[probe] = count(); }}\n",
        probes.join(",\n")
    )
}

/// The counters bpftrace prints when it exits: `@calls[PROBE]: N`.
fn bpftrace_counts(stdout: &str) -> Counted {
    let mut counted = Counted::default();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("@calls[") else {
            continue;
        };
        let Some((probe, count)) = rest.rsplit_once("]: ") else {
            continue;
        };
        if let Ok(count) = count.trim().parse::<u64>() {
            counted.events += count;
            *counted.hits.entry(probe.to_owned()).or_default() += count;
        }
    }
    counted
}

/// The `summary` line that ends tls-probe's NDJSON.
fn tls_probe_summary(ndjson: &Path) -> Result<Counted> {
    let text =
        fs::read_to_string(ndjson).with_context(|| format!("reading {}", ndjson.display()))?;
    let last = text.lines().last().unwrap_or_default();
    let value: Value = serde_json::from_str(last)
        .with_context(|| format!("the last line of {} is not JSON: {last}", ndjson.display()))?;
    if value["type"] != "summary" {
        bail!(
            "{} does not end with a summary line: {last}",
            ndjson.display()
        );
    }
    let data = &value["data"];
    let events = data["events"]
        .as_u64()
        .with_context(|| format!("summary.data.events is not a count: {last}"))?;
    let lost = data.get("lost").cloned();
    let lost_total = lost.as_ref().map(|lost| match lost {
        Value::Object(kinds) => kinds.values().filter_map(Value::as_u64).sum(),
        other => other.as_u64().unwrap_or(0),
    });
    let hits = ["uprobe_hits", "tracepoint_hits"]
        .into_iter()
        .filter_map(|key| Some((key.to_owned(), data[key].as_u64()?)))
        .collect();
    Ok(Counted {
        events,
        lost,
        lost_total,
        hits,
        stop_reason: data["stop_reason"].as_str().map(str::to_owned),
        estimated_cost_pct: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpftrace_counters_are_summed_per_probe() {
        let out = "Attaching 8 probes...\n\n\n@calls[uprobe:/lib/libssl.so.3:SSL_read]: 120\n\
                   @calls[tracepoint:syscalls:sys_exit_epoll_wait]: 7\n";
        let counted = bpftrace_counts(out);
        assert_eq!(counted.events, 127);
        assert_eq!(counted.hits["uprobe:/lib/libssl.so.3:SSL_read"], 120);
    }

    #[test]
    fn the_estimate_is_the_median_of_the_measured_snapshots() {
        let dir = crate::bench::proc::TempDir::new(false).unwrap();
        let path = dir.path().join("out.ndjson");
        let snap = |pct: &str| {
            format!(
                "{{\"type\":\"snapshot\",\"data\":{{\"probes\":{{\"estimated_cost_pct\":{pct}}}}}}}\n"
            )
        };
        // Two before the measurement, four during it (one unknown), one on the way out.
        let text = [
            "{\"type\":\"start\"}\n".to_owned(),
            snap("50.0"),
            snap("40.0"),
            snap("1.0"),
            snap("null"),
            snap("3.0"),
            snap("2.0"),
            snap("90.0"),
        ]
        .concat();
        fs::write(&path, text).unwrap();
        assert_eq!(estimated_cost(&path, 2), Some(2.0));
        assert_eq!(estimated_cost(&path, 7), None);
    }

    #[test]
    fn script_filters_every_probe_on_the_pid() {
        let script = bpftrace_script(
            Path::new("/usr/lib/libssl.so.3"),
            Path::new("/usr/lib/libcrypto.so.3"),
            42,
        );
        assert_eq!(script.matches("/pid == 42/").count(), 1);
        assert!(
            script
                .trim_end()
                .ends_with("/pid == 42/ { @calls[probe] = count(); }")
        );
        assert!(script.contains("uretprobe:/usr/lib/libssl.so.3:SSL_get_error,"));
        assert!(script.contains("uprobe:/usr/lib/libcrypto.so.3:EVP_DigestSign,"));
        assert!(script.contains("tracepoint:syscalls:sys_exit_read,"));
        // 10 calls x 2 + SSL_free + 4 libcrypto + 15 syscalls x 2 + close.
        assert_eq!(script.matches(':').count() / 2, 56);
    }
}
