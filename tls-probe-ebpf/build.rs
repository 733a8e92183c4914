//! Rebuild when bpf-linker changes: aya-build cannot see it as a dependency.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
