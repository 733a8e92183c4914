//! Finding targets: `tls-probe run -- CMD` (the command held before exec, so its first
//! handshake is seen), `attach --comm NAME`, two tls-probe instances on one process,
//! OpenSSL linked statically into node, and bad input (exit code, message, no panic).

use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::{
    Attached, Proc, TLS_PROBE, cert, events, free_port, read_ndjson, s_server_rev, wait_for,
    wait_listening,
};
use serde_json::Value;

use crate::common;

/// Runs tls-probe with `args`, stdin closed, and returns what it did.
fn tls_probe(args: &[&str]) -> Output {
    Command::new(TLS_PROBE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running tls-probe")
}

/// tls-probe refused `args` with `code` and a message containing `needle`, without a panic.
fn refused(args: &[&str], code: i32, needle: &str) {
    let out = tls_probe(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: wanted {needle:?} in: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{args:?} panicked: {stderr}"
    );
}

fn ssl_calls(records: &[Value], pid: u32) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "event" && r["data"]["kind"] == "ssl_call")
        .map(|r| &r["data"])
        .filter(|d| d["pid"] == pid)
        .collect()
}

#[test]
fn run_sees_the_first_handshake_and_passes_the_exit_status_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = s_server_rev(dir.path());
    let out = dir.path().join("run.ndjson");
    // s_client sends one line and closes at the end of its stdin (no -quiet: that would
    // ignore the end).
    let mut probe = Proc::spawn(
        Command::new(TLS_PROBE)
            .args(["run", "--no-tui", "--events", "-o"])
            .arg(&out)
            .args(["--", "openssl", "s_client", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stderr(Stdio::inherit()),
    );
    probe.send_line("hello");
    probe.close_stdin();
    let status = probe.wait_exit(
        "tls-probe run to end with s_client",
        Duration::from_secs(90),
    );
    assert_eq!(status.code(), Some(0), "s_client exits 0");
    let records = read_ndjson(&out);
    let target = &records[0]["data"]["targets"][0];
    assert_eq!(target["comm"], "openssl", "{target}");
    assert!(
        target["library_path"]
            .as_str()
            .unwrap()
            .contains("libssl.so.3")
    );
    let pid = target["pid"].as_u64().unwrap() as u32;
    // The connection was made after the probes were in place: its connect, and the first
    // SSL call, which does the handshake (dozens of socket syscalls inside it).
    let peers: Vec<_> = events(&records, "connect")
        .into_iter()
        .filter(|d| d["pid"] == pid && d["addr"] == format!("127.0.0.1:{port}"))
        .collect();
    assert_eq!(peers.len(), 1, "the connect of s_client: {peers:?}");
    let calls = ssl_calls(&records, pid);
    let first = calls.first().expect("SSL calls of s_client");
    assert!(
        first["sys_calls"].as_u64().unwrap() >= 4,
        "the first call does the handshake: {first}"
    );
    assert_eq!(first["fd"], peers[0]["fd"], "{first}");
    let sum = &records.last().unwrap()["data"];
    assert_eq!(sum["stop_reason"], "targets_exited", "{sum}");
    assert!(
        calls
            .iter()
            .any(|c| c["op"] == "SSL_write" && c["bytes"] == 6),
        "hello\\n written: {calls:?}"
    );

    // The exit status passes through: a code, or 128 + the signal.
    let dir2 = dir.path().join("x");
    std::fs::create_dir(&dir2).unwrap();
    let run = |script: &str| {
        Command::new(TLS_PROBE)
            .current_dir(&dir2)
            .args(["run", "--no-tui", "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("tls-probe run")
    };
    let out = run("exit 3");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = run("kill -TERM $$");
    assert_eq!(out.status.code(), Some(128 + 15), "{out:?}");

    // tls-probe stops first: after --duration it waits for the command's own end...
    let out = Command::new(TLS_PROBE)
        .current_dir(&dir2)
        .args(["run", "--no-tui", "--duration", "0.5", "--"])
        .args(["sh", "-c", "sleep 2; exit 4"])
        .stdin(Stdio::null())
        .output()
        .expect("tls-probe run");
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("waiting for"),
        "{out:?}"
    );
    // ...and on SIGTERM it stops the command with SIGTERM.
    let mut probe = Proc::spawn(
        Command::new(TLS_PROBE)
            .current_dir(&dir2)
            .args(["run", "--no-tui", "--", "sleep", "60"]),
    );
    let sleeper = wait_for("the command to run", Duration::from_secs(30), || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            (ppid == probe.pid() && comm.trim() == "sleep" && exe.ends_with("sleep")).then_some(pid)
        })
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(probe.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = probe.wait_exit("tls-probe run to stop", Duration::from_secs(60));
    assert_eq!(status.code(), Some(128 + 15), "the command got SIGTERM");
    assert!(!std::path::Path::new(&format!("/proc/{sleeper}/exe")).exists());
}

#[test]
fn run_refuses_what_it_cannot_run() {
    refused(
        &["run", "--", "no-such-command-x9"],
        1,
        "cannot run no-such-command-x9",
    );
    refused(&["run"], 2, "<CMD>");
    refused(
        &["run", "--libssl", "/etc/hostname", "--", "true"],
        1,
        "--libssl /etc/hostname: not an ELF file",
    );
}

#[test]
fn attach_by_command_name() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of openssl under a name no other process on the machine has.
    let name = format!("osslc{}", std::process::id() % 100_000);
    let exe = dir.path().join(&name);
    std::fs::copy("/usr/bin/openssl", &exe).unwrap();
    let (key, crt) = cert(dir.path());
    let port = free_port();
    let server = Proc::spawn(
        Command::new(&exe)
            .args(["s_server", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-key")
            .arg(&key)
            .arg("-cert")
            .arg(&crt),
    );
    wait_listening(port);
    let out = dir.path().join("comm.ndjson");
    let probe = tls_probe(&[
        "attach",
        "--comm",
        &name,
        "--no-tui",
        "--duration",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(probe.status.success(), "{probe:?}");
    let records = read_ndjson(&out);
    let pids: Vec<u64> = records[0]["data"]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids, [u64::from(server.pid())]);
    assert_eq!(records[0]["data"]["targets"][0]["comm"], name);

    refused(
        &["attach", "--comm", "no-such-process-x9"],
        1,
        "no process named no-such-process-x9",
    );
}

#[test]
fn nonsensical_flags_are_refused() {
    refused(&["attach", "--pid", "0"], 2, "0 is not in 1..");
    refused(
        &["attach", "--pid", "1", "--duration", "0"],
        2,
        "positive number of seconds",
    );
    refused(
        &["attach", "--pid", "1", "--duration", "-3"],
        2,
        "positive number of seconds",
    );
    refused(&["attach", "--comm", ""], 2, "a value is required");
    refused(&["attach"], 2, "--pid");
    refused(
        &["attach", "--pid", "999999999"],
        1,
        "no process with pid 999999999",
    );
}

/// A pid taken while the program is still its launcher (a pyenv shim is a bash script that
/// execs python): the error says how to attach anyway.
#[test]
fn a_process_still_starting_gets_told_to_wait() {
    let shim = Proc::spawn(Command::new("bash").args(["-c", "sleep 30; exit 0"]));
    let pid = shim.pid().to_string();
    for needle in [
        "no TLS library found in pid",
        "--wait-for-library",
        "tls-probe run -- CMD",
        "--libssl PATH",
    ] {
        refused(&["attach", "--pid", &pid, "--duration", "1"], 1, needle);
    }
}

#[test]
fn two_instances_on_one_process_see_the_same_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = s_server_rev(dir.path());
    let mut client = Proc::spawn(
        Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{port}")),
    );
    client.send_line("warm");
    client.read_until("the first reply", |l| (l == "mraw").then_some(()));
    let pid = client.pid();
    let a = Attached::start(dir.path(), pid, &["--no-tui"]);
    let b_dir = dir.path().join("b");
    std::fs::create_dir(&b_dir).unwrap();
    let b = Attached::start(&b_dir, pid, &["--no-tui"]);
    const LINES: usize = 7;
    for i in 0..LINES {
        client.send_line(&format!("line{i}"));
        client.read_until("a reply", |l| l.ends_with("enil").then_some(()));
    }
    let writes = |path: &Path| {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"op\":\"SSL_write\"") && l.contains("\"bytes\":6"))
            .count()
    };
    for out in [&a.output, &b.output] {
        wait_for(
            "both instances to record the writes",
            Duration::from_secs(30),
            || (writes(out) >= LINES).then_some(()),
        );
    }
    let ra = a.interrupt(Duration::from_secs(60));
    let rb = b.interrupt(Duration::from_secs(60));
    let count = |r: &[Value], op: &str| {
        ssl_calls(r, pid)
            .iter()
            .filter(|c| c["op"] == op && c["bytes"].as_u64() > Some(0))
            .count()
    };
    assert_eq!(count(&ra, "SSL_write"), LINES);
    assert_eq!(count(&rb, "SSL_write"), LINES);
    assert_eq!(count(&ra, "SSL_read"), count(&rb, "SSL_read"));
    assert!(count(&ra, "SSL_read") >= LINES);
}

/// node links OpenSSL statically and exports SSL_*; its TLS goes through memory BIOs, so
/// no socket syscall happens inside SSL_read/SSL_write: each SSL* is tied to its socket
/// from the socket I/O around its calls, never to a wrong one.
#[test]
fn node_static_openssl_per_ssl_calls_over_memory_bios() {
    let dir = tempfile::tempdir().unwrap();
    let (key, crt) = cert(dir.path());
    // One process: a TLS echo server and a client that sends a line per stdin line.
    let script = r#"
const tls = require('tls'), fs = require('fs'), readline = require('readline');
const [key, cert] = [fs.readFileSync(process.argv[1]), fs.readFileSync(process.argv[2])];
const srv = tls.createServer({key, cert}, s => s.on('data', d => s.write(d)));
srv.listen(0, '127.0.0.1', () => {
  const c = tls.connect({port: srv.address().port, host: '127.0.0.1', rejectUnauthorized: false}, () => {
    console.log('READY');
    const rl = readline.createInterface({input: process.stdin});
    rl.on('line', l => c.write(l + '\n'));
    rl.on('close', () => { c.end(); srv.close(); });
  });
  c.on('data', d => console.log('ECHO ' + d.toString().trim()));
});
"#;
    let mut node = Proc::spawn(
        Command::new("node")
            .args(["-e", script])
            .arg(&key)
            .arg(&crt),
    );
    node.read_until("node's client to connect", |l| (l == "READY").then_some(()));
    let pid = node.pid();
    let probe = Attached::start(dir.path(), pid, &["--no-tui"]);
    let start = read_ndjson_prefix(&probe.output);
    let target = &start["data"]["targets"][0];
    assert_eq!(target["library_path"], "/usr/bin/node", "{target}");
    const LINES: usize = 5;
    for i in 0..LINES {
        node.send_line(&format!("msg{i}"));
        node.read_until("the echo", |l| l.starts_with("ECHO").then_some(()));
    }
    let out = probe.output.clone();
    wait_for(
        "node's SSL calls in the output",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&out).ok()?;
            (text.matches("\"op\":\"SSL_write").count() >= 2 * LINES).then_some(())
        },
    );
    let records = probe.interrupt(Duration::from_secs(60));
    let calls = ssl_calls(&records, pid);
    let writes: Vec<_> = calls
        .iter()
        .filter(|c| c["op"].as_str().unwrap().starts_with("SSL_write") && c["bytes"] == 5)
        .collect();
    // Each line is written by the client and echoed by the server: two SSL* objects.
    assert_eq!(writes.len(), 2 * LINES, "{writes:?}");
    let ssls: std::collections::BTreeSet<u64> =
        writes.iter().map(|c| c["ssl"].as_u64().unwrap()).collect();
    assert_eq!(ssls.len(), 2, "client and server SSL*: {ssls:?}");
    // Memory BIOs: no socket syscall inside the calls, yet each SSL* is tied to its own
    // socket from the socket I/O its thread makes around them (tests/it/memory_bio.rs and
    // tests/it/node.rs check the fds against the ones the programs report).
    let mut fd_of = std::collections::BTreeMap::new();
    for c in &calls {
        assert_eq!(c["sys_calls"], 0, "{c}");
        if let Some(fd) = c["fd"].as_i64() {
            let ssl = c["ssl"].as_u64().unwrap();
            let prev = fd_of.insert(ssl, fd);
            assert!(
                prev.is_none_or(|p| p == fd),
                "SSL* {ssl:#x} on two fds: {c}"
            );
        }
    }
    // Attached after the handshakes: an SSL*'s first write comes before its first tie
    // (the socket write that follows it); every other write carries its fd.
    let without: Vec<_> = writes.iter().filter(|w| !w["fd"].is_i64()).collect();
    assert!(without.len() <= 2, "writes without their fd: {without:#?}");
    assert_eq!(fd_of.len(), 2, "{fd_of:?}");
    let fds: std::collections::BTreeSet<i64> = fd_of.values().copied().collect();
    assert_eq!(fds.len(), 2, "client and server on two sockets: {fd_of:?}");
    for fd in fds {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert!(
            link.to_string_lossy().starts_with("socket:"),
            "fd {fd} is {link:?}"
        );
    }
}

