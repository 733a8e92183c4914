//! `healthy`: a correct non-blocking TLS echo client and server.
//!
//! 16 keep-alive connections echo messages of 1-24 KiB back and forth for the first half
//! of the run, then stay open and idle. Both sides use epoll with interest that follows
//! libssl (see `conn.rs`); the server's small SO_SNDBUF makes large echoes meet
//! WANT_WRITE, which it handles by arming EPOLLOUT only until the write goes through.
//! What a profiler should see: WANT_READ after every drained read, some WANT_WRITE, and
//! no wakeups without progress; then, when idle, threads asleep in epoll_wait. The server
//! sends no session tickets, so no read after READY is for anything but echo data.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{
    conn::{Conn, Status},
    echo::EchoServer,
    report::Counts,
    runner::{Runner, Window},
    sys::{self, Epoll},
    tls::{Identity, Side, Tls},
};

const CONNECTIONS: usize = 16;
const MESSAGE_SIZES: [usize; 6] = [1024, 2048, 4096, 6144, 12 * 1024, 24 * 1024];
const SERVER_SNDBUF: i32 = 8 * 1024;
const SETUP: Duration = Duration::from_secs(10);

pub fn run(runner: &mut Runner) -> anyhow::Result<()> {
    let id = Identity::generate()?;
    let mut server = id.server_builder()?;
    // TLS 1.3 tickets arrive just after the client's handshake ends and may sit unread
    // until the load starts; their read would then answer WANT_READ with no bytes, before
    // any echo. Without them every read after READY is for echo data.
    server
        .set_num_tickets(0)
        .context("turning session tickets off failed")?;
    let server_ctx = server.build();
    let client_ctx = id.client_builder()?.build();
    let (listener, addr) = sys::listen_loopback()?;

    runner.spawn("server", move |ctl| {
        let mut srv = EchoServer::new(listener, server_ctx)?.with_sndbuf(SERVER_SNDBUF);
        srv.run(Instant::now() + SETUP, |s| s.established() >= CONNECTIONS)?;
        anyhow::ensure!(
            srv.established() >= CONNECTIONS,
            "only {} of {CONNECTIONS} connections were established within {}s",
            srv.established(),
            SETUP.as_secs()
        );
        let (fds, ssl) = srv.conn_fds();
        let window = ctl.ready(fds, ssl);
        srv.run(window.deadline, |_| false)?;
        Ok(srv.counts)
    })?;
    runner.spawn("client", move |ctl| {
        let mut client = Client::connect(addr, &client_ctx)?;
        let fds = client.conns.iter().map(|c| c.conn.tls().fd()).collect();
        let ssl = client
            .conns
            .iter()
            .map(|c| c.conn.tls().ptr() as u64)
            .collect();
        let window = ctl.ready(fds, ssl);
        client.run(window)?;
        Ok(client.counts)
    })
}

/// One client connection and where its current exchange stands.
struct Peer {
    conn: Conn,
    /// The byte value every byte of the current message carries.
    tag: u8,
    /// Echo bytes still expected for the current message.
    awaiting: usize,
    sent: u64,
}

struct Client {
    ep: Epoll,
    conns: Vec<Peer>,
    counts: Counts,
    events: Vec<libc::epoll_event>,
    /// The end of the run, once it started.
    deadline: Option<Instant>,
}

impl Client {
    /// Opens every connection and finishes every handshake, non-blocking.
    fn connect(addr: SocketAddr, ctx: &openssl::ssl::SslContext) -> anyhow::Result<Self> {
        let ep = Epoll::new()?;
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for i in 0..CONNECTIONS {
            let sock =
                TcpStream::connect(addr).with_context(|| format!("connecting to {addr} failed"))?;
            sock.set_nodelay(true)
                .context("setting TCP_NODELAY failed")?;
            sock.set_nonblocking(true)
                .context("making the client socket non-blocking failed")?;
            let mut conn = Conn::new(Tls::new(ctx, sock, Side::Client)?, i as u64);
            conn.sync(&ep)?;
            conns.push(Peer {
                conn,
                tag: 0,
                awaiting: 0,
                sent: 0,
            });
        }
        let mut client = Self {
            ep,
            conns,
            counts: Counts::default(),
            events: sys::event_buf(64),
            deadline: None,
        };
        for i in 0..CONNECTIONS {
            client.service(i, 0, false)?;
        }
        let until = Instant::now() + SETUP;
        while client.conns.iter().any(|p| !p.conn.established()) {
            anyhow::ensure!(
                Instant::now() < until,
                "client handshakes did not finish within {}s",
                SETUP.as_secs()
            );
            client.poll(until, false)?;
        }
        Ok(client)
    }

    fn run(&mut self, window: Window) -> anyhow::Result<()> {
        self.deadline = Some(window.deadline);
        let idle_from = window.at(0.5);
        for i in 0..self.conns.len() {
            self.send_next(i)?;
        }
        while Instant::now() < idle_from {
            self.poll(idle_from, true)?;
        }
        // Idle: the connections stay open; nothing is sent, so the loop sleeps.
        let wakeups_at_idle = self.counts.get("wakeups");
        while !window.done() {
            self.poll(window.deadline, false)?;
        }
        self.counts
            .add("idle_wakeups", self.counts.get("wakeups") - wakeups_at_idle);
        Ok(())
    }

    fn poll(&mut self, until: Instant, keep_sending: bool) -> anyhow::Result<()> {
        let n = self.ep.wait(
            &mut self.events,
            sys::timeout_ms(until, Duration::from_secs(1)),
        )?;
        self.counts.inc("wakeups");
        for i in 0..n {
            let (bits, token) = sys::event_parts(&self.events[i]);
            self.service(token as usize, bits, keep_sending && Instant::now() < until)?;
        }
        Ok(())
    }

    fn service(&mut self, i: usize, bits: u32, keep_sending: bool) -> anyhow::Result<()> {
        let mut inbox = Vec::new();
        let peer = &mut self.conns[i];
        let status = peer.conn.on_ready(bits, &mut self.counts, &mut inbox);
        if status == Status::Closed {
            // The server closes only at the deadline, so seeing a close after it is normal.
            anyhow::ensure!(
                self.deadline.is_some_and(|d| Instant::now() >= d),
                "client connection {i} closed unexpectedly"
            );
            return Ok(());
        }
        if inbox.len() > peer.awaiting || inbox.iter().any(|&b| b != peer.tag) {
            anyhow::bail!("connection {i}: echo does not match what was sent");
        }
        peer.awaiting -= inbox.len();
        if !inbox.is_empty() && peer.awaiting == 0 {
            self.counts.inc("round_trips");
            if keep_sending {
                return self.send_next(i);
            }
        }
        self.conns[i].conn.sync(&self.ep)
    }

    fn send_next(&mut self, i: usize) -> anyhow::Result<()> {
        let peer = &mut self.conns[i];
        let size = MESSAGE_SIZES[(i + peer.sent as usize) % MESSAGE_SIZES.len()];
        peer.tag = (i as u8).wrapping_mul(31).wrapping_add(peer.sent as u8) | 1;
        peer.awaiting = size;
        peer.sent += 1;
        peer.conn.send(&vec![peer.tag; size]);
        self.counts.inc("messages_sent");
        let status = peer.conn.flush_new(&mut self.counts);
        anyhow::ensure!(
            status == Status::Open,
            "client connection {i} closed while sending"
        );
        peer.conn.sync(&self.ep)
    }
}
