//! Finding the TLS library a process uses.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use object::{Object, ObjectSymbol};
use procfs::{
    FromBufRead as _,
    process::{MMapPath, MemoryMaps, Process},
};
use thiserror::Error;

use super::placement::Placement;

/// Symbols tls-probe attaches to. The first one must exist for a file to count as a TLS library.
pub const REQUIRED_SYMBOL: &str = "SSL_read";

#[derive(Debug, Error)]
pub enum DiscoverError {
    #[error("no process with pid {0}: /proc/{0} does not exist; check the pid with `ps -p {0}`")]
    NoProcess(u32),
    #[error(
        "pid {0} is a kernel thread (it has no memory map), so it runs no TLS library; pick a user-space process"
    )]
    KernelThread(u32),
    #[error("cannot read /proc/{pid}/maps: {source}; run tls-probe as root (sudo)")]
    Maps { pid: u32, source: std::io::Error },
    #[error(
        "no TLS library found in pid {pid} ({comm}): searched /proc/{pid}/maps for libssl.so*, and the executable {exe} for {REQUIRED_SYMBOL}; if the process is still starting (a shell or a launcher such as a pyenv shim that execs the TLS program), pass --wait-for-library to attach once it loads one, or start it with `tls-probe run -- CMD`; if it loads OpenSSL some other way, pass --libssl PATH"
    )]
    NotFound { pid: u32, comm: String, exe: String },
    #[error(
        "pid {pid} maps a TLS library that was removed or replaced on disk since it loaded it, and reading it through /proc/{pid}/map_files failed ({reasons}); run tls-probe as root (map_files needs CAP_SYS_ADMIN), or restart the process so that it maps the library now on disk"
    )]
    DeletedLibrary { pid: u32, reasons: String },
    #[error(
        "--libssl {path}: {source}; pass the path of a libssl shared object or a binary that links OpenSSL statically"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--libssl {path}: not an ELF file with symbols ({reason}); pass a libssl shared object"
    )]
    NotElf { path: PathBuf, reason: String },
    #[error(
        "{path} has no {REQUIRED_SYMBOL} symbol, so it is not an OpenSSL libssl; pass the libssl the process uses (see /proc/PID/maps)"
    )]
    NoSslSymbols { path: PathBuf },
    #[error(
        "no process named {name}: searched the command name (/proc/PID/comm) and the executable's file name of every process; check with `pgrep -l {name}`, or pass --pid PID"
    )]
    NoSuchComm { name: String },
    #[error(
        "cannot tell which TLS library {program} will load: it does not link OpenSSL statically, `ldd {program}` names no libssl, and `ldconfig -p` lists no system libssl; pass --libssl PATH"
    )]
    NoLibraryForProgram { program: String },
}

impl DiscoverError {
    /// The process exists but maps no TLS library (yet).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// A TLS library (or an executable with OpenSSL linked in) to attach to.
#[derive(Clone, Debug)]
pub struct TlsLibrary {
    /// The path to open from tls-probe's mount namespace (through /proc/PID/root).
    pub path: PathBuf,
    /// The path as the target process sees it.
    pub display_path: String,
    /// "3", "1.1", ... from the soname, when it has one.
    pub version: Option<String>,
    /// The SSL_* (and ossl_statem_*) symbols the file defines.
    pub symbols: BTreeSet<String>,
    /// The libcrypto holding the key operations (EVP_DigestSign, ...) that tell a full
    /// handshake from a resumed one: the libcrypto the process maps, or the same file when
    /// OpenSSL is linked statically. None when it cannot be found; the handshake kind is
    /// then unknown.
    pub crypto: Option<CryptoLibrary>,
    /// Where its per-call probes go: on the callees of SSL_read and the others where their
    /// first instruction is emulated, else on the functions.
    pub placement: Placement,
}

/// Where the libcrypto key operations are.
#[derive(Clone, Debug)]
pub struct CryptoLibrary {
    pub path: PathBuf,
    pub display_path: String,
    pub symbols: BTreeSet<String>,
}

/// libcrypto functions that only a full handshake calls inside libssl: signing
/// (CertificateVerify, ServerKeyExchange), verifying (the peer's signature and chain), and
/// RSA key-exchange decryption. Stable names across OpenSSL 1.1 and 3.x.
pub const KEY_OPS: [&str; 3] = ["EVP_DigestSign", "EVP_DigestVerify", "EVP_PKEY_decrypt"];

impl TlsLibrary {
    pub fn has(&self, symbol: &str) -> bool {
        self.symbols.contains(symbol)
    }

