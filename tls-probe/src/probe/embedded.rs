//! What the embedded eBPF object says about itself, read before it is loaded: the wire ABI
//! it was built against, and the programs it holds.

use anyhow::{Context as _, Result, anyhow, bail};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use tls_probe_common::WIRE_VERSION;

/// The symbol the eBPF crate puts its `WIRE_VERSION` in (tls-probe-ebpf/src/main.rs).
const WIRE_SYMBOL: &str = "TLS_PROBE_WIRE_VERSION";

/// The wire version `obj` was built against.
pub fn wire_version(obj: &[u8]) -> Result<u32> {
    let file = object::File::parse(obj).context("parsing the embedded eBPF object")?;
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(WIRE_SYMBOL))
        .ok_or_else(|| anyhow!("the eBPF object has no {WIRE_SYMBOL}"))?;
    let section = sym
        .section_index()
        .and_then(|i| file.section_by_index(i).ok())
        .ok_or_else(|| anyhow!("{WIRE_SYMBOL} is in no section"))?;
    let data = section.data()?;
    let at = usize::try_from(sym.address() - section.address())?;
    let bytes = data
        .get(at..at + 4)
        .ok_or_else(|| anyhow!("{WIRE_SYMBOL} lies outside its section"))?;
    Ok(u32::from_le_bytes(bytes.try_into()?))
}

/// Refuses an object whose records this build would misread.
pub fn check_wire_version(obj: &[u8]) -> Result<()> {
    if obj.is_empty() {
        bail!(
            "this tls-probe was built without its eBPF programs (AYA_BUILD_SKIP=1); rebuild it with `cargo xtask build` or plain `cargo build`"
        );
    }
    let theirs = wire_version(obj)?;
    if theirs != WIRE_VERSION {
        bail!(
            "the embedded eBPF programs write wire version {theirs} but this tls-probe reads version {WIRE_VERSION}: the two halves were built from different sources; rebuild both with `cargo build`"
        );
    }
    Ok(())
}

/// The names of every program (a function symbol in an executable section) in `obj`.
pub fn program_names(obj: &[u8]) -> Result<Vec<String>> {
    let file = object::File::parse(obj).context("parsing the embedded eBPF object")?;
    Ok(file
        .symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.is_global())
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{
        inventory,
        loader::{EBPF_OBJECT, LinkKind},
    };

    #[test]
    #[cfg_attr(
        ebpf_object_skipped,
        ignore = "built with AYA_BUILD_SKIP=1: there is no eBPF object to read"
    )]
    fn the_embedded_object_speaks_this_wire_version() {
        assert_eq!(wire_version(EBPF_OBJECT).unwrap(), WIRE_VERSION);
        check_wire_version(EBPF_OBJECT).unwrap();
    }

    #[test]
    #[cfg_attr(
        ebpf_object_skipped,
        ignore = "built with AYA_BUILD_SKIP=1: there is no eBPF object to read"
    )]
    fn every_program_the_loader_names_exists_in_the_object() {
        let names = program_names(EBPF_OBJECT).unwrap();
        let wanted = LinkKind::Multi
            .programs()
            .into_iter()
            .chain(LinkKind::PerFunction.programs())
            .chain(
                inventory::ALWAYS
                    .iter()
                    .chain(inventory::SOCKIO)
                    .map(|tp| tp.name.to_owned()),
            );
        let mut absent: Vec<String> = wanted.filter(|w| !names.contains(w)).collect();
        absent.sort();
        assert!(absent.is_empty(), "not in the object: {absent:?}");
    }

    #[test]
    fn a_stale_or_missing_object_is_refused_with_what_to_do() {
        let err = check_wire_version(&[]).unwrap_err().to_string();
        assert!(err.contains("AYA_BUILD_SKIP"), "{err}");
        let err = check_wire_version(b"not an ELF").unwrap_err().to_string();
        assert!(err.contains("eBPF object"), "{err}");
    }
}
