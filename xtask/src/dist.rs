//! `cargo xtask dist`: the release tarball for x86_64 Linux.
//!
//! ```text
//! target/dist/tls-probe-VERSION-x86_64-linux.tar.gz
//!   tls-probe-VERSION-x86_64-linux/
//!     tls-probe              the profiler, stripped; links no libssl or libcrypto
//!     tls-probe-scenarios    the demo workloads (links the system's libssl.so.3), stripped
//!     man/tls-probe*.1       man pages, from the clap definitions
//!     completions/           bash (tls-probe.bash), zsh (_tls-probe), fish (tls-probe.fish)
//!     README.md
//! target/dist/tls-probe_VERSION_amd64.deb
//!                            the same files in /usr (bin, share/man, the completion
//!                            directories); depends on libc6 only, suggests libssl3
//! target/dist/tls-probe-VERSION-x86_64-linux.debug
//!                            tls-probe's debug info (objcopy --only-keep-debug), kept out
//!                            of the tarball; .gnu_debuglink names it `tls-probe.debug`, so
//!                            copied beside the binary under that name gdb and perf find it
//! ```
//!
//! The profiler's DT_NEEDED entries are checked: a libssl or libcrypto among them fails the
//! build, since tls-probe must start on hosts with any OpenSSL (1.1 or 3) or none.

use std::{fs, path::Path};

use anyhow::{Context, Result, bail};
use object::read::elf::ElfFile64;

use crate::{setup, sh};

const TARGET: &str = "x86_64-linux";

#[derive(clap::Args, Debug)]
pub struct DistArgs {
    /// Skip `cargo xtask setup` (the toolchains and bpf-linker are known to be there).
    #[arg(long)]
    skip_setup: bool,
}

pub fn run(args: &DistArgs) -> Result<()> {
    if !args.skip_setup {
        setup::ensure(setup::Needs::Build)?;
    }
    sh::build_release_binaries()?;
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| sh::root().join("target"), |d| sh::root().join(d))
        .join("release");
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("tls-probe-{version}-{TARGET}");
    let dist = release.parent().context("target dir")?.join("dist");
    let stage = dist.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;

    let profiler = stage.join("tls-probe");
    fs::copy(release.join("tls-probe"), &profiler).context("copying tls-probe")?;
    let needed = needed(&profiler)?;
    if let Some(lib) = needed
        .iter()
        .find(|l| l.starts_with("libssl") || l.starts_with("libcrypto"))
    {
        bail!(
            "the release tls-probe links {lib} (DT_NEEDED: {}); only tls-probe-scenarios may \
             link OpenSSL",
            needed.join(", ")
        );
    }
    eprintln!("ok: tls-probe links {}", needed.join(", "));
    split_debug(&profiler)?;
    let scenarios = stage.join("tls-probe-scenarios");
    fs::copy(release.join("tls-probe-scenarios"), &scenarios)
        .context("copying tls-probe-scenarios")?;
    sh::run(sh::cmd("strip").arg("--strip-debug").arg(&scenarios))?;
    sh::run(sh::cmd(&profiler).arg("generate").arg(&stage))
        .context("generating the man pages and completions failed")?;
    fs::copy(sh::root().join("README.md"), stage.join("README.md")).context("copying README")?;

    let debug = dist.join(format!("{name}.debug"));
    fs::rename(stage.join("tls-probe.debug"), &debug)
        .with_context(|| format!("moving the debug info to {}", debug.display()))?;

    let tarball = dist.join(format!("{name}.tar.gz"));
    sh::run(
        sh::cmd("tar")
            .arg("-C")
            .arg(&dist)
            .args(["--owner=0", "--group=0", "-czf"])
            .arg(&tarball)
            .arg(&name),
    )
    .context("packing the tarball failed")?;
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
    eprintln!(
        "dist: {} ({:.1} MiB); tls-probe {:.1} MiB stripped, its debug info {:.1} MiB in {}; \
         tls-probe-scenarios {:.1} MiB",
        tarball.display(),
        mib(size(&tarball)),
        mib(size(&profiler)),
        mib(size(&debug)),
        debug.display(),
        mib(size(&scenarios)),
    );
    let deb = deb(&stage, &dist, version)?;
    eprintln!("dist: {} ({:.1} MiB)", deb.display(), mib(size(&deb)));
    println!("{}", tarball.display());
    Ok(())
}

