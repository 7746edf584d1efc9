//! `--repo DIR`: the CLI reads a local directory with its user's rights and streams it to
//! loomd, which never reads a client's host path itself. A git repository goes as a bundle of
//! its commits (`git bundle create - --all`, uncommitted changes stay behind); a plain
//! directory as a tar of its regular files, directories and symlinks (never followed), on one
//! file system. What could not be read, and device nodes, sockets and FIFOs, are left out and
//! named on stderr.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Frame;
use loom_core::api::UploadKind;
use tokio::sync::mpsc;

use crate::client::{CliError, Client};

/// How many skipped paths are named one by one before the rest is counted.
const NAMED: usize = 20;
const CHUNK: usize = 64 * 1024;

/// What `--repo` names: a URL for loomd to clone, or a local directory to upload.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Remote(String),
    Local(PathBuf),
}

pub fn classify(repo: &str) -> Result<Source, CliError> {
    let bad = |m: String| CliError::new("bad_request", m);
    if fs::symlink_metadata(repo).is_ok() {
        let path = fs::canonicalize(repo).map_err(|e| bad(format!("--repo {repo}: {e}")))?;
        if !path.is_dir() {
            return Err(bad(format!("--repo {repo} is not a directory: give a directory or a git URL")));
        }
        return Ok(Source::Local(path));
    }
    match loom_core::repo::check_remote_repo(repo) {
        Ok(()) => Ok(Source::Remote(repo.to_string())),
        Err(loom_core::weaver::SpecError::LocalRepo(_)) => {
            Err(bad(format!("--repo {repo}: no such directory (give a local directory or a git URL)")))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Paths left out of an upload, and why.
#[derive(Debug, Default)]
pub struct Notes {
    pub skipped: Vec<(PathBuf, String)>,
}

impl Notes {
    fn skip(&mut self, path: &Path, why: impl Into<String>) {
        self.skipped.push((path.to_path_buf(), why.into()));
    }

    /// Lines for stderr: the first few paths by name, then a count.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .skipped
            .iter()
            .take(NAMED)
            .map(|(p, why)| {
                loom_core::terminal::sanitize(&format!("not uploaded: {}: {why}", p.display())).into_owned()
            })
            .collect();
        if self.skipped.len() > NAMED {
            out.push(format!("not uploaded: {} more paths", self.skipped.len() - NAMED));
        }
        out
    }
}

/// A body that yields what the producer sends; an `Err` aborts the request.
pub struct ChannelBody(mpsc::Receiver<io::Result<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// A `Write` that hands full chunks to a [`ChannelBody`] (from a blocking thread).
struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "loomd stopped reading"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// Reads exactly `size` bytes: a file that shrank while it was read is padded with zeros
/// (and named), one that grew is cut, so the tar stays well-formed.
struct Exactly<R> {
    inner: R,
    left: u64,
    short: bool,
}

impl<R: Read> Read for Exactly<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left as usize);
        let n = if self.short { 0 } else { self.inner.read(&mut buf[..want])? };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

fn header(kind: tar::EntryType, meta: &fs::Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    // Permission bits only; loomd drops setuid bits and ownership too.
    h.set_mode(meta.mode() & 0o777);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_size(size);
    h
}

fn kind_name(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_char_device() || ft.is_block_device() {
        "a device node"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a file, directory or symlink"
    }
}

/// Writes a tar of `root` to `out`, reading nothing through a symlink.
pub fn write_tar(root: &Path, out: impl Write, notes: &mut Notes) -> io::Result<()> {
    let dev = fs::symlink_metadata(root)?.dev();
    let mut b = tar::Builder::new(out);
    let mut stack = vec![(root.to_path_buf(), PathBuf::new())];
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<_> = match fs::read_dir(&dir) {
            Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
            Err(e) => {
                notes.skip(&dir, format!("cannot list it: {e}"));
                continue;
            }
        };
        names.sort();
        for name in names {
            let (path, r) = (dir.join(&name), rel.join(&name));
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    notes.skip(&path, e.to_string());
                    continue;
                }
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = fs::read_link(&path)?;
                b.append_link(&mut header(tar::EntryType::Symlink, &meta, 0), &r, &target)?;
            } else if ft.is_dir() {
                if meta.dev() != dev {
                    notes.skip(&path, "another file system is mounted there");
                    continue;
                }
                b.append_data(&mut header(tar::EntryType::Directory, &meta, 0), &r, io::empty())?;
                stack.push((path, r));
            } else if ft.is_file() {
                // O_NOFOLLOW and O_NONBLOCK: a file swapped for a symlink or a FIFO since the
                // lstat is neither followed nor waited on.
                let file = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                    .open(&path);
                let file = match file {
                    Ok(f) => f,
                    Err(e) => {
                        notes.skip(&path, e.to_string());
                        continue;
                    }
                };
                let meta = file.metadata()?;
                if !meta.is_file() {
                    notes.skip(&path, "it changed while it was read");
                    continue;
                }
                let mut data = Exactly { inner: file, left: meta.len(), short: false };
                b.append_data(&mut header(tar::EntryType::Regular, &meta, meta.len()), &r, &mut data)?;
                if data.short {
                    notes.skip(&path, "it shrank while it was read (its end is zeros)");
                }
            } else {
                notes.skip(&path, format!("{}: uploads hold only files, directories and symlinks", kind_name(&ft)));
            }
        }
    }
    b.into_inner()?.flush()
}

