//! Shared TLS pieces: an in-process self-signed identity, context builders, and a raw
//! connection that drives libssl the way C programs do.
//!
//! `Tls` attaches the socket with `SSL_set_fd` (a socket BIO, so libssl itself calls
//! read(2)/write(2) on the fd, and `SSL_get_fd` works), and each method is one named libssl
//! call (`SSL_read` versus `SSL_read_ex`, ...) followed by `SSL_get_error` when it fails,
//! exactly what the profiler expects to see. The `openssl` crate's `SslStream` would hide
//! the fd behind a Rust BIO and always use the `_ex` calls.

use std::{
    io,
    net::TcpStream,
    os::fd::{AsRawFd, RawFd},
};

use anyhow::Context;
use openssl::{
    asn1::Asn1Time,
    bn::{BigNum, MsbOption},
    error::ErrorStack,
    hash::MessageDigest,
    pkey::{PKey, Private},
    rsa::Rsa,
    ssl::{Ssl, SslContextBuilder, SslMethod, SslOptions, SslRef, SslVerifyMode, SslVersion},
    x509::{X509, X509NameBuilder, extension::SubjectAlternativeName},
};
use openssl_sys as ffi;

// libssl exports these, but openssl-sys does not declare them.
unsafe extern "C" {
    fn SSL_set_fd(ssl: *mut ffi::SSL, fd: libc::c_int) -> libc::c_int;
}
/// The SSL* behind an `SslRef`. A `&SslRef` *is* the pointer: foreign-types'
/// `ForeignTypeRef::as_ptr` is this same cast, but that crate is not a dependency here.
fn raw_ssl(ssl: &SslRef) -> *mut ffi::SSL {
    ssl as *const SslRef as *mut ffi::SSL
}

const SSL_CTRL_CLEAR_MODE: libc::c_int = 78;
pub const SSL_MODE_ENABLE_PARTIAL_WRITE: libc::c_long = 0x1;
pub const SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER: libc::c_long = 0x2;

/// A self-signed RSA-2048 certificate for "localhost" / 127.0.0.1 and its key.
pub struct Identity {
    pub key: PKey<Private>,
    pub cert: X509,
}

impl Identity {
    pub fn generate() -> anyhow::Result<Self> {
        Self::build().context("generating the self-signed RSA-2048 test certificate failed")
    }

    fn build() -> Result<Self, ErrorStack> {
        let key = PKey::from_rsa(Rsa::generate(2048)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", "localhost")?;
        let name = name.build();
        let mut serial = BigNum::new()?;
        serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
        let mut b = X509::builder()?;
        b.set_version(2)?;
        let serial = serial.to_asn1_integer()?;
        b.set_serial_number(&serial)?;
        b.set_subject_name(&name)?;
        b.set_issuer_name(&name)?;
        b.set_pubkey(&key)?;
        let (not_before, not_after) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(2)?);
        b.set_not_before(&not_before)?;
        b.set_not_after(&not_after)?;
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(None, None))?;
        b.append_extension(san)?;
        b.sign(&key, MessageDigest::sha256())?;
        Ok(Self {
            key,
            cert: b.build(),
        })
    }

    /// A server context with this identity, TLS 1.3 only. Callers add cache/ticket policy.
    pub fn server_builder(&self) -> anyhow::Result<SslContextBuilder> {
        let mut b = base_builder()?;
        b.set_private_key(&self.key)
            .context("loading the test key failed")?;
        b.set_certificate(&self.cert)
            .context("loading the test certificate failed")?;
        b.check_private_key()
            .context("test key and certificate do not match")?;
        Ok(b)
    }

    /// A client context that trusts exactly this identity and verifies the peer with it.
    pub fn client_builder(&self) -> anyhow::Result<SslContextBuilder> {
        let mut b = base_builder()?;
        b.cert_store_mut()
            .add_cert(self.cert.clone())
            .context("adding the test certificate to the client trust store failed")?;
        b.set_verify(SslVerifyMode::PEER);
        Ok(b)
    }
}

fn base_builder() -> anyhow::Result<SslContextBuilder> {
    let mut b = SslContextBuilder::new(SslMethod::tls()).context("SSL_CTX_new failed")?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3))
        .context("setting TLS 1.3 as the minimum version failed")?;
    // A peer that closes without close_notify reads as a clean EOF (SSL_ERROR_ZERO_RETURN).
    b.set_options(SslOptions::IGNORE_UNEXPECTED_EOF);
    Ok(b)
}

/// Which way a connection handshakes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// What one libssl I/O call ended with, after `SSL_get_error` for the failing ones.
#[derive(Debug)]
pub enum Io {
    /// Success: bytes moved (0 for a finished handshake or shutdown).
    Done(usize),
    WantRead,
    WantWrite,
    /// The peer closed (close_notify, or EOF with IGNORE_UNEXPECTED_EOF).
    Closed,
    /// SSL_ERROR_SSL, SSL_ERROR_SYSCALL or another code: the connection is unusable.
    Failed(Failure),
}

