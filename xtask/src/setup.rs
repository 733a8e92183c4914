//! `cargo xtask setup`: makes sure every prerequisite is installed, installing what is
//! missing. Each check is a quick query, so a machine that has everything is done in well
//! under a second. The recipe is the verified one in shared/docs/toolchain.md.

use std::{path::Path, time::Instant};

use anyhow::{Context, Result, bail};

use crate::sh::{self, cmd, run};

/// Debian packages: LLVM 22 to build bpf-linker (it must match nightly's LLVM 22), OpenSSL
/// headers for the `openssl` crate, the tools the integration tests drive, and the server
/// and load generator of `cargo xtask bench`.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "libssl-dev",
    "pkg-config",
    "python3",
    "openssl",
    "tmux",
    "strace",
    "nginx-light",
    "wrk",
    // xtask/src/openssl11.rs: fetching and building OpenSSL 1.1.1 for tests/openssl11.rs.
    "curl",
    "perl",
    "make",
    // tests/discovery.rs: OpenSSL linked statically (node's, and a C client built with gcc
    // against libssl.a).
    "nodejs",
    "gcc",
];

/// Installed on a best-effort basis for `cargo xtask bench` only, which skips what is missing.
const BENCH_OPTIONAL_PACKAGES: &[&str] = &["bpftrace"];

/// Nightly components: rust-src for `-Z build-std=core`, rustfmt for the nightly-only options
/// in rustfmt.toml, clippy for the eBPF crate.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_MAJOR: &str = "22";

/// Runs every check in order; `test`, `demo` and `bench` call this first.
pub fn ensure() -> Result<()> {
    let start = Instant::now();
    nightly()?;
    host_clippy()?;
    apt()?;
    bpf_linker()?;
    crate::openssl11::ensure()?;
    eprintln!("setup: everything present ({})", sh::secs(start));
    Ok(())
}

