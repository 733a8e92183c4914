//! `tls-probe demo`: run a scenario workload (the separate `tls-probe-scenarios` program)
//! as a child process, attach to it, then let it start, so that the pathology begins with
//! the probes already in place; say what to expect first and what was found at the end.
//! On a terminal the findings show on the live dashboard in between; the recap prints once
//! it closes. What to expect comes from the findings each scenario declares
//! (`tls_probe_scenario_spec::guide`), in the header and in the recap alike.

use std::{
    io::Write,
    process::ExitCode,
    sync::{Arc, OnceLock},
    time::Duration,
};

use anyhow::{Result, bail};
use tls_probe_scenario_spec::{
    ScenarioName,
    guide::{self, Part, Seen},
    report::{Done, Ready},
};
use tokio::sync::mpsc::WeakSender;

use crate::{
    agent::{StopReason, Summary},
    cli::DemoArgs,
    cmd::{
        attach,
        workload::{self, Process},
    },
    engine::Finding,
    tui::Msg,
};

/// Seconds of load when `--duration` is not given.
const DEFAULT_SECS: f64 = 20.0;
/// How long past the scenario's own end the session waits for it to exit.
const GRACE: Duration = Duration::from_secs(10);

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let name = match args.scenario.as_deref() {
        Some(s) => s.parse::<ScenarioName>()?,
        None => ScenarioName::Mixed,
    };
    let program = workload::locate()?;
    let mut output = args.output;
    let secs = *output.duration.get_or_insert(DEFAULT_SECS);
    let outputs = attach::open_outputs(&output)?;
    let parts = guide::parts(name);
    header(name, &parts, secs, outputs.dashboard);

    let mut child = Process::spawn(&program, name, secs)?;
    // While the dashboard is up, what would go to stderr goes to it.
    let dashboard: Arc<OnceLock<WeakSender<Msg>>> = Arc::default();
    let to_dashboard = Arc::clone(&dashboard);
    let ready = child.ready(move |done| {
        let text = format!(
            "the workload finished ({:.1} s of load)",
            done.elapsed_ms as f64 / 1000.0
        );
        match to_dashboard.get().and_then(WeakSender::upgrade) {
            Some(tx) => {
                let _ = tx.try_send(Msg::Notice(text));
            }
            // tls-probe notices the exit at its next tick, then detaches: say why it waits.
            None => eprintln!(
                "tls-probe demo: {text}; tls-probe notices at its next tick and detaches its \
                 probes (a few seconds)"
            ),
        }
    })?;
    threads(&ready);
    let mut cfg = attach::config(&output, vec![ready.pid]);
    cfg.duration = Some(Duration::from_secs_f64(secs) + GRACE);
    let summary = attach::run_session(cfg, outputs, |dash| {
        match dash {
            Some(dash) => {
                if let Some(tx) = dash.sender() {
                    let _ = dashboard.set(tx.downgrade());
                }
                dash.notice(format!(
                    "demo {name}: {secs} s of load starting now; q quits and prints the recap"
                ));
            }
            None => eprintln!(
                "tls-probe demo: probes in place; starting the load now (Ctrl-C stops early)"
            ),
        }
        child.release()
    })?;
    let (status, done) = child.finish(summary.stop_reason != StopReason::TargetsExited)?;
    recap(&parts, &ready, &summary, done.as_ref());
    // A workload killed by a signal (ours, or Ctrl-C reaching its process group too) was
    // stopped, not failed.
    if status.code().is_some_and(|c| c != 0) {
        bail!("the {name} scenario failed ({status}); its errors are above");
    }
    Ok(ExitCode::SUCCESS)
}

/// What runs and what to look for, before anything starts.
fn header(name: ScenarioName, parts: &[Part], secs: f64, dashboard: bool) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "tls-probe demo: {name} for {secs} s");
    if let [part] = parts {
        let _ = writeln!(err, "{}", wrap("  runs:    ", part.guide().runs));
        let _ = writeln!(err, "{}", wrap("  expect:  ", &part.expect()));
    } else {
        let _ = writeln!(err, "{}", wrap("  runs:    ", guide::guide(name).runs));
        for part in parts {
            let role = format!("{}-*", part.prefix.unwrap_or_default());
            let _ = writeln!(
                err,
                "{}",
                wrap(&format!("    {role:<10} "), part.guide().runs)
            );
            let _ = writeln!(
                err,
                "{}",
                wrap(&format!("    {:<10} expect: ", ""), &part.expect())
            );
        }
    }
    let how = if dashboard {
        "The dashboard opens once the probes are in place: findings on top, naming the \
         thread (tid) and connection (fd); ? lists the keys, q quits and prints the recap."
    } else {
        "Findings print below as they open (FINDING), change (update) and close (closed), \
         naming the thread (tid) and connection (fd, ssl)."
    };
    let _ = writeln!(err, "{}", wrap("", how));
}

