//! The two Rust toolchains the project builds with, and their installation.
//!
//! - The host toolchain, pinned at [`HOST`]: aya 0.16 and aya-build 0.2.1 declare
//!   rust-version 1.98, newer than the stable these machines come with. Every `cargo` and
//!   `rustc` that xtask starts runs on it (`RUSTUP_TOOLCHAIN`, see [`crate::sh::cmd`]); xtask
//!   itself builds on any stable, so the first `cargo xtask` of a fresh machine can install
//!   it. There is no rust-toolchain.toml at the root for that reason: with
//!   `RUSTUP_AUTO_INSTALL=0` (as on these machines) it would stop that first command.
//! - The eBPF nightly, named in `tls-probe-ebpf/rust-toolchain.toml` (read by
//!   tls-probe/build.rs too): `-Z build-std=core` for `bpfel-unknown-none`, with an LLVM
//!   whose major matches bpf-linker's.

use std::{fs, sync::OnceLock};

use anyhow::{Context, Result, bail};

use crate::sh::{self, cmd, run};

/// The host toolchain.
pub const HOST: &str = "1.99.1";

/// Components of the host toolchain: clippy for the userspace crates.
const HOST_COMPONENTS: &[&str] = &["clippy"];

/// Components of the eBPF nightly: rust-src for `-Z build-std=core`, rustfmt for the
/// nightly-only options in rustfmt.toml, clippy for the eBPF crate.
const EBPF_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];

/// The LLVM major bpf-linker is built against (crate::setup): nightly's must match.
pub const LLVM_MAJOR: &str = "22";

/// The eBPF nightly's name, e.g. `nightly-2026-07-01`, from
/// `tls-probe-ebpf/rust-toolchain.toml`.
pub fn ebpf() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let path = sh::root().join("tls-probe-ebpf/rust-toolchain.toml");
        let text = fs::read_to_string(&path).unwrap_or_default();
        channel(&text).map_or_else(
            || {
                eprintln!(
                    "warning: no `channel = \"...\"` in {}; using `nightly`",
                    path.display()
                );
                "nightly".to_owned()
            },
            str::to_owned,
        )
    })
}

/// `+<eBPF nightly>`, as the first argument of a `cargo` that must run on it.
pub fn ebpf_arg() -> String {
    format!("+{}", ebpf())
}

/// The value of a rust-toolchain.toml's `channel = "..."` line.
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

/// What [`ensure`] would install, as (what, why, about how many seconds); empty when
/// everything is there or rustup cannot say (then `ensure` reports the problem).
pub fn missing() -> Vec<(String, String, u32)> {
    let Some(list) = sh::query(cmd("rustup").args(["toolchain", "list"])) else {
        return Vec::new();
    };
    let mut todo = Vec::new();
    for (name, components, why) in [
        (HOST, HOST_COMPONENTS, "builds the host crates"),
        (ebpf(), EBPF_COMPONENTS, "builds the eBPF programs"),
    ] {
        if !installed(&list, name) {
            todo.push((
                format!("toolchain {name} with {}", components.join(", ")),
                why.to_owned(),
                40,
            ));
            continue;
        }
        let have = sh::query(cmd("rustup").args([
            "component",
            "list",
            "--toolchain",
            name,
            "--installed",
        ]))
        .unwrap_or_default();
        let gone = missing_components(&have, components);
        if !gone.is_empty() {
            todo.push((
                format!("{name} components {}", gone.join(", ")),
                why.to_owned(),
                15,
            ));
        }
    }
    todo
}

