//! Where the per-call uprobes sit.
//!
//! A uprobe costs one trap when the kernel can emulate the instruction it replaces (`push`,
//! `call`, `jmp`, `nop`), and two when it must single-step it out of line. On this machine's
//! libssl 3.0, `SSL_read`, `SSL_write`, `SSL_peek` and their `_ex` forms all start with
//! `sub $imm,%rsp`: single-stepped. Measured here with a trace-event uprobe on a loop of
//! `SSL_read` calls: ~19 µs a hit at the entry, ~4.5 µs on an emulated instruction of the same
//! function; a uretprobe at the entry ~22 µs a call, ~8.5 µs on an emulated one.
//!
//! Each of those functions is a thin wrapper: it calls the library's internal
//! `ssl_read_internal(s, buf, num, &bytes)` (or the write/peek one), which starts with
//! `push`, with the caller's arguments unchanged, and converts its result. So the entry and
//! return probes go on that callee's first instruction, one site for a function and its
//! `_ex` form. The eBPF side tells which wrapper made the call from the return address's
//! offset in its page (the same in every process: libraries are mapped page-aligned), which
//! the cookie carries, and converts the result as the wrapper does. Where the code does not
//! have that shape (another build, LTO), the probes stay on the functions' entries.
//!
//! The other functions probed at their entry (`SSL_get_error`, the handshake calls,
//! `SSL_set_fd`, `SSL_free`) move to the first emulated instruction on their straight-line
//! start when the instructions before it only read: `SSL_get_error` starts `xor %eax,%eax;
//! test %esi,%esi; jle`, so its probes sit on the `jle`. Every call passes there, the
//! arguments are still in their registers, and the return address is still on top of the
//! stack, so a return probe works there too.

use std::{collections::BTreeMap, fs, path::Path};

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess,
    Register,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use tls_probe_common::{cookie, op};

/// A function and its `_ex` form, which share a callee in OpenSSL 1.1.1 and 3.x.
const PAIRS: [(&str, u32, &str, u32); 3] = [
    ("SSL_read", op::SSL_READ, "SSL_read_ex", op::SSL_READ_EX),
    ("SSL_write", op::SSL_WRITE, "SSL_write_ex", op::SSL_WRITE_EX),
    ("SSL_peek", op::SSL_PEEK, "SSL_peek_ex", op::SSL_PEEK_EX),
];

/// How far into a wrapper its call is looked for.
const WRAPPER_WINDOW: usize = 64;

/// A probe site on the callee shared by some per-call functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalleeSite {
    /// The file offset of the instruction the probes go on.
    pub file_offset: u64,
    /// The callee's address in the file's address space, for the `start` record.
    pub address: u64,
    /// The functions whose calls go through it.
    pub functions: Vec<&'static str>,
    /// The attach cookie ([`cookie::callee`]).
    pub cookie: u64,
}

/// Where the per-call probes of one library go: the functions moved to a callee, the rest
/// stay on their entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub sites: Vec<CalleeSite>,
    /// The per-call functions left on their entries whose first instruction is emulated
    /// already (a `push`, as in node's OpenSSL, built with frame pointers).
    pub emulated_entries: Vec<&'static str>,
    /// Functions whose entry (and return) probes moved to the first emulated instruction of
    /// their start: (function, file offset of that instruction).
    pub moved_entries: Vec<(&'static str, u64)>,
}

impl Placement {
    /// The site that covers `symbol`, if it was moved.
    pub fn site_of(&self, symbol: &str) -> Option<&CalleeSite> {
        self.sites.iter().find(|s| s.functions.contains(&symbol))
    }

    /// Where the entry probe of `symbol` goes when it was moved off a single-stepped first
    /// instruction.
    pub fn entry_of(&self, symbol: &str) -> Option<u64> {
        self.moved_entries
            .iter()
            .find(|(name, _)| *name == symbol)
            .map(|&(_, offset)| offset)
    }

    /// Reads `path` and places what can be placed; nothing when the file cannot be read or
    /// decoded (the probes then stay on the entries, which is always correct), or when
    /// `TLS_PROBE_PROBE_SITES=entry` asks for the entries (to compare, or to rule this out).
    pub fn of_file(path: &Path) -> Self {
        if std::env::var_os("TLS_PROBE_PROBE_SITES").is_some_and(|v| v == "entry") {
            return Self::default();
        }
        match fs::read(path) {
            Ok(data) => Self::of_elf(&data),
            Err(e) => {
                log::debug!("probe placement: cannot read {}: {e}", path.display());
                Self::default()
            }
        }
    }

