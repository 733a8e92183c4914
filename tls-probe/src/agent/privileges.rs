//! Whether tls-probe may load eBPF programs, and whether the kernel has what they need,
//! checked before it tries.

use std::path::Path;

use anyhow::{Result, bail};

/// The kernel features tls-probe needs, looked for under `root` (`/` on a real system; a
/// directory standing in for it in tests). Names the first one missing and what to do.
pub fn check_kernel(root: &Path) -> Result<()> {
    let btf = root.join("sys/kernel/btf/vmlinux");
    if !btf.exists() {
        bail!(
            "this kernel has no BTF ({} is missing): tls-probe's eBPF programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y; use a distribution kernel from 5.8 on (most enable it) or rebuild the kernel with it",
            btf.display()
        );
    }
    let uprobe = root.join("sys/bus/event_source/devices/uprobe/type");
    if !uprobe.exists() {
        bail!(
            "this kernel has no uprobe support ({} is missing): tls-probe attaches to OpenSSL with uprobes; use a kernel built with CONFIG_UPROBE_EVENTS=y (and sysfs mounted on /sys)",
            uprobe.display()
        );
    }
    Ok(())
}

/// Fails early, with what to do, when the kernel lacks a feature tls-probe needs or
/// tls-probe lacks the privileges to load eBPF.
pub fn check_privileges() -> Result<()> {
    use nix::unistd::Uid;
    check_kernel(Path::new("/"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_features_are_checked_under_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let err = check_kernel(root).unwrap_err().to_string();
        assert!(
            err.contains("no BTF") && err.contains("CONFIG_DEBUG_INFO_BTF"),
            "{err}"
        );
        std::fs::create_dir_all(root.join("sys/kernel/btf")).unwrap();
        std::fs::write(root.join("sys/kernel/btf/vmlinux"), b"").unwrap();
        let err = check_kernel(root).unwrap_err().to_string();
        assert!(
            err.contains("no uprobe support") && err.contains("CONFIG_UPROBE_EVENTS"),
            "{err}"
        );
        let dev = root.join("sys/bus/event_source/devices/uprobe");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("type"), b"9\n").unwrap();
        check_kernel(root).unwrap();
        // This machine has both.
        check_kernel(Path::new("/")).unwrap();
    }
}
