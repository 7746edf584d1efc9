//! Uploads: a local directory that the `loom` CLI read with its user's rights and streamed to
//! loomd (a tar, or a git bundle of a repository), kept until one `create` of the same user
//! unpacks it into a weaver's `/workspace`. loomd never reads a client's host path itself.
//!
//! Each upload is bounded in size ([`MAX_UPLOAD_BYTES`]) and in the time it may take to arrive,
//! belongs to the uid that sent it, is used at most once, and expires when not used in time.
//! Expired ones are removed at the next upload or create, and all of them when loomd starts.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use loom_core::api::{MAX_PENDING_UPLOADS, MAX_UPLOAD_BYTES, UPLOAD_TTL_SECS, UploadInfo, UploadKind};

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is over the {MAX_UPLOAD_BYTES}-byte limit: leave build output and large data out of --repo")]
    TooLarge,
    #[error(
        "uid {0} already has {MAX_PENDING_UPLOADS} uploads waiting: create weavers from them, or wait until they expire"
    )]
    TooMany(u32),
    #[error(
        "no upload {0:?} for you: an upload is used by one create only, expires {UPLOAD_TTL_SECS}s after it arrived, and belongs to the user who sent it"
    )]
    NotFound(String),
    #[error("storing the upload in {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug)]
enum Phase {
    Arriving,
    Ready { expires: Instant },
}

#[derive(Debug)]
struct Entry {
    owner: u32,
    kind: UploadKind,
    phase: Phase,
}

/// The uploads loomd holds, in memory (their bytes in `STATE_DIR/uploads`, 0700 root).
#[derive(Debug)]
pub struct Uploads {
    dir: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
}

/// An upload taken for one create; its file is removed when this is dropped.
#[derive(Debug)]
pub struct Upload {
    pub id: String,
    pub kind: UploadKind,
    pub path: PathBuf,
}

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An upload being received; dropped before [`Arriving::commit`], it is thrown away.
#[derive(Debug)]
pub struct Arriving<'a> {
    uploads: &'a Uploads,
    id: String,
    kind: UploadKind,
    path: PathBuf,
    file: Option<std::fs::File>,
    bytes: u64,
}

impl Uploads {
    pub fn new(dir: PathBuf) -> Self {
        Uploads { dir, entries: Mutex::new(HashMap::new()) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes what a previous loomd left (its uploads died with it) and makes the directory.
    pub fn clear_stale(&self) -> Result<(), UploadError> {
        let io = |source| UploadError::Io { path: self.dir.clone(), source };
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        self.ensure_dir().map_err(io)
    }

    fn ensure_dir(&self) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Drops expired uploads and their files.
    fn sweep(&self, now: Instant) {
        let mut entries = self.entries();
        entries.retain(|id, e| {
            let keep = !matches!(e.phase, Phase::Ready { expires } if expires <= now);
            if !keep {
                tracing::info!(upload = %id, uid = e.owner, "an unused upload expired");
                let _ = std::fs::remove_file(self.dir.join(id));
            }
            keep
        });
    }

    /// Starts receiving an upload for `owner`.
    pub fn begin(&self, owner: u32, kind: UploadKind) -> Result<Arriving<'_>, UploadError> {
        self.sweep(Instant::now());
        let id: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
        {
            let mut entries = self.entries();
            if entries.values().filter(|e| e.owner == owner).count() >= MAX_PENDING_UPLOADS {
                return Err(UploadError::TooMany(owner));
            }
            entries.insert(id.clone(), Entry { owner, kind, phase: Phase::Arriving });
        }
        let path = self.dir.join(&id);
        let mut arriving = Arriving { uploads: self, id, kind, path, file: None, bytes: 0 };
        let file = self
            .ensure_dir()
            .and_then(|()| std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&arriving.path))
            .map_err(|source| UploadError::Io { path: arriving.path.clone(), source })?;
        arriving.file = Some(file);
        Ok(arriving)
    }

    /// Takes `owner`'s upload `id` for one create. Someone else's upload is "not found".
    pub fn take(&self, id: &str, owner: u32) -> Result<Upload, UploadError> {
        self.sweep(Instant::now());
        let mut entries = self.entries();
        match entries.get(id) {
            Some(Entry { owner: o, phase: Phase::Ready { .. }, .. }) if *o == owner => {}
            _ => return Err(UploadError::NotFound(id.to_string())),
        }
        let entry = entries.remove(id).ok_or_else(|| UploadError::NotFound(id.to_string()))?;
        Ok(Upload { id: id.to_string(), kind: entry.kind, path: self.dir.join(id) })
    }

    #[cfg(test)]
    fn expire_all(&self) {
        for e in self.entries().values_mut() {
            if let Phase::Ready { expires } = &mut e.phase {
                *expires = Instant::now() - Duration::from_secs(1);
            }
        }
    }
}

