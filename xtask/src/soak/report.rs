//! bench/soak.md: per mode, each phase's load as the clients and nginx counted it, what
//! tls-probe counted, and its memory and CPU.

use std::fmt::Write as _;

use super::{ModeResult, SoakResults};
use crate::bench::report::count;

const MIB: f64 = 1024.0;

pub fn markdown(r: &SoakResults) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Soak: tls-probe on nginx (4 workers) under churn, idle connections and keep-alive\n"
    );
    let _ = writeln!(
        md,
        "Run {} on {} CPUs, load average {} at the start and {} at the end (other work shares \
         this machine: the agent's CPU share and the load's rates move with it). Made by \
         `cargo xtask soak`; {:.0} s in all. Per mode: {} TLS connections of churn or {} s of \
         it, whichever came first (no keep-alive; half to a server that refuses resumption, \
         half to one that resumes), \
         then {} idle TLS connections held {} s, then {} s of keep-alive load (wrk -t2 -c100).\n",
        r.date_utc,
        r.cpus,
        r.loadavg_start.as_deref().unwrap_or("?"),
        r.loadavg_end.as_deref().unwrap_or("?"),
        r.elapsed_s,
        count(r.connections_target as f64),
        r.churn_max_secs,
        count(f64::from(r.idle)),
        r.idle_secs,
        r.keepalive_secs,
    );
    let _ = writeln!(
        md,
        "| mode | phase | seconds | nginx connections (resumed) | wrk requests | wrk socket errors | agent RSS end / max | agent CPU mean | findings opened |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    for m in &r.modes {
        for p in &m.phases {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} ({}) | {} | {} | {:.1} / {:.1} MiB | {:.1}% | {} |",
                m.mode,
                p.phase.name(),
                p.seconds,
                count(p.server.connections as f64),
                count(p.server.resumed as f64),
                count(p.client.requests as f64),
                count(p.client.socket_errors as f64),
                p.rss_end_kib as f64 / MIB,
                p.rss_max_kib as f64 / MIB,
                p.cpu_mean_pct,
                if p.findings.is_empty() {
                    "none".to_owned()
                } else {
                    p.findings.join(", ")
                },
            );
        }
    }
    let _ = writeln!(
        md,
        "\nWhat tls-probe's summary counted against nginx's own log:\n"
    );
    let _ = writeln!(
        md,
        "| mode | nginx connections | summary handshakes completed | nginx resumed | summary resumed / full | events | lost | evicted | RSS after warm-up (60 s) / end / max | max engine connections | stop |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|");
    for m in &r.modes {
        let served: u64 = m.phases.iter().map(|p| p.server.connections).sum();
        let resumed: u64 = m.phases.iter().map(|p| p.server.resumed).sum();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {:.1} s |",
            m.mode,
            count(served as f64),
            count(m.handshakes_completed as f64),
            count(resumed as f64),
            count(m.handshakes_resumed as f64),
            count(m.handshakes_full as f64),
            count(m.events as f64),
            m.lost,
            m.evicted,
            rss_line(m),
            count(m.samples.iter().map(|s| s.connections).max().unwrap_or(0) as f64),
            m.stop_s,
        );
    }
    let _ = writeln!(
        md,
        "\nThe plot (soak.png) shows the agent's RSS, CPU and the engine's connection table per \
         second; soak.json holds every sample."
    );
    md
}

fn rss_line(m: &ModeResult) -> String {
    let at = |t: f64| {
        m.samples
            .iter()
            .find(|s| s.t_s >= t)
            .or(m.samples.last())
            .map_or(0.0, |s| s.rss_kib as f64 / MIB)
    };
    let max = m.samples.iter().map(|s| s.rss_kib).max().unwrap_or(0) as f64 / MIB;
    let end = m.samples.last().map_or(0.0, |s| s.rss_kib as f64 / MIB);
    format!("{:.1} / {:.1} / {:.1} MiB", at(60.0), end, max)
}
