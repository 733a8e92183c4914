//! A bad write retry's fate, end to end in the default mode: a C server
//! (tests/peers/retry_server.c, plain libssl) fails a write retry on every connection and
//! drops it, and its client reconnects at once, twenty times a second. Each retry is a
//! bad_write_retry finding, the reconnects a connection_churn one, and each names the
//! other (`related_finding_ids`).

use std::{
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use common::{Proc, cert, wait_for};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use scenario_common::{attach_mode, build_c_peer, describe, opened, records_so_far};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common, schema};

const EXIT: Duration = Duration::from_secs(30);

/// The last record of finding `id`.
fn last_state(records: &[Value], id: &Value) -> Value {
    records
        .iter()
        .filter(|r| r["type"] == "finding" && r["data"]["finding"]["id"] == *id)
        .map(|r| r["data"]["finding"].clone())
        .next_back()
        .expect("the finding's records")
}

#[test]
fn retries_that_tear_connections_down_are_linked_to_the_churn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, crt) = cert(dir.path());
    let mut server = Proc::spawn(
        Command::new(build_c_peer(dir.path(), "retry_server", &[]))
            .arg(&crt)
            .arg(&key),
    );
    let port: u16 = server.read_until("PORT", |l| l.strip_prefix("PORT ")?.parse().ok());
    let a = attach_mode(dir.path(), server.pid(), "auto");
    let mut b = SslConnector::builder(SslMethod::tls()).expect("SslConnector");
    b.set_verify(SslVerifyMode::NONE);
    let connector = b.build();
    // Twenty connections a second for 3 s: each lives until the server's retry fails (its
    // RETRY line), then the client drops it and reconnects.
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(3) {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let tls = connector
            .connect("localhost", tcp)
            .expect("the TLS handshake");
        let (_, code, reason): (u64, i64, i64) = server.read_until("RETRY", |l| {
            let v: Vec<&str> = l.strip_prefix("RETRY ")?.split_whitespace().collect();
            Some((v[0].parse().ok()?, v[1].parse().ok()?, v[2].parse().ok()?))
        });
        assert_eq!((code, reason), (1, 127), "SSL_ERROR_SSL, bad write retry");
        drop(tls);
        n += 1;
        // The workload's pace, not a synchronisation.
        let next = Duration::from_millis(50) * n;
        thread::sleep(next.saturating_sub(start.elapsed()));
    }
    let linked = wait_for(
        "a bad_write_retry finding linked to a connection_churn one",
        Duration::from_secs(10),
        || {
            let recs = records_so_far(&a);
            let churn = opened(&recs, "connection_churn")
                .first()
                .map(|f| f["id"].clone())?;
            recs.iter()
                .filter(|r| r["type"] == "finding")
                .map(|r| &r["data"]["finding"])
                .find(|f| {
                    f["kind"] == "bad_write_retry"
                        && f["evidence"]["bad_write_retry"]["related_finding_ids"]
                            .as_array()
                            .is_some_and(|v| v.contains(&churn))
                })
                .map(|f| (f.clone(), churn))
        },
    );
    let (retry, churn_id) = linked;
    let records = a.interrupt(EXIT);
    for (i, r) in records.iter().enumerate() {
        schema::check_line(i + 1, &r.to_string());
    }
    let churn = last_state(&records, &churn_id);
    let ce = &churn["evidence"]["connection_churn"];
    let retries = opened(&records, "bad_write_retry");
    println!(
        "{n} connections, {} bad_write_retry findings; churn {ce}; retry {} links {}",
        retries.len(),
        retry["id"],
        retry["evidence"]["bad_write_retry"]["related_finding_ids"]
    );
    assert_eq!(ce["peer"], "127.0.0.1", "{churn}");
    let ids = ce["related_finding_ids"].as_array().expect("ids");
    assert!(
        ids.contains(&retry["id"]),
        "churn links the retry back: {churn}"
    );
    assert!(
        ce["bad_write_retries"].as_u64() >= Some(ids.len() as u64),
        "{churn}"
    );
    assert!(
        churn["explanation"]
            .as_str()
            .is_some_and(|s| s.contains("torn down after a bad write retry")),
        "{churn}"
    );
    let re = &retry["evidence"]["bad_write_retry"];
    assert_eq!(re["connections_dropped_after"], 1, "{re}");
    assert!(
        retries.len() >= 5,
        "one finding per connection hit:\n{}",
        describe(&records)
    );
    drop(server);
}