    /// OpenSSL linked into the program (node, a build against libssl.a), not a libssl
    /// shared object.
    pub fn is_linked_in(&self) -> bool {
        !self
            .path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libssl"))
    }
}

/// Reads the function symbols a file defines whose names start with one of `prefixes`.
fn symbols_with(path: &Path, prefixes: &[&str]) -> Result<BTreeSet<String>, DiscoverError> {
    let data = fs::read(path).map_err(|source| DiscoverError::Unreadable {
        path: path.to_owned(),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|e| DiscoverError::NotElf {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let mut out = BTreeSet::new();
    for sym in file.dynamic_symbols().chain(file.symbols()) {
        if sym.is_definition()
            && sym.kind() == object::SymbolKind::Text
            && let Ok(name) = sym.name()
            && prefixes.iter().any(|p| name.starts_with(p))
        {
            // Versioned dynamic names can carry "@@OPENSSL_3.0.0".
            let name = name.split('@').next().unwrap_or(name);
            out.insert(name.to_owned());
        }
    }
    Ok(out)
}

/// Builds a [`TlsLibrary`] for an explicit path (`--libssl`, or a path found in maps).
pub fn library_at(path: &Path, display_path: &str) -> Result<TlsLibrary, DiscoverError> {
    // `ossl_statem_`: the handshake state machine, exported by node (see the loader).
    let symbols = symbols_with(path, &["SSL_", "ossl_statem_"])?;
    if !symbols.contains(REQUIRED_SYMBOL) {
        return Err(DiscoverError::NoSslSymbols {
            path: path.to_owned(),
        });
    }
    let version = Path::new(display_path.trim_end_matches(DELETED))
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once(".so."))
        .map(|(_, v)| v.to_owned());
    // Statically linked OpenSSL carries its libcrypto in the same file; a shared libssl
    // has its libcrypto of the same version beside it.
    let crypto = crypto_at(path, display_path).or_else(|| {
        let v = version.as_deref()?;
        let sibling = |p: &Path| p.with_file_name(format!("libcrypto.so.{v}"));
        let display = sibling(Path::new(display_path));
        crypto_at(&sibling(path), &display.display().to_string())
    });
    Ok(TlsLibrary {
        path: path.to_owned(),
        display_path: display_path.to_owned(),
        version,
        symbols,
        crypto,
        placement: Placement::of_file(path),
    })
}

/// The other libcrypto functions probed when present: the error-raising function of
/// OpenSSL 3 and of 1.1, and the async job pause.
pub const CRYPTO_EXTRAS: [&str; 3] = ["ERR_vset_error", "ERR_put_error", "ASYNC_pause_job"];

/// A libcrypto (or a static binary) at `path`, if it defines any key operation. Its
/// `symbols` are the [`KEY_OPS`] and [`CRYPTO_EXTRAS`] it defines.
pub fn crypto_at(path: &Path, display_path: &str) -> Option<CryptoLibrary> {
    let defined = symbols_with(path, &["EVP_", "ERR_", "ASYNC_"]).ok()?;
    if !KEY_OPS.iter().any(|s| defined.contains(*s)) {
        return None;
    }
    let symbols: BTreeSet<String> = KEY_OPS
        .iter()
        .chain(&CRYPTO_EXTRAS)
        .filter(|s| defined.contains(**s))
        .map(|s| (*s).to_owned())
        .collect();
    Some(CryptoLibrary {
        path: path.to_owned(),
        display_path: display_path.to_owned(),
        symbols,
    })
}

/// The libcrypto `pid` maps, if any.
pub fn find_crypto(pid: u32) -> Option<CryptoLibrary> {
    let maps = fs::read(format!("/proc/{pid}/maps")).ok()?;
    mapped_files(&maps)
        .into_iter()
        .filter(|f| f.name_starts_with("libcrypto.so"))
        .find_map(|f| crypto_at(&f.host_path(pid), &f.display()))
}

/// What the kernel appends in /proc/PID/maps to the path of a file removed or replaced on
/// disk since it was mapped.
const DELETED: &str = " (deleted)";

/// A file a process maps, from /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MappedFile {
    /// Its path as the process sees it, without the kernel's " (deleted)".
    path: PathBuf,
    /// Removed or replaced on disk since it was mapped (an upgrade that replaced the
    /// library under a running process): `path` now names another file, or none.
    deleted: bool,
    /// The address range of its first mapping, which names it under /proc/PID/map_files.
    range: (u64, u64),
}

impl MappedFile {
    fn name_starts_with(&self, prefix: &str) -> bool {
        self.path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(prefix))
    }

    /// Where tls-probe opens it: through the process's root (its mount namespace), or, when
    /// deleted, through /proc/PID/map_files, which reaches the inode the process maps (root
    /// only) where the path would reach the file that replaced it.
    fn host_path(&self, pid: u32) -> PathBuf {
        if self.deleted {
            let (start, end) = self.range;
            PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
        } else {
            Path::new(&format!("/proc/{pid}/root"))
                .join(self.path.strip_prefix("/").unwrap_or(&self.path))
        }
    }

    /// As the process sees it, for messages: the path, with " (deleted)" when deleted.
    fn display(&self) -> String {
        let deleted = if self.deleted { DELETED } else { "" };
        format!("{}{deleted}", self.path.display())
    }
}

/// The files in a /proc/PID/maps text, each once, in the order of their first mapping.
/// Paths may hold spaces; the kernel's " (deleted)" is taken off and recorded. An
/// unparsable text gives none.
fn mapped_files(maps: &[u8]) -> Vec<MappedFile> {
    let Ok(maps) = MemoryMaps::from_buf_read(maps) else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    maps.into_iter()
        .filter_map(|m| {
            let MMapPath::Path(path) = m.pathname else {
                return None;
            };
            let (path, deleted) = match path.to_str().and_then(|p| p.strip_suffix(DELETED)) {
                Some(p) => (PathBuf::from(p), true),
                None => (path, false),
            };
            seen.insert((path.clone(), deleted)).then_some(MappedFile {
                path,
                deleted,
                range: m.address,
            })
        })
        .collect()
}

/// The command name of a process, for messages.
pub fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim_end().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// Every descendant of each of `roots` (not the roots themselves), with its parent; parents
/// come before their children. Read from the parent pid of every process in /proc
/// (`/proc/PID/task/*/children` needs a kernel built with CONFIG_PROC_CHILDREN).
pub fn descendants(roots: &[u32]) -> Vec<(u32, u32)> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = parent_pid(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut seen: BTreeSet<u32> = roots.iter().copied().collect();
    let mut out = Vec::new();
    let mut next = 0;
    let mut queue: Vec<u32> = roots.to_vec();
    while let Some(&parent) = queue.get(next) {
        next += 1;
        for &child in children.get(&parent).into_iter().flatten() {
            if seen.insert(child) {
                out.push((child, parent));
                queue.push(child);
            }
        }
    }
    out
}

/// The parent pid of `pid`, from /proc/PID/stat.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    u32::try_from(stat.ppid).ok()
}

