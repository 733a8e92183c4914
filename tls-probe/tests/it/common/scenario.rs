//! Helpers for tests that run targets under `tls-probe attach` and read the findings it
//! writes: the project's scenario programs, and a real server (nginx) with its load
//! (wrk, a slow uploader). A submodule of `common`.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

use crate::common::{
    Attached, Proc, TLS_PROBE, cert_bits, free_port, scenarios, wait_for, wait_listening,
};

/// `tests/peers/NAME.c` built with gcc against the system's libssl (and `extra` flags, e.g.
/// `-pthread`), into `dir/NAME`.
pub fn build_c_peer(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let exe = dir.join(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/peers/{name}.c"));
    let out = Command::new("gcc")
        .args(["-O1", "-Wall", "-Werror"])
        .args(extra)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .args(["-lssl", "-lcrypto"])
        .output()
        .unwrap_or_else(|e| panic!("running gcc (needed to build {}): {e}", src.display()));
    assert!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// A number in [lo, hi) from the clock: the moment a test's pathology happens is not chosen
/// by the test.
pub fn random_between(lo: u64, hi: u64) -> u64 {
    let seed = monotonic_ns() ^ u64::from(std::process::id()).rotate_left(32);
    // splitmix64, once.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    lo + (z ^ (z >> 31)) % (hi - lo)
}

/// CLOCK_MONOTONIC now, in ns: the clock of every `ts_ns` tls-probe writes.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A scenario program (`tls-probe-scenarios NAME --wait-stdin`), stopped at READY.
pub struct Scenario {
    pub name: String,
    pub proc: Proc,
    /// The READY record: pid, and per thread its role, tid, fds and SSL*s.
    pub ready: Value,
}

impl Scenario {
    /// Starts the scenario and waits for its READY line.
    pub fn start(name: &str, duration_secs: f64) -> Self {
        let mut proc = Proc::spawn(Command::new(scenarios()).args([
            name,
            "--wait-stdin",
            "--duration",
            &duration_secs.to_string(),
        ]));
        let ready = proc.read_until(&format!("{name}'s READY line"), |l| {
            serde_json::from_str(l.strip_prefix("READY ")?).ok()
        });
        Self {
            name: name.to_owned(),
            proc,
            ready,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The first thread announced with `role`.
    pub fn thread(&self, role: &str) -> &Value {
        self.ready["threads"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["role"] == role))
            .unwrap_or_else(|| panic!("no {role} thread in READY: {}", self.ready))
    }

    pub fn tid(&self, role: &str) -> u64 {
        self.thread(role)["tid"].as_u64().expect("tid")
    }

    /// The first fd of the first `role` thread.
    pub fn fd(&self, role: &str) -> i64 {
        self.thread(role)["fds"][0].as_i64().expect("an fd")
    }

    /// The first SSL* of the first `role` thread.
    pub fn ssl(&self, role: &str) -> u64 {
        self.thread(role)["ssl"][0].as_u64().expect("an SSL*")
    }

    /// Releases the load; returns the CLOCK_MONOTONIC time just before.
    pub fn go(&mut self) -> u64 {
        let t = monotonic_ns();
        self.proc.send_line("go");
        t
    }

    /// Waits for DONE and the exit; returns the DONE record.
    pub fn done(&mut self, timeout: Duration) -> Value {
        let name = self.name.clone();
        let done = self.proc.read_until(&format!("{name}'s DONE line"), |l| {
            serde_json::from_str(l.strip_prefix("DONE ")?).ok()
        });
        let status = self.proc.wait_exit(&format!("{name} to exit"), timeout);
        assert!(status.success(), "{name} failed: {status}");
        done
    }
}

/// `tls-probe attach --mode full --pid PID -o FILE` without `--events`: the agent keeps up with a
/// target that makes a hundred thousand probe events a second only if it does not also
/// write each one. Waits until the `start` record shows the probes are attached.
pub fn attach(dir: &Path, pid: u32) -> Attached {
    attach_mode(dir, pid, "full")
}

/// [`attach`] with `--mode MODE`.
pub fn attach_mode(dir: &Path, pid: u32, mode: &str) -> Attached {
    let output = dir.join(format!("attach-{pid}.ndjson"));
    let proc = Proc::spawn(
        Command::new(TLS_PROBE)
            .args(["attach", "--mode", mode, "--pid", &pid.to_string(), "-o"])
            .arg(&output)
            .stderr(Stdio::inherit()),
    );
    let mut me = Attached { proc, output };
    let (child, out) = (&mut me.proc.child, &me.output);
    wait_for(
        "tls-probe to attach (start record)",
        Duration::from_secs(60),
        || {
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("tls-probe exited early with {status}");
            }
            let text = std::fs::read_to_string(out).ok()?;
            text.lines()
                .next()
                .filter(|l| l.contains("\"start\""))
                .map(|_| ())
        },
    );
    me
}

/// The records written so far (the run goes on): whole lines only.
pub fn records_so_far(a: &Attached) -> Vec<Value> {
    let text = std::fs::read_to_string(&a.output).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |i| &text[..=i]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The `data` (a FindingChange) of every `finding` record.
pub fn changes(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["type"] == "finding")
        .map(|r| &r["data"])
        .collect()
}

/// The findings opened, of `kind`.
pub fn opened<'a>(records: &'a [Value], kind: &str) -> Vec<&'a Value> {
    changes(records)
        .into_iter()
        .filter(|c| c["change"] == "opened" && c["finding"]["kind"] == kind)
        .map(|c| &c["finding"])
        .collect()
}

