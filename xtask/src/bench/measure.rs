//! The measurement loop: every variant of every workload, round-robin within each
//! repetition, each one a fresh agent attached to the target for one load.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{
    Variant,
    agent::Agent,
    nginx::Nginx,
    proc,
    report::{self, Run, Settings},
    workload::{self, Measured, Scenario, Workload},
};

/// What every measurement needs.
pub struct Ctx {
    pub tls_probe: PathBuf,
    /// The scenario program (`tls-probe-scenarios`), for the spin-loop workload.
    pub scenarios: PathBuf,
    pub bpftrace: Option<PathBuf>,
    pub dir: PathBuf,
    pub duration: u32,
}

pub fn measure_all(ctx: &Ctx, settings: &Settings) -> Result<Vec<Run>> {
    let nginx = if settings.workloads.iter().any(|w| w.needs_nginx()) {
        let nginx = Nginx::start(&ctx.dir)?;
        for &workload in settings.workloads.iter().filter(|w| w.needs_nginx()) {
            workload::wrk(&nginx, workload, settings.warmup_s)
                .with_context(|| format!("warming up nginx with the {} load", workload.name()))?;
        }
        Some(nginx)
    } else {
        None
    };
    let total = settings.repetitions as usize
        * settings
            .workloads
            .iter()
            .map(|&w| settings.variants.iter().filter(|v| v.applies_to(w)).count())
            .sum::<usize>();
    let mut runs = Vec::with_capacity(total);
    for repetition in 1..=settings.repetitions {
        for &workload in &settings.workloads {
            let mut order: Vec<Variant> = settings
                .variants
                .iter()
                .copied()
                .filter(|v| v.applies_to(workload))
                .collect();
            let shift = (repetition as usize - 1) % order.len();
            order.rotate_left(shift);
            for (position, variant) in (1..).zip(order) {
                let tag = format!("r{repetition}-{}-{}", workload.name(), variant.name());
                let run = measure(ctx, nginx.as_ref(), workload, variant, &tag)
                    .with_context(|| format!("measuring {tag}"))?;
                eprintln!(
                    "bench: [{}/{total}] repetition {repetition} {} {}: {}",
                    runs.len() + 1,
                    workload.name(),
                    variant.name(),
                    progress(&run)
                );
                runs.push(Run {
                    repetition,
                    position,
                    ..run
                });
            }
        }
    }
    if let Some(nginx) = nginx {
        nginx.stop()?;
    }
    Ok(runs)
}

