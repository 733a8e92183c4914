//! `cargo xtask dist`'s tarball: its tls-probe links no libssl or libcrypto (DT_NEEDED, read
//! with readelf), says its version and commit, and, unpacked somewhere else, attaches to a
//! real `openssl s_client` talking to `openssl s_server` and sees its TLS calls.
//!
//! Runs `cargo xtask dist --skip-setup` (a release build: minutes the first time).

use std::{path::PathBuf, process::Command, time::Duration};

use common::{Attached, Proc, events, s_server_rev};

use crate::common;

/// Builds the tarball and unpacks it into `dir`; returns the unpacked directory.
fn unpacked(dir: &std::path::Path) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .args(["xtask", "dist", "--skip-setup"])
        .current_dir(&root)
        .output()
        .expect("running cargo xtask dist");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo xtask dist: {}: {stderr}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tarball = PathBuf::from(stdout.lines().last().expect("the tarball's path").trim());
    assert!(
        tarball.is_file(),
        "no tarball at {}: {stderr}",
        tarball.display()
    );
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("running tar");
    assert!(status.success(), "tar -xzf {}", tarball.display());
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .expect("NAME.tar.gz");
    dir.join(name)
}

#[test]
fn dist_binary_links_no_openssl_and_attaches_to_s_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unpacked = unpacked(dir.path());
    let exe = unpacked.join("tls-probe");
    for f in [
        "tls-probe-scenarios",
        "man/tls-probe.1",
        "completions/tls-probe.bash",
    ] {
        assert!(unpacked.join(f).is_file(), "no {f} in the tarball");
    }

    let dynamic = Command::new("readelf")
        .arg("-d")
        .arg(&exe)
        .output()
        .expect("running readelf -d (binutils)");
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.strip_suffix(']'))
        .collect();
    assert!(needed.contains(&"libc.so.6"), "readelf -d: {dynamic}");
    assert!(
        !needed
            .iter()
            .any(|l| l.starts_with("libssl") || l.starts_with("libcrypto")),
        "DT_NEEDED {needed:?}"
    );
    let sections = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(&exe)
        .output()
        .expect("readelf -S");
    let sections = String::from_utf8_lossy(&sections.stdout);
    assert!(
        !sections.contains(".debug_info"),
        "tls-probe is not stripped"
    );
    assert!(
        sections.contains(".gnu_debuglink"),
        "no link to its debug info"
    );

    let version = Command::new(&exe)
        .arg("--version")
        .output()
        .expect("--version");
    let version = String::from_utf8_lossy(&version.stdout);
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git rev-parse");
    let head = String::from_utf8_lossy(&head.stdout);
    assert_eq!(
        version.trim(),
        format!(
            "tls-probe {} (commit {})",
            env!("CARGO_PKG_VERSION"),
            head.trim()
        )
    );

    // The unpacked binary, far from the build tree, on a real OpenSSL pair.
    let (_server, port) = s_server_rev(dir.path());
    let mut client = Proc::spawn(Command::new("sh").args([
        "-c",
        &format!("read go; exec openssl s_client -nbio -connect 127.0.0.1:{port}"),
    ]));
    let libssl = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    let probe = Attached::start_exe(&exe, dir.path(), client.pid(), &["--libssl", libssl]);
    client.send_line("go");
    client.read_until("CONNECTED(...)", |l| {
        l.strip_prefix("CONNECTED(").map(|_| ())
    });
    // One line at a time: the next goes once the server's reversed echo of this one is back.
    for i in 0..5 {
        client.send_line(&format!("hello {i}"));
        let echo = format!("{i} olleh");
        client.read_until(&format!("the echo {echo:?}"), |l| {
            l.contains(&echo).then_some(())
        });
    }
    client.close_stdin();
    client.wait_exit("s_client to exit on EOF", Duration::from_secs(20));
    let records = probe.finish(Duration::from_secs(30));
    let handshakes =
        events(&records, "SSL_do_handshake").len() + events(&records, "SSL_connect").len();
    let reads = events(&records, "SSL_read");
    eprintln!(
        "dist tls-probe ({needed:?}): {} SSL_read, {} SSL_write, {handshakes} handshake calls",
        reads.len(),
        events(&records, "SSL_write").len()
    );
    assert!(
        reads.iter().any(|r| r["bytes"].as_u64() > Some(0)),
        "s_client read the server's replies"
    );
    assert!(!events(&records, "SSL_write").is_empty());
}
