//! OpenSSL 1.1.1 as a shared library: a C client (tests/peers/counted_client.c) linked to
//! `libssl.so.1.1` and `libcrypto.so.1.1` with an rpath, talking to `openssl s_server`.
//! Discovery must find both libraries through /proc/PID/maps (attach) and through `ldd`
//! (run), every probe must attach (1.1.1 has the `_ex` calls and the libcrypto key
//! operations), and the calls tls-probe reports must be the ones the client counted.
//! Each mode is asked for explicitly (`--mode full`, `--mode light`) or left out (the
//! default, whatever it is): only `full` promises every call.
//!
//! Debian 12 no longer packages libssl1.1: `cargo xtask setup` builds it once into
//! `<target dir>/openssl-1.1.1` (xtask/src/openssl11.rs). Without it these tests fail and
//! say so; they never skip.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::{Attached, Proc, TLS_PROBE, events, read_ndjson, s_server_rev, wait_for};
use object::{Object as _, ObjectSymbol as _};
use serde_json::Value;
use tls_probe::probe::{discover::KEY_OPS, find_tls_library};

use crate::common;

/// Where `cargo xtask setup` puts the build: the target directory holding this test's
/// binaries (`<target>/debug/tls-probe`).
const BUILD_DIR: &str = "openssl-1.1.1";

/// The probed functions, all of which 1.1.1 has: none may be reported missing.
/// `ERR_set_error` is the name under which the libcrypto error probe (ERR_vset_error in
/// OpenSSL 3, ERR_put_error in 1.1) is reported missing, where that probe exists.
const PROBED: &[&str] = &[
    "ERR_set_error",
    "SSL_read",
    "SSL_read_ex",
    "SSL_write",
    "SSL_write_ex",
    "SSL_peek",
    "SSL_peek_ex",
    "SSL_get_error",
    "SSL_do_handshake",
    "SSL_accept",
    "SSL_connect",
    "SSL_free",
    "libcrypto key operations",
];

/// The 1.1.1 install (`lib/`, `include/`), or a panic that says how to make it.
fn openssl11() -> PathBuf {
    let found = Path::new(TLS_PROBE)
        .ancestors()
        .skip(1)
        .map(|dir| dir.join(BUILD_DIR))
        .find(|dir| dir.join(".built-from").is_file());
    match found {
        Some(dir) => dir,
        None => panic!(
            "OpenSSL 1.1.1 is not built: no finished build ({BUILD_DIR}/.built-from) in any \
             parent directory of {TLS_PROBE}. Run `cargo xtask setup` (it builds it once, ~2 min, \
             from the openssl-src crate on crates.io) with the same CARGO_TARGET_DIR, then run \
             this test again"
        ),
    }
}

