//! Call sites: a finding names the application function that makes the bad call.
//!
//! A C client (tests/peers/callsite_client.c) built here with `-O2 -fomit-frame-pointer`
//! (no frame pointers: the unwind must come from `.eh_frame`) makes a bad write retry from
//! `resend_after_want_write` and spins in `pump_connection` (SSL_read answering WANT_READ
//! while EPOLLOUT stays armed), under `tls-probe attach` in the default mode. Each finding
//! must name that function as its caller:
//! - built with `-g`: function, offset, and the file:line of the call;
//! - stripped: no name at all ("no symbols"), never a wrong one;
//! - stripped but built with `-rdynamic`: the name from `.dynsym`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use common::{Attached, Proc, wait_for};
use scenario_common::{attach_mode, build_c_peer, describe, records_so_far};
use serde_json::Value;

use crate::{common, common::scenario as scenario_common, schema};

const EXIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Build {
    /// `-g`, not stripped.
    Debug,
    /// No `-g`, stripped.
    Stripped,
    /// `-rdynamic`, stripped: the functions are in `.dynsym`.
    StrippedDynamic,
}

fn build(dir: &Path, how: Build) -> PathBuf {
    let mut flags = vec!["-O2", "-fomit-frame-pointer"];
    match how {
        Build::Debug => flags.push("-g"),
        Build::Stripped => {}
        Build::StrippedDynamic => flags.push("-rdynamic"),
    }
    let exe = build_c_peer(dir, "callsite_client", &flags);
    if how != Build::Debug {
        let out = Command::new("strip")
            .arg(&exe)
            .output()
            .unwrap_or_else(|e| panic!("running strip (binutils, with gcc): {e}"));
        assert!(out.status.success(), "strip failed: {out:?}");
    }
    exe
}

/// The line of the source that carries `marker`.
fn line_of(marker: &str) -> u64 {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/callsite_client.c");
    let text = std::fs::read_to_string(&src).expect("reading callsite_client.c");
    text.lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no {marker} in {}", src.display())) as u64
        + 1
}

/// The newest record of a `kind` finding that carries call sites.
fn with_call_sites(records: &[Value], kind: &str) -> Option<Value> {
    records
        .iter()
        .rev()
        .filter_map(|r| match r["type"].as_str() {
            Some("finding") => Some(vec![&r["data"]["finding"]]),
            Some("summary") => r["data"]["findings"].as_array().map(|a| a.iter().collect()),
            _ => None,
        })
        .flatten()
        .find(|f| f["kind"] == kind && !f["call_sites"].is_null())
        .cloned()
}

/// Checks the top call site of `f`: the call, and the caller as `how` can name it.
fn check_site(f: &Value, call: &str, function: &str, marker: &str, exe: &Path, how: Build) {
    let cs = &f["call_sites"];
    let site = &cs["sites"][0];
    let caller = &site["caller"];
    eprintln!(
        "{} ({how:?}): {} samples; top site {} from {} ({}%)",
        f["kind"], cs["samples"], site["call"], caller, site["share_pct"]
    );
    assert_eq!(site["call"], call, "the call of {f:#}");
    assert_eq!(
        caller["object"],
        exe.display().to_string(),
        "the caller is in the program: {f:#}"
    );
    match how {
        Build::Debug => {
            assert_eq!(caller["function"], function, "{f:#}");
            assert!(caller["offset"].as_u64().is_some(), "{f:#}");
            assert_eq!(caller["symbols"], "debug_info", "{f:#}");
            let file = caller["file"].as_str().unwrap_or_default();
            assert!(file.ends_with("callsite_client.c"), "file of {caller:#}");
            assert_eq!(caller["line"].as_u64(), Some(line_of(marker)), "{caller:#}");
        }
        Build::Stripped => {
            // Static code of a stripped file: no symbol covers it, and none is guessed.
            assert!(
                caller["function"].is_null(),
                "a name from nowhere: {caller:#}"
            );
            assert_eq!(caller["symbols"], "none", "{caller:#}");
        }
        Build::StrippedDynamic => {
            assert_eq!(caller["function"], function, "{f:#}");
            assert_eq!(caller["symbols"], "dynsym", "{caller:#}");
            assert!(caller["file"].is_null(), "{caller:#}");
        }
    }
    // Never a wrong name anywhere in the stack: every named frame of the program is one of
    // its functions.
    for fr in site["stack"].as_array().expect("stack") {
        if fr["object"] == exe.display().to_string()
            && let Some(name) = fr["function"].as_str()
        {
            assert!(
                [
                    "pump_connection",
                    "spin",
                    "resend_after_want_write",
                    "retry",
                    "main",
                    "_start"
                ]
                .contains(&name),
                "a frame named {name}, not a function of the program: {f:#}"
            );
        }
    }
}

fn run(how: Build) {
    run_in(how, "auto", true);
}