/// Installs both toolchains and their components when missing, and checks that the eBPF
/// nightly's LLVM matches bpf-linker's.
pub fn ensure() -> Result<()> {
    let list = sh::query(cmd("rustup").args(["toolchain", "list"])).ok_or_else(|| {
        anyhow::anyhow!(
            "rustup is not on PATH; install Rust with rustup (https://rustup.rs), then rerun `cargo xtask setup`"
        )
    })?;
    for (name, components, why) in [
        (
            HOST,
            HOST_COMPONENTS,
            "the host crates (aya 0.16 needs Rust 1.98+)",
        ),
        (
            ebpf(),
            EBPF_COMPONENTS,
            "the eBPF crate (-Z build-std, LLVM 22)",
        ),
    ] {
        if installed(&list, name) {
            eprintln!("ok: toolchain {name}");
        } else {
            eprintln!("installing: toolchain {name}, for {why} (about 10 s)");
            run(cmd("rustup").args(["toolchain", "install", name, "--profile", "minimal"]))
                .with_context(|| {
                    format!("installing toolchain {name} failed; check network access to the Rust dist server")
                })?;
        }
        let have = sh::query(cmd("rustup").args([
            "component",
            "list",
            "--toolchain",
            name,
            "--installed",
        ]))
        .with_context(|| format!("`rustup component list --toolchain {name}` failed"))?;
        let missing = missing_components(&have, components);
        if missing.is_empty() {
            eprintln!("ok: {name} components {}", components.join(", "));
        } else {
            eprintln!("installing: {name} components {}", missing.join(", "));
            run(cmd("rustup")
                .args(["component", "add", "--toolchain", name])
                .args(&missing))
            .with_context(|| format!("adding {} to {name} failed", missing.join(", ")))?;
        }
    }
    // bpf-linker reads the bitcode the nightly writes, so their LLVM majors must agree.
    let version = sh::query(cmd("rustc").arg(ebpf_arg()).arg("-vV"))
        .with_context(|| format!("`rustc {} -vV` failed", ebpf_arg()))?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        bail!(
            "{} uses LLVM {llvm}, but bpf-linker is built against LLVM {LLVM_MAJOR}: pick a nightly with LLVM {LLVM_MAJOR} in tls-probe-ebpf/rust-toolchain.toml",
            ebpf()
        );
    }
    Ok(())
}

/// Whether `rustup toolchain list` output has `name` (listed as `name-<host triple>`).
fn installed(list: &str, name: &str) -> bool {
    list.lines().any(|line| {
        line.split_whitespace()
            .next()
            .and_then(|full| full.strip_prefix(name))
            .is_some_and(|rest| {
                rest.is_empty() || rest.starts_with("-x86_64") || rest.starts_with("-aarch64")
            })
    })
}

/// The subset of `wanted` not in `rustup component list --installed` output, where a
/// component appears bare (`rust-src`) or with its target (`clippy-x86_64-unknown-linux-gnu`).
fn missing_components<'a>(installed: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|want| {
            !installed.lines().any(|line| {
                let line = line.trim();
                line == *want
                    || line
                        .strip_prefix(want)
                        .is_some_and(|rest| rest.starts_with('-'))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_channel_line() {
        assert_eq!(
            channel("[toolchain]\nchannel = \"nightly-2026-07-01\"\nprofile = \"minimal\"\n"),
            Some("nightly-2026-07-01")
        );
        assert_eq!(channel("[toolchain]\n"), None);
        // The checked-in file names a dated nightly: a bare `nightly` would float.
        assert!(ebpf().starts_with("nightly-20"), "{}", ebpf());
    }

    #[test]
    fn finds_installed_toolchains_by_exact_name() {
        let list = "stable-x86_64-unknown-linux-gnu (default)\n1.99.1-x86_64-unknown-linux-gnu\nnightly-2026-07-01-x86_64-unknown-linux-gnu\n";
        assert!(installed(list, "1.99.1"));
        assert!(installed(list, "nightly-2026-07-01"));
        assert!(!installed(list, "1.99"));
        assert!(!installed(list, "nightly"));
    }

    #[test]
    fn components_with_or_without_target_count_as_installed() {
        let have = "rust-src\nclippy-x86_64-unknown-linux-gnu\n";
        assert_eq!(missing_components(have, EBPF_COMPONENTS), ["rustfmt"]);
        // rust-std is not rust-src.
        assert_eq!(
            missing_components("rust-std-x86_64-unknown-linux-gnu\n", &["rust-src"]),
            ["rust-src"]
        );
    }
}
