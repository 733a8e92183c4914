//! `concurrent-ssl`: one SSL object used by two threads at once (seed 003).
//!
//! After a blocking TLS 1.3 handshake, the raw `SSL*` is shared: a reader thread loops on
//! plain `SSL_read` and a writer thread calls plain `SSL_write` with a 64-byte message
//! every 5 ms, against the `echo.rs` server. The two calls overlap in time on the same
//! SSL*, which libssl does not support; the profiler should flag it.
//!
//! It survives in practice because after a TLS 1.3 handshake, reading and writing touch
//! mostly separate state (read vs write record layer), provided nothing on the read side
//! has to write: so the server sends no session tickets and nobody sends KeyUpdate.
//! Shared fields such as the "last I/O state" used by `SSL_get_error` may still race,
//! which at worst mislabels a WANT_* code. This is the bug on display, not a pattern.

use std::{
    net::TcpStream,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{
    echo::EchoServer,
    report::Counts,
    runner::Runner,
    sys,
    tls::{self, Identity, Io, Side, Tls},
};

const MESSAGE: &[u8] = b"tick: 0123456789abcdef0123456789abcdef0123456789abcdef012345678\n";
const WRITE_EVERY: Duration = Duration::from_millis(5);

/// A `Tls` that both threads may use through its raw pointer.
struct Shared(Tls);

// SAFETY: this is the deliberate misuse the scenario exists to show. The SSL object is
// kept alive by the Arc until both threads are done (no use after free). The reader only
// calls SSL_read/SSL_get_error and the writer only SSL_write/SSL_get_error; the
// connection is set up (no tickets, TLS 1.3, handshake done) so that neither call needs
// the other direction's state. libssl makes no promise here: see the module docs.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

pub fn run(runner: &mut Runner) -> anyhow::Result<()> {
    let id = Identity::generate()?;
    let mut server = id.server_builder()?;
    // Tickets would be read by the reader thread while the writer writes; keep them out.
    server
        .set_num_tickets(0)
        .context("turning session tickets off failed")?;
    let server_ctx = server.build();
    let client_ctx = id.client_builder()?.build();
    let (listener, addr) = sys::listen_loopback()?;

    runner.spawn("server", move |ctl| {
        let mut srv = EchoServer::new(listener, server_ctx)?;
        srv.run(Instant::now() + Duration::from_secs(10), |s| {
            s.established() >= 1
        })?;
        anyhow::ensure!(
            srv.established() == 1,
            "the client did not connect within 10s"
        );
        let (fds, ssl) = srv.conn_fds();
        let window = ctl.ready(fds, ssl);
        srv.run(window.deadline, |_| false)?;
        Ok(srv.counts)
    })?;

    let sock = TcpStream::connect(addr).with_context(|| format!("connecting to {addr} failed"))?;
    sock.set_nodelay(true)
        .context("setting TCP_NODELAY failed")?;
    // The reader wakes every 200 ms without data, to notice the deadline.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .context("setting a read timeout failed")?;
    let mut client = Tls::new(&client_ctx, sock, Side::Client)?;
    client.blocking_handshake(Side::Client, 50)?;
    let shared = Arc::new(Shared(client));

    let reader = Arc::clone(&shared);
    runner.spawn("reader", move |ctl| {
        let Shared(tls) = &*reader;
        let window = ctl.ready(vec![tls.fd()], vec![tls.ptr() as u64]);
        let mut counts = Counts::default();
        let mut buf = [0u8; 4096];
        while !window.done() {
            counts.inc("ssl_read_calls");
            // SAFETY: the SSL is alive (Arc); this thread is its only reader. See `Shared`.
            match unsafe { tls::ssl_read(tls.ptr(), &mut buf) } {
                Io::Done(n) => counts.add("read_bytes", n as u64),
                Io::WantRead => counts.inc("want_read"),
                Io::WantWrite => counts.inc("want_write"),
                // The server closes at the deadline; seeing it means the deadline passed.
                Io::Closed | Io::Failed(_) if window.done() => break,
                Io::Closed => anyhow::bail!("the echo server closed the connection"),
                Io::Failed(f) => anyhow::bail!("SSL_read failed: {f}"),
            }
        }
        Ok(counts)
    })?;
    let writer = Arc::clone(&shared);
    runner.spawn("writer", move |ctl| {
        let Shared(tls) = &*writer;
        let window = ctl.ready(vec![tls.fd()], vec![tls.ptr() as u64]);
        let mut counts = Counts::default();
        let mut next = Instant::now();
        while !window.done() {
            counts.inc("ssl_write_calls");
            // SAFETY: the SSL is alive (Arc); this thread is its only writer. See `Shared`.
            match unsafe { tls::ssl_write(tls.ptr(), MESSAGE) } {
                Io::Done(n) => counts.add("write_bytes", n as u64),
                Io::WantRead => counts.inc("want_read"),
                Io::WantWrite => counts.inc("want_write"),
                // The server closes at the deadline; seeing it means the deadline passed.
                Io::Closed | Io::Failed(_) if window.done() => break,
                Io::Closed => anyhow::bail!("the echo server closed the connection"),
                Io::Failed(f) => anyhow::bail!("SSL_write failed: {f}"),
            }
            next += WRITE_EVERY;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        Ok(counts)
    })?;
    // The main thread's reference drops here; the last thread to finish frees the SSL.
    drop(shared);
    Ok(())
}
