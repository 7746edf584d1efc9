//! The one way loomd touches a path inside a weaver's root (`STATE_DIR/weavers/ID/root`).
//!
//! After its first run the root belongs to the weaver, whose root user can leave anything
//! there: symlinks to host files or to `/dev/zero`, FIFOs, huge or growing files, a `/.loom`
//! that points at a host directory. loomd runs as root, so every path here is resolved by
//! `openat2` inside the root, never through a symlink, a magic link or a mount point; nothing
//! is opened that could block (`O_NONBLOCK`, and only regular files are read); reads stop at
//! a cap; and files and directories are made relative to directory fds opened that way and
//! chowned through their own fd, never by path.

use std::ffi::{CStr, CString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use loom_core::units::ByteSize;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, symlinkat, unlinkat};

#[derive(Debug, thiserror::Error)]
pub enum WeaverFsError {
    #[error("opening the weaver's root {root}")]
    Root {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} does not exist in the weaver")]
    NotFound { path: String },
    #[error("{path} is or goes through a symlink, and loomd never follows a weaver's symlinks")]
    Symlink { path: String },
    #[error("{path} is {kind}, not a regular file")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path} is {kind}, not a directory")]
    NotDirectory { path: String, kind: &'static str },
    #[error("{path} is larger than the {cap} loomd reads of it")]
    TooLarge { path: String, cap: ByteSize },
    #[error("{path} crosses a mount point, which loomd never does in a weaver's root")]
    Mount { path: String },
    #[error("{path} is not a path inside the weaver")]
    BadPath { path: String },
    #[error("{op} {path} in the weaver")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl WeaverFsError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, WeaverFsError::NotFound { .. })
    }
}

type Result<T> = std::result::Result<T, WeaverFsError>;

/// How a walk or a removal may descend at most: one directory fd is open per level.
pub const MAX_DEPTH: usize = 128;

/// Every lookup: inside the root, no symlinks (nor magic links), no mount points.
fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
        | ResolveFlag::RESOLVE_NO_XDEV
}

/// The flags every open here carries: a FIFO or device never blocks the open, and a symlink
/// as the last component is refused rather than followed.
fn base_flags() -> OFlag {
    OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC
}

/// `openat2` refuses `O_PATH` with any flag but these; such an fd can only be `fstat`ed,
/// and a trailing symlink gives an fd of the link itself.
fn path_flags() -> OFlag {
    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// What kind of file `st` is, for an error message.
pub fn kind_of(st: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFLNK => "a symlink",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        _ => "an unknown kind of file",
    }
}

