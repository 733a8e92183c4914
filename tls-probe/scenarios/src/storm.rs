//! Handshake floods against a single-threaded epoll server (the nginx case of seed 002).
//!
//! Four client threads open short connections as fast as the server lets them: connect,
//! handshake, one small request and its echo, close_notify, close. The server is the
//! `echo.rs` loop, which starts every handshake with `SSL_do_handshake` and drives it by
//! WANT_READ/WANT_WRITE; its key is RSA-2048, so each full handshake costs it a signature.
//!
//! - `handshake-storm`: no session cache, no tickets, and clients never offer a session:
//!   every handshake is full and the server thread saturates in crypto.
//! - `resumed-handshakes`: server session cache and tickets on, and each client keeps the
//!   last session it was given and offers it (`SSL_set_session`): nearly all resume.

use std::{
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use openssl::ssl::{SslContext, SslOptions, SslSession, SslSessionCacheMode};

use super::{
    echo::EchoServer,
    report::Counts,
    runner::{Runner, Window},
    sys,
    tls::{Identity, Io, Side, Tls},
};

const CLIENTS: usize = 4;
const REQUEST: &[u8] = b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resumption {
    Never,
    Reuse,
}

pub fn run(runner: &mut Runner, resumption: Resumption) -> anyhow::Result<()> {
    let id = Identity::generate()?;
    let mut server = id.server_builder()?;
    match resumption {
        Resumption::Never => {
            server.set_session_cache_mode(SslSessionCacheMode::OFF);
            server.set_options(SslOptions::NO_TICKET);
            server
                .set_num_tickets(0)
                .context("turning session tickets off failed")?;
        }
        Resumption::Reuse => {
            server.set_session_cache_mode(SslSessionCacheMode::SERVER);
            server
                .set_session_id_context(b"tls-probe-scenario")
                .context("setting the session id context failed")?;
        }
    }
    let server_ctx = server.build();
    let (listener, addr) = sys::listen_loopback()?;

    runner.spawn("server", move |ctl| {
        let mut srv = EchoServer::new(listener, server_ctx)?;
        let window = ctl.ready(vec![srv.listen_fd()], Vec::new());
        srv.run(window.deadline, |_| false)?;
        Ok(srv.counts)
    })?;
    for _ in 0..CLIENTS {
        let mut builder = id.client_builder()?;
        let session: Arc<Mutex<Option<SslSession>>> = Arc::default();
        if resumption == Resumption::Reuse {
            // TLS 1.3 sessions arrive after the handshake, in NewSessionTicket messages;
            // the callback (which needs the CLIENT cache mode) is the way to catch them.
            builder.set_session_cache_mode(
                SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL_STORE,
            );
            let slot = Arc::clone(&session);
            builder.set_new_session_callback(move |_ssl, new| {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
            });
        }
        let ctx = builder.build();
        runner.spawn("client", move |ctl| {
            let window = ctl.ready(Vec::new(), Vec::new());
            Ok(flood(addr, &ctx, &session, window))
        })?;
    }
    Ok(())
}

/// Opens connections one after another until the deadline.
fn flood(
    addr: SocketAddr,
    ctx: &SslContext,
    session: &Mutex<Option<SslSession>>,
    window: Window,
) -> Counts {
    let mut counts = Counts::default();
    while !window.done() {
        let offer = session.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match one_connection(addr, ctx, offer.as_ref(), &mut counts) {
            Ok(()) => counts.inc("exchanges"),
            // Past the deadline the server has stopped: those failures are expected.
            Err(e) if window.done() => log::debug!("client connection at shutdown: {e:#}"),
            Err(e) => {
                log::debug!("client connection failed: {e:#}");
                counts.inc("failures");
            }
        }
    }
    counts
}

fn one_connection(
    addr: SocketAddr,
    ctx: &SslContext,
    offer: Option<&SslSession>,
    counts: &mut Counts,
) -> anyhow::Result<()> {
    let sock = TcpStream::connect(addr).with_context(|| format!("connecting to {addr} failed"))?;
    sock.set_nodelay(true)
        .context("setting TCP_NODELAY failed")?;
    // Timeouts keep a client from hanging once the server stops at the deadline.
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .context("setting a read timeout failed")?;
    sock.set_write_timeout(Some(Duration::from_secs(2)))
        .context("setting a write timeout failed")?;
    let mut tls = Tls::new(ctx, sock, Side::Client)?;
    if let Some(session) = offer {
        // SAFETY: the session came from a connection made with this same context.
        unsafe { tls.ssl_mut().set_session(session) }.context("SSL_set_session failed")?;
        counts.inc("sessions_offered");
    }
    tls.blocking_handshake(Side::Client, 1)?;
    let kind = if tls.ssl().session_reused() {
        "resumed"
    } else {
        "full"
    };
    counts.inc(&format!("handshakes_{kind}"));
    match tls.write(REQUEST) {
        Io::Done(_) => {}
        other => anyhow::bail!("sending the request failed: {other:?}"),
    }
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < REQUEST.len() {
        match tls.read(&mut buf) {
            Io::Done(n) => got += n,
            other => anyhow::bail!("reading the response failed after {got} bytes: {other:?}"),
        }
    }
    tls.shutdown();
    Ok(())
}
