//! One mapped ELF file: what unwinding needs (`.eh_frame`, `.eh_frame_hdr`, `.text`, its
//! load segments) and what naming needs (`.symtab`, else `.dynsym`; DWARF line info from the
//! file or its separate debug file under `/usr/lib/debug/.build-id/`). Read once per build
//! id (or per path for a file without one) and shared by every process that maps it.

use std::{borrow::Cow, ops::Range, path::Path, sync::Arc};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::engine::SymbolSource;

type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// A function symbol: [start, end) in the file's addresses.
struct Symbol {
    start: u64,
    end: u64,
    name: String,
}

/// What [`ElfInfo::name`] knows of an address.
pub struct Named {
    pub function: Option<String>,
    pub offset: Option<u64>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub symbols: SymbolSource,
}

pub struct ElfInfo {
    /// Its build id in hex, when it has one.
    pub build_id: Option<String>,
    /// (p_offset, p_vaddr, p_filesz) of each PT_LOAD segment.
    loads: Vec<(u64, u64, u64)>,
    /// The sections framehop reads, with their addresses.
    pub text: Option<(Range<u64>, Arc<[u8]>)>,
    pub eh_frame: Option<(Range<u64>, Arc<[u8]>)>,
    pub eh_frame_hdr: Option<(Range<u64>, Arc<[u8]>)>,
    pub got: Option<Range<u64>>,
    /// Function symbols by start address; `symbols_from` says which table.
    symbols: Vec<Symbol>,
    symbols_from: SymbolSource,
    dwarf: Option<addr2line::Context<Reader>>,
}

impl ElfInfo {
    /// Reads `data` (the file's bytes); `debug_root` is where separate debug files are
    /// looked up by build id (`/usr/lib/debug` as the process sees it).
    pub fn parse(data: &[u8], debug_root: &Path) -> Result<Self, object::Error> {
        let file = object::File::parse(data)?;
        let build_id = file
            .build_id()
            .ok()
            .flatten()
            .map(|id| id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        let loads = file
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, s.address(), size)
            })
            .collect();
        let section = |name: &str| {
            let s = file.section_by_name(name)?;
            let data = s.uncompressed_data().ok()?;
            Some((
                s.address()..s.address() + s.size(),
                Arc::<[u8]>::from(&*data),
            ))
        };
        let text = section(".text");
        let eh_frame = section(".eh_frame");
        let eh_frame_hdr = section(".eh_frame_hdr");
        let got = file
            .section_by_name(".got")
            .map(|s| s.address()..s.address() + s.size());

        let (mut symbols, mut symbols_from) =
            (function_symbols(file.symbols()), SymbolSource::Symtab);
        if symbols.is_empty() {
            symbols = function_symbols(file.dynamic_symbols());
            symbols_from = SymbolSource::Dynsym;
        }
        if symbols.is_empty() {
            symbols_from = SymbolSource::None;
        }
        symbols.sort_by_key(|s| s.start);

        let mut dwarf = load_dwarf(&file);
        if dwarf.is_none()
            && let Some(id) = &build_id
            && id.len() > 2
        {
            let path = debug_root
                .join(".build-id")
                .join(&id[..2])
                .join(format!("{}.debug", &id[2..]));
            if let Ok(bytes) = std::fs::read(&path)
                && let Ok(debug) = object::File::parse(&*bytes)
            {
                dwarf = load_dwarf(&debug);
                if symbols_from != SymbolSource::Symtab {
                    let more = function_symbols(debug.symbols());
                    if !more.is_empty() {
                        symbols = more;
                        symbols.sort_by_key(|s| s.start);
                        symbols_from = SymbolSource::Symtab;
                    }
                }
            }
        }
        Ok(Self {
            build_id,
            loads,
            text,
            eh_frame,
            eh_frame_hdr,
            got,
            symbols,
            symbols_from,
            dwarf,
        })
    }

    /// The file address that file offset `offset` is loaded at, from its PT_LOAD segment.
    pub fn vaddr_of_offset(&self, offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|&&(off, _, size)| {
                let start = off & !0xfff;
                offset >= start && offset < off + size.max(1)
            })
            .map(|&(off, vaddr, _)| (vaddr + offset).wrapping_sub(off))
    }

    /// Names the file address `addr`; `lookup` is the address to look up (a return address
    /// minus one, so that a call at a function's end is not taken for the next function).
    /// A name is given only when a symbol's range covers the address: never a guess.
    pub fn name(&self, addr: u64, lookup: u64) -> Named {
        let idx = self.symbols.partition_point(|s| s.start <= lookup);
        let sym = idx
            .checked_sub(1)
            .map(|i| &self.symbols[i])
            .filter(|s| lookup < s.end);
        let (file, line) = self
            .dwarf
            .as_ref()
            .and_then(|d| d.find_location(lookup).ok().flatten())
            .map_or((None, None), |l| (l.file.map(str::to_owned), l.line));
        let mut symbols = if sym.is_some() {
            self.symbols_from
        } else {
            SymbolSource::None
        };
        let mut function =
            sym.map(|s| addr2line::demangle_auto(Cow::from(s.name.as_str()), None).into_owned());
        let mut offset = sym.map(|s| addr - s.start);
        if function.is_none()
            && let Some(d) = &self.dwarf
            && let Ok(mut frames) = d.find_frames(lookup).skip_all_loads()
        {
            // No symbol (a stripped file with a separate debug file): the outermost
            // function DWARF places the address in.
            let mut last = None;
            while let Ok(Some(f)) = frames.next() {
                if let Some(name) = f.function.as_ref().and_then(|n| n.demangle().ok()) {
                    last = Some(name.into_owned());
                }
            }
            if last.is_some() {
                function = last;
                offset = None;
                symbols = SymbolSource::DebugInfo;
            }
        }
        if file.is_some() && symbols != SymbolSource::None {
            symbols = SymbolSource::DebugInfo;
        }
        Named {
            function,
            offset,
            file,
            line,
            symbols,
        }
    }
}

/// The sized function symbols of a table.
fn function_symbols<'d, S: ObjectSymbol<'d>>(syms: impl Iterator<Item = S>) -> Vec<Symbol> {
    syms.filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() > 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            Some(Symbol {
                start: s.address(),
                end: s.address() + s.size(),
                // Demangled when named (`ElfInfo::name`): a file has thousands.
                name: name.to_owned(),
            })
        })
        .collect()
}

/// The DWARF of `file`, when it has line info.
fn load_dwarf(file: &object::File<'_>) -> Option<addr2line::Context<Reader>> {
    file.section_by_name(".debug_info")?;
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, gimli::Error> {
        let data = file
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
            .unwrap_or(Cow::Borrowed(&[]));
        Ok(gimli::EndianArcSlice::new(Arc::from(&*data), endian))
    })
    .ok()?;
    addr2line::Context::from_dwarf(dwarf).ok()
}
