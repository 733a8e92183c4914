//! `tls-probe report FILE`: a report of an NDJSON export, as text or (`--json`) one JSON
//! object. An export made with `--events` is analysed again by this version's engine.
//! When the file is cut off or corrupt, the report covers what could be read and the
//! command fails naming the line.

use std::{
    fmt::Write as _,
    fs::File,
    io::{self, BufReader, Write as _},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::{
    cli::ReportArgs,
    engine::{Finding, ProcessSnapshot, ThreadSnapshot},
    replay::{self, ReadError, Recording},
    sink::{Lost, StopReason, Target, TargetExit},
};

/// Threads listed in the text report, busiest first.
const TOP_THREADS: usize = 10;

/// The report, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    /// False when the file was cut off, corrupt, or had no summary; `error` says why.
    pub complete: bool,
    pub error: Option<ReadError>,
    pub schema_version: Option<u32>,
    pub tool_version: Option<String>,
    pub targets: Vec<Target>,
    /// Unix ns when tls-probe attached.
    pub started_unix_ns: Option<u64>,
    pub duration_ns: Option<u64>,
    pub stop_reason: Option<StopReason>,
    pub events: u64,
    /// "replay": the engine ran again over the recorded events; "recorded": the findings the
    /// live run wrote.
    pub findings_from: &'static str,
    pub findings: Vec<Finding>,
    /// How many findings the live run recorded (to compare with a replay).
    pub recorded_findings: usize,
    pub processes: Vec<ProcessSnapshot>,
    pub threads: Vec<ThreadSnapshot>,
    pub lost: Lost,
    pub target_exits: Vec<TargetExit>,
    /// Records of a type this version does not know (from a newer tls-probe), skipped.
    pub unknown_records: u64,
}

pub fn build(file: &str, rec: Recording) -> Report {
    let start = rec.start.as_ref();
    let mut findings = rec.final_findings();
    if rec.replay.is_some() {
        let recorded: Vec<Finding> = match &rec.summary {
            Some(s) => s.findings.clone(),
            None => rec.findings.values().cloned().collect(),
        };
        graft_call_sites(&mut findings, &recorded);
    }
    let recorded_findings = match &rec.summary {
        Some(s) => s.findings.len(),
        None => rec.findings.len(),
    };
    let (processes, threads) = match (&rec.replay, &rec.summary, &rec.last_snapshot) {
        (Some(r), _, _) => (r.snapshot.processes.clone(), r.snapshot.threads.clone()),
        (None, Some(s), snap) => (
            s.processes.clone(),
            snap.as_ref().map(|s| s.threads.clone()).unwrap_or_default(),
        ),
        (None, None, Some(s)) => (s.processes.clone(), s.threads.clone()),
        (None, None, None) => (Vec::new(), Vec::new()),
    };
    let duration_ns = match (&rec.summary, start, &rec.last_snapshot) {
        (Some(s), _, _) => Some(s.duration_ns),
        (None, Some(st), Some(snap)) => Some(snap.now_ns.saturating_sub(st.clock.monotonic_ns)),
        _ => None,
    };
    Report {
        file: file.to_owned(),
        complete: rec.error.is_none(),
        schema_version: start.map(|s| s.schema_version),
        tool_version: start.map(|s| s.tool_version.clone()),
        targets: start.map(|s| s.targets.clone()).unwrap_or_default(),
        started_unix_ns: start.map(|s| s.clock.unix_ns),
        duration_ns,
        stop_reason: rec.summary.as_ref().map(|s| s.stop_reason),
        events: rec.summary.as_ref().map_or(rec.events, |s| s.events),
        findings_from: if rec.replay.is_some() {
            "replay"
        } else {
            "recorded"
        },
        findings,
        recorded_findings,
        processes,
        threads,
        lost: rec.lost,
        unknown_records: rec.unknown_records,
        target_exits: rec.exits,
        error: rec.error,
    }
}

