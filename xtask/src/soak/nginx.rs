//! The soak's nginx: a master and 4 workers serving TLS on two loopback ports, one that
//! refuses session resumption (every connection a full handshake) and one with a shared
//! session cache and tickets (wrk resumes there), each logging one line per request with
//! `$connection_requests $ssl_session_reused`: the server's own count of connections and
//! resumed handshakes.

use std::{
    fs,
    io::{Read, Seek, SeekFrom},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::{
    bench::proc::{self, Guard},
    sh::{self, cmd},
};

pub const WORKERS: usize = 4;

pub struct Nginx {
    master: Option<Guard>,
    pub full_port: u16,
    pub resumed_port: u16,
    logs: [Log; 2],
}

/// An access log read as it grows.
struct Log {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

/// Requests the server logged: new connections (a first request), and of those resumed.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Served {
    pub requests: u64,
    pub connections: u64,
    pub resumed: u64,
}

impl Nginx {
    pub fn start(dir: &Path) -> Result<Self> {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        sh::query(
            cmd("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        )
        .context("generating a certificate with `openssl req -x509` failed")?;
        let ports = free_ports()?;
        let logs = [dir.join("full.log"), dir.join("resumed.log")];
        let d = dir.display();
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes {WORKERS};
worker_rlimit_nofile 16384;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 16384; }}
http {{
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    log_format conn "$connection_requests $ssl_session_reused";
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    server {{
        listen 127.0.0.1:{full} ssl backlog=16384;
        ssl_session_cache off;
        ssl_session_tickets off;
        access_log {full_log} conn buffer=256k flush=1s;
        location / {{ return 200 "ok\n"; }}
    }}
    server {{
        listen 127.0.0.1:{resumed} ssl backlog=16384;
        ssl_session_cache shared:SOAK:64m;
        access_log {resumed_log} conn buffer=256k flush=1s;
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#,
            cert = cert.display(),
            key = key.display(),
            full = ports.0,
            resumed = ports.1,
            full_log = logs[0].display(),
            resumed_log = logs[1].display(),
        );
        for sub in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let path = dir.join("nginx.conf");
        fs::write(&path, conf)?;
        let mut command = cmd("nginx");
        command
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&path)
            .args(["-e", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("nginx.stderr"))?);
        eprintln!("+ {}", sh::display(&command));
        let child = command
            .spawn()
            .context("could not start nginx: is nginx-light installed (`cargo xtask setup`)?")?;
        let mut master = Guard::new("nginx", child);
        let pid = master.pid();
        proc::wait_for(
            "nginx to start its 4 workers",
            Duration::from_secs(30),
            || Ok(master.exited()?.is_none()),
            || (children(pid).len() == WORKERS).then_some(()),
        )
        .with_context(|| proc::tail(&dir.join("nginx.stderr"), 2000))?;
        Ok(Self {
            master: Some(master),
            full_port: ports.0,
            resumed_port: ports.1,
            logs: logs.map(|path| Log {
                path,
                offset: 0,
                partial: Vec::new(),
            }),
        })
    }

    pub fn master(&self) -> u32 {
        self.master.as_ref().map_or(0, Guard::pid)
    }

    /// What the two servers logged since the last call (nginx flushes its logs each second).
    pub fn served(&mut self) -> Served {
        let mut s = Served::default();
        for log in &mut self.logs {
            log.read(&mut s);
        }
        s
    }
}

impl Log {
    fn read(&mut self, s: &mut Served) {
        let Ok(mut f) = fs::File::open(&self.path) else {
            return;
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        for line in self.partial[..end].split(|&b| b == b'\n') {
            let mut words = line.split(|&b| b == b' ');
            let (Some(n), Some(reused)) = (words.next(), words.next()) else {
                continue;
            };
            s.requests += 1;
            if n == b"1" {
                s.connections += 1;
                s.resumed += u64::from(reused == b"r");
            }
        }
        self.partial.drain(..=end);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(master) = self.master.take() {
            let workers = children(master.pid());
            if master
                .stop(Signal::SIGTERM, Duration::from_secs(20))
                .is_err()
            {
                for w in workers {
                    proc::signal_pid(w, Signal::SIGKILL);
                }
            }
        }
    }
}

fn children(pid: u32) -> Vec<u32> {
    i32::try_from(pid)
        .ok()
        .and_then(|p| procfs::process::Process::new(p).ok())
        .and_then(|p| p.task_main_thread().ok())
        .and_then(|t| t.children().ok())
        .unwrap_or_default()
}

fn free_ports() -> Result<(u16, u16)> {
    let bind = || TcpListener::bind("127.0.0.1:0").context("binding a free loopback port");
    let (a, b) = (bind()?, bind()?);
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}
