//! Test support: a real loomd process on a temporary state dir, a raw HTTP client for its
//! socket, and the real `loom` CLI.
#![allow(dead_code)]

pub mod net;
pub mod poll;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// True when this machine can run real weavers. Without them the test is skipped loudly,
/// unless LOOM_REQUIRE_PRIVILEGED=1 (CI), where a missing capability is a failure.
pub fn privileged(what: &str) -> bool {
    let mut missing = vec![];
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_string());
    }
    if Command::new("systemd-nspawn").arg("--version").output().map(|o| !o.status.success()).unwrap_or(true) {
        missing.push("systemd-nspawn (apt-get install systemd-container)".into());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !loom_core::mounts::parse_mounts(&mounts).iter().any(|m| m.fstype == "cgroup2") {
        missing.push("a cgroup v2 mount".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{what}: needs {}", missing.join(", "));
    if std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
        panic!("LOOM_REQUIRE_PRIVILEGED=1 but {msg}");
    }
    eprintln!("SKIPPED (not privileged): {msg}");
    false
}

pub fn loomd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loomd"))
}

/// The `loom` CLI, built by `cargo test --workspace` next to loomd.
pub fn loom_bin() -> PathBuf {
    let p = loomd_bin().with_file_name("loom");
    assert!(p.exists(), "{} is missing: run the tests with `cargo test --workspace`", p.display());
    p
}

pub struct Loomd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub child: Option<Child>,
    pub config: Option<PathBuf>,
}

impl Loomd {
    pub fn start() -> Loomd {
        Self::start_with_config(None)
    }

    pub fn start_with_config(config: Option<&str>) -> Loomd {
        let dir = tempfile::Builder::new().prefix("loomd-test").tempdir_in("/var/tmp").unwrap();
        let socket = dir.path().join("loomd.sock");
        let config = config.map(|text| {
            let p = dir.path().join("loomd.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        let mut d = Loomd { dir, socket, child: None, config };
        d.spawn();
        d
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("loomd.log")
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let mut cmd = Command::new(loomd_bin());
        cmd.arg("--socket").arg(&self.socket).arg("--state-dir").arg(self.state_dir()).arg("--backend").arg("nspawn");
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("LOOMD_LOG", "info,loom::access=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.try_request("GET", "/v1/status", None).is_ok_and(|(s, _)| s == 200) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("loomd exited with {status}: {}", std::fs::read_to_string(self.log_path()).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "loomd did not answer on {}: {}",
            self.socket.display(),
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    /// Sends a signal to loomd (SIGTERM: it should exit on its own, and is waited for).
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("loomd runs").id() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
        if sig == nix::sys::signal::Signal::SIGTERM {
            let status = self.child.take().unwrap().wait().unwrap();
            assert!(status.success(), "loomd exited with {status} on SIGTERM");
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let (status, bytes) = self.try_request(method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, v)
    }

    pub fn try_request(&self, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
        request(&self.socket, method, path, body)
    }

    /// Runs the real CLI against this loomd.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(loom_bin()).arg("--socket").arg(&self.socket).args(args).output().unwrap()
    }

    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.cli(&full);
        assert!(out.status.success(), "loom {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("loom {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn inspect(&self, key: &str) -> serde_json::Value {
        let (status, v) = self.request("GET", &format!("/v1/weavers/{key}"), None);
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Polls `inspect` until `pred` holds.
    pub fn wait_for(
        &self,
        key: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        poll::wait_for_state(key, what, timeout, || self.inspect(key), pred, String::new)
    }

    pub fn logs(&self, key: &str) -> String {
        let out = self.cli(&["weaver", "logs", key]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Loomd {
    fn drop(&mut self) {
        if self.child.is_some()
            && let Ok((_, body)) = self.try_request("GET", "/v1/weavers", None)
            && let Ok(serde_json::Value::Array(ws)) = serde_json::from_slice::<serde_json::Value>(&body)
        {
            for w in ws {
                let _ = self.try_request(
                    "DELETE",
                    &format!("/v1/weavers/{}?force=true", w["id"].as_str().unwrap_or("")),
                    None,
                );
            }
        }
        self.kill9();
    }
}

/// One request to loomd's socket, the raw way, so tests can also send what the CLI never would.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: loomd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    read_response(&mut s)
}

/// Runs the real `loom` CLI against the loomd on `socket`.
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(loom_bin()).arg("--socket").arg(socket).args(args).output().unwrap()
}

/// `loom --json ARGS`, which must succeed; `context` adds to the failure message (e.g. loomd's log).
pub fn cli_json(socket: &Path, args: &[&str], context: impl Fn() -> String) -> serde_json::Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let out = cli(socket, &full);
    assert!(out.status.success(), "loom {args:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), context());
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("loom {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Reads one HTTP/1.1 response (Content-Length, chunked, or until close).
pub fn read_response(s: &mut impl Read) -> std::io::Result<(u16, Vec<u8>)> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let head_end =
        raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| std::io::Error::other("no response head"))?;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let status: u16 =
        head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other(head.clone()))?;
    let mut body = raw[head_end + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let len = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if len == 0 || b.len() < i + 2 + len {
            break;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + len]);
        b = &b[i + 2 + len + 2..];
    }
    out
}

/// A group of that name, made if missing; its gid.
pub fn ensure_group(name: &str) -> u32 {
    let _ = Command::new("groupadd").arg("-f").arg(name).output();
    nix::unistd::Group::from_name(name)
        .unwrap()
        .unwrap_or_else(|| panic!("group {name} could not be created"))
        .gid
        .as_raw()
}

/// The real `loom` CLI with `--json`, run as another uid with these groups (the first is primary).
pub fn as_user(d: &Loomd, uid: u32, gids: &[u32], args: &[&str]) -> Output {
    let gids: Vec<nix::unistd::Gid> = gids.iter().map(|g| nix::unistd::Gid::from_raw(*g)).collect();
    let primary = gids.first().copied().unwrap_or(nix::unistd::Gid::from_raw(uid));
    let mut cmd = Command::new(loom_bin());
    cmd.arg("--socket").arg(&d.socket).arg("--json").args(args);
    // SAFETY: between fork and exec the child only drops its credentials.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&gids)?;
            nix::unistd::setgid(primary)?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        });
    }
    cmd.output().unwrap()
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// After a loomd restart (both backends' adoption tests): `ps` lists `count` weavers, no more
/// and no fewer; `keep-a`, `keep-b` and `keep-c` run as the same processes (`pids`) as before;
/// `ends-while-away` exited with code 4 while no loomd ran.
pub fn assert_readopted(
    ps: &serde_json::Value,
    count: usize,
    pids: &[serde_json::Value],
    inspect: impl Fn(&str) -> serde_json::Value,
) {
    assert_eq!(ps.as_array().map(Vec::len), Some(count), "no weaver lost or duplicated: {ps}");
    for (name, pid) in ["keep-a", "keep-b", "keep-c"].iter().zip(pids) {
        let v = inspect(name);
        assert_eq!(v["state"], "running", "{v}");
        assert_eq!(&v["pid"], pid, "the same process, re-adopted: {v}");
    }
    let away = inspect("ends-while-away");
    assert_eq!(away["state"], "exited", "{away}");
    assert_eq!(away["exit_code"], 4, "{away}");
}

/// What both backends' exec tests run in a weaver: its environment, its hostname, both
/// output streams and an exit code, each of which the test checks came through.
pub const EXEC_SCRIPT: &str = "echo $GREETING from $(hostname); echo oops >&2; exit 7";
