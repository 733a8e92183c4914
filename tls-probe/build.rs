//! Builds the eBPF programs (tls-probe-ebpf) with nightly for bpfel-unknown-none and leaves
//! the object in OUT_DIR, where src/probe/loader.rs embeds it. `AYA_BUILD_SKIP=1` skips
//! this for a quick `cargo check`; the embedded object is then empty. The nightly used is
//! the one named in tls-probe-ebpf/rust-toolchain.toml.
use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    git_commit();
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../tls-probe-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    println!("cargo:rustc-check-cfg=cfg(ebpf_object_skipped)");
    if skip {
        // Unit tests that read the object are ignored, with this as the reason.
        println!("cargo:rustc-cfg=ebpf_object_skipped");
        // Leave a placeholder so include_bytes_aligned! compiles; loading it fails clearly.
        let out = PathBuf::from(env::var("OUT_DIR")?).join("tls-probe");
        if !out.exists() {
            fs::write(out, [])?;
        }
    }
    let toolchain_file = PathBuf::from(root).join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", toolchain_file.display());
    let toolchain = fs::read_to_string(&toolchain_file)
        .with_context(|| format!("reading {}", toolchain_file.display()))?;
    let channel = channel(&toolchain).with_context(|| {
        format!(
            "no `channel = \"...\"` line in {}",
            toolchain_file.display()
        )
    })?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tls-probe-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(channel),
    )
}

/// `TLS_PROBE_COMMIT` for `--version`: the short git commit of the source, else the
/// variable of that name from the build's environment (a source tarball), else "unknown".
/// Rebuilt when HEAD or the branch it names moves.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=TLS_PROBE_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])
        .or_else(|| env::var("TLS_PROBE_COMMIT").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    for path in ["HEAD", "refs/heads"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rustc-env=TLS_PROBE_COMMIT={commit}");
}

/// The value of the `channel = "..."` line of a rust-toolchain.toml.
fn channel(toml: &str) -> Option<&str> {
    toml.lines().find_map(|line| {
        let value = line
            .trim()
            .strip_prefix("channel")?
            .trim()
            .strip_prefix('=')?;
        value.trim().strip_prefix('"')?.strip_suffix('"')
    })
}
