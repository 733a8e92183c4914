//! `mixed`: one TLS service process with a spin loop, a handshake storm and healthy
//! connections side by side, the default of `tls-probe demo`.
//!
//! It runs the threads of `spin-loop`, `handshake-storm` and `healthy` unchanged, each
//! with its roles named after its part ("spin-client", "storm-server", "healthy-client"),
//! so that READY and DONE say which thread belongs to which behaviour. A profiler looking
//! at this one pid has to tell the three apart by thread and connection.

use super::{MIXED_PARTS, runner::Runner, setup};

pub fn run(runner: &mut Runner) -> anyhow::Result<()> {
    for (prefix, name) in MIXED_PARTS {
        runner.group(prefix, |r| setup(name, r))?;
    }
    Ok(())
}
