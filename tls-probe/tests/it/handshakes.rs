//! Handshake accounting and findings on live handshake floods (privileged): the scenario
//! server under `handshake-storm` (no resumption) and `resumed-handshakes` (tickets and a
//! session cache), read from tls-probe's snapshots and findings.

use std::time::Duration;

use scenario_common::{Scenario, attach, describe, opened};
use serde_json::Value;

use crate::common::scenario as scenario_common;

struct Run {
    records: Vec<Value>,
    done: Value,
    server_tid: u64,
}

fn run(name: &str, secs: f64) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sc = Scenario::start(name, secs);
    let server_tid = sc.tid("server");
    let a = attach(dir.path(), sc.pid());
    sc.go();
    let done = sc.done(Duration::from_secs(60));
    let records = a.finish(Duration::from_secs(60));
    Run {
        records,
        done,
        server_tid,
    }
}

impl Run {
    /// The server thread's entries of every snapshot.
    fn server_snapshots(&self) -> Vec<&Value> {
        self.records
            .iter()
            .filter(|r| r["type"] == "snapshot")
            .filter_map(|r| {
                r["data"]["threads"]
                    .as_array()?
                    .iter()
                    .find(|t| t["tid"] == self.server_tid)
            })
            .collect()
    }

    /// The server thread's snapshot with the most handshakes a second (the load at its peak).
    fn peak(&self) -> &Value {
        self.server_snapshots()
            .into_iter()
            .filter(|t| !t["handshakes"].is_null())
            .max_by(|a, b| {
                let r = |t: &Value| t["handshakes"]["completed_per_sec"].as_f64().unwrap();
                r(a).total_cmp(&r(b))
            })
            .expect("a server snapshot with handshakes")
    }

    /// The process's handshakes in the last snapshot.
    fn process_handshakes(&self) -> &Value {
        let snap = self
            .records
            .iter()
            .rev()
            .find(|r| r["type"] == "snapshot")
            .expect("a snapshot");
        &snap["data"]["processes"][0]["handshakes"]
    }

    /// Version and cipher come from the ServerHello of (nearly) every handshake, and in TLS
    /// 1.3 its pre_shared_key agrees with the key-operation classification.
    fn check_server_hellos(&self, name: &str, resumed: bool) {
        let h = self.process_handshakes();
        let n = |k: &str| h[k].as_u64().unwrap_or_else(|| panic!("{k} in {h}"));
        eprintln!(
            "{name}: {} completed, {} ServerHellos, psk {}, psk disagrees {}, versions {}, \
             ciphers {}",
            n("completed_total"),
            n("server_hello_total"),
            n("psk_total"),
            n("psk_disagree_total"),
            h["tls_versions"],
            h["ciphers"]
        );
        let completed = n("completed_total");
        assert!(completed >= 100, "{h}");
        // Handshakes already under way at attach have no hello: a few at most.
        assert!(n("server_hello_total") * 100 >= completed * 95, "{h}");
        assert_eq!(h["tls_versions"][0]["name"], "TLS 1.3", "{h}");
        assert!(
            h["ciphers"][0]["name"]
                .as_str()
                .is_some_and(|c| c.starts_with("TLS_AES_") || c.starts_with("TLS_CHACHA20")),
            "{h}"
        );
        // The two resumption signals agree, but for handshakes caught half-way at attach.
        assert!(
            n("psk_disagree_total") * 100 <= n("server_hello_total"),
            "{h}"
        );
        let psk = n("psk_total");
        if resumed {
            assert!(psk * 100 >= n("server_hello_total") * 90, "{h}");
        } else {
            assert_eq!(psk, 0, "{h}");
        }
        // Connections live milliseconds: look in every snapshot.
        let conns = self
            .records
            .iter()
            .filter(|r| r["type"] == "snapshot")
            .filter_map(|r| r["data"]["connections"].as_array())
            .flatten();
        assert!(
            conns
                .into_iter()
                .any(|c| c["tls_version"] == "TLS 1.3" && c["cipher"].is_string()),
            "no connection shows its version and cipher"
        );
    }