/// The first line of an output being written.
fn read_ndjson_prefix(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// A C client with OpenSSL linked in statically (libssl.a + libcrypto.a), built here with
/// gcc and started with `tls-probe run`: no libssl in its maps, the probes go on the
/// executable itself, the handshake (SSL_connect, with its key operations from the same
/// file) and each SSL_write/SSL_read are seen with the socket's fd.
#[test]
fn static_openssl_c_client_under_run() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = s_server_rev(dir.path());
    let exe = dir.path().join("static_client");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/static_client.c");
    let status = Command::new("gcc")
        .args(["-O1", "-o"])
        .arg(&exe)
        .args([
            src,
            "/usr/lib/x86_64-linux-gnu/libssl.a",
            "/usr/lib/x86_64-linux-gnu/libcrypto.a",
            "-lpthread",
            "-ldl",
        ])
        .status()
        .expect("running gcc");
    assert!(status.success(), "gcc failed");
    let out = dir.path().join("static.ndjson");
    let mut probe = Proc::spawn(
        Command::new(TLS_PROBE)
            .args(["run", "--no-tui", "--events", "-o"])
            .arg(&out)
            .arg("--")
            .arg(&exe)
            .arg(port.to_string())
            .stderr(Stdio::inherit()),
    );
    let fd: i64 = probe.read_until("the client to connect", |l| {
        l.strip_prefix("READY ").and_then(|f| f.parse().ok())
    });
    const LINES: usize = 3;
    for i in 0..LINES {
        probe.send_line(&format!("static{i}"));
        probe.read_until("a reply", |l| l.starts_with("REPLY").then_some(()));
    }
    probe.close_stdin();
    let status = probe.wait_exit("tls-probe run to end", Duration::from_secs(90));
    assert_eq!(status.code(), Some(0));
    let records = read_ndjson(&out);
    let target = &records[0]["data"]["targets"][0];
    assert_eq!(target["library_path"], exe.to_str().unwrap(), "{target}");
    let pid = target["pid"].as_u64().unwrap() as u32;
    let calls = ssl_calls(&records, pid);
    let connect = calls
        .iter()
        .find(|c| c["op"] == "SSL_connect")
        .unwrap_or_else(|| panic!("no SSL_connect in {calls:?}"));
    assert_eq!(connect["ret"], 1, "{connect}");
    assert!(connect["key_ops"].as_u64().unwrap() >= 1, "{connect}");
    let writes: Vec<_> = calls
        .iter()
        .filter(|c| c["op"] == "SSL_write" && c["bytes"] == 8)
        .collect();
    assert_eq!(writes.len(), LINES, "{calls:?}");
    for c in &calls {
        assert_eq!(c["fd"], fd, "{c}");
    }
}

