//! Command-line interface: what the user can type.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The version and the git commit it was built from (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TLS_PROBE_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(name = "tls-probe", version = VERSION, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach to running processes and report their TLS event-loop behaviour.
    Attach(AttachArgs),
    /// Run a scenario workload (the separate tls-probe-scenarios program) and attach to it.
    Demo(DemoArgs),
    /// Watch the whole host, unattended: every process that maps a libssl or carries
    /// OpenSSL in its executable, now and as they appear (exec, dlopen), in the default
    /// `auto` mode each, under a host-wide probe cost budget. Findings go to /metrics and
    /// to a rotating NDJSON file (at least one of --metrics-addr and -o), and as lines to
    /// stderr.
    Watch(WatchArgs),
    /// Read an NDJSON export and print a report; re-runs the engine when it holds events.
    Report(ReportArgs),
    /// Start a command with the probes in place before it runs, so its first handshake is
    /// seen; exit with its exit status when it ends.
    Run(RunArgs),
    /// Write the man pages and shell completions into DIR (for packaging: `cargo xtask dist`).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// Gets man/*.1 and completions/{tls-probe.bash,_tls-probe,tls-probe.fish}.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Write NDJSON to FILE (`-` for stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write every decoded probe event to the output.
    #[arg(long)]
    pub events: bool,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS", value_parser = positive_secs, allow_hyphen_values = true)]
    pub duration: Option<f64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// What to probe: `auto` (the default) keeps the cheap probes on and turns on the
    /// per-call probes of a process only while cheap signals show it suspicious; `full`
    /// traces every SSL_read/SSL_write/SSL_get_error call (a uprobe trap each, expensive on
    /// busy servers); `light` keeps only syscall tracepoints and the once-per-connection
    /// handshake and error probes.
    #[arg(long, value_enum, default_value_t = ProbeMode::Auto)]
    pub mode: ProbeMode,
    /// Print findings as lines on stderr instead of opening the live dashboard. The
    /// dashboard opens only when stdout is a terminal not taken by `-o -` or `--events`.
    #[arg(long)]
    pub no_tui: bool,
}

impl OutputArgs {
    /// Whether stdout carries output of its own: NDJSON (`-o -`) or event lines (`--events`
    /// without `-o`).
    pub fn stdout_claimed(&self) -> bool {
        self.output.as_deref() == Some(std::path::Path::new("-"))
            || (self.events && self.output.is_none())
    }
}

/// Which library to probe and which processes: the same for `attach` and `run`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Use this TLS library instead of the one tls-probe finds (the libssl in
    /// /proc/PID/maps, or for `run` the one the command links, else the system libssl).
    #[arg(long, value_name = "PATH")]
    pub libssl: Option<PathBuf>,
    /// Trace only the target processes, not their descendants. By default descendants are
    /// traced too: those running at attach and those forked later (e.g. nginx workers
    /// after a reload, or the processes a `run` command starts).
    #[arg(long)]
    pub no_children: bool,
}