/// One line per finding change, for assertion messages.
pub fn describe(records: &[Value]) -> String {
    let lines: Vec<String> = changes(records)
        .iter()
        .map(|c| {
            let f = &c["finding"];
            format!(
                "{} {} pid={} tid={} fd={} ssl={}: {}",
                c["change"], f["kind"], f["pid"], f["tid"], f["fd"], f["ssl"], f["evidence"]
            )
        })
        .collect();
    if lines.is_empty() {
        "no finding".to_owned()
    } else {
        lines.join("\n")
    }
}

/// The last snapshot's entry for thread `tid`, if any.
pub fn last_thread_snapshot(records: &[Value], tid: u64) -> Option<&Value> {
    records
        .iter()
        .rev()
        .filter(|r| r["type"] == "snapshot")
        .find_map(|r| {
            r["data"]["threads"]
                .as_array()?
                .iter()
                .find(|t| t["tid"] == tid)
        })
}

/// The highest value of `field` for thread `tid` over every snapshot.
pub fn peak_thread_metric(records: &[Value], tid: u64, field: &str) -> f64 {
    records
        .iter()
        .filter(|r| r["type"] == "snapshot")
        .filter_map(|r| {
            r["data"]["threads"]
                .as_array()?
                .iter()
                .find(|t| t["tid"] == tid)?[field]
                .as_f64()
        })
        .fold(0.0, f64::max)
}

/// Nanoseconds as seconds, for messages.
pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The path of an installed program, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// The path of a program a test needs. A missing one fails the test, saying what installs
/// it: a test that passes without running would hide that nothing was checked.
pub fn require(name: &str, package: &str) -> PathBuf {
    which(name).unwrap_or_else(|| {
        panic!(
            "{name} is not installed, and this test needs it: run `cargo xtask setup` (it \
             installs nginx-light and wrk), or apt-get install -y {package}"
        )
    })
}

/// How the nginx of a test is set up: the parts that differ between tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct NginxConf<'a> {
    /// None: one process (`master_process off`); Some(n): a master and `n` workers.
    pub workers: Option<usize>,
    /// Also listen in the clear on `plain_port`.
    pub plain: bool,
    /// Directives added to the `server {}` block, e.g. `ssl_session_cache off;`.
    pub server_extra: &'a str,
    /// The RSA key size of the certificate; 2048 when None.
    pub rsa_bits: Option<u32>,
}

/// nginx under a test's directory: a small page with keep-alive over TLS on `port` (and in
/// the clear on `plain_port` when asked), uploads to `/upload` read into temporary files.
/// Started in the foreground (no daemon); on drop the master is asked to stop (SIGTERM,
/// which stops the workers too), and whatever is left is killed.
pub struct Nginx {
    pub proc: Proc,
    pub port: u16,
    pub plain_port: u16,
}

