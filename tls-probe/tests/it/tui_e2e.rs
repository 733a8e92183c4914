//! The dashboard on a real terminal: tls-probe runs in a tmux pane of a fixed size, the
//! test reads the screen with `capture-pane` and types with `send-keys`. Privileged (it
//! attaches real probes): run with `--test-threads=1`. Needs tmux (`cargo xtask setup`).
//!
//! Each test runs tls-probe inside `sh -c '...; echo SHELL-EXIT $?; <terminal mode>; sleep'`,
//! so that after `q` the pane shows the exit code, the normal screen and whether the
//! terminal is back in cooked mode.

use std::{
    path::Path,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use common::{Proc, TLS_PROBE, cert, read_ndjson, scenarios, summary};
use serde_json::Value;
use tls_probe_scenario_spec::report;

use crate::common;

/// A tmux server of our own (its own socket), killed on drop, also when a test fails.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `command` (a shell command line) in a detached session of `w`x`h`.
    fn start(command: &str, w: u16, h: u16) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!(
            "tls-probe-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let me = Self { socket };
        let out = me.tmux(&[
            "new-session",
            "-d",
            "-s",
            "e2e",
            "-x",
            &w.to_string(),
            "-y",
            &h.to_string(),
            command,
        ]);
        assert!(out.status.success(), "tmux new-session: {out:?}");
        me
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(["-f", "/dev/null"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running tmux (install it: apt-get install tmux): {e}"))
    }

    /// The visible screen as text; with `escapes`, with its colours and attributes.
    fn screen_with(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", "e2e"];
        if escapes {
            args.push("-e");
        }
        String::from_utf8_lossy(&self.tmux(&args).stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.screen_with(false)
    }

    /// A pane format variable, e.g. `alternate_on`.
    fn var(&self, name: &str) -> String {
        let out = self.tmux(&[
            "display-message",
            "-p",
            "-t",
            "e2e",
            &format!("#{{{name}}}"),
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn keys(&self, keys: &str) {
        let out = self.tmux(&["send-keys", "-t", "e2e", keys]);
        assert!(out.status.success(), "tmux send-keys {keys}: {out:?}");
    }

    fn resize(&self, w: u16, h: u16) {
        let (w, h) = (w.to_string(), h.to_string());
        let out = self.tmux(&["resize-window", "-t", "e2e", "-x", &w, "-y", &h]);
        assert!(out.status.success(), "tmux resize-window: {out:?}");
    }

    /// Waits until the screen satisfies `ok`; panics with the last screen after `timeout`.
    fn wait(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; the screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// `tls-probe ARGS` in a shell that then reports how it exited and the terminal's mode.
fn wrapped(args: &str) -> String {
    format!(
        "sh -c 'TLS_PROBE_SCENARIOS={} {TLS_PROBE} {args}; echo SHELL-EXIT $?; \
         case $(stty -a) in *-icanon*) echo TTY RAW;; *) echo TTY COOKED;; esac; sleep 120'",
        scenarios().display()
    )
}

const ATTACH: Duration = Duration::from_secs(60);
const EXIT: Duration = Duration::from_secs(30);

fn is_spin_finding(s: &str) -> bool {
    s.contains("spin loop") && s.contains("EPOLLOUT")
}

/// After `q`: the exit code, the normal screen, cooked mode, the cursor shown.
fn assert_restored(tmux: &Tmux) -> String {
    // The shell prints the exit code, then the terminal mode: wait for both lines.
    let screen = tmux.wait("tls-probe to exit after q", EXIT, |s| {
        s.contains("SHELL-EXIT") && s.contains("TTY ")
    });
    assert!(screen.contains("SHELL-EXIT 0"), "{screen}");
    assert!(screen.contains("TTY COOKED"), "raw mode left on:\n{screen}");
    assert_eq!(
        tmux.var("alternate_on"),
        "0",
        "still on the alternate screen"
    );
    assert_eq!(tmux.var("cursor_flag"), "1", "the cursor is still hidden");
    assert!(
        !screen.contains("? help"),
        "the dashboard is still shown:\n{screen}"
    );
    screen
}

#[test]
fn demo_dashboard_shows_the_spin_loop_then_q_restores_the_terminal() {
    let tmux = Tmux::start(&wrapped("demo spin-loop --duration 20"), 120, 40);
    let screen = tmux.wait("the spin_loop finding and the rates", ATTACH, |s| {
        is_spin_finding(s) && s.contains("of target CPU")
    });
    assert_eq!(tmux.var("alternate_on"), "1", "{screen}");
    // The default mode: the spinning process was escalated to the per-call probes, which
    // confirmed the spin (its window ends as soon as it has).
    assert!(screen.contains("mode auto (per-call "), "{screen}");
    assert!(!screen.contains("events 0/s"), "{screen}");
    // An escalated process needs the fds of its SSL calls: the socket I/O tracepoints are
    // on, and stay on for 2 s after the window.
    assert!(screen.contains("socket I/O on"), "{screen}");
    // Then the finding stays on screen with the per-call probes off: the kernel's
    // aggregated waits keep it going, and the spinning process is not slowed by traps.
    tmux.wait(
        "the spin_loop finding with the per-call probes off",
        EXIT,
        |s| is_spin_finding(s) && s.contains("mode auto (per-call off)"),
    );

    tmux.keys("?");
    tmux.wait("the help", EXIT, |s| {
        s.contains("Keys") && s.contains("this help")
    });
    tmux.keys("q");
    let screen = assert_restored(&tmux);
    // What the dashboard held is on the normal screen once it closes.
    assert!(
        screen.contains("tls-probe demo: recap") && screen.contains("spin_loop on client"),
        "{screen}"
    );
    assert!(screen.contains("stopped early"), "{screen}");
}

/// `attach -o FILE` with the dashboard: the file gets the same findings and a summary; the
/// dashboard follows resizes and honours NO_COLOR.
#[test]
fn attach_dashboard_and_file_get_the_same_findings() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("attach.ndjson");
    let mut scenario = Proc::spawn(Command::new(scenarios()).args([
        "spin-loop",
        "--wait-stdin",
        "--duration",
        "60",
    ]));
    let ready = scenario.read_until("READY", report::parse_ready);
    let args = format!("attach --pid {} -o {}", ready.pid, output.display());
    let tmux = Tmux::start(&format!("env NO_COLOR=1 {}", wrapped(&args)), 120, 40);
    tmux.wait("the dashboard to show the target", ATTACH, |s| {
        s.contains(&format!("pid {}", ready.pid)) && s.contains("? help")
    });
    scenario.send_line("go");
    tmux.wait("the spin_loop finding", ATTACH, is_spin_finding);

    let coloured = tmux.screen_with(true);
    assert!(!has_colour(&coloured), "NO_COLOR is set: {coloured:?}");

    tmux.resize(80, 24);
    let small = tmux.wait("the dashboard at 80x24", EXIT, |s| {
        is_spin_finding(s) && s.lines().count() <= 24 && s.contains("? help")
    });
    assert!(
        small.lines().all(|l| l.chars().count() <= 80),
        "a line wider than the pane:\n{small}"
    );

    tmux.keys("q");
    let screen = assert_restored(&tmux);
    assert!(
        screen.contains(" spin_loop pid="),
        "the findings are left on the normal screen:\n{screen}"
    );
    check_file(&output, "signal");
}

/// The workload ends while the dashboard is open: the export is complete at once, and the
/// findings stay on screen until the user quits.
#[test]
fn after_every_target_exits_the_findings_stay_until_q() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("demo.ndjson");
    let args = format!("demo spin-loop --duration 3 -o {}", output.display());
    let tmux = Tmux::start(&wrapped(&args), 120, 40);
    let screen = tmux.wait("the dashboard to say the target exited", ATTACH, |s| {
        s.contains("every target exited") && s.contains(" EXITED")
    });
    assert!(is_spin_finding(&screen), "{screen}");
    let deadline = Instant::now() + EXIT;
    while !std::fs::read_to_string(&output).is_ok_and(|t| t.contains("\"type\":\"summary\"")) {
        assert!(Instant::now() < deadline, "no summary in the export yet");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        tmux.var("alternate_on"),
        "1",
        "the dashboard closed by itself"
    );

    tmux.keys("q");
    let screen = assert_restored(&tmux);
    assert!(screen.contains("the workload finished"), "{screen}");
    check_file(&output, "targets_exited");
}

/// The local port of the connection to 127.0.0.1:`port` (the client's end), from
/// /proc/net/tcp.
fn client_port(port: u16) -> u16 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("reading /proc/net/tcp");
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Established (01), to the server.
            (f.len() > 3 && f[2] == remote && f[3] == "01").then(|| f[1])
        })
        .find_map(|local| u16::from_str_radix(local.rsplit(':').next()?, 16).ok())
        .unwrap_or_else(|| panic!("no connection to port {port} in:\n{table}"))
}

/// A connection accepted and used before tls-probe attached (a Python `ssl` echo server,
/// `openssl s_client` as its client): the dashboard shows its peer (read from /proc at
/// attach) and `established` (it moves data), not `-` and `handshake`.
#[test]
fn connections_made_before_attach_show_their_peer_and_established() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, crt) = cert(dir.path());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/echo_server.py");
    let mut server = Proc::spawn(Command::new("python3").arg(script).arg(&crt).arg(&key));
    let port: u16 = server.read_until("READY", |l| l.strip_prefix("READY ")?.parse().ok());
    let mut client = Proc::spawn(
        Command::new("openssl")
            .args(["s_client", "-quiet", "-connect"])
            .arg(format!("127.0.0.1:{port}"))
            .stderr(std::process::Stdio::null()),
    );
    // The handshake and a first line before attach, echoed back.
    client.send_line("before attach");
    client.read_until("the echo", |l| l.contains("before attach").then_some(()));
    let peer = format!("127.0.0.1:{}", client_port(port));
    let args = format!("attach --pid {} --mode full", server.pid());
    let tmux = Tmux::start(&format!("env NO_COLOR=1 {}", wrapped(&args)), 120, 36);
    tmux.wait("the dashboard to show the target", ATTACH, |s| {
        s.contains(&format!("pid {}", server.pid())) && s.contains("? help")
    });
    // Traffic after attach, until the connection's row shows.
    let deadline = Instant::now() + ATTACH;
    let row = loop {
        client.send_line("after attach");
        let screen = tmux.screen();
        if let Some(row) = screen
            .lines()
            .find(|l| l.contains(&peer) && l.contains("established"))
        {
            break row.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no row with peer {peer} and established; the screen:\n{screen}"
        );
        thread::sleep(Duration::from_millis(300));
    };
    assert!(!row.contains("handshake"), "{row}");
    tmux.keys("q");
    assert_restored(&tmux);
}

fn check_file(output: &Path, stop_reason: &str) {
    let records = read_ndjson(output);
    assert_eq!(summary(&records)["stop_reason"], stop_reason);
    let spin = |r: &&Value| r["type"] == "finding" && r["data"]["finding"]["kind"] == "spin_loop";
    assert!(
        records.iter().any(|r| spin(&r)),
        "no spin_loop finding in the file"
    );
    let findings = summary(&records)["findings"].as_array().expect("findings");
    assert!(findings.iter().any(|f| f["kind"] == "spin_loop"));
}

/// Whether captured text sets a foreground or background colour (SGR 30-49, 90-107).
fn has_colour(text: &str) -> bool {
    text.split("\x1b[").skip(1).any(|seq| {
        let params = seq.split('m').next().unwrap_or("");
        params.split(';').any(|p| {
            p.parse::<u32>().is_ok_and(|n| {
                (30..=49).contains(&n) && n != 39 && n != 49 || (90..=107).contains(&n)
            })
        })
    })
}