/// `text` after `lead`, wrapped at 100 columns with following lines indented to match.
fn wrap(lead: &str, text: &str) -> String {
    wrap_hanging(lead, lead.len(), text)
}

/// `text` after `lead`, wrapped at 100 columns with following lines indented by `indent`.
/// Runs of whitespace in `text` count as one space; words are never broken.
fn wrap_hanging(lead: &str, indent: usize, text: &str) -> String {
    let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if words.is_empty() {
        return lead.to_owned();
    }
    let rest = " ".repeat(indent);
    let options = textwrap::Options::new(100)
        .initial_indent(lead)
        .subsequent_indent(&rest)
        .break_words(false)
        .word_splitter(textwrap::WordSplitter::NoHyphenation)
        .wrap_algorithm(textwrap::WrapAlgorithm::FirstFit);
    textwrap::fill(&words, options)
}

/// The threads of the workload by role, so that the tids in findings can be read.
fn threads(ready: &Ready) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "tls-probe demo: the workload is pid {}; its threads:",
        ready.pid
    );
    let mut roles: Vec<&str> = Vec::new();
    for t in &ready.threads {
        if !roles.contains(&t.role.as_str()) {
            roles.push(&t.role);
        }
    }
    for role in roles {
        let mine: Vec<_> = ready.threads.iter().filter(|t| t.role == role).collect();
        let tids: Vec<String> = mine.iter().map(|t| t.tid.to_string()).collect();
        let fds: Vec<i32> = mine.iter().flat_map(|t| t.fds.iter().copied()).collect();
        let fds = match fds.len() {
            0 => String::new(),
            1..=3 => format!(
                "  fd {}",
                fds.iter().map(i32::to_string).collect::<Vec<_>>().join(" ")
            ),
            n => format!("  {n} connections"),
        };
        let _ = writeln!(err, "  {role:<15} tid {}{fds}", tids.join(" "));
    }
}

/// The findings, set against what was expected, and the workload's own counts.
fn recap(parts: &[Part], ready: &Ready, summary: &Summary, done: Option<&Done>) {
    // The workload's role of a finding's thread; None for the process (or a thread that
    // is not one of the workload's).
    let role_of = |tid: Option<u32>| -> Option<&str> {
        tid.and_then(|tid| ready.threads.iter().find(|t| t.tid as u32 == tid))
            .map(|t| t.role.as_str())
    };
    let mut err = std::io::stderr().lock();
    let how = match summary.stop_reason {
        StopReason::TargetsExited => "the workload finished",
        StopReason::Signal => "stopped early: q, Ctrl-C or a signal",
        StopReason::Duration => "the workload overran --duration and was stopped",
    };
    let _ = writeln!(
        err,
        "\ntls-probe demo: recap after {:.1} s ({how})",
        summary.duration_ns as f64 / 1e9
    );
    let _ = writeln!(err, "  findings ({}):", summary.findings.len());
    for f in &summary.findings {
        let mut at = format!("tid {}", f.tid.map_or("-".into(), |t| t.to_string()));
        if let Some(fd) = f.fd {
            at.push_str(&format!(", fd {fd}"));
        }
        let on = role_of(f.tid).unwrap_or("the process");
        let start_ns = summary.end_ns.saturating_sub(summary.duration_ns);
        let text = format!("{} on {on} ({at}): {}", f.kind, recap_numbers(f, start_ns));
        let _ = writeln!(err, "{}", wrap_hanging("    ", 6, &text));
    }
    let _ = writeln!(err, "  compared with what this workload should show:");
    let seen: Vec<Seen<'_>> = summary
        .findings
        .iter()
        .map(|f| (f.kind.name(), role_of(f.tid)))
        .collect();
    for line in verdicts(parts, &seen) {
        let _ = writeln!(err, "{line}");
    }
    match done {
        Some(done) => {
            let _ = writeln!(
                err,
                "  the workload's own counts ({:.1} s of load):",
                done.elapsed_ms as f64 / 1000.0
            );
            for part in parts {
                for (role, keys) in part.guide().counts {
                    let (who, text) = counts_line(&part.role(role), keys, done);
                    let _ = writeln!(err, "{}", wrap(&format!("    {who:<17} "), &text));
                }
            }
        }
        None => {
            let _ = writeln!(
                err,
                "  the workload was stopped before it reported its own counts"
            );
        }
    }
    let lost = summary.lost.ringbuf + summary.lost.inflight;
    let _ = writeln!(
        err,
        "  tls-probe saw {} events, lost {lost}",
        summary.events
    );
}

