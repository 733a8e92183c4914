//! A target in another mount namespace (a container's view of the filesystem): its libssl
//! sits at a path that exists only inside the namespace, so discovery must resolve it
//! through /proc/PID/root, and the uprobes must still fire.

use std::{path::Path, process::Command, time::Duration};

use common::{Attached, Proc, s_server_rev, wait_for};
use serde_json::Value;

use crate::common;

#[test]
fn libssl_seen_only_inside_a_mount_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = s_server_rev(dir.path());

    // Empty on the host; inside the client's namespace a tmpfs holding copies of the
    // system libssl and libcrypto (other inodes than the host's) is mounted over it.
    let nslib = dir.path().join("nslib");
    std::fs::create_dir(&nslib).unwrap();
    let nslib = nslib.to_str().unwrap().to_owned();
    let script = format!(
        "mount -t tmpfs none {nslib} && \
         cp /usr/lib/x86_64-linux-gnu/libssl.so.3 /usr/lib/x86_64-linux-gnu/libcrypto.so.3 {nslib}/ && \
         exec env LD_LIBRARY_PATH={nslib} openssl s_client -quiet -connect 127.0.0.1:{port}"
    );
    let mut client = Proc::spawn(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script),
    );
    client.send_line("warm");
    client.read_until("the first reply", |l| (l == "mraw").then_some(()));
    let pid = client.pid();
    let inside = format!("{nslib}/libssl.so.3");
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(maps.contains(&inside), "the client maps {inside}:\n{maps}");
    assert!(
        !Path::new(&inside).exists(),
        "{inside} must not exist outside the namespace"
    );

    let a = Attached::start(dir.path(), pid, &["--no-tui"]);
    let start: Value = serde_json::from_str(
        std::fs::read_to_string(&a.output)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let target = &start["data"]["targets"][0];
    let path = target["library_path"].as_str().unwrap_or_default();
    assert!(path.contains(&inside), "library_path {path:?}: {start}");
    const LINES: usize = 5;
    for i in 0..LINES {
        client.send_line(&format!("line{i}"));
        client.read_until("a reply", |l| l.ends_with("enil").then_some(()));
    }
    let writes = |out: &Path| {
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"op\":\"SSL_write\"") && l.contains("\"bytes\":6"))
            .count()
    };
    wait_for(
        "the writes inside the namespace",
        Duration::from_secs(30),
        || (writes(&a.output) >= LINES).then_some(()),
    );
    let records = a.interrupt(Duration::from_secs(60));
    let n = records
        .iter()
        .filter(|r| {
            r["type"] == "event"
                && r["data"]["kind"] == "ssl_call"
                && r["data"]["pid"] == pid
                && r["data"]["op"] == "SSL_write"
                && r["data"]["bytes"] == 6
        })
        .count();
    assert_eq!(n, LINES, "SSL_writes of 6 bytes");
}
