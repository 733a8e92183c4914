//! Reading an NDJSON export back, and running its events through the engine again.
//!
//! The engine is pure and deterministic, so an export made with `--events` can be analysed
//! again by this version: events go through a fresh [`Tracker`] and [`Engine`] in the order
//! they were written, the engine's clock is advanced where the live one was (each
//! `snapshot`'s `now_ns`, the summary's `end_ns`), and processes get the names `start` gave.
//!
//! A line that is cut off or does not parse stops the reading with an error naming its line
//! number; everything before it is kept.

use std::{collections::BTreeMap, io::BufRead};

use serde::Serialize;

use crate::{
    engine::{Config, Finding, FindingChange, Snapshot},
    pipeline::Pipeline,
    record::{Lost, OwnedRecord, SCHEMA_VERSION, Start, Summary, TargetExit},
};

/// Why reading stopped early.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ReadError {
    /// 1-based.
    pub line: u64,
    pub message: String,
}

/// What an export holds, as far as it could be read.
#[derive(Debug, Default)]
pub struct Recording {
    pub start: Option<Start>,
    /// Each finding in the last state a `finding` record gave it, by id.
    pub findings: BTreeMap<u64, Finding>,
    pub last_snapshot: Option<Snapshot>,
    /// The latest loss totals.
    pub lost: Lost,
    pub exits: Vec<TargetExit>,
    pub summary: Option<Summary>,
    /// Whole lines read.
    pub lines: u64,
    /// `event` records read.
    pub events: u64,
    /// Whole records of a type this version does not know, skipped.
    pub unknown_records: u64,
    /// The engine's results over the events again, when the export holds them.
    pub replay: Option<Replayed>,
    pub error: Option<ReadError>,
}

/// The engine's results over the recorded events.
#[derive(Debug)]
pub struct Replayed {
    pub findings: Vec<Finding>,
    pub snapshot: Snapshot,
    /// Every change in the order the engine made it.
    pub changes: Vec<FindingChange>,
}

impl Recording {
    /// The findings to show: the replay's when there is one, else the summary's, else the
    /// last state each `finding` record gave.
    pub fn final_findings(&self) -> Vec<Finding> {
        if let Some(r) = &self.replay {
            r.findings.clone()
        } else if let Some(s) = &self.summary {
            s.findings.clone()
        } else {
            self.findings.values().cloned().collect()
        }
    }
}

/// The live run's pipeline again, and every change it made.
struct Replayer {
    pipeline: Pipeline,
    changes: Vec<FindingChange>,
}

impl Replayer {
    fn new(start: &Start) -> Self {
        let mut pipeline = Pipeline::new(Config::default());
        for t in &start.targets {
            pipeline.set_comm(t.pid, &t.comm);
        }
        Self {
            pipeline,
            changes: Vec::new(),
        }
    }

    fn collect(&mut self) {
        self.changes.extend(self.pipeline.take_changes());
    }

    fn finish(mut self) -> Replayed {
        self.collect();
        Replayed {
            findings: self.pipeline.findings(),
            snapshot: self.pipeline.snapshot(),
            changes: self.changes,
        }
    }
}

/// Reads an export; never fails, but says in `error` where and why it stopped early.
pub fn read(mut input: impl BufRead) -> Recording {
    let mut rec = Recording::default();
    let mut replay: Option<Replayer> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let line = rec.lines + 1;
        let fail = |message: String| Some(ReadError { line, message });
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) if buf.last() != Some(&b'\n') => {
                rec.error = fail(format!(
                    "cut off: the file ends in the middle of this line ({} bytes, no newline); it was truncated, or is still being written",
                    buf.len()
                ));
                break;
            }
            Ok(_) => {}
            Err(e) => {
                rec.error = fail(format!("cannot read: {e}"));
                break;
            }
        }
        let record: OwnedRecord = match serde_json::from_slice(&buf) {
            Ok(r) => r,
            Err(_) if is_unknown_type(&buf) => {
                // A record type from a newer tls-probe: skipped, as unknown fields are.
                rec.unknown_records += 1;
                rec.lines = line;
                continue;
            }
            Err(e) => {
                rec.error = fail(format!("not a tls-probe record: {e}"));
                break;
            }
        };
        if let Err(message) = apply(&mut rec, &mut replay, record) {
            rec.error = fail(message);
            break;
        }
        rec.lines = line;
    }
    if rec.error.is_none() && rec.summary.is_none() {
        rec.error = Some(ReadError {
            line: rec.lines,
            message: if rec.lines == 0 {
                "the file is empty".to_owned()
            } else {
                "the file ends here without a summary line: tls-probe did not finish writing it (killed, out of space, or still running)".to_owned()
            },
        });
    }
    rec.replay = replay.map(Replayer::finish);
    rec
}

/// An envelope whose `type` this version does not know.
fn is_unknown_type(line: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(rename = "type")]
        kind: String,
        #[expect(dead_code, reason = "only its presence is checked")]
        data: serde::de::IgnoredAny,
    }
    const KNOWN: [&str; 8] = [
        "start",
        "event",
        "finding",
        "snapshot",
        "lost",
        "target_attach",
        "target_exit",
        "summary",
    ];
    serde_json::from_slice::<Envelope>(line).is_ok_and(|e| !KNOWN.contains(&e.kind.as_str()))
}