#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub errors: ErrorStack,
    pub os: io::Error,
}

impl Failure {
    /// True when libssl refused a retried write whose buffer moved or shrank.
    pub fn is_bad_write_retry(&self) -> bool {
        self.errors
            .errors()
            .iter()
            .any(|e| e.reason() == Some("bad write retry"))
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SSL_get_error {}: {}", self.code, self.errors)?;
        if self.code == ffi::SSL_ERROR_SYSCALL {
            write!(f, " ({})", self.os)?;
        }
        Ok(())
    }
}

/// Classifies the return of a libssl call the way C code does: `ret > 0` (or `ok` for the
/// `_ex` calls) is success, anything else goes through `SSL_get_error(ssl, ret)`.
///
/// # Safety
/// `ssl` must be a live SSL object, and this must run on the thread that made the call,
/// before any other libssl call on it.
unsafe fn outcome(ssl: *mut ffi::SSL, ret: libc::c_int, ok: bool, n: usize) -> Io {
    if ok {
        return Io::Done(n);
    }
    let os = io::Error::last_os_error();
    // SAFETY: the caller guarantees ssl is live.
    let code = unsafe { ffi::SSL_get_error(ssl, ret) };
    match code {
        ffi::SSL_ERROR_WANT_READ => Io::WantRead,
        ffi::SSL_ERROR_WANT_WRITE => Io::WantWrite,
        ffi::SSL_ERROR_ZERO_RETURN => Io::Closed,
        // Drains this thread's error queue, so a stale error cannot colour the next call.
        _ => Io::Failed(Failure {
            code,
            errors: ErrorStack::get(),
            os,
        }),
    }
}

fn clamp_len(len: usize) -> libc::c_int {
    libc::c_int::try_from(len).unwrap_or(libc::c_int::MAX)
}

/// Plain `SSL_read(ssl, buf, len)`.
///
/// # Safety
/// `ssl` must be a live SSL object with no other reader running concurrently.
pub unsafe fn ssl_read(ssl: *mut ffi::SSL, buf: &mut [u8]) -> Io {
    // SAFETY: ERR_clear_error only touches this thread's error queue; ssl is live (caller)
    // and buf is writable for the length passed.
    unsafe {
        ffi::ERR_clear_error();
        let ret = ffi::SSL_read(ssl, buf.as_mut_ptr().cast(), clamp_len(buf.len()));
        outcome(ssl, ret, ret > 0, ret.max(0) as usize)
    }
}

/// Plain `SSL_write(ssl, buf, len)`.
///
/// # Safety
/// `ssl` must be a live SSL object with no other writer running concurrently.
pub unsafe fn ssl_write(ssl: *mut ffi::SSL, buf: &[u8]) -> Io {
    // SAFETY: as for ssl_read; buf is readable for the length passed.
    unsafe {
        ffi::ERR_clear_error();
        let ret = ffi::SSL_write(ssl, buf.as_ptr().cast(), clamp_len(buf.len()));
        outcome(ssl, ret, ret > 0, ret.max(0) as usize)
    }
}

/// The connection: the SSL object and its socket. Fields drop in order, so `SSL_free`
/// runs before the socket is closed, as in C.
pub struct Tls {
    ssl: Ssl,
    sock: TcpStream,
}

impl Tls {
    /// Wraps a connected socket: `SSL_new`, `SSL_set_fd`, then the connect/accept state.
    pub fn new(
        ctx: &openssl::ssl::SslContextRef,
        sock: TcpStream,
        side: Side,
    ) -> anyhow::Result<Self> {
        let mut ssl = Ssl::new(ctx).context("SSL_new failed")?;
        // SAFETY: ssl is live; the fd stays open as long as `sock`, which outlives ssl here.
        let ok = unsafe { SSL_set_fd(raw_ssl(&ssl), sock.as_raw_fd()) };
        if ok != 1 {
            return Err(ErrorStack::get()).context("SSL_set_fd failed");
        }
        match side {
            Side::Client => ssl.set_connect_state(),
            Side::Server => ssl.set_accept_state(),
        }
        Ok(Self { ssl, sock })
    }

    pub fn ptr(&self) -> *mut ffi::SSL {
        raw_ssl(&self.ssl)
    }

    pub fn ssl(&self) -> &SslRef {
        &self.ssl
    }

    pub fn ssl_mut(&mut self) -> &mut SslRef {
        &mut self.ssl
    }

    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// `SSL_clear_mode(ssl, bits)`: returns the modes left set.
    pub fn clear_mode(&mut self, bits: libc::c_long) -> libc::c_long {
        // SAFETY: SSL_ctrl with CLEAR_MODE only updates the live SSL's mode bits.
        unsafe { ffi::SSL_ctrl(self.ptr(), SSL_CTRL_CLEAR_MODE, bits, std::ptr::null_mut()) }
    }

