//! OpenSSL 1.1.1 as shared libraries (`libssl.so.1.1`, `libcrypto.so.1.1`) and its headers,
//! for tls-probe/tests/openssl11.rs: Debian 12 no longer packages libssl1.1, and issue 9 asks
//! that discovery be proven on it against real processes.
//!
//! Built once from the OpenSSL sources in the `openssl-src` crate on crates.io (the tarball
//! is checked against the crates.io index's SHA-256 below), into `<target dir>/openssl-1.1.1`
//! with `lib/` and `include/`. Only the libraries are built (`build_libs`, `no-tests`): about
//! 100 s on 2 busy cores. A stamp written last marks a finished build; anything else in that
//! directory is wiped and built again.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::sh::{self, cmd};

/// The last release of the 1.1.1 series (1.1.1w), as packaged by the openssl-src crate.
const CRATE_VERSION: &str = "111.28.2+1.1.1w";
/// `cksum` of that version in the crates.io index (index.crates.io/op/en/openssl-src).
const CRATE_SHA256: &str = "bb1830e20a48a975ca898ca8c1d036a36c3c6c5cb7dabc1c216706587857920f";
/// Under the workspace target directory; tls-probe/tests/openssl11.rs looks for it there.
const DIR_NAME: &str = "openssl-1.1.1";
/// Files a finished build has, besides the stamp.
const OUTPUTS: &[&str] = &[
    "lib/libssl.so.1.1",
    "lib/libcrypto.so.1.1",
    "include/openssl/ssl.h",
    "include/openssl/opensslconf.h",
];

/// Whether [`ensure`] has to build it.
pub fn missing() -> bool {
    target_dir().is_ok_and(|d| !is_built(&d.join(DIR_NAME)))
}

/// Builds OpenSSL 1.1.1 unless a finished build of [`CRATE_VERSION`] is already there.
pub fn ensure() -> Result<()> {
    let prefix = target_dir()?.join(DIR_NAME);
    if is_built(&prefix) {
        eprintln!("ok: OpenSSL 1.1.1 shared libraries ({})", prefix.display());
        return Ok(());
    }
    let start = Instant::now();
    eprintln!(
        "building: OpenSSL 1.1.1 shared libraries into {} (for tests/openssl11.rs; once, ~4 min on 2 cores)",
        prefix.display()
    );
    build(&prefix).with_context(|| {
        format!(
            "building OpenSSL 1.1.1 into {} failed; it needs network access to static.crates.io, \
             curl, perl, make and gcc",
            prefix.display()
        )
    })?;
    eprintln!(
        "ok: OpenSSL 1.1.1 shared libraries ({}, built in {})",
        prefix.display(),
        sh::secs(start)
    );
    Ok(())
}

fn stamp(prefix: &Path) -> PathBuf {
    prefix.join(".built-from")
}

fn is_built(prefix: &Path) -> bool {
    fs::read_to_string(stamp(prefix)).is_ok_and(|s| s.trim() == CRATE_VERSION)
        && OUTPUTS.iter().all(|file| prefix.join(file).is_file())
}

/// The workspace's target directory as cargo resolves it (CARGO_TARGET_DIR, config files).
pub fn target_dir() -> Result<PathBuf> {
    let metadata = sh::query(cmd("cargo").args(["metadata", "--format-version", "1", "--no-deps"]))
        .context("`cargo metadata --no-deps` failed")?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("`cargo metadata` printed no JSON")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("`cargo metadata` has no target_directory")
}

fn build(prefix: &Path) -> Result<()> {
    let work = prefix.with_file_name(format!("{DIR_NAME}-build"));
    for dir in [prefix, &work] {
        if dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let tarball = work.join(format!("openssl-src-{CRATE_VERSION}.crate"));
    let url =
        format!("https://static.crates.io/crates/openssl-src/openssl-src-{CRATE_VERSION}.crate");
    sh::run(
        cmd("curl")
            .args(["--fail", "--silent", "--show-error", "--location"])
            .args(["--retry", "3", "--output"])
            .arg(&tarball)
            .arg(&url),
    )?;
    let sum = sh::query(cmd("sha256sum").arg(&tarball)).context("`sha256sum` failed")?;
    let sum = sum.split_whitespace().next().unwrap_or_default();
    if sum != CRATE_SHA256 {
        bail!("{url} has SHA-256 {sum}, but the crates.io index says {CRATE_SHA256}");
    }
    sh::run(cmd("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&work))?;

    let source = work.join(format!("openssl-src-{CRATE_VERSION}/openssl"));
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let log = work.join("build.log");
    logged(
        cmd(source.join("config"))
            .current_dir(&source)
            .args(["shared", "no-tests"])
            .arg(format!("--prefix={}", prefix.display()))
            .arg(format!("--openssldir={}", prefix.join("ssl").display())),
        &log,
    )?;
    logged(
        cmd("make")
            .current_dir(&source)
            .arg(format!("-j{jobs}"))
            .arg("build_libs"),
        &log,
    )?;
    // Headers, the libraries and their pkg-config files; no programs, no manuals.
    logged(cmd("make").current_dir(&source).arg("install_dev"), &log)?;
    if let Some(missing) = OUTPUTS.iter().find(|file| !prefix.join(file).is_file()) {
        bail!(
            "the build finished without {}; see {}",
            prefix.join(missing).display(),
            log.display()
        );
    }
    fs::write(stamp(prefix), format!("{CRATE_VERSION}\n"))?;
    // The sources and objects (~80 MB) are not needed any more.
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(())
}

/// Runs a build step with its (long) output appended to `log`; on failure, shows the end of
/// the log.
fn logged(command: &mut Command, log: &Path) -> Result<()> {
    let shown = sh::display(command);
    eprintln!("+ {shown} >> {}", log.display());
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let status = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .with_context(|| format!("could not start `{shown}`: is it installed and on PATH?"))?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        bail!(
            "`{shown}` failed ({status}); the end of {}:\n{tail}",
            log.display()
        );
    }
    Ok(())
}
