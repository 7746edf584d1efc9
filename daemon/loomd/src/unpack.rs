//! Putting a client's files into a weaver's `/workspace` without trusting them: an upload's
//! tar is unpacked entry by entry, and what git checked out is normalised.
//!
//! Only regular files, directories and symlinks are made. Modes keep their permission bits
//! (never setuid, setgid or sticky), ownership is loomd's until nspawn maps the tree into the
//! weaver's range, and symlinks are stored as they are but never followed here: every path is
//! walked one component at a time from the workspace's own descriptor with `O_NOFOLLOW`, so an
//! entry cannot land outside `/workspace`, through a symlink an earlier entry made, or on a
//! host file. Hard links, device nodes, FIFOs and sockets are refused.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::{Mode, fchmod, mkdirat};

/// The most entries one upload may hold.
pub const MAX_ENTRIES: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("upload entry {path:?}: {why}")]
    Entry { path: String, why: String },
    #[error("the upload is not a valid tar stream")]
    Tar(#[source] io::Error),
    #[error("writing {path:?} into the workspace failed")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the upload unpacks to more than {0} bytes or {MAX_ENTRIES} entries")]
    TooLarge(u64),
}

/// What an unpack made.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

fn entry_err(path: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Entry { path: path.to_string(), why: why.into() }
}

fn io_err(path: &str) -> impl FnOnce(Errno) -> UnpackError + '_ {
    move |e| UnpackError::Io { path: path.to_string(), source: io::Error::from(e) }
}

/// The names along a relative entry path; `..`, absolute paths and empty names are refused.
fn components<'a>(shown: &str, path: &'a Path) -> Result<Vec<&'a OsStr>, UnpackError> {
    let mut out = vec![];
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(entry_err(shown, "a path with `..` is refused")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(entry_err(shown, "an absolute path is refused: entries are relative to /workspace"));
            }
        }
    }
    Ok(out)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);

/// Opens the directory `names` below `root`, making missing ones, refusing a symlink anywhere.
fn open_dir(root: &OwnedFd, names: &[&OsStr], shown: &str) -> Result<OwnedFd, UnpackError> {
    let mut fd = root.try_clone().map_err(|source| UnpackError::Io { path: shown.into(), source })?;
    for name in names {
        let next = match openat(fd.as_fd(), *name, DIR_FLAGS, Mode::empty()) {
            Err(Errno::ENOENT) => {
                mkdirat(fd.as_fd(), *name, Mode::from_bits_truncate(0o755)).map_err(io_err(shown))?;
                openat(fd.as_fd(), *name, DIR_FLAGS, Mode::empty())
            }
            other => other,
        };
        fd = next.map_err(|e| match e {
            Errno::ELOOP | Errno::ENOTDIR => {
                entry_err(shown, format!("{:?} on its way is not a directory (a symlink is never followed)", name))
            }
            e => io_err(shown)(e),
        })?;
    }
    Ok(fd)
}

/// Exactly `size` bytes of `r` into `file`, or an error if it has fewer.
fn copy_exact(r: &mut impl Read, file: &mut File, size: u64, shown: &str) -> Result<(), UnpackError> {
    let n = io::copy(&mut r.take(size), file).map_err(|source| UnpackError::Io { path: shown.into(), source })?;
    if n != size {
        return Err(entry_err(shown, format!("the tar ends inside it ({n} of {size} bytes)")));
    }
    Ok(())
}

