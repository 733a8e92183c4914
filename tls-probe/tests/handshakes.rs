//! Handshake accounting and findings on live handshake floods (privileged): the scenario
//! server under `handshake-storm` (no resumption) and `resumed-handshakes` (tickets and a
//! session cache), read from tls-probe's snapshots and findings.

mod common;
#[path = "common/scenario.rs"]
mod scenario_common;

use std::time::Duration;

use scenario_common::{Scenario, attach, describe, opened};
use serde_json::Value;

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
}
