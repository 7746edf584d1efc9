//! The disk-usage walk of a weaver's root, for its disk cap: depth first over directory fds
//! (one open per level), never following a symlink or crossing a mount point, bounded in
//! entries and depth so that no tree a weaver builds makes it unbounded in time or memory.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{SFlag, fstat, fstatat};

use crate::weaverfs::MAX_DEPTH;

/// What a walk found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes (`st_blocks` × 512), each inode counted once.
    pub bytes: u64,
    /// Files, directories and links seen.
    pub entries: u64,
    /// False when the walk stopped early because `bytes` passed the limit it was given.
    pub complete: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("its root holds more than {0} files and directories, more than loomd counts for its disk cap")]
    TooManyEntries(u64),
    #[error("its root nests directories more than {0} deep, deeper than loomd counts for its disk cap")]
    TooDeep(usize),
    #[error("reading its root failed")]
    Io(#[source] std::io::Error),
}

impl From<Errno> for UsageError {
    fn from(e: Errno) -> Self {
        UsageError::Io(e.into())
    }
}

fn open_dir(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<nix::dir::Dir, Errno> {
    let how = OpenHow::new()
        .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV);
    nix::dir::Dir::from_fd(openat2(dir, name, how)?)
}

pub(crate) fn disk_usage(root: BorrowedFd<'_>, stop_above: u64, max_entries: u64) -> Result<Usage, UsageError> {
    let mut bytes = (fstat(root)?.st_blocks as u64).saturating_mul(512);
    let mut entries = 0u64;
    let mut linked: HashSet<(u64, u64)> = HashSet::new();
    // A fresh open of the root: the caller's fd must keep its own directory offset.
    let mut stack = vec![open_dir(root, c".")?.into_iter()];
    while let Some(top) = stack.last_mut() {
        let Some(entry) = top.next() else {
            stack.pop();
            continue;
        };
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        entries += 1;
        if entries > max_entries {
            return Err(UsageError::TooManyEntries(max_entries));
        }
        // SAFETY: the fd belongs to `top`, which stays on the stack (and open) for as long as
        // this borrow is used: it is dropped before anything is pushed or popped.
        let dir = unsafe { BorrowedFd::borrow_raw(top.as_raw_fd()) };
        let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            // Removed or renamed while being walked: the next walk counts it where it is.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        let blocks = (st.st_blocks as u64).saturating_mul(512);
        let is_dir = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
        if is_dir {
            bytes = bytes.saturating_add(blocks);
            if stack.len() >= MAX_DEPTH {
                return Err(UsageError::TooDeep(MAX_DEPTH));
            }
            match open_dir(dir, name) {
                Ok(sub) => stack.push(sub.into_iter()),
                // Swapped for something else meanwhile, or a mount the host made: not the
                // weaver's blocks to count.
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV) => {}
                Err(e) => return Err(e.into()),
            }
        } else if st.st_nlink <= 1 || linked.insert((st.st_dev, st.st_ino)) {
            bytes = bytes.saturating_add(blocks);
        }
        if bytes > stop_above {
            return Ok(Usage { bytes, entries, complete: false });
        }
    }
    Ok(Usage { bytes, entries, complete: true })
}
