//! The fake offload engine of the async scenarios (`async_stall.rs`), and the few libssl
//! and libcrypto async calls they make through FFI.
//!
//! A server context in async mode (`SSL_MODE_ASYNC`) runs each handshake inside an ASYNC
//! job. The certificate callback installed here runs inside that job and plays the engine:
//! it calls `ASYNC_pause_job()`, so the handshake call returns -1 and `SSL_get_error`
//! answers SSL_ERROR_WANT_ASYNC, until its [`Flavor`] says the offload is done.

use std::{
    os::fd::RawFd,
    sync::{Arc, OnceLock},
    time::Instant,
};

use openssl::ssl::SslContextBuilder;
use openssl_sys as ffi;

/// Pauses per handshake in `async-quick` ("once or twice per operation").
pub const QUICK_PAUSES: u64 = 2;

/// `SSL_ERROR_WANT_ASYNC` and `SSL_ERROR_WANT_ASYNC_JOB`.
pub const WANT_ASYNC: i32 = 9;
pub const WANT_ASYNC_JOB: i32 = 10;
const SSL_MODE_ASYNC: libc::c_long = 0x100;

type AsyncJob = libc::c_void;
type WaitCtx = libc::c_void;
type Cleanup = unsafe extern "C" fn(*mut WaitCtx, *const libc::c_void, RawFd, *mut libc::c_void);

// libssl and libcrypto export these; openssl-sys does not declare them.
unsafe extern "C" {
    fn SSL_CTX_set_cert_cb(
        ctx: *mut ffi::SSL_CTX,
        cb: Option<unsafe extern "C" fn(*mut ffi::SSL, *mut libc::c_void) -> libc::c_int>,
        arg: *mut libc::c_void,
    );
    fn SSL_get_all_async_fds(
        ssl: *mut ffi::SSL,
        fds: *mut RawFd,
        numfds: *mut usize,
    ) -> libc::c_int;
    fn ASYNC_get_current_job() -> *mut AsyncJob;
    fn ASYNC_init_thread(max_size: usize, init_size: usize) -> libc::c_int;
    fn ASYNC_get_wait_ctx(job: *mut AsyncJob) -> *mut WaitCtx;
    fn ASYNC_pause_job() -> libc::c_int;
    fn ASYNC_WAIT_CTX_set_wait_fd(
        ctx: *mut WaitCtx,
        key: *const libc::c_void,
        fd: RawFd,
        custom: *mut libc::c_void,
        cleanup: Option<Cleanup>,
    ) -> libc::c_int;
    fn ASYNC_WAIT_CTX_clear_fd(ctx: *mut WaitCtx, key: *const libc::c_void) -> libc::c_int;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// The engine is stuck for most of the run.
    Stall,
    /// The engine answers at once.
    Quick,
    /// The engine is stuck, and the thread has one async job: a second connection finds
    /// none (WANT_ASYNC_JOB).
    NoJobs,
}

/// What the fake engine does, shared by the callback and the server thread.
pub struct Engine {
    pub flavor: Flavor,
    /// `async-stall`: the instant the engine comes back (set when the load starts).
    pub until: OnceLock<Instant>,
}

