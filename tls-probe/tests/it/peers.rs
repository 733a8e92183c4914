//! Connection peers from the kernel (privileged): under `handshake-storm`, every connection
//! the server accepts and every one its clients open yields one `peer` event, with the fd
//! its SSL calls then use.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use common::{Attached, events};
use scenario_common::{Scenario, describe, opened};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common};

/// The fds each thread's SSL calls used: tid -> fds.
fn ssl_fds(records: &[Value]) -> HashMap<u64, HashSet<i64>> {
    let mut by_tid: HashMap<u64, HashSet<i64>> = HashMap::new();
    for r in records {
        let d = &r["data"];
        if r["type"] == "event"
            && d["kind"] == "ssl_call"
            && let (Some(tid), Some(fd)) = (d["tid"].as_u64(), d["fd"].as_i64())
        {
            by_tid.entry(tid).or_default().insert(fd);
        }
    }
    by_tid
}

#[test]
fn storm_connections_have_their_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sc = Scenario::start("handshake-storm", 3.0);
    let server = sc.tid("server");
    let a = Attached::start(dir.path(), sc.pid(), &[]);
    sc.go();
    let done = sc.done(Duration::from_secs(60));
    let records = a.finish(Duration::from_secs(60));
    let fds = ssl_fds(&records);

    let accepted = events(&records, "accept4");
    let connected = events(&records, "connect");
    eprintln!(
        "{} accepted, {} connected peers; DONE {}\nfindings:\n{}",
        accepted.len(),
        connected.len(),
        done["counts"],
        describe(&records)
    );
    assert!(accepted.len() >= 20, "few accepted peers: {accepted:?}");
    assert!(connected.len() >= 20, "few connected peers: {connected:?}");

    // The server accepts clients on 127.0.0.1, each from its own port, on the fds its SSL
    // calls then use.
    let server_fds = fds.get(&server).cloned().unwrap_or_default();
    for p in &accepted {
        assert_eq!(p["kind"], "peer", "{p}");
        assert_eq!(p["side"], "accepted", "{p}");
        assert_eq!(p["tid"], server, "{p}");
        let addr = p["addr"].as_str().expect("addr");
        assert!(addr.starts_with("127.0.0.1:"), "{p}");
    }
    let matched = accepted
        .iter()
        .filter(|p| server_fds.contains(&p["fd"].as_i64().unwrap()))
        .count();
    assert!(
        matched == accepted.len(),
        "{matched} of {} accepted fds seen in the server's SSL calls {server_fds:?}",
        accepted.len()
    );

    // The clients all connect to the one listener, each on a socket its own SSL calls use.
    let targets: HashSet<&str> = connected
        .iter()
        .map(|p| p["addr"].as_str().expect("addr"))
        .collect();
    assert_eq!(targets.len(), 1, "{targets:?}");
    let listener = *targets.iter().next().unwrap();
    assert!(listener.starts_with("127.0.0.1:"), "{listener}");
    for p in &connected {
        assert_eq!(p["side"], "connected", "{p}");
        assert_ne!(p["tid"], server, "{p}");
        let tid = p["tid"].as_u64().unwrap();
        let fd = p["fd"].as_i64().unwrap();
        assert!(
            fds.get(&tid).is_some_and(|s| s.contains(&fd)),
            "client fd {fd} of {p} not seen in its SSL calls"
        );
    }
    // Accepted peers are the clients' ephemeral ports, never the listener's.
    assert!(accepted.iter().all(|p| p["addr"] != listener), "{listener}");

    // A storm is short connections from one host: where churn is found, it names that host.
    for f in opened(&records, "connection_churn") {
        assert_eq!(f["peer"], "127.0.0.1", "{f}");
        assert_eq!(
            f["evidence"]["connection_churn"]["peer"], "127.0.0.1",
            "{f}"
        );
    }
}