/// A finding's numbers for the recap. A finding made of windowed rates shows them at its
/// worst (`peak`), with when that was: the recap is printed after the load, when the last
/// windows hold the load's wind-down, and a rate measured then says little of what the
/// workload did. Its last values follow when they differ.
fn recap_numbers(f: &Finding, start_ns: u64) -> String {
    match &f.peak {
        Some(peak) if peak.evidence != f.evidence => format!(
            "at its worst ({:+.1} s): {}; last: {}",
            peak.ts_ns.saturating_sub(start_ns) as f64 / 1e9,
            peak.evidence,
            f.evidence
        ),
        _ => f.evidence.to_string(),
    }
}

/// Each declared finding seen or not, each part that declares none quiet or not, and
/// each finding no part declared; `seen` holds every finding as (kind, role of its
/// thread, None for the process).
pub fn verdicts(parts: &[Part], seen: &[Seen<'_>]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut explained = vec![false; seen.len()];
    for part in parts {
        let g = part.guide();
        for f in g.findings {
            let mut found = false;
            for (i, s) in seen.iter().enumerate() {
                if part.matches(f, *s) {
                    explained[i] = true;
                    found = true;
                }
            }
            let verdict = if found { "seen" } else { "NOT SEEN" };
            lines.push(format!("    {verdict:<10} {} on {}", f.kind, part.place(f)));
        }
        let Some(why) = g.no_finding else {
            continue;
        };
        if !seen
            .iter()
            .any(|(_, role)| role.is_some_and(|r| part.owns(r)))
        {
            let scope = part
                .prefix
                .map(|p| format!(" on {p}-*"))
                .unwrap_or_default();
            lines.push(wrap(
                &format!("    {:<10} ", "ok"),
                &format!("no finding{scope}: {why}"),
            ));
        }
    }
    for ((kind, role), _) in seen.iter().zip(&explained).filter(|(_, e)| !**e) {
        let on = role.unwrap_or("the process");
        lines.push(format!("    {:<10} {kind} on {on}", "UNEXPECTED"));
    }
    lines
}

/// ("spin-client", "812345 epoll wake-ups, ...; CPU 99%") from the DONE threads of one
/// role; the CPU is their summed time over the time of load.
fn counts_line(role: &str, keys: &[(&str, &str)], done: &Done) -> (String, String) {
    let threads: Vec<_> = done.threads.iter().filter(|t| t.role == role).collect();
    let mut parts = Vec::new();
    for (key, label) in keys {
        let n: u64 = threads.iter().map(|t| t.counts.get(key)).sum();
        parts.push(if key.ends_with("_bytes") {
            format!("{label} {}", bytes(n))
        } else {
            format!("{n} {label}")
        });
    }
    let cpu_ms: u64 = threads.iter().map(|t| t.cpu_ms).sum();
    let share = 100.0 * cpu_ms as f64 / done.elapsed_ms.max(1) as f64;
    let who = match threads.len() {
        1 => role.to_owned(),
        n => format!("{role} x{n}"),
    };
    (who, format!("{}; CPU {share:.0}%", parts.join(", ")))
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} bytes"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_indents_continuation_lines_under_the_text() {
        let text = "word ".repeat(40);
        let out = wrap("  runs:    ", &text);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() > 1, "{out}");
        assert!(lines[0].starts_with("  runs:    word"));
        for l in &lines[1..] {
            assert!(l.starts_with("           word"), "{l:?}");
        }
        assert!(lines.iter().all(|l| l.len() <= 100));
        assert_eq!(wrap("", "a b"), "a b");
        let out = wrap_hanging("    ", 6, &text);
        assert!(
            out.lines().skip(1).all(|l| l.starts_with("      word")),
            "{out}"
        );
    }

    #[test]
    fn the_recap_gives_a_rate_finding_at_its_worst_then_its_last_values() {
        let churn = |per_sec: f64| {
            serde_json::json!({"connection_churn": {
                "peer": "127.0.0.1", "connections_per_sec": per_sec, "connections_total": 2883,
                "lifetime_p50_ns": 5_885_854, "full_handshakes_total": 2883,
                "resumed_handshakes_total": 0, "related_finding_ids": [],
            }})
        };
        let mut f: Finding = serde_json::from_value(serde_json::json!({
            "id": 3, "kind": "connection_churn", "state": "closed", "severity": "warning",
            "pid": 7, "comm": "x", "tid": null, "ssl": null, "fd": null, "peer": "127.0.0.1",
            "first_seen_ns": 11_000_000_000u64, "last_seen_ns": 15_000_000_000u64,
            "closed_ns": 16_000_000_000u64,
            "peak": {"ts_ns": 13_400_000_000u64, "evidence": churn(1044.0)},
            "evidence": churn(18.0), "explanation": "", "advice": "",
        }))
        .unwrap();
        let text = recap_numbers(&f, 10_000_000_000);
        assert!(
            text.starts_with("at its worst (+3.4 s): 1044 new connections/s from 127.0.0.1"),
            "{text}"
        );
        assert!(text.contains("; last: 18 new connections/s"), "{text}");
        f.peak = None;
        assert!(recap_numbers(&f, 0).starts_with("18 new connections/s"));
    }

    /// (kind, role) pairs, "the process" standing for a finding that names no thread.
    fn seen<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Seen<'a>> {
        pairs
            .iter()
            .map(|&(k, r)| (k, Some(r).filter(|r| *r != "the process")))
            .collect()
    }

    #[test]
    fn verdicts_match_findings_to_the_parts_that_expect_them() {
        let mixed = guide::parts(ScenarioName::Mixed);
        let lines = verdicts(
            &mixed,
            &seen(&[
                ("spin_loop", "spin-client"),
                ("handshake_saturation", "storm-server"),
                ("low_session_resumption", "the process"),
                ("connection_churn", "the process"),
            ]),
        );
        assert_eq!(
            lines[..4],
            [
                "    seen       spin_loop on spin-client",
                "    seen       handshake_saturation on storm-server",
                "    seen       low_session_resumption on the process",
                "    seen       connection_churn on the process",
            ]
        );
        assert!(lines[4].starts_with("    ok         no finding on healthy-*: "));
        assert_eq!(lines.len(), 5, "{lines:#?}");

        let lines = verdicts(
            &mixed,
            &seen(&[
                ("busy_epoll_loop", "healthy-client"),
                ("spin_loop", "the process"),
                ("handshake_saturation", "spin-client"),
            ]),
        );
        assert_eq!(lines[0], "    NOT SEEN   spin_loop on spin-client");
        assert_eq!(
            lines[1],
            "    NOT SEEN   handshake_saturation on storm-server"
        );
        assert_eq!(lines.len(), 7, "no ok line for healthy-*: {lines:#?}");
        assert_eq!(lines[4], "    UNEXPECTED busy_epoll_loop on healthy-client");
        assert_eq!(lines[5], "    UNEXPECTED spin_loop on the process");
        assert_eq!(
            lines[6],
            "    UNEXPECTED handshake_saturation on spin-client"
        );

        let concurrent = guide::parts(ScenarioName::ConcurrentSsl);
        let lines = verdicts(&concurrent, &seen(&[("concurrent_ssl_use", "writer")]));
        assert_eq!(
            lines,
            ["    seen       concurrent_ssl_use on reader or writer"]
        );
        let healthy = guide::parts(ScenarioName::Healthy);
        let lines = verdicts(&healthy, &seen(&[("spin_loop", "client")]));
        assert_eq!(lines, ["    UNEXPECTED spin_loop on client"]);
    }

    /// A scenario can only declare what the engine can find.
    #[test]
    fn every_declared_finding_is_an_engine_finding_kind() {
        use crate::engine::FindingKind;
        for kind in guide::declared_kinds() {
            let parsed: FindingKind = serde_json::from_value(serde_json::Value::from(kind))
                .unwrap_or_else(|e| panic!("{kind} is not a finding kind: {e}"));
            assert_eq!(parsed.name(), kind);
        }
    }

    #[test]
    fn demo_help_names_every_scenario() {
        use clap::CommandFactory;
        let cli = crate::cli::Cli::command();
        let demo = cli.find_subcommand("demo").expect("demo subcommand");
        let arg = demo
            .get_arguments()
            .find(|a| a.get_id() == "scenario")
            .expect("scenario argument");
        let help = arg.get_help().expect("help").to_string();
        for name in ScenarioName::ALL {
            assert!(help.contains(name.as_str()), "{name} missing from: {help}");
        }
    }

    #[test]
    fn bytes_are_readable() {
        assert_eq!(bytes(0), "0 bytes");
        assert_eq!(bytes(4096), "4.1 kB");
        assert_eq!(bytes(28_300_000), "28.3 MB");
    }
}