impl Nginx {
    /// One process (no master), with a plain port.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(
            dir,
            NginxConf {
                plain: true,
                ..NginxConf::default()
            },
        )
    }

    pub fn start_with(dir: &Path, c: NginxConf<'_>) -> Self {
        let (port, plain_port) = (free_port(), free_port());
        let (key, crt) = cert_bits(dir, c.rsa_bits.unwrap_or(2048));
        let root = dir.join("www");
        fs::create_dir_all(&root).expect("creating the web root");
        fs::write(root.join("index.html"), "hello from nginx\n".repeat(32)).expect("index");
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir_all(dir.join(sub)).expect("creating a temp dir");
        }
        let d = dir.display();
        let process = match c.workers {
            None => "master_process off;\nworker_processes 1;\n".to_owned(),
            // Workers as root: they read the key and the temp dirs under the test's dir.
            Some(n) => format!("master_process on;\nworker_processes {n};\nuser root;\n"),
        };
        let plain = if c.plain {
            format!("listen 127.0.0.1:{plain_port};")
        } else {
            String::new()
        };
        // An upload is read whole into a file before it would go upstream (proxy request
        // buffering); nothing listens upstream, and the body is never complete anyway.
        let conf = format!(
            "daemon off;\n\
             {process}\
             pid {d}/nginx.pid;\n\
             error_log stderr error;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {d}/client_body;\n\
               proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n\
               uwsgi_temp_path {d}/uwsgi;\n\
               scgi_temp_path {d}/scgi;\n\
               keepalive_requests 1000000;\n\
               keepalive_timeout 60s;\n\
               client_max_body_size 0;\n\
               server {{\n\
                 listen 127.0.0.1:{port} ssl;\n\
                 {plain}\n\
                 ssl_certificate {crt};\n\
                 ssl_certificate_key {key};\n\
                 {extra}\n\
                 root {root};\n\
                 location /upload {{ proxy_pass http://127.0.0.1:9; }}\n\
               }}\n\
             }}\n",
            crt = crt.display(),
            key = key.display(),
            root = root.display(),
            extra = c.server_extra,
        );
        let path = dir.join("nginx.conf");
        fs::write(&path, conf).expect("writing nginx.conf");
        let nginx = require("nginx", "nginx-light");
        let proc = Proc::spawn(
            Command::new(nginx)
                .args(["-e", "stderr", "-p"])
                .arg(dir)
                .arg("-c")
                .arg(&path),
        );
        let me = Self {
            proc,
            port,
            plain_port,
        };
        wait_listening(port);
        if c.plain {
            wait_listening(plain_port);
        }
        if let Some(n) = c.workers {
            me.workers(n);
        }
        me
    }

    /// The pid started: the master, or the only process.
    pub fn master(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits until the master has exactly `n` children, and returns them.
    pub fn workers(&self, n: usize) -> BTreeSet<u32> {
        wait_for(
            &format!("{n} nginx workers"),
            Duration::from_secs(10),
            || Some(children_of(self.master())).filter(|w| w.len() == n),
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let master = self.master();
        let workers = children_of(master);
        signal(master, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.proc.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for w in workers.into_iter().chain(children_of(master)) {
            signal(w, Signal::SIGKILL);
        }
        // Proc's own drop kills the master if it is still there.
    }
}

/// The children of `pid`, from the parent pid of every process in /proc.
pub fn children_of(pid: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir("/proc").expect("reading /proc").flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // state, ppid; a zombie is gone as far as the test is concerned.
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) && fields[0] != "Z" {
            out.insert(child);
        }
    }
    out
}

pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// `wrk -t1 -cCONNS -d3s URL`: keep-alive load at full speed for 3 seconds.
pub fn wrk(conns: u32, url: &str) -> Child {
    Command::new(require("wrk", "wrk"))
        .args(["-t1", &format!("-c{conns}"), "-d3s", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("running wrk")
}

/// Waits for a wrk run and returns its requests per second.
pub fn wrk_rate(child: Child) -> f64 {
    let out = child.wait_with_output().expect("waiting for wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output: {text}"))
}

/// An HTTPS upload (POST /upload) for `secs` seconds, paced the way it crosses a network:
/// each 16 KiB record sent in 1448-byte segments 0.6 ms apart. Python's `ssl` on memory
/// BIOs makes the records; the pacing is plain socket writes.
pub fn slow_upload(port: u16, secs: f64) -> Child {
    Command::new("python3")
        .args(["-c", SLOW_UPLOAD, &port.to_string(), &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("running python3")
}

/// Waits for [`slow_upload`]; returns its "N bytes at R KiB/s" line.
pub fn upload_rate(child: Child) -> String {
    let out = child.wait_with_output().expect("waiting for the upload");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "the upload failed: {text}");
    format!("an upload of {text} in 1448-byte segments")
}

const SLOW_UPLOAD: &str = r#"
import socket, ssl, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
sock = socket.create_connection(("127.0.0.1", port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")

def send(segment=None):
    data = outgoing.read()
    step = segment or max(len(data), 1)
    for i in range(0, len(data), step):
        sock.sendall(data[i:i + step])
        if segment:
            time.sleep(0.0006)

while True:
    try:
        tls.do_handshake()
        send()
        break
    except ssl.SSLWantReadError:
        send()
        incoming.write(sock.recv(65536))
tls.write(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % (1 << 30))
send()
sent, start = 0, time.time()
while time.time() - start < secs:
    tls.write(b"x" * 16384)
    send(1448)
    sent += 16384
print("%d bytes at %.0f KiB/s" % (sent, sent / 1024 / (time.time() - start)))
"#;

/// A TLS server on 127.0.0.1 that completes each handshake, then holds the connection
/// without reading or writing (so that a client's writes block). Runs until the test
/// process exits.
pub fn silent_server(dir: &Path) -> u16 {
    use std::{
        net::{TcpListener, TcpStream},
        sync::{Arc, Mutex},
        thread,
    };

    use openssl::ssl::{SslAcceptor, SslFiletype, SslMethod, SslStream};

    let (key, crt) = crate::common::cert(dir);
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).expect("SslAcceptor");
    b.set_private_key_file(&key, SslFiletype::PEM)
        .expect("server key");
    b.set_certificate_chain_file(&crt).expect("server cert");
    let acceptor = Arc::new(b.build());
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local_addr").port();
    let held: Arc<Mutex<Vec<SslStream<TcpStream>>>> = Arc::default();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (acceptor, held) = (acceptor.clone(), held.clone());
            thread::spawn(move || {
                if let Ok(s) = acceptor.accept(stream) {
                    held.lock().expect("held").push(s);
                }
            });
        }
    });
    port
}