/// counted_client.c built against the 1.1.1 headers and linked to its shared libraries,
/// found at run time through an RPATH (not RUNPATH, which libssl's own libcrypto lookup
/// would not use).
fn build_client(ossl: &Path, dir: &Path) -> PathBuf {
    let exe = dir.join("counted_client");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/counted_client.c");
    let lib = ossl.join("lib");
    let out = Command::new("gcc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&exe)
        .arg(format!("-I{}", ossl.join("include").display()))
        .arg(src)
        .arg(lib.join("libssl.so.1.1"))
        .arg(lib.join("libcrypto.so.1.1"))
        .arg(format!("-Wl,-rpath,{},--disable-new-dtags", lib.display()))
        .output()
        .expect("running gcc");
    assert!(out.status.success(), "gcc failed: {out:?}");
    exe
}

/// `tls-probe attach --pid PID --events -o FILE --no-tui [--mode MODE]` (no `--mode`: the
/// default), once the `start` record shows the probes are attached.
fn attach(dir: &Path, pid: u32, mode: Option<&str>) -> Attached {
    let output = dir.join(format!("attach-{pid}.ndjson"));
    let mut cmd = Command::new(TLS_PROBE);
    cmd.args([
        "attach",
        "--pid",
        &pid.to_string(),
        "--events",
        "--no-tui",
        "-o",
    ])
    .arg(&output)
    .stderr(Stdio::inherit());
    if let Some(mode) = mode {
        cmd.args(["--mode", mode]);
    }
    let mut proc = Proc::spawn(&mut cmd);
    wait_for(
        "tls-probe to attach (start record)",
        Duration::from_secs(60),
        || {
            if let Some(status) = proc.child.try_wait().expect("try_wait") {
                panic!("tls-probe exited early with {status}");
            }
            let text = std::fs::read_to_string(&output).ok()?;
            text.lines()
                .next()
                .filter(|l| l.contains("\"start\""))
                .map(|_| ())
        },
    );
    Attached { proc, output }
}

/// A started client (READY printed, no SSL call made yet) and tls-probe attached to it.
struct Attachment {
    ossl: PathBuf,
    client: Proc,
    probe: Attached,
    _server: Proc,
    _dir: tempfile::TempDir,
}

fn start_attached(mode: Option<&str>) -> Attachment {
    let ossl = openssl11();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_client(&ossl, dir.path());
    let (server, port) = s_server_rev(dir.path());
    let mut client = Proc::spawn(Command::new(&exe).arg(port.to_string()));
    let version = client.read_until("the client to start", |l| {
        l.strip_prefix("READY ").map(str::to_owned)
    });
    assert!(version.starts_with("OpenSSL 1.1.1"), "{version}");
    let pid = client.pid();
    check_discovery(pid, &ossl);
    let probe = attach(dir.path(), pid, mode);
    Attachment {
        ossl,
        client,
        probe,
        _server: server,
        _dir: dir,
    }
}

impl Attachment {
    /// Runs the client with `lines` lines to its end; what it did, and every record.
    fn run(mut self, lines: usize) -> (Done, Vec<Value>) {
        let done = drive(&mut self.client, lines);
        let status = self
            .client
            .wait_exit("the client to exit", Duration::from_secs(30));
        assert!(status.success(), "{status}");
        let records = self.probe.finish(Duration::from_secs(60));
        let summary = &records.last().unwrap()["data"];
        assert_eq!(summary["stop_reason"], "targets_exited", "{summary}");
        assert_eq!(check_target(&records, &self.ossl), self.client.pid());
        check_handshake(&records, self.client.pid(), &done);
        (done, records)
    }
}

/// Every SSL call seen is one the client made, on its socket: per function, no more than it
/// counted.
fn check_no_more_calls_than_made(records: &[Value], pid: u32, done: &Done) {
    let calls = ssl_calls(records, pid);
    for c in &calls {
        assert_eq!(c["fd"], done.fd, "{c}");
        let op = c["op"].as_str().unwrap();
        let seen = calls.iter().filter(|x| x["op"] == op).count() as u64;
        let made = done.calls.get(op).copied().unwrap_or(0);
        assert!(seen <= made, "{op}: {seen} seen, {:?} made", done.calls);
    }
}

/// The ops of `calls` in order, for messages.
fn ops(calls: &[&Value]) -> Vec<String> {
    calls
        .iter()
        .map(|c| format!("{}={}", c["op"].as_str().unwrap_or("?"), c["ret"]))
        .collect()
}

/// What the client said it did.
struct Done {
    fd: i64,
    version: String,
    calls: BTreeMap<String, u64>,
}

/// Tells a client that printed READY to connect, sends `lines` lines, closes its stdin and
/// reads its own count of every SSL call. `client` is the process whose stdout is the
/// client's (the client itself, or `tls-probe run`).
fn drive(client: &mut Proc, lines: usize) -> Done {
    client.send_line("connect");
    let (fd, version) = client.read_until("the client to connect", |l| {
        let (fd, version) = l.strip_prefix("CONNECTED ")?.split_once(' ')?;
        Some((fd.parse().ok()?, version.to_owned()))
    });
    for i in 0..lines {
        client.send_line(&format!("line{i}"));
        let want = format!("REPLY {i}enil");
        client.read_until("a reply", |l| (l == want).then_some(()));
    }
    client.close_stdin();
    let calls = client.read_until("the client's counts", |l| {
        serde_json::from_str(l.strip_prefix("DONE ")?).ok()
    });
    Done { fd, version, calls }
}

/// The `ssl_call` events of `pid`.
fn ssl_calls(records: &[Value], pid: u32) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "event" && r["data"]["kind"] == "ssl_call")
        .map(|r| &r["data"])
        .filter(|d| d["pid"] == pid)
        .collect()
}

/// The events of `pid` of `kind`.
fn of_kind<'a>(records: &'a [Value], pid: u32, kind: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| r["type"] == "event" && r["data"]["kind"] == kind)
        .map(|r| &r["data"])
        .filter(|d| d["pid"] == pid)
        .collect()
}

