//! A single-threaded, non-blocking epoll TLS echo server, nginx-shaped: accept until
//! EAGAIN, start each handshake at once with `SSL_do_handshake`, then echo with correct
//! WANT_READ/WANT_WRITE handling (see `conn.rs`). It closes a connection when the peer
//! does.
//!
//! Used as the server of `healthy`, both handshake floods and `concurrent-ssl`.

use std::{
    collections::HashMap,
    io,
    net::TcpListener,
    os::fd::{AsRawFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::Context;
use openssl::ssl::SslContext;

use super::{
    conn::{Conn, Status},
    report::Counts,
    sys::{self, Epoll},
    tls::{Side, Tls},
};

const LISTENER: u64 = 0;

pub struct EchoServer {
    ep: Epoll,
    listener: TcpListener,
    ctx: SslContext,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    sndbuf: Option<i32>,
    events: Vec<libc::epoll_event>,
    inbox: Vec<u8>,
    pub counts: Counts,
}

impl EchoServer {
    pub fn new(listener: TcpListener, ctx: SslContext) -> anyhow::Result<Self> {
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking failed")?;
        let ep = Epoll::new()?;
        ep.add(listener.as_raw_fd(), sys::IN, LISTENER)?;
        Ok(Self {
            ep,
            listener,
            ctx,
            conns: HashMap::new(),
            next_token: LISTENER + 1,
            sndbuf: None,
            events: sys::event_buf(64),
            inbox: Vec::new(),
            counts: Counts::default(),
        })
    }

    /// Gives each accepted socket this SO_SNDBUF, so large echoes meet WANT_WRITE.
    pub fn with_sndbuf(mut self, bytes: i32) -> Self {
        self.sndbuf = Some(bytes);
        self
    }

    pub fn listen_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn established(&self) -> usize {
        self.conns.values().filter(|c| c.established()).count()
    }

    /// Fds and SSL* of the established connections, in fd order.
    pub fn conn_fds(&self) -> (Vec<RawFd>, Vec<u64>) {
        let mut pairs: Vec<(RawFd, u64)> = self
            .conns
            .values()
            .filter(|c| c.established())
            .map(|c| (c.tls().fd(), c.tls().ptr() as u64))
            .collect();
        pairs.sort_unstable();
        pairs.into_iter().unzip()
    }

    /// Serves until `deadline`, or until `stop` holds after handling a batch of events.
    pub fn run(&mut self, deadline: Instant, stop: impl Fn(&Self) -> bool) -> anyhow::Result<()> {
        while Instant::now() < deadline {
            let timeout = sys::timeout_ms(deadline, Duration::from_secs(1));
            let before = Instant::now();
            let n = self.ep.wait(&mut self.events, timeout)?;
            // Time asleep in epoll_wait: near zero when the loop is saturated.
            self.counts
                .add("epoll_wait_us", before.elapsed().as_micros() as u64);
            self.counts.inc("wakeups");
            for i in 0..n {
                let (bits, token) = sys::event_parts(&self.events[i]);
                if token == LISTENER {
                    self.accept_all()?;
                } else {
                    self.service(token, bits)?;
                }
            }
            if stop(self) {
                break;
            }
        }
        self.counts.set("open_connections", self.conns.len() as u64);
        Ok(())
    }

    fn accept_all(&mut self) -> anyhow::Result<()> {
        loop {
            let sock = match self.listener.accept() {
                Ok((sock, _)) => sock,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The peer gave up before we got to it, or we are out of fds for a moment:
                // count it and keep serving, as a server would.
                Err(e) => {
                    log::debug!("accept failed: {e}");
                    self.counts.inc("accept_errors");
                    return Ok(());
                }
            };
            self.counts.inc("accepted");
            sock.set_nonblocking(true)
                .context("making an accepted socket non-blocking failed")?;
            sock.set_nodelay(true)
                .context("setting TCP_NODELAY failed")?;
            if let Some(bytes) = self.sndbuf {
                sys::set_sndbuf(sock.as_raw_fd(), bytes)?;
            }
            let token = self.next_token;
            self.next_token += 1;
            let tls = Tls::new(&self.ctx, sock, Side::Server)?;
            self.conns.insert(token, Conn::new(tls, token));
            // The ClientHello is often already here: start the handshake now.
            self.service(token, 0)?;
        }
    }

    fn service(&mut self, token: u64, bits: u32) -> anyhow::Result<()> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Ok(());
        };
        self.inbox.clear();
        let mut status = conn.on_ready(bits, &mut self.counts, &mut self.inbox);
        if status == Status::Open && !self.inbox.is_empty() {
            self.counts.add("echoed_bytes", self.inbox.len() as u64);
            conn.send(&self.inbox);
            status = conn.flush_new(&mut self.counts);
        }
        match status {
            Status::Open => conn.sync(&self.ep),
            Status::Closed => {
                // Dropping the Conn runs SSL_free, then close(2), which also leaves epoll.
                self.conns.remove(&token);
                self.counts.inc("closed");
                Ok(())
            }
        }
    }
}
