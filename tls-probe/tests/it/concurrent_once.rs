//! concurrent_ssl_use at its first and only occurrence, in the default mode: a C client
//! (tests/peers/shared_client.c, plain libssl, two worker threads) whose reader blocks in
//! SSL_read while its other thread calls SSL_write on the same SSL*, once, at a random
//! moment 0.5-5 s after attach; and the same client handing its SSL* from one thread to the
//! other call after call without overlap (a thread pool), which must give no finding.
//!
//! Between escalation windows no per-call probe is on: the overlap is seen at the socket,
//! by the read/write tracepoints (kept on for a multi-threaded target), as two threads
//! with a syscall in flight on one TLS socket at once.
//!
//! "Within 1 s" is read from the records' timestamps: the finding's `first_seen_ns` against
//! the CLOCK_MONOTONIC time the client took just before its SSL_write. How long the record
//! took to reach the file is printed (`--nocapture`) and held to 2 s.

use std::{
    io::{Read, Write},
    net::TcpListener,
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use common::{Proc, cert, summary, wait_for};
use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod};
use scenario_common::{
    attach_mode, build_c_peer, describe, monotonic_ns, opened, random_between, records_so_far,
};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common, schema};

const SEC: u64 = 1_000_000_000;
const EXIT: Duration = Duration::from_secs(30);

