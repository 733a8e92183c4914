//! The executable mappings of one process, as framehop modules, and the unwind of a stack
//! sample into named frames.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    rc::Rc,
    sync::Arc,
};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use super::object::ElfInfo;
use crate::{engine::Frame, event::RawStack};

/// The deepest stack kept.
pub const MAX_FRAMES: usize = 24;

/// One file mapped executable in the process.
struct Mapped {
    range: std::ops::Range<u64>,
    /// Process address minus file address.
    bias: u64,
    path: String,
    elf: Rc<ElfInfo>,
}

pub struct Process {
    mapped: Vec<Mapped>,
    unwinder: UnwinderX86_64<Arc<[u8]>>,
    cache: CacheX86_64,
}

/// ELF files read so far, by (device, inode) as /proc/PID/maps lists them, shared by every
/// process (and, through the build id, by every copy of one file). `Rc`: addr2line's lazy
/// DWARF tables are not `Sync`, and the session runs on one thread.
#[derive(Default)]
pub struct Files {
    by_inode: HashMap<(u64, u64), Option<Rc<ElfInfo>>>,
    by_build_id: HashMap<String, Rc<ElfInfo>>,
}

impl Files {
    fn get(
        &mut self,
        pid: u32,
        m: &procfs::process::MemoryMap,
        path: &Path,
    ) -> Option<Rc<ElfInfo>> {
        let key = (m.dev.0 as u64 * 256 + m.dev.1 as u64, m.inode);
        if let Some(hit) = self.by_inode.get(&key) {
            return hit.clone();
        }
        // Through the process's root, so a container's files are read, not the host's;
        // a file replaced on disk since it was mapped is read through map_files.
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let data = std::fs::read(root.join(path.strip_prefix("/").unwrap_or(path)))
            .or_else(|_| {
                std::fs::read(format!(
                    "/proc/{pid}/map_files/{:x}-{:x}",
                    m.address.0, m.address.1
                ))
            })
            .ok();
        let elf = data.and_then(|d| {
            ElfInfo::parse(&d, &root.join("usr/lib/debug"))
                .map_err(|e| log::debug!("call sites: {} is not ELF: {e}", path.display()))
                .ok()
        });
        let elf = elf.map(|e| match &e.build_id {
            Some(id) => self
                .by_build_id
                .entry(id.clone())
                .or_insert_with(|| Rc::new(e))
                .clone(),
            None => Rc::new(e),
        });
        self.by_inode.insert(key, elf.clone());
        elf
    }
}

impl Process {
    /// Reads the process's executable mappings now.
    pub fn load(pid: u32, files: &mut Files) -> Option<Self> {
        let t = std::time::Instant::now();
        let me = Self::load_maps(pid, files);
        log::debug!(
            "call sites: the mappings of pid {pid} read in {:?}",
            t.elapsed()
        );
        me
    }

    fn load_maps(pid: u32, files: &mut Files) -> Option<Self> {
        let maps = procfs::process::Process::new(pid as i32)
            .ok()?
            .maps()
            .ok()?;
        let mut mapped: Vec<Mapped> = Vec::new();
        for m in maps.iter() {
            let procfs::process::MMapPath::Path(path) = &m.pathname else {
                continue;
            };
            if !m.perms.contains(procfs::process::MMPermissions::EXECUTE) {
                continue;
            }
            let Some(elf) = files.get(pid, m, path) else {
                continue;
            };
            let Some(vaddr) = elf.vaddr_of_offset(m.offset) else {
                continue;
            };
            mapped.push(Mapped {
                range: m.address.0..m.address.1,
                bias: m.address.0.wrapping_sub(vaddr),
                path: path.display().to_string(),
                elf,
            });
        }
        let mut unwinder = UnwinderX86_64::new();
        for m in &mapped {
            let e = &m.elf;
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: e.text.as_ref().map(|t| t.0.clone()),
                text: e.text.as_ref().map(|t| t.1.clone()),
                got_svma: e.got.clone(),
                eh_frame_svma: e.eh_frame.as_ref().map(|t| t.0.clone()),
                eh_frame: e.eh_frame.as_ref().map(|t| t.1.clone()),
                eh_frame_hdr_svma: e.eh_frame_hdr.as_ref().map(|t| t.0.clone()),
                eh_frame_hdr: e.eh_frame_hdr.as_ref().map(|t| t.1.clone()),
                ..Default::default()
            };
            unwinder.add_module(Module::new(m.path.clone(), m.range.clone(), m.bias, info));
        }
        Some(Self {
            mapped,
            unwinder,
            cache: CacheX86_64::new(),
        })
    }

    /// Whether `addr` is in a file this process was seen to map.
    pub fn covers(&self, addr: u64) -> bool {
        self.mapped.iter().any(|m| m.range.contains(&addr))
    }

    /// Unwinds `s` (from its registers, over its copied stack bytes) and names each frame.
    pub fn unwind(&mut self, s: &RawStack) -> Vec<Frame> {
        let (sp, stack) = (s.sp, &s.stack);
        let mut read = |addr: u64| -> Result<u64, ()> {
            let off = addr.checked_sub(sp).ok_or(())? as usize;
            let bytes = stack.get(off..off + 8).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut frames = Vec::new();
        let mut iter = self.unwinder.iter_frames(
            s.ip,
            UnwindRegsX86_64::new(s.ip, s.sp, s.bp),
            &mut self.cache,
            &mut read,
        );
        while let Ok(Some(addr)) = iter.next() {
            frames.push(addr);
            if frames.len() >= MAX_FRAMES {
                break;
            }
        }
        frames.into_iter().map(|a| self.name(a)).collect()
    }

    fn name(&self, a: FrameAddress) -> Frame {
        let addr = a.address();
        let lookup = a.address_for_lookup();
        let Some(m) = self.mapped.iter().find(|m| m.range.contains(&lookup)) else {
            return Frame {
                address: addr,
                object: "[unknown]".to_owned(),
                object_address: addr,
                function: None,
                offset: None,
                file: None,
                line: None,
                symbols: crate::engine::SymbolSource::None,
            };
        };
        let named = m
            .elf
            .name(addr.wrapping_sub(m.bias), lookup.wrapping_sub(m.bias));
        Frame {
            address: addr,
            object: m.path.clone(),
            object_address: addr.wrapping_sub(m.bias),
            function: named.function,
            offset: named.offset,
            file: named.file,
            line: named.line,
            symbols: named.symbols,
        }
    }
}