/// The processes whose command name, or executable's file name, is `name`; not tls-probe
/// itself, nor kernel threads. The kernel cuts comm to 15 bytes, so a longer `name` matches
/// its first 15 bytes too.
pub fn pids_by_comm(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let short: String = name
        .chars()
        .scan(0, |n, c| {
            *n += c.len_utf8();
            (*n <= 15).then_some(c)
        })
        .collect();
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Kernel threads have no executable.
        let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let exe_name = exe
            .file_name()
            .and_then(|n| n.to_str())
            .map(|n| n.trim_end_matches(" (deleted)").to_owned());
        let comm = comm(pid);
        if comm == name || comm == short || exe_name.as_deref() == Some(name) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// The pids of each name in `names`; an error names the first that matches nothing.
pub fn pids_by_comms(names: &[String]) -> Result<Vec<u32>, DiscoverError> {
    let mut out = Vec::new();
    for name in names {
        let pids = pids_by_comm(name);
        if pids.is_empty() {
            return Err(DiscoverError::NoSuchComm { name: name.clone() });
        }
        out.extend(pids);
    }
    Ok(out)
}

/// The (device, inode) of the executable of `pid`: it changes when the process execs.
pub fn exe_identity(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((m.dev(), m.ino()))
}

/// The (device, inode) of a file: uprobes are placed on an inode, so two paths of one
/// library are one library.
pub fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = fs::metadata(path).ok()?;
    Some((m.dev(), m.ino()))
}

