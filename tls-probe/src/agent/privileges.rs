//! Whether tls-probe may load eBPF programs, checked before it tries.

use anyhow::{Result, bail};

/// Fails early, with what to do, when tls-probe lacks the privileges to load eBPF.
pub fn check_privileges() -> Result<()> {
    use nix::unistd::Uid;
    if Uid::effective().is_root() {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 21;
    const CAP_PERFMON: u64 = 38;
    const CAP_BPF: u64 = 39;
    let has = |c: u64| eff & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "tls-probe is not running as root and lacks {}: run it with sudo, or grant the capabilities with `sudo setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep $(which tls-probe)`",
        missing.join(" and ")
    )
}