/// The per-call probes move to the emulated first instruction of the function that each
/// read/write/peek pair calls (probe/placement.rs), in this system's libssl 3 and in node,
/// which links OpenSSL into its executable.
#[test]
fn the_per_call_probes_sit_on_the_shared_callees() {
    use tls_probe::probe::placement::Placement;
    let pairs = [
        vec!["SSL_read", "SSL_read_ex"],
        vec!["SSL_write", "SSL_write_ex"],
        vec!["SSL_peek", "SSL_peek_ex"],
    ];
    let placement = Placement::of_file(&find_system_libssl());
    let moved: Vec<_> = placement
        .sites
        .iter()
        .map(|s| s.functions.clone())
        .collect();
    assert_eq!(moved, pairs, "{placement:#?}");
    // node's OpenSSL has the internal functions inlined, and its functions start with
    // `push %rbp` (frame pointers): the probes stay on the entries, emulated already.
    let node = Placement::of_file(Path::new("/usr/bin/node"));
    assert!(node.sites.is_empty(), "{node:#?}");
    assert_eq!(node.emulated_entries, pairs.concat(), "{node:#?}");
}

/// The libssl.so.3 the dynamic linker finds.
fn find_system_libssl() -> std::path::PathBuf {
    let out = Command::new("ldconfig")
        .arg("-p")
        .output()
        .expect("ldconfig -p");
    let text = String::from_utf8_lossy(&out.stdout);
    let path = text
        .lines()
        .find(|l| l.trim_start().starts_with("libssl.so.3 ") && l.contains("x86-64"))
        .and_then(|l| l.rsplit("=> ").next())
        .expect("no libssl.so.3 in `ldconfig -p`");
    path.trim().into()
}
