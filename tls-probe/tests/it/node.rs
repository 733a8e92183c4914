//! node: OpenSSL linked into the executable (its symbols exported), TLS over memory BIOs,
//! handshakes driven through SSL_read (`SSL_set_accept_state`/`SSL_set_connect_state`, then
//! SSL_read runs OpenSSL's state machine, `ossl_statem_accept`/`ossl_statem_connect`, which
//! node exports and tls-probe probes once per handshake step). A real node https server and
//! client (tests/peers/node_tls.js) report their own sockets' fds and peers; the tests
//! compare.

use std::{
    collections::HashMap,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Attached, Proc, cert, cert_bits, wait_for};
use scenario_common::{describe, opened, records_so_far};
use serde_json::Value;
use ties::{
    assert_no_disagreements, check_call_fds, check_schema, check_table, conn_lines, own_side,
    server_side, ssl_calls, tagged,
};

use crate::{
    common,
    common::{scenario as scenario_common, ties},
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/node_tls.js");

/// The node https server with the key and certificate in `dir`: (process, port).
fn node_server(dir: &Path, delay_ms: u32) -> (Proc, u16) {
    let (key, crt) = (dir.join("key.pem"), dir.join("cert.pem"));
    let mut p = Proc::spawn(
        Command::new("node")
            .arg(SCRIPT)
            .arg("server")
            .arg(&crt)
            .arg(&key)
            .arg(delay_ms.to_string()),
    );
    let ready = p.read_until("the server's READY line", |l| tagged(l, "READY"));
    (p, ready["port"].as_u64().unwrap() as u16)
}

/// The keep-alive client, waiting for "go".
fn node_client(port: u16, conns: u32, rounds: u32) -> Proc {
    let mut p = Proc::spawn(Command::new("node").arg(SCRIPT).args([
        "client",
        &port.to_string(),
        &conns.to_string(),
        &rounds.to_string(),
    ]));
    p.read_until("the client's WAITING line", |l| tagged(l, "WAITING"));
    p
}

/// SSL* -> connection index: connection i's requests (client) and answers (server) are i
/// bytes longer than connection 0's, so its shortest SSL_write is.
fn conn_of_ssl(calls: &[&Value], conns: u64) -> HashMap<u64, u64> {
    let mut shortest: HashMap<u64, u64> = HashMap::new();
    for c in calls.iter().filter(|c| c["probe"] == "SSL_write") {
        let len = c["len"].as_u64().unwrap();
        let e = shortest.entry(c["ssl"].as_u64().unwrap()).or_insert(len);
        *e = (*e).min(len);
    }
    let base = shortest.values().min().copied().expect("no SSL_write");
    let map: HashMap<u64, u64> = shortest.iter().map(|(s, l)| (*s, l - base)).collect();
    let mut idx: Vec<u64> = map.values().copied().collect();
    idx.sort_unstable();
    assert_eq!(
        idx,
        (0..conns).collect::<Vec<_>>(),
        "one SSL* per connection, told apart by write length: {shortest:?}"
    );
    map
}

#[test]
fn node_client_calls_carry_their_socket_fd_and_peer_in_full_mode() {
    const CONNS: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    cert(dir.path());
    let (_server, port) = node_server(dir.path(), 40);
    let mut client = node_client(port, CONNS, 60);
    let probe = Attached::start(dir.path(), client.pid(), &[]);
    client.send_line("go");
    let conns = conn_lines(&mut client, CONNS as usize, "the client");
    client.read_until("the client's DONE line", |l| tagged(l, "DONE"));
    assert!(
        client
            .wait_exit("the client", Duration::from_secs(30))
            .success()
    );
    let records = probe.finish(Duration::from_secs(30));
    check_schema(&records);
    assert_no_disagreements(&records);

    let conns = own_side(&conns);
    let calls = ssl_calls(&records);
    let conn_of = conn_of_ssl(&calls, u64::from(CONNS));
    let (right, total) = check_call_fds(&calls, &conn_of, &conns, 0.99);
    assert!(total > 3 * 60 * 2, "{total} SSL calls");
    eprintln!("node client: {right} of {total} SSL calls carry their socket's fd");
    check_table(&records, &conn_of, &conns);
}

#[test]
fn node_server_calls_carry_their_socket_fd_and_peer_in_full_mode() {
    const CONNS: u32 = 3;
    let dir = tempfile::tempdir().unwrap();
    cert(dir.path());
    let (mut server, port) = node_server(dir.path(), 40);
    let probe = Attached::start(dir.path(), server.pid(), &[]);
    let mut client = node_client(port, CONNS, 60);
    client.send_line("go");
    let client_conns = conn_lines(&mut client, CONNS as usize, "the client");
    client.read_until("the client's DONE line", |l| tagged(l, "DONE"));
    assert!(
        client
            .wait_exit("the client", Duration::from_secs(30))
            .success()
    );
    let server_conns = conn_lines(&mut server, CONNS as usize, "the server");
    let records = probe.interrupt(Duration::from_secs(30));
    check_schema(&records);
    assert_no_disagreements(&records);

    let conns = server_side(&client_conns, &server_conns);
    let calls = ssl_calls(&records);
    let conn_of = conn_of_ssl(&calls, u64::from(CONNS));
    let (right, total) = check_call_fds(&calls, &conn_of, &conns, 0.99);
    assert!(total > 3 * 60 * 2, "{total} SSL calls");
    eprintln!("node server: {right} of {total} SSL calls carry their socket's fd");
    check_table(&records, &conn_of, &conns);
}

/// The default mode: node's handshakes are seen through the state machine's probes (the
/// per-call probes are off), full and resumed told apart, each step with the socket's fd,
/// the ServerHello read from the loop's own socket write, and the main thread's time share.
#[test]
fn node_server_handshakes_full_and_resumed_in_default_mode() {
    const COUNT: u64 = 20;
    let dir = tempfile::tempdir().unwrap();
    cert(dir.path());
    let (mut server, port) = node_server(dir.path(), 0);
    let pid = server.pid();
    let probe = Attached::start(dir.path(), pid, &["--mode", "auto"]);
    // After the attach window: the per-call probes are off.
    wait_for(
        "a snapshot without per-call probes",
        Duration::from_secs(30),
        || {
            records_so_far(&probe)
                .iter()
                .rev()
                .find(|r| r["type"] == "snapshot")
                .filter(|r| r["data"]["probes"]["processes"][0]["per_call"] == false)
                .map(|_| ())
        },
    );
    let out = Command::new("node")
        .arg(SCRIPT)
        .args(["fresh", &port.to_string(), &COUNT.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("running the node client");
    assert!(out.status.success());
    let done = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| tagged(l, "DONE"))
        .expect("the client's DONE line");
    let resumed = done["resumed"].as_u64().unwrap();
    assert!(
        resumed >= COUNT / 2,
        "node's client resumes its sessions: {done}"
    );
    let server_conns = conn_lines(&mut server, COUNT as usize, "the server");
    let server_fds: Vec<i64> = server_conns
        .iter()
        .map(|c| c["fd"].as_i64().unwrap())
        .collect();
    // Wait for the snapshot that counts them all.
    let records = wait_for(
        "a snapshot counting every handshake",
        Duration::from_secs(30),
        || {
            let r = records_so_far(&probe);
            r.iter()
                .rev()
                .find(|r| r["type"] == "snapshot")
                .filter(|s| {
                    s["data"]["processes"][0]["handshakes"]["completed_total"].as_u64()
                        >= Some(COUNT)
                })
                .map(|_| r.clone())
        },
    );
    drop(probe);
    check_schema(&records);

    let steps: Vec<&Value> = ssl_calls(&records)
        .into_iter()
        .filter(|c| c["probe"] == "ossl_statem_accept")
        .collect();
    assert!(
        steps.len() as u64 >= 2 * COUNT,
        "{} handshake steps",
        steps.len()
    );
    assert!(
        ssl_calls(&records)
            .iter()
            .all(|c| c["probe"] == "ossl_statem_accept"),
        "only the state machine is probed in the default mode"
    );
    for s in &steps {
        let fd = s["fd"]
            .as_i64()
            .unwrap_or_else(|| panic!("a step without fd: {s}"));
        assert!(
            server_fds.contains(&fd),
            "a step on fd {fd}, not a socket: {s}"
        );
    }
    let snap = records
        .iter()
        .rev()
        .find(|r| r["type"] == "snapshot")
        .unwrap();
    let hs = &snap["data"]["processes"][0]["handshakes"];
    assert_eq!(hs["completed_total"].as_u64(), Some(COUNT), "{hs}");
    assert_eq!(hs["resumed_total"].as_u64(), Some(resumed), "{hs}");
    assert_eq!(hs["full_total"].as_u64(), Some(COUNT - resumed), "{hs}");
    assert_eq!(hs["server_hello_total"].as_u64(), Some(COUNT), "{hs}");
    assert_eq!(hs["psk_total"].as_u64(), Some(resumed), "{hs}");
    assert_eq!(hs["tls_versions"][0]["name"], "TLS 1.3", "{hs}");
    // The main thread's time share names the handshakes.
    let main = snap["data"]["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"].as_u64() == Some(u64::from(pid)))
        .expect("the main thread in the snapshot");
    assert!(
        main["handshakes"]["completed_total"].as_u64() >= Some(COUNT),
        "{main}"
    );
}

/// `openssl s_time -new` (a new full handshake per connection, as fast as it can) against a
/// node https server with an RSA-4096 key: its main thread is starved by handshakes, and
/// tls-probe says so in the default mode. (With RSA-2048 node spends ~40% of its main
/// thread in the state machine and ~45% in its own JavaScript per connection: the crypto is
/// not what starves it, and the rule rightly stays quiet.)
#[test]
fn node_server_under_s_time_new_saturates_its_main_thread() {
    let dir = tempfile::tempdir().unwrap();
    cert_bits(dir.path(), 4096);
    let (server, port) = node_server(dir.path(), 0);
    let pid = server.pid();
    let probe = Attached::start(dir.path(), pid, &["--mode", "auto"]);
    let mut s_time = Command::new("openssl")
        .args([
            "s_time",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-new",
            "-time",
            "8",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running openssl s_time");
    let finding = wait_for(
        "a handshake_saturation finding",
        Duration::from_secs(20),
        || {
            opened(&records_so_far(&probe), "handshake_saturation")
                .first()
                .map(|f| (*f).clone())
        },
    );
    let _ = s_time.kill();
    let _ = s_time.wait();
    let records = probe.interrupt(Duration::from_secs(30));
    check_schema(&records);
    assert_eq!(
        finding["pid"].as_u64(),
        Some(u64::from(pid)),
        "{}",
        describe(&records)
    );
    assert_eq!(
        finding["tid"].as_u64(),
        Some(u64::from(pid)),
        "on node's main thread: {}",
        describe(&records)
    );
}

/// A healthy node https server under load (8 keep-alive clients, requests as fast as it
/// answers), in the default mode: no finding at all.
#[test]
fn healthy_node_server_under_load_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    cert(dir.path());
    let (server, port) = node_server(dir.path(), 0);
    let probe = Attached::start(dir.path(), server.pid(), &["--mode", "auto"]);
    let mut client = node_client(port, 8, 1500);
    client.send_line("go");
    client.read_until("the client's DONE line", |l| tagged(l, "DONE"));
    assert!(
        client
            .wait_exit("the client", Duration::from_secs(60))
            .success()
    );
    let records = probe.interrupt(Duration::from_secs(30));
    check_schema(&records);
    assert!(
        scenario_common::changes(&records).is_empty(),
        "a healthy server: {}",
        describe(&records)
    );
    let served = records
        .iter()
        .rev()
        .find(|r| r["type"] == "snapshot")
        .map(|s| s["data"]["processes"][0]["handshakes"]["completed_total"].clone());
    assert_eq!(
        served.and_then(|v| v.as_u64()),
        Some(8),
        "8 connections' handshakes"
    );
}
