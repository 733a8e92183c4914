//! The Prometheus endpoint on a live run: scraped over HTTP on loopback while tls-probe
//! watches the spin-loop scenario, and parsed as the Prometheus text format. Privileged: run
//! with `--test-threads=1`.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use common::{Proc, TLS_PROBE, free_port, scenarios, wait_for};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use prometheus_parse::{Sample, Scrape, Value};

use crate::common;

/// `GET /metrics`; None while nothing listens yet.
fn scrape(port: u16) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    Some((head.to_owned(), body.to_owned()))
}

fn parse(body: &str) -> Scrape {
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("a valid exposition")
}

fn value(s: &Sample) -> f64 {
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("unexpected sample type: {s:?}"),
    }
}

/// The sum of the samples of `metric` whose labels include all of `labels`.
fn sum(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .map(value)
        .sum()
}

#[test]
fn metrics_endpoint_serves_the_engine_counters() {
    let mut target = Proc::spawn(Command::new(scenarios()).args([
        "spin-loop",
        "--wait-stdin",
        "--duration",
        "30",
    ]));
    let pid = target.read_until("READY", |l| {
        let v: serde_json::Value = serde_json::from_str(l.strip_prefix("READY ")?).ok()?;
        v["pid"].as_u64()
    });
    let port = free_port();
    let mut probe = Proc::spawn(
        Command::new(TLS_PROBE)
            .args([
                "attach",
                "--mode",
                "full",
                "--pid",
                &pid.to_string(),
                "--metrics-addr",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .stderr(Stdio::inherit()),
    );
    // The endpoint is up before the probes are attached; wait for the attach itself (the
    // target's comm appears in the labels once the first snapshot is published).
    let pid_s = pid.to_string();
    let label = format!("pid=\"{pid}\"");
    wait_for(
        "the endpoint to show the attached target",
        Duration::from_secs(60),
        || scrape(port).filter(|(_, body)| body.contains(&label)),
    );
    target.send_line("go");

    // The spin is flagged within a second of "go"; the per-thread CPU share needs two
    // /proc samples, a tick apart: wait for both.
    let (head, body) = wait_for(
        "an opened spin_loop finding and thread CPU shares in the metrics",
        Duration::from_secs(30),
        || {
            if let Some(status) = probe.child.try_wait().unwrap() {
                panic!("tls-probe exited early: {status}");
            }
            let (head, body) = scrape(port)?;
            let s = parse(&body);
            let opened = sum(
                &s,
                "tls_probe_findings_opened_total",
                &[("pid", &pid_s), ("kind", "spin_loop")],
            );
            let cpu = s.samples.iter().any(|x| {
                x.metric == "tls_probe_thread_cpu_ratio" && x.labels.get("pid") == Some(&pid_s)
            });
            (opened >= 1.0 && cpu).then_some((head, body))
        },
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let s = parse(&body);
    let p = [("pid", pid_s.as_str())];
    assert!(sum(&s, "tls_probe_ssl_calls_total", &p) > 0.0, "{body}");
    assert!(
        sum(
            &s,
            "tls_probe_ssl_call_results_total",
            &[("pid", &pid_s), ("result", "want_read")]
        ) > 0.0,
        "the spin loop's reads answer WANT_READ: {body}"
    );
    assert!(
        sum(
            &s,
            "tls_probe_wakeups_total",
            &[("pid", &pid_s), ("progress", "false")]
        ) > 100.0,
        "wake-ups without progress: {body}"
    );
    assert!(
        sum(
            &s,
            "tls_probe_findings_active",
            &[("pid", &pid_s), ("kind", "spin_loop")]
        ) >= 1.0
    );
    assert!(
        s.samples.iter().any(
            |x| x.metric == "tls_probe_thread_cpu_ratio" && x.labels.get("pid") == Some(&pid_s)
        ),
        "per-thread CPU shares: {body}"
    );
    for stage in ["ringbuf", "inflight", "decode"] {
        assert!(
            s.samples
                .iter()
                .any(|x| x.metric == "tls_probe_lost_events_total"
                    && x.labels.get("stage") == Some(stage)),
            "{body}"
        );
    }
    // Labels: pid and comm on every per-process series, and nothing per connection.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    let mut names = BTreeSet::new();
    for x in &s.samples {
        names.extend(x.labels.keys().cloned());
        if x.labels.get("pid").is_some() {
            assert_eq!(x.labels.get("comm"), Some(comm.trim()), "{x:?}");
        }
    }
    let allowed = [
        "pid",
        "comm",
        "op",
        "result",
        "direction",
        "kind",
        "progress",
        "tid",
        "stage",
    ];
    assert!(
        names.iter().all(|n| allowed.contains(&n.as_str())),
        "bounded labels only: {names:?}"
    );

    kill(Pid::from_raw(probe.pid() as i32), Signal::SIGINT).unwrap();
    let status = probe.wait_exit("tls-probe to stop", Duration::from_secs(30));
    assert!(status.success(), "{status}");
}
