//! The nginx under test: one worker serving TLS on two loopback ports, a keep-alive server
//! and a handshake server that refuses every form of session resumption.

use std::{
    fmt::Write as _,
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use super::proc::{self, Guard};
use crate::sh::{self, cmd};

/// A running nginx; stopped (master sent SIGTERM, then reaped) when dropped.
pub struct Nginx {
    master: Option<Guard>,
    pub worker: u32,
    pub keepalive_port: u16,
    pub handshake_port: u16,
    /// One line per request on the handshake server: `$connection_requests
    /// $ssl_session_reused $ssl_protocol`.
    pub handshake_log: PathBuf,
    error_log: PathBuf,
}

impl Nginx {
    /// Generates a self-signed RSA-2048 certificate and a config in `dir`, starts nginx in
    /// the foreground (`daemon off`) and waits until its worker exists and both ports accept.
    pub fn start(dir: &Path) -> Result<Self> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        sh::query(cmd("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"]).args([
            "-keyout".as_ref(),
            key.as_os_str(),
            "-out".as_ref(),
            cert.as_os_str(),
            "-days".as_ref(),
            "2".as_ref(),
            "-subj".as_ref(),
            "/CN=127.0.0.1".as_ref(),
        ]))
        .context("generating a self-signed certificate with `openssl req -x509` failed; is the openssl CLI installed?")?;

        let (keepalive_port, handshake_port) = free_ports()?;
        let handshake_log = dir.join("handshake-access.log");
        let error_log = dir.join("error.log");
        let config = dir.join("nginx.conf");
        let text = config_text(&ConfigPaths {
            dir,
            cert: &cert,
            key: &key,
            error_log: &error_log,
            handshake_log: &handshake_log,
            keepalive_port,
            handshake_port,
        });
        fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;

        let mut command = cmd("nginx");
        command
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&config)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("nginx.stderr"))?);
        eprintln!("+ {}", sh::display(&command));
        let child = command
            .spawn()
            .context("could not start nginx: is nginx-light installed (`cargo xtask setup`)?")?;
        let mut nginx = Self {
            master: Some(Guard::new("nginx", child)),
            worker: 0,
            keepalive_port,
            handshake_port,
            handshake_log,
            error_log,
        };
        nginx.worker = nginx.wait_ready(dir)?;
        Ok(nginx)
    }

    fn wait_ready(&mut self, dir: &Path) -> Result<u32> {
        let master_pid = self.master_pid();
        let ports = [self.keepalive_port, self.handshake_port];
        let master = self.master.as_mut().expect("started");
        let result = proc::wait_for(
            "nginx to start its worker and listen",
            Duration::from_secs(20),
            || Ok(master.exited()?.is_none()),
            || {
                let worker = worker_of(master_pid)?;
                ports.iter().all(|&port| accepts(port)).then_some(worker)
            },
        );
        result.with_context(|| {
            format!(
                "nginx did not come up; {}\n{}",
                proc::tail(&self.error_log, 2000),
                proc::tail(&dir.join("nginx.stderr"), 2000)
            )
        })
    }

    fn master_pid(&self) -> u32 {
        self.master.as_ref().map_or(0, Guard::pid)
    }

    /// Checks the worker is still the one we attach to (nginx restarts a worker that dies).
    pub fn check_worker(&self) -> Result<()> {
        match worker_of(self.master_pid()) {
            Some(worker) if worker == self.worker => Ok(()),
            other => bail!(
                "nginx's worker changed from pid {} to {other:?}: it crashed; {}",
                self.worker,
                proc::tail(&self.error_log, 2000)
            ),
        }
    }

    /// Stops nginx (fast shutdown), waiting for the master to exit.
    pub fn stop(mut self) -> Result<()> {
        self.stop_master()
    }

    fn stop_master(&mut self) -> Result<()> {
        let Some(master) = self.master.take() else {
            return Ok(());
        };
        let worker = self.worker;
        let result = master.stop(Signal::SIGTERM, Duration::from_secs(10));
        if result.is_err() && worker != 0 {
            proc::signal_pid(worker, Signal::SIGKILL);
        }
        result.map(drop).context("stopping nginx")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Err(err) = self.stop_master() {
            eprintln!("bench: warning: {err:#}");
        }
    }
}