/// `mode`: tls-probe's; `spin`: also the spin (else only the bad write retry, after which
/// the client quits at once).
fn run_in(how: Build, mode: &str, spin: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = build(dir.path(), how);
    let port = scenario_common::silent_server(dir.path());
    let mut client = Proc::spawn(Command::new(&exe).arg(port.to_string()));
    client.read_until("READY", |l| (l == "READY").then_some(()));
    let a: Attached = attach_mode(dir.path(), client.pid(), mode);

    // The bad write retry: one, flagged from the OpenSSL error, whose stack is taken then.
    client.send_line("retry");
    client.read_until("RETRY", |l| (l == "RETRY 127").then_some(()));
    if !spin {
        // Gone before the agent may have read the stack: it unwinds it from the mappings
        // it noted at attach.
        client.send_line("quit");
        let status = client.wait_exit("callsite_client to exit", EXIT);
        assert!(status.success(), "callsite_client failed: {status}");
    }
    let retry = wait_for(
        "a bad_write_retry finding with call sites",
        Duration::from_secs(15),
        || with_call_sites(&records_so_far(&a), "bad_write_retry"),
    );
    check_site(
        &retry,
        "SSL_write",
        "resend_after_want_write",
        "RETRY CALL",
        &exe,
        how,
    );

    if !spin {
        let records = a.finish(EXIT);
        for (i, r) in records.iter().enumerate() {
            schema::check_line(i + 1, &r.to_string());
        }
        return;
    }
    // The spin: found in a window of per-call probes, then sampled.
    client.send_line("spin");
    let spin = wait_for(
        "a spin_loop finding with call sites",
        Duration::from_secs(30),
        || with_call_sites(&records_so_far(&a), "spin_loop"),
    );
    client.send_line("quit");
    client.read_until("SPUN", |l| l.starts_with("SPUN").then_some(()));
    let status = client.wait_exit("callsite_client to exit", EXIT);
    assert!(status.success(), "callsite_client failed: {status}");
    check_site(&spin, "SSL_read", "pump_connection", "SPIN CALL", &exe, how);
    // pump_connection's read buffer is on its stack: the copy stops there, so nothing
    // above pump_connection (spin, main) is in the stack.
    let stack = spin["call_sites"]["sites"][0]["stack"]
        .as_array()
        .expect("stack");
    assert!(
        stack.last().map(|fr| &fr["function"]) == Some(&Value::from("pump_connection"))
            || (how == Build::Stripped
                && stack.last().map(|fr| &fr["object"])
                    == Some(&Value::from(exe.display().to_string()))),
        "the stack ends at the caller that holds the buffer: {spin:#}"
    );
    let share = spin["call_sites"]["sites"][0]["share_pct"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        share >= 50.0,
        "the spin's calls come from one place: {spin:#}"
    );

    let records = a.finish(EXIT);
    for (i, r) in records.iter().enumerate() {
        schema::check_line(i + 1, &r.to_string());
    }
    // The summary keeps them.
    assert!(
        with_call_sites(&records[records.len() - 1..], "spin_loop").is_some(),
        "the summary's spin_loop has no call sites; findings:\n{}",
        describe(&records)
    );
}

#[test]
fn debug_build_names_function_and_line() {
    run(Build::Debug);
}

/// In full mode the error is raised inside an SSL_write whose return probe has replaced its
/// return address with the uprobe trampoline's: the unwind uses the address read at the
/// call's entry. The client quits right after, before the agent reads the stack.
#[test]
fn full_mode_unwinds_past_the_return_probe_of_a_client_that_quit() {
    run_in(Build::Debug, "full", false);
}

#[test]
fn stripped_build_names_nothing_rather_than_a_wrong_function() {
    run(Build::Stripped);
}

#[test]
fn stripped_build_with_dynsym_names_the_function() {
    run(Build::StrippedDynamic);
}

/// Real nginx (Debian's build: stripped, but it exports its functions in `.dynsym` for its
/// dynamic modules), one worker saturated by full handshakes under `--mode light`: the
/// handshake_saturation finding names `ngx_ssl_handshake` as the caller of
/// `SSL_do_handshake`, with the dynsym name and no file:line (there is no debug info).
#[test]
fn nginx_handshake_saturation_names_ngx_ssl_handshake() {
    const FLOOD_SECS: u32 = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let nginx = scenario_common::Nginx::start_with(
        dir.path(),
        scenario_common::NginxConf {
            workers: Some(1),
            server_extra: "ssl_session_cache off;\nssl_session_tickets off;",
            rsa_bits: Some(4096),
            ..scenario_common::NginxConf::default()
        },
    );
    let worker = *nginx.workers(1).first().expect("one worker");
    let probe = Attached::start(
        dir.path(),
        nginx.master(),
        &[
            "--mode",
            "light",
            "--duration",
            &(FLOOD_SECS + 3).to_string(),
        ],
    );
    let connect = format!("127.0.0.1:{}", nginx.port);
    let time = FLOOD_SECS.to_string();
    let clients: Vec<std::process::Child> = (0..3)
        .map(|_| {
            Command::new("openssl")
                .args([
                    "s_time", "-connect", &connect, "-time", &time, "-www", "/", "-new",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("running openssl s_time")
        })
        .collect();
    for mut c in clients {
        c.wait().expect("waiting for s_time");
    }
    let records = probe.finish(Duration::from_secs(60));
    for (i, r) in records.iter().enumerate() {
        schema::check_line(i + 1, &r.to_string());
    }
    let sat = with_call_sites(&records, "handshake_saturation").unwrap_or_else(|| {
        panic!(
            "no handshake_saturation with call sites on worker {worker}:\n{}",
            describe(&records)
        )
    });
    assert_eq!(sat["tid"], worker, "{sat:#}");
    let site = &sat["call_sites"]["sites"][0];
    eprintln!(
        "nginx: {} samples; top site {} from {} ({}%)",
        sat["call_sites"]["samples"], site["call"], site["caller"], site["share_pct"]
    );
    assert_eq!(site["call"], "SSL_do_handshake", "{sat:#}");
    let caller = &site["caller"];
    assert_eq!(caller["function"], "ngx_ssl_handshake", "{sat:#}");
    assert_eq!(caller["symbols"], "dynsym", "{caller:#}");
    assert!(
        caller["object"]
            .as_str()
            .is_some_and(|o| o.ends_with("/nginx")),
        "{caller:#}"
    );
}
