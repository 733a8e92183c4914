//! Loops that wake without progress, on an idle TLS connection whose peer says nothing.
//!
//! - `spin-loop` (seed 000): the client wrote its request and "forgot" to drop EPOLLOUT.
//!   Level-triggered EPOLLOUT is always ready on an idle socket, so `epoll_wait` returns
//!   at once, the loop calls plain `SSL_read`, `SSL_get_error` says WANT_READ, and round
//!   it goes: a pinned core, zero bytes.
//! - `busy-poll`: the connection is registered for EPOLLIN only, correctly, but the loop
//!   polls with a zero timeout and never sleeps: a pinned core, zero wakeups with events.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::Context;
use openssl::ssl::SslContext;

use super::{
    report::Counts,
    runner::{Ctl, Runner, Window},
    sys::{self, Epoll},
    tls::{Identity, Io, Side, Tls},
};

const REQUEST: &[u8] =
    b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    SpinLoop,
    BusyPoll,
}

pub fn run(runner: &mut Runner, flavor: Flavor) -> anyhow::Result<()> {
    let id = Identity::generate()?;
    let server_ctx = id.server_builder()?.build();
    let client_ctx = id.client_builder()?.build();
    let (listener, addr) = sys::listen_loopback()?;
    let request_bytes = if flavor == Flavor::SpinLoop {
        REQUEST.len()
    } else {
        0
    };
    runner.spawn("server", move |ctl| {
        silent_server(ctl, &listener, &server_ctx, request_bytes)
    })?;
    runner.spawn("client", move |ctl| {
        let mut tls = connect(addr, &client_ctx)?;
        let ep = Epoll::new()?;
        let window = ctl.ready(vec![tls.fd()], vec![tls.ptr() as u64]);
        match flavor {
            Flavor::SpinLoop => spin_loop(&ep, &mut tls, window),
            Flavor::BusyPoll => busy_poll(&ep, &mut tls, window),
        }
    })
}

/// A blocking client connection with a finished handshake, then made non-blocking.
fn connect(addr: SocketAddr, ctx: &SslContext) -> anyhow::Result<Tls> {
    let sock = TcpStream::connect(addr).with_context(|| format!("connecting to {addr} failed"))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .context("setting a read timeout failed")?;
    let mut tls = Tls::new(ctx, sock, Side::Client)?;
    tls.blocking_handshake(Side::Client, 1)?;
    tls.sock()
        .set_nonblocking(true)
        .context("making the client socket non-blocking failed")?;
    Ok(tls)
}

/// Accepts one connection, reads the request (`request_bytes` of it), never answers, and
/// sleeps until the deadline with the connection open.
fn silent_server(
    ctl: &Ctl,
    listener: &TcpListener,
    ctx: &SslContext,
    request_bytes: usize,
) -> anyhow::Result<Counts> {
    anyhow::ensure!(
        sys::wait_readable(listener.as_raw_fd(), Duration::from_secs(10))?,
        "no client connected within 10s"
    );
    let (sock, _) = listener.accept().context("accept failed")?;
    // Blocking reads that time out: the server sleeps in read(2) rather than polling.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .context("setting a read timeout failed")?;
    let mut tls = Tls::new(ctx, sock, Side::Server)?;
    tls.blocking_handshake(Side::Server, 50)?;
    let window = ctl.ready(vec![tls.fd()], vec![tls.ptr() as u64]);
    let mut counts = Counts::default();
    let mut buf = [0u8; 4096];
    let mut got = 0;
    while got < request_bytes && !window.done() {
        match tls.read(&mut buf) {
            Io::Done(n) => got += n,
            Io::WantRead | Io::WantWrite => {}
            Io::Closed => break,
            Io::Failed(f) => anyhow::bail!("server read failed: {f}"),
        }
    }
    counts.add("read_bytes", got as u64);
    std::thread::sleep(window.deadline.saturating_duration_since(Instant::now()));
    Ok(counts)
}

fn spin_loop(ep: &Epoll, tls: &mut Tls, window: Window) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    // The request goes out on the first EPOLLOUT, so the loop asks for both...
    ep.add(tls.fd(), sys::IN | sys::OUT, 1)?;
    let mut request_sent = false;
    let (mut wakeups, mut empty, mut calls) = (0u64, 0u64, 0u64);
    let (mut want_read, mut want_write, mut bytes) = (0u64, 0u64, 0u64);
    let mut events = sys::event_buf(16);
    let mut buf = [0u8; 16 * 1024];
    while !window.done() {
        let n = ep.wait(
            &mut events,
            sys::timeout_ms(window.deadline, Duration::from_secs(1)),
        )?;
        wakeups += 1;
        if n == 0 {
            empty += 1;
        }
        for ev in &events[..n] {
            let (bits, _) = sys::event_parts(ev);
            if bits & sys::OUT != 0 && !request_sent {
                match tls.write(REQUEST) {
                    Io::Done(_) => request_sent = true,
                    Io::WantRead | Io::WantWrite => continue,
                    Io::Closed => anyhow::bail!("server closed before the request was sent"),
                    Io::Failed(f) => anyhow::bail!("sending the request failed: {f}"),
                }
                // ...and here is the bug: the write is done, but EPOLLOUT stays armed.
            }
            // The loop treats any wakeup as "the response may be here".
            calls += 1;
            match tls.read(&mut buf) {
                Io::Done(n) => bytes += n as u64,
                Io::WantRead => want_read += 1,
                Io::WantWrite => want_write += 1,
                // The server closes at the deadline; seeing it means the deadline passed.
                Io::Closed | Io::Failed(_) if window.done() => {
                    counts.inc("closed_at_deadline");
                    break;
                }
                Io::Closed => anyhow::bail!("server closed the connection"),
                Io::Failed(f) => anyhow::bail!("SSL_read failed: {f}"),
            }
        }
    }
    counts.add("wakeups", wakeups);
    counts.add("empty_wakeups", empty);
    counts.add("ssl_read_calls", calls);
    counts.add("want_read", want_read);
    counts.add("want_write", want_write);
    counts.add("read_bytes", bytes);
    counts.add("requests_sent", u64::from(request_sent));
    Ok(counts)
}

fn busy_poll(ep: &Epoll, tls: &mut Tls, window: Window) -> anyhow::Result<Counts> {
    let mut counts = Counts::default();
    ep.add(tls.fd(), sys::IN, 1)?;
    let (mut polls, mut empty, mut calls, mut want_read, mut bytes) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut events = sys::event_buf(16);
    let mut buf = [0u8; 16 * 1024];
    while !window.done() {
        // The bug: a zero timeout, so the thread never sleeps even with nothing to do.
        let n = ep.wait(&mut events, 0)?;
        polls += 1;
        if n == 0 {
            empty += 1;
            continue;
        }
        // Only the session tickets after the handshake ever arrive; drain them properly.
        loop {
            calls += 1;
            match tls.read(&mut buf) {
                Io::Done(n) => bytes += n as u64,
                Io::WantRead => {
                    want_read += 1;
                    break;
                }
                Io::WantWrite => break,
                // The server closes at the deadline; seeing it means the deadline passed.
                Io::Closed | Io::Failed(_) if window.done() => {
                    counts.inc("closed_at_deadline");
                    break;
                }
                Io::Closed => anyhow::bail!("server closed the connection"),
                Io::Failed(f) => anyhow::bail!("SSL_read failed: {f}"),
            }
        }
    }
    counts.add("wakeups", polls);
    counts.add("empty_wakeups", empty);
    counts.add("ssl_read_calls", calls);
    counts.add("want_read", want_read);
    counts.add("read_bytes", bytes);
    Ok(counts)
}
