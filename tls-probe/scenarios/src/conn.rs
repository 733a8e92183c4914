//! A non-blocking TLS connection driven correctly by readiness: the reference for what a
//! healthy event loop does.
//!
//! - The epoll interest follows what libssl asked for: EPOLLIN always (data or EOF may
//!   come), EPOLLOUT only while some call is waiting for the socket to drain.
//! - A write that got WANT_READ/WANT_WRITE is retried with the very same buffer (pointer
//!   and length): the buffer is parked in `inflight` until libssl takes it.
//! - Reads drain libssl until WANT_READ, since bytes buffered inside libssl never make
//!   the fd readable again.
//!
//! Handshakes use `SSL_do_handshake`; data moves with `SSL_read_ex` / `SSL_write_ex`.

use super::{
    report::Counts,
    sys::{self, Epoll},
    tls::{Io, Tls},
};

/// The most bytes handed to one `SSL_write_ex` (one TLS record's worth).
const CHUNK: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Open,
    Closed,
}

pub struct Conn {
    tls: Tls,
    token: u64,
    established: bool,
    /// What the last unfinished call on each path is waiting for.
    handshake_want: Option<Want>,
    read_want: Option<Want>,
    write_want: Option<Want>,
    /// The buffer the last unfinished `SSL_write_ex` was given; retried unchanged.
    inflight: Option<Vec<u8>>,
    outq: Vec<u8>,
    /// The interest currently registered with epoll (0 before registration).
    registered: u32,
}

impl Conn {
    pub fn new(tls: Tls, token: u64) -> Self {
        Self {
            tls,
            token,
            established: false,
            handshake_want: None,
            read_want: None,
            write_want: None,
            inflight: None,
            outq: Vec::new(),
            registered: 0,
        }
    }

    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    pub fn established(&self) -> bool {
        self.established
    }

    /// EPOLLIN always; EPOLLOUT only while a call waits for the socket to drain.
    pub fn interest(&self) -> u32 {
        let wants_out =
            [self.handshake_want, self.read_want, self.write_want].contains(&Some(Want::Write));
        if wants_out {
            sys::IN | sys::OUT
        } else {
            sys::IN
        }
    }

    /// Registers with epoll, or updates the registration when the interest changed.
    pub fn sync(&mut self, ep: &Epoll) -> anyhow::Result<()> {
        let want = self.interest();
        if self.registered == 0 {
            ep.add(self.tls.fd(), want, self.token)?;
        } else if self.registered != want {
            ep.modify(self.tls.fd(), want, self.token)?;
        }
        self.registered = want;
        Ok(())
    }

    pub fn send(&mut self, data: &[u8]) {
        self.outq.extend_from_slice(data);
    }

    /// Handles readiness `bits` (0 means "try everything", e.g. right after accept).
    /// Received application bytes are appended to `inbox`.
    pub fn on_ready(&mut self, bits: u32, counts: &mut Counts, inbox: &mut Vec<u8>) -> Status {
        let readable = bits == 0 || bits & !sys::OUT != 0; // IN, or ERR/HUP: the next call reports them
        let writable = bits == 0 || bits & sys::OUT != 0;
        if !self.established {
            let waited = self.handshake_want;
            if waited == Some(Want::Read) && !readable || waited == Some(Want::Write) && !writable {
                return Status::Open;
            }
            match self.tls.handshake() {
                Io::Done(_) => {
                    self.established = true;
                    self.handshake_want = None;
                    let kind = if self.tls.ssl().session_reused() {
                        "resumed"
                    } else {
                        "full"
                    };
                    counts.inc(&format!("handshakes_{kind}"));
                }
                Io::WantRead => {
                    self.handshake_want = Some(Want::Read);
                    counts.inc("want_read");
                    return Status::Open;
                }
                Io::WantWrite => {
                    self.handshake_want = Some(Want::Write);
                    counts.inc("want_write");
                    return Status::Open;
                }
                Io::Closed | Io::Failed(_) => {
                    counts.inc("handshake_failures");
                    return Status::Closed;
                }
            }
        }
        let retry_write = match self.write_want {
            Some(Want::Read) => readable,
            Some(Want::Write) => writable,
            None => false,
        };
        if retry_write && self.flush(counts) == Status::Closed {
            return Status::Closed;
        }
        let read_ready = match self.read_want {
            Some(Want::Write) => writable,
            _ => readable,
        };
        if read_ready {
            return self.drain(counts, inbox);
        }
        Status::Open
    }

    /// Reads until libssl says WANT_READ (or WANT_WRITE, or the end).
    fn drain(&mut self, counts: &mut Counts, inbox: &mut Vec<u8>) -> Status {
        let mut buf = [0u8; CHUNK];
        loop {
            counts.inc("ssl_read_calls");
            match self.tls.read_ex(&mut buf) {
                Io::Done(n) => {
                    counts.add("read_bytes", n as u64);
                    inbox.extend_from_slice(&buf[..n]);
                }
                Io::WantRead => {
                    counts.inc("want_read");
                    self.read_want = None;
                    return Status::Open;
                }
                Io::WantWrite => {
                    counts.inc("want_write");
                    self.read_want = Some(Want::Write);
                    return Status::Open;
                }
                Io::Closed => {
                    counts.inc("peer_closed");
                    return Status::Closed;
                }
                Io::Failed(f) => {
                    log::debug!("read on fd {} failed: {f}", self.tls.fd());
                    counts.inc("read_failures");
                    return Status::Closed;
                }
            }
        }
    }

    /// Writes queued bytes until done or libssl asks to wait. Does nothing while a
    /// parked write is waiting for readiness that has not come (the caller only calls
    /// this on new data, or through `on_ready`).
    pub fn flush(&mut self, counts: &mut Counts) -> Status {
        if !self.established {
            return Status::Open;
        }
        loop {
            let buf = match self.inflight.take() {
                Some(buf) => buf,
                None if self.outq.is_empty() => {
                    self.write_want = None;
                    return Status::Open;
                }
                None => {
                    let n = self.outq.len().min(CHUNK);
                    self.outq.drain(..n).collect()
                }
            };
            counts.inc("ssl_write_calls");
            match self.tls.write_ex(&buf) {
                // Without ENABLE_PARTIAL_WRITE, success means the whole buffer.
                Io::Done(n) => {
                    counts.add("write_bytes", n as u64);
                    self.write_want = None;
                }
                Io::WantWrite => {
                    counts.inc("want_write");
                    self.write_want = Some(Want::Write);
                    self.inflight = Some(buf);
                    return Status::Open;
                }
                Io::WantRead => {
                    counts.inc("want_read");
                    self.write_want = Some(Want::Read);
                    self.inflight = Some(buf);
                    return Status::Open;
                }
                Io::Closed => {
                    counts.inc("peer_closed");
                    return Status::Closed;
                }
                Io::Failed(f) => {
                    log::debug!("write on fd {} failed: {f}", self.tls.fd());
                    counts.inc("write_failures");
                    return Status::Closed;
                }
            }
        }
    }

    /// Flushes new data unless a parked write is still waiting for readiness.
    pub fn flush_new(&mut self, counts: &mut Counts) -> Status {
        if self.write_want.is_some() {
            Status::Open
        } else {
            self.flush(counts)
        }
    }
}
