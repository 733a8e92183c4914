//! What tests/it/memory_bio.rs (asyncio) and tests/it/node.rs share: the test programs print a
//! `CONN {json}` line per connection (its index `i`, `fd`, `local` and `peer` address), and
//! these check tls-probe's output against them, call by call and in the connection table.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::common::Proc;

/// The JSON after `TAG ` on a line the test program printed.
pub fn tagged(line: &str, tag: &str) -> Option<Value> {
    serde_json::from_str(line.strip_prefix(tag)?.strip_prefix(' ')?).ok()
}

/// Reads `n` "CONN {json}" lines.
pub fn conn_lines(p: &mut Proc, n: usize, who: &str) -> Vec<Value> {
    (0..n)
        .map(|_| p.read_until(&format!("{who}'s CONN line"), |l| tagged(l, "CONN")))
        .collect()
}

/// Every record as the schema documents it (deny_unknown_fields).
pub fn check_schema(records: &[Value]) {
    for (i, r) in records.iter().enumerate() {
        crate::schema::check_line(i + 1, &r.to_string());
    }
}

/// No memory-BIO tie moved an SSL* off a socket that was still open.
pub fn assert_no_disagreements(records: &[Value]) {
    let summary = &records.last().expect("records")["data"];
    assert_eq!(
        summary["memory_bio_disagreements"], 0,
        "the ties never disagreed"
    );
}

/// Every `ssl_call` event.
pub fn ssl_calls(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "event" && r["data"]["kind"] == "ssl_call")
        .map(|r| &r["data"])
        .collect()
}

/// Connection index -> (fd, peer), as the side that printed `conns` reports them.
pub fn own_side(conns: &[Value]) -> BTreeMap<u64, (i64, String)> {
    conns
        .iter()
        .map(|c| {
            (
                c["i"].as_u64().unwrap(),
                (
                    c["fd"].as_i64().unwrap(),
                    c["peer"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

/// Connection index -> (fd, peer) on the server: the server connection whose peer is the
/// client connection's local address.
pub fn server_side(client_conns: &[Value], server_conns: &[Value]) -> BTreeMap<u64, (i64, String)> {
    client_conns
        .iter()
        .map(|c| {
            let local = c["local"].as_str().unwrap();
            let s = server_conns
                .iter()
                .find(|s| s["peer"] == local)
                .unwrap_or_else(|| panic!("no server connection from {local}: {server_conns:#?}"));
            (
                c["i"].as_u64().unwrap(),
                (s["fd"].as_i64().unwrap(), local.to_owned()),
            )
        })
        .collect()
}

/// Checks the fd of every SSL call against the fd the program reported for its connection:
/// no call may carry another fd, and at least `min_share` of them must carry the right one.
/// Returns (right, total).
pub fn check_call_fds(
    calls: &[&Value],
    conn_of: &HashMap<u64, u64>,
    conns: &BTreeMap<u64, (i64, String)>,
    min_share: f64,
) -> (usize, usize) {
    let mut right = 0;
    let mut missing = Vec::new();
    for c in calls {
        let ssl = c["ssl"].as_u64().unwrap();
        let i = conn_of
            .get(&ssl)
            .unwrap_or_else(|| panic!("a call on an SSL* of no known connection: {c}"));
        let want = conns[i].0;
        match c["fd"].as_i64() {
            Some(fd) if fd == want => right += 1,
            Some(fd) => panic!("connection {i} has fd {want}, but a call carries fd {fd}: {c}"),
            None => missing.push(*c),
        }
    }
    let share = right as f64 / calls.len() as f64;
    assert!(
        share >= min_share,
        "{right} of {} calls carry their socket's fd ({:.1}%, want {:.0}%); without: {missing:#?}",
        calls.len(),
        share * 100.0,
        min_share * 100.0
    );
    (right, calls.len())
}

/// (fd, peer) of each SSL* over every snapshot that listed it with an fd.
pub fn snapshot_conns(records: &[Value]) -> HashMap<u64, (i64, Option<String>)> {
    let mut seen = HashMap::new();
    for r in records.iter().filter(|r| r["type"] == "snapshot") {
        for c in r["data"]["connections"].as_array().into_iter().flatten() {
            if let (Some(ssl), Some(fd)) = (c["ssl"].as_u64(), c["fd"].as_i64()) {
                let e = seen.entry(ssl).or_insert((fd, None));
                assert_eq!(e.0, fd, "a connection changed fd between snapshots: {c}");
                if let Some(p) = c["peer"].as_str() {
                    e.1 = Some(p.to_owned());
                }
            }
        }
    }
    seen
}

/// Each connection of `conn_of` in the connection table with the fd and peer the program
/// reported.
pub fn check_table(
    records: &[Value],
    conn_of: &HashMap<u64, u64>,
    conns: &BTreeMap<u64, (i64, String)>,
) {
    let table = snapshot_conns(records);
    for (ssl, i) in conn_of {
        let (fd, peer) = table
            .get(ssl)
            .unwrap_or_else(|| panic!("connection {i} ({ssl:#x}) in no snapshot with an fd"));
        assert_eq!(*fd, conns[i].0, "connection {i}");
        assert_eq!(
            peer.as_deref(),
            Some(conns[i].1.as_str()),
            "connection {i}'s peer"
        );
    }
}
