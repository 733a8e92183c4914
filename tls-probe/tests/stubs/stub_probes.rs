//! Exact-count tests: uprobes on `extern "C"` stubs named like the libssl functions, inside
//! this very test binary, run as a separate target process.
//!
//! The test re-executes its own binary as the target (`stub_target_process`, ignored unless
//! `TLS_PROBE_STUB_TARGET` is set), attaches `tls-probe --libssl /proc/PID/exe` to it, and
//! tells it to make a known sequence of calls. Every field of every event is known.

use std::{
    ffi::{c_int, c_void},
    hint::black_box,
    os::fd::AsRawFd,
    process::Command,
    time::Duration,
};

use common::{Attached, Proc, events, summary};

use crate::common;

/// The socket the stub SSL object "uses": its reads get EAGAIN, its writes succeed.
static mut STUB_FD: c_int = -1;

#[unsafe(no_mangle)]
#[inline(never)]
/// # Safety
/// `buf` and the out pointer are valid for the lengths given, as in libssl.
pub unsafe extern "C" fn SSL_read(ssl: *mut c_void, buf: *mut c_void, num: c_int) -> c_int {
    // SAFETY: STUB_FD is set once before any call; buf points to `num` bytes.
    let r = unsafe { libc::read(STUB_FD, buf, num as usize) };
    black_box(ssl);
    if r > 0 { r as c_int } else { -1 }
}

#[unsafe(no_mangle)]
#[inline(never)]
/// # Safety
/// `buf` and the out pointer are valid for the lengths given, as in libssl.
pub unsafe extern "C" fn SSL_read_ex(
    ssl: *mut c_void,
    buf: *mut c_void,
    num: usize,
    readbytes: *mut usize,
) -> c_int {
    // No syscall: the fd must come from the tracker's memory of this SSL*.
    black_box((ssl, buf, num));
    // SAFETY: the caller passes a valid out pointer.
    unsafe { *readbytes = 0 };
    0
}