pub fn run(args: &ReportArgs) -> Result<ExitCode> {
    let name = args.file.display().to_string();
    let rec = if name == "-" {
        replay::read(io::stdin().lock())
    } else {
        let f = File::open(&args.file).with_context(|| format!("cannot open {name}"))?;
        replay::read(BufReader::new(f))
    };
    let monotonic0 = rec.start.as_ref().map_or(0, |s| s.clock.monotonic_ns);
    let report = build(&name, rec);
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report).context("writing the report")?;
        writeln!(out).context("writing the report")?;
    } else {
        out.write_all(text(&report, monotonic0).as_bytes())
            .context("writing the report")?;
    }
    out.flush().context("writing the report")?;
    if let Some(e) = &report.error {
        bail!(
            "{name}: {e}; the report covers the {} lines before",
            e.line.saturating_sub(1)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The text report. `t0` is the monotonic ns of attach, for times relative to it.
pub fn text(r: &Report, t0: u64) -> String {
    let mut s = String::new();
    let secs = |ns: u64| ns as f64 / 1e9;
    let at = |ns: u64| format!("+{:.1}s", secs(ns.saturating_sub(t0)));
    let _ = writeln!(s, "tls-probe report: {}", r.file);
    if let (Some(v), Some(schema)) = (&r.tool_version, r.schema_version) {
        let _ = write!(s, "  recorded by tls-probe {v} (schema {schema})");
        if let Some(unix) = r.started_unix_ns {
            let _ = write!(s, ", attached at {}", utc(unix));
        }
        s.push('\n');
    }
    let stop = match r.stop_reason {
        Some(StopReason::Duration) => "--duration ended",
        Some(StopReason::Signal) => "stopped by a signal",
        Some(StopReason::TargetsExited) => "every target exited",
        None => "no summary",
    };
    let duration = r
        .duration_ns
        .map_or("unknown".to_owned(), |d| format!("{:.1}s", secs(d)));
    let _ = writeln!(
        s,
        "  duration {duration} ({stop}); {} events; lost {} in the kernel, {} undecodable",
        r.events,
        r.lost.ringbuf + r.lost.inflight,
        r.lost.decode
    );
    let _ = writeln!(s, "\ntargets:");
    for t in &r.targets {
        let version = t.library_version.as_deref().unwrap_or("version unknown");
        let _ = write!(
            s,
            "  pid {} ({}) through {} ({version})",
            t.pid, t.comm, t.library_path
        );
        if let Some(e) = r.target_exits.iter().find(|e| e.pid == t.pid) {
            let _ = write!(s, ", exited at {}", at(e.ts_ns));
        }
        s.push('\n');
    }
    let from = if r.findings_from == "replay" {
        format!(
            "re-run by this tls-probe over the recorded events; the live run recorded {}",
            r.recorded_findings
        )
    } else {
        "as recorded by the live run".to_owned()
    };
    let _ = writeln!(s, "\nfindings ({}, {from}):", r.findings.len());
    if r.findings.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for f in &r.findings {
        finding(&mut s, f, &at);
    }
    let _ = writeln!(s, "\nprocesses:");
    for p in &r.processes {
        let _ = writeln!(
            s,
            "  pid {} ({}): {} SSL calls (want_read {}, want_write {}, failed {}); read {}, written {}",
            p.pid,
            p.comm.as_deref().unwrap_or("?"),
            p.ssl_calls_total,
            p.want_read_total,
            p.want_write_total,
            p.failed_total,
            bytes(p.read_bytes_total),
            bytes(p.written_bytes_total),
        );
        let _ = writeln!(
            s,
            "    {} wake-ups, {} without progress; {} handshakes; {} connections ({} open)",
            p.wakeups_total,
            p.wakeups_no_progress_total,
            p.handshakes_total,
            p.connections_total,
            p.connections_open
        );
    }
    let mut threads: Vec<&ThreadSnapshot> = r.threads.iter().collect();
    let cpu = |t: &ThreadSnapshot| t.cpu_pct.unwrap_or(0.0);
    threads.sort_by(|a, b| {
        cpu(b)
            .total_cmp(&cpu(a))
            .then(b.wakeups_total.cmp(&a.wakeups_total))
    });
    if !threads.is_empty() {
        let _ = writeln!(s, "\nthreads at the end (busiest first):");
    }
    for t in threads.iter().take(TOP_THREADS) {
        let cpu = t.cpu_pct.map_or("?".to_owned(), |c| format!("{c:.0}%"));
        let _ = writeln!(
            s,
            "  {}/{}: CPU {cpu}; {:.0} wake-ups/s ({:.0}/s without progress), {:.0} SSL calls/s; {} wake-ups in all",
            t.pid,
            t.tid,
            t.wakeups_per_sec,
            t.wakeups_no_progress_per_sec,
            t.ssl_calls_per_sec,
            t.wakeups_total
        );
    }
    if r.unknown_records > 0 {
        let _ = writeln!(
            s,
            "\n{} records of types this tls-probe does not know were skipped: a newer version wrote them",
            r.unknown_records
        );
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "\nINCOMPLETE: {e}");
    }
    s
}

fn finding(s: &mut String, f: &Finding, at: &dyn Fn(u64) -> String) {
    let state = if f.is_open() { "open" } else { "closed" };
    let _ = writeln!(s, "  [{state}] {f}");
    let until = f.closed_ns.unwrap_or(f.last_seen_ns);
    let _ = writeln!(
        s,
        "      seen {} to {} ({:.1}s), severity {}",
        at(f.first_seen_ns),
        at(until),
        until.saturating_sub(f.first_seen_ns) as f64 / 1e9,
        format!("{:?}", f.severity).to_lowercase()
    );
    // A rate finding's worst moment, when its last numbers are not it (a storm winding
    // down, a target that exited).
    if let Some(peak) = f.peak.as_ref().filter(|p| p.evidence != f.evidence) {
        let _ = writeln!(
            s,
            "      at its worst ({}): {}",
            at(peak.ts_ns),
            peak.evidence
        );
    }
    // The evidence's own fields, whatever the kind: `{"spin_loop": {...}}`.
    if let Ok(serde_json::Value::Object(outer)) = serde_json::to_value(&f.evidence)
        && let Some(serde_json::Value::Object(fields)) = outer.values().next()
    {
        let parts: Vec<String> = fields
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::Number(n) if n.is_f64() => {
                    format!("{k}={:.1}", n.as_f64().unwrap_or(0.0))
                }
                serde_json::Value::String(t) => format!("{k}={t}"),
                _ => format!("{k}={v}"),
            })
            .collect();
        let _ = writeln!(s, "      evidence: {}", parts.join(", "));
    }
    let _ = writeln!(s, "      why: {}", f.explanation);
    let _ = writeln!(s, "      fix: {}", f.advice);
    if let Some(cs) = &f.call_sites {
        let _ = writeln!(s, "      where:");
        for line in cs.lines() {
            let _ = writeln!(s, "        {line}");
        }
    }
}

