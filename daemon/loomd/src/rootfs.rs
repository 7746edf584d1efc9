//! The throwaway root each weaver runs on: a skeleton whose `/usr` (and `/nix/store` on NixOS)
//! is bound read-only from the host or an image, with `/workspace` the only place that keeps
//! the agent's work.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("preparing the weaver's root at {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not put {repo:?} into /workspace: {detail}")]
    Repo { repo: String, detail: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io { path: path.to_path_buf(), source }
}

/// Builds the skeleton at `root`: empty mount points, the merged-/usr links and `os-release`
/// (nspawn refuses a root without one).
pub fn create_skeleton(root: &Path) -> Result<(), RootfsError> {
    for d in ["usr", "etc", "workspace", "proc", "sys", "dev", "run", "tmp", "var/tmp", "root", "nix/store", ".loom"] {
        let p = root.join(d);
        fs::create_dir_all(&p).map_err(io_err(&p))?;
    }
    for d in ["bin", "lib", "lib64", "sbin"] {
        let link = root.join(d);
        if fs::symlink_metadata(&link).is_err() {
            symlink(format!("usr/{d}"), &link).map_err(io_err(&link))?;
        }
    }
    let os_release = root.join("etc/os-release");
    let text = fs::read_to_string("/etc/os-release")
        .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_else(|_| "ID=loom\nNAME=loom weaver\n".into());
    fs::write(&os_release, text).map_err(io_err(&os_release))?;
    for (name, body) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
    ] {
        let p = root.join(name);
        fs::write(&p, body).map_err(io_err(&p))?;
    }
    Ok(())
}

/// Where a workspace's files come from.
#[derive(Debug)]
pub enum RepoSource<'a> {
    /// A git URL, cloned by loomd with a scrubbed git.
    Remote(&'a str),
    /// An upload the caller's CLI made of a local directory with the caller's rights.
    Upload(&'a crate::uploads::Upload),
}

impl std::fmt::Display for RepoSource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepoSource::Remote(url) => f.write_str(url),
            RepoSource::Upload(u) => write!(f, "upload {} ({})", u.id, u.kind.as_str()),
        }
    }
}

/// Fills `workspace` (an empty directory of a weaver that has not run yet): a remote URL is
/// cloned, an upload's tar unpacked, its git bundle turned into a checkout. Whatever it is,
/// the result holds only plain files, directories and symlinks, none of them setuid or
/// hard-linked. loomd never reads a host path for a client here.
pub fn populate_workspace(workspace: &Path, source: &RepoSource<'_>, branch: Option<&str>) -> Result<(), RootfsError> {
    use loom_core::api::{MAX_UPLOAD_BYTES, UploadKind};
    let fail = |detail: String| RootfsError::Repo { repo: source.to_string(), detail };
    match source {
        RepoSource::Remote(url) => {
            crate::git::clone_remote(url, workspace, branch).map_err(|e| fail(crate::error_chain(&e)))?
        }
        RepoSource::Upload(up) if up.kind == UploadKind::Tar => {
            if branch.is_some() {
                return Err(fail("--branch needs a git repository, and the uploaded directory is not one".into()));
            }
            let file = fs::File::open(&up.path).map_err(io_err(&up.path))?;
            let done = crate::unpack::unpack_tar(io::BufReader::new(file), workspace, MAX_UPLOAD_BYTES)
                .map_err(|e| fail(crate::error_chain(&e)))?;
            tracing::info!(upload = %up.id, files = done.files, dirs = done.dirs, symlinks = done.symlinks, bytes = done.bytes, "unpacked an upload");
            return Ok(());
        }
        RepoSource::Upload(up) => {
            crate::git::unbundle(&up.path, workspace, branch).map_err(|e| fail(crate::error_chain(&e)))?
        }
    }
    crate::unpack::normalise(workspace).map_err(io_err(workspace))
}

/// Removes a weaver's root, refusing to follow the bind mounts of a container that still runs.
pub fn remove(root: &Path) -> Result<(), RootfsError> {
    match fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RootfsError::Io { path: root.to_path_buf(), source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skeleton_has_what_nspawn_needs() {
        let dir = tempfile::tempdir().unwrap();
        create_skeleton(dir.path()).unwrap();
        assert!(dir.path().join("etc/os-release").is_file());
        assert_eq!(fs::read_link(dir.path().join("bin")).unwrap(), PathBuf::from("usr/bin"));
        assert!(dir.path().join("workspace").is_dir());
        // Idempotent: a restart reuses the root.
        create_skeleton(dir.path()).unwrap();
    }

    #[test]
    fn an_uploaded_tar_is_unpacked_and_a_branch_needs_git() {
        let src = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o4644);
        b.append_data(&mut h, "a.txt", &b"hi"[..]).unwrap();
        let path = src.path().join("up");
        fs::write(&path, b.into_inner().unwrap()).unwrap();
        let up = crate::uploads::Upload { id: "u1".into(), kind: loom_core::api::UploadKind::Tar, path };
        let dst = tempfile::tempdir().unwrap();
        let e = populate_workspace(dst.path(), &RepoSource::Upload(&up), Some("main")).unwrap_err();
        assert!(e.to_string().contains("--branch needs a git repository"), "{e}");
        populate_workspace(dst.path(), &RepoSource::Upload(&up), None).unwrap();
        assert_eq!(fs::read_to_string(dst.path().join("a.txt")).unwrap(), "hi");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(fs::metadata(dst.path().join("a.txt")).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn a_local_path_is_never_cloned() {
        let dst = tempfile::tempdir().unwrap();
        let e = populate_workspace(&dst.path().join("w"), &RepoSource::Remote("/etc"), None).unwrap_err();
        assert!(e.to_string().contains("is a local path"), "{e}");
        assert!(!dst.path().join("w").exists());
    }
}