fn is_kind(st: &FileStat, kind: SFlag) -> bool {
    st.st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

/// `/a/b` for messages, whatever the caller passed (`a/b`, `/a/b`).
fn shown(inside: &str) -> String {
    format!("/{}", inside.trim_start_matches('/'))
}

/// A path inside the weaver as clean components: no `..`, no empty or `.` parts.
fn components(inside: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = inside.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if parts.iter().any(|c| *c == ".." || c.contains('\0')) {
        return Err(WeaverFsError::BadPath { path: inside.to_string() });
    }
    Ok(parts)
}

fn cstr(name: &str, inside: &str) -> Result<CString> {
    CString::new(name).map_err(|_| WeaverFsError::BadPath { path: inside.to_string() })
}

/// A weaver's root, opened once; every path is resolved below it.
#[derive(Debug)]
pub struct WeaverRoot {
    fd: OwnedFd,
    /// The root directory's owner: what loomd gives everything it makes in there, so that
    /// the weaver's root user owns it (nspawn shifts the whole tree on the first start only).
    owner: (u32, u32),
}

impl WeaverRoot {
    /// Opens the root directory itself. Its path is loomd's (`STATE_DIR/weavers/ID/root`,
    /// in directories the weaver cannot reach), but the last component is still not followed.
    pub fn open(root: &Path) -> Result<WeaverRoot> {
        let err = |source: std::io::Error| WeaverFsError::Root { root: root.to_path_buf(), source };
        let fd = nix::fcntl::open(root, OFlag::O_DIRECTORY | OFlag::O_RDONLY | base_flags(), Mode::empty())
            .map_err(|e| err(e.into()))?;
        let st = fstat(&fd).map_err(|e| err(e.into()))?;
        Ok(WeaverRoot { fd, owner: (st.st_uid, st.st_gid) })
    }

    pub fn owner(&self) -> (u32, u32) {
        self.owner
    }

    fn errno(&self, op: &'static str, inside: &str, e: Errno) -> WeaverFsError {
        let path = shown(inside);
        match e {
            Errno::ENOENT => WeaverFsError::NotFound { path },
            Errno::ELOOP => match self.first_symlink(inside) {
                Some(link) => WeaverFsError::Symlink { path: link },
                None => WeaverFsError::Symlink { path },
            },
            Errno::EXDEV => WeaverFsError::Mount { path },
            other => WeaverFsError::Io { op, path, source: other.into() },
        }
    }

    /// For an error message: the first component of `inside` that is a symlink.
    fn first_symlink(&self, inside: &str) -> Option<String> {
        let parts = components(inside).ok()?;
        for n in 1..=parts.len() {
            let prefix = parts[..n].join("/");
            let how = OpenHow::new().flags(path_flags()).resolve(resolve());
            match openat2(&self.fd, prefix.as_str(), how) {
                Ok(fd) if fstat(&fd).is_ok_and(|st| is_kind(&st, SFlag::S_IFLNK)) => return Some(shown(&prefix)),
                Ok(_) => continue,
                Err(Errno::ELOOP) => return Some(shown(&prefix)),
                Err(_) => return None,
            }
        }
        None
    }

    /// Opens `inside` with `flags` (plus [`base_flags`]), resolved strictly inside the root.
    fn open_at(&self, op: &'static str, inside: &str, flags: OFlag) -> Result<OwnedFd> {
        let parts = components(inside)?;
        let rel = if parts.is_empty() { ".".to_string() } else { parts.join("/") };
        let flags = if flags.contains(OFlag::O_PATH) { path_flags() } else { flags | base_flags() };
        let how = OpenHow::new().flags(flags).resolve(resolve());
        openat2(&self.fd, rel.as_str(), how).map_err(|e| self.errno(op, inside, e))
    }

    /// The directory `inside`, for `*at` calls.
    fn open_dir(&self, inside: &str) -> Result<OwnedFd> {
        match self.open_at("opening", inside, OFlag::O_DIRECTORY | OFlag::O_RDONLY) {
            Err(WeaverFsError::Io { source, .. }) if source.raw_os_error() == Some(Errno::ENOTDIR as i32) => {
                let kind = self.stat(inside).map(|st| kind_of(&st)).unwrap_or("not a directory");
                Err(WeaverFsError::NotDirectory { path: shown(inside), kind })
            }
            other => other,
        }
    }

    /// What `inside` is, without following it.
    pub fn stat(&self, inside: &str) -> Result<FileStat> {
        let fd = self.open_at("looking at", inside, OFlag::O_PATH)?;
        fstat(&fd).map_err(|e| self.errno("looking at", inside, e))
    }

    /// Whether `inside` is a regular file (and no symlink is on the way to it).
    pub fn is_file(&self, inside: &str) -> bool {
        self.stat(inside).is_ok_and(|st| is_kind(&st, SFlag::S_IFREG))
    }

    /// Reads the regular file `inside`, refusing anything else and anything over `cap` bytes;
    /// at most `cap + 1` bytes are read, so a file that grows meanwhile is still bounded.
    pub fn read(&self, inside: &str, cap: u64) -> Result<Vec<u8>> {
        let fd = self.open_at("opening", inside, OFlag::O_RDONLY)?;
        let st = fstat(&fd).map_err(|e| self.errno("looking at", inside, e))?;
        if !is_kind(&st, SFlag::S_IFREG) {
            return Err(WeaverFsError::NotRegular { path: shown(inside), kind: kind_of(&st) });
        }
        let too_large = || WeaverFsError::TooLarge { path: shown(inside), cap: ByteSize(cap) };
        if st.st_size as u64 > cap {
            return Err(too_large());
        }
        let mut out = Vec::with_capacity(st.st_size.max(0) as usize);
        std::fs::File::from(fd)
            .take(cap.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|source| WeaverFsError::Io { op: "reading", path: shown(inside), source })?;
        if out.len() as u64 > cap {
            return Err(too_large());
        }
        Ok(out)
    }

    /// The last `max` bytes (at most) of the regular file `inside`, and whether the file holds
    /// more than that: for logs and spools, whose newest part matters most.
    pub fn read_last(&self, inside: &str, max: u64) -> Result<(Vec<u8>, bool)> {
        use std::io::{Seek, SeekFrom};
        let fd = self.open_at("opening", inside, OFlag::O_RDONLY)?;
        let st = fstat(&fd).map_err(|e| self.errno("looking at", inside, e))?;
        if !is_kind(&st, SFlag::S_IFREG) {
            return Err(WeaverFsError::NotRegular { path: shown(inside), kind: kind_of(&st) });
        }
        let io = |source| WeaverFsError::Io { op: "reading", path: shown(inside), source };
        let skip = (st.st_size.max(0) as u64).saturating_sub(max);
        let mut file = std::fs::File::from(fd);
        file.seek(SeekFrom::Start(skip)).map_err(io)?;
        let mut out = vec![];
        file.take(max).read_to_end(&mut out).map_err(io)?;
        Ok((out, skip > 0))
    }

    /// The parent directory of `inside` (opened) and the last component's name.
    fn parent_of(&self, inside: &str) -> Result<(OwnedFd, CString)> {
        let parts = components(inside)?;
        let Some((name, dir)) = parts.split_last() else {
            return Err(WeaverFsError::BadPath { path: inside.to_string() });
        };
        Ok((self.open_dir(&dir.join("/"))?, cstr(name, inside)?))
    }

    /// Gives what loomd made to the root's owner, through the file's own fd.
    fn own(&self, fd: BorrowedFd<'_>, mode: u32, inside: &str) -> Result<()> {
        let io = |op, e: Errno| WeaverFsError::Io { op, path: shown(inside), source: e.into() };
        fchown(fd, Some(Uid::from_raw(self.owner.0)), Some(Gid::from_raw(self.owner.1)))
            .map_err(|e| io("chowning", e))?;
        fchmod(fd, Mode::from_bits_truncate(mode)).map_err(|e| io("chmoding", e))
    }

    /// Creates `inside` as a new file holding `bytes`, owned by the root's owner; `Ok(false)`
    /// when something (of any kind) is there already, which is left as it is.
    pub fn create_file(&self, inside: &str, bytes: &[u8], mode: u32) -> Result<bool> {
        let (dir, name) = self.parent_of(inside)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | base_flags();
        let fd = match nix::fcntl::openat(&dir, name.as_c_str(), flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => return Ok(false),
            Err(e) => return Err(self.errno("creating", inside, e)),
        };
        self.own(fd.as_fd(), mode, inside)?;
        std::fs::File::from(fd).write_all(bytes).map_err(|source| WeaverFsError::Io {
            op: "writing",
            path: shown(inside),
            source,
        })?;
        Ok(true)
    }

    /// Replaces whatever is at `inside` (a file, a symlink, a FIFO, a directory tree: none of
    /// them followed) with a new file holding `bytes`.
    pub fn replace_file(&self, inside: &str, bytes: &[u8], mode: u32) -> Result<()> {
        self.remove(inside)?;
        if self.create_file(inside, bytes, mode)? {
            Ok(())
        } else {
            // Only a process inside could have put it back, and none runs while loomd prepares.
            Err(WeaverFsError::Io { op: "replacing", path: shown(inside), source: Errno::EEXIST.into() })
        }
    }

    /// Removes whatever is at `inside` without following it; a directory goes with all it
    /// holds. Nothing there is not an error.
    pub fn remove(&self, inside: &str) -> Result<()> {
        let (dir, name) = match self.parent_of(inside) {
            Err(e) if e.is_not_found() => return Ok(()),
            other => other?,
        };
        remove_at(dir.as_fd(), &name, 0).map_err(|e| self.errno("removing", inside, e))
    }

    /// Makes the directory `inside` and its missing parents, owned by the root's owner. With
    /// `repair`, anything at one of those names that is not a directory (a symlink, say) is
    /// removed first: for loom's own directories, which the weaver may not redirect.
    pub fn make_dirs(&self, inside: &str, mode: u32, repair: bool) -> Result<()> {
        let parts = components(inside)?;
        let mut cur = self.open_dir("")?;
        for (i, part) in parts.iter().enumerate() {
            let sofar = parts[..=i].join("/");
            let name = cstr(part, inside)?;
            let how = OpenHow::new().flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | base_flags()).resolve(resolve());
            let opened = match openat2(&cur, name.as_c_str(), how) {
                Err(Errno::ENOENT) => None,
                Err(Errno::ELOOP | Errno::ENOTDIR) if repair => {
                    remove_at(cur.as_fd(), &name, 0).map_err(|e| self.errno("removing", &sofar, e))?;
                    None
                }
                Err(Errno::ENOTDIR) => {
                    let kind = self.stat(&sofar).map(|st| kind_of(&st)).unwrap_or("not a directory");
                    return Err(WeaverFsError::NotDirectory { path: shown(&sofar), kind });
                }
                Err(e) => return Err(self.errno("opening", &sofar, e)),
                Ok(fd) => Some(fd),
            };
            cur = match opened {
                Some(fd) => fd,
                None => {
                    match mkdirat(&cur, name.as_c_str(), Mode::from_bits_truncate(0o700)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.errno("creating", &sofar, e)),
                    }
                    let fd = openat2(&cur, name.as_c_str(), how).map_err(|e| self.errno("opening", &sofar, e))?;
                    self.own(fd.as_fd(), mode, &sofar)?;
                    fd
                }
            };
        }
        Ok(())
    }

    /// Makes the symlink `inside` → `target` unless something is at that name already.
    pub fn create_symlink(&self, inside: &str, target: &str) -> Result<()> {
        let (dir, name) = self.parent_of(inside)?;
        match symlinkat(target, &dir, name.as_c_str()) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(self.errno("creating", inside, e)),
        }
    }

    /// How much disk the tree holds, as `du` counts it: allocated blocks, each inode once,
    /// symlinks never followed and mount points never crossed. The walk stops early once the
    /// total passes `stop_above`, and gives up past `max_entries` entries or [`MAX_DEPTH`].
    pub fn disk_usage(&self, stop_above: u64, max_entries: u64) -> std::result::Result<Usage, UsageError> {
        crate::weaverfs_walk::disk_usage(self.fd.as_fd(), stop_above, max_entries)
    }
}

pub use crate::weaverfs_walk::{Usage, UsageError};

/// Removes `name` in `dir`, whatever it is, never following it; a directory tree goes depth
/// first with one fd per level (at most [`MAX_DEPTH`]).
fn remove_at(dir: BorrowedFd<'_>, name: &CStr, depth: usize) -> std::result::Result<(), Errno> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    if depth >= MAX_DEPTH {
        return Err(Errno::ELOOP);
    }
    let how = OpenHow::new().flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | base_flags()).resolve(resolve());
    let sub = openat2(dir, name, how)?;
    // Names first, then removal: unlinking while reading a directory may skip entries.
    let mut names = vec![];
    for entry in nix::dir::Dir::from_fd(nix::unistd::dup(&sub)?)? {
        let entry = entry?;
        let n = entry.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    for n in names {
        remove_at(sub.as_fd(), &n, depth + 1)?;
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[path = "weaverfs_tests.rs"]
mod tests;
