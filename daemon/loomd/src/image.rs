//! `--image DIR`: a directory whose `usr/` a weaver gets read-only as its `/usr`. loomd binds it
//! with root's rights, so the path must not let anyone choose what ends up bound: no symlink
//! anywhere on it, every directory on it owned by root and writable by nobody else, and, for an
//! operator who is not admin, below one of the configured `[weaver] image_roots`.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    #[error("--image {image}: {path} is a symlink; give the real path")]
    Symlink { image: String, path: String },
    #[error("--image {image}: {path} is not a directory")]
    NotDir { image: String, path: String },
    #[error("--image {image}: {path} must be owned by root and writable by nobody else")]
    NotRootOwned { image: String, path: String },
    #[error("--image {image}: {path} does not exist")]
    Missing { image: String, path: String },
    #[error("--image {image} is not below an image root ({roots}): operators may use only images an admin put there")]
    OutsideRoots { image: String, roots: String },
}

/// Checks `dir` (an absolute path without `..`, as `Image` parses it) and returns the `usr`
/// directory to bind.
pub fn check(dir: &Path, roots: &[PathBuf], admin: bool) -> Result<PathBuf, ImageError> {
    let image = dir.display().to_string();
    if !admin {
        let below = |root: &PathBuf| dir.starts_with(root) && dir != root.as_path();
        if !roots.iter().any(below) {
            let roots = if roots.is_empty() {
                "none configured".to_string()
            } else {
                roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")
            };
            return Err(ImageError::OutsideRoots { image, roots });
        }
    }
    let usr = dir.join("usr");
    let mut at = PathBuf::from("/");
    for c in usr.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(name) => at.push(name),
            _ => return Err(ImageError::NotDir { image, path: usr.display().to_string() }),
        }
        let path = at.display().to_string();
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(_) => return Err(ImageError::Missing { image, path }),
        };
        if meta.file_type().is_symlink() {
            return Err(ImageError::Symlink { image, path });
        }
        if !meta.is_dir() {
            return Err(ImageError::NotDir { image, path });
        }
        // The sticky /tmp is writable by all: a directory below it could be anyone's.
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(ImageError::NotRootOwned { image, path });
        }
    }
    Ok(usr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn as_root(what: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref() != Ok("1"), "{what} needs root");
        eprintln!("SKIPPED {what}: the image checks need root-owned directories");
        false
    }

    fn root_owned_dir() -> tempfile::TempDir {
        let d = tempfile::Builder::new()
            .prefix("loom-image")
            .tempdir_in("/var/lib")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn operators_need_an_image_root() {
        let e = check(Path::new("/srv/images/base"), &[], false).unwrap_err();
        assert!(e.to_string().contains("none configured"), "{e}");
        let e = check(Path::new("/etc"), &[PathBuf::from("/srv/images")], false).unwrap_err();
        assert!(matches!(e, ImageError::OutsideRoots { .. }), "{e}");
        // The root itself is not an image.
        let e = check(Path::new("/srv/images"), &[PathBuf::from("/srv/images")], false).unwrap_err();
        assert!(matches!(e, ImageError::OutsideRoots { .. }), "{e}");
    }

    #[test]
    fn a_symlinked_usr_is_refused() {
        if !as_root("a_symlinked_usr_is_refused") {
            return;
        }
        let d = root_owned_dir();
        std::os::unix::fs::symlink("/etc", d.path().join("usr")).unwrap();
        let e = check(d.path(), &[], true).unwrap_err();
        assert!(matches!(e, ImageError::Symlink { .. }), "{e}");
    }

    #[test]
    fn a_real_root_owned_image_is_taken() {
        if !as_root("a_real_root_owned_image_is_taken") {
            return;
        }
        let d = root_owned_dir();
        std::fs::create_dir(d.path().join("usr")).unwrap();
        assert_eq!(check(d.path(), &[], true).unwrap(), d.path().join("usr"));
        std::fs::set_permissions(d.path().join("usr"), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(check(d.path(), &[], true).unwrap_err(), ImageError::NotRootOwned { .. }));
    }
}