    /// `SSL_do_handshake`.
    pub fn handshake(&mut self) -> Io {
        // SAFETY: self owns the live SSL and has &mut access.
        unsafe {
            ffi::ERR_clear_error();
            let ret = ffi::SSL_do_handshake(self.ptr());
            outcome(self.ptr(), ret, ret == 1, 0)
        }
    }

    /// `SSL_connect`.
    pub fn connect(&mut self) -> Io {
        // SAFETY: as for handshake.
        unsafe {
            ffi::ERR_clear_error();
            let ret = ffi::SSL_connect(self.ptr());
            outcome(self.ptr(), ret, ret == 1, 0)
        }
    }

    /// `SSL_accept`.
    pub fn accept(&mut self) -> Io {
        // SAFETY: as for handshake.
        unsafe {
            ffi::ERR_clear_error();
            let ret = ffi::SSL_accept(self.ptr());
            outcome(self.ptr(), ret, ret == 1, 0)
        }
    }

    /// Plain `SSL_read`.
    pub fn read(&mut self, buf: &mut [u8]) -> Io {
        // SAFETY: self owns the live SSL and has &mut access.
        unsafe { ssl_read(self.ptr(), buf) }
    }

    /// Plain `SSL_write`.
    pub fn write(&mut self, buf: &[u8]) -> Io {
        // SAFETY: self owns the live SSL and has &mut access.
        unsafe { ssl_write(self.ptr(), buf) }
    }

    /// `SSL_read_ex`.
    pub fn read_ex(&mut self, buf: &mut [u8]) -> Io {
        let mut n = 0usize;
        // SAFETY: self owns the live SSL; buf and n are writable for the call.
        unsafe {
            ffi::ERR_clear_error();
            let ret = ffi::SSL_read_ex(self.ptr(), buf.as_mut_ptr().cast(), buf.len(), &mut n);
            outcome(self.ptr(), ret, ret == 1, n)
        }
    }

    /// `SSL_write_ex`.
    pub fn write_ex(&mut self, buf: &[u8]) -> Io {
        let mut n = 0usize;
        // SAFETY: self owns the live SSL; buf is readable and n writable for the call.
        unsafe {
            ffi::ERR_clear_error();
            let ret = ffi::SSL_write_ex(self.ptr(), buf.as_ptr().cast(), buf.len(), &mut n);
            outcome(self.ptr(), ret, ret == 1, n)
        }
    }

    /// `SSL_shutdown` once (sends close_notify; does not wait for the peer's).
    pub fn shutdown(&mut self) {
        // SAFETY: self owns the live SSL. The result does not matter: we close next.
        unsafe {
            ffi::ERR_clear_error();
            ffi::SSL_shutdown(self.ptr());
            ffi::ERR_clear_error();
        }
    }

    /// Runs a blocking handshake to the end (for blocking sockets, or sockets with a
    /// receive timeout, where WANT_READ means the timeout passed).
    pub fn blocking_handshake(&mut self, side: Side, attempts: u32) -> anyhow::Result<()> {
        for _ in 0..attempts {
            let io = match side {
                Side::Client => self.connect(),
                Side::Server => self.accept(),
            };
            match io {
                Io::Done(_) => return Ok(()),
                Io::WantRead | Io::WantWrite => continue,
                Io::Closed => anyhow::bail!("peer closed during the TLS handshake"),
                Io::Failed(f) => anyhow::bail!("TLS handshake failed: {f}"),
            }
        }
        anyhow::bail!("TLS handshake did not finish after {attempts} timed-out attempts")
    }
}

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, thread};

    use super::*;

    #[test]
    fn blocking_tls_round_trip_with_plain_read_write() {
        let id = Identity::generate().expect("identity");
        let server_ctx = id.server_builder().expect("server").build();
        let client_ctx = id.client_builder().expect("client").build();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = thread::spawn(move || {
            let (sock, _) = listener.accept().expect("accept");
            let mut tls = Tls::new(&server_ctx, sock, Side::Server).expect("tls");
            tls.blocking_handshake(Side::Server, 1).expect("accept");
            let mut buf = [0u8; 64];
            match tls.read(&mut buf) {
                Io::Done(n) => assert!(matches!(tls.write(&buf[..n]), Io::Done(m) if m == n)),
                other => panic!("server read: {other:?}"),
            }
        });
        let sock = TcpStream::connect(addr).expect("connect");
        let mut tls = Tls::new(&client_ctx, sock, Side::Client).expect("tls");
        tls.blocking_handshake(Side::Client, 1).expect("connect");
        assert!(matches!(tls.write_ex(b"hello"), Io::Done(5)));
        let mut buf = [0u8; 64];
        // The first read may only consume session tickets.
        let got = loop {
            match tls.read_ex(&mut buf) {
                Io::Done(n) => break n,
                Io::WantRead => continue,
                other => panic!("client read: {other:?}"),
            }
        };
        assert_eq!(&buf[..got], b"hello");
        assert_eq!(
            tls.clear_mode(SSL_MODE_ENABLE_PARTIAL_WRITE) & SSL_MODE_ENABLE_PARTIAL_WRITE,
            0
        );
        server.join().expect("server thread");
    }
}