/// A TLS echo server on a free port of 127.0.0.1 (no session tickets: nothing arrives on
/// the connection that the client did not ask for). Runs until the test process exits.
fn echo_server(dir: &Path) -> u16 {
    let (key, crt) = cert(dir);
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("SslAcceptor");
    b.set_private_key_file(&key, SslFiletype::PEM)
        .expect("server key");
    b.set_certificate_chain_file(&crt).expect("server cert");
    b.set_num_tickets(0).expect("no tickets");
    let acceptor = b.build();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let acceptor = acceptor.clone();
            thread::spawn(move || {
                let Ok(mut s) = acceptor.accept(stream) else {
                    return;
                };
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

struct Client {
    proc: Proc,
}

impl Client {
    fn start(dir: &Path, port: u16) -> Self {
        let exe = build_c_peer(dir, "shared_client", &["-pthread"]);
        let mut proc = Proc::spawn(Command::new(exe).arg(port.to_string()));
        proc.read_until("READY", |l| (l == "READY").then_some(()));
        Self { proc }
    }

    /// Connects; returns the fd and the SSL* it printed.
    fn connect(&mut self) -> (i64, u64) {
        self.proc.send_line("connect");
        self.proc.read_until("CONNECTED", |l| {
            let v: Vec<&str> = l.strip_prefix("CONNECTED ")?.split_whitespace().collect();
            let ssl = u64::from_str_radix(v[1].trim_start_matches("0x"), 16).ok()?;
            Some((v[0].parse().ok()?, ssl))
        })
    }

    /// The overlap; returns the time taken just before the SSL_write.
    fn overlap(&mut self) -> u64 {
        self.proc.send_line("overlap");
        self.proc.read_until("OVERLAP", |l| {
            l.strip_prefix("OVERLAP ")
                .and_then(|t| t.trim().parse().ok())
        })
    }

    fn handoff(&mut self, rounds: u32) {
        self.proc.send_line(&format!("handoff {rounds}"));
        self.proc
            .read_until("HANDOFF", |l| l.starts_with("HANDOFF").then_some(()));
    }

    fn quit(mut self) {
        self.proc.send_line("quit");
        let status = self.proc.wait_exit("shared_client to exit", EXIT);
        assert!(status.success(), "shared_client failed: {status}");
    }
}

fn wait_thread(ns: u64) {
    thread::sleep(Duration::from_nanos(ns));
}

/// The socket I/O tracepoints as the last snapshot saw them.
fn socket_io(records: &[Value]) -> Value {
    records
        .iter()
        .rev()
        .find(|r| r["type"] == "snapshot")
        .map(|r| r["data"]["probes"]["socket_io"].clone())
        .expect("a snapshot")
}

/// One overlap at a random moment 0.5-5 s after attach, in the default mode; the client
/// connects before attach (`early`: its handshake is not seen) or after.
fn single_overlap(early: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = echo_server(dir.path());
    let mut client = Client::start(dir.path(), port);
    let pid = client.proc.pid();
    let conn = early.then(|| client.connect());
    let a = attach_mode(dir.path(), client.proc.pid(), "auto");
    let attached = monotonic_ns();
    let (fd, ssl) = conn.unwrap_or_else(|| client.connect());
    let at = random_between(attached + SEC / 2, attached + 5 * SEC);
    wait_thread(at.saturating_sub(monotonic_ns()));
    let t = client.overlap();
    let f = wait_for(
        "a concurrent_ssl_use finding after the overlap",
        Duration::from_secs(10),
        || {
            opened(&records_so_far(&a), "concurrent_ssl_use")
                .first()
                .map(|f| (*f).clone())
        },
    );
    let read_after = monotonic_ns().saturating_sub(t);
    client.quit();
    let records = a.finish(EXIT);
    for (i, r) in records.iter().enumerate() {
        schema::check_line(i + 1, &r.to_string());
    }
    let all = opened(&records, "concurrent_ssl_use");
    assert_eq!(all.len(), 1, "one finding:\n{}", describe(&records));
    let first = f["first_seen_ns"].as_u64().expect("first_seen_ns");
    let e = &f["evidence"]["concurrent_ssl_use"];
    println!(
        "auto ({}): overlap {:.2} s after attach, first seen at {:+.1} ms (event time), read \
         from the file {:.0} ms after the write; evidence {e}",
        if early {
            "connected before attach"
        } else {
            "connected after attach"
        },
        (t - attached) as f64 / 1e9,
        (first as f64 - t as f64) / 1e6,
        read_after as f64 / 1e6,
    );
    // The write began at t; the overlap is seen when it enters write(), just after.
    assert!(
        first + SEC / 100 >= t && first < t + SEC,
        "first seen {first} not within 1 s of the write at {t}: {f}"
    );
    assert!(
        read_after < 2 * SEC,
        "reached the file after {read_after} ns"
    );
    assert_eq!(f["pid"], pid, "{f}");
    assert_eq!(f["fd"], fd, "{f}");
    // Seen per call when it fell in the attach window, else at the socket.
    match e["seen_at"].as_str() {
        Some("at_socket") => {
            assert_eq!(e["sys_a"], "read", "{e}");
            assert_eq!(e["sys_b"], "write", "{e}");
            assert!(
                e["inferred"].as_array().is_some_and(|v| !v.is_empty()),
                "{e}"
            );
            let seen = e["seen"].to_string();
            if early {
                // Its handshake predates the probes: the write's record header proves TLS,
                // unless the attach window saw the connection's calls.
                assert!(
                    seen.contains("application_data record") || f["ssl"] == ssl,
                    "{e}"
                );
            } else {
                assert_eq!(f["ssl"], ssl, "{f}");
            }
        }
        Some("per_call") => assert_eq!(f["ssl"], ssl, "{f}"),
        _ => panic!("seen_at: {e}"),
    }
}

/// The per-call probes of `pid` as the last snapshot so far shows them: on or off, and how
/// many windows were opened.
fn per_call(a: &common::Attached, pid: u32) -> Option<(bool, u64)> {
    records_so_far(a)
        .iter()
        .rev()
        .filter(|r| r["type"] == "snapshot")
        .find_map(|r| {
            let p = r["data"]["probes"]["processes"]
                .as_array()?
                .iter()
                .find(|p| p["pid"] == pid)?
                .clone();
            Some((p["per_call"].as_bool()?, p["escalations_total"].as_u64()?))
        })
}

/// Between windows, once the attach window is over: only the socket can see it. Fails when
/// the socket path does not work (the other tests may fall in the attach window, where the
/// per-call probes see the overlap themselves).
#[test]
fn one_overlap_between_windows_is_seen_at_the_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = echo_server(dir.path());
    let mut client = Client::start(dir.path(), port);
    let pid = client.proc.pid();
    let a = attach_mode(dir.path(), pid, "auto");
    let (fd, ssl) = client.connect();
    // No window opens at attach: a snapshot with the per-call probes off and no escalation
    // yet, so the overlap below comes while only the always-on probes are on.
    wait_for(
        "a snapshot with per_call false and no escalation",
        Duration::from_secs(20),
        || (per_call(&a, pid)? == (false, 0)).then_some(()),
    );
    let now = monotonic_ns();
    wait_thread(random_between(now, now + 2 * SEC) - now);
    let t = client.overlap();
    let f = wait_for(
        "a concurrent_ssl_use finding",
        Duration::from_secs(10),
        || {
            opened(&records_so_far(&a), "concurrent_ssl_use")
                .first()
                .map(|f| (*f).clone())
        },
    );
    client.quit();
    let records = a.finish(EXIT);
    let e = &f["evidence"]["concurrent_ssl_use"];
    let first = f["first_seen_ns"].as_u64().expect("first_seen_ns");
    println!(
        "between windows: first seen at {:+.1} ms (event time); {e}",
        (first as f64 - t as f64) / 1e6
    );
    assert_eq!(e["seen_at"], "at_socket", "{e}");
    assert!(first >= t && first < t + SEC, "{f}");
    assert_eq!(
        (&f["fd"], &f["ssl"]),
        (&Value::from(fd), &Value::from(ssl)),
        "{f}"
    );
    assert_eq!(
        (e["tid_a"] != e["tid_b"], &e["sys_a"], &e["sys_b"]),
        (true, &Value::from("read"), &Value::from("write")),
        "{e}"
    );
    assert_eq!(opened(&records, "concurrent_ssl_use").len(), 1);
}

#[test]
fn one_overlap_is_flagged_in_the_default_mode() {
    single_overlap(false);
}

#[test]
fn one_overlap_on_a_connection_made_before_attach_is_flagged() {
    single_overlap(true);
}

/// The SSL* handed from thread to thread, call after call, never two at once: legal, and
/// no finding; while the socket I/O tracepoints are on (the test fails if they were not).
#[test]
fn a_thread_pool_hand_off_is_not_flagged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = echo_server(dir.path());
    let mut client = Client::start(dir.path(), port);
    let a = attach_mode(dir.path(), client.proc.pid(), "auto");
    let attached = monotonic_ns();
    client.connect();
    // Hand-offs inside the attach window (per-call probes on) and after it (at the socket).
    client.handoff(200);
    wait_thread((attached + 3 * SEC).saturating_sub(monotonic_ns()));
    for _ in 0..3 {
        client.handoff(300);
    }
    let io = wait_for(
        "a snapshot with the socket I/O tracepoints on for the threads",
        Duration::from_secs(5),
        || {
            let io = socket_io(&records_so_far(&a));
            (io["attached"] == true && io["why"].to_string().contains("threads")).then_some(io)
        },
    );
    client.handoff(300);
    client.quit();
    let records = a.finish(EXIT);
    assert!(
        opened(&records, "concurrent_ssl_use").is_empty()
            && scenario_common::changes(&records).is_empty(),
        "a hand-off is no concurrent use:\n{}",
        describe(&records)
    );
    let s = summary(&records);
    println!(
        "hand-off: 1400 rounds on two threads, no finding; socket I/O {io}; events by probe {}",
        s["events_by_probe"]
    );
    // The attach window saw the first rounds per call; the rest were left to the socket.
    let per_call = s["events_by_probe"]["SSL_read"].as_u64().unwrap_or(0);
    assert!(
        per_call < 1400,
        "every round was seen per call ({per_call} SSL_read): the socket was never tested"
    );
    assert!(
        s["events_by_probe"]["socket_overlap"].is_null(),
        "the kernel reported an overlap: {}",
        s["events_by_probe"]
    );
}
