//! Targets whose TLS library arrives after attach: a Python process that imports `ssl`
//! (dlopen of libssl) only when told to, and a shell that execs `openssl s_client`. Both are
//! attached with `--wait-for-library` and join the run as `target_attach` records.

use std::{path::Path, process::Command, time::Duration};

use common::{Attached, Proc, cert, free_port, s_server_rev, wait_for, wait_listening};
use serde_json::Value;

use crate::common;

/// Waits until the output being written holds a line satisfying `f`; returns it parsed.
fn wait_line(path: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(30), || {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| f(v))
    })
}

fn attached(v: &Value, pid: u32, cause: &str) -> bool {
    v["type"] == "target_attach" && v["data"]["pid"] == pid && v["data"]["cause"] == cause
}

fn ssl_write(v: &Value, pid: u32, bytes: u64) -> bool {
    v["type"] == "event"
        && v["data"]["pid"] == pid
        && v["data"]["kind"] == "ssl_call"
        && v["data"]["op"]
            .as_str()
            .is_some_and(|o| o.starts_with("SSL_write"))
        && v["data"]["bytes"] == bytes
}

#[test]
fn python_that_imports_ssl_later_is_attached_when_libssl_is_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = s_server_rev(dir.path());
    let script = format!(
        r#"
import sys, socket
print("READY", flush=True)
sys.stdin.readline()
import ssl
print("LOADED", flush=True)
sys.stdin.readline()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})))
s.sendall(b"late loaded\n")
print("REPLY", s.recv(100).decode().strip(), flush=True)
sys.stdin.readline()
"#
    );
    let mut py = Proc::spawn(Command::new("python3").args(["-c", &script]));
    py.read_until("python to start", |l| (l == "READY").then_some(()));
    let pid = py.pid();
    assert!(
        !std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .unwrap()
            .contains("libssl"),
        "python mapped libssl before import ssl"
    );
    let probe = Attached::start(dir.path(), pid, &["--no-tui", "--wait-for-library"]);
    let text = std::fs::read_to_string(&probe.output).unwrap();
    let start: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(start["data"]["targets"], Value::Array(vec![]), "{start}");
    py.send_line("import");
    py.read_until("import ssl", |l| (l == "LOADED").then_some(()));
    let rec = wait_line(&probe.output, "target_attach library_loaded", |v| {
        attached(v, pid, "library_loaded")
    });
    assert!(
        rec["data"]["library_path"]
            .as_str()
            .unwrap()
            .contains("libssl.so.3"),
        "{rec}"
    );
    py.send_line("connect");
    py.read_until("the reply", |l| l.starts_with("REPLY").then_some(()));
    // The handshake and the write of the first connection after the load are seen.
    wait_line(&probe.output, "the SSL_write_ex of 12 bytes", |v| {
        ssl_write(v, pid, 12)
    });
    py.close_stdin();
    let records = probe.finish(Duration::from_secs(60));
    let sum = &records.last().unwrap()["data"];
    assert_eq!(sum["stop_reason"], "targets_exited", "{sum}");
}

#[test]
fn a_shell_that_execs_a_tls_client_is_attached_on_exec() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = s_server_rev(dir.path());
    let mut sh = Proc::spawn(Command::new("sh").args([
        "-c",
        &format!("echo READY; read x; exec openssl s_client -quiet -connect 127.0.0.1:{port}"),
    ]));
    sh.read_until("sh to start", |l| (l == "READY").then_some(()));
    let pid = sh.pid();
    let probe = Attached::start(dir.path(), pid, &["--no-tui", "--wait-for-library"]);
    sh.send_line("go");
    let rec = wait_line(&probe.output, "target_attach exec", |v| {
        attached(v, pid, "exec")
    });
    assert_eq!(rec["data"]["comm"], "openssl", "{rec}");
    sh.send_line("after exec");
    sh.read_until("the reply", |l| (l == "cexe retfa").then_some(()));
    wait_line(&probe.output, "the SSL_write of 11 bytes", |v| {
        ssl_write(v, pid, 11)
    });
    let records = probe.interrupt(Duration::from_secs(60));
    let sum = &records.last().unwrap()["data"];
    assert_eq!(sum["stop_reason"], "signal", "{sum}");
}

#[test]
fn a_target_waiting_for_its_library_that_exits_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut sh = Proc::spawn(Command::new("sh").args(["-c", "echo READY; read x"]));
    sh.read_until("sh to start", |l| (l == "READY").then_some(()));
    let pid = sh.pid();
    let probe = Attached::start(dir.path(), pid, &["--no-tui", "--wait-for-library"]);
    sh.close_stdin();
    let records = probe.finish(Duration::from_secs(30));
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "target_exit" && r["data"]["pid"] == pid),
        "no target_exit"
    );
}

/// A thread that dies inside SSL_read_ex (another thread calls exit) never runs the return
/// probe: the exit tracepoint deletes the call it left in the kernel's per-thread maps and
/// says so (`cleared`), and the process's exit is reported at once (the `target_exit` has
/// the time of the last thread's exit, not of the next once-a-second look).
#[test]
fn a_thread_that_dies_inside_ssl_read_leaves_no_state_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (key, crt) = cert(dir.path());
    let port = free_port();
    // A server that never answers: its stdin stays open and nothing is typed.
    let _server = Proc::spawn(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-key")
            .arg(&key)
            .arg("-cert")
            .arg(&crt),
    );
    wait_listening(port);
    let script = format!(
        r#"
import sys, socket, ssl, threading, os
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {port})))
print("READY", flush=True)
sys.stdin.readline()
def reader():
    print("TID", threading.get_native_id(), flush=True)
    s.recv(100)
threading.Thread(target=reader).start()
sys.stdin.readline()
os._exit(0)
"#
    );
    let mut py = Proc::spawn(Command::new("python3").args(["-c", &script]));
    py.read_until("python to connect", |l| (l == "READY").then_some(()));
    let pid = py.pid();
    let probe = Attached::start(dir.path(), pid, &["--no-tui"]);
    py.send_line("read");
    let tid: u32 = py.read_until("the reader's tid", |l| {
        l.strip_prefix("TID ").and_then(|t| t.parse().ok())
    });
    // Blocked in the socket read inside SSL_read_ex: read(2) or recvfrom(2).
    wait_for(
        "the reader to block in a read",
        Duration::from_secs(10),
        || {
            let sc = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
            matches!(sc.split_whitespace().next(), Some("0" | "45")).then_some(())
        },
    );
    py.send_line("exit");
    let records = probe.finish(Duration::from_secs(60));
    let exits: Vec<&Value> = records
        .iter()
        .filter(|r| r["type"] == "event" && r["data"]["kind"] == "task_exit")
        .map(|r| &r["data"])
        .collect();
    let reader = exits
        .iter()
        .find(|e| e["tid"] == tid)
        .unwrap_or_else(|| panic!("no task_exit for the reader {tid}: {exits:?}"));
    assert!(
        reader["cleared"].as_u64().unwrap() >= 1,
        "the SSL_read_ex it died in was not cleared: {reader}"
    );
    let last: Vec<&&Value> = exits.iter().filter(|e| e["group_dead"] == true).collect();
    assert_eq!(last.len(), 1, "{exits:?}");
    let target_exit = records
        .iter()
        .find(|r| r["type"] == "target_exit" && r["data"]["pid"] == pid)
        .expect("a target_exit");
    assert_eq!(
        target_exit["data"]["ts_ns"], last[0]["ts_ns"],
        "not reported at once"
    );
}
