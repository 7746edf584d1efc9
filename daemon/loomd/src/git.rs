//! The git loomd runs to fill a workspace: a clone of a remote URL, or an upload's bundle
//! unpacked. It runs as root, so it runs with nothing of root's: an empty environment, an
//! empty `HOME`, no system or global config, no ssh agent, keys or config, no credential
//! helper, no hooks, no submodules, and only the network protocols (never `file` or `ext`).
//! Private repositories are the user's to clone; the CLI uploads them as a local path.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one git command may run (a clone over a slow link) before it is killed.
const GIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The most of a git command's output kept (a bundle's ref list, an error).
const MAX_OUTPUT: u64 = 16 << 20;

/// ssh without the user's config, agent, keys or known hosts; host keys are not checked
/// against anything the host keeps for root (anonymous access to public repositories only).
const SSH_COMMAND: &str = "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=none \
     -o IdentityAgent=none -o PubkeyAuthentication=no -o HostbasedAuthentication=no \
     -o GSSAPIAuthentication=no -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
     -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=/dev/null -o ControlPath=none";

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("running git {what}: {source} (is git installed?)")]
    Spawn {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("git {what} failed: {detail}")]
    Failed { what: &'static str, detail: String },
    #[error("git {what} took longer than {GIT_TIMEOUT:?} and was stopped")]
    Timeout { what: &'static str },
    #[error("{0}")]
    Bundle(String),
}

/// A git command with a scrubbed environment; `home` is an empty directory of its own.
fn git(home: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("LANG", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/false")
        .env("GIT_SSH_COMMAND", SSH_COMMAND)
        .env("GIT_SSH_VARIANT", "ssh")
        .env("GIT_ALLOW_PROTOCOL", "https:http:git:ssh")
        .args([
            "-c",
            "protocol.file.allow=never",
            "-c",
            "protocol.ext.allow=never",
            "-c",
            "submodule.recurse=false",
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "credential.helper=",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` to its end within [`GIT_TIMEOUT`]; its stdout.
fn run(what: &'static str, mut cmd: Command) -> Result<Vec<u8>, GitError> {
    let mut child = cmd.spawn().map_err(|source| GitError::Spawn { what, source })?;
    let read = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = vec![];
            if let Some(r) = r {
                let _ = r.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let err = read(child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>));
    let deadline = Instant::now() + GIT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GitError::Timeout { what });
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let text = String::from_utf8_lossy(&stderr);
        let detail = loom_core::terminal::sanitize(text.trim()).chars().take(2000).collect();
        return Err(GitError::Failed { what, detail });
    }
    Ok(stdout)
}

fn temp_home() -> Result<tempfile::TempDir, GitError> {
    tempfile::Builder::new()
        .prefix("loomd-git-home")
        .tempdir()
        .map_err(|source| GitError::Spawn { what: "(making an empty HOME)", source })
}

/// Clones the remote `url` into `dest` (which must not exist or be empty).
pub fn clone_remote(url: &str, dest: &Path, branch: Option<&str>) -> Result<(), GitError> {
    loom_core::repo::check_remote_repo(url).map_err(|e| GitError::Failed { what: "clone", detail: e.to_string() })?;
    let home = temp_home()?;
    let mut cmd = git(home.path());
    cmd.args(["clone", "--quiet", "--no-local", "--no-recurse-submodules", "--template="]);
    if let Some(b) = branch {
        cmd.args(["--branch", b]);
    }
    cmd.arg("--").arg(url).arg(dest);
    run("clone", cmd)?;
    Ok(())
}

/// One `OID REFNAME` line of `git bundle unbundle`.
fn parse_ref(line: &str) -> Option<(&str, &str)> {
    let (oid, name) = line.split_once(' ')?;
    let hex = oid.len() == 40 || oid.len() == 64;
    (hex && oid.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty()).then_some((oid, name))
}

/// git's rules for a ref name (`git check-ref-format`), so that a bundle cannot make a ref git
/// would later misread.
pub fn valid_ref_name(name: &str) -> bool {
    !name.is_empty()
        && name != "@"
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.contains("..")
        && !name.contains("@{")
        && !name.contains("//")
        && !name.chars().any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
        && name.split('/').all(|part| !part.is_empty() && !part.starts_with('.') && !part.ends_with(".lock"))
}

/// Which branch to check out: the one asked for, else the branch at the bundle's HEAD
/// (preferring main or master when several are), else the only branch there is.
pub fn pick_branch<'a>(refs: &'a [(&'a str, &'a str)], wanted: Option<&str>) -> Result<Checkout<'a>, String> {
    let heads: Vec<(&str, &str)> =
        refs.iter().filter_map(|(oid, name)| Some((*oid, name.strip_prefix("refs/heads/")?))).collect();
    let names = || heads.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ");
    if let Some(w) = wanted {
        return match heads.iter().find(|(_, n)| *n == w) {
            Some((_, n)) => Ok(Checkout::Branch(n)),
            None => Err(format!("branch {w:?} is not in the upload (it has: {})", names())),
        };
    }
    let head = refs.iter().find(|(_, n)| *n == "HEAD").map(|(oid, _)| *oid);
    let at_head: Vec<&str> = heads.iter().filter(|(oid, _)| Some(*oid) == head).map(|(_, n)| *n).collect();
    if let Some(n) = ["main", "master"].iter().find(|m| at_head.contains(m)).or(at_head.first()) {
        return Ok(Checkout::Branch(n));
    }
    if let Some(oid) = head {
        return Ok(Checkout::Detached(oid));
    }
    match heads.as_slice() {
        [(_, only)] => Ok(Checkout::Branch(only)),
        [] => Err("the upload holds no branch".into()),
        _ => Err(format!("the upload has no HEAD and several branches ({}): pick one with --branch", names())),
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Checkout<'a> {
    Branch(&'a str),
    Detached(&'a str),
}

/// Makes `dest` a repository holding every ref of `bundle`, with the chosen branch checked out.
/// Nothing is fetched: the bundle's objects are indexed, its refs set one by one.
pub fn unbundle(bundle: &Path, dest: &Path, branch: Option<&str>) -> Result<(), GitError> {
    let home = temp_home()?;
    let mut init = git(home.path());
    init.args(["init", "--quiet", "--template="]).arg(dest);
    run("init", init)?;
    let mut unbundle = git(home.path());
    unbundle.current_dir(dest).args(["-c", "protocol.allow=never", "bundle", "unbundle"]).arg(bundle);
    let listed = run("bundle unbundle", unbundle)?;
    let listed = String::from_utf8_lossy(&listed);
    let refs: Vec<(&str, &str)> = listed.lines().filter_map(parse_ref).collect();
    let mut updates = String::new();
    let mut seen = std::collections::HashSet::new();
    for (oid, name) in &refs {
        // The ref's name is the client's: only well-formed names under refs/ are taken.
        if name.starts_with("refs/") && valid_ref_name(name) && seen.insert(*name) {
            updates.push_str(&format!("create {name} {oid}\n"));
        }
    }
    let mut update = git(home.path());
    update.current_dir(dest).args(["update-ref", "--stdin"]).stdin(Stdio::piped());
    let mut child = update.spawn().map_err(|source| GitError::Spawn { what: "update-ref", source })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(updates.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| GitError::Spawn { what: "update-ref", source })?;
    if !out.status.success() {
        let detail = loom_core::terminal::sanitize(String::from_utf8_lossy(&out.stderr).trim()).into_owned();
        return Err(GitError::Failed { what: "update-ref", detail });
    }
    let mut checkout = git(home.path());
    checkout.current_dir(dest).args(["-c", "protocol.allow=never", "checkout", "--quiet", "--force"]);
    match pick_branch(&refs, branch).map_err(GitError::Bundle)? {
        Checkout::Branch(b) => checkout.arg(b),
        Checkout::Detached(oid) => checkout.args(["--detach", oid]),
    };
    run("checkout", checkout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    #[test]
    fn ref_lines() {
        assert_eq!(parse_ref(&format!("{A} refs/heads/main")), Some((A, "refs/heads/main")));
        assert_eq!(parse_ref("zz refs/heads/main"), None);
        assert_eq!(parse_ref(A), None);
    }

    #[test]
    fn ref_names() {
        for ok in ["refs/heads/main", "refs/tags/v1.0", "refs/remotes/origin/feature-x"] {
            assert!(valid_ref_name(ok), "{ok}");
        }
        for bad in
            ["refs/heads/../x", "refs/heads/.x", "refs/heads/x.lock", "refs/heads/a b", "refs//x", "refs/x/", "@"]
        {
            assert!(!valid_ref_name(bad), "{bad}");
        }
        assert!(!valid_ref_name("refs/heads/x\u{1b}[2J"));
    }

    #[test]
    fn the_branch_at_head_is_checked_out() {
        let refs = [(A, "HEAD"), (B, "refs/heads/main"), (A, "refs/heads/feature")];
        assert_eq!(pick_branch(&refs, None), Ok(Checkout::Branch("feature")));
        assert_eq!(pick_branch(&refs, Some("main")), Ok(Checkout::Branch("main")));
        assert!(pick_branch(&refs, Some("nope")).unwrap_err().contains("main, feature"));
        let tie = [(A, "HEAD"), (A, "refs/heads/x"), (A, "refs/heads/master")];
        assert_eq!(pick_branch(&tie, None), Ok(Checkout::Branch("master")));
        let detached = [(A, "HEAD"), (B, "refs/heads/main")];
        assert_eq!(pick_branch(&detached, None), Ok(Checkout::Detached(A)));
        let headless = [(B, "refs/heads/main")];
        assert_eq!(pick_branch(&headless, None), Ok(Checkout::Branch("main")));
        let many = [(A, "refs/heads/a"), (B, "refs/heads/b")];
        assert!(pick_branch(&many, None).unwrap_err().contains("--branch"));
    }

    fn sh(dir: &Path, script: &str) {
        let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn a_bundle_becomes_a_checkout_without_its_submodules() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let cfg = "git -c user.name=t -c user.email=t@e -c protocol.file.allow=always";
        sh(d, "git init -q -b main secret && echo SECRET_MARKER > secret/s && git -C secret add s");
        sh(d, &format!("{cfg} -C secret commit -qm s"));
        sh(
            d,
            "git init -q -b main repo && echo hi > repo/a && ln -s /etc/shadow repo/shadow && git -C repo add a shadow",
        );
        sh(d, &format!("{cfg} -C repo submodule --quiet add file://{}/secret sub", d.display()));
        sh(d, &format!("{cfg} -C repo commit -qm one && git -C repo branch other"));
        sh(d, "git -C repo bundle create -q ../b.bundle --all");
        let ws = d.join("ws");
        unbundle(&d.join("b.bundle"), &ws, None).unwrap();
        assert_eq!(std::fs::read_to_string(ws.join("a")).unwrap(), "hi\n");
        assert_eq!(std::fs::read_link(ws.join("shadow")).unwrap(), Path::new("/etc/shadow"));
        assert!(std::fs::read_to_string(ws.join(".gitmodules")).unwrap().contains("file://"));
        assert_eq!(std::fs::read_dir(ws.join("sub")).unwrap().count(), 0, "the submodule is not fetched");
        assert!(!ws.join(".git/modules").exists());
        let branches = Command::new("git").args(["-C", ws.to_str().unwrap(), "branch", "--show-current"]).output();
        assert_eq!(String::from_utf8_lossy(&branches.unwrap().stdout).trim(), "main");
        let e = unbundle(&d.join("b.bundle"), &d.join("ws2"), Some("nope")).unwrap_err();
        assert!(e.to_string().contains("main, other"), "{e}");
        let e = unbundle(&d.join("a-missing.bundle"), &d.join("ws3"), None).unwrap_err();
        assert!(e.to_string().contains("bundle unbundle failed"), "{e}");
    }

    #[test]
    fn a_clone_never_takes_a_local_path_or_file_url() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sh(d, "git init -q -b main src && echo x > src/x && git -C src add x");
        sh(d, "git -c user.name=t -c user.email=t@e -C src commit -qm x");
        for url in [format!("file://{}/src", d.display()), format!("{}/src", d.display())] {
            let e = clone_remote(&url, &d.join("out"), None).unwrap_err();
            assert!(e.to_string().contains("is a local path"), "{url}: {e}");
            assert!(!d.join("out/x").exists(), "{url} was cloned");
            // Past that check, the scrubbed git itself refuses the file protocol.
            let home = temp_home().unwrap();
            let mut cmd = git(home.path());
            cmd.args(["clone", "--quiet", "--no-local", "--"]).arg(&url).arg(d.join("out"));
            let e = run("clone", cmd).unwrap_err();
            assert!(e.to_string().contains("transport 'file' not allowed"), "{url}: {e}");
            assert!(!d.join("out/x").exists(), "{url} was cloned");
        }
    }
}