/// The bench's optional packages (bpftrace, to compare against): installs what is missing,
/// and only warns when that fails, since the bench runs without them.
pub fn ensure_bench_extras() {
    let statuses = sh::query_any_status(
        cmd("dpkg-query")
            .args(["-W", "-f", "${Package}\t${Status}\n"])
            .args(BENCH_OPTIONAL_PACKAGES),
    )
    .unwrap_or_default();
    let missing = missing_packages(&statuses, BENCH_OPTIONAL_PACKAGES);
    if missing.is_empty() {
        eprintln!("ok: bench packages {}", BENCH_OPTIONAL_PACKAGES.join(", "));
        return;
    }
    if !sh::is_root() {
        eprintln!(
            "warning: {} not installed and we are not root: the bench will skip it",
            missing.join(", ")
        );
        return;
    }
    eprintln!("installing (best effort): {}", missing.join(" "));
    let installed = run(cmd("apt-get").arg("update")).and_then(|()| {
        run(cmd("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing))
    });
    if let Err(err) = installed {
        eprintln!(
            "warning: could not install {} ({err:#}): the bench will skip it",
            missing.join(", ")
        );
    }
}

fn rustup_missing() -> anyhow::Error {
    anyhow::anyhow!(
        "rustup is not on PATH; install Rust with rustup (https://rustup.rs), then rerun `cargo xtask setup`"
    )
}

fn nightly() -> Result<()> {
    let toolchains =
        sh::query(cmd("rustup").args(["toolchain", "list"])).ok_or_else(rustup_missing)?;
    // `nightly-x86_64-unknown-linux-gnu (default)`, but not a dated `nightly-2026-05-19-...`.
    let has_nightly = toolchains.lines().any(|line| {
        line.split_whitespace()
            .next()
            .and_then(|name| name.strip_prefix("nightly-"))
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if has_nightly {
        eprintln!("ok: nightly toolchain");
    } else {
        eprintln!("installing: nightly toolchain (minimal profile)");
        run(cmd("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))
            .context("installing the nightly toolchain failed; check network access to the Rust dist server")?;
    }

    let installed = sh::query(cmd("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("`rustup component list --toolchain nightly --installed` failed")?;
    let missing = missing_components(&installed, NIGHTLY_COMPONENTS);
    if missing.is_empty() {
        eprintln!("ok: nightly components {}", NIGHTLY_COMPONENTS.join(", "));
    } else {
        eprintln!("installing: nightly components {}", missing.join(", "));
        run(cmd("rustup").args(["component", "add", "--toolchain", "nightly"]).args(&missing))
            .context("adding nightly components failed; a nightly without them may be too new or too old: try `rustup toolchain install nightly --profile minimal --force`")?;
    }

    // bpf-linker reads the bitcode nightly writes, so their LLVM majors must agree.
    let version =
        sh::query(cmd("rustc").args(["+nightly", "-vV"])).context("`rustc +nightly -vV` failed")?;
    let llvm = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .unwrap_or("unknown");
    if llvm.split('.').next() != Some(LLVM_MAJOR) {
        eprintln!(
            "warning: nightly uses LLVM {llvm}, but bpf-linker is built against LLVM {LLVM_MAJOR}; \
             if linking the eBPF crate fails, install a nightly with LLVM {LLVM_MAJOR} \
             (see shared/docs/toolchain.md)"
        );
    }
    Ok(())
}

/// Host clippy for the userspace crates, on the toolchain cargo runs xtask with.
fn host_clippy() -> Result<()> {
    let installed = sh::query(cmd("rustup").args(["component", "list", "--installed"]))
        .ok_or_else(rustup_missing)?;
    if missing_components(&installed, &["clippy"]).is_empty() {
        eprintln!("ok: clippy (host toolchain)");
        return Ok(());
    }
    eprintln!("installing: clippy (host toolchain)");
    run(cmd("rustup").args(["component", "add", "clippy"]))
        .context("adding clippy to the host toolchain failed")
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

fn apt() -> Result<()> {
    let statuses = sh::query_any_status(
        cmd("dpkg-query")
            .args(["-W", "-f", "${Package}\t${Status}\n"])
            .args(APT_PACKAGES),
    )
    .context("dpkg-query is not available: this setup supports Debian-based systems only; install the packages by hand")?;
    let missing = missing_packages(&statuses, APT_PACKAGES);
    if missing.is_empty() {
        eprintln!("ok: apt packages ({})", APT_PACKAGES.len());
        return Ok(());
    }
    let install = format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
        missing.join(" ")
    );
    if !sh::is_root() {
        bail!(
            "missing apt packages: {}; installing them needs root. Run:\n  \
             sudo apt-get update && sudo {install}\nthen rerun this command",
            missing.join(" ")
        );
    }
    eprintln!("installing: apt packages {}", missing.join(" "));
    run(cmd("apt-get").arg("update"))
        .context("`apt-get update` failed; check the apt sources and network")?;
    run(cmd("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y"])
        .args(&missing))
    .with_context(|| {
        format!(
            "`{install}` failed; the llvm-22 packages come from Debian's bookworm-security \
             (see shared/docs/toolchain.md)"
        )
    })
}

/// The subset of `wanted` that `dpkg-query -W -f '${Package}\t${Status}\n'` output does not
/// show as installed (unknown packages are left out of that output).
fn missing_packages<'a>(statuses: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|pkg| {
            !statuses
                .lines()
                .any(|line| line.split_once('\t') == Some((pkg, "install ok installed")))
        })
        .collect()
}

fn bpf_linker() -> Result<()> {
    match bpf_linker_problem() {
        None => {
            eprintln!("ok: bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR})");
            return Ok(());
        }
        Some(problem) => eprintln!(
            "installing: bpf-linker {BPF_LINKER_VERSION} with LLVM {LLVM_MAJOR} ({problem})"
        ),
    }
    let llvm_prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
    run(cmd("cargo")
        .env("LLVM_PREFIX", &llvm_prefix)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--force"])
        .args(["--no-default-features", "--features", &format!("llvm-{LLVM_MAJOR}")]))
    .with_context(|| {
        format!(
            "building bpf-linker failed; it needs llvm-{LLVM_MAJOR}-dev, libclang-{LLVM_MAJOR}-dev and \
             libpolly-{LLVM_MAJOR}-dev under {llvm_prefix} (the apt step above)"
        )
    })?;
    if let Some(problem) = bpf_linker_problem() {
        bail!(
            "bpf-linker was installed into {} but the check still fails: {problem}; remove the other \
             bpf-linker earlier on PATH",
            sh::cargo_bin_dir().display()
        );
    }
    eprintln!("ok: bpf-linker {BPF_LINKER_VERSION} (LLVM {LLVM_MAJOR})");
    Ok(())
}

/// Why the bpf-linker on PATH (or in ~/.cargo/bin) will not do, or None when it will.
fn bpf_linker_problem() -> Option<String> {
    let Some(path) = sh::find_program("bpf-linker") else {
        return Some("not found on PATH or in ~/.cargo/bin".into());
    };
    let version = sh::query(sh::cmd(&path).arg("--version"));
    let version = version.as_deref().map(str::trim).unwrap_or("no version");
    if version != format!("bpf-linker {BPF_LINKER_VERSION}") {
        return Some(format!("{} reports `{version}`", path.display()));
    }
    llvm_link_problem(&path)
}

/// bpf-linker built with LLVM_PREFIX links libLLVM dynamically: check it is LLVM 22 and that
/// the library still resolves (it goes away if llvm-22 is removed).
fn llvm_link_problem(path: &Path) -> Option<String> {
    let libs = sh::query(sh::cmd("ldd").arg(path))?; // Not dynamic, or no ldd: nothing to check.
    let line = libs
        .lines()
        .find(|line| line.trim_start().starts_with("libLLVM"))?;
    let wanted = format!("libLLVM.so.{LLVM_MAJOR}");
    if !line.trim_start().starts_with(&wanted) && !line.contains(&format!("libLLVM-{LLVM_MAJOR}")) {
        return Some(format!(
            "{} links {}, not LLVM {LLVM_MAJOR}",
            path.display(),
            line.trim()
        ));
    }
    if line.contains("not found") {
        return Some(format!(
            "{} cannot find its {}",
            path.display(),
            line.trim()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_match_bare_and_target_suffixed_names() {
        let installed = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrust-std-x86_64-unknown-linux-gnu\n\
                         rustfmt-x86_64-unknown-linux-gnu\n";
        assert_eq!(
            missing_components(installed, NIGHTLY_COMPONENTS),
            ["clippy"]
        );
        assert_eq!(
            missing_components("rust-std-x86_64-unknown-linux-gnu\n", &["rust-src"]),
            ["rust-src"]
        );
    }

    #[test]
    fn packages_must_be_fully_installed() {
        let statuses = "python3\tinstall ok installed\ntmux\tdeinstall ok config-files\n";
        assert_eq!(
            missing_packages(statuses, &["python3", "tmux", "strace"]),
            ["tmux", "strace"]
        );
    }
}
