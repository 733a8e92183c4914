//! The dashboard as a sink: what the session records, turned into the dashboard's
//! messages. Every send is a `try_send`: a stuck terminal never holds up the session.

use std::path::Path;

use anyhow::Result;

use super::{ProbeStats, Record, Sink};
#[cfg(test)]
use crate::sink::record::ProbeMode;
use crate::tui::{Dashboard, HeaderInfo, TargetInfo};

/// Feeds a running [`Dashboard`]; dropping the sink stops the dashboard and restores the
/// terminal.
pub struct TuiSink {
    dash: Dashboard,
    header: HeaderInfo,
}

impl TuiSink {
    pub fn new(dash: Dashboard) -> Self {
        Self {
            dash,
            header: HeaderInfo::default(),
        }
    }

    fn send_header(&self) {
        self.dash.header(self.header.clone());
    }
}

impl Sink for TuiSink {
    fn record(&mut self, rec: Record<'_>) -> Result<()> {
        let dash = &self.dash;
        match rec {
            Record::Start(start) => {
                self.header.targets = start.targets.iter().map(target_info).collect();
                self.header.probe_mode = start.probe_mode.to_string();
                self.header.attached_ns = start.clock.monotonic_ns;
                self.send_header();
                for t in start
                    .targets
                    .iter()
                    .filter(|t| !t.missing_symbols.is_empty())
                {
                    dash.notice(format!(
                        "pid {}: {} lacks {}; those probes are skipped",
                        t.pid,
                        t.library_path,
                        t.missing_symbols.join(", ")
                    ));
                }
            }
            Record::Finding(change) => {
                dash.finding(change);
            }
            Record::Snapshot(snap) => {
                dash.snapshot(snap.clone());
            }
            Record::Lost(lost) => {
                self.header.lost_total = lost.total.sum();
                dash.notice(format!(
                    "lost {} events (ring buffer full), {} call states, {} undecodable records",
                    lost.new.ringbuf, lost.new.inflight, lost.new.decode
                ));
            }
            Record::TargetExit(exit) => {
                dash.target_exit(exit.pid);
                dash.notice(format!("pid {} ({}) exited", exit.pid, exit.comm));
            }
            Record::Summary(summary) => {
                self.header.lost_total = summary.lost.sum();
                self.send_header();
                if summary.stop_reason == super::StopReason::TargetsExited {
                    dash.notice("every target exited: tracing stopped; the findings stay until q");
                }
            }
            Record::Event(_) | Record::TargetAttach(_) => {}
        }
        Ok(())
    }

    fn stats(&mut self, stats: &ProbeStats) {
        self.header.events_per_sec = stats.events_per_sec;
        self.header.lost_total = stats.lost_total;
        self.header.overhead_pct = stats.overhead_pct;
        self.send_header();
    }
}

fn target_info(t: &super::Target) -> TargetInfo {
    let library = Path::new(&t.library_path).file_name().map_or_else(
        || t.library_path.clone(),
        |n| n.to_string_lossy().into_owned(),
    );
    TargetInfo {
        pid: t.pid,
        comm: t.comm.clone(),
        library,
        library_version: t.library_version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sink::{ClockAnchor, Lost, LostRecord, Start, Target, TargetExit},
        tui::Msg,
    };

    fn start() -> Start {
        Start {
            schema_version: 1,
            tool_version: "0".into(),
            targets: vec![Target {
                pid: 42,
                comm: "srv".into(),
                library_path: "/usr/lib/x86_64-linux-gnu/libssl.so.3".into(),
                library_version: Some("3.0.11".into()),
                missing_symbols: vec!["SSL_read_ex".into()],
                executable: None,
                cgroup: None,
            }],
            probe_mode: ProbeMode::Full,
            probe_modes: Default::default(),
            uprobe_links: Default::default(),
            missing_tracepoints: Vec::new(),
            events: false,
            clock: ClockAnchor {
                monotonic_ns: 7,
                unix_ns: 9,
            },
        }
    }

    fn drain(rx: &mut tokio::sync::mpsc::Receiver<Msg>) -> Vec<Msg> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn header_comes_from_start_and_stats() {
        let (dash, mut rx) = Dashboard::detached();
        let mut sink = TuiSink::new(dash);
        sink.record(Record::Start(&start())).unwrap();
        let msgs = drain(&mut rx);
        let Msg::Header(h) = &msgs[0] else {
            panic!("{msgs:?}")
        };
        assert_eq!(h.targets[0].library, "libssl.so.3");
        assert_eq!(h.targets[0].library_version.as_deref(), Some("3.0.11"));
        assert_eq!((h.probe_mode.as_str(), h.attached_ns), ("full", 7));
        assert!(matches!(&msgs[1], Msg::Notice(n) if n.contains("SSL_read_ex")));

        sink.stats(&ProbeStats {
            ts_ns: 8,
            events_per_sec: 1500.0,
            lost_total: 3,
            overhead_pct: Some(2.5),
            ..ProbeStats::default()
        });
        let msgs = drain(&mut rx);
        let [Msg::Header(h)] = msgs.as_slice() else {
            panic!("{msgs:?}")
        };
        assert_eq!(h.targets.len(), 1, "the header keeps the targets");
        assert_eq!(
            (h.events_per_sec, h.lost_total, h.overhead_pct),
            (1500.0, 3, Some(2.5))
        );
    }

    #[test]
    fn exits_and_losses_are_shown() {
        let (dash, mut rx) = Dashboard::detached();
        let mut sink = TuiSink::new(dash);
        let exit = TargetExit {
            pid: 42,
            comm: "srv".into(),
            ts_ns: 1,
        };
        sink.record(Record::TargetExit(&exit)).unwrap();
        let lost = Lost {
            ringbuf: 5,
            inflight: 0,
            decode: 1,
        };
        let rec = LostRecord {
            ts_ns: 2,
            new: lost,
            total: lost,
        };
        sink.record(Record::Lost(&rec)).unwrap();
        let msgs = drain(&mut rx);
        assert!(matches!(msgs[0], Msg::TargetExit { pid: 42 }), "{msgs:?}");
        assert!(matches!(&msgs[1], Msg::Notice(n) if n == "pid 42 (srv) exited"));
        assert!(matches!(&msgs[2], Msg::Notice(n) if n.starts_with("lost 5 events")));
    }
}
