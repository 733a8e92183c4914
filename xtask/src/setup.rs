//! `cargo xtask setup`: makes sure every prerequisite is installed, installing what is
//! missing. Each check is a quick query, so a machine that has everything is done in well
//! under a second. The recipe is the verified one in shared/docs/toolchain.md.

use std::{path::Path, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{
    sh::{self, cmd, run},
    toolchain::LLVM_MAJOR,
};

/// What a command needs set up: `demo` and `dist` only build; `test`, `bench` and `setup`
/// also need the programs the tests and the bench drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// The toolchains, bpf-linker and the packages the build links against.
    Build,
    /// All of the above, the test tools and OpenSSL 1.1.1 for tests/it/openssl11.rs.
    Everything,
}

/// Debian packages the build needs: LLVM 22 to build bpf-linker (it must match nightly's
/// LLVM 22), and OpenSSL headers for the `openssl` crate of the scenario program.
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "libssl-dev",
    "pkg-config",
];

/// Debian packages the tests drive, and the server and load generator of `cargo xtask bench`.
const TEST_PACKAGES: &[&str] = &[
    "python3",
    "openssl",
    "tmux",
    "strace",
    "nginx-light",
    "wrk",
    // xtask/src/openssl11.rs: fetching and building OpenSSL 1.1.1 for tests/it/openssl11.rs.
    "curl",
    "perl",
    "make",
    // tests/it/discovery.rs: OpenSSL linked statically (node's, and a C client built with gcc
    // against libssl.a).
    "nodejs",
    "gcc",
    // tests/it/watch.rs: a real Prometheus scraping `tls-probe watch`, and `promtool check
    // rules` on deploy/prometheus/tls-probe-rules.yml (promtool comes with it).
    "prometheus",
    // tests/it/deploy.rs: a virtual environment for kubernetes-validate (PyPI).
    "python3-venv",
];

/// tests/it/deploy.rs validates deploy/kubernetes/daemonset.yaml with this PyPI package (it
/// ships the Kubernetes JSON schemas; kubeconform is in no registry this project uses), in
/// a virtual environment under the target directory.
const KUBERNETES_VALIDATE: &str = "1.37.0";
const KUBERNETES_VALIDATE_DIR: &str = "kubernetes-validate";

/// Installed on a best-effort basis for `cargo xtask bench` only, which skips what is missing.
const BENCH_OPTIONAL_PACKAGES: &[&str] = &["bpftrace"];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs every check `needs` calls for, in order; `test`, `demo`, `dist` and `bench` call this
/// first.
pub fn ensure(needs: Needs) -> Result<()> {
    let start = Instant::now();
    announce(&plan(needs));
    crate::toolchain::ensure()?;
    apt(&packages(needs))?;
    bpf_linker()?;
    if needs == Needs::Everything {
        crate::openssl11::ensure()?;
        kubernetes_validate()?;
    }
    eprintln!("setup: everything present ({})", sh::secs(start));
    Ok(())
}

fn packages(needs: Needs) -> Vec<&'static str> {
    match needs {
        Needs::Build => BUILD_PACKAGES.to_vec(),
        Needs::Everything => [BUILD_PACKAGES, TEST_PACKAGES].concat(),
    }
}

/// What is missing, as (what, why, about how many seconds on these 2-core machines: the
/// figures of a first run, measured), from the same quick checks the steps make.
fn plan(needs: Needs) -> Vec<(String, String, u32)> {
    let mut todo = crate::toolchain::missing();
    let wanted = packages(needs);
    let statuses = sh::query_any_status(
        cmd("dpkg-query")
            .args(["-W", "-f", "${Package}\t${Status}\n"])
            .args(&wanted),
    )
    .unwrap_or_default();
    let missing = missing_packages(&statuses, &wanted);
    if !missing.is_empty() {
        todo.push((
            format!("apt packages {}", missing.join(" ")),
            match needs {
                Needs::Build => "LLVM 22 for bpf-linker, OpenSSL headers for the demo workloads",
                Needs::Everything => {
                    "LLVM 22 for bpf-linker, OpenSSL headers, and the servers and tools the \
                     tests drive"
                }
            }
            .to_owned(),
            30 + 5 * missing.len() as u32,
        ));
    }
    if let Some(problem) = bpf_linker_problem() {
        todo.push((
            format!("bpf-linker {BPF_LINKER_VERSION}, built with LLVM {LLVM_MAJOR}"),
            format!("links the eBPF programs ({problem})"),
            90,
        ));
    }
    if needs == Needs::Everything && crate::openssl11::missing() {
        todo.push((
            "OpenSSL 1.1.1 shared libraries, built from source".to_owned(),
            "tests/it/openssl11.rs probes a client linked to libssl.so.1.1".to_owned(),
            240,
        ));
    }
    todo
}

/// Says up front what setup is about to install, why, and how long it should take in all.
fn announce(todo: &[(String, String, u32)]) {
    if todo.is_empty() {
        return;
    }
    let total: u32 = todo.iter().map(|t| t.2).sum();
    eprintln!(
        "setup: {} to install first, about {} in all on a first run (later runs only check, in \
         about a second):",
        todo.len(),
        minutes(total)
    );
    for (what, why, secs) in todo {
        eprintln!("  - {what} (about {}): {why}", minutes(*secs));
    }
}

fn minutes(secs: u32) -> String {
    match secs {
        0..90 => format!("{secs} s"),
        _ => format!("{} min", secs.div_ceil(60)),
    }
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

/// kubernetes-validate in `<target dir>/kubernetes-validate`, unless that version is there.
fn kubernetes_validate() -> Result<()> {
    let venv = crate::openssl11::target_dir()?.join(KUBERNETES_VALIDATE_DIR);
    let bin = venv.join("bin/kubernetes-validate");
    let have = sh::query(cmd(&bin).arg("--version")).unwrap_or_default();
    if have.contains(KUBERNETES_VALIDATE) {
        eprintln!("ok: kubernetes-validate {KUBERNETES_VALIDATE}");
        return Ok(());
    }
    eprintln!(
        "installing: kubernetes-validate {KUBERNETES_VALIDATE} (PyPI) into {}",
        venv.display()
    );
    run(cmd("python3").arg("-m").arg("venv").arg(&venv))
        .context("creating a Python virtual environment (apt-get install python3-venv)")?;
    run(cmd(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}")))
    .context("`pip install kubernetes-validate` failed; check that PyPI is reachable")
}

fn apt(wanted: &[&str]) -> Result<()> {
    let statuses = sh::query_any_status(
        cmd("dpkg-query")
            .args(["-W", "-f", "${Package}\t${Status}\n"])
            .args(wanted),
    )
    .context("dpkg-query is not available: this setup supports Debian-based systems only; install the packages by hand")?;
    let missing = missing_packages(&statuses, wanted);
    if missing.is_empty() {
        eprintln!("ok: apt packages ({})", wanted.len());
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
    fn durations_read_in_seconds_then_minutes() {
        assert_eq!(minutes(40), "40 s");
        assert_eq!(minutes(90), "2 min");
        assert_eq!(minutes(455), "8 min");
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