/// A replay's findings have no call sites (the live run attached them, not the engine):
/// each takes those of the recorded finding of its kind and subject that opened within a
/// second of it.
fn graft_call_sites(findings: &mut [Finding], recorded: &[Finding]) {
    for f in findings.iter_mut().filter(|f| f.call_sites.is_none()) {
        f.call_sites = recorded
            .iter()
            .find(|r| {
                r.call_sites.is_some()
                    && (r.kind, r.pid, r.tid, r.ssl) == (f.kind, f.pid, f.tid, f.ssl)
                    && r.first_seen_ns.abs_diff(f.first_seen_ns) < 1_000_000_000
            })
            .and_then(|r| r.call_sites.clone());
    }
}

fn bytes(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{:.1} MB", n as f64 / 1e6),
    }
}

/// "2024-05-01 12:34:56 UTC" for Unix ns (proleptic Gregorian, from days since 1970).
fn utc(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_000_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn a_truncated_export_still_reports_targets_and_says_so() {
        let start = r#"{"type":"start","data":{"schema_version":1,"tool_version":"0.1.0","targets":[{"pid":7,"comm":"srv","library_path":"/lib/libssl.so.3","library_version":"3","missing_symbols":[]}],"probe_mode":"full","events":false,"clock":{"monotonic_ns":1000,"unix_ns":0}}}"#;
        let rec = replay::read(format!("{start}\n{{\"type\":\"snap").as_bytes());
        let r = build("x.ndjson", rec);
        assert!(!r.complete);
        assert_eq!(r.error.as_ref().unwrap().line, 2);
        let t = text(&r, 1000);
        assert!(
            t.contains("pid 7 (srv) through /lib/libssl.so.3 (3)"),
            "{t}"
        );
        assert!(t.contains("INCOMPLETE: line 2: cut off"), "{t}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["complete"], false);
        assert_eq!(json["error"]["line"], 2);
        assert_eq!(json["findings_from"], "recorded");
    }
}