/// How much to probe.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProbeMode {
    /// Every SSL call (per-call uprobes on the hot path).
    Full,
    /// Syscall tracepoints and handshake probes only.
    Light,
    /// Light, plus the per-call probes for a suspicious process, for a while.
    #[default]
    Auto,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AttachArgs {
    /// Process id to attach to (repeatable).
    #[arg(short, long = "pid", value_name = "PID", required_unless_present = "comm", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Attach to every process whose command name (or executable's file name) is NAME
    /// (repeatable; combines with --pid).
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub comm: Vec<String>,
    /// A target that has no TLS library mapped yet is watched, and attached once it loads
    /// one (dlopen, or exec of a TLS program), instead of being an error.
    #[arg(long)]
    pub wait_for_library: bool,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Watch only processes whose command name (or executable's file name) is NAME
    /// (repeatable; default: every process with a TLS library).
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub include_comm: Vec<String>,
    /// Never watch processes whose command name (or executable's file name) is NAME
    /// (repeatable; applied after --include-comm). tls-probe never watches itself.
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub exclude_comm: Vec<String>,
    /// Watch only the descendants of PID (repeatable): a container's init, a test harness,
    /// a service manager's unit. Combines with the name lists.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub descendants_of: Vec<u32>,
    /// The host-wide probe cost budget, in per cent of one core, estimated from the
    /// kernel's probe-hit counters (4 µs a uprobe hit, 0.2 µs a tracepoint hit). Above it
    /// the busiest processes are sampled (traced 1 s in every 10; never one attached in the
    /// last 10 s or with an open finding); the snapshots say which.
    #[arg(long, value_name = "PCT", default_value_t = 1.0, value_parser = positive_pct)]
    pub budget_pct: f64,
    /// Trace at most N processes at once; further ones are left alone until some exit.
    #[arg(long, value_name = "N", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_processes: u32,
    /// Label at most N processes in /metrics; the others are summed into one series with
    /// pid="0" and comm="_other", so that the number of series stays bounded.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub metrics_max_processes: u32,
    /// Rotate the NDJSON output (-o FILE) when it passes BYTES (suffixes k, M, G): FILE
    /// becomes FILE.1 (FILE.1 becomes FILE.2, ...) and a new FILE starts with the `start`
    /// record again. 0 never rotates. With rotation, a FILE left by an earlier run is
    /// rotated away at start (FILE.1), not overwritten.
    #[arg(long, value_name = "BYTES", default_value = "100M", value_parser = byte_size)]
    pub rotate_size: u64,
    /// How many rotated files to keep (FILE.1 ... FILE.N); older ones are deleted.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rotate_keep: u32,
    /// Write NDJSON to FILE (`-` for stdout; rotation applies to files only).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Stop after SECS seconds (default: until SIGTERM or Ctrl-C).
    #[arg(long, value_name = "SECS", value_parser = positive_secs, allow_hyphen_values = true)]
    pub duration: Option<f64>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// What to probe in each process: `auto` (the default), `light` or `full` (as for
    /// attach; `full` on a whole host is rarely affordable).
    #[arg(long, value_enum, default_value_t = ProbeMode::Auto)]
    pub mode: ProbeMode,
}

/// A percentage above zero, at most 100.
fn positive_pct(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number (per cent of one core, e.g. 1 or 0.5)"))?;
    if v > 0.0 && v <= 100.0 {
        Ok(v)
    } else {
        Err(format!("`{s}`: must be above 0 and at most 100"))
    }
}

/// A size in bytes, with an optional k, M or G suffix (powers of 1024).
fn byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("`{s}` is not a size in bytes (e.g. 0, 65536, 512k, 100M, 1G)"))
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// The command to run and its arguments, after `--`.
    #[arg(value_name = "CMD", required = true, last = true)]
    pub command: Vec<std::ffi::OsString>,
}

