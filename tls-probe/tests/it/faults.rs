//! Faults a profiler left on a production server must survive: `kill -9` of tls-probe
//! mid-run (in full and in the default mode), a target that forks 200 short-lived TLS
//! children, a target stopped (SIGSTOP) for 5 s, and two tls-probe instances on one target.
//! (The output disk filling up mid-run is in tests/export.rs.)
//!
//! "No uprobe left behind" is checked in the target itself: the kernel installs a uprobe by
//! writing an int3 (0xcc) over the first byte of the probed instruction in the process's
//! own copy of the page, so the first byte of every exported function of the TLS libraries
//! the target maps, read through /proc/PID/mem, shows whether any probe is still in place.
//! The same check is made while attached, to show it sees the probes.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::FileExt,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Attached, Proc, wait_for};
use nix::sys::signal::Signal;
use object::{Object, ObjectSegment, ObjectSymbol};
use scenario_common::{Nginx, NginxConf, changes, records_so_far, signal, wrk, wrk_rate};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common, schema};

/// The TLS libraries a process maps (libssl, libcrypto): path to (file offset, start
/// address) of each of their mappings.
fn tls_mappings(pid: u32) -> BTreeMap<String, Vec<(u64, u64, u64)>> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("reading maps");
    let mut out: BTreeMap<String, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(path) = f.get(5) else { continue };
        if !(path.contains("libssl") || path.contains("libcrypto")) {
            continue;
        }
        let (lo, hi) = f[0].split_once('-').expect("range");
        let lo = u64::from_str_radix(lo, 16).unwrap();
        let hi = u64::from_str_radix(hi, 16).unwrap();
        let off = u64::from_str_radix(f[2], 16).unwrap();
        out.entry((*path).to_owned())
            .or_default()
            .push((off, lo, hi));
    }
    out
}

/// How many exported functions of the target's TLS libraries start with an int3 now, out
/// of how many were read: the uprobes installed in this process.
fn int3s(pid: u32) -> (usize, usize) {
    let mem = fs::File::open(format!("/proc/{pid}/mem")).expect("opening /proc/PID/mem");
    let (mut hits, mut read) = (0, 0);
    for (path, maps) in tls_mappings(pid) {
        let data = fs::read(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let elf = object::File::parse(&*data).unwrap_or_else(|e| panic!("parsing {path}: {e}"));
        for sym in elf.dynamic_symbols() {
            if sym.kind() != object::SymbolKind::Text || sym.is_undefined() || sym.size() == 0 {
                continue;
            }
            // The file offset of the symbol, then the address it is mapped at.
            let Some(file_off) = elf.segments().find_map(|s| {
                let (a, sz) = (s.address(), s.size());
                (sym.address() >= a && sym.address() < a + sz)
                    .then(|| s.file_range().0 + (sym.address() - a))
            }) else {
                continue;
            };
            let Some(addr) = maps
                .iter()
                .find(|(off, lo, hi)| file_off >= *off && file_off < off + (hi - lo))
                .map(|(off, lo, _)| lo + (file_off - off))
            else {
                continue;
            };
            let mut b = [0u8];
            if mem.read_exact_at(&mut b, addr).is_ok() {
                read += 1;
                hits += usize::from(b[0] == 0xcc);
            }
        }
    }
    (hits, read)
}

fn int3s_in(pids: &[u32]) -> usize {
    pids.iter().map(|&p| int3s(p).0).sum()
}

/// One TLS handshake (and an HTTP request) to 127.0.0.1:port with `openssl s_client`.
fn handshake_ok(port: u16) -> Result<(), String> {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("running openssl s_client");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() && text.contains("CONNECTION ESTABLISHED") {
        Ok(())
    } else {
        Err(format!("{}: {text}", out.status))
    }
}

/// Checks every record against the schema (it denies unknown fields).
fn check_schema(records: &[Value]) {
    for (i, r) in records.iter().enumerate() {
        schema::check_line(i + 1, &r.to_string());
    }
}

/// Every line of a file written by a tls-probe that was killed: whole lines, each JSON.
fn whole_lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).expect("reading the output");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the output of a killed tls-probe ends in a partial line: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("line {}: {e}: {l}", i + 1))
        })
        .collect()
}