fn git(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("git");
    cmd.arg("-C").arg(dir);
    cmd
}

/// Whether `dir` is the top of a git repository (a `.git` directory or file in it).
fn is_git(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(".git")).is_ok()
}

/// What an upload gave: its id, and for a repository the branch it is on.
#[derive(Debug)]
pub struct Uploaded {
    pub id: String,
    pub branch: Option<String>,
    pub notes: Notes,
}

/// Uploads the local directory `dir` with this process's rights.
pub async fn send(client: &Client, dir: &Path) -> Result<Uploaded, CliError> {
    let fail = |m: String| CliError::new("bad_request", m);
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let body = ChannelBody(rx);
    if is_git(dir) {
        let ok = |cmd: &mut std::process::Command| cmd.output().map_err(|e| fail(format!("running git: {e}")));
        let head = ok(git(dir).args(["rev-parse", "--verify", "-q", "HEAD"]))?;
        let why = String::from_utf8_lossy(&head.stderr).trim().to_string();
        if !head.status.success() && !why.is_empty() {
            return Err(fail(format!("git cannot read {}: {why}", dir.display())));
        }
        if !head.status.success() {
            return Err(fail(format!(
                "{} is a git repository without commits: commit first (an upload of a repository holds its commits)",
                dir.display()
            )));
        }
        let mut notes = Notes::default();
        let status = ok(git(dir).args(["status", "--porcelain"]))?;
        let changed = String::from_utf8_lossy(&status.stdout).lines().count();
        if changed > 0 {
            notes.skip(
                dir,
                format!(
                    "{changed} uncommitted changes (modified or untracked files) stay behind: only commits are uploaded; commit or stash them first"
                ),
            );
        }
        let branch = ok(git(dir).args(["symbolic-ref", "--short", "-q", "HEAD"]))?;
        let branch = String::from_utf8_lossy(&branch.stdout).trim().to_string();
        let mut child = tokio::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["bundle", "create", "--quiet", "-", "--all"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("running git bundle: {e}")))?;
        let mut stdout = child.stdout.take().ok_or_else(|| fail("git bundle has no output".into()))?;
        let pump = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; CHUNK];
            loop {
                match stdout.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
            }
            let out = child.wait_with_output().await;
            let failed = match &out {
                Ok(o) if o.status.success() => None,
                Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = &failed {
                let _ = tx.send(Err(io::Error::other(why.clone()))).await;
            }
            failed
        });
        let answer = client.upload(&format!("/v1/uploads?kind={}", UploadKind::GitBundle.as_str()), body).await;
        if let Err(answer) = &answer
            && answer.code != "unavailable"
        {
            return Err(CliError::new(&answer.code, answer.message.clone()));
        }
        if let Ok(Some(why)) = pump.await {
            return Err(fail(format!("git bundle create in {} failed: {why}", dir.display())));
        }
        let id = upload_id(answer?)?;
        return Ok(Uploaded { id, branch: (!branch.is_empty()).then_some(branch), notes });
    }
    let root = dir.to_path_buf();
    let producer = std::thread::spawn(move || {
        let mut notes = Notes::default();
        let mut w = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let r = write_tar(&root, &mut w, &mut notes);
        if let Err(e) = &r {
            let _ = tx.blocking_send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        r.map(|()| notes)
    });
    let answer = client.upload(&format!("/v1/uploads?kind={}", UploadKind::Tar.as_str()), body).await;
    if let Err(answer) = &answer
        && answer.code != "unavailable"
    {
        // loomd refused it and said why; what is still being read does not matter.
        return Err(CliError::new(&answer.code, answer.message.clone()));
    }
    let read = producer.join().map_err(|_| fail(format!("reading {} failed", dir.display())))?;
    match (read, answer) {
        (Ok(notes), Ok(v)) => Ok(Uploaded { id: upload_id(v)?, branch: None, notes }),
        // loomd stopped reading: its answer says why.
        (Err(e), Err(answer)) if e.kind() == io::ErrorKind::BrokenPipe => Err(answer),
        (Err(e), _) => Err(fail(format!("reading {}: {e}", dir.display()))),
        (Ok(_), Err(answer)) => Err(answer),
    }
}