    pub fn of_elf(data: &[u8]) -> Self {
        let Ok(file) = object::File::parse(data) else {
            return Self::default();
        };
        if file.architecture() != object::Architecture::X86_64 {
            return Self::default();
        }
        let code = Text::new(&file);
        let mut sites = Vec::new();
        for (plain, plain_op, ex, ex_op) in PAIRS {
            let found: Vec<_> = [(plain, plain_op, false), (ex, ex_op, true)]
                .into_iter()
                .filter_map(|(name, op, is_ex)| {
                    let va = code.symbol(name)?;
                    let call = wrapper_call(&code.bytes_at(va)?, va, is_ex)?;
                    Some((name, op, call))
                })
                .collect();
            let present = [plain, ex]
                .iter()
                .filter(|n| code.symbol(n).is_some())
                .count();
            // Every present function of the pair must go through the same callee: a callee
            // hit from a wrapper still probed at its entry would be counted twice.
            if found.is_empty() || found.len() != present {
                continue;
            }
            let callee = found[0].2.callee;
            if found.iter().any(|f| f.2.callee != callee) {
                continue;
            }
            let pages: Vec<u64> = found.iter().map(|f| f.2.return_site & 0xfff).collect();
            if pages.len() == 2 && pages[0] == pages[1] {
                continue;
            }
            let Some(at) = code
                .bytes_at(callee)
                .and_then(|b| emulated_start(&b, callee))
            else {
                continue;
            };
            let Some(file_offset) = code.file_offset(at) else {
                continue;
            };
            let calls: Vec<(u32, u64)> = found.iter().map(|f| (f.1, f.2.return_site)).collect();
            sites.push(CalleeSite {
                file_offset,
                address: at,
                functions: found.iter().map(|f| f.0).collect(),
                cookie: cookie::callee(&calls),
            });
        }
        let emulated_entries = PAIRS
            .iter()
            .flat_map(|&(a, _, b, _)| [a, b])
            .chain(["SSL_get_error"])
            .filter(|name| {
                !sites
                    .iter()
                    .any(|s: &CalleeSite| s.functions.contains(name))
            })
            .filter(|name| {
                code.symbol(name).is_some_and(|va| {
                    code.bytes_at(va).and_then(|b| emulated_start(&b, va)) == Some(va)
                })
            })
            .collect();
        let moved_entries = MOVABLE
            .iter()
            .filter_map(|&name| {
                let va = code.symbol(name)?;
                let at = first_emulated(&code.bytes_at(va)?, va)?;
                Some((name, code.file_offset(at)?))
            })
            .filter(|&(name, offset)| {
                code.symbol(name).and_then(|va| code.file_offset(va)) != Some(offset)
            })
            .collect();
        Self {
            sites,
            emulated_entries,
            moved_entries,
        }
    }
}

/// The functions probed at their entry, outside the per-call I/O pairs, that may move.
const MOVABLE: [&str; 6] = [
    "SSL_get_error",
    "SSL_do_handshake",
    "SSL_accept",
    "SSL_connect",
    "SSL_set_fd",
    "SSL_free",
];

/// The first instruction the kernel emulates (`push`, a conditional or direct jump, a
/// direct call, `nop`) on the straight-line start of the function at `va`, provided every
/// instruction before it only reads: no branch, no write to memory, to the stack pointer or
/// to an argument register. There, every call passes, its arguments are where they were at
/// the entry, and the return address is still on top of the stack.
fn first_emulated(bytes: &[u8], va: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, &bytes[..bytes.len().min(32)], va, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    for _ in 0..6 {
        let ins = decoder.decode();
        if ins.is_invalid() {
            return None;
        }
        let emulated = (ins.mnemonic() == Mnemonic::Push && ins.code() == Code::Push_r64)
            || ins.mnemonic() == Mnemonic::Nop
            || ins.code() == Code::Call_rel32_64
            || matches!(ins.code(), Code::Jmp_rel8_64 | Code::Jmp_rel32_64)
            || ins.flow_control() == FlowControl::ConditionalBranch && ins.is_jcc_short_or_near();
        if emulated {
            return Some(ins.ip());
        }
        if ins.flow_control() != FlowControl::Next {
            return None;
        }
        let used = info.info(&ins);
        if used
            .used_memory()
            .iter()
            .any(|m| !matches!(m.access(), OpAccess::Read | OpAccess::NoMemAccess))
        {
            return None;
        }
        for r in used.used_registers() {
            let writes = !matches!(r.access(), OpAccess::Read | OpAccess::CondRead);
            let full = r.register().full_register();
            if writes
                && matches!(
                    full,
                    Register::RSP | Register::RDI | Register::RSI | Register::RDX | Register::RCX
                )
            {
                return None;
            }
        }
    }
    None
}

/// The call a wrapper makes with its own arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct WrapperCall {
    callee: u64,
    /// The address after the call: the return address the callee sees.
    return_site: u64,
}

