//! `async-stall` and `async-quick`: a server in OpenSSL's async mode (`SSL_MODE_ASYNC`)
//! whose "crypto engine" answers late, or at once.
//!
//! With `SSL_MODE_ASYNC` set, libssl runs each handshake (and each read and write) inside
//! an ASYNC job, and code running inside the job can call libcrypto's `ASYNC_pause_job()`:
//! the SSL call then returns -1 and `SSL_get_error` says SSL_ERROR_WANT_ASYNC. That is what
//! an offloading engine (QAT) does while the device works. No engine is needed here: the
//! server's certificate callback (`SSL_CTX_set_cert_cb`), which runs inside the handshake's
//! job, plays the engine (`async_engine.rs`). The server's epoll loop retries a paused handshake when the
//! job's wait fd (found with `SSL_get_all_async_fds`) is readable or after `RETRY`, at
//! once when the job has none, as an async server does.
//!
//! - `async-stall`: the engine is stuck. The callback registers an eventfd as the job's
//!   wait fd (`ASYNC_WAIT_CTX_set_wait_fd`), never signals it, and pauses again on every
//!   retry until 70% of the run has passed: one connection's
//!   `SSL_do_handshake` answers WANT_ASYNC about every `RETRY` for seconds. Then it
//!   completes and the connection echoes small messages to the end.
//! - `async-no-jobs`: the stuck engine on a server thread whose async job pool holds one
//!   job (`ASYNC_init_thread(1, 0)`), with two connections: the handshake of the one whose
//!   ClientHello arrives first holds the job, paused, and the other's `SSL_do_handshake`
//!   finds no job and answers SSL_ERROR_WANT_ASYNC_JOB on every retry, until the first
//!   completes.
//! - `async-quick`: a healthy engine. Each handshake pauses `QUICK_PAUSES` times with no
//!   wait fd (the engine answered synchronously), so the server retries at once and the
//!   handshake completes within microseconds; clients open short connections back to back.