/// The worker: the master's only child, from /proc/MASTER/task/MASTER/children.
fn worker_of(master: u32) -> Option<u32> {
    let master = procfs::process::Process::new(i32::try_from(master).ok()?).ok()?;
    let children = master.task_main_thread().ok()?.children().ok()?;
    match children.as_slice() {
        [worker] => Some(*worker),
        _ => None,
    }
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Two distinct free loopback ports (held together while the kernel picks them).
fn free_ports() -> Result<(u16, u16)> {
    let bind = || TcpListener::bind("127.0.0.1:0").context("binding a free loopback port");
    let (a, b) = (bind()?, bind()?);
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

struct ConfigPaths<'a> {
    dir: &'a Path,
    cert: &'a Path,
    key: &'a Path,
    error_log: &'a Path,
    handshake_log: &'a Path,
    keepalive_port: u16,
    handshake_port: u16,
}

/// nginx.conf. TLS 1.2 and 1.3 are named so that every nginx version negotiates 1.3 with
/// wrk (1.22's default list stops at 1.2). The handshake server turns off the session cache
/// and tickets, so wrk (which offers its previous session on every reconnect) cannot resume;
/// its access log lets the bench check that every request was a new, full handshake.
fn config_text(p: &ConfigPaths) -> String {
    let mut text = String::new();
    let _ = write!(
        text,
        r#"worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {error_log} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    log_format handshake "$connection_requests $ssl_session_reused $ssl_protocol";
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{keepalive_port} ssl;
        location / {{ return 200 "ok\n"; }}
    }}
    server {{
        listen 127.0.0.1:{handshake_port} ssl;
        ssl_session_cache off;
        ssl_session_tickets off;
        access_log {handshake_log} handshake;
        location / {{ return 200 "ok\n"; }}
    }}
}}
"#,
        dir = p.dir.display(),
        error_log = p.error_log.display(),
        cert = p.cert.display(),
        key = p.key.display(),
        handshake_log = p.handshake_log.display(),
        keepalive_port = p.keepalive_port,
        handshake_port = p.handshake_port,
    );
    text
}

/// What nginx logged for the handshake server's requests.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HandshakeCheck {
    /// Requests logged.
    pub requests: u64,
    /// Requests on a connection that had served an earlier one (not a new handshake).
    pub reused_connections: u64,
    /// Requests whose TLS session was resumed (`$ssl_session_reused` = `r`).
    pub resumed_sessions: u64,
    /// The negotiated protocols seen, e.g. `["TLSv1.3"]`.
    pub protocols: Vec<String>,
}

impl HandshakeCheck {
    /// Reads the log lines nginx wrote after byte `from`.
    pub fn read(log: &Path, from: u64) -> Result<Self> {
        let text = fs::read(log).with_context(|| format!("reading {}", log.display()))?;
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(text.len());
        Ok(Self::parse(&String::from_utf8_lossy(&text[start..])))
    }

    fn parse(text: &str) -> Self {
        let mut check = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(requests), Some(reused)) = (words.next(), words.next()) else {
                continue;
            };
            check.requests += 1;
            check.reused_connections += u64::from(requests != "1");
            check.resumed_sessions += u64::from(reused == "r");
            if let Some(protocol) = words.next()
                && !check.protocols.iter().any(|p| p == protocol)
            {
                check.protocols.push(protocol.to_owned());
            }
        }
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_log_counts_resumptions_and_kept_connections() {
        let check = HandshakeCheck::parse("1 . TLSv1.3\n1 r TLSv1.3\n2 . TLSv1.2\n\n");
        assert_eq!(
            check,
            HandshakeCheck {
                requests: 3,
                reused_connections: 1,
                resumed_sessions: 1,
                protocols: vec!["TLSv1.3".into(), "TLSv1.2".into()],
            }
        );
    }

    #[test]
    fn config_has_the_handshake_server_without_resumption() {
        let dir = Path::new("/tmp/x");
        let text = config_text(&ConfigPaths {
            dir,
            cert: &dir.join("c"),
            key: &dir.join("k"),
            error_log: &dir.join("e"),
            handshake_log: &dir.join("h"),
            keepalive_port: 1111,
            handshake_port: 2222,
        });
        let handshake = text.split("listen 127.0.0.1:2222 ssl;").nth(1).unwrap();
        assert!(handshake.contains("ssl_session_cache off;"));
        assert!(handshake.contains("ssl_session_tickets off;"));
        assert!(text.contains("worker_processes 1;") && text.contains("daemon off;"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }
}