/// Whether `pid` maps a file named libssl.so* now: a cheap look before a full discovery.
pub fn maps_libssl(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/maps")).is_ok_and(|maps| {
        mapped_files(&maps)
            .iter()
            .any(|f| f.name_starts_with("libssl.so"))
    })
}

/// The TLS library a program will use once it runs, found before it runs (uprobes are
/// placed on the library's inode, so they are in place when it is mapped): OpenSSL linked
/// into the program, else the libssl `ldd` resolves for it, else the system libssl from
/// `ldconfig -p` (for programs that dlopen it, such as Python's `ssl` module).
pub fn library_for_program(program: &Path) -> Result<TlsLibrary, DiscoverError> {
    let display = program.display().to_string();
    if let Ok(lib) = library_at(program, &display) {
        return Ok(lib);
    }
    let from = |cmd: &str, arg: &str| -> Vec<String> {
        std::process::Command::new(cmd)
            .arg(arg)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                // "\tlibssl.so.3 (...) => /usr/lib/.../libssl.so.3 (0x...)" in both tools.
                let (name, rest) = l.trim().split_once(' ')?;
                if !name.starts_with("libssl.so") {
                    return None;
                }
                let path = rest.split_once("=> ")?.1.split_whitespace().next()?;
                Some(path.to_owned())
            })
            .collect()
    };
    let candidates = from("ldd", &display)
        .into_iter()
        .chain(from("ldconfig", "-p"));
    for path in candidates {
        if let Ok(lib) = library_at(Path::new(&path), &path) {
            return Ok(lib);
        }
    }
    Err(DiscoverError::NoLibraryForProgram { program: display })
}

