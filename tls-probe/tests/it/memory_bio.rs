//! Memory BIOs: Python's stdlib asyncio (`asyncio.open_connection(..., ssl=ctx)` and
//! `asyncio.start_server(..., ssl=ctx)`, i.e. `ssl.SSLObject` over `MemoryBIO`s) makes its
//! socket `recv`/`send` in the event loop, outside the SSL calls. tls-probe ties each SSL*
//! to its socket from the socket I/O just before or after its calls; these tests compare the
//! fd of every SSL call with the fd the program itself reports
//! (`writer.get_extra_info('socket').fileno()`), and the connections' peers with the
//! addresses it reports.
//!
//! Connection i of the client writes messages of 100 + i bytes (and the server echoes them),
//! so an SSL* is told to be connection i by the length of its SSL_write_ex calls.

use std::{collections::HashMap, path::Path, process::Command, time::Duration};

use common::{Attached, Proc, cert};
use serde_json::Value;
use ties::{
    assert_no_disagreements, check_call_fds, check_schema, check_table, conn_lines, own_side,
    server_side, snapshot_conns, ssl_calls, tagged,
};

use crate::{
    common,
    common::{scenario as scenario_common, ties},
};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/asyncio_tls.py");
const MSG_BASE: u64 = 100;

/// The asyncio echo server, listening: (process, port).
fn asyncio_server(dir: &Path) -> (Proc, u16) {
    let (key, crt) = cert(dir);
    let mut p = Proc::spawn(
        Command::new("python3")
            .arg(SCRIPT)
            .arg("server")
            .arg(&crt)
            .arg(&key),
    );
    let port = p.read_until("the server's READY line", |l| {
        l.strip_prefix("READY ")?.parse().ok()
    });
    (p, port)
}

/// The asyncio client, waiting for "go" on stdin (it is python by then, not the pyenv shim).
fn asyncio_client(port: u16, conns: u32, rounds: u32, pause_s: f64) -> Proc {
    let mut p = Proc::spawn(Command::new("python3").arg(SCRIPT).args([
        "client",
        &port.to_string(),
        &conns.to_string(),
        &rounds.to_string(),
        &pause_s.to_string(),
    ]));
    p.read_until("the client's WAITING line", |l| tagged(l, "WAITING"));
    p
}

/// SSL* -> connection index, from the lengths of its SSL_write_ex calls.
fn conn_of_ssl(calls: &[&Value], conns: u64) -> HashMap<u64, u64> {
    let mut map = HashMap::new();
    for c in calls {
        if c["probe"] == "SSL_write_ex"
            && let Some(len) = c["len"].as_u64()
            && (MSG_BASE..MSG_BASE + conns).contains(&len)
        {
            let ssl = c["ssl"].as_u64().unwrap();
            let i = len - MSG_BASE;
            if let Some(old) = map.insert(ssl, i) {
                assert_eq!(old, i, "SSL* {ssl:#x} wrote the sizes of two connections");
            }
        }
    }
    assert_eq!(
        map.len() as u64,
        conns,
        "one SSL* per connection, told apart by write size: {map:?}"
    );
    map
}

fn memory_bio_ties(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "event" && r["data"]["kind"] == "ssl_fd")
        .map(|r| &r["data"])
        .collect()
}

#[test]
fn asyncio_client_calls_carry_their_socket_fd_and_peer_in_full_mode() {
    const CONNS: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = asyncio_server(dir.path());
    let mut client = asyncio_client(port, CONNS, 80, 0.02);
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
    assert!(total > 4 * 80 * 2, "{total} SSL calls");
    eprintln!("client: {right} of {total} SSL calls carry their socket's fd");

    // Each tie names the connection's socket, from the ClientHello written after the
    // first SSL_do_handshake.
    let ties = memory_bio_ties(&records);
    assert!(ties.len() >= CONNS as usize, "{ties:#?}");
    for t in &ties {
        let i = conn_of[&t["ssl"].as_u64().unwrap()];
        assert_eq!(t["fd"].as_i64(), Some(conns[&i].0), "{t}");
    }

    // The connection table: fd and peer (the server) as the program reports them.
    check_table(&records, &conn_of, &conns);
}

