//! asyncio-spin: a WANT loop in a real Python asyncio program (`asyncio_spin.py`, embedded):
//! ssl.SSLObject over MemoryBIOs, the socket I/O in the event loop and not in the SSL calls,
//! a writer callback left armed while SSLObject.read() wants READ.
//!
//! The scenario program writes its identity and the script to a scratch directory and
//! execs `python3` on it: the pid the READY line names is the Python program's (and the
//! libssl it maps is the one Python's `ssl` loaded). It therefore runs only as its own
//! program, never in-process.

use std::{convert::Infallible, os::unix::process::CommandExt, process::Command, time::Duration};

use anyhow::Context;

use crate::tls::Identity;

const SCRIPT: &str = include_str!("asyncio_spin.py");

pub fn exec(duration: Duration, wait_stdin: bool) -> anyhow::Result<Infallible> {
    let dir = std::env::temp_dir().join(format!("tls-probe-asyncio-spin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let id = Identity::generate()?;
    let (cert, key, script) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("spin.py"),
    );
    std::fs::write(&cert, id.cert.to_pem()?)?;
    std::fs::write(&key, id.key.private_key_to_pem_pkcs8()?)?;
    std::fs::write(&script, SCRIPT)?;
    let err = Command::new("python3")
        .arg(&script)
        .arg(&cert)
        .arg(&key)
        .arg(duration.as_secs_f64().to_string())
        .arg(if wait_stdin { "1" } else { "0" })
        .exec();
    Err(err).context("running python3 (the asyncio-spin scenario is a Python asyncio program)")
}