/// nginx with a master and two workers under keep-alive load, tls-probe attached in
/// `mode` with every event written; `kill -9` once records flow.
fn kill_9_mid_run(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start_with(
        dir.path(),
        NginxConf {
            workers: Some(2),
            ..NginxConf::default()
        },
    );
    let mut pids: Vec<u32> = nginx.workers(2).into_iter().collect();
    pids.push(nginx.master());
    assert_eq!(
        int3s_in(&pids),
        0,
        "nginx carries uprobes before the attach"
    );
    let (hooks, read) = int3s(pids[0]);
    assert!(
        read > 500,
        "read only {read} function entries of libssl/libcrypto"
    );
    assert_eq!(hooks, 0);

    let probe = Attached::start(dir.path(), nginx.master(), &["--mode", mode, "--no-tui"]);
    let load = wrk(20, &format!("https://127.0.0.1:{}/", nginx.port));
    // The check sees the probes while they are attached.
    let attached = wait_for(
        "the attached uprobes to show as int3s in nginx",
        Duration::from_secs(30),
        || Some(int3s_in(&pids)).filter(|&n| n > 0),
    );
    wait_for("3 snapshots in the output", Duration::from_secs(30), || {
        (records_so_far(&probe)
            .iter()
            .filter(|r| r["type"] == "snapshot")
            .count()
            >= 3)
            .then_some(())
    });
    let output = probe.output.clone();
    let mut proc = probe.proc;
    signal(proc.pid(), Signal::SIGKILL);
    let status = proc.wait_exit("tls-probe to die", Duration::from_secs(60));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    wait_for(
        "every uprobe gone from nginx after kill -9",
        Duration::from_secs(60),
        || (int3s_in(&pids) == 0).then_some(()),
    );
    let rate = wrk_rate(load);
    assert!(rate > 0.0, "wrk made no request");
    handshake_ok(nginx.port).expect("a handshake with nginx after the kill");
    let records = whole_lines(&output);
    assert_eq!(records[0]["type"], "start", "{}", records[0]);
    assert!(records.len() > 1, "only the start record was written");
    eprintln!(
        "{mode}: {attached} uprobes seen in nginx while attached, none after kill -9; \
         {} whole records; wrk {rate:.0} requests/s",
        records.len()
    );
}

#[test]
fn kill_9_in_full_mode_leaves_the_target_serving_without_uprobes_and_whole_lines() {
    kill_9_mid_run("full");
}

#[test]
fn kill_9_in_the_default_mode_leaves_the_target_serving_without_uprobes_and_whole_lines() {
    kill_9_mid_run("auto");
}

/// A Python target that, told to, forks 200 children in waves of 10, each child making one
/// TLS connection (handshake, 0.2 s idle, request, reply) and exiting, while the parent
/// makes one TLS connection of its own per wave.
const FORKER: &str = r#"
import os, socket, ssl, sys, time
port = int(sys.argv[1])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

def fetch(idle):
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port))) as s:
        time.sleep(idle)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while s.recv(4096):
            pass

print("READY", flush=True)
sys.stdin.readline()
ok = 0
for wave in range(20):
    kids = []
    for i in range(10):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fetch(0.2)
                code = 0
            finally:
                os._exit(code)
        kids.append(pid)
    fetch(0)
    for pid in kids:
        _, status = os.waitpid(pid, 0)
        ok += status == 0
print("DONE", ok, flush=True)
sys.stdin.readline()
"#;

#[test]
fn a_target_forking_200_short_lived_tls_children_keeps_the_run_sane() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path());
    let mut py = Proc::spawn(Command::new("python3").args(["-c", FORKER, &nginx.port.to_string()]));
    py.read_until("the forker to start", |l| (l == "READY").then_some(()));
    let parent = py.pid();
    let probe = Attached::start(dir.path(), parent, &["--mode", "full", "--no-tui"]);
    py.send_line("go");
    let ok: u64 = py.read_until("200 children", |l| {
        l.strip_prefix("DONE ").map(|n| n.parse().unwrap())
    });
    assert_eq!(ok, 200, "children that completed their TLS exchange");
    let records = probe.interrupt(Duration::from_secs(120));
    check_schema(&records);
    let s = common::summary(&records);
    assert_eq!(s["stop_reason"], "signal", "{s}");
    let pids_of = |kind: &str| -> Vec<u64> {
        records
            .iter()
            .filter(|r| r["type"] == kind)
            .filter_map(|r| r["data"]["pid"].as_u64())
            .collect()
    };
    let (attached, exited) = (pids_of("target_attach"), pids_of("target_exit"));
    let procs = s["processes"].as_array().unwrap();
    let parent_hs = procs
        .iter()
        .find(|p| p["pid"] == parent)
        .map(|p| p["handshakes"]["completed_total"].clone())
        .unwrap_or_default();
    let child_calls: u64 = procs
        .iter()
        .filter(|p| p["pid"] != parent)
        .filter_map(|p| p["ssl_calls_total"].as_u64())
        .sum();
    let lost = &s["lost"];
    eprintln!(
        "forker: {} children attached, {} exits, parent handshakes {parent_hs}, children's \
         SSL calls {child_calls}, events {}, lost {lost}",
        attached.len(),
        exited.len(),
        s["events"]
    );
    // The parent's own 20 connections are all seen.
    assert_eq!(parent_hs, 20, "the parent's handshakes: {s}");
    // tls-probe looks for new descendants once a second, so it attaches the children alive
    // at a look; each one attached is seen to exit, and none is counted twice.
    assert!(
        attached.len() <= 200,
        "{} attaches for 200 children",
        attached.len()
    );
    for pid in &attached {
        assert!(
            exited.contains(pid),
            "child {pid} attached, never seen to exit"
        );
    }
    let mut unique = attached.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), attached.len(), "a child attached twice");
    for k in ["ringbuf", "inflight", "decode"] {
        assert_eq!(lost[k], 0, "lost {k}: {s}");
    }
    assert!(
        opened_findings(&records).is_empty(),
        "findings on a healthy forker: {:?}",
        opened_findings(&records)
    );
}

