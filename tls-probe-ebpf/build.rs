//! Rebuild when bpf-linker changes: aya-build cannot see it as a dependency. Also sets
//! `bpf_target_arch` (the architecture the programs read registers of), as aya-ebpf does.
fn main() -> aya_build::Result<()> {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    aya_build::emit_bpf_target_arch_cfg()
}