#[unsafe(no_mangle)]
#[inline(never)]
/// # Safety
/// `buf` and the out pointer are valid for the lengths given, as in libssl.
pub unsafe extern "C" fn SSL_write_ex(
    ssl: *mut c_void,
    buf: *const c_void,
    num: usize,
    written: *mut usize,
) -> c_int {
    black_box(ssl);
    // SAFETY: STUB_FD is a socket; buf points to `num` bytes; written is valid.
    let r = unsafe { libc::write(STUB_FD, buf, num) };
    if r > 0 {
        unsafe { *written = r as usize };
        1
    } else {
        0
    }
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn SSL_do_handshake(ssl: *mut c_void) -> c_int {
    black_box(ssl);
    1
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn SSL_accept(ssl: *mut c_void) -> c_int {
    // As in OpenSSL, SSL_accept runs the handshake through SSL_do_handshake: a nested call.
    black_box(SSL_do_handshake(black_box(ssl)))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn SSL_get_error(ssl: *const c_void, ret: c_int) -> c_int {
    black_box((ssl, ret));
    if ret <= 0 { 2 } else { 0 } // SSL_ERROR_WANT_READ
}

#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn SSL_free(ssl: *mut c_void) {
    black_box(ssl);
}

const SSL_A: usize = 0x1000;
const SSL_B: usize = 0x2000;
const WANT_READS: usize = 25;

/// The target process. Does nothing unless run by `spawn_target`.
#[test]
#[ignore = "run as a child process by the other tests"]
fn stub_target_process() {
    let Ok(mode) = std::env::var("TLS_PROBE_STUB_TARGET") else {
        return;
    };
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    // SAFETY: single-threaded setup before any stub call.
    unsafe { STUB_FD = a.as_raw_fd() };
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    println!("READY {} {} {tid}", std::process::id(), a.as_raw_fd());
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();

    let mut buf = [0u8; 100];
    let ssl = SSL_A as *mut c_void;
    match mode.as_str() {
        "sequence" => {
            for _ in 0..WANT_READS {
                let r = unsafe { SSL_read(ssl, buf.as_mut_ptr().cast(), 100) };
                SSL_get_error(ssl, r);
            }
            let mut n = 0usize;
            unsafe { SSL_write_ex(ssl, buf.as_ptr().cast(), 50, &mut n) };
            assert_eq!(n, 50);
            unsafe { SSL_read_ex(ssl, buf.as_mut_ptr().cast(), 64, &mut n) };
            SSL_accept(SSL_B as *mut c_void);
            SSL_free(ssl);
        }
        "flood" => {
            let n: usize = std::env::var("TLS_PROBE_STUB_CALLS")
                .unwrap()
                .parse()
                .unwrap();
            let mut out = 0usize;
            for _ in 0..n {
                unsafe { SSL_read_ex(ssl, buf.as_mut_ptr().cast(), 64, &mut out) };
            }
        }
        "loop" => {
            // Calls until told to stop (a second line on stdin) or for 60 s.
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = stop.clone();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut out = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < deadline
            {
                unsafe { SSL_read_ex(ssl, buf.as_mut_ptr().cast(), 64, &mut out) };
            }
        }
        other => panic!("unknown mode {other}"),
    }
    println!("DONE");
}

/// Starts this binary as a stub target; returns it with its socket fd and calling tid.
fn spawn_target(mode: &str, extra_env: &[(&str, &str)]) -> (Proc, i32, u32) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        // Its path in the test binary (tests/stubs/main.rs declares this module).
        "stub_probes::stub_target_process",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("TLS_PROBE_STUB_TARGET", mode);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut p = Proc::spawn(&mut cmd);
    // libtest prints "test stub_target_process ... " first, without a newline.
    let (pid, fd, tid) = p.read_until("READY", |l| {
        let mut it = l.split_once("READY ")?.1.split(' ');
        Some((
            it.next()?.parse::<u32>().ok()?,
            it.next()?.parse::<i32>().ok()?,
            it.next()?.parse::<u32>().ok()?,
        ))
    });
    assert_eq!(pid, p.pid());
    (p, fd, tid)
}

#[test]
fn every_call_is_one_event_with_exact_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (mut target, fd, tid) = spawn_target("sequence", &[]);
    let exe = format!("/proc/{}/exe", target.pid());
    let probe = Attached::start(dir.path(), target.pid(), &["--libssl", &exe]);
    target.send_line("go");
    target.read_until("DONE", |l| l.contains("DONE").then_some(()));
    target.close_stdin();
    assert!(
        target
            .wait_exit("the target", Duration::from_secs(10))
            .success()
    );
    let records = probe.finish(Duration::from_secs(20));

    let reads = events(&records, "SSL_read");
    assert_eq!(reads.len(), WANT_READS, "SSL_read events");
    for r in &reads {
        assert_eq!(r["ssl"], SSL_A);
        assert_eq!(r["len"], 100);
        assert_eq!(r["ret"], -1);
        assert_eq!(r["bytes"], 0);
        assert_eq!(r["fd"], fd, "fd from the read() inside the call: {r}");
        assert_eq!(r["fd_seen"], true);
        assert_eq!(r["sys_last"], "read");
        assert_eq!(r["sys_last_ret"], -libc::EAGAIN);
        assert_eq!(r["pid"], target.pid());
        assert_eq!(r["tid"], tid);
        assert!(r["duration_ns"].as_u64().unwrap() > 0);
    }
    let errors = events(&records, "SSL_get_error");
    assert_eq!(errors.len(), WANT_READS);
    assert!(
        errors
            .iter()
            .all(|e| e["code"] == "want_read" && e["ret_arg"] == -1 && e["ssl"] == SSL_A)
    );

    let writes = events(&records, "SSL_write_ex");
    assert_eq!(writes.len(), 1);
    assert_eq!(
        (writes[0]["ret"].as_i64(), writes[0]["bytes"].as_u64()),
        (Some(1), Some(50))
    );
    assert_eq!(writes[0]["fd"], fd);
    assert_eq!(writes[0]["sys_last"], "write");

    let read_ex = events(&records, "SSL_read_ex");
    assert_eq!(read_ex.len(), 1);
    assert_eq!(
        read_ex[0]["fd"], fd,
        "fd remembered for the SSL*: {}",
        read_ex[0]
    );
    assert_eq!(read_ex[0]["fd_seen"], false);
    assert_eq!(read_ex[0]["sys_last_ret"], serde_json::Value::Null);

    // SSL_accept calls SSL_do_handshake inside: one event, for the call the app made.
    let accepts = events(&records, "SSL_accept");
    assert_eq!(accepts.len(), 1);
    assert_eq!(accepts[0]["ssl"], SSL_B);
    assert_eq!(accepts[0]["ret"], 1);
    assert!(events(&records, "SSL_do_handshake").is_empty());

    let frees = events(&records, "SSL_free");
    assert_eq!(frees.len(), 1);
    assert_eq!(frees[0]["ssl"], SSL_A);

    let s = summary(&records);
    assert_eq!(s["events_by_probe"]["SSL_read"], WANT_READS);
    assert_eq!(s["events_by_probe"]["SSL_get_error"], WANT_READS);
    assert_eq!(s["lost"]["ringbuf"], 0);
    assert_eq!(s["lost"]["decode"], 0);
    assert_eq!(s["stop_reason"], "targets_exited");
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "target_exit" && r["data"]["pid"] == target.pid())
    );
}

/// When the reader cannot keep up, every event is either delivered or counted as lost.
#[test]
fn lost_events_are_counted_exactly() {
    use tls_probe::{
        decode::decode,
        event::EventKind,
        probe::{Probes, library_at},
    };

    // 8 MiB of ring buffer holds ~75k call records; make more while nobody reads.
    const CALLS: u64 = 100_000;
    let calls = CALLS.to_string();
    let (mut target, _fd, _tid) = spawn_target("flood", &[("TLS_PROBE_STUB_CALLS", &calls)]);
    let exe = format!("/proc/{}/exe", target.pid());
    let lib = library_at(std::path::Path::new(&exe), &exe).unwrap();
    let mut probes = Probes::load(true).unwrap();
    let mut ring = probes.take_events().unwrap();
    probes.attach(target.pid(), lib, true).unwrap();
    target.send_line("go");
    target.read_until("DONE", |l| l.contains("DONE").then_some(()));

    let mut delivered = 0u64;
    while let Some(item) = ring.next() {
        if let Ok(ev) = decode(&item)
            && matches!(ev.kind, EventKind::SslCall(_))
            && ev.pid == target.pid()
        {
            delivered += 1;
        }
    }
    let lost = probes.counters().unwrap().lost_by_kind[tls_probe_common::Kind::SslCall as usize];
    assert!(
        lost > 0,
        "expected the ring buffer to overflow; delivered {delivered}"
    );
    assert_eq!(
        delivered + lost,
        CALLS,
        "delivered {delivered} + lost {lost}"
    );
}