fn opened_findings(records: &[Value]) -> Vec<String> {
    changes(records)
        .into_iter()
        .filter(|c| c["change"] == "opened")
        .map(|c| c["finding"]["kind"].to_string())
        .collect()
}

#[test]
fn a_target_stopped_for_5_s_raises_no_finding_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path());
    let pid = nginx.master();
    let probe = Attached::start(dir.path(), pid, &["--mode", "full", "--no-tui"]);
    // wrk runs 3 s at full speed; the server is stopped after the first second of it and
    // continued 5 s later, so the clients' requests wait on a stopped process.
    let load = wrk(10, &format!("https://127.0.0.1:{}/", nginx.port));
    wait_for("SSL calls in a snapshot", Duration::from_secs(30), || {
        records_so_far(&probe)
            .iter()
            .filter(|r| r["type"] == "snapshot")
            .flat_map(|r| {
                r["data"]["processes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .any(|p| p["ssl_calls_total"].as_u64().unwrap_or(0) > 0)
            .then_some(())
    });
    signal(pid, Signal::SIGSTOP);
    let stopped_at = records_so_far(&probe).len();
    // The stop lasts five of tls-probe's snapshots: the run must go on writing them.
    wait_for(
        "5 snapshots while nginx is stopped",
        Duration::from_secs(30),
        || {
            (records_so_far(&probe)[stopped_at..]
                .iter()
                .filter(|r| r["type"] == "snapshot")
                .count()
                >= 5)
                .then_some(())
        },
    );
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(state.contains(") T "), "nginx is not stopped: {state}");
    signal(pid, Signal::SIGCONT);
    let _ = wrk_rate(load);
    handshake_ok(nginx.port).expect("a handshake after SIGCONT");
    let before = records_so_far(&probe).len();
    wait_for("snapshots after SIGCONT", Duration::from_secs(30), || {
        (records_so_far(&probe)[before..]
            .iter()
            .filter(|r| r["type"] == "snapshot")
            .count()
            >= 2)
            .then_some(())
    });
    let records = probe.interrupt(Duration::from_secs(60));
    check_schema(&records);
    let s = common::summary(&records);
    assert_eq!(s["stop_reason"], "signal", "{s}");
    assert!(
        opened_findings(&records).is_empty(),
        "findings on a server that was only stopped: {:?}",
        opened_findings(&records)
    );
}

fn ssl_calls_of(records: &[Value], pid: u32) -> u64 {
    common::summary(records)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["pid"] == pid)
        .filter_map(|p| p["ssl_calls_total"].as_u64())
        .sum()
}

/// Two tls-probe instances on one target both attach and both see its calls: the kernel
/// lets many uprobes sit on one instruction (each instance its own programs, maps and
/// links), and each instance filters on its own pid set.
#[test]
fn two_instances_on_one_target_both_see_its_calls() {
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path());
    let pid = nginx.master();
    let first = Attached::start(dir.path(), pid, &["--mode", "full", "--no-tui"]);
    let second_dir = dir.path().join("second");
    fs::create_dir_all(&second_dir).unwrap();
    let second = Attached::start(&second_dir, pid, &["--mode", "full", "--no-tui"]);
    let rate = wrk_rate(wrk(10, &format!("https://127.0.0.1:{}/", nginx.port)));
    let a = first.interrupt(Duration::from_secs(60));
    let b = second.interrupt(Duration::from_secs(60));
    let (ca, cb) = (ssl_calls_of(&a, pid), ssl_calls_of(&b, pid));
    eprintln!("two instances: wrk {rate:.0} requests/s; SSL calls seen {ca} and {cb}");
    assert!(ca > 0 && cb > 0, "SSL calls seen: {ca} and {cb}");
    // Both saw the same run: the same calls, give or take those at the edges of the
    // second's shorter attach.
    let (lo, hi) = (ca.min(cb) as f64, ca.max(cb) as f64);
    assert!(lo / hi > 0.5, "SSL calls seen: {ca} and {cb}");
    for r in [&a, &b] {
        check_schema(r);
        assert!(opened_findings(r).is_empty(), "{:?}", opened_findings(r));
    }
}