/// Finds the TLS library mapped by `pid`, or OpenSSL linked into its executable.
pub fn find_tls_library(pid: u32) -> Result<TlsLibrary, DiscoverError> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !proc_dir.exists() {
        return Err(DiscoverError::NoProcess(pid));
    }
    let maps =
        fs::read(proc_dir.join("maps")).map_err(|source| DiscoverError::Maps { pid, source })?;
    if maps.trim_ascii().is_empty() {
        return Err(DiscoverError::KernelThread(pid));
    }
    let mut deleted = Vec::new();
    for file in mapped_files(&maps) {
        if !file.name_starts_with("libssl.so") {
            continue;
        }
        match library_at(&file.host_path(pid), &file.display()) {
            Ok(mut lib) => {
                if lib.crypto.is_none() {
                    lib.crypto = find_crypto(pid);
                }
                return Ok(lib);
            }
            Err(e) if file.deleted => deleted.push(format!("{}: {e}", file.display())),
            Err(_) => {}
        }
    }
    let exe = fs::read_link(proc_dir.join("exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    if let Ok(lib) = library_at(&proc_dir.join("exe"), &exe) {
        return Ok(lib);
    }
    if !deleted.is_empty() {
        return Err(DiscoverError::DeletedLibrary {
            pid,
            reasons: deleted.join("; "),
        });
    }
    Err(DiscoverError::NotFound {
        pid,
        comm: comm(pid),
        exe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A maps text as the kernel writes it: padded columns, a path with spaces, a library
    /// deleted since it was mapped, an anonymous mapping and a pseudo-path.
    const MAPS: &str = "\
55c9ad174000-55c9ad176000 r--p 00000000 fe:00 247030                     /usr/bin/cat
7f0000000000-7f0000001000 r--p 00000000 fe:00 1001                       /opt/my app/lib/libssl.so.3
7f0000001000-7f0000002000 r-xp 00001000 fe:00 1001                       /opt/my app/lib/libssl.so.3
7f0000010000-7f0000020000 r--p 00000000 fe:00 1002                       /usr/lib/libcrypto.so.3 (deleted)
7f0000020000-7f0000030000 r-xp 00010000 fe:00 1002                       /usr/lib/libcrypto.so.3 (deleted)
7f0000030000-7f0000031000 rw-p 00000000 00:00 0 
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn maps_paths_keep_their_spaces_and_deleted_files_are_marked() {
        let files = mapped_files(MAPS.as_bytes());
        let paths: Vec<(String, bool)> = files
            .iter()
            .map(|f| (f.path.display().to_string(), f.deleted))
            .collect();
        assert_eq!(
            paths,
            [
                ("/usr/bin/cat".to_owned(), false),
                ("/opt/my app/lib/libssl.so.3".to_owned(), false),
                ("/usr/lib/libcrypto.so.3".to_owned(), true),
            ]
        );
        let ssl = &files[1];
        assert!(ssl.name_starts_with("libssl.so"));
        assert_eq!(
            ssl.host_path(42),
            Path::new("/proc/42/root/opt/my app/lib/libssl.so.3")
        );
        assert_eq!(ssl.display(), "/opt/my app/lib/libssl.so.3");
        // The path of a deleted file names another file now, or none: the mapped inode is
        // reached through map_files, named by the range of its first mapping.
        let crypto = &files[2];
        assert!(crypto.name_starts_with("libcrypto.so"));
        assert_eq!(
            crypto.host_path(42),
            Path::new("/proc/42/map_files/7f0000010000-7f0000020000")
        );
        assert_eq!(crypto.display(), "/usr/lib/libcrypto.so.3 (deleted)");
        assert!(mapped_files(b"not a maps line\n").is_empty());
    }

    /// A process that loads a copy of the system libssl from a directory with a space in
    /// its name, then has it replaced on disk by a file that is not OpenSSL (what an
    /// upgrade does): discovery finds the copy, then the mapped inode, never the new file.
    #[test]
    fn a_library_under_a_spaced_path_then_replaced_on_disk_is_still_the_one_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let lib_dir = dir.path().join("my app");
        fs::create_dir(&lib_dir).unwrap();
        let copy = lib_dir.join("libssl.so.3");
        fs::copy("/usr/lib/x86_64-linux-gnu/libssl.so.3", &copy).unwrap();
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import ctypes, sys, time; ctypes.CDLL(sys.argv[1]); time.sleep(30)",
            ])
            .arg(&copy)
            .spawn()
            .expect("running python3");
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !maps_libssl(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let found = find_tls_library(pid);
        fs::remove_file(&copy).unwrap();
        fs::copy("/bin/true", &copy).unwrap();
        let replaced = find_tls_library(pid);
        let _ = child.kill();
        let _ = child.wait();

        let lib = found.unwrap();
        assert_eq!(lib.display_path, copy.display().to_string());
        assert_eq!(lib.version.as_deref(), Some("3"));
        let lib = replaced.unwrap();
        assert_eq!(lib.display_path, format!("{} (deleted)", copy.display()));
        assert!(
            lib.path.starts_with(format!("/proc/{pid}/map_files")),
            "{lib:?}"
        );
        assert_eq!(lib.version.as_deref(), Some("3"));
        assert!(lib.has("SSL_read"), "{lib:?}");
    }

    #[test]
    fn missing_pid_is_a_clear_error() {
        let err = find_tls_library(u32::MAX - 1).unwrap_err();
        assert!(matches!(err, DiscoverError::NoProcess(_)), "{err}");
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn descendants_are_found_recursively_with_their_parents() {
        // sh -> sleep: a child and a grandchild of this test.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let me = std::process::id();
        let sh = child.id();
        let mut found = Vec::new();
        for _ in 0..200 {
            found = descendants(&[me]);
            if found.iter().any(|&(_, parent)| parent == sh) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for &(pid, _) in found.iter().filter(|&&(_, parent)| parent == sh) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&(sh, me)), "{found:?}");
        assert!(
            found.iter().any(|&(_, parent)| parent == sh),
            "no grandchild in {found:?}"
        );
        assert!(!found.iter().any(|&(pid, _)| pid == me));
    }

    #[test]
    fn kernel_thread_is_refused() {
        // kthreadd is pid 2 on every Linux system.
        let err = find_tls_library(2).unwrap_err();
        assert!(matches!(err, DiscoverError::KernelThread(2)), "{err}");
    }

    #[test]
    fn a_file_without_ssl_symbols_is_refused() {
        let err = library_at(Path::new("/bin/true"), "/bin/true").unwrap_err();
        assert!(matches!(err, DiscoverError::NoSslSymbols { .. }), "{err}");
        let err = library_at(Path::new("/nonexistent/libssl.so"), "x").unwrap_err();
        assert!(matches!(err, DiscoverError::Unreadable { .. }), "{err}");
        let err = library_at(Path::new("/etc/hostname"), "x").unwrap_err();
        assert!(matches!(err, DiscoverError::NotElf { .. }), "{err}");
    }

    #[test]
    fn programs_resolve_to_the_library_they_will_load() {
        // openssl links libssl.so.3; python3 dlopens it later (the system one); a program
        // without OpenSSL still gets the system libssl.
        for prog in ["/usr/bin/openssl", "/usr/bin/python3", "/bin/true"] {
            let lib = library_for_program(Path::new(prog)).unwrap();
            assert!(lib.display_path.contains("libssl.so.3"), "{prog}: {lib:?}");
            assert!(lib.crypto.is_some(), "{prog}: no libcrypto beside {lib:?}");
        }
    }

    #[test]
    fn processes_are_found_by_name() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let found = pids_by_comm("sleep");
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(
            !pids_by_comm("kthreadd").contains(&2),
            "a kernel thread matched"
        );
        let err = pids_by_comms(&["no-such-program-x".to_owned()]).unwrap_err();
        assert!(
            err.to_string()
                .contains("no process named no-such-program-x"),
            "{err}"
        );
    }

    #[test]
    fn system_libssl_has_the_probed_symbols() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        let lib = library_at(path, "/usr/lib/x86_64-linux-gnu/libssl.so.3").unwrap();
        assert_eq!(lib.version.as_deref(), Some("3"));
        for s in [
            "SSL_read",
            "SSL_read_ex",
            "SSL_write_ex",
            "SSL_get_error",
            "SSL_free",
        ] {
            assert!(lib.has(s), "{s} missing");
        }
    }
}
