//! The executable mappings of one process, as framehop modules, and the unwind of a stack
//! sample into named frames.

use std::{collections::HashMap, path::PathBuf, rc::Rc, sync::Arc};

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

/// One executable file mapping of a process, as /proc/PID/maps lists it.
#[derive(Clone, Debug)]
pub struct MapEntry {
    range: std::ops::Range<u64>,
    offset: u64,
    /// (major, minor) and inode of the file.
    dev: (i32, i32),
    inode: u64,
    path: PathBuf,
}

/// The executable file mappings of `pid` now; None when they cannot be read, or the
/// process has none left (it exited: a zombie's maps are empty).
pub fn exec_maps(pid: u32) -> Option<Vec<MapEntry>> {
    let maps = match procfs::process::Process::new(pid as i32).and_then(|p| p.maps()) {
        Ok(m) => m,
        Err(e) => {
            log::debug!("call sites: pid {pid}: reading its maps: {e}");
            return None;
        }
    };
    let entries: Vec<MapEntry> = maps
        .iter()
        .filter(|m| m.perms.contains(procfs::process::MMPermissions::EXECUTE))
        .filter_map(|m| match &m.pathname {
            procfs::process::MMapPath::Path(path) => Some(MapEntry {
                range: m.address.0..m.address.1,
                offset: m.offset,
                dev: m.dev,
                inode: m.inode,
                path: path.clone(),
            }),
            _ => None,
        })
        .collect();
    (!entries.is_empty()).then_some(entries)
}

impl Files {
    fn get(&mut self, pid: u32, m: &MapEntry) -> Option<Rc<ElfInfo>> {
        let key = ((m.dev.0 as u64) << 32 | m.dev.1 as u64, m.inode);
        if let Some(hit) = self.by_inode.get(&key) {
            return hit.clone();
        }
        let path = &m.path;
        // Through the process's root, so a container's files are read, not the host's;
        // a file replaced on disk since it was mapped is read through map_files. A process
        // that exited has neither: then the path itself, if it is the same file (device and
        // inode).
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let data = std::fs::read(root.join(path.strip_prefix("/").unwrap_or(path)))
            .or_else(|_| {
                std::fs::read(format!(
                    "/proc/{pid}/map_files/{:x}-{:x}",
                    m.range.start, m.range.end
                ))
            })
            .or_else(|e| {
                use std::os::unix::fs::MetadataExt;
                let meta = std::fs::metadata(path)?;
                let dev = (
                    nix::sys::stat::major(meta.dev()) as i32,
                    nix::sys::stat::minor(meta.dev()) as i32,
                );
                if (dev, meta.ino()) == (m.dev, m.inode) {
                    std::fs::read(path)
                } else {
                    Err(e)
                }
            })
            .ok();
        let debug_root = if data.is_some() && root.exists() {
            root.join("usr/lib/debug")
        } else {
            PathBuf::from("/usr/lib/debug")
        };
        let elf = data.and_then(|d| {
            ElfInfo::parse(&d, &debug_root)
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
    /// Builds the unwinder over `maps` (see [`exec_maps`]), reading the files not read yet.
    pub fn load(pid: u32, maps: &[MapEntry], files: &mut Files) -> Self {
        let t = std::time::Instant::now();
        let mut mapped: Vec<Mapped> = Vec::new();
        for m in maps {
            let Some(elf) = files.get(pid, m) else {
                log::debug!("call sites: pid {pid}: {} not read", m.path.display());
                continue;
            };
            let Some(vaddr) = elf.vaddr_of_offset(m.offset) else {
                log::debug!(
                    "call sites: pid {pid}: offset {:#x} of {} in no segment",
                    m.offset,
                    m.path.display()
                );
                continue;
            };
            mapped.push(Mapped {
                range: m.range.clone(),
                bias: m.range.start.wrapping_sub(vaddr),
                path: m.path.display().to_string(),
                elf,
            });
        }
        log::debug!(
            "call sites: the mappings of pid {pid} read in {:?}",
            t.elapsed()
        );
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
        Self {
            mapped,
            unwinder,
            cache: CacheX86_64::new(),
        }
    }

    /// Whether `addr` is in a file this process was seen to map.
    pub fn covers(&self, addr: u64) -> bool {
        self.mapped.iter().any(|m| m.range.contains(&addr))
    }

    /// Unwinds `s` (from its registers, over its copied stack bytes) and names each frame.
    pub fn unwind(&mut self, s: &RawStack) -> Vec<Frame> {
        let (sp, stack, ret) = (s.sp, &s.stack, s.ret);
        let mut read = |addr: u64| -> Result<u64, ()> {
            // The return probe's trampoline address stands in the probed call's return
            // slot: the address it replaced, as read at the call's entry.
            if let Some((slot, value)) = ret
                && slot == addr
            {
                return Ok(value);
            }
            let off = addr.checked_sub(sp).ok_or(())? as usize;
            let bytes = stack.get(off..off + 8).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut frames = Vec::new();
        let mapped = &self.mapped;
        let mut iter = self.unwinder.iter_frames(
            s.ip,
            UnwindRegsX86_64::new(s.ip, s.sp, s.bp),
            &mut self.cache,
            &mut read,
        );
        while let Ok(Some(addr)) = iter.next() {
            // A return address in no file the process maps (a uprobe trampoline that was
            // not restored, JIT code, garbage): nothing past it can be trusted.
            let at = addr.address_for_lookup();
            if !frames.is_empty() && !mapped.iter().any(|m| m.range.contains(&at)) {
                break;
            }
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
