//! `bad-write-retry`: the libcurl pipelining bug of seed 001.
//!
//! The client pipelines 4 KiB requests over one connection and hands the socket to its
//! queued requests in FIFO order. When `SSL_write` answers WANT_WRITE, the request loses
//! its turn and goes to the back of the queue, so the next `SSL_write` on that SSL passes
//! another request's buffer. With ACCEPT_MOVING_WRITE_BUFFER and ENABLE_PARTIAL_WRITE
//! cleared, libssl refuses it: SSL_ERROR_SSL, "bad write retry". The client then drops
//! the connection (SSL_free + close, which sends an RST) and reconnects, again and again.
//!
//! The server stalls (stops reading) for 400 ms of every second; with small socket
//! buffers on both ends, that is what fills the pipe and turns `SSL_write` into
//! WANT_WRITE. Between stalls requests complete normally.

use std::{
    collections::VecDeque,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::Context;
use openssl::ssl::SslContext;

use super::{
    report::Counts,
    runner::{Runner, Window},
    sys::{self, Epoll},
    tls::{
        Identity, Io, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, SSL_MODE_ENABLE_PARTIAL_WRITE, Side, Tls,
    },
};

const REQUEST_BYTES: usize = 4096;
const RESPONSE_BYTES: usize = 64;
const BATCH: usize = 12;
const BATCH_EVERY: Duration = Duration::from_millis(200);
const MAX_QUEUED: usize = 48;
const STALL_PERIOD_MS: u128 = 1000;
const STALL_MS: u128 = 400;
const CLIENT_SNDBUF: i32 = 16 * 1024;
const SERVER_RCVBUF: i32 = 16 * 1024;

pub fn run(runner: &mut Runner) -> anyhow::Result<()> {
    let id = Identity::generate()?;
    let server_ctx = id.server_builder()?.build();
    let client_ctx = id.client_builder()?.build();
    let (listener, addr) = sys::listen_loopback()?;
    // Accepted sockets inherit the listener's receive buffer.
    sys::set_rcvbuf(listener.as_raw_fd(), SERVER_RCVBUF)?;

    runner.spawn("server", move |ctl| {
        let mut counts = Counts::default();
        let setup = Instant::now() + Duration::from_secs(10);
        let first = accept(&listener, &server_ctx, setup, &mut counts)?
            .context("the client did not connect within 10s")?;
        let window = ctl.ready(
            vec![listener.as_raw_fd(), first.fd()],
            vec![first.ptr() as u64],
        );
        let mut conn = Some(first);
        while let Some(mut tls) = conn.take() {
            serve(&mut tls, window, &mut counts);
            drop(tls);
            conn = accept(&listener, &server_ctx, window.deadline, &mut counts)?;
        }
        Ok(counts)
    })?;
    runner.spawn("client", move |ctl| {
        let mut client = Client::new(addr, client_ctx)?;
        let tls = client.tls()?;
        let window = ctl.ready(vec![tls.fd()], vec![tls.ptr() as u64]);
        client.run(window)?;
        Ok(client.counts)
    })
}

/// Waits until `until` for the next connection and handshakes it. None when time ran out.
fn accept(
    listener: &TcpListener,
    ctx: &SslContext,
    until: Instant,
    counts: &mut Counts,
) -> anyhow::Result<Option<Tls>> {
    while Instant::now() < until {
        if !sys::wait_readable(listener.as_raw_fd(), Duration::from_millis(100))? {
            continue;
        }
        let sock = match listener.accept() {
            Ok((sock, _)) => sock,
            // E.g. the client gave up on that connection before it was accepted.
            Err(e) => {
                log::debug!("accept failed: {e}");
                counts.inc("accept_errors");
                continue;
            }
        };
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .context("setting a read timeout failed")?;
        let mut tls = Tls::new(ctx, sock, Side::Server)?;
        match tls.blocking_handshake(Side::Server, 100) {
            Ok(()) => {
                counts.inc("accepted");
                return Ok(Some(tls));
            }
            Err(e) => {
                log::debug!("server handshake failed: {e:#}");
                counts.inc("handshake_failures");
            }
        }
    }
    Ok(None)
}

/// True during the part of each period when the server is "busy" and reads nothing.
fn stalled(window: &Window) -> bool {
    window.start.elapsed().as_millis() % STALL_PERIOD_MS >= STALL_PERIOD_MS - STALL_MS
}

/// Reads requests and answers each one, until the connection ends or time is up.
fn serve(tls: &mut Tls, window: Window, counts: &mut Counts) {
    let mut partial = 0usize;
    let mut buf = [0u8; 16 * 1024];
    let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
    response.resize(RESPONSE_BYTES - 2, b' ');
    response.extend_from_slice(b"\r\n");
    while !window.done() {
        if stalled(&window) {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match tls.read(&mut buf) {
            Io::Done(n) => {
                counts.add("read_bytes", n as u64);
                partial += n;
                while partial >= REQUEST_BYTES {
                    partial -= REQUEST_BYTES;
                    counts.inc("requests");
                    if !matches!(tls.write(&response), Io::Done(_)) {
                        counts.inc("write_failures");
                        return;
                    }
                }
            }
            Io::WantRead | Io::WantWrite => {} // the read timeout passed
            Io::Closed => {
                counts.inc("peer_closed");
                return;
            }
            Io::Failed(f) => {
                // The client's close with unread data arrives as a reset.
                log::debug!("server read failed: {f}");
                counts.inc("conn_resets");
                return;
            }
        }
    }
}

struct Request {
    id: u64,
    buf: Vec<u8>,
}

impl Request {
    fn new(id: u64) -> Self {
        let mut buf = format!(
            "POST /upload/{id} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            REQUEST_BYTES - 80
        )
        .into_bytes();
        buf.resize(REQUEST_BYTES, b'x');
        Self { id, buf }
    }
}

struct Client {
    addr: SocketAddr,
    ctx: SslContext,
    ep: Epoll,
    tls: Option<Tls>,
    /// Bumped on every reconnect; epoll events carry it, so stale ones are ignored.
    generation: u64,
    /// The interest registered for the current connection.
    registered: u32,
    queue: VecDeque<Request>,
    unanswered: VecDeque<Request>,
    partial_response: usize,
    next_id: u64,
    counts: Counts,
}

impl Client {
    fn new(addr: SocketAddr, ctx: SslContext) -> anyhow::Result<Self> {
        let mut client = Self {
            addr,
            ctx,
            ep: Epoll::new()?,
            tls: None,
            generation: 0,
            registered: 0,
            queue: VecDeque::new(),
            unanswered: VecDeque::new(),
            partial_response: 0,
            next_id: 0,
            counts: Counts::default(),
        };
        client.connect()?;
        Ok(client)
    }

    fn tls(&mut self) -> anyhow::Result<&mut Tls> {
        self.tls.as_mut().context("client has no connection")
    }

    fn connect(&mut self) -> anyhow::Result<()> {
        let sock = TcpStream::connect(self.addr)
            .with_context(|| format!("connecting to {} failed", self.addr))?;
        sys::set_sndbuf(sock.as_raw_fd(), CLIENT_SNDBUF)?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .context("setting a read timeout failed")?;
        let mut tls = Tls::new(&self.ctx, sock, Side::Client)?;
        // What the bug needs, and libcurl had: a write retry must pass the same buffer.
        let left =
            tls.clear_mode(SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
        anyhow::ensure!(
            left & (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE) == 0,
            "could not clear the SSL write modes (mode is {left:#x})"
        );
        tls.blocking_handshake(Side::Client, 1)?;
        tls.sock()
            .set_nonblocking(true)
            .context("making the client socket non-blocking failed")?;
        self.generation += 1;
        self.ep.add(tls.fd(), sys::IN, self.generation)?;
        self.registered = sys::IN;
        self.tls = Some(tls);
        Ok(())
    }

    /// Drops the connection (SSL_free, then close) and opens a new one. Unanswered
    /// requests go back to the front of the queue, as a client retrying them would.
    fn reconnect(&mut self) -> anyhow::Result<()> {
        self.tls = None;
        for req in self.unanswered.drain(..).rev() {
            self.queue.push_front(req);
        }
        self.partial_response = 0;
        self.counts.inc("reconnects");
        self.connect()
    }

    fn run(&mut self, window: Window) -> anyhow::Result<()> {
        let mut events = sys::event_buf(8);
        let mut next_batch = Instant::now();
        while !window.done() {
            if Instant::now() >= next_batch {
                for _ in 0..BATCH.min(MAX_QUEUED.saturating_sub(self.queue.len())) {
                    self.queue.push_back(Request::new(self.next_id));
                    self.next_id += 1;
                }
                next_batch += BATCH_EVERY;
            }
            let interest = if self.queue.is_empty() {
                sys::IN
            } else {
                sys::IN | sys::OUT
            };
            if interest != self.registered {
                let (fd, generation) = (self.tls()?.fd(), self.generation);
                self.ep.modify(fd, interest, generation)?;
                self.registered = interest;
            }
            let n = self.ep.wait(
                &mut events,
                sys::timeout_ms(next_batch.min(window.deadline), BATCH_EVERY),
            )?;
            self.counts.inc("wakeups");
            for ev in &events[..n] {
                let (bits, token) = sys::event_parts(ev);
                if token != self.generation {
                    continue;
                }
                let res = if bits & !sys::OUT != 0 {
                    self.read_responses()
                } else {
                    Ok(true)
                };
                let res = match res {
                    Ok(true) if bits & sys::OUT != 0 => self.write_requests().map(|()| true),
                    other => other,
                };
                match res {
                    Ok(_) => {}
                    // The server stops at the deadline; a reconnect racing it fails.
                    Err(e) if window.done() => {
                        log::debug!("client stopped at the deadline: {e:#}");
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.counts.set("queued_at_end", self.queue.len() as u64);
        Ok(())
    }

    /// The libcurl logic: award the socket to queued requests in FIFO order.
    fn write_requests(&mut self) -> anyhow::Result<()> {
        while let Some(req) = self.queue.pop_front() {
            self.counts.inc("ssl_write_calls");
            let io = self.tls()?.write(&req.buf);
            match io {
                Io::Done(_) => {
                    self.counts.inc("requests_sent");
                    self.unanswered.push_back(req);
                }
                Io::WantWrite | Io::WantRead => {
                    // The bug: the request gives up its turn and goes to the back, so the
                    // next SSL_write on this SSL will pass a different buffer.
                    self.counts.inc("want_write");
                    log::debug!(
                        "request {} got WANT_WRITE with {} queued behind it",
                        req.id,
                        self.queue.len()
                    );
                    self.queue.push_back(req);
                    return Ok(());
                }
                Io::Failed(f) => {
                    if f.is_bad_write_retry() {
                        self.counts.inc("bad_write_retries");
                        log::info!("request {}: SSL_write failed: {f}; reconnecting", req.id);
                    } else {
                        self.counts.inc("write_failures");
                        log::warn!("request {}: SSL_write failed: {f}; reconnecting", req.id);
                    }
                    self.queue.push_front(req);
                    return self.reconnect();
                }
                Io::Closed => {
                    self.counts.inc("write_failures");
                    self.queue.push_front(req);
                    return self.reconnect();
                }
            }
        }
        Ok(())
    }

    /// Reads responses. Returns false when the connection was replaced.
    fn read_responses(&mut self) -> anyhow::Result<bool> {
        let mut buf = [0u8; 4096];
        loop {
            let io = self.tls()?.read(&mut buf);
            match io {
                Io::Done(n) => {
                    self.partial_response += n;
                    while self.partial_response >= RESPONSE_BYTES {
                        self.partial_response -= RESPONSE_BYTES;
                        self.unanswered.pop_front();
                        self.counts.inc("requests_completed");
                    }
                }
                Io::WantRead | Io::WantWrite => return Ok(true),
                Io::Closed | Io::Failed(_) => {
                    self.counts.inc("read_failures");
                    self.reconnect()?;
                    return Ok(false);
                }
            }
        }
    }
}