use std::{
    net::{TcpListener, TcpStream},
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use openssl::ssl::SslContext;

pub use super::async_engine::Flavor;
use super::{
    async_engine::{
        Engine, WANT_ASYNC, WANT_ASYNC_JOB, async_fd, limit_thread_jobs, thread_pauses,
    },
    report::Counts,
    runner::{Runner, Window},
    sys::{self, Epoll},
    tls::{Identity, Io, Side, Tls},
};

/// How long the server waits on its fds before retrying a paused handshake.
const RETRY: Duration = Duration::from_millis(10);
/// The share of the run the stalled handshake lasts in `async-stall`.
const STALL_SHARE: f64 = 0.7;
/// `async-quick`: concurrent connections, each a client and a server thread...
const QUICK_CONNS: usize = 3;
/// ...each connection living this long (well over the second under which short-lived
/// connections are churn), echoing every `ECHO_EVERY`, then replaced by a new one.
const QUICK_LIFETIME: Duration = Duration::from_millis(1200);
const ECHO_EVERY: Duration = Duration::from_millis(50);
const MESSAGE: &[u8] = b"ping over an async-mode TLS connection";
pub fn run(runner: &mut Runner, flavor: Flavor) -> anyhow::Result<()> {
    let id = Identity::generate()?;
    let server = id.server_builder()?;
    // Each server thread keeps the engine next to its context, which it drops first.
    let engine = Engine::install(&server, flavor);
    let server_ctx = server.build();
    let client_ctx = id.client_builder()?.build();
    let (listener, addr) = sys::listen_loopback()?;

    match flavor {
        Flavor::Stall => {
            runner.spawn("server", move |ctl| {
                let mut srv = Server::new(server_ctx, engine)?;
                let sock = accept(&listener)?;
                let mut tls = Tls::new(&srv.ctx, sock, Side::Server)?;
                let window = ctl.ready(vec![tls.fd()], vec![tls.ptr() as u64]);
                let _ = srv.engine.until.set(window.at(STALL_SHARE));
                let stall = Instant::now();
                if srv.handshake(&mut tls, window)? {
                    srv.counts
                        .set("stall_ms", stall.elapsed().as_millis() as u64);
                    srv.echo(&mut tls, window)?;
                }
                Ok(srv.finish(tls))
            })?;
            runner.spawn("client", move |ctl| {
                let sock = TcpStream::connect(addr)
                    .with_context(|| format!("connecting to {addr} failed"))?;
                let mut tls = Tls::new(&client_ctx, sock, Side::Client)?;
                let window = ctl.ready(vec![tls.fd()], vec![tls.ptr() as u64]);
                let mut counts = Counts::default();
                client_session(&mut tls, window, &mut counts, None)?;
                Ok(counts)
            })
        }
        Flavor::NoJobs => {
            runner.spawn("server", move |ctl| {
                limit_thread_jobs(1)?;
                let mut srv = Server::new(server_ctx, engine)?;
                let mut conns = Vec::new();
                for _ in 0..2 {
                    conns.push(Tls::new(&srv.ctx, accept(&listener)?, Side::Server)?);
                }
                let window = ctl.ready(
                    conns.iter().map(Tls::fd).collect(),
                    conns.iter().map(|c| c.ptr() as u64).collect(),
                );
                let _ = srv.engine.until.set(window.at(STALL_SHARE));
                srv.handshake_all(&mut conns, window)?;
                srv.echo_all(&mut conns, window)?;
                drop(conns);
                Ok(srv.finish_all())
            })?;
            for _ in 0..2 {
                let client_ctx = client_ctx.clone();
                // Connected in turn, so that the server accepts them in this order.
                let sock = TcpStream::connect(addr)
                    .with_context(|| format!("connecting to {addr} failed"))?;
                runner.spawn("client", move |ctl| {
                    let mut tls = Tls::new(&client_ctx, sock, Side::Client)?;
                    let window = ctl.ready(vec![tls.fd()], vec![tls.ptr() as u64]);
                    let mut counts = Counts::default();
                    client_session(&mut tls, window, &mut counts, None)?;
                    Ok(counts)
                })?;
            }
            Ok(())
        }
        Flavor::Quick => {
            listener
                .set_nonblocking(true)
                .context("making the listener non-blocking failed")?;
            let listener = Arc::new(listener);
            for _ in 0..QUICK_CONNS {
                let (listener, ctx, engine) = (
                    Arc::clone(&listener),
                    server_ctx.clone(),
                    Arc::clone(&engine),
                );
                runner.spawn("server", move |ctl| {
                    let mut srv = Server::new(ctx, engine)?;
                    let window = ctl.ready(vec![listener.as_raw_fd()], Vec::new());
                    while !window.done() {
                        if !sys::wait_readable(listener.as_raw_fd(), Duration::from_millis(100))? {
                            continue;
                        }
                        // Another server thread may have taken it.
                        let Ok(sock) = accept(&listener) else {
                            continue;
                        };
                        let mut tls = Tls::new(&srv.ctx, sock, Side::Server)?;
                        if srv.handshake(&mut tls, window)? {
                            srv.echo(&mut tls, window)?;
                        }
                    }
                    Ok(srv.finish_all())
                })?;
                let client_ctx = client_ctx.clone();
                runner.spawn("client", move |ctl| {
                    let window = ctl.ready(Vec::new(), Vec::new());
                    let mut counts = Counts::default();
                    while !window.done() {
                        let sock = TcpStream::connect(addr)
                            .with_context(|| format!("connecting to {addr} failed"))?;
                        let mut tls = Tls::new(&client_ctx, sock, Side::Client)?;
                        let until = Instant::now() + QUICK_LIFETIME;
                        client_session(&mut tls, window, &mut counts, Some(until))?;
                        counts.inc("connections");
                    }
                    Ok(counts)
                })?;
            }
            Ok(())
        }
    }
}

fn accept(listener: &TcpListener) -> anyhow::Result<TcpStream> {
    let (sock, _) = listener
        .accept()
        .context("accepting the client's connection failed")?;
    sock.set_nonblocking(true)
        .context("making the server socket non-blocking failed")?;
    Ok(sock)
}

/// The client: a blocking handshake (it waits for the server as long as the stall lasts),
/// then one message and its echo every `ECHO_EVERY`, to the end or until `until`.
fn client_session(
    tls: &mut Tls,
    window: Window,
    counts: &mut Counts,
    until: Option<Instant>,
) -> anyhow::Result<()> {
    tls.sock()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .context("setting a read timeout failed")?;
    let started = Instant::now();
    loop {
        match tls.connect() {
            Io::Done(_) => break,
            Io::WantRead | Io::WantWrite if !window.done() => {}
            Io::WantRead | Io::WantWrite => return Ok(()),
            Io::Closed => return Ok(()),
            Io::Failed(f) => anyhow::bail!("client handshake failed: {f}"),
        }
    }
    counts.inc("handshakes");
    counts.add("handshake_wait_ms", started.elapsed().as_millis() as u64);
    let mut buf = [0u8; 256];
    loop {
        if window.done() {
            return Ok(());
        }
        match tls.write(MESSAGE) {
            Io::Done(_) => {}
            Io::Closed => return Ok(()),
            other => anyhow::bail!("client write: {other:?}"),
        }
        let mut got = 0;
        while got < MESSAGE.len() {
            match tls.read(&mut buf) {
                Io::Done(n) => got += n,
                Io::WantRead | Io::WantWrite if !window.done() => {}
                Io::WantRead | Io::WantWrite | Io::Closed => return Ok(()),
                Io::Failed(f) if window.done() => {
                    log::debug!("client read at the deadline: {f}");
                    return Ok(());
                }
                Io::Failed(f) => anyhow::bail!("client read failed: {f}"),
            }
        }
        counts.inc("round_trips");
        if until.is_some_and(|t| Instant::now() >= t) {
            tls.shutdown();
            return Ok(());
        }
        std::thread::sleep(ECHO_EVERY);
    }
}

/// The async-mode server: one connection at a time, driven by its own epoll loop.
struct Server {
    ctx: SslContext,
    engine: Arc<Engine>,
    ep: Epoll,
    events: Vec<libc::epoll_event>,
    counts: Counts,
}

const SOCKET: u64 = 1;
const ASYNC_FD: u64 = 2;

impl Server {
    fn new(ctx: SslContext, engine: Arc<Engine>) -> anyhow::Result<Self> {
        Ok(Self {
            ctx,
            engine,
            ep: Epoll::new()?,
            events: sys::event_buf(8),
            counts: Counts::default(),
        })
    }

    /// Drives `SSL_do_handshake` to the end, retrying after WANT_ASYNC when the job's wait
    /// fd is readable or after `RETRY`. False when the deadline or the peer ended it.
    fn handshake(&mut self, tls: &mut Tls, window: Window) -> anyhow::Result<bool> {
        self.ep.add(tls.fd(), sys::IN, SOCKET)?;
        let mut wait_fd: Option<RawFd> = None;
        let mut streak = 0u64;
        loop {
            let io = tls.handshake();
            if !matches!(&io, Io::Failed(f) if f.code == WANT_ASYNC || f.code == WANT_ASYNC_JOB) {
                let max = self.counts.get("max_want_async_streak").max(streak);
                self.counts.set("max_want_async_streak", max);
                streak = 0;
            }
            match io {
                Io::Done(_) => {
                    self.counts.inc("handshakes");
                    return Ok(true);
                }
                Io::WantRead | Io::WantWrite => {}
                Io::Failed(f) if f.code == WANT_ASYNC || f.code == WANT_ASYNC_JOB => {
                    streak += 1;
                    self.counts.inc(if f.code == WANT_ASYNC {
                        "want_async"
                    } else {
                        "want_async_job"
                    });
                    // The job's wait fd: new at its first pause.
                    // SAFETY: tls owns the live SSL.
                    if let Some(fd) = unsafe { async_fd(tls.ptr()) }
                        && wait_fd != Some(fd)
                    {
                        self.ep.add(fd, sys::IN, ASYNC_FD)?;
                        wait_fd = Some(fd);
                    }
                }
                Io::Closed => return Ok(false),
                Io::Failed(f) => {
                    log::debug!("server handshake failed: {f}");
                    self.counts.inc("handshake_failures");
                    return Ok(false);
                }
            }
            if window.done() && !self.engine.stalled() {
                return Ok(false);
            }
            // A paused job with no wait fd: its engine has answered already, retry at once.
            if streak > 0 && wait_fd.is_none() {
                continue;
            }
            self.ep
                .wait(&mut self.events, sys::timeout_ms(window.deadline, RETRY))?;
            self.counts.inc("wakeups");
        }
    }

    /// Drives the handshakes of `conns` side by side, one call each per round, retrying
    /// every `RETRY`: the first whose ClientHello is in takes the thread's only async job,
    /// which its engine holds paused; the others find none. The sockets are not waited on: a connection that
    /// finds no job leaves its ClientHello unread, and a level-triggered wait for it would
    /// return at once, again and again.
    fn handshake_all(&mut self, conns: &mut [Tls], window: Window) -> anyhow::Result<()> {
        let mut done = vec![false; conns.len()];
        while !done.iter().all(|d| *d) {
            if window.done() && !self.engine.stalled() {
                return Ok(());
            }
            for (c, done) in conns.iter_mut().zip(&mut done) {
                if *done {
                    continue;
                }
                match c.handshake() {
                    Io::Done(_) => {
                        self.counts.inc("handshakes");
                        *done = true;
                    }
                    Io::WantRead | Io::WantWrite => {}
                    Io::Failed(f) if f.code == WANT_ASYNC => self.counts.inc("want_async"),
                    Io::Failed(f) if f.code == WANT_ASYNC_JOB => {
                        self.counts.inc("want_async_job");
                    }
                    Io::Closed | Io::Failed(_) => {
                        self.counts.inc("handshake_failures");
                        *done = true;
                    }
                }
            }
            self.ep
                .wait(&mut self.events, sys::timeout_ms(window.deadline, RETRY))?;
            self.counts.inc("wakeups");
        }
        Ok(())
    }

    /// Echoes on every connection of `conns` until the deadline.
    fn echo_all(&mut self, conns: &mut [Tls], window: Window) -> anyhow::Result<()> {
        for (i, c) in conns.iter().enumerate() {
            self.ep.add(c.fd(), sys::IN, SOCKET + i as u64)?;
        }
        let mut buf = [0u8; 256];
        let mut open = vec![true; conns.len()];
        while !window.done() && open.iter().any(|o| *o) {
            for (c, open) in conns.iter_mut().zip(&mut open) {
                if !*open {
                    continue;
                }
                match c.read(&mut buf) {
                    Io::Done(n) => {
                        self.counts.inc("echoes");
                        *open = matches!(c.write(&buf[..n]), Io::Done(_));
                    }
                    Io::WantRead | Io::WantWrite => {}
                    Io::Failed(f) if f.code == WANT_ASYNC => self.counts.inc("want_async_io"),
                    Io::Closed | Io::Failed(_) => *open = false,
                }
            }
            self.ep.wait(
                &mut self.events,
                sys::timeout_ms(window.deadline, Duration::from_millis(100)),
            )?;
        }
        Ok(())
    }

    /// Echoes what the client sends until it closes or the deadline.
    fn echo(&mut self, tls: &mut Tls, window: Window) -> anyhow::Result<()> {
        let mut buf = [0u8; 256];
        while !window.done() {
            match tls.read(&mut buf) {
                Io::Done(n) => {
                    self.counts.inc("echoes");
                    if !matches!(tls.write(&buf[..n]), Io::Done(_)) {
                        self.counts.inc("write_failures");
                        return Ok(());
                    }
                }
                Io::WantRead | Io::WantWrite => {
                    self.ep.wait(
                        &mut self.events,
                        sys::timeout_ms(window.deadline, Duration::from_millis(100)),
                    )?;
                }
                Io::Failed(f) if f.code == WANT_ASYNC => self.counts.inc("want_async_io"),
                Io::Closed | Io::Failed(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn finish(mut self, tls: Tls) -> Counts {
        drop(tls);
        self.finish_all_mut();
        self.counts
    }

    fn finish_all(mut self) -> Counts {
        self.finish_all_mut();
        self.counts
    }

    fn finish_all_mut(&mut self) {
        self.counts.set("async_pauses", thread_pauses());
    }
}