/// Unpacks the tar stream `reader` into the (empty) directory `dest`.
pub fn unpack_tar(reader: impl Read, dest: &Path, max_bytes: u64) -> Result<Unpacked, UnpackError> {
    let shown_dest = dest.display().to_string();
    let root = open(dest, DIR_FLAGS, Mode::empty()).map_err(io_err(&shown_dest))?;
    let mut archive = tar::Archive::new(reader);
    let mut done = Unpacked::default();
    let mut count = 0u64;
    for entry in archive.entries().map_err(UnpackError::Tar)? {
        let mut entry = entry.map_err(UnpackError::Tar)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(UnpackError::TooLarge(max_bytes));
        }
        let path = entry.path().map_err(UnpackError::Tar)?.into_owned();
        let shown = path.display().to_string();
        let names = components(&shown, &path)?;
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().map_err(UnpackError::Tar)? & 0o777;
        let Some((name, parents)) = names.split_last() else {
            if kind.is_dir() {
                continue; // The workspace itself.
            }
            return Err(entry_err(&shown, "an entry without a name"));
        };
        if kind.is_pax_global_extensions() {
            continue;
        }
        let parent = open_dir(&root, parents, &shown)?;
        if kind.is_dir() {
            match mkdirat(parent.as_fd(), *name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(io_err(&shown)(e)),
            }
            let dir = openat(parent.as_fd(), *name, DIR_FLAGS, Mode::empty()).map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => entry_err(&shown, "already there, and not a directory"),
                e => io_err(&shown)(e),
            })?;
            fchmod(dir.as_fd(), Mode::from_bits_truncate(mode)).map_err(io_err(&shown))?;
            done.dirs += 1;
        } else if kind.is_file() || kind.is_contiguous() {
            let size = entry.size();
            done.bytes += size;
            if done.bytes > max_bytes {
                return Err(UnpackError::TooLarge(max_bytes));
            }
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = openat(parent.as_fd(), *name, flags, Mode::from_bits_truncate(0o600)).map_err(|e| match e {
                Errno::EEXIST => entry_err(&shown, "it is in the upload twice"),
                e => io_err(&shown)(e),
            })?;
            let mut file = File::from(fd);
            copy_exact(&mut entry, &mut file, size, &shown)?;
            fchmod(file.as_fd(), Mode::from_bits_truncate(mode)).map_err(io_err(&shown))?;
            if let Ok(mtime) = entry.header().mtime() {
                let _ = file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime));
            }
            done.files += 1;
        } else if kind.is_symlink() {
            let target = entry.link_name_bytes().map(|t| t.into_owned()).unwrap_or_default();
            if target.is_empty() {
                return Err(entry_err(&shown, "a symlink without a target"));
            }
            nix::unistd::symlinkat(OsStr::from_bytes(&target), parent.as_fd(), *name).map_err(|e| match e {
                Errno::EEXIST => entry_err(&shown, "it is in the upload twice"),
                e => io_err(&shown)(e),
            })?;
            done.symlinks += 1;
        } else {
            let what = if kind.is_hard_link() {
                "a hard link"
            } else if kind.is_character_special() || kind.is_block_special() {
                "a device node"
            } else if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_gnu_sparse() {
                "a sparse file"
            } else {
                "of an unknown kind"
            };
            return Err(entry_err(
                &shown,
                format!("it is {what}: an upload holds only regular files, directories and symlinks"),
            ));
        }
    }
    Ok(done)
}

/// Makes what git wrote into `dir` as plain as an unpacked upload: no setuid, setgid or sticky
/// bits, no hard links shared with anything, nothing but files, directories and symlinks.
/// Symlinks are never followed. It runs before the weaver's first process, so nothing else
/// writes in `dir` meanwhile.
pub fn normalise(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            let special = meta.mode() & 0o7000 != 0;
            if ft.is_symlink() {
                continue;
            } else if ft.is_dir() {
                if special {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode() & 0o777))?;
                }
                stack.push(path);
            } else if ft.is_file() {
                if meta.nlink() > 1 {
                    // A private copy, so that the later chown into the weaver's range touches
                    // no file outside it.
                    let tmp = path.with_file_name(format!(".loom-copy-{}", rand::random::<u64>()));
                    std::fs::copy(&path, &tmp)?;
                    std::fs::rename(&tmp, &path)?;
                }
                if special || meta.nlink() > 1 {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(meta.mode() & 0o777))?;
                }
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