/// Hot-path probes can be switched off and on while attached, without reloading.
#[test]
fn hot_probes_switch_off_and_on() {
    use tls_probe::{
        decode::decode,
        event::EventKind,
        probe::{Probes, library_at},
    };

    const CALLS: u64 = 200;
    let calls = CALLS.to_string();
    let count = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>, pid: u32| {
        let mut n = 0u64;
        while let Some(item) = ring.next() {
            if let Ok(ev) = decode(&item)
                && matches!(ev.kind, EventKind::SslCall(_))
                && ev.pid == pid
            {
                n += 1;
            }
        }
        n
    };
    let mut probes = Probes::load(true).unwrap();
    let mut ring = probes.take_events().unwrap();
    for hot in [false, true] {
        let (mut target, _fd, _tid) = spawn_target("flood", &[("TLS_PROBE_STUB_CALLS", &calls)]);
        let pid = target.pid();
        let exe = format!("/proc/{pid}/exe");
        probes
            .attach(
                pid,
                library_at(std::path::Path::new(&exe), &exe).unwrap(),
                true,
            )
            .unwrap();
        probes.set_hot(pid, hot).unwrap();
        assert_eq!(probes.is_hot(pid), hot);
        target.send_line("go");
        target.read_until("DONE", |l| l.contains("DONE").then_some(()));
        assert_eq!(
            count(&mut ring, pid),
            if hot { CALLS } else { 0 },
            "hot={hot}"
        );
        probes.detach(pid);
    }
}

/// Switching the per-call probes off stops their traps at once, not after the kernel has
/// unregistered one link after another (~100 ms each): counted by the kernel's own hit
/// counter, the window [200 ms, 400 ms] after the switch-off has (almost) no hit left.
#[test]
fn per_call_traps_stop_soon_after_switch_off() {
    use std::time::Instant;

    use tls_probe::probe::{Probes, library_at};

    let (mut target, _fd, _tid) = spawn_target("loop", &[]);
    let pid = target.pid();
    let exe = format!("/proc/{pid}/exe");
    let mut probes = Probes::load(true).unwrap();
    let _ring = probes.take_events().unwrap();
    probes
        .attach(
            pid,
            library_at(std::path::Path::new(&exe), &exe).unwrap(),
            true,
        )
        .unwrap();
    let hits = |p: &Probes| p.counters().unwrap().uprobe_hits;
    target.send_line("go");
    // Hits flowing: at least 2,000 (1,000 calls, entry and return).
    let deadline = Instant::now() + Duration::from_secs(20);
    let start = hits(&probes);
    while hits(&probes) < start + 2_000 {
        assert!(
            Instant::now() < deadline,
            "the stub loop made no probed calls"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    let h0 = hits(&probes);
    std::thread::sleep(Duration::from_millis(200));
    let on_per_200ms = hits(&probes) - h0;
    let attached_for = t0.elapsed();

    probes.set_hot(pid, false).unwrap();
    let off = Instant::now();
    // Sample until 400 ms after the switch-off; note when the counter last moved.
    let mut samples = vec![(Duration::ZERO, hits(&probes))];
    while off.elapsed() < Duration::from_millis(400) {
        std::thread::sleep(Duration::from_millis(5));
        samples.push((off.elapsed(), hits(&probes)));
    }
    let at = |ms: u64| {
        samples
            .iter()
            .find(|(t, _)| *t >= Duration::from_millis(ms))
            .map_or(samples.last().unwrap().1, |s| s.1)
    };
    let last_moved = samples
        .windows(2)
        .rfind(|w| w[1].1 > w[0].1)
        .map(|w| w[1].0)
        .unwrap_or_default();
    eprintln!(
        "per-call probes on: {on_per_200ms} hits in {attached_for:?}; after switch-off: last hit \
         counted by {last_moved:?}, {} hits in [0, 200 ms], {} in [200, 400 ms]",
        at(200) - samples[0].1,
        at(400) - at(200),
    );
    assert!(on_per_200ms > 1_000, "only {on_per_200ms} hits while on");
    assert!(
        at(400) - at(200) <= on_per_200ms / 100,
        "still trapping 200-400 ms after the switch-off: {} hits (vs {on_per_200ms} per 200 ms \
         while on); samples {samples:?}",
        at(400) - at(200)
    );
    target.send_line("stop");
    probes.wait_detached();
    probes.detach(pid);
}
