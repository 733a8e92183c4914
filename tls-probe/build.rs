//! Builds the eBPF programs (tls-probe-ebpf) with nightly for bpfel-unknown-none and leaves
//! the object in OUT_DIR, where src/probe/loader.rs embeds it. `AYA_BUILD_SKIP=1` skips
//! this for a quick `cargo check`; the embedded object is then empty.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../tls-probe-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // Leave a placeholder so include_bytes_aligned! compiles; loading it fails clearly.
        let out = PathBuf::from(env::var("OUT_DIR")?).join("tls-probe");
        if !out.exists() {
            fs::write(out, [])?;
        }
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tls-probe-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