/// Decodes the start of a wrapper at `va`: the first control transfer must be a direct
/// call, and until it the first two arguments (ssl, buf) must be untouched, the length
/// only sign-extended, and for an `_ex` form the out pointer untouched too (the plain form
/// points it at a local, which the callee's return is read through). Conditional
/// branches before it lead to argument-check failures, which are then not recorded.
fn wrapper_call(bytes: &[u8], va: u64, is_ex: bool) -> Option<WrapperCall> {
    let window = &bytes[..bytes.len().min(WRAPPER_WINDOW)];
    let mut decoder = Decoder::with_ip(64, window, va, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.is_invalid() {
            return None;
        }
        match ins.flow_control() {
            FlowControl::Next | FlowControl::ConditionalBranch => {}
            FlowControl::Call if ins.code() == Code::Call_rel32_64 => {
                return Some(WrapperCall {
                    callee: ins.near_branch_target(),
                    return_site: ins.next_ip(),
                });
            }
            _ => return None,
        }
        let sign_extends_len = ins.code() == Code::Movsxd_r64_rm32
            && ins.op0_register() == Register::RDX
            && ins.op1_register() == Register::EDX;
        for used in info.info(&ins).used_registers() {
            let writes = matches!(
                used.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            );
            if !writes {
                continue;
            }
            let full = used.register().full_register();
            let kept = match full {
                Register::RDI | Register::RSI => false,
                Register::RDX => sign_extends_len,
                Register::RCX => !is_ex,
                _ => true,
            };
            if !kept {
                return None;
            }
        }
    }
    None
}

/// Where on the callee at `va` a probe is emulated: its first instruction if it is a
/// `push`, or the `push` right after an `endbr64` (the return address is still on top of
/// the stack there, so a return probe works too).
fn emulated_start(bytes: &[u8], va: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, &bytes[..bytes.len().min(16)], va, DecoderOptions::NONE);
    let first = decoder.decode();
    let push = |m: Mnemonic, code: Code| m == Mnemonic::Push && code == Code::Push_r64;
    if push(first.mnemonic(), first.code()) {
        return Some(va);
    }
    if first.mnemonic() == Mnemonic::Endbr64 {
        let second = decoder.decode();
        if push(second.mnemonic(), second.code()) {
            return Some(second.ip());
        }
    }
    None
}

/// The executable sections and function symbols of a file.
struct Text<'d> {
    symbols: BTreeMap<String, u64>,
    /// (address, file offset, bytes) of each executable section.
    sections: Vec<(u64, u64, &'d [u8])>,
}

impl<'d> Text<'d> {
    fn new(file: &object::File<'d>) -> Self {
        let mut symbols = BTreeMap::new();
        for sym in file.dynamic_symbols().chain(file.symbols()) {
            if sym.is_definition()
                && sym.kind() == object::SymbolKind::Text
                && let Ok(name) = sym.name()
            {
                let name = name.split('@').next().unwrap_or(name);
                if name.starts_with("SSL_") {
                    symbols.entry(name.to_owned()).or_insert(sym.address());
                }
            }
        }
        let sections = file
            .sections()
            .filter(|s| s.kind() == object::SectionKind::Text)
            .filter_map(|s| {
                let (offset, _) = s.file_range()?;
                Some((s.address(), offset, s.data().ok()?))
            })
            .collect();
        Self { symbols, sections }
    }

    fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).copied()
    }

    fn section_of(&self, va: u64) -> Option<&(u64, u64, &'d [u8])> {
        self.sections
            .iter()
            .find(|(addr, _, data)| va >= *addr && va < addr + data.len() as u64)
    }

    fn bytes_at(&self, va: u64) -> Option<Vec<u8>> {
        let (addr, _, data) = self.section_of(va)?;
        let start = (va - addr) as usize;
        Some(data[start..(start + WRAPPER_WINDOW).min(data.len())].to_vec())
    }

    fn file_offset(&self, va: u64) -> Option<u64> {
        let (addr, offset, _) = self.section_of(va)?;
        Some(offset + (va - addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out `code` at `va` for the decoder tests.
    fn call_of(code: &[u8], va: u64, is_ex: bool) -> Option<WrapperCall> {
        wrapper_call(code, va, is_ex)
    }

    // libssl 3.0's SSL_read: sub $0x18,%rsp; mov %fs:0x28,%rax; mov %rax,0x8(%rsp);
    // xor %eax,%eax; test %edx,%edx; js +0x2f; mov %rsp,%rcx; movslq %edx,%rdx; call.
    const SSL_READ: &[u8] = &[
        0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x48, 0x89,
        0x44, 0x24, 0x08, 0x31, 0xc0, 0x85, 0xd2, 0x78, 0x2f, 0x48, 0x89, 0xe1, 0x48, 0x63, 0xd2,
        0xe8, 0x3d, 0xfe, 0xff, 0xff,
    ];
    // SSL_read_ex: sub $0x8,%rsp; call.
    const SSL_READ_EX: &[u8] = &[0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff];

    #[test]
    fn the_wrappers_of_libssl_3_call_their_shared_callee() {
        let read = call_of(SSL_READ, 0x35430, false).unwrap();
        assert_eq!(
            read,
            WrapperCall {
                callee: 0x35290,
                return_site: 0x35453
            }
        );
        let ex = call_of(SSL_READ_EX, 0x354c0, true).unwrap();
        assert_eq!(
            ex,
            WrapperCall {
                callee: 0x35290,
                return_site: 0x354c9
            }
        );
    }

    #[test]
    fn a_wrapper_that_changes_an_argument_keeps_its_entry_probe() {
        // The plain form points rcx at a local: fine for it, not for an `_ex` form, whose
        // caller's out pointer would be lost.
        assert_eq!(call_of(SSL_READ, 0x35430, true), None);
        // mov %rdx,%rsi (the buffer replaced); call.
        assert_eq!(
            call_of(&[0x48, 0x89, 0xd6, 0xe8, 0, 0, 0, 0], 0x1000, false),
            None
        );
        // A jump or a return before any call: not a thin wrapper.
        assert_eq!(
            call_of(&[0xeb, 0x00, 0xe8, 0, 0, 0, 0], 0x1000, false),
            None
        );
        assert_eq!(call_of(&[0xc3], 0x1000, false), None);
        // An indirect call.
        assert_eq!(call_of(&[0xff, 0xd0], 0x1000, false), None);
    }

    #[test]
    fn callees_are_probed_on_an_emulated_push() {
        // push %r13
        assert_eq!(
            emulated_start(&[0x41, 0x55, 0x41, 0x54], 0x35290),
            Some(0x35290)
        );
        // endbr64; push %rbp
        assert_eq!(
            emulated_start(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], 0x2000),
            Some(0x2004)
        );
        // sub $0x18,%rsp: single-stepped, not moved there.
        assert_eq!(emulated_start(&[0x48, 0x83, 0xec, 0x18], 0x3000), None);
    }

    #[test]
    fn entry_probes_move_to_the_first_emulated_instruction_of_a_reading_start() {
        // SSL_free: test %rdi,%rdi; je.
        let free = [
            0x48, 0x85, 0xff, 0x0f, 0x84, 0x97, 0x03, 0x00, 0x00, 0x41, 0x55,
        ];
        assert_eq!(first_emulated(&free, 0x3b350), Some(0x3b353));
        // SSL_get_error: xor %eax,%eax; test %esi,%esi; jle.
        let get_error = [0x31, 0xc0, 0x85, 0xf6, 0x7e, 0x0a, 0x31, 0xd2];
        assert_eq!(first_emulated(&get_error, 0x38400), Some(0x38404));
        // SSL_accept: cmpq $0x0,0x30(%rdi); je.
        let accept = [0x48, 0x83, 0x7f, 0x30, 0x00, 0x74, 0x09];
        assert_eq!(first_emulated(&accept, 0x38ea0), Some(0x38ea5));
        // A push first: where it is.
        assert_eq!(first_emulated(&[0x41, 0x55], 0x1000), Some(0x1000));
        // sub $0x18,%rsp moves the return address off the top: not moved.
        assert_eq!(
            first_emulated(&[0x48, 0x83, 0xec, 0x18, 0x55], 0x3000),
            None
        );
        // mov %rsi,%rdi overwrites an argument first: not moved.
        assert_eq!(first_emulated(&[0x48, 0x89, 0xf7, 0x55], 0x3000), None);
        // A store first: not moved.
        assert_eq!(
            first_emulated(&[0x48, 0x89, 0x44, 0x24, 0x08, 0x55], 0x3000),
            None
        );
    }

    #[test]
    fn this_machines_libssl_3_moves_ssl_free_and_ssl_get_error_off_their_first_instruction() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let placement = Placement::of_file(path);
        let data = fs::read(path).expect("Debian's libssl3 is installed on these machines");
        let file = object::File::parse(&*data).unwrap();
        let code = Text::new(&file);
        let entry = code.file_offset(code.symbol("SSL_free").unwrap()).unwrap();
        let moved = placement.entry_of("SSL_free").expect("SSL_free moved");
        assert!(
            moved > entry && moved - entry <= 16,
            "{entry:#x} -> {moved:#x}"
        );
    }

    #[test]
    fn a_library_without_the_shape_keeps_every_entry_probe() {
        assert_eq!(Placement::of_elf(b"not an elf"), Placement::default());
    }
}