/// A duration in seconds: a finite number above zero.
fn positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds (e.g. 10 or 2.5)"))?;
    if v > 0.0 && v.is_finite() {
        Ok(v)
    } else {
        Err(format!("`{s}`: must be a positive number of seconds"))
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// The scenario to run: healthy, spin-loop, busy-poll, bad-write-retry,
    /// handshake-storm, resumed-handshakes, concurrent-ssl or mixed (the default: a spin
    /// loop, a handshake storm and healthy connections in one process), async-stall,
    /// async-quick, async-no-jobs, asyncio-spin (a Python asyncio program: needs python3).
    /// --duration defaults to 20 s.
    pub scenario: Option<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// An NDJSON export written by `tls-probe attach -o FILE` (`-` for stdin).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_of(args: &[&str]) -> OutputArgs {
        let cli = Cli::try_parse_from(args).expect("parse");
        match cli.command {
            Command::Attach(a) => a.output,
            Command::Demo(d) => d.output,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn attach_follows_children_unless_told_not_to() {
        let attach = |args: &[&str]| match Cli::try_parse_from(args).expect("parse").command {
            Command::Attach(a) => a,
            other => panic!("{other:?}"),
        };
        assert!(
            !attach(&["tls-probe", "attach", "-p", "1"])
                .target
                .no_children
        );
        assert!(
            attach(&["tls-probe", "attach", "-p", "1", "--no-children"])
                .target
                .no_children
        );
    }

    #[test]
    fn nonsensical_flags_are_refused_by_the_parser() {
        let err = |args: &[&str]| Cli::try_parse_from(args).unwrap_err().to_string();
        assert!(err(&["tls-probe", "attach", "-p", "0"]).contains("0 is not in 1.."));
        assert!(err(&["tls-probe", "attach", "--comm", ""]).contains("a value is required"));
        assert!(err(&["tls-probe", "attach"]).contains("--pid"));
        for d in ["0", "-1", "nan", "inf", "abc"] {
            let e = err(&["tls-probe", "attach", "-p", "1", "--duration", d]);
            assert!(e.contains("seconds"), "--duration {d}: {e}");
        }
        assert!(err(&["tls-probe", "run"]).contains("CMD"));
        assert!(err(&["tls-probe", "run", "sleep"]).contains("unexpected argument"));
    }

    #[test]
    fn run_takes_a_command_after_the_separator_and_attach_takes_names() {
        let cli = Cli::try_parse_from([
            "tls-probe",
            "run",
            "--no-children",
            "--duration",
            "2",
            "--",
            "curl",
            "-k",
            "--x",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!()
        };
        assert!(r.target.no_children);
        assert_eq!(r.output.duration, Some(2.0));
        assert_eq!(r.command, ["curl", "-k", "--x"]);
        let cli = Cli::try_parse_from(["tls-probe", "attach", "--comm", "nginx", "-p", "7"]);
        let Command::Attach(a) = cli.unwrap().command else {
            panic!()
        };
        assert_eq!((a.comm, a.pids), (vec!["nginx".to_owned()], vec![7]));
    }

    #[test]
    fn attach_and_run_take_the_same_target_flags() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let flags = ["--libssl", "/x/libssl.so.3", "--no-children"];
        let cli = Cli::try_parse_from(
            ["tls-probe", "attach", "-p", "1"]
                .iter()
                .chain(&flags)
                .copied(),
        );
        let Command::Attach(a) = cli.unwrap().command else {
            panic!()
        };
        let cli = Cli::try_parse_from(
            ["tls-probe", "run"]
                .iter()
                .chain(&flags)
                .chain(&["--", "true"])
                .copied(),
        );
        let Command::Run(r) = cli.unwrap().command else {
            panic!()
        };
        for t in [a.target, r.target] {
            assert_eq!(
                t.libssl.as_deref(),
                Some(std::path::Path::new("/x/libssl.so.3"))
            );
            assert!(t.no_children);
        }
    }

    #[test]
    fn watch_defaults_and_sizes() {
        let watch = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Watch(w)) => Ok(w),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        let w = watch(&["tls-probe", "watch"]).unwrap();
        assert_eq!(
            (w.budget_pct, w.rotate_size, w.rotate_keep),
            (1.0, 100 << 20, 5)
        );
        assert_eq!(w.mode, ProbeMode::Auto);
        let w = watch(&[
            "tls-probe",
            "watch",
            "--rotate-size",
            "512k",
            "--exclude-comm",
            "sshd",
            "--include-comm",
            "nginx",
        ])
        .unwrap();
        assert_eq!(w.rotate_size, 512 << 10);
        assert_eq!(
            (w.include_comm, w.exclude_comm),
            (vec!["nginx".to_owned()], vec!["sshd".to_owned()])
        );
        assert!(
            watch(&["tls-probe", "watch", "--rotate-size", "ten"])
                .unwrap_err()
                .contains("size in bytes")
        );
        assert!(
            watch(&["tls-probe", "watch", "--budget-pct", "0"])
                .unwrap_err()
                .contains("above 0")
        );
    }

    #[test]
    fn no_tui_and_what_claims_stdout() {
        let o = output_of(&["tls-probe", "attach", "--pid", "1"]);
        assert!(!o.no_tui && !o.stdout_claimed());
        let o = output_of(&["tls-probe", "demo", "spin-loop", "--no-tui"]);
        assert!(o.no_tui && !o.stdout_claimed());
        let o = output_of(&["tls-probe", "attach", "-p", "1", "-o", "-"]);
        assert!(o.stdout_claimed());
        let o = output_of(&["tls-probe", "attach", "-p", "1", "--events"]);
        assert!(o.stdout_claimed());
        let o = output_of(&[
            "tls-probe",
            "attach",
            "-p",
            "1",
            "--events",
            "-o",
            "x.ndjson",
        ]);
        assert!(!o.stdout_claimed(), "events go to the file");
    }
}
