//! `--repo` and the operator's terminal. An operator who is not admin (uid 4711) tries to get
//! host files into a weaver through a local path, the raw API, a crafted directory, a git
//! repository's submodules or loomd's own git config; a client tries to be judged by groups it
//! took after connecting; a weaver tries to reach the operator's terminal through its log.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{self, Loomd, privileged};

const OPERATOR: u32 = 4711;

/// A loomd whose socket the operator can reach (the test directory is 0700 otherwise).
fn loomd() -> Loomd {
    let d = support::loomd("");
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// A directory under /var/tmp that everyone may read.
fn shared_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/var/tmp").unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// As the operator, `weaver create --repo REPO -- /bin/sh -c SCRIPT`, run to its end: the
/// CLI's stderr and the weaver's log.
fn operator_probe(d: &Loomd, name: &str, repo: &str, script: &str) -> (String, String) {
    let out = support::as_operator(
        d,
        OPERATOR,
        &["weaver", "create", "--name", name, "--repo", repo, "--", "/bin/sh", "-c", script],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "create as uid {OPERATOR} failed: {stderr}\n{}",
        fs::read_to_string(d.log_path()).unwrap_or_default()
    );
    d.wait_for(name, "exited", Duration::from_secs(60), |v| v["state"] == "exited" || v["state"] == "failed");
    (stderr, d.logs(name))
}

fn workspace_of(d: &Loomd, name: &str) -> PathBuf {
    let id = d.inspect(name)["id"].as_str().unwrap().to_string();
    d.state_dir().join("weavers").join(id).join("root/workspace")
}

/// Everything under `dir` that is not a file, a directory or a symlink.
fn specials(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let ft = fs::symlink_metadata(&p).unwrap().file_type();
        if ft.is_dir() {
            out.extend(specials(&p));
        } else if !ft.is_file() && !ft.is_symlink() {
            out.push(p);
        }
    }
    out
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn repo_etc_uploads_only_what_the_operator_may_read() {
    if !privileged("repo_etc_uploads_only_what_the_operator_may_read") {
        return;
    }
    let d = loomd();
    let (stderr, log) = operator_probe(
        &d,
        "etc",
        "/etc",
        "test -s /workspace/passwd && echo passwd=present; \
         test -e /workspace/shadow && echo shadow=present || echo shadow=absent; head -c 40 /workspace/shadow",
    );
    assert_eq!(support::field(&log, "passwd"), "present", "the upload ran: {log}");
    assert_eq!(support::field(&log, "shadow"), "absent", "the host's /etc/shadow reached the weaver: {log}");
    assert!(
        stderr.contains("/etc/shadow") && stderr.contains("Permission denied"),
        "the CLI names what it could not read: {stderr}"
    );
}

#[test]
fn repo_dev_puts_no_device_node_in_the_workspace() {
    if !privileged("repo_dev_puts_no_device_node_in_the_workspace") {
        return;
    }
    let d = loomd();
    let (stderr, log) = operator_probe(
        &d,
        "dev",
        "/dev",
        "echo specials=$(find /workspace ! -type f ! -type d ! -type l | wc -l); \
         test -L /workspace/stdin && echo stdin=symlink",
    );
    assert_eq!(support::field(&log, "stdin"), "symlink", "the upload ran: {log}");
    assert_eq!(support::field(&log, "specials"), "0", "{log}");
    assert_eq!(specials(&workspace_of(&d, "dev")), Vec::<PathBuf>::new());
    assert!(stderr.contains("a device node"), "the CLI says what it left out: {stderr}");
}

#[test]
fn the_raw_api_refuses_a_local_path() {
    if !privileged("the_raw_api_refuses_a_local_path") {
        return;
    }
    let d = loomd();
    for repo in ["/etc", "file:///etc", "./etc", "etc", "ext::sh -c id"] {
        let body = serde_json::json!({ "repo": repo, "command": ["/bin/true"] }).to_string();
        let (status, v) = d.request("POST", "/v1/weavers", Some(&body));
        assert_eq!(status, 400, "{repo}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("--repo"), "{repo}: {msg}");
        if repo.contains("etc") {
            assert!(msg.contains("local path") && msg.contains("CLI uploads"), "{repo}: {msg}");
        }
    }
    let (_, list) = d.request("GET", "/v1/weavers", None);
    assert_eq!(list, serde_json::json!([]), "nothing was created");
}

/// `POST path` with a binary body, the raw way.
fn post_bytes(d: &Loomd, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: loomd\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", body.len())
        .unwrap();
    s.write_all(body).unwrap();
    let (status, bytes) = crate::common::read_response(&mut s).unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

#[test]
fn a_hostile_upload_is_refused_entry_by_entry() {
    if !privileged("a_hostile_upload_is_refused_entry_by_entry") {
        return;
    }
    let d = loomd();
    let entry = |name: &str, kind: tar::EntryType, link: Option<&str>, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        (h, data.to_vec())
    };
    let cases = [
        (vec![entry("../../../../tmp/loom-escape-up", tar::EntryType::Regular, None, b"x")], "`..`"),
        (vec![entry("hard", tar::EntryType::Link, Some("/etc/shadow"), b"")], "a hard link"),
        (vec![entry("null", tar::EntryType::Char, None, b"")], "a device node"),
        (
            vec![
                entry("etc", tar::EntryType::Symlink, Some("/etc"), b""),
                entry("etc/loom-escape", tar::EntryType::Regular, None, b"x"),
            ],
            "a symlink is never followed",
        ),
    ];
    for (i, (entries, why)) in cases.into_iter().enumerate() {
        let mut b = tar::Builder::new(Vec::new());
        for (h, data) in &entries {
            b.append(h, &data[..]).unwrap();
        }
        let (status, up) = post_bytes(&d, "/v1/uploads?kind=tar", &b.into_inner().unwrap());
        assert_eq!(status, 200, "{up}");
        let body = serde_json::json!({ "name": format!("hostile{i}"), "upload": up["id"], "command": ["/bin/true"] });
        let (status, v) = d.request("POST", "/v1/weavers", Some(&body.to_string()));
        assert_eq!(status, 400, "{why}: {v}");
        assert!(v["error"]["message"].as_str().unwrap_or_default().contains(why), "{why}: {v}");
        // Single-use: the same id is gone.
        let again = serde_json::json!({ "upload": up["id"], "command": ["/bin/true"] });
        let (status, v) = d.request("POST", "/v1/weavers", Some(&again.to_string()));
        assert_eq!(status, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap_or_default().contains("used by one create only"), "{v}");
    }
    assert!(!Path::new("/tmp/loom-escape-up").exists() && !Path::new("/etc/loom-escape").exists());
    assert_eq!(fs::read_dir(d.state_dir().join("uploads")).unwrap().count(), 0, "used uploads are removed");
}

#[test]
fn uploads_are_bounded_per_user_and_the_cli_says_why() {
    if !privileged("uploads_are_bounded_per_user_and_the_cli_says_why") {
        return;
    }
    let d = loomd();
    let (status, v) = post_bytes(&d, "/v1/uploads?kind=zip", b"x");
    assert_eq!(status, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap_or_default().contains("kind=tar"), "{v}");
    for _ in 0..loom_core::api::MAX_PENDING_UPLOADS {
        let (status, v) = post_bytes(&d, "/v1/uploads?kind=tar", b"unused");
        assert_eq!(status, 200, "{v}");
    }
    // loomd refuses while the CLI is still sending: the CLI reports loomd's reason.
    let src = shared_dir("loom-escape-big");
    fs::write(src.path().join("big"), vec![7u8; 8 << 20]).unwrap();
    let out = d.cli(&["weaver", "create", "--repo", src.path().to_str().unwrap(), "--", "/bin/true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("uploads waiting"), "{stderr}");
}

#[test]
fn setuid_fifo_hardlink_and_host_symlink_arrive_harmless() {
    if !privileged("setuid_fifo_hardlink_and_host_symlink_arrive_harmless") {
        return;
    }
    let d = loomd();
    let src = shared_dir("loom-escape-src");
    let s = src.path();
    fs::write(s.join("tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(s.join("tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(s.join("a.txt"), "same\n").unwrap();
    fs::set_permissions(s.join("a.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::hard_link(s.join("a.txt"), s.join("b.txt")).unwrap();
    nix::unistd::mkfifo(&s.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    symlink("/etc/shadow", s.join("shadow")).unwrap();
    let (stderr, log) = operator_probe(
        &d,
        "crafted",
        s.to_str().unwrap(),
        "echo tool=$(stat -c %a /workspace/tool); echo links=$(stat -c %h /workspace/a.txt); \
         echo b=$(cat /workspace/b.txt); test -e /workspace/pipe && echo pipe=present || echo pipe=absent; \
         echo link=$(readlink /workspace/shadow); echo through=$(head -c 200 /workspace/shadow 2>&1)",
    );
    assert_eq!(support::field(&log, "tool"), "755", "no setuid bit: {log}");
    assert_eq!(support::field(&log, "links"), "1", "no hard link: {log}");
    assert_eq!(support::field(&log, "b"), "same", "{log}");
    assert_eq!(support::field(&log, "pipe"), "absent", "{log}");
    assert_eq!(support::field(&log, "link"), "/etc/shadow", "the symlink stays a symlink: {log}");
    let host_shadow = fs::read_to_string("/etc/shadow").unwrap();
    let first = host_shadow.lines().next().unwrap();
    assert!(!log.contains(first), "the symlink resolved to the host's /etc/shadow: {log}");
    assert!(stderr.contains("pipe: a FIFO"), "{stderr}");
    let ws = workspace_of(&d, "crafted");
    assert_eq!(fs::symlink_metadata(ws.join("tool")).unwrap().mode() & 0o7000, 0);
    assert!(fs::symlink_metadata(ws.join("shadow")).unwrap().file_type().is_symlink());
}

#[test]
fn a_submodule_on_a_host_path_is_never_fetched() {
    if !privileged("a_submodule_on_a_host_path_is_never_fetched") {
        return;
    }
    let d = loomd();
    let dir = shared_dir("loom-escape-git");
    let g = "git -c user.name=t -c user.email=t@e -c protocol.file.allow=always";
    // A host repository only root may read, named by a file:// submodule of the operator's.
    sh(dir.path(), "git init -q -b main secret && echo SECRET_MARKER > secret/s && chmod 700 secret");
    sh(dir.path(), &format!("{g} -C secret add s && {g} -C secret commit -qm s"));
    sh(dir.path(), "git init -q -b main repo && echo hello > repo/a");
    sh(dir.path(), &format!("{g} -C repo submodule --quiet add file://{}/secret sub", dir.path().display()));
    sh(dir.path(), &format!("{g} -C repo add a && {g} -C repo commit -qm one && echo dirty > repo/dirty.txt"));
    sh(dir.path(), &format!("chown -R {OPERATOR} repo"));
    let (stderr, log) = operator_probe(
        &d,
        "gitmod",
        dir.path().join("repo").to_str().unwrap(),
        "echo a=$(cat /workspace/a); echo gitmodules=$(grep -c file:// /workspace/.gitmodules); \
         echo sub=$(ls -A /workspace/sub | wc -l); \
         grep -rq SECRET_MARKER /workspace && echo secret=fetched || echo secret=absent; \
         test -e /workspace/dirty.txt && echo dirty=present || echo dirty=absent; \
         echo branch=$(git -c safe.directory='*' -C /workspace branch --show-current)",
    );
    assert_eq!(support::field(&log, "a"), "hello", "the repository arrived: {log}");
    assert_eq!(support::field(&log, "gitmodules"), "1", "{log}");
    assert_eq!(support::field(&log, "sub"), "0", "{log}");
    assert_eq!(support::field(&log, "secret"), "absent", "{log}");
    assert_eq!(support::field(&log, "dirty"), "absent", "only commits are uploaded: {log}");
    assert_eq!(support::field(&log, "branch"), "main", "{log}");
    assert!(stderr.contains("uncommitted"), "the CLI says what stays behind: {stderr}");
    assert!(!workspace_of(&d, "gitmod").join(".git/modules").exists());
}

/// A helper process that ends with the test, whichever way the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Replaces `d`'s loomd by one with `env` added to its environment.
fn respawn_with_env(d: &mut Loomd, env: &[(&str, String)]) {
    d.kill9();
    let log = fs::OpenOptions::new().append(true).open(d.log_path()).unwrap();
    let mut cmd = Command::new(crate::common::loomd_bin());
    cmd.arg("--socket").arg(&d.socket).arg("--state-dir").arg(d.state_dir()).args(["--backend", "nspawn"]);
    cmd.arg("--config").arg(d.config.as_ref().unwrap());
    cmd.envs(env.iter().map(|(k, v)| (k, v))).stdout(log.try_clone().unwrap()).stderr(log);
    d.child = Some(cmd.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.try_request("GET", "/v1/status", None).is_ok_and(|(s, _)| s == 200) {
        assert!(Instant::now() < deadline, "loomd did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_remote_clone_uses_none_of_roots_git_config() {
    if !privileged("a_remote_clone_uses_none_of_roots_git_config") {
        return;
    }
    let mut d = loomd();
    let dir = shared_dir("loom-escape-remote");
    let g = "git -c user.name=t -c user.email=t@e -c protocol.file.allow=always";
    sh(dir.path(), "git init -q -b main secret && echo SECRET_MARKER > secret/s");
    sh(dir.path(), &format!("{g} -C secret add s && {g} -C secret commit -qm s"));
    sh(dir.path(), "mkdir srv && git init -q -b main srv/app && echo public > srv/app/p");
    sh(dir.path(), &format!("{g} -C srv/app submodule --quiet add file://{}/secret sub", dir.path().display()));
    sh(dir.path(), &format!("{g} -C srv/app add p && {g} -C srv/app commit -qm one"));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // git-daemon itself, not `git daemon`, which would leave it running when killed.
    let exec_path = Command::new("git").arg("--exec-path").output().unwrap().stdout;
    let exec_path = String::from_utf8_lossy(&exec_path).trim().to_string();
    let daemon = Command::new(Path::new(&exec_path).join("git-daemon"))
        .args(["--export-all", "--reuseaddr", "--listen=127.0.0.1", &format!("--port={port}")])
        .arg(format!("--base-path={}", dir.path().join("srv").display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = KillOnDrop(daemon);
    let url = format!("git://127.0.0.1:{port}/app");
    // Root's git config, as the environment loomd runs in gives it, would send the clone to a
    // host path instead.
    let secret = format!("file://{}/secret", dir.path().display());
    let home = dir.path().join("home");
    fs::create_dir(&home).unwrap();
    fs::write(home.join(".gitconfig"), format!("[url \"{secret}\"]\n\tinsteadOf = {url}\n")).unwrap();
    respawn_with_env(
        &mut d,
        &[
            ("HOME", home.display().to_string()),
            ("GIT_CONFIG_COUNT", "1".into()),
            ("GIT_CONFIG_KEY_0", format!("url.{secret}.insteadOf")),
            ("GIT_CONFIG_VALUE_0", url.clone()),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, log) = operator_probe(
        &d,
        "remote",
        &url,
        "echo p=$(cat /workspace/p 2>&1); echo sub=$(ls -A /workspace/sub | wc -l); \
         grep -rq SECRET_MARKER /workspace && echo secret=fetched || echo secret=absent",
    );
    assert_eq!(support::field(&log, "p"), "public", "cloned from the git daemon: {log}");
    assert_eq!(support::field(&log, "sub"), "0", "{log}");
    assert_eq!(support::field(&log, "secret"), "absent", "{log}");
}

#[test]
fn groups_taken_after_connecting_do_not_count() {
    if !privileged("groups_taken_after_connecting_do_not_count") {
        return;
    }
    let d = loomd();
    let (op, admin) = (support::operator_gid(), support::ensure_group("loomesc-admin"));
    // Connects as the operator, then (it kept root as its saved uid) joins the admin group
    // before it sends an admin-only request.
    let script = format!(
        "use Socket; $) = '{op} {op}'; $> = {OPERATOR}; \
         socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die $!; connect($s, pack_sockaddr_un($ARGV[0])) or die $!; \
         $> = 0; $) = '{op} {op} {admin}'; $> = {OPERATOR}; print STDERR \"groups now: $)\\n\"; \
         syswrite($s, \"GET /v1/secrets/check HTTP/1.1\\r\\nHost: loomd\\r\\nConnection: close\\r\\n\\r\\n\"); \
         print while <$s>;"
    );
    let out = Command::new("perl").args(["-e", &script]).arg(&d.socket).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stderr.contains(&admin.to_string()), "the client did not join the admin group: {stderr}");
    assert!(stdout.starts_with("HTTP/1.1 403"), "{stdout}");
    assert!(stdout.contains("only root and the admin group"), "judged as the operator it connected as: {stdout}");
}

#[test]
fn log_escape_sequences_never_reach_the_terminal() {
    if !privileged("log_escape_sequences_never_reach_the_terminal") {
        return;
    }
    let d = loomd();
    let log = support::probe(&d, "esc", &[], r"printf '\033]0;pwned\007\033[2Jvisible\n'");
    assert!(log.contains("visible"), "the weaver printed: {log:?}");
    assert!(!log.contains('\x1b') && !log.contains('\x07') && !log.contains("pwned"), "{log:?}");
    let raw = d.cli(&["weaver", "logs", "esc", "--raw"]);
    let raw = String::from_utf8_lossy(&raw.stdout);
    assert!(raw.contains("\x1b]0;pwned\x07\x1b[2Jvisible"), "--raw keeps the bytes: {raw:?}");
}
