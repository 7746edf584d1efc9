//! The throwaway root each weaver runs on: a skeleton whose `/usr` (and `/nix/store` on NixOS)
//! is bound read-only from the host or an image, with `/workspace` the only place that keeps
//! the agent's work.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Puts the repository into `workspace`: a git URL is cloned, a local directory is cloned if
/// it is a git repository and copied otherwise.
pub fn populate_workspace(workspace: &Path, repo: &str, branch: Option<&str>) -> Result<(), RootfsError> {
    let fail = |detail: String| RootfsError::Repo { repo: repo.to_string(), detail };
    let local = Path::new(repo);
    if local.is_absolute() && local.is_dir() && !local.join(".git").exists() {
        if branch.is_some() {
            return Err(fail("--branch needs a git repository, and this directory is not one".into()));
        }
        let out = Command::new("cp")
            .arg("-a")
            .arg("--")
            .arg(format!("{}/.", local.display()))
            .arg(workspace)
            .output()
            .map_err(|e| fail(format!("running cp: {e}")))?;
        if !out.status.success() {
            return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        return Ok(());
    }
    let mut cmd = Command::new("git");
    cmd.env("GIT_TERMINAL_PROMPT", "0").args([
        "-c",
        "protocol.ext.allow=never",
        "-c",
        "protocol.file.allow=always",
        "clone",
        "--quiet",
    ]);
    if let Some(b) = branch {
        cmd.args(["--branch", b]);
    }
    cmd.arg("--").arg(repo).arg(workspace);
    let out = cmd.output().map_err(|e| fail(format!("running git: {e} (is git installed?)")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
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
    fn a_plain_directory_is_copied() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a.txt"), "hi").unwrap();
        let dst = tempfile::tempdir().unwrap();
        populate_workspace(dst.path(), src.path().to_str().unwrap(), None).unwrap();
        assert_eq!(fs::read_to_string(dst.path().join("a.txt")).unwrap(), "hi");
    }

    #[test]
    fn a_missing_repo_says_so() {
        let dst = tempfile::tempdir().unwrap();
        let e = populate_workspace(&dst.path().join("w"), "/nonexistent/repo", None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/repo"), "{e}");
    }
}