fn upload_id(v: serde_json::Value) -> Result<String, CliError> {
    v["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| CliError::new("internal", format!("loomd's upload answer has no id: {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, Vec<u8>)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = vec![];
                e.read_to_end(&mut data).unwrap();
                let path = e.path().unwrap().display().to_string();
                let kind = e.header().entry_type();
                let data = if kind.is_symlink() { e.link_name_bytes().unwrap().into_owned() } else { data };
                (path, kind, e.header().mode().unwrap(), data)
            })
            .collect()
    }

    #[test]
    fn a_tar_holds_files_dirs_and_symlinks_and_names_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("sub")).unwrap();
        fs::write(d.join("sub/tool"), "abc").unwrap();
        fs::set_permissions(d.join("sub/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(d.join("a"), "same").unwrap();
        fs::hard_link(d.join("a"), d.join("b")).unwrap();
        symlink("/etc/shadow", d.join("shadow")).unwrap();
        nix::unistd::mkfifo(&d.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
        let mut out = vec![];
        let mut notes = Notes::default();
        write_tar(d, &mut out, &mut notes).unwrap();
        let got = entries(&out);
        let names: Vec<&str> = got.iter().map(|(p, ..)| p.as_str()).collect();
        assert_eq!(names, ["a", "b", "shadow", "sub", "sub/tool"]);
        assert_eq!(got[0].1, tar::EntryType::Regular);
        assert_eq!(
            (got[1].1, got[1].3.as_slice()),
            (tar::EntryType::Regular, &b"same"[..]),
            "a hard link goes as a file"
        );
        assert_eq!((got[2].1, got[2].3.as_slice()), (tar::EntryType::Symlink, &b"/etc/shadow"[..]), "never followed");
        assert_eq!(got[4].2, 0o755, "no setuid bit");
        let skipped: Vec<String> = notes.lines();
        assert!(skipped.iter().any(|l| l.contains("pipe: a FIFO")), "{skipped:?}");
        assert!(skipped.iter().any(|l| l.contains("sock: a socket")), "{skipped:?}");
    }

    #[test]
    fn a_file_that_shrinks_still_makes_a_valid_tar() {
        let mut r = Exactly { inner: &b"ab"[..], left: 5, short: false };
        let mut out = vec![];
        r.read_to_end(&mut out).unwrap();
        assert_eq!((out.as_slice(), r.short), (&b"ab\0\0\0"[..], true));
        let mut r = Exactly { inner: &b"abcdef"[..], left: 3, short: false };
        let mut out = vec![];
        r.read_to_end(&mut out).unwrap();
        assert_eq!((out.as_slice(), r.short), (&b"abc"[..], false));
    }

    #[test]
    fn repo_values() {
        assert_eq!(classify("https://h/x.git").unwrap(), Source::Remote("https://h/x.git".into()));
        assert_eq!(classify("git@h:x.git").unwrap(), Source::Remote("git@h:x.git".into()));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            classify(dir.path().to_str().unwrap()).unwrap(),
            Source::Local(fs::canonicalize(dir.path()).unwrap())
        );
        assert!(classify("/nonexistent/x").unwrap_err().message.contains("no such directory"));
        fs::write(dir.path().join("f"), "").unwrap();
        assert!(classify(dir.path().join("f").to_str().unwrap()).unwrap_err().message.contains("not a directory"));
        assert!(classify("ext::sh").unwrap_err().message.contains("invalid --repo"));
    }
}