    /// Handshakes the server thread completed since attach, in its last snapshot.
    fn peak_total(&self) -> u64 {
        self.server_snapshots()
            .into_iter()
            .filter_map(|t| t["handshakes"]["completed_total"].as_u64())
            .max()
            .expect("server handshakes")
    }

    fn report(&self, name: &str) {
        let t = self.peak();
        let h = &t["handshakes"];
        eprintln!(
            "{name}: server {:.0} handshakes/s ({:.0} full/s, {:.0} resumed/s), resumption \
             {}%, latency p50 {} p99 {} ns, cpu p50 {} ns; time share {}; thread cpu {}%; \
             DONE {}",
            h["completed_per_sec"].as_f64().unwrap(),
            h["full_per_sec"].as_f64().unwrap(),
            h["resumed_per_sec"].as_f64().unwrap(),
            h["resumption_pct"],
            h["latency_p50_ns"],
            h["latency_p99_ns"],
            h["cpu_p50_ns"],
            t["time_share"],
            t["cpu_pct"],
            self.done["counts"],
        );
        eprintln!("{name}: findings:\n{}", describe(&self.records));
    }
}

#[test]
fn handshake_storm_saturates_the_server_with_no_resumption() {
    let run = run("handshake-storm", 7.0);
    run.report("handshake-storm");
    let h = &run.peak()["handshakes"];
    assert!(h["completed_per_sec"].as_f64().unwrap() >= 50.0, "{h}");
    assert_eq!(h["resumption_pct"].as_f64(), Some(0.0), "{h}");
    let found = opened(&run.records, "handshake_saturation");
    assert!(
        found.iter().any(|f| f["tid"] == run.server_tid),
        "no handshake_saturation on the server thread {}:\n{}",
        run.server_tid,
        describe(&run.records)
    );
    let ev = &found[0]["evidence"]["handshake_saturation"];
    assert_eq!(ev["resumption_pct"].as_f64(), Some(0.0), "{ev}");
    assert!(ev["full_per_sec"].as_f64().unwrap() > 0.0, "{ev}");
    // Client threads block in handshake calls: they are not event loops, never flagged.
    assert!(
        found.iter().all(|f| f["tid"] == run.server_tid),
        "{}",
        describe(&run.records)
    );
    run.check_server_hellos("handshake-storm", false);
    // The process holds both ends: the resumption rate counts the server's handshakes only,
    // never more than the server thread completed (counted twice, it would be about double).
    let server_completed = run.peak_total();
    for r in run.records.iter().filter(|r| r["type"] == "finding") {
        let ev = &r["data"]["finding"]["evidence"]["low_session_resumption"];
        if let Some(n) = ev["handshakes"].as_u64() {
            assert!(
                n <= server_completed + 5,
                "low_session_resumption rated {n} handshakes; the server completed \
                 {server_completed}: {ev}"
            );
        }
    }
}

#[test]
fn resumed_handshakes_resume_nearly_all_and_are_not_flagged() {
    let run = run("resumed-handshakes", 5.0);
    run.report("resumed-handshakes");
    let h = &run.peak()["handshakes"];
    assert!(h["completed_per_sec"].as_f64().unwrap() >= 50.0, "{h}");
    let pct = h["resumption_pct"].as_f64().unwrap();
    assert!(pct >= 95.0, "resumption {pct}%: {h}");
    assert!(
        opened(&run.records, "low_session_resumption").is_empty(),
        "{}",
        describe(&run.records)
    );
    // Busy with cheap resumed handshakes: not crypto starving the loop.
    assert!(
        opened(&run.records, "handshake_saturation").is_empty(),
        "{}",
        describe(&run.records)
    );
    run.check_server_hellos("resumed-handshakes", true);
}
