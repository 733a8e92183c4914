//! Process trees: `tls-probe attach --pid MASTER` on nginx with a master and two workers
//! traces the workers too, those running at attach and those a reload (SIGHUP) forks
//! later; `--no-children` traces the master alone. Every line is checked against the
//! schema, `target_attach` included.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{Proc, TLS_PROBE, read_ndjson, wait_for};
use nix::sys::signal::Signal;
use scenario_common::{Nginx, NginxConf, children_of, signal, wrk, wrk_rate};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common, schema};

/// nginx with a master and two workers, serving a small page over TLS.
struct NginxTree;

impl NginxTree {
    fn start(dir: &Path) -> Nginx {
        Nginx::start_with(
            dir,
            NginxConf {
                workers: Some(2),
                ..NginxConf::default()
            },
        )
    }
}

/// `tls-probe attach --pid PID -o FILE EXTRA...`, once its `start` record is written.
fn attach(dir: &Path, pid: u32, extra: &[&str]) -> (Proc, PathBuf) {
    let output = dir.join(format!("attach-{pid}.ndjson"));
    let mut cmd = Command::new(TLS_PROBE);
    cmd.args(["attach", "--mode", "full", "--pid", &pid.to_string(), "-o"])
        .arg(&output)
        .args(extra)
        .stderr(Stdio::inherit());
    let mut proc = Proc::spawn(&mut cmd);
    let out = output.clone();
    let child = &mut proc.child;
    wait_for(
        "tls-probe to attach (start record)",
        Duration::from_secs(30),
        || {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("tls-probe exited early with {status}");
            }
            let text = fs::read_to_string(&out).ok()?;
            text.lines()
                .next()
                .filter(|l| l.contains("\"start\""))
                .map(|_| ())
        },
    );
    (proc, output)
}

/// The whole records written so far.
fn records_so_far(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn pids_of<'a>(records: &'a [Value], kind: &'a str) -> impl Iterator<Item = u32> + 'a {
    records
        .iter()
        .filter(move |r| r["type"] == kind)
        .filter_map(|r| r["data"]["pid"].as_u64())
        .map(|p| p as u32)
}

fn start_targets(records: &[Value]) -> BTreeSet<u32> {
    records[0]["data"]["targets"]
        .as_array()
        .expect("start.targets")
        .iter()
        .filter_map(|t| t["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

/// Pids whose snapshot shows SSL calls.
fn pids_with_ssl_calls(records: &[Value]) -> BTreeSet<u32> {
    records
        .iter()
        .filter(|r| r["type"] == "snapshot" || r["type"] == "summary")
        .flat_map(|r| {
            r["data"]["processes"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|p| p["ssl_calls_total"].as_u64().unwrap_or(0) > 0)
        .filter_map(|p| p["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

/// Sends SIGINT and returns every record, each checked against the schema.
fn stop(mut probe: Proc, output: &Path) -> Vec<Value> {
    signal(probe.pid(), Signal::SIGINT);
    // Every uprobe detach takes the kernel ~100 ms: after a reload, the old workers' detach
    // (left for the end of the tick that reported their exit) and then the master's and the
    // new workers' at the stop can add up to tens of seconds on a loaded machine.
    let status = probe.wait_exit("tls-probe to finish", Duration::from_secs(60));
    assert!(status.success(), "tls-probe failed: {status}");
    let text = fs::read_to_string(output).expect("reading the output");
    for (i, line) in text.lines().enumerate() {
        schema::check_line(i + 1, line);
    }
    read_ndjson(output)
}

#[test]
fn the_master_pid_covers_its_workers_and_those_a_reload_forks() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = NginxTree::start(dir.path());
    let master = nginx.master();
    let old = nginx.workers(2);
    let (probe, output) = attach(dir.path(), master, &["--no-tui"]);

    let records = records_so_far(&output);
    let targets = start_targets(&records);
    let mut expected = old.clone();
    expected.insert(master);
    assert_eq!(
        targets, expected,
        "start.targets: master {master}, workers {old:?}"
    );

    let rate = wrk_rate(wrk(4, &format!("https://127.0.0.1:{}/", nginx.port)));
    assert!(rate > 0.0);
    let busy = wait_for(
        "a snapshot with SSL calls in a worker",
        Duration::from_secs(5),
        || {
            let busy = pids_with_ssl_calls(&records_so_far(&output));
            (!busy.is_empty()).then_some(busy)
        },
    );
    assert!(
        busy.is_subset(&old),
        "SSL calls only in the workers {old:?}, saw them in {busy:?}"
    );

    // `nginx -s reload`: new workers are forked, the old ones leave.
    signal(master, Signal::SIGHUP);
    let new = wait_for("2 new nginx workers", Duration::from_secs(10), || {
        let now = children_of(master);
        let fresh: BTreeSet<u32> = now.difference(&old).copied().collect();
        (fresh.len() == 2).then_some(fresh)
    });
    // The old workers' exits are reported at once (the kernel's exit tracepoint), the new
    // workers are found by the next tick; the old ones' slow uprobe detach comes after.
    let reloaded = Instant::now();
    wait_for(
        "target_attach for the new workers and target_exit for the old",
        Duration::from_secs(15),
        || {
            let records = records_so_far(&output);
            let attached: BTreeSet<u32> = pids_of(&records, "target_attach").collect();
            let exited: BTreeSet<u32> = pids_of(&records, "target_exit").collect();
            (new.is_subset(&attached) && old.is_subset(&exited)).then_some(())
        },
    );

    println!(
        "new workers traced and old ones gone {:?} after the reload",
        reloaded.elapsed()
    );
    let records = stop(probe, &output);
    for r in records.iter().filter(|r| r["type"] == "target_attach") {
        let d = &r["data"];
        if new.contains(&(d["pid"].as_u64().unwrap() as u32)) {
            assert_eq!(d["parent_pid"], master, "{d}");
            assert_eq!(d["comm"], "nginx", "{d}");
            assert!(
                d["library_path"].as_str().unwrap().contains("libssl"),
                "{d}"
            );
        }
    }
    assert!(
        !pids_of(&records, "target_exit").any(|p| p == master),
        "the master did not exit"
    );
}

#[test]
fn no_children_traces_the_master_alone() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = NginxTree::start(dir.path());
    let master = nginx.master();
    let old = nginx.workers(2);
    let (probe, output) = attach(dir.path(), master, &["--no-tui", "--no-children"]);
    signal(master, Signal::SIGHUP);
    wait_for("2 new nginx workers", Duration::from_secs(10), || {
        let fresh: BTreeSet<u32> = children_of(master).difference(&old).copied().collect();
        (fresh.len() == 2).then_some(())
    });
    // Two ticks for a target_attach that must not come.
    let deadline = Instant::now() + Duration::from_secs(2);
    wait_for("two ticks", Duration::from_secs(5), || {
        (Instant::now() >= deadline).then_some(())
    });
    let records = stop(probe, &output);
    assert_eq!(start_targets(&records), BTreeSet::from([master]));
    let attached: Vec<u32> = pids_of(&records, "target_attach").collect();
    assert!(
        attached.is_empty(),
        "--no-children, yet attached to {attached:?}"
    );
}
