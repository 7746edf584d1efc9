//! The throwaway root each weaver runs on: a skeleton whose `/usr` (and `/nix/store` on NixOS)
//! is bound read-only from the host or an image, with `/workspace` the only place that keeps
//! the agent's work.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::weaverfs::{WeaverFsError, WeaverRoot};

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
    #[error(transparent)]
    Files(#[from] WeaverFsError),
    #[error("setting up the weaver's sshd: {0}")]
    Ssh(#[from] crate::ssh::SshError),
}

/// loom's own directory in every weaver: the env file, the start marker, the agent's files.
pub const LOOM_DIR: &str = ".loom";

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io { path: path.to_path_buf(), source }
}

/// Builds the skeleton at `root`: empty mount points, the merged-/usr links and `os-release`
/// (nspawn refuses a root without one). It runs again before every start, on a root the
/// weaver has used: it makes what is missing, through [`WeaverRoot`], and leaves what the
/// weaver made in its own tree as it is (an `/etc` it replaced by a symlink is neither
/// followed nor "fixed"); only `/.loom`, loom's own directory, is put back as a directory.
pub fn create_skeleton(root: &Path) -> Result<(), RootfsError> {
    fs::create_dir_all(root).map_err(io_err(root))?;
    let r = WeaverRoot::open(root)?;
    // What is in the weaver's way is the weaver's business; anything else is an error.
    let tolerate = |res: Result<(), WeaverFsError>| match res {
        Err(WeaverFsError::NotDirectory { .. } | WeaverFsError::Symlink { .. }) => Ok(()),
        other => other,
    };
    for d in ["usr", "etc", "workspace", "proc", "sys", "dev", "run", "tmp", "var/tmp", "root", "nix/store"] {
        tolerate(r.make_dirs(d, 0o755, false))?;
    }
    r.make_dirs(LOOM_DIR, 0o755, true)?;
    for d in ["bin", "lib", "lib64", "sbin"] {
        tolerate(r.create_symlink(d, &format!("usr/{d}")))?;
    }
    let os_release = fs::read_to_string("/etc/os-release")
        .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_else(|_| "ID=loom\nNAME=loom weaver\n".into());
    for (name, body) in [
        ("etc/os-release", os_release.as_str()),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
    ] {
        tolerate(r.create_file(name, body.as_bytes(), 0o644).map(drop))?;
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
    fn a_used_root_keeps_what_the_weaver_made_and_gets_back_its_loom_dir() {
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        create_skeleton(&root).unwrap();
        fs::write(root.join("etc/passwd"), "agent:x:0:0::/:/bin/sh\n").unwrap();
        fs::remove_dir_all(root.join(".loom")).unwrap();
        std::os::unix::fs::symlink(host.path(), root.join(".loom")).unwrap();
        fs::remove_dir_all(root.join("tmp")).unwrap();
        std::os::unix::fs::symlink(host.path(), root.join("tmp")).unwrap();
        fs::remove_file(root.join("etc/hosts")).unwrap();
        create_skeleton(&root).unwrap();
        assert_eq!(fs::read_to_string(root.join("etc/passwd")).unwrap(), "agent:x:0:0::/:/bin/sh\n");
        assert!(fs::symlink_metadata(root.join(".loom")).unwrap().is_dir());
        assert!(fs::symlink_metadata(root.join("tmp")).unwrap().is_symlink(), "the weaver's own choice stays");
        assert!(root.join("etc/hosts").is_file(), "what went missing comes back");
        assert_eq!(fs::read_dir(host.path()).unwrap().count(), 0, "nothing was made through a symlink");
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
