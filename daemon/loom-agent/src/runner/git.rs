//! The loop's git: HEAD read from the repository's files where it can be, the state
//! directory kept out of commits, and an iteration's commit.

use std::path::Path;
use std::time::Duration;

use super::*;

/// HEAD's commit, read from the repository's files (`None` when anything is unusual: a
/// worktree, an unborn branch; then `git rev-parse` answers).
pub(super) fn read_head(workspace: &Path) -> Option<String> {
    let git = workspace.join(".git");
    if !git.is_dir() {
        return None;
    }
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let is_hash = |s: &str| s.len() >= 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let Some(r) = head.strip_prefix("ref: ") else {
        return is_hash(head).then(|| head.to_owned());
    };
    if r.contains("..") || !r.starts_with("refs/") {
        return None;
    }
    if let Ok(h) = std::fs::read_to_string(git.join(r)) {
        let h = h.trim();
        return is_hash(h).then(|| h.to_owned());
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed.lines().find_map(|l| {
        let (h, name) = l.split_once(' ')?;
        (name == r && is_hash(h)).then(|| h.to_owned())
    })
}

/// A state directory inside the workspace must not be committed (its spool changes every
/// iteration, which would also blind the no-change breaker): list it in `.git/info/exclude`.
pub(super) fn exclude_state_dir(workspace: &Path, state_dir: &Path) {
    let (Ok(ws), Ok(st)) = (workspace.canonicalize(), state_dir.canonicalize()) else { return };
    let Ok(rel) = st.strip_prefix(&ws) else { return };
    let line = format!("/{}/", rel.display());
    let exclude = ws.join(".git/info/exclude");
    let current = std::fs::read_to_string(&exclude).unwrap_or_default();
    if current.lines().any(|l| l == line) {
        return;
    }
    let _ = std::fs::create_dir_all(ws.join(".git/info"));
    let sep = if current.is_empty() || current.ends_with('\n') { "" } else { "\n" };
    if let Err(e) = std::fs::write(&exclude, format!("{current}{sep}{line}\n")) {
        tracing::warn!(error = %e, "cannot exclude the state directory from git");
    }
}

impl Shell {
    pub(super) async fn git(&self, args: &[&str]) -> Option<CmdResult> {
        let mut argv = vec!["git".to_owned()];
        argv.extend(args.iter().map(|s| s.to_string()));
        run_command(&argv, &self.cfg.workspace, None, Duration::from_secs(60), 1 << 20, false).await.ok()
    }

    pub(super) async fn head(&self) -> Option<String> {
        if !self.git {
            return None;
        }
        // Reading the ref is a file read; a `git` process costs milliseconds per iteration.
        if let Some(h) = read_head(&self.cfg.workspace) {
            return Some(h);
        }
        self.git(&["rev-parse", "-q", "--verify", "HEAD"])
            .await
            .filter(|r| r.passed())
            .map(|r| r.output.trim().to_owned())
    }

    /// Commits all changes, if any. Returns the commit hash and message.
    pub(super) async fn commit(&mut self, summary: &str) -> Result<Option<(String, String)>, String> {
        // Three `git`s per iteration with changes (two without): add, what is staged, commit.
        let add = self.git(&["add", "-A"]).await.ok_or("git add failed")?;
        if !add.passed() {
            return Err(format!("git add failed: {}", add.output.trim()));
        }
        let staged = self.git(&["diff", "--cached", "--name-only"]).await.ok_or("git diff failed")?;
        if !staged.passed() {
            return Err(format!("git diff --cached failed: {}", staged.output.trim()));
        }
        let files: Vec<&str> = staged.output.lines().filter(|l| !l.is_empty()).collect();
        if files.is_empty() {
            return Ok(None);
        }
        let mut subject = summary
            .lines()
            .map(|l| l.replace(&self.cfg.completion_marker, "").trim().to_owned())
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        if subject.is_empty() {
            subject = format!("update {}", files.iter().take(3).cloned().collect::<Vec<_>>().join(", "));
        }
        if subject.len() > 60 {
            let mut cut = 60;
            while !subject.is_char_boundary(cut) {
                cut -= 1;
            }
            subject.truncate(cut);
            subject.push('…');
        }
        let mut msg = format!("loom: iteration {}: {subject}\n\n", self.status.iteration);
        for f in files.iter().take(50) {
            msg.push_str(&format!("- {f}\n"));
        }
        if files.len() > 50 {
            msg.push_str(&format!("- … and {} more\n", files.len() - 50));
        }
        msg.push_str(&format!("\nLoom-Thread: {}\n", self.spool.thread_id()));
        let mut args = vec![];
        if !self.git_identity {
            args.extend(["-c", "user.name=loom agent", "-c", "user.email=loom-agent@localhost"]);
        }
        args.extend(["commit", "-q", "--no-verify", "-m", &msg]);
        let c = self.git(&args).await.ok_or("git commit failed")?;
        if !c.passed() {
            return Err(format!("git commit failed: {}", c.output.trim()));
        }
        let hash = self.head().await.unwrap_or_default();
        self.last_head = Some(hash.clone());
        Ok(Some((hash, msg)))
    }
}
