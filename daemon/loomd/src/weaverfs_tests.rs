//! What a weaver can plant in its root, against every kind of access loomd makes there.

use std::os::unix::fs::symlink;

use super::*;

/// A weaver root (`root/`) next to a "host" directory outside it holding a secret.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root/.loom/agent")).unwrap();
        std::fs::create_dir_all(dir.path().join("host")).unwrap();
        std::fs::write(dir.path().join("host/secret"), "HOST-SECRET").unwrap();
        Fixture { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn host(&self) -> PathBuf {
        self.dir.path().join("host")
    }
    fn open(&self) -> WeaverRoot {
        WeaverRoot::open(&self.root()).unwrap()
    }
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, Mode::from_bits_truncate(0o644)).unwrap();
}

#[test]
fn a_regular_file_is_read() {
    let f = Fixture::new();
    std::fs::write(f.root().join(".loom/agent/status.json"), "{}").unwrap();
    assert_eq!(f.open().read("/.loom/agent/status.json", 1024).unwrap(), b"{}");
    assert!(f.open().read("/.loom/agent/missing", 1024).unwrap_err().is_not_found());
}

#[test]
fn symlinks_are_never_followed_and_the_error_names_the_link() {
    let f = Fixture::new();
    symlink(f.host().join("secret"), f.root().join(".loom/agent/status.json")).unwrap();
    let e = f.open().read(".loom/agent/status.json", 1024).unwrap_err();
    assert!(matches!(e, WeaverFsError::Symlink { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "/.loom/agent/status.json is or goes through a symlink, and loomd never follows a weaver's symlinks"
    );
    // A relative link that stays inside is refused too, and so is /dev/zero.
    symlink("/dev/zero", f.root().join(".loom/agent/spool.jsonl")).unwrap();
    assert!(matches!(f.open().read(".loom/agent/spool.jsonl", 1024), Err(WeaverFsError::Symlink { .. })));
    // A symlinked directory on the way: the error names it.
    std::fs::remove_dir_all(f.root().join(".loom")).unwrap();
    symlink(f.host(), f.root().join(".loom")).unwrap();
    let e = f.open().read(".loom/secret", 1024).unwrap_err();
    assert!(e.to_string().starts_with("/.loom is or goes through a symlink"), "{e}");
    // An absolute path stays in the root (RESOLVE_IN_ROOT), `..` is refused.
    assert!(matches!(f.open().read("/../host/secret", 1024), Err(WeaverFsError::BadPath { .. })));
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    let f = Fixture::new();
    mkfifo(&f.root().join(".loom/agent/status.json"));
    let started = std::time::Instant::now();
    let e = f.open().read(".loom/agent/status.json", 1024).unwrap_err();
    assert_eq!(e.to_string(), "/.loom/agent/status.json is a FIFO, not a regular file");
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

#[test]
fn reads_stop_at_the_cap() {
    let f = Fixture::new();
    std::fs::write(f.root().join("big"), vec![b'x'; 4097]).unwrap();
    let e = f.open().read("big", 4096).unwrap_err();
    assert_eq!(e.to_string(), "/big is larger than the 4K loomd reads of it");
    assert_eq!(f.open().read("big", 4097).unwrap().len(), 4097);
}

#[test]
fn read_last_gives_the_end_of_a_file_and_refuses_what_read_refuses() {
    let f = Fixture::new();
    std::fs::write(f.root().join("spool"), "one\ntwo\nthree\n").unwrap();
    assert_eq!(f.open().read_last("spool", 6).unwrap(), (b"three\n".to_vec(), true));
    assert_eq!(f.open().read_last("spool", 100).unwrap(), (b"one\ntwo\nthree\n".to_vec(), false));
    mkfifo(&f.root().join("fifo"));
    assert!(matches!(f.open().read_last("fifo", 6), Err(WeaverFsError::NotRegular { kind: "a FIFO", .. })));
    symlink("/dev/zero", f.root().join("zero")).unwrap();
    assert!(matches!(f.open().read_last("zero", 6), Err(WeaverFsError::Symlink { .. })));
}

#[test]
fn replacing_a_planted_symlink_never_writes_through_it() {
    let f = Fixture::new();
    symlink(f.host().join("secret"), f.root().join(".loom/env")).unwrap();
    f.open().replace_file(".loom/env", b"A=1\n", 0o600).unwrap();
    assert_eq!(std::fs::read_to_string(f.host().join("secret")).unwrap(), "HOST-SECRET");
    let meta = std::fs::symlink_metadata(f.root().join(".loom/env")).unwrap();
    assert!(meta.is_file());
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    // A directory tree in the way goes, without following the symlinks inside it.
    std::fs::remove_file(f.root().join(".loom/env")).unwrap();
    std::fs::create_dir_all(f.root().join(".loom/env/a/b")).unwrap();
    symlink(f.host(), f.root().join(".loom/env/a/b/host")).unwrap();
    f.open().replace_file(".loom/env", b"A=2\n", 0o600).unwrap();
    assert_eq!(std::fs::read(f.root().join(".loom/env")).unwrap(), b"A=2\n");
    assert!(f.host().join("secret").exists());
}

#[test]
fn create_file_leaves_what_is_there() {
    let f = Fixture::new();
    assert!(f.open().create_file("etc-passwd", b"mine", 0o644).unwrap());
    assert!(!f.open().create_file("etc-passwd", b"again", 0o644).unwrap());
    assert_eq!(std::fs::read(f.root().join("etc-passwd")).unwrap(), b"mine");
    symlink(f.host().join("new"), f.root().join("dangling")).unwrap();
    assert!(!f.open().create_file("dangling", b"x", 0o644).unwrap());
    assert!(!f.host().join("new").exists(), "O_EXCL never creates through a dangling symlink");
}

#[test]
fn a_loom_dir_redirected_to_the_host_is_repaired_and_the_host_untouched() {
    let f = Fixture::new();
    std::fs::remove_dir_all(f.root().join(".loom")).unwrap();
    symlink(f.host(), f.root().join(".loom")).unwrap();
    let e = f.open().make_dirs(".loom/agent", 0o755, false).unwrap_err();
    assert_eq!(e.to_string(), "/.loom is a symlink, not a directory");
    f.open().make_dirs(".loom/agent", 0o755, true).unwrap();
    assert!(std::fs::symlink_metadata(f.root().join(".loom")).unwrap().is_dir());
    assert!(f.root().join(".loom/agent").is_dir());
    let host: Vec<_> = std::fs::read_dir(f.host()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(host, ["secret"]);
    // A file in the way of a directory that is not repaired: said plainly.
    std::fs::write(f.root().join("etc"), "").unwrap();
    let e = f.open().make_dirs("etc/x", 0o755, false).unwrap_err();
    assert_eq!(e.to_string(), "/etc is a regular file, not a directory");
}

#[test]
fn removing_a_planted_symlink_removes_only_the_link() {
    let f = Fixture::new();
    symlink(f.host().join("secret"), f.root().join(".loom/started")).unwrap();
    f.open().remove(".loom/started").unwrap();
    assert!(f.host().join("secret").exists());
    assert!(!f.open().is_file(".loom/started"));
    f.open().remove(".loom/started").unwrap();
    // Through a symlinked parent, nothing is removed.
    std::fs::remove_dir_all(f.root().join(".loom")).unwrap();
    symlink(f.host(), f.root().join(".loom")).unwrap();
    assert!(f.open().remove(".loom/secret").is_err());
    assert!(f.host().join("secret").exists());
}

#[test]
fn disk_usage_counts_blocks_once_and_never_follows_links() {
    let f = Fixture::new();
    let big = vec![7u8; 1 << 20];
    std::fs::write(f.host().join("huge"), &big).unwrap();
    symlink(f.host(), f.root().join("to-host")).unwrap();
    let before = f.open().disk_usage(u64::MAX, 1000).unwrap();
    assert!(before.complete);
    assert!(before.bytes < 1 << 20, "the host's file behind a symlink is not the weaver's: {before:?}");
    std::fs::write(f.root().join("a"), &big).unwrap();
    std::fs::hard_link(f.root().join("a"), f.root().join("b")).unwrap();
    let after = f.open().disk_usage(u64::MAX, 1000).unwrap();
    let grown = after.bytes - before.bytes;
    assert!(((1 << 20)..(1 << 20) + 64 * 1024).contains(&grown), "one MiB, counted once: {grown}");
    let early = f.open().disk_usage(1 << 19, 1000).unwrap();
    assert!(!early.complete && early.bytes > 1 << 19);
    assert!(matches!(f.open().disk_usage(u64::MAX, 3), Err(UsageError::TooManyEntries(3))));
}

#[test]
fn disk_usage_gives_up_on_a_tree_deeper_than_it_walks() {
    let f = Fixture::new();
    let mut p = f.root();
    for _ in 0..=MAX_DEPTH {
        p.push("d");
    }
    std::fs::create_dir_all(&p).unwrap();
    let e = f.open().disk_usage(u64::MAX, 1_000_000).unwrap_err();
    assert!(matches!(e, UsageError::TooDeep(MAX_DEPTH)), "{e:?}");
    // Removal of such a tree is refused the same way, never half-followed.
    assert!(f.open().remove("d").is_err());
}