/// The start target names our libssl.so.1.1, as version "1.1", with nothing probed missing.
fn check_target(records: &[Value], ossl: &Path) -> u32 {
    let target = &records[0]["data"]["targets"][0];
    let libssl = ossl.join("lib/libssl.so.1.1");
    assert_eq!(target["library_path"], libssl.to_str().unwrap(), "{target}");
    assert_eq!(target["library_version"], "1.1", "{target}");
    let missing: Vec<&str> = target["missing_symbols"]
        .as_array()
        .unwrap_or_else(|| panic!("no missing_symbols in {target}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for symbol in PROBED {
        assert!(
            !missing.contains(symbol),
            "{symbol} is reported missing from OpenSSL 1.1.1: {target}"
        );
    }
    target["pid"].as_u64().unwrap() as u32
}

/// The handshake: one SSL_connect that succeeded on the client's socket, full (the client
/// verified the server's CertificateVerify with libcrypto's EVP_DigestVerify, so the key-op
/// probes on libcrypto.so.1.1 fired), and the ServerHello read inside it.
fn check_handshake(records: &[Value], pid: u32, done: &Done) {
    let calls = ssl_calls(records, pid);
    let connects: Vec<_> = calls.iter().filter(|c| c["op"] == "SSL_connect").collect();
    assert_eq!(connects.len(), 1, "one SSL_connect: {:?}", ops(&calls));
    let connect = connects[0];
    assert_eq!(connect["ret"], 1, "{connect}");
    assert_eq!(connect["fd"], done.fd, "{connect}");
    assert!(
        connect["key_ops"].as_u64().unwrap() >= 1,
        "no libcrypto key operation inside the handshake: {connect}"
    );
    let hellos = of_kind(records, pid, "server_hello");
    assert_eq!(hellos.len(), 1, "{hellos:?}");
    assert_eq!(done.version, "TLSv1.3");
    assert_eq!(hellos[0]["version"], 0x0304, "{:?}", hellos[0]);
    assert_eq!(
        hellos[0]["sent"], false,
        "the client reads it: {:?}",
        hellos[0]
    );
    assert_eq!(of_kind(records, pid, "ssl_free").len(), 1);
}

/// The client maps 1.1.1's libraries and no OpenSSL 3; discovery names both 1.1 files and
/// finds every probed symbol in them.
fn check_discovery(pid: u32, ossl: &Path) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    for lib in ["libssl.so.1.1", "libcrypto.so.1.1"] {
        let path = ossl.join("lib").join(lib);
        assert!(
            maps.contains(path.to_str().unwrap()),
            "{lib} not mapped: {maps}"
        );
    }
    assert!(
        !maps.contains("libssl.so.3") && !maps.contains("libcrypto.so.3"),
        "the client also maps OpenSSL 3: {maps}"
    );
    let lib = find_tls_library(pid).unwrap();
    assert_eq!(Path::new(&lib.display_path), ossl.join("lib/libssl.so.1.1"));
    assert_eq!(lib.version.as_deref(), Some("1.1"));
    for symbol in PROBED.iter().filter(|s| s.starts_with("SSL_")) {
        assert!(lib.has(symbol), "{symbol} not found in {lib:?}");
    }
    let crypto = lib.crypto.expect("libcrypto.so.1.1 beside libssl.so.1.1");
    assert_eq!(
        Path::new(&crypto.display_path),
        ossl.join("lib/libcrypto.so.1.1")
    );
    // The key operations, 1.1's error function and the async pause: every probed libcrypto
    // function but OpenSSL 3's ERR_vset_error.
    let expected: std::collections::BTreeSet<String> = KEY_OPS
        .iter()
        .chain(&["ERR_put_error", "ASYNC_pause_job"])
        .map(|s| s.to_string())
        .collect();
    assert_eq!(crypto.symbols, expected, "{crypto:?}");
    // What an error probe has to know: 1.1 raises errors through ERR_put_error, and has
    // none of OpenSSL 3's ERR_set_error / ERR_vset_error.
    let data = std::fs::read(&crypto.path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let defines = |name: &str| {
        file.dynamic_symbols()
            .any(|s| s.is_definition() && s.name().is_ok_and(|n| n.split('@').next() == Some(name)))
    };
    assert!(defines("ERR_put_error"));
    assert!(!defines("ERR_set_error") && !defines("ERR_vset_error"));
}

/// `--mode full`: the handshake, and exactly the SSL_read(_ex), SSL_write(_ex) and
/// SSL_get_error calls the client made, on its fd.
#[test]
fn full_mode_sees_every_call_of_a_libssl_1_1_client() {
    const LINES: usize = 6;
    let (done, records) = start_attached(Some("full")).run(LINES);
    let pid = records[0]["data"]["targets"][0]["pid"].as_u64().unwrap() as u32;
    assert_eq!(records[0]["data"]["probe_mode"], "full");
    let calls = ssl_calls(&records, pid);
    let count = |op: &str| calls.iter().filter(|c| c["op"] == op).count() as u64;
    for op in ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"] {
        let made = done.calls[op];
        assert!(made >= (LINES / 2) as u64, "{op}: {:?}", done.calls);
        assert_eq!(
            count(op),
            made,
            "{op}: the client made {made}; seen {:?}",
            ops(&calls)
        );
    }
    check_no_more_calls_than_made(&records, pid, &done);
    let written: u64 = calls
        .iter()
        .filter(|c| c["op"].as_str().unwrap().starts_with("SSL_write"))
        .map(|c| c["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(
        written,
        (0..LINES)
            .map(|i| format!("line{i}\n").len() as u64)
            .sum::<u64>()
    );
    let errors = of_kind(&records, pid, "ssl_error");
    assert_eq!(
        errors.len() as u64,
        done.calls["SSL_get_error"],
        "{errors:?}"
    );
    let want_read = errors.iter().filter(|e| e["code"] == "want_read").count() as u64;
    assert_eq!(want_read, done.calls["want_read"], "{errors:?}");
    assert_eq!(want_read, LINES as u64);
}

/// No `--mode`: whatever the default probes, it finds 1.1.1 and attaches everything, sees
/// the handshake, and reports no call the client did not make.
#[test]
fn default_mode_finds_libssl_1_1_and_sees_its_handshake() {
    let (done, records) = start_attached(None).run(2);
    let pid = records[0]["data"]["targets"][0]["pid"].as_u64().unwrap() as u32;
    check_no_more_calls_than_made(&records, pid, &done);
}

/// `--mode light` on 1.1.1: the once-per-connection probes (handshake with its key
/// operations, SSL_free) and the syscall tracepoints only; no per-call events.
#[test]
fn light_mode_sees_the_libssl_1_1_handshake_only() {
    let (_done, records) = start_attached(Some("light")).run(2);
    let pid = records[0]["data"]["targets"][0]["pid"].as_u64().unwrap() as u32;
    assert_eq!(records[0]["data"]["probe_mode"], "light");
    let calls = ssl_calls(&records, pid);
    assert_eq!(calls.len(), 1, "only SSL_connect: {:?}", ops(&calls));
    assert!(of_kind(&records, pid, "ssl_error").is_empty());
}

/// `tls-probe run` (default mode) finds the library before the program runs, through `ldd`
/// (which follows the RPATH to libssl.so.1.1), so the probes are in place for its connect
/// and first handshake.
#[test]
fn run_finds_libssl_1_1_through_the_rpath() {
    let ossl = openssl11();
    let dir = tempfile::tempdir().unwrap();
    let exe = build_client(&ossl, dir.path());
    let (_server, port) = s_server_rev(dir.path());
    let out = dir.path().join("run.ndjson");
    let mut probe = Proc::spawn(
        Command::new(TLS_PROBE)
            .args(["run", "--no-tui", "--events", "-o"])
            .arg(&out)
            .arg("--")
            .arg(&exe)
            .arg(port.to_string())
            .stderr(Stdio::inherit()),
    );
    probe.read_until("the client to start", |l| {
        l.strip_prefix("READY ").map(|_| ())
    });
    let done = drive(&mut probe, 2);
    let status = probe.wait_exit("tls-probe run to end", Duration::from_secs(90));
    assert_eq!(status.code(), Some(0));
    let records = read_ndjson(&out);
    let pid = check_target(&records, &ossl);
    check_handshake(&records, pid, &done);
    check_no_more_calls_than_made(&records, pid, &done);
    let connects = events(&records, "connect");
    assert!(
        connects
            .iter()
            .any(|c| c["pid"] == pid && c["fd"] == done.fd),
        "the client's connect: {connects:?}"
    );
}

/// OpenSSL 1.1.1 has the same shape as 3.x for reads and writes: SSL_read and SSL_read_ex
/// (and the write pair) call one internal function with their arguments, whose first
/// instruction is emulated, so the per-call probes sit there (probe/placement.rs). Its peek
/// pair does not have that shape and keeps its entry probes.
#[test]
fn the_per_call_probes_of_1_1_1_sit_on_the_shared_callees() {
    let lib = openssl11().join("lib/libssl.so.1.1");
    let placement = tls_probe::probe::placement::Placement::of_file(&lib);
    let moved: Vec<_> = placement
        .sites
        .iter()
        .map(|s| s.functions.clone())
        .collect();
    assert_eq!(
        moved,
        [
            vec!["SSL_read", "SSL_read_ex"],
            vec!["SSL_write", "SSL_write_ex"],
        ],
        "{placement:#?}"
    );
}