impl Arriving<'_> {
    /// Appends a chunk, refusing it past the size limit (the body streams to disk; nothing of
    /// it is kept in memory).
    pub fn write(&mut self, data: &[u8]) -> Result<(), UploadError> {
        self.bytes += data.len() as u64;
        if self.bytes > MAX_UPLOAD_BYTES {
            return Err(UploadError::TooLarge);
        }
        let path = &self.path;
        let file = self.file.as_mut().ok_or_else(|| UploadError::Io {
            path: path.clone(),
            source: io::Error::other("the upload was already committed"),
        })?;
        file.write_all(data).map_err(|source| UploadError::Io { path: path.clone(), source })
    }

    /// The whole body arrived: the upload waits for its create.
    pub fn commit(mut self) -> Result<UploadInfo, UploadError> {
        // Not synced: an upload does not outlive loomd, which clears them all at start.
        drop(self.file.take());
        let ttl = Duration::from_secs(UPLOAD_TTL_SECS);
        if let Some(e) = self.uploads.entries().get_mut(&self.id) {
            e.phase = Phase::Ready { expires: Instant::now() + ttl };
        }
        tracing::info!(upload = %self.id, kind = self.kind.as_str(), bytes = self.bytes, "upload received");
        let info =
            UploadInfo { id: self.id.clone(), kind: self.kind, bytes: self.bytes, expires_in_secs: ttl.as_secs() };
        self.id.clear();
        Ok(info)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        if self.id.is_empty() {
            return; // Committed.
        }
        self.uploads.entries().remove(&self.id);
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploads() -> (tempfile::TempDir, Uploads) {
        let dir = tempfile::tempdir().unwrap();
        let u = Uploads::new(dir.path().join("uploads"));
        u.clear_stale().unwrap();
        (dir, u)
    }

    #[test]
    fn an_upload_is_its_owners_once() {
        let (_d, u) = uploads();
        let mut a = u.begin(4711, UploadKind::Tar).unwrap();
        a.write(b"hello").unwrap();
        let path = a.path().to_path_buf();
        let info = a.commit().unwrap();
        assert_eq!((info.kind, info.bytes), (UploadKind::Tar, 5));
        assert!(matches!(u.take(&info.id, 4712), Err(UploadError::NotFound(_))), "another uid may not take it");
        let taken = u.take(&info.id, 4711).unwrap();
        assert_eq!(std::fs::read(&taken.path).unwrap(), b"hello");
        let e = u.take(&info.id, 4711).unwrap_err();
        assert!(e.to_string().contains("used by one create only"), "{e}");
        drop(taken);
        assert!(!path.exists(), "a used upload's file is removed");
    }

    #[test]
    fn an_unfinished_upload_leaves_nothing_and_cannot_be_taken() {
        let (_d, u) = uploads();
        let mut a = u.begin(1, UploadKind::GitBundle).unwrap();
        a.write(b"partial").unwrap();
        let (path, id) = (a.path().to_path_buf(), a.id.clone());
        assert!(u.take(&id, 1).is_err(), "still arriving");
        drop(a);
        assert!(!path.exists());
        assert!(u.take(&id, 1).is_err());
    }

    #[test]
    fn expired_uploads_are_removed() {
        let (_d, u) = uploads();
        let a = u.begin(1, UploadKind::Tar).unwrap();
        let path = a.path().to_path_buf();
        let info = a.commit().unwrap();
        u.expire_all();
        assert!(matches!(u.take(&info.id, 1), Err(UploadError::NotFound(_))));
        assert!(!path.exists());
    }

    #[test]
    fn limits_per_uid_and_in_size() {
        let (_d, u) = uploads();
        let held: Vec<_> = (0..MAX_PENDING_UPLOADS).map(|_| u.begin(7, UploadKind::Tar).unwrap()).collect();
        assert!(matches!(u.begin(7, UploadKind::Tar), Err(UploadError::TooMany(7))));
        assert!(u.begin(8, UploadKind::Tar).is_ok(), "other users are not held up");
        drop(held);
        let mut a = u.begin(7, UploadKind::Tar).unwrap();
        a.bytes = MAX_UPLOAD_BYTES - 1;
        assert!(matches!(a.write(b"xy"), Err(UploadError::TooLarge)));
    }

    #[test]
    fn stale_uploads_of_an_earlier_loomd_are_cleared() {
        let (_d, u) = uploads();
        let a = u.begin(1, UploadKind::Tar).unwrap();
        let path = a.path().to_path_buf();
        a.commit().unwrap();
        let again = Uploads::new(u.dir.clone());
        again.clear_stale().unwrap();
        assert!(!path.exists());
        assert!(u.dir.is_dir());
    }
}
