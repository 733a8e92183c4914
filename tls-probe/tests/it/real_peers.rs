//! Real peers: `openssl s_server` on 127.0.0.1 with a Python non-blocking client (which
//! calls SSL_read_ex/SSL_write_ex on an epoll selector) and with `openssl s_client -nbio`
//! (which calls plain SSL_read/SSL_write). tls-probe attaches to the live client.

use std::{process::Command, time::Duration};

use common::{Attached, Proc, events, s_server_rev, summary};
use serde_json::Value;

use crate::common;

#[test]
fn python_client_want_reads_fd_and_epoll_wakeups() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = s_server_rev(dir.path());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/nb_client.py");
    let mut client = Proc::spawn(Command::new("python3").arg(script).args([
        "--port",
        &port.to_string(),
        "--count",
        "20",
    ]));
    let ready: Value =
        client.read_until("the client's ready line", |l| serde_json::from_str(l).ok());
    let fd = ready["fd"].as_i64().unwrap();
    let pid = client.pid();

    let probe = Attached::start(dir.path(), pid, &[]);
    client.send_line("go");
    let done: Value = client.read_until("the client's done line", |l| {
        serde_json::from_str::<Value>(l)
            .ok()
            .filter(|v| v["state"] == "done")
    });
    assert!(
        client
            .wait_exit("the client", Duration::from_secs(20))
            .success()
    );
    let records = probe.finish(Duration::from_secs(30));

    // The reads: some move the 7-byte reply, the next one drains the socket with WANT_READ.
    let reads = events(&records, "SSL_read_ex");
    let progress: Vec<_> = reads
        .iter()
        .filter(|r| r["bytes"].as_u64() > Some(0))
        .collect();
    assert!(progress.len() >= 20, "{} reads with bytes", progress.len());
    assert!(reads.iter().all(|r| r["fd"] == fd), "every read on fd {fd}");
    let want_reads: Vec<_> = events(&records, "SSL_get_error")
        .into_iter()
        .filter(|e| e["code"] == "want_read")
        .collect();
    assert_eq!(
        want_reads.len() as u64,
        done["want_read"].as_u64().unwrap(),
        "WANT_READ count matches what the client saw"
    );
    assert!(want_reads.len() >= 20);
    let failed_reads = reads.iter().filter(|r| r["ret"] == 0).count();
    assert_eq!(
        failed_reads,
        want_reads.len(),
        "each WANT_READ follows an SSL_read_ex returning 0"
    );

    let writes = events(&records, "SSL_write_ex");
    assert_eq!(writes.len(), 20);
    assert!(
        writes
            .iter()
            .all(|w| w["fd"] == fd && w["ret"] == 1 && w["bytes"].as_u64() >= Some(6))
    );

    // Epoll wake-ups name the connection's fd as ready for EPOLLIN, with its interest mask.
    let wakeups: Vec<_> = events(&records, "epoll_wait")
        .into_iter()
        .filter(|w| w["ret"].as_i64() > Some(0))
        .collect();
    assert!(wakeups.len() >= 20, "{} wake-ups", wakeups.len());
    for w in &wakeups {
        let ready = w["ready"].as_array().unwrap();
        assert_eq!(ready.len(), 1, "{w}");
        assert_eq!(
            ready[0]["fd"], fd,
            "ready fd resolved through epoll data: {w}"
        );
        assert_ne!(
            ready[0]["events"].as_u64().unwrap() & libc::EPOLLIN as u64,
            0
        );
        assert_ne!(
            ready[0]["interest"].as_u64().unwrap() & libc::EPOLLIN as u64,
            0
        );
        assert!(w["timeout_ns"].as_i64() > Some(0));
    }
    assert_eq!(summary(&records)["lost"]["ringbuf"], 0);
}

#[test]
fn s_client_nbio_plain_ssl_read_want_read_and_fd() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, port) = s_server_rev(dir.path());
    // The shell waits for "go", then execs s_client: tls-probe attaches to the pid first,
    // with --libssl naming the library s_client will map, so the handshake is seen too.
    let libssl = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
    let mut client = Proc::spawn(Command::new("sh").args([
        "-c",
        &format!("read go; exec openssl s_client -nbio -connect 127.0.0.1:{port}"),
    ]));
    let probe = Attached::start(dir.path(), client.pid(), &["--libssl", libssl]);
    client.send_line("go");
    // "CONNECTED(00000003)" names the socket fd.
    let fd = client.read_until("CONNECTED(...)", |l| {
        let hex = l.strip_prefix("CONNECTED(")?.strip_suffix(')')?;
        i64::from_str_radix(hex, 16).ok()
    });
    // One line at a time: the next goes once the server's reversed echo of this one is back.
    for i in 0..10 {
        client.send_line(&format!("hello {i}"));
        let echo = format!("{i} olleh");
        client.read_until(&format!("the echo {echo:?}"), |l| {
            l.contains(&echo).then_some(())
        });
    }
    client.close_stdin();
    client.wait_exit("s_client to exit on EOF", Duration::from_secs(20));
    let records = probe.finish(Duration::from_secs(30));

    let reads = events(&records, "SSL_read");
    assert!(!reads.is_empty());
    let with_data = reads
        .iter()
        .filter(|r| r["bytes"].as_u64() > Some(0))
        .count();
    assert!(with_data >= 1, "s_client read the server's replies");
    let want_read = events(&records, "SSL_get_error")
        .into_iter()
        .filter(|e| e["code"] == "want_read")
        .count();
    assert!(
        want_read >= 1,
        "plain SSL_read/SSL_write answer WANT_READ under -nbio"
    );
    assert!(
        reads
            .iter()
            .filter(|r| r["ret"].as_i64() < Some(0))
            .all(|r| r["fd"] == fd),
        "failing reads are attributed to fd {fd}"
    );
    let writes = events(&records, "SSL_write");
    // "hello N\n" is 8 bytes: one SSL_write each.
    assert_eq!(writes.iter().filter(|w| w["bytes"] == 8).count(), 10);
    assert!(writes.iter().all(|w| w["fd"] == fd));
}