#[test]
fn asyncio_server_calls_carry_their_socket_fd_and_peer_in_full_mode() {
    const CONNS: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = asyncio_server(dir.path());
    let probe = Attached::start(dir.path(), server.pid(), &[]);
    let mut client = asyncio_client(port, CONNS, 80, 0.02);
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

    // Connection i: the client's local address is the server's peer for it.
    let conns = server_side(&client_conns, &server_conns);
    let calls = ssl_calls(&records);
    let conn_of = conn_of_ssl(&calls, u64::from(CONNS));
    let (right, total) = check_call_fds(&calls, &conn_of, &conns, 0.99);
    assert!(total > 4 * 80 * 2, "{total} SSL calls");
    eprintln!("server: {right} of {total} SSL calls carry their socket's fd");

    check_table(&records, &conn_of, &conns);
}

/// The default mode: the handshake calls are always probed and the socket I/O tracepoints
/// stay on for a process once one of its connections was tied (`memory_bio`), so the
/// connections made long after attach, between escalation windows, still get their fd, their
/// peer and their ServerHello (TLS version) in the connection table.
#[test]
fn asyncio_server_connections_get_fd_peer_and_version_in_auto_mode() {
    const CONNS: u32 = 4;
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = asyncio_server(dir.path());
    let probe = Attached::start(dir.path(), server.pid(), &["--mode", "auto"]);
    let mut expected = Vec::new();
    for batch in 0..2 {
        if batch == 1 {
            // After the attach grace and the attach window: only the memory-BIO reason
            // keeps the tracepoints on.
            common::wait_for(
                "a snapshot with the socket I/O tracepoints on for memory_bio alone",
                Duration::from_secs(30),
                || {
                    scenario_common::records_so_far(&probe)
                        .iter()
                        .rev()
                        .find(|r| r["type"] == "snapshot")
                        .filter(|r| {
                            let io = &r["data"]["probes"]["socket_io"];
                            io["attached"] == true && io["why"] == serde_json::json!(["memory_bio"])
                        })
                        .map(|_| ())
                },
            );
        }
        let mut client = asyncio_client(port, CONNS, 100, 0.02);
        client.send_line("go");
        client.read_until("the client's DONE line", |l| tagged(l, "DONE"));
        assert!(
            client
                .wait_exit("the client", Duration::from_secs(30))
                .success()
        );
        for c in conn_lines(&mut server, CONNS as usize, "the server") {
            expected.push((
                c["fd"].as_i64().unwrap(),
                c["peer"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let records = probe.interrupt(Duration::from_secs(30));
    check_schema(&records);

    // The table: each connection with its fd, peer and version, as the server reports them.
    let mut table = Vec::new();
    for r in records.iter().filter(|r| r["type"] == "snapshot") {
        for c in r["data"]["connections"].as_array().into_iter().flatten() {
            table.push((
                c["fd"].as_i64(),
                c["peer"].as_str(),
                c["tls_version"].as_str(),
            ));
        }
    }
    for (fd, peer) in &expected {
        assert!(
            table
                .iter()
                .any(|(f, p, v)| *f == Some(*fd) && *p == Some(peer) && *v == Some("TLS 1.3")),
            "no connection with fd {fd}, peer {peer} and TLS 1.3 in the snapshots: {table:#?}"
        );
    }
    // Every handshake call that carries an fd carries its connection's: the tie of its
    // SSL* at that time (SSL*s are reused after SSL_free).
    let mut tie_of = HashMap::new();
    let mut tied_calls = 0;
    for r in records.iter().filter(|r| r["type"] == "event") {
        let e = &r["data"];
        match e["kind"].as_str() {
            Some("ssl_fd") => {
                let fd = e["fd"].as_i64().unwrap();
                assert!(
                    expected.iter().any(|(f, _)| *f == fd),
                    "a tie to fd {fd}, no connection's: {e}"
                );
                tie_of.insert(e["ssl"].as_u64().unwrap(), fd);
            }
            Some("ssl_free") => {
                tie_of.remove(&e["ssl"].as_u64().unwrap());
            }
            Some("ssl_call") => {
                if let Some(fd) = e["fd"].as_i64() {
                    assert_eq!(tie_of.get(&e["ssl"].as_u64().unwrap()), Some(&fd), "{e}");
                    tied_calls += 1;
                }
            }
            _ => {}
        }
    }
    assert!(
        tied_calls >= 2 * expected.len(),
        "{tied_calls} calls with an fd"
    );
}

/// A WANT loop in asyncio (tests/peers/asyncio_tls.py `spin`: a writer callback left armed
/// while SSLObject.read() wants READ): in the default mode the kernel's aggregated waits
/// make the process suspicious, the escalation window sees the wake-ups of the socket and
/// the SSL_read_ex calls on the SSL*, which (connected before attach, moving no bytes) is
/// tied to the one fd those wake-ups report; spin_loop names that socket, its peer and the
/// thread, and the readiness mismatch.
#[test]
fn asyncio_want_loop_is_a_spin_loop_on_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = asyncio_server(dir.path());
    let mut client =
        Proc::spawn(
            Command::new("python3")
                .arg(SCRIPT)
                .args(["spin", &port.to_string(), "30"]),
        );
    let ready = client.read_until("the spinning client's READY line", |l| tagged(l, "READY"));
    let (pid, fd) = (client.pid(), ready["fd"].as_i64().unwrap());
    let probe = Attached::start(dir.path(), pid, &["--mode", "auto"]);
    let finding = common::wait_for("a spin_loop finding", Duration::from_secs(20), || {
        scenario_common::opened(&scenario_common::records_so_far(&probe), "spin_loop")
            .first()
            .map(|f| (*f).clone())
    });
    let records = probe.interrupt(Duration::from_secs(30));
    check_schema(&records);
    assert_eq!(finding["fd"].as_i64(), Some(fd), "{finding}");
    assert_eq!(finding["tid"], ready["tid"], "{finding}");
    let spin = &finding["evidence"]["spin_loop"];
    assert_eq!(spin["ssl_error"], "want_read", "{finding}");
    assert_eq!(spin["ready_events"], "EPOLLOUT", "{finding}");
    assert_eq!(
        spin["mismatch"], "EPOLLOUT is armed while SSL wants READ",
        "{finding}"
    );
    assert!(finding["peer"].is_string(), "{finding}");
    let others: Vec<_> = scenario_common::changes(&records)
        .into_iter()
        .filter(|c| c["finding"]["kind"] != "spin_loop")
        .collect();
    assert!(others.is_empty(), "{}", scenario_common::describe(&records));
}
/// A healthy asyncio server under load (8 keep-alive clients doing request/response as
/// fast as it answers), in the default mode: no finding at all, and every connection in
/// the table with its fd.
#[test]
fn healthy_asyncio_server_under_load_stays_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = asyncio_server(dir.path());
    let probe = Attached::start(dir.path(), _server.pid(), &["--mode", "auto"]);
    let out = Command::new("python3")
        .arg(SCRIPT)
        .args(["load", &port.to_string(), "8", "8"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("running the load");
    assert!(out.status.success());
    let done = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| tagged(l, "DONE"))
        .expect("the load's DONE line");
    assert!(done["exchanges"].as_u64() > Some(1000), "{done}");
    let records = probe.interrupt(Duration::from_secs(30));
    check_schema(&records);
    assert!(
        scenario_common::changes(&records).is_empty(),
        "a healthy server ({} exchanges/s): {}",
        done["per_s"],
        scenario_common::describe(&records)
    );
    let table = snapshot_conns(&records);
    assert!(table.len() >= 8, "{table:?}");
}