/// `tls-probe_VERSION_amd64.deb` from the staged files, with dpkg-deb (no cargo-deb to
/// install). It depends on libc only: OpenSSL is suggested, for the demo workloads.
fn deb(stage: &Path, dist: &Path, version: &str) -> Result<std::path::PathBuf> {
    let root = dist.join("deb");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let copy = |from: &str, to: &str, mode: u32| -> Result<()> {
        let to = root.join(to);
        fs::create_dir_all(to.parent().context("parent")?)?;
        fs::copy(stage.join(from), &to).with_context(|| format!("copying {from}"))?;
        fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        Ok(())
    };
    copy("tls-probe", "usr/bin/tls-probe", 0o755)?;
    copy("tls-probe-scenarios", "usr/bin/tls-probe-scenarios", 0o755)?;
    for page in fs::read_dir(stage.join("man"))? {
        let name = page?.file_name();
        let name = name.to_string_lossy();
        copy(
            &format!("man/{name}"),
            &format!("usr/share/man/man1/{name}"),
            0o644,
        )?;
    }
    copy(
        "completions/tls-probe.bash",
        "usr/share/bash-completion/completions/tls-probe",
        0o644,
    )?;
    copy(
        "completions/_tls-probe",
        "usr/share/zsh/vendor-completions/_tls-probe",
        0o644,
    )?;
    copy(
        "completions/tls-probe.fish",
        "usr/share/fish/vendor_completions.d/tls-probe.fish",
        0o644,
    )?;
    copy("README.md", "usr/share/doc/tls-probe/README.md", 0o644)?;
    fs::create_dir_all(root.join("DEBIAN"))?;
    fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: tls-probe\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: tls-probe developers <tls-probe@localhost>\n\
             Depends: libc6\n\
             Suggests: libssl3\n\
             Section: devel\n\
             Priority: optional\n\
             Description: eBPF profiler for TLS event loops\n \
             Finds WANT_READ/WANT_WRITE spin loops, bad write retries and handshake\n \
             saturation in live OpenSSL processes. tls-probe links no OpenSSL;\n \
             tls-probe-scenarios, the demo workloads, needs libssl3.\n"
        ),
    )?;
    let deb = dist.join(format!("tls-probe_{version}_amd64.deb"));
    sh::run(
        sh::cmd("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&deb),
    )
    .context("dpkg-deb --build failed")?;
    Ok(deb)
}

/// The DT_NEEDED entries of an ELF executable: the libraries the loader must find.
pub fn needed(path: &Path) -> Result<Vec<String>> {
    use object::{
        elf,
        read::elf::{Dyn, FileHeader, SectionHeader},
    };
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = ElfFile64::<object::Endianness>::parse(&*data)
        .with_context(|| format!("{} is not a 64-bit ELF file", path.display()))?;
    let (endian, data) = (file.endian(), file.data());
    let sections = file.elf_header().sections(endian, data)?;
    let Some(dynamic) = sections
        .iter()
        .find(|s| s.sh_type(endian) == elf::SHT_DYNAMIC)
    else {
        bail!("{} has no dynamic section (static?)", path.display());
    };
    let (entries, link) = dynamic
        .dynamic(endian, data)?
        .context("the dynamic section holds no entries")?;
    let strings = sections.strings(endian, data, link)?;
    let mut needed = Vec::new();
    for d in entries {
        if d.d_tag(endian) as u32 == elf::DT_NEEDED {
            let name = d.string(endian, strings)?;
            needed.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(needed)
}

/// Moves the debug info of `exe` into `exe.debug`, links it back by .gnu_debuglink and
/// strips `exe`.
fn split_debug(exe: &Path) -> Result<()> {
    let debug = exe.with_extension("debug");
    sh::run(
        sh::cmd("objcopy")
            .arg("--only-keep-debug")
            .arg(exe)
            .arg(&debug),
    )
    .context("objcopy --only-keep-debug failed (binutils)")?;
    sh::run(
        sh::cmd("objcopy")
            .args(["--strip-debug", "--strip-unneeded"])
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(exe),
    )
    .context("objcopy --strip-debug failed")
}