/// One measurement: start the target (the scenario) or reuse it (nginx's worker), attach
/// the variant's agent, run the load, sample the agent's cost, stop the agent.
fn measure(
    ctx: &Ctx,
    nginx: Option<&Nginx>,
    workload: Workload,
    variant: Variant,
    tag: &str,
) -> Result<Run> {
    let mut scenario = None;
    let pid = match (workload, nginx) {
        (Workload::SpinLoop, _) => {
            let started = Scenario::start(&ctx.scenarios, ctx.duration, &ctx.dir, tag)?;
            let pid = started.pid;
            scenario = Some(started);
            pid
        }
        (_, Some(nginx)) => nginx.worker,
        (_, None) => unreachable!("nginx runs for every nginx workload"),
    };
    if let Some(seconds) = variant.load_seconds_from_attach(ctx.duration) {
        let nginx = nginx.context("the from-attach variants run on nginx")?;
        return measure_from_attach(ctx, nginx, workload, variant, seconds, tag);
    }
    // `watch` finds nginx and these among the host's processes: idle, with libssl mapped
    // (the openssl tool encrypting a stdin that never comes), killed on drop.
    let _idle: Vec<proc::Guard> = if variant == Variant::Watch {
        (0..10)
            .map(|_| {
                let mut c = std::process::Command::new("openssl");
                c.args([
                    "enc",
                    "-aes-128-cbc",
                    "-pbkdf2",
                    "-pass",
                    "pass:x",
                    "-out",
                    "/dev/null",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
                c.spawn()
                    .map(|child| proc::Guard::new("an idle openssl", child))
                    .context("starting an idle openssl process")
            })
            .collect::<Result<_>>()?
    } else {
        Vec::new()
    };
    let agent = match variant {
        Variant::Baseline => None,
        Variant::Watch => Some(Agent::tls_probe_watch(&ctx.tls_probe, &ctx.dir, tag)?),
        Variant::AutoAttach | Variant::AutoAttach30 => unreachable!("measured above"),
        Variant::Auto | Variant::Light | Variant::Full => Some(Agent::tls_probe(
            &ctx.tls_probe,
            variant.name(),
            pid,
            &ctx.dir,
            tag,
        )?),
        Variant::Bpftrace => {
            let bpftrace = ctx
                .bpftrace
                .as_deref()
                .context("bpftrace is not installed")?;
            Some(Agent::bpftrace(bpftrace, pid, &ctx.dir, tag)?)
        }
    };
    let target_before = proc::cpu_ticks(pid);
    let Measured { value, detail } = match (&mut scenario, nginx) {
        (Some(scenario), _) => scenario.run()?,
        (None, Some(nginx)) => workload::wrk(nginx, workload, ctx.duration)?,
        (None, None) => unreachable!("a target was started above"),
    };
    let target_cpu_s = target_before
        .zip(proc::cpu_ticks(pid))
        .map(|(before, after)| proc::ticks_to_secs(after.saturating_sub(before)));
    let agent_cost = agent.as_ref().and_then(Agent::cost);
    let agent_counted = agent.map(Agent::stop).transpose()?;
    if let Some(scenario) = scenario {
        scenario.finish()?;
    }
    if let Some(nginx) = nginx {
        nginx.check_worker()?;
    }
    Ok(Run {
        repetition: 0,
        position: 0,
        workload,
        variant,
        unit: workload.unit(),
        value,
        target_cpu_us_per_op: target_cpu_s
            .zip(detail.operations().filter(|&n| n > 0))
            .map(|(cpu_s, n)| cpu_s * 1e6 / n as f64),
        target_cpu_s,
        detail,
        agent_cost,
        agent_counted,
    })
}

/// The load runs `seconds`; tls-probe (default mode) attaches 0.5 s in and stops itself
/// (`--duration`) 0.5 s before the load ends: what the user pays from attach to exit,
/// escalation windows, link closing and stop included, in one number.
fn measure_from_attach(
    ctx: &Ctx,
    nginx: &Nginx,
    workload: Workload,
    variant: Variant,
    seconds: u32,
    tag: &str,
) -> Result<Run> {
    use std::time::{Duration, Instant};

    let pid = nginx.worker;
    let target_before = proc::cpu_ticks(pid);
    let (measured, agent_cost, agent_counted) = std::thread::scope(|scope| -> Result<_> {
        let load = scope.spawn(|| workload::wrk(nginx, workload, seconds));
        std::thread::sleep(Duration::from_millis(500));
        let attached_for = f64::from(seconds) - 1.0;
        let agent = Agent::tls_probe_from_attach(&ctx.tls_probe, pid, attached_for, &ctx.dir, tag)?;
        // The agent's cost over its run, sampled just before it stops itself.
        let sample_at = Instant::now() + Duration::from_secs_f64((attached_for - 0.3).max(0.1));
        std::thread::sleep(sample_at.saturating_duration_since(Instant::now()));
        let cost = agent.cost();
        let measured = load
            .join()
            .map_err(|_| anyhow::anyhow!("the load thread panicked"))??;
        let counted = agent.stop()?;
        Ok((measured, cost, counted))
    })?;
    let target_cpu_s = target_before
        .zip(proc::cpu_ticks(pid))
        .map(|(before, after)| proc::ticks_to_secs(after.saturating_sub(before)));
    nginx.check_worker()?;
    let Measured { value, detail } = measured;
    Ok(Run {
        repetition: 0,
        position: 0,
        workload,
        variant,
        unit: workload.unit(),
        value,
        target_cpu_us_per_op: target_cpu_s
            .zip(detail.operations().filter(|&n| n > 0))
            .map(|(cpu_s, n)| cpu_s * 1e6 / n as f64),
        target_cpu_s,
        detail,
        agent_cost,
        agent_counted: Some(agent_counted),
    })
}

fn progress(run: &Run) -> String {
    let mut line = format!("{} {}", report::count(run.value), run.unit);
    if let Some(cost) = run.agent_cost {
        line += &format!(
            "; agent {:.1}% CPU, {} KiB max RSS",
            cost.cpu_pct,
            cost.max_rss_kib.map_or("?".into(), |k| k.to_string())
        );
    }
    if let Some(counted) = &run.agent_counted {
        line += &format!("; {} events", counted.events);
        if let Some(lost) = counted.lost_total {
            line += &format!(", {lost} lost");
        }
    }
    line
}