thread_local! {
    /// Calls to `ASYNC_pause_job` made on this thread (a job runs on the thread that
    /// started it), for DONE.
    static PAUSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The wait-fd key: any address unique to this module.
static KEY: u8 = 0;

fn key() -> *const libc::c_void {
    (&KEY as *const u8).cast()
}

/// The wait ctx's cleanup, for a ctx freed with the fd still registered.
unsafe extern "C" fn cleanup(
    _ctx: *mut WaitCtx,
    _key: *const libc::c_void,
    fd: RawFd,
    _custom: *mut libc::c_void,
) {
    // SAFETY: fd is the eventfd registered in `register_wait_fd`, closed once.
    unsafe { libc::close(fd) };
}

/// Registers a new eventfd as the job's wait fd, the one a device would signal on
/// completion. Returns it.
///
/// # Safety
/// `wctx` must be the current job's live wait ctx.
unsafe fn register_wait_fd(wctx: *mut WaitCtx) -> Option<RawFd> {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: wctx is live; fd is handed over with its cleanup.
    if unsafe { ASYNC_WAIT_CTX_set_wait_fd(wctx, key(), fd, std::ptr::null_mut(), Some(cleanup)) }
        != 1
    {
        // SAFETY: not registered: still ours.
        unsafe { libc::close(fd) };
        return None;
    }
    Some(fd)
}

/// The certificate callback, run inside the handshake's async job: the "engine".
///
/// It makes no read or write inside the job: the profiler takes the fd of the last I/O
/// syscall inside an SSL call for the connection's socket. A stuck device never signals
/// its fd, so there is nothing to read; the quick one answers synchronously, with no fd.
unsafe extern "C" fn cert_cb(_ssl: *mut ffi::SSL, arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: arg is the Engine the server thread keeps alive as long as its context.
    let engine = unsafe { &*arg.cast::<Engine>() };
    // SAFETY: no preconditions; null outside a job (async mode off).
    let job = unsafe { ASYNC_get_current_job() };
    if job.is_null() {
        return 1;
    }
    // SAFETY: job is the current, live job.
    let wctx = unsafe { ASYNC_get_wait_ctx(job) };
    let wait_fd = match engine.flavor {
        // SAFETY: wctx is the current job's.
        Flavor::Stall | Flavor::NoJobs => unsafe { register_wait_fd(wctx) },
        Flavor::Quick => None,
    };
    let mut pauses = 0u64;
    loop {
        let done = match engine.flavor {
            Flavor::Stall | Flavor::NoJobs => {
                engine.until.get().is_none_or(|t| Instant::now() >= *t)
            }
            Flavor::Quick => pauses >= QUICK_PAUSES,
        };
        if done {
            break;
        }
        pauses += 1;
        PAUSES.with(|p| p.set(p.get() + 1));
        // SAFETY: inside a job (checked above); returns when the server resumes it.
        unsafe { ASYNC_pause_job() };
    }
    // The offload is over: unregister the fd (closing it takes it out of the epoll set).
    if let Some(fd) = wait_fd {
        // SAFETY: clearing a freshly added fd frees its entry without the cleanup, so the
        // fd is closed here, once.
        unsafe {
            ASYNC_WAIT_CTX_clear_fd(wctx, key());
            libc::close(fd);
        }
    }
    1
}

impl Engine {
    /// Puts `builder`'s contexts in async mode, with this engine as their certificate
    /// callback. The engine must outlive every context built: the caller keeps the `Arc`
    /// next to the context and drops the context first.
    pub fn install(builder: &SslContextBuilder, flavor: Flavor) -> Arc<Self> {
        let engine = Arc::new(Self {
            flavor,
            until: OnceLock::new(),
        });
        // SAFETY: SSL_CTX_ctrl(MODE) only sets the live context's mode bits; the callback
        // argument is the engine, kept alive by the caller as documented.
        unsafe {
            ffi::SSL_CTX_set_mode(builder.as_ptr(), SSL_MODE_ASYNC);
            SSL_CTX_set_cert_cb(
                builder.as_ptr(),
                Some(cert_cb),
                Arc::as_ptr(&engine).cast_mut().cast(),
            );
        }
        engine
    }

    /// Whether a stuck engine has come back (always, before the load starts it).
    pub fn stalled(&self) -> bool {
        self.until.get().is_some_and(|t| Instant::now() < *t)
    }
}

/// The first wait fd of `ssl`'s paused async job, if it has one.
///
/// # Safety
/// `ssl` must be a live SSL object.
pub unsafe fn async_fd(ssl: *mut ffi::SSL) -> Option<RawFd> {
    let mut fds = [-1; 4];
    let mut n = fds.len();
    // SAFETY: the SSL is live (caller); fds has room for n entries.
    unsafe { SSL_get_all_async_fds(ssl, fds.as_mut_ptr(), &mut n) };
    fds[..n.min(fds.len())].first().copied()
}

/// Gives the calling thread an async job pool of `jobs` jobs at most. Call before the
/// thread's first async call.
pub fn limit_thread_jobs(jobs: usize) -> anyhow::Result<()> {
    // SAFETY: sets this thread's job pool; no pointers.
    if unsafe { ASYNC_init_thread(jobs, 0) } != 1 {
        anyhow::bail!("ASYNC_init_thread({jobs}, 0) failed");
    }
    Ok(())
}

/// `ASYNC_pause_job` calls made on this thread.
pub fn thread_pauses() -> u64 {
    PAUSES.with(std::cell::Cell::get)
}