fn apply(
    rec: &mut Recording,
    replay: &mut Option<Replayer>,
    record: OwnedRecord,
) -> Result<(), String> {
    if rec.start.is_none() && !matches!(record, OwnedRecord::Start(_)) {
        return Err("the first record is not `start`: this is not a tls-probe export".into());
    }
    if rec.summary.is_some() {
        return Err("a record after the summary, which should be the last line".into());
    }
    match record {
        OwnedRecord::Start(start) => {
            if rec.start.is_some() {
                return Err("a second start record".into());
            }
            if start.schema_version > SCHEMA_VERSION {
                return Err(format!(
                    "schema_version {} is newer than this tls-probe reads ({SCHEMA_VERSION}); use a newer tls-probe",
                    start.schema_version
                ));
            }
            if start.events {
                *replay = Some(Replayer::new(&start));
            }
            rec.start = Some(start);
        }
        OwnedRecord::Event(mut ev) => {
            rec.events += 1;
            if let Some(r) = replay.as_mut() {
                let pushed: Result<(), std::convert::Infallible> =
                    r.pipeline.push(&mut ev, |_, _| Ok(()));
                let Ok(()) = pushed;
                r.collect();
            }
        }
        OwnedRecord::Finding(change) => {
            rec.findings.insert(change.finding.id, change.finding);
        }
        OwnedRecord::Snapshot(snapshot) => {
            if let Some(r) = replay.as_mut() {
                r.pipeline.advance(snapshot.now_ns);
                r.collect();
            }
            rec.last_snapshot = Some(*snapshot);
        }
        OwnedRecord::Lost(lost) => rec.lost = lost.total,
        OwnedRecord::TargetAttach(attach) => {
            // A process that joined later: named in the replay, listed with the others.
            if let Some(r) = replay.as_mut() {
                r.pipeline.set_comm(attach.target.pid, &attach.target.comm);
            }
            if let Some(start) = rec.start.as_mut() {
                start.targets.push(attach.target);
            }
        }
        OwnedRecord::TargetExit(exit) => rec.exits.push(exit),
        OwnedRecord::Summary(summary) => {
            if let Some(r) = replay.as_mut() {
                r.pipeline.advance(summary.end_ns);
                r.collect();
            }
            rec.lost = summary.lost;
            rec.summary = Some(*summary);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"type":"start","data":{"schema_version":1,"tool_version":"0.1.0","targets":[{"pid":7,"comm":"srv","library_path":"/lib/libssl.so.3","library_version":"3","missing_symbols":[]}],"probe_mode":"full","events":true,"clock":{"monotonic_ns":1000,"unix_ns":2000}}}"#;
    const EVENT: &str = r#"{"type":"event","data":{"ts_ns":1500,"pid":7,"tid":7,"probe":"close","kind":"close","fd":3,"ret":0}}"#;
    const EXIT: &str = r#"{"type":"target_exit","data":{"pid":7,"comm":"srv","ts_ns":1800}}"#;
    const SUMMARY: &str = r#"{"type":"summary","data":{"stop_reason":"targets_exited","end_ns":2000,"duration_ns":1000,"events":1,"events_by_probe":{"close":1},"lost":{"ringbuf":0,"inflight":0,"decode":0},"uprobe_hits":0,"tracepoint_hits":1,"processes":[],"findings":[]}}"#;

    fn read_str(s: &str) -> Recording {
        read(s.as_bytes())
    }

    #[test]
    fn a_whole_export_reads_and_replays() {
        let r = read_str(&format!("{START}\n{EVENT}\n{EXIT}\n{SUMMARY}\n"));
        assert_eq!(r.error, None);
        assert_eq!((r.lines, r.events), (4, 1));
        assert_eq!(r.start.as_ref().unwrap().targets[0].comm, "srv");
        assert_eq!(r.exits.len(), 1);
        let replay = r.replay.as_ref().expect("events were recorded");
        assert_eq!(
            replay.snapshot.now_ns, 2000,
            "advanced to the summary's end"
        );
        assert!(r.final_findings().is_empty());
    }

    #[test]
    fn a_cut_off_line_is_named_and_what_came_before_is_kept() {
        let text = format!("{START}\n{EVENT}\n{}", &EXIT[..20]);
        let r = read_str(&text);
        let e = r.error.unwrap();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("cut off"), "{e}");
        assert_eq!((r.lines, r.events), (2, 1));
    }

    #[test]
    fn a_corrupt_line_is_named() {
        let r = read_str(&format!(
            "{START}\n{{\"type\":\"event\",\"data\":[]}}\n{SUMMARY}\n"
        ));
        let e = r.error.unwrap();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.to_string().starts_with("line 2: not a tls-probe record"));
        assert_eq!(r.lines, 1);
    }

    #[test]
    fn a_missing_summary_or_start_is_an_error() {
        let r = read_str(&format!("{START}\n{EVENT}\n"));
        let e = r.error.unwrap();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("without a summary"), "{e}");
        let r = read_str(&format!("{EVENT}\n"));
        assert!(r.error.unwrap().message.contains("not `start`"));
        let r = read_str("");
        assert!(r.error.unwrap().message.contains("empty"));
    }

    #[test]
    fn unknown_record_types_and_fields_are_skipped() {
        let future = r#"{"type":"histogram","data":{"x":1}}"#;
        let exit = EXIT.replace("\"ts_ns\"", "\"new_field\":true,\"ts_ns\"");
        let r = read_str(&format!("{START}\n{future}\n{exit}\n{SUMMARY}\n"));
        assert_eq!(r.error, None);
        assert_eq!((r.lines, r.unknown_records, r.exits.len()), (4, 1, 1));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let newer = START.replace("\"schema_version\":1", "\"schema_version\":99");
        let r = read_str(&format!("{newer}\n"));
        assert!(r.error.unwrap().message.contains("newer"));
    }
}
