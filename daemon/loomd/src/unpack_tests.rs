//! Hostile tars against the unpacker: each must be refused or made harmless, and nothing may
//! change outside the destination.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use super::*;

/// A tar entry header with a raw name (the builder itself refuses `..` and absolute paths).
fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_cksum();
    h
}

fn tar_of(entries: &[(tar::Header, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (h, data) in entries {
        b.append(h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn symlink_entry(name: &[u8], target: &str) -> tar::Header {
    let mut h = header(name, tar::EntryType::Symlink, 0, 0o777);
    h.set_link_name(target).unwrap();
    h.set_cksum();
    h
}

fn unpack(bytes: &[u8], dest: &Path) -> Result<Unpacked, UnpackError> {
    unpack_tar(bytes, dest, 1 << 20)
}

fn refused(bytes: &[u8], dest: &Path, needle: &str) {
    let e = unpack(bytes, dest).expect_err("must be refused");
    assert!(crate::error_chain(&e).contains(needle), "{}", crate::error_chain(&e));
}

#[test]
fn files_dirs_and_symlinks_arrive_plain() {
    let dest = tempfile::tempdir().unwrap();
    let t = tar_of(&[
        (header(b"src", tar::EntryType::Directory, 0, 0o2755), b""),
        (header(b"src/tool", tar::EntryType::Regular, 3, 0o4755), b"abc"),
        (header(b"deep/er/file", tar::EntryType::Regular, 2, 0o644), b"hi"),
        (symlink_entry(b"shadow", "/etc/shadow"), b""),
    ]);
    let got = unpack(&t, dest.path()).unwrap();
    assert_eq!(got, Unpacked { files: 2, dirs: 1, symlinks: 1, bytes: 5 });
    let tool = fs::metadata(dest.path().join("src/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755, "setuid dropped");
    assert_eq!(fs::metadata(dest.path().join("src")).unwrap().mode() & 0o7777, 0o755, "setgid dropped");
    assert_eq!(fs::read(dest.path().join("deep/er/file")).unwrap(), b"hi");
    assert_eq!(fs::read_link(dest.path().join("shadow")).unwrap(), Path::new("/etc/shadow"));
}

#[test]
fn paths_that_leave_the_destination_are_refused() {
    let dest = tempfile::tempdir().unwrap();
    refused(&tar_of(&[(header(b"../up", tar::EntryType::Regular, 1, 0o644), b"x")]), dest.path(), "`..`");
    refused(&tar_of(&[(header(b"a/../../up", tar::EntryType::Regular, 1, 0o644), b"x")]), dest.path(), "`..`");
    refused(&tar_of(&[(header(b"/tmp/abs", tar::EntryType::Regular, 1, 0o644), b"x")]), dest.path(), "absolute");
    assert!(!dest.path().parent().unwrap().join("up").exists());
}

#[test]
fn a_symlink_is_never_written_through() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    fs::write(&victim, "host data").unwrap();
    let out = outside.path().to_str().unwrap();
    let dest = tempfile::tempdir().unwrap();
    // A symlinked directory, then a file below it.
    let t =
        tar_of(&[(symlink_entry(b"link", out), b""), (header(b"link/pwned", tar::EntryType::Regular, 1, 0o644), b"x")]);
    refused(&t, dest.path(), "a symlink is never followed");
    assert!(!outside.path().join("pwned").exists());
    // A symlink, then a directory entry of the same name (which would chmod the target).
    let dest = tempfile::tempdir().unwrap();
    let t = tar_of(&[(symlink_entry(b"link", out), b""), (header(b"link", tar::EntryType::Directory, 0, 0o777), b"")]);
    refused(&t, dest.path(), "not a directory");
    assert_ne!(fs::metadata(outside.path()).unwrap().mode() & 0o777, 0o777);
    // A symlink to a host file, then a file of the same name.
    let dest = tempfile::tempdir().unwrap();
    let t = tar_of(&[
        (symlink_entry(b"f", victim.to_str().unwrap()), b""),
        (header(b"f", tar::EntryType::Regular, 5, 0o644), b"owned"),
    ]);
    refused(&t, dest.path(), "twice");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "host data");
}

#[test]
fn links_devices_and_fifos_are_refused() {
    for (kind, what) in [
        (tar::EntryType::Link, "a hard link"),
        (tar::EntryType::Char, "a device node"),
        (tar::EntryType::Block, "a device node"),
        (tar::EntryType::Fifo, "a FIFO"),
    ] {
        let dest = tempfile::tempdir().unwrap();
        let mut h = header(b"x", kind, 0, 0o644);
        if kind == tar::EntryType::Link {
            h.set_link_name("/etc/shadow").unwrap();
            h.set_cksum();
        }
        refused(&tar_of(&[(h, b"")]), dest.path(), what);
        assert!(fs::symlink_metadata(dest.path().join("x")).is_err(), "{what} left something behind");
    }
}

#[test]
fn size_and_truncation() {
    let dest = tempfile::tempdir().unwrap();
    let big = vec![0u8; 4096];
    let t = tar_of(&[(header(b"big", tar::EntryType::Regular, 4096, 0o644), &big)]);
    let e = unpack_tar(&t[..], dest.path(), 1000).unwrap_err();
    assert!(matches!(e, UnpackError::TooLarge(1000)), "{e}");
    let dest = tempfile::tempdir().unwrap();
    let t = tar_of(&[(header(b"f", tar::EntryType::Regular, 4096, 0o644), &big)]);
    assert!(unpack(&t[..1024], dest.path()).is_err(), "a cut stream is an error");
}

#[test]
fn normalise_leaves_plain_files_only_and_never_follows_symlinks() {
    let outside = tempfile::tempdir().unwrap();
    let host_tool = outside.path().join("tool");
    fs::write(&host_tool, "x").unwrap();
    fs::set_permissions(&host_tool, fs::Permissions::from_mode(0o4755)).unwrap();
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path();
    fs::create_dir(w.join("d")).unwrap();
    fs::write(w.join("d/suid"), "s").unwrap();
    fs::set_permissions(w.join("d/suid"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::write(outside.path().join("shared"), "shared").unwrap();
    fs::hard_link(outside.path().join("shared"), w.join("d/linked")).unwrap();
    nix::unistd::mkfifo(&w.join("fifo"), Mode::from_bits_truncate(0o644)).unwrap();
    symlink(&host_tool, w.join("to-host")).unwrap();
    normalise(w).unwrap();
    assert_eq!(fs::metadata(w.join("d/suid")).unwrap().mode() & 0o7777, 0o755);
    let linked = fs::metadata(w.join("d/linked")).unwrap();
    assert_eq!((linked.nlink(), fs::read_to_string(w.join("d/linked")).unwrap().as_str()), (1, "shared"));
    assert_eq!(fs::metadata(outside.path().join("shared")).unwrap().nlink(), 1);
    assert!(fs::symlink_metadata(w.join("fifo")).is_err(), "the FIFO is gone");
    assert!(fs::symlink_metadata(w.join("to-host")).unwrap().file_type().is_symlink());
    assert_eq!(fs::metadata(&host_tool).unwrap().mode() & 0o7777, 0o4755, "the symlink's target is untouched");
}
