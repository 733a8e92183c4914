//! The results: every run's raw numbers as JSON, and the medians as markdown tables of
//! ratios to the baseline measured in the same bench run.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    Variant,
    agent::{Cost, Counted},
    workload::{Detail, Workload},
};

#[derive(Debug, Serialize)]
pub struct Results {
    pub schema_version: u32,
    pub smoke: bool,
    pub date_utc: String,
    pub machine: Machine,
    pub software: Software,
    pub settings: Settings,
    pub runs: Vec<Run>,
    pub medians: Vec<Median>,
    pub elapsed_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub kernel: String,
    pub cpu_model: Option<String>,
    /// /proc/loadavg before and after: how busy the shared machine was.
    pub loadavg_start: Option<String>,
    pub loadavg_end: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Software {
    pub tls_probe_commit: Option<String>,
    pub nginx: Option<String>,
    pub wrk: Option<String>,
    pub openssl: Option<String>,
    pub bpftrace: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Settings {
    pub duration_s: u32,
    pub repetitions: u32,
    pub warmup_s: u32,
    pub workloads: Vec<Workload>,
    pub variants: Vec<Variant>,
}

#[derive(Debug, Serialize)]
pub struct Run {
    /// 1-based.
    pub repetition: u32,
    /// Where this variant ran among the workload's variants in this repetition (1-based):
    /// the order rotates from one repetition to the next.
    pub position: u32,
    pub workload: Workload,
    pub variant: Variant,
    pub unit: &'static str,
    pub value: f64,
    /// CPU time (user + system) the target used during the load: nginx's worker, or the
    /// whole scenario process. Probe traps and eBPF programs run on its account.
    pub target_cpu_s: Option<f64>,
    /// target_cpu_s per operation (request, handshake, wake-up), in microseconds: unlike
    /// throughput, it barely moves when other work competes for the CPUs.
    pub target_cpu_us_per_op: Option<f64>,
    pub detail: Detail,
    /// The agent's own CPU and memory; null for the baseline.
    pub agent_cost: Option<Cost>,
    /// What the agent counted; null for the baseline.
    pub agent_counted: Option<Counted>,
}

#[derive(Debug, Serialize)]
pub struct Median {
    pub workload: Workload,
    pub variant: Variant,
    pub unit: &'static str,
    pub runs: usize,
    pub value_median: f64,
    /// value_median / the baseline's value_median.
    pub ratio: Option<f64>,
    /// Each repetition's value over the same repetition's baseline: the spread.
    pub ratios_per_repetition: Vec<f64>,
    pub target_cpu_us_per_op_median: Option<f64>,
    /// target_cpu_us_per_op_median / the baseline's.
    pub target_cpu_ratio: Option<f64>,
    pub agent_cpu_pct_median: Option<f64>,
    pub agent_max_rss_kib_max: Option<u64>,
    pub events_median: Option<f64>,
    pub lost_median: Option<f64>,
    /// tls-probe's own estimate of the probes' share of the target's CPU.
    pub estimated_cost_pct_median: Option<f64>,
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The medians of every (workload, variant) that ran, in the settings' order.
pub fn medians(settings: &Settings, runs: &[Run]) -> Vec<Median> {
    let mut out = Vec::new();
    for &workload in &settings.workloads {
        let of = |variant: Variant| {
            runs.iter()
                .filter(move |r| r.workload == workload && r.variant == variant)
        };
        let baseline = median(&mut of(Variant::Baseline).map(|r| r.value).collect::<Vec<_>>());
        let baseline_cpu = median(
            &mut of(Variant::Baseline)
                .filter_map(|r| r.target_cpu_us_per_op)
                .collect::<Vec<_>>(),
        );
        for &variant in &settings.variants {
            let mine: Vec<&Run> = of(variant).collect();
            let Some(value_median) = median(&mut mine.iter().map(|r| r.value).collect::<Vec<_>>())
            else {
                continue;
            };
            let ratios_per_repetition = mine
                .iter()
                .filter_map(|run| {
                    let base = of(Variant::Baseline).find(|b| b.repetition == run.repetition)?;
                    (base.value > 0.0).then(|| run.value / base.value)
                })
                .collect();
            let collect = |f: &dyn Fn(&Run) -> Option<f64>| {
                median(&mut mine.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
            };
            let target_cpu_us_per_op_median = collect(&|r| r.target_cpu_us_per_op);
            out.push(Median {
                workload,
                variant,
                unit: workload.unit(),
                runs: mine.len(),
                value_median,
                ratio: baseline.filter(|&b| b > 0.0).map(|b| value_median / b),
                ratios_per_repetition,
                target_cpu_us_per_op_median,
                target_cpu_ratio: target_cpu_us_per_op_median
                    .zip(baseline_cpu.filter(|&b| b > 0.0))
                    .map(|(mine, base)| mine / base),
                agent_cpu_pct_median: collect(&|r| Some(r.agent_cost?.cpu_pct)),
                events_median: collect(&|r| Some(r.agent_counted.as_ref()?.events as f64)),
                lost_median: collect(&|r| Some(r.agent_counted.as_ref()?.lost_total? as f64)),
                estimated_cost_pct_median: collect(&|r| {
                    r.agent_counted.as_ref()?.estimated_cost_pct
                }),
                agent_max_rss_kib_max: mine.iter().filter_map(|r| r.agent_cost?.max_rss_kib).max(),
            });
        }
    }
    out
}

/// results.md: the ratio table, the agents' own cost, and how the numbers were taken.
pub fn markdown(results: &Results) -> String {
    let settings = &results.settings;
    let mut md = String::new();
    let _ = writeln!(md, "# tls-probe bench results\n");
    let machine = &results.machine;
    let _ = writeln!(
        md,
        "`cargo xtask bench{}` on {}: {} CPUs, Linux {}, tls-probe {}; {} s per measurement, \
         {} repetition(s), variants interleaved round-robin (the order rotates every \
         repetition). Load average before/after: {} / {}. Raw numbers: `results.json`.\n",
        if results.smoke { " --smoke" } else { "" },
        results.date_utc,
        machine.nproc,
        machine.kernel,
        results.software.tls_probe_commit.as_deref().unwrap_or("?"),
        settings.duration_s,
        settings.repetitions,
        machine.loadavg_start.as_deref().unwrap_or("?"),
        machine.loadavg_end.as_deref().unwrap_or("?"),
    );
    let _ = writeln!(
        md,
        "Each cell: median / baseline median, then the median itself (in brackets: each \
         repetition's ratio to its own baseline).\n"
    );
    let header: Vec<&str> = settings.variants.iter().map(|v| v.title()).collect();
    let _ = writeln!(md, "| workload | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(header.len()));
    for &workload in &settings.workloads {
        let mut cells = Vec::new();
        for &variant in &settings.variants {
            let cell = find(results, workload, variant).map_or_else(
                || "-".to_owned(),
                |m| match (variant, m.ratio) {
                    (Variant::Baseline, _) | (_, None) => {
                        format!("{} {}", count(m.value_median), m.unit)
                    }
                    (_, Some(ratio)) => format!(
                        "**{ratio:.2}** · {} [{}]",
                        count(m.value_median),
                        m.ratios_per_repetition
                            .iter()
                            .map(|r| format!("{r:.2}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                },
            );
            cells.push(cell);
        }
        let _ = writeln!(md, "| {} | {} |", workload.describe(), cells.join(" | "));
    }

    let _ = writeln!(
        md,
        "\nCPU time the target spent per operation (request, handshake or wake-up), in µs: \
         the probes run on the target's account, and this measure moves little when other \
         work competes for the CPUs. Cells: ratio to baseline, then the median.\n"
    );
    let _ = writeln!(md, "| workload | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(header.len()));
    for &workload in &settings.workloads {
        let cells: Vec<String> = settings
            .variants
            .iter()
            .map(|&variant| match find(results, workload, variant) {
                Some(Median {
                    target_cpu_us_per_op_median: Some(us),
                    target_cpu_ratio,
                    ..
                }) => match (variant, target_cpu_ratio) {
                    (Variant::Baseline, _) | (_, None) => format!("{us:.1} µs"),
                    (_, Some(ratio)) => format!("**{ratio:.2}** · {us:.1} µs"),
                },
                _ => "-".to_owned(),
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", workload.name(), cells.join(" | "));
    }

    let _ = writeln!(
        md,
        "\nThe agents' own cost: CPU time of the agent process (user + system, % of one core) \
         over the load, and its peak RSS (VmHWM). Probe time spent inside the target is not in \
         it: that shows as the target's lost throughput above, and as tls-probe's own estimate \
         of it (the median of `probes.estimated_cost_pct` over the snapshots of the \
         measurement: the probe hits counted in the kernel times the cost of a hit measured \
         on these machines, 4 µs per uprobe and 0.2 µs per tracepoint, as a share of the \
         target's CPU time), which the machine's noise does not move.\n"
    );
    let _ = writeln!(
        md,
        "| workload | agent | CPU (median) | max RSS | events (median) | lost (median) | \
         estimated probe cost (median) |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|");
    for m in results
        .medians
        .iter()
        .filter(|m| m.variant != Variant::Baseline)
    {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            m.workload.name(),
            m.variant.title(),
            m.agent_cpu_pct_median
                .map_or("?".into(), |c| format!("{c:.1}%")),
            m.agent_max_rss_kib_max
                .map_or("?".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
            m.events_median.map_or("?".into(), count),
            m.lost_median.map_or("n/a".into(), count),
            m.estimated_cost_pct_median
                .map_or("n/a".into(), |p| format!("{p:.1}% of target CPU")),
        );
    }
    notes(results, &mut md);
    md
}

/// How each number was taken, so the table can be read without the source.
fn notes(results: &Results, md: &mut String) {
    let settings = &results.settings;
    let _ = writeln!(md, "\nHow:\n");
    let _ = writeln!(
        md,
        "- nginx ({}) runs one worker returning `200 ok` over TLS ({}) on 127.0.0.1; the \
         agents attach to the worker. wrk ({}) warms it up for {} s first.",
        results.software.nginx.as_deref().unwrap_or("?"),
        protocols(results),
        results.software.wrk.as_deref().unwrap_or("?"),
        settings.warmup_s,
    );
    if settings.workloads.contains(&Workload::Handshake) {
        let (requests, resumed) = results
            .runs
            .iter()
            .filter_map(|run| match &run.detail {
                Detail::Wrk {
                    nginx_log: Some(log),
                    ..
                } => Some((log.requests, log.resumed_sessions + log.reused_connections)),
                _ => None,
            })
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        let _ = writeln!(
            md,
            "- handshake: a server with `ssl_session_cache off; ssl_session_tickets off;`, and \
             `Connection: close`. wrk offers its previous session on every reconnect; nginx's \
             `$connection_requests` and `$ssl_session_reused`, logged for all {} requests, show \
             {} resumed or kept connections: each request is a new full RSA-2048 handshake.",
            count(requests as f64),
            count(resumed as f64),
        );
    }
    if settings.workloads.contains(&Workload::SpinLoop) {
        let _ = writeln!(
            md,
            "- spin-loop: `tls-probe-scenarios spin-loop`, a client that keeps EPOLLOUT armed \
             while SSL_read wants READ; the value is its wake-ups per second (DONE counts)."
        );
    }
    if settings.variants.contains(&Variant::Bpftrace) {
        let _ = writeln!(
            md,
            "- bpftrace ({}): the probes of tls-probe's full mode (uprobes and uretprobes on \
             SSL_read, SSL_write, SSL_peek, their _ex forms, SSL_get_error, SSL_do_handshake, \
             SSL_accept and SSL_connect; uprobes on SSL_free and libcrypto's key operations \
             and ERR_vset_error; the epoll, socket I/O, accept, connect and close syscall \
             tracepoints), each counting into a map, with `-p PID` and a pid filter. Before 0.20, bpftrace ignores `-p` for uprobes in shared \
             libraries, so its probes also trap in wrk's own SSL calls: its throughput ratio \
             includes a slowed load generator, its CPU per operation does not.",
            results.software.bpftrace.as_deref().unwrap_or("?"),
        );
    }
}

fn protocols(results: &Results) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for run in &results.runs {
        if let Detail::Wrk {
            nginx_log: Some(log),
            ..
        } = &run.detail
        {
            for protocol in &log.protocols {
                if !seen.contains(&protocol.as_str()) {
                    seen.push(protocol);
                }
            }
        }
    }
    if seen.is_empty() {
        "TLS 1.2 or 1.3".into()
    } else {
        seen.join(", ")
    }
}

fn find(results: &Results, workload: Workload, variant: Variant) -> Option<&Median> {
    results
        .medians
        .iter()
        .find(|m| m.workload == workload && m.variant == variant)
}

/// 1234567.8 -> "1,234,568"; small values keep a decimal unless they are whole.
pub fn count(value: f64) -> String {
    if value.abs() < 100.0 && value.fract() != 0.0 {
        return format!("{value:.1}");
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        assert_eq!(count(1234567.8), "1,234,568");
        assert_eq!(count(999.0), "999");
        assert_eq!(count(12.34), "12.3");
        assert_eq!(count(0.0), "0");
    }
}
