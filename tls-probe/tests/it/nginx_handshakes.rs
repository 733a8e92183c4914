//! Handshake floods on a real nginx (privileged): one worker, TLS on 127.0.0.1, tls-probe
//! attached to the master in light mode (covering the worker), and parallel
//! `openssl s_time` clients making short connections. With the session cache and tickets
//! off every handshake is full and the worker saturates; with a shared cache and tickets
//! and clients that reuse their session, nearly all resume and no low_session_resumption
//! is raised.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::Attached;
use scenario_common::{Nginx, NginxConf, describe, opened};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common};

/// Seconds of flood. Saturation needs 3 s of it without a break, so the margin is wide for
/// a loaded 2-core machine.
const FLOOD_SECS: u32 = 8;
/// Parallel clients: more than the one worker can serve, so it never waits for work.
const CLIENTS: usize = 3;

struct Flood {
    records: Vec<Value>,
    worker: u32,
    clients: Vec<String>,
}

/// nginx (one worker) with `server_extra`, flooded by `CLIENTS` `openssl s_time` runs with
/// `client_args` (`-new` or `-reuse`), under `tls-probe attach --mode light` on the master.
/// An RSA-4096 certificate makes each full handshake cost the worker several times what it
/// costs a client (signing against verifying), so the worker always has a backlog, however
/// the two cores are shared.
fn flood(server_extra: &str, client_args: &[&str]) -> Flood {
    let dir = tempfile::tempdir().expect("tempdir");
    let nginx = Nginx::start_with(
        dir.path(),
        NginxConf {
            workers: Some(1),
            server_extra,
            rsa_bits: Some(4096),
            ..NginxConf::default()
        },
    );
    let worker = *nginx.workers(1).first().expect("one worker");
    let probe = Attached::start(
        dir.path(),
        nginx.master(),
        &[
            "--mode",
            "light",
            "--duration",
            &(FLOOD_SECS + 3).to_string(),
        ],
    );
    let connect = format!("127.0.0.1:{}", nginx.port);
    let time = FLOOD_SECS.to_string();
    let children: Vec<Child> = (0..CLIENTS)
        .map(|_| {
            Command::new("openssl")
                .args(["s_time", "-connect", &connect, "-time", &time, "-www", "/"])
                .args(client_args)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("running openssl s_time")
        })
        .collect();
    let clients = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("waiting for s_time");
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .filter(|l| l.contains("connections"))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .collect();
    let records = probe.finish(Duration::from_secs(60));
    Flood {
        records,
        worker,
        clients,
    }
}

impl Flood {
    /// The worker's handshakes in the last snapshot.
    fn worker_handshakes(&self) -> &Value {
        let snap = self
            .records
            .iter()
            .rev()
            .find(|r| r["type"] == "snapshot")
            .expect("a snapshot");
        snap["data"]["processes"]
            .as_array()
            .expect("processes")
            .iter()
            .find(|p| p["pid"] == self.worker)
            .map(|p| &p["handshakes"])
            .unwrap_or_else(|| panic!("no snapshot of worker {}: {snap}", self.worker))
    }

    fn report(&self, name: &str) -> &Value {
        let h = self.worker_handshakes();
        eprintln!(
            "{name}: clients {:?}\n{name}: worker {} completed {} (full {}, resumed {}), \
             resumption {}%, cpu p50 {} ns, versions {}, ciphers {}, psk {} (disagree {})\n\
             {name}: findings:\n{}",
            self.clients,
            self.worker,
            h["completed_total"],
            h["full_total"],
            h["resumed_total"],
            h["resumption_pct"],
            h["cpu_p50_ns"],
            h["tls_versions"],
            h["ciphers"],
            h["psk_total"],
            h["psk_disagree_total"],
            describe(&self.records)
        );
        h
    }
}

#[test]
fn nginx_without_session_cache_saturates_its_worker() {
    let run = flood(
        "ssl_session_cache off;\nssl_session_tickets off;",
        &["-new"],
    );
    let h = run.report("no cache");
    let completed = h["completed_total"].as_u64().unwrap();
    assert!(completed >= 100, "{h}");
    assert!(h["resumption_pct"].as_f64().unwrap() < 2.0, "{h}");
    // nginx before 1.23.4 leaves TLS 1.3 out of its default ssl_protocols: the
    // legacy_version path.
    assert_eq!(h["tls_versions"][0]["name"], "TLS 1.2", "{h}");
    assert!(
        h["ciphers"][0]["name"]
            .as_str()
            .is_some_and(|c| c.starts_with("TLS_")),
        "{h}"
    );
    assert!(
        h["server_hello_total"].as_u64().unwrap() * 100 >= completed * 95,
        "{h}"
    );
    assert_eq!(h["psk_total"], 0, "{h}");
    let sat = opened(&run.records, "handshake_saturation");
    assert!(
        sat.iter().any(|f| f["tid"] == run.worker),
        "no handshake_saturation on worker {}:\n{}",
        run.worker,
        describe(&run.records)
    );
}

#[test]
fn nginx_with_shared_cache_and_tickets_resumes_returning_clients() {
    let run = flood(
        "ssl_session_cache shared:SSL:10m;\nssl_session_tickets on;\nssl_protocols TLSv1.2 TLSv1.3;",
        &["-reuse", "-tls1_3"],
    );
    let h = run.report("shared cache");
    let completed = h["completed_total"].as_u64().unwrap();
    assert!(completed >= 200, "{h}");
    let pct = h["resumption_pct"].as_f64().unwrap();
    assert!(pct >= 90.0, "resumption {pct}%: {h}");
    // TLS 1.3: the ServerHello's pre_shared_key says the same as the key operations.
    assert_eq!(h["tls_versions"][0]["name"], "TLS 1.3", "{h}");
    let psk = h["psk_total"].as_u64().unwrap();
    let hellos = h["server_hello_total"].as_u64().unwrap();
    assert!(psk * 100 >= hellos * 90, "{h}");
    assert!(
        h["psk_disagree_total"].as_u64().unwrap() * 100 <= hellos,
        "{h}"
    );
    assert!(
        opened(&run.records, "low_session_resumption").is_empty(),
        "{}",
        describe(&run.records)
    );
}
