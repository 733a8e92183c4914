//! The deployment files in deploy/: the DaemonSet manifest against the Kubernetes schemas
//! (kubernetes-validate from PyPI, which ships them; `cargo xtask setup` installs it into
//! `<target dir>/kubernetes-validate`), strictly (an unknown field is an error), and the
//! fields the manifest is there for. The alerting rules are checked in tests/watch.rs.
//! Unprivileged.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const TLS_PROBE: &str = env!("CARGO_BIN_EXE_tls-probe");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validator() -> PathBuf {
    let target = Path::new(TLS_PROBE)
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/tls-probe");
    let bin = target.join("kubernetes-validate/bin/kubernetes-validate");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo xtask setup` (it installs kubernetes-validate from PyPI)",
        bin.display()
    );
    bin
}

fn validate(file: &Path) -> (bool, String) {
    let out = Command::new(validator())
        .arg("--strict")
        .arg(file)
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_daemonset_matches_the_kubernetes_schemas() {
    let manifest = repo().join("deploy/kubernetes/daemonset.yaml");
    let (ok, text) = validate(&manifest);
    assert!(ok, "{text}");
    assert!(text.contains("daemonset/tls-probe-watch"), "{text}");
    // The validator does reject what is wrong: a misspelt field.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&bad, yaml.replace("hostPID: true", "hostPid: true")).unwrap();
    let (ok, text) = validate(&bad);
    assert!(!ok, "a misspelt field passed: {text}");
}

#[test]
fn the_daemonset_has_what_watch_needs() {
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    for needed in [
        "hostPID: true",
        "- BPF",
        "- PERFMON",
        "- SYS_PTRACE",
        "path: /sys/kernel/btf",
        "path: /sys/kernel/tracing",
        "containerPort: 9464",
        "- watch",
    ] {
        assert!(yaml.contains(needed), "{needed} missing from the DaemonSet");
    }
}

#[test]
fn the_deployed_command_lines_parse() {
    // The arguments of the unit and the DaemonSet are ones tls-probe watch takes: --help
    // lists each flag they use.
    let help = Command::new(TLS_PROBE)
        .args(["watch", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/tls-probe-watch.service")).unwrap();
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    for text in [&unit, &yaml] {
        for flag in text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .flat_map(str::split_whitespace)
            .map(|w| w.trim_start_matches("- "))
            .filter(|w| w.starts_with("--") && *w != "---")
        {
            assert!(help.contains(flag), "{flag} is not a watch flag:\n{help}");
        }
    }
}
