//! The six tools the model may call, confined to the workspace root.
//!
//! Invariant: no tool reads, lists, writes or greps a path outside the workspace, whether the
//! path is absolute, uses `..`, or goes through a symlink that points out. `bash` runs with the
//! workspace as its working directory; it is a shell, so it is confined by the weaver, not here.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::llm::ToolSpec;

/// Most bytes of one tool's output given to the model; more is cut with a note.
pub const DEFAULT_OUTPUT_CAP: usize = 30_000;
/// Largest file `read_file` and `grep` open.
const MAX_FILE: u64 = 8 * 1024 * 1024;
const MAX_LIST: usize = 2_000;
const MAX_GREP: usize = 300;
const MAX_GREP_FILES: usize = 20_000;

/// Settings of the tools.
#[derive(Debug, Clone)]
pub struct ToolConfig {
    pub bash_timeout: Duration,
    pub output_cap: usize,
}

impl Default for ToolConfig {
    fn default() -> Self {
        Self { bash_timeout: Duration::from_secs(300), output_cap: DEFAULT_OUTPUT_CAP }
    }
}

/// The workspace the tools work in.
#[derive(Debug, Clone)]
pub struct Workspace {
    root: PathBuf,
    cfg: ToolConfig,
}

/// What a tool gave back; errors go back to the model (it can correct itself), not up the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    fn ok(content: String) -> Self {
        Self { content, is_error: false }
    }
    fn err(content: String) -> Self {
        Self { content, is_error: true }
    }
}

/// Cuts `s` to about `cap` bytes, keeping its head and (longer) tail, with a note in between.
pub fn truncate_middle(s: &str, cap: usize) -> String {
    if s.len() <= cap {
        return s.to_owned();
    }
    let head = floor(s, cap / 3);
    let tail_start = ceil(s, s.len() - (cap - head.len()));
    format!(
        "{head}\n[... {} bytes cut: the output was {} bytes; narrow the command or read a range ...]\n{}",
        tail_start - head.len(),
        s.len(),
        &s[tail_start..]
    )
}

fn floor(s: &str, mut i: usize) -> &str {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

fn ceil(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The tools' names, descriptions and input schemas, as given to the model.
pub fn tool_specs() -> Vec<ToolSpec> {
    let path = json!({"type": "string", "description": "path relative to the workspace root (or absolute inside it)"});
    vec![
        ToolSpec {
            name: "read_file",
            description: "Read a text file of the workspace.",
            input_schema: json!({"type": "object", "properties": {"path": path}, "required": ["path"]}),
        },
        ToolSpec {
            name: "list_files",
            description: "List files and directories under a path (recursively, without .git).",
            input_schema: json!({"type": "object", "properties": {"path": path}, "required": ["path"]}),
        },
        ToolSpec {
            name: "write_file",
            description: "Create or overwrite a file with the given content (parent directories are created).",
            input_schema: json!({"type": "object", "properties": {"path": path, "content": {"type": "string"}}, "required": ["path", "content"]}),
        },
        ToolSpec {
            name: "edit_file",
            description: "Replace old_str by new_str in a file. old_str must occur exactly once; include enough surrounding text to make it unique.",
            input_schema: json!({"type": "object", "properties": {"path": path, "old_str": {"type": "string"}, "new_str": {"type": "string"}}, "required": ["path", "old_str", "new_str"]}),
        },
        ToolSpec {
            name: "grep",
            description: "Search files under a path for a regular expression; prints path:line: text.",
            input_schema: json!({"type": "object", "properties": {"pattern": {"type": "string"}, "path": path}, "required": ["pattern"]}),
        },
        ToolSpec {
            name: "bash",
            description: "Run a shell command in the workspace root; prints its exit code and output. Long-running commands are killed at the timeout.",
            input_schema: json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}),
        },
    ]
}

fn arg<'a>(input: &'a Value, key: &str) -> Result<&'a str, String> {
    input
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string argument `{key}`; the input was {input}"))
}

impl Workspace {
    /// A workspace rooted at `root`, which must exist.
    pub fn new(root: &Path, cfg: ToolConfig) -> std::io::Result<Workspace> {
        Ok(Workspace { root: root.canonicalize()?, cfg })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a path the model gave to a path inside the root, following symlinks of every
    /// component that exists. Missing trailing components (a file to create) are allowed.
    pub fn resolve(&self, p: &str) -> Result<PathBuf, String> {
        let outside = || format!("path {p:?} is outside the workspace {}; use a path inside it", self.root.display());
        if p.contains('\0') {
            return Err(format!("path {p:?} contains a NUL byte"));
        }
        let given = Path::new(p);
        let joined = if given.is_absolute() { given.to_path_buf() } else { self.root.join(given) };
        // Lexical normalisation first, so `..` cannot climb past the root.
        let mut norm = PathBuf::new();
        for c in joined.components() {
            match c {
                Component::ParentDir => {
                    if !norm.pop() {
                        return Err(outside());
                    }
                }
                Component::CurDir => {}
                other => norm.push(other),
            }
        }
        if !norm.starts_with(&self.root) {
            return Err(outside());
        }
        // Then the real path of the longest existing prefix, so no symlink leads out.
        let mut existing = norm.clone();
        let mut rest = Vec::new();
        while std::fs::symlink_metadata(&existing).is_err() {
            match (existing.file_name(), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_owned());
                    existing = parent.to_path_buf();
                }
                _ => return Err(outside()),
            }
        }
        let mut real = existing.canonicalize().map_err(|e| format!("cannot resolve {p:?}: {e}"))?;
        if !real.starts_with(&self.root) {
            return Err(outside());
        }
        for name in rest.into_iter().rev() {
            real.push(name);
        }
        Ok(real)
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .map(|r| if r.as_os_str().is_empty() { ".".into() } else { r.display().to_string() })
            .unwrap_or_else(|_| p.display().to_string())
    }

    /// Runs tool `name` with `input`.
    pub async fn execute(&self, name: &str, input: &Value) -> ToolOutput {
        let r = match name {
            "read_file" => self.read_file(input),
            "list_files" => self.list_files(input),
            "write_file" => self.write_file(input),
            "edit_file" => self.edit_file(input),
            "grep" => self.grep(input),
            "bash" => match arg(input, "command") {
                Ok(c) => Ok(self.bash(c).await),
                Err(e) => Err(e),
            },
            other => Err(format!(
                "unknown tool {other:?}; the tools are read_file, list_files, write_file, edit_file, grep, bash"
            )),
        };
        match r {
            Ok(out) => {
                ToolOutput { content: truncate_middle(&out.content, self.cfg.output_cap), is_error: out.is_error }
            }
            Err(e) => ToolOutput::err(e),
        }
    }

    fn read_file(&self, input: &Value) -> Result<ToolOutput, String> {
        let p = arg(input, "path")?;
        let path = self.resolve(p)?;
        let f = std::fs::File::open(&path).map_err(|e| format!("cannot read {p:?}: {e}"))?;
        let mut buf = Vec::new();
        f.take(MAX_FILE).read_to_end(&mut buf).map_err(|e| format!("cannot read {p:?}: {e}"))?;
        Ok(ToolOutput::ok(String::from_utf8_lossy(&buf).into_owned()))
    }

    fn list_files(&self, input: &Value) -> Result<ToolOutput, String> {
        let p = input.get("path").and_then(Value::as_str).unwrap_or(".");
        let path = self.resolve(p)?;
        let mut out = Vec::new();
        let mut stack = vec![path.clone()];
        let mut more = false;
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| format!("cannot list {p:?}: {e}"))?
                .filter_map(Result::ok)
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries.into_iter().rev() {
                if e.file_name() == ".git" {
                    continue;
                }
                let ft = e.file_type().map_err(|e| format!("cannot list {p:?}: {e}"))?;
                if ft.is_dir() {
                    stack.push(e.path());
                    out.push(format!("{}/", self.rel(&e.path())));
                } else {
                    out.push(self.rel(&e.path()));
                }
                if out.len() >= MAX_LIST {
                    more = true;
                    break;
                }
            }
            if more {
                break;
            }
        }
        out.sort();
        let mut s = out.join("\n");
        if more {
            s.push_str(&format!("\n[listing stopped at {MAX_LIST} entries; list a subdirectory]"));
        }
        if s.is_empty() {
            s = format!("{} is empty", self.rel(&path));
        }
        Ok(ToolOutput::ok(s))
    }

    fn write_file(&self, input: &Value) -> Result<ToolOutput, String> {
        let p = arg(input, "path")?;
        let content = arg(input, "content")?;
        let path = self.resolve(p)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {p:?}: {e}"))?;
        }
        std::fs::write(&path, content).map_err(|e| format!("cannot write {p:?}: {e}"))?;
        Ok(ToolOutput::ok(format!("wrote {} bytes to {}", content.len(), self.rel(&path))))
    }

    fn edit_file(&self, input: &Value) -> Result<ToolOutput, String> {
        let p = arg(input, "path")?;
        let old = arg(input, "old_str")?;
        let new = arg(input, "new_str")?;
        if old.is_empty() {
            return Err("old_str is empty; give the exact text to replace".into());
        }
        let path = self.resolve(p)?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {p:?}: {e}"))?;
        match text.matches(old).count() {
            1 => {
                let edited = text.replacen(old, new, 1);
                std::fs::write(&path, edited).map_err(|e| format!("cannot write {p:?}: {e}"))?;
                Ok(ToolOutput::ok(format!("edited {}", self.rel(&path))))
            }
            0 => Err(format!(
                "old_str was not found in {p}; read the file and copy the exact text, including whitespace"
            )),
            n => Err(format!(
                "old_str matches {n} times in {p}; it must match exactly once: include more surrounding lines"
            )),
        }
    }

    fn grep(&self, input: &Value) -> Result<ToolOutput, String> {
        let pattern = arg(input, "pattern")?;
        let p = input.get("path").and_then(Value::as_str).unwrap_or(".");
        let re = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))?;
        let root = self.resolve(p)?;
        let mut out = Vec::new();
        let mut stack = vec![root];
        let mut files = Vec::new();
        while let Some(path) = stack.pop() {
            let md = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(_) => continue,
            };
            if md.is_dir() {
                if path.file_name().is_some_and(|n| n == ".git") {
                    continue;
                }
                if let Ok(rd) = std::fs::read_dir(&path) {
                    let mut v: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
                    v.sort();
                    stack.extend(v.into_iter().rev());
                }
            } else if md.is_file() && md.len() <= MAX_FILE {
                files.push(path);
                if files.len() >= MAX_GREP_FILES {
                    break;
                }
            }
        }
        let walked_all = stack.is_empty();
        'files: for f in files {
            let Ok(bytes) = std::fs::read(&f) else { continue };
            if bytes[..bytes.len().min(8192)].contains(&0) {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            for (i, line) in text.lines().enumerate() {
                if re.is_match(line) {
                    out.push(format!("{}:{}: {}", self.rel(&f), i + 1, floor(line, 300)));
                    if out.len() >= MAX_GREP {
                        out.push(format!("[stopped at {MAX_GREP} matches; narrow the pattern or path]"));
                        break 'files;
                    }
                }
            }
        }
        if !walked_all {
            out.push(format!("[searched only the first {MAX_GREP_FILES} files; give a narrower path]"));
        }
        if out.is_empty() {
            return Ok(ToolOutput::ok(format!("no match for {pattern:?} under {p}")));
        }
        Ok(ToolOutput::ok(out.join("\n")))
    }

    /// Runs `command` with `bash -c` (or `sh -c` where there is no bash) in its own process
    /// group; at the timeout the whole group is killed.
    pub async fn bash(&self, command: &str) -> ToolOutput {
        let shell = if Path::new("/bin/bash").exists() || which("bash") { "bash" } else { "sh" };
        let mut cmd = tokio::process::Command::new(shell);
        cmd.arg("-c")
            .arg(command)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // The token for loomd's event intake is the loop's, not the model's commands'.
            .env_remove(crate::spool::TOKEN_ENV)
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => return ToolOutput::err(format!("cannot start {shell}: {e}")),
        };
        let pgid = child.id().map(|p| p as i32);
        let mut guard = GroupGuard(pgid);
        let cap = self.cfg.output_cap * 4;
        let out = tokio::spawn(read_capped(child.stdout.take(), cap));
        let err = tokio::spawn(read_capped(child.stderr.take(), cap));
        let Finished { status, timed_out, stdout, stderr } =
            finish(&mut child, &mut guard, self.cfg.bash_timeout, out, err).await;
        let mut s = String::new();
        if timed_out {
            s.push_str(&format!(
                "command timed out after {}s; its process group was killed. Run long jobs with a shorter scope or in the background.\n",
                self.cfg.bash_timeout.as_secs_f64()
            ));
        } else if let Some(st) = status {
            match st.code() {
                Some(c) => s.push_str(&format!("exit code: {c}\n")),
                None => s.push_str("killed by a signal\n"),
            }
        }
        if !stdout.is_empty() {
            s.push_str(&stdout);
            if !stdout.ends_with('\n') {
                s.push('\n');
            }
        }
        if !stderr.is_empty() {
            s.push_str("[stderr]\n");
            s.push_str(&stderr);
        }
        let failed = timed_out || status.and_then(|s| s.code()) != Some(0);
        ToolOutput { content: s, is_error: failed }
    }
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Kills a process group when dropped: a command cut short (shutdown, wall clock) takes its
/// whole group with it, not just its first process. Disarmed (`.0 = None`) once it finished.
#[derive(Debug)]
pub struct GroupGuard(pub Option<i32>);

/// How a command run by [`finish`] ended, with what it printed.
#[derive(Debug)]
pub struct Finished {
    pub status: Option<std::process::ExitStatus>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Waits for `child` up to `timeout`, killing its process group when the time is up, then
/// collects its output. A command that finished by itself keeps what it started in the
/// background (a server to test); the guard is disarmed either way.
pub async fn finish(
    child: &mut tokio::process::Child,
    guard: &mut GroupGuard,
    timeout: Duration,
    stdout: tokio::task::JoinHandle<String>,
    stderr: tokio::task::JoinHandle<String>,
) -> Finished {
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let timed_out = status.is_err();
    if timed_out && let Some(pg) = guard.0 {
        kill_group(pg);
    }
    guard.0 = None;
    let status = match status {
        Ok(s) => s.ok(),
        Err(_) => child.wait().await.ok(),
    };
    // A grandchild that left the group could hold the pipes open: don't wait for it forever.
    let grace = Duration::from_secs(2);
    let stdout = tokio::time::timeout(grace, stdout).await.ok().and_then(Result::ok).unwrap_or_default();
    let stderr = tokio::time::timeout(grace, stderr).await.ok().and_then(Result::ok).unwrap_or_default();
    Finished { status, timed_out, stdout, stderr }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pg) = self.0 {
            kill_group(pg);
        }
    }
}

/// Kills process group `pg` with SIGKILL.
pub fn kill_group(pg: i32) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pg), nix::sys::signal::Signal::SIGKILL);
}

/// Reads a pipe to its end, keeping the first `cap/3` and the last `2cap/3` bytes.
pub async fn read_capped<R: tokio::io::AsyncRead + Unpin>(r: Option<R>, cap: usize) -> String {
    let Some(mut r) = r else { return String::new() };
    let mut head = Vec::new();
    let mut tail: std::collections::VecDeque<u8> = std::collections::VecDeque::new();
    let mut total = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        total += n;
        let mut chunk = &buf[..n];
        if head.len() < cap / 3 {
            let take = chunk.len().min(cap / 3 - head.len());
            head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
        }
        tail.extend(chunk);
        while tail.len() > cap - cap / 3 {
            tail.pop_front();
        }
    }
    let mut s = String::from_utf8_lossy(&head).into_owned();
    let kept = head.len() + tail.len();
    if kept < total {
        s.push_str(&format!("\n[... {} bytes cut ...]\n", total - kept));
    }
    s.push_str(&String::from_utf8_lossy(tail.make_contiguous()));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> (tempfile::TempDir, Workspace) {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("ws")).unwrap();
        let w = Workspace::new(
            &d.path().join("ws"),
            ToolConfig { bash_timeout: Duration::from_millis(500), output_cap: 2_000 },
        )
        .unwrap();
        (d, w)
    }

    async fn run(w: &Workspace, name: &str, input: Value) -> ToolOutput {
        w.execute(name, &input).await
    }

    #[tokio::test]
    async fn paths_outside_the_workspace_are_refused() {
        let (d, w) = ws();
        std::fs::write(d.path().join("secret"), "s3cret").unwrap();
        std::os::unix::fs::symlink(d.path(), w.root().join("escape")).unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), w.root().join("link")).unwrap();
        for p in ["../secret", "/etc/passwd", "escape/secret", "link", "a/../../secret", "escape/new", "/"] {
            let out = run(&w, "read_file", json!({"path": p})).await;
            assert!(out.is_error, "{p}: {out:?}");
            assert!(out.content.contains("outside the workspace"), "{p}: {}", out.content);
            let out = run(&w, "write_file", json!({"path": p, "content": "x"})).await;
            assert!(out.is_error && out.content.contains("outside the workspace"), "{p}: {out:?}");
        }
        assert!(run(&w, "list_files", json!({"path": ".."})).await.is_error);
        assert!(run(&w, "grep", json!({"pattern": "s3cret", "path": "escape"})).await.is_error);
        assert_eq!(std::fs::read_to_string(d.path().join("secret")).unwrap(), "s3cret");
        // Inside is fine, including a symlink that stays inside and a new nested file.
        std::fs::write(w.root().join("a.txt"), "hello").unwrap();
        std::os::unix::fs::symlink(w.root().join("a.txt"), w.root().join("in")).unwrap();
        assert_eq!(run(&w, "read_file", json!({"path": "in"})).await.content, "hello");
        let abs = w.root().join("a.txt");
        assert_eq!(run(&w, "read_file", json!({"path": abs})).await.content, "hello");
        assert!(!run(&w, "write_file", json!({"path": "new/dir/f.txt", "content": "x"})).await.is_error);
        assert_eq!(std::fs::read_to_string(w.root().join("new/dir/f.txt")).unwrap(), "x");
    }

    #[tokio::test]
    async fn edit_needs_exactly_one_match() {
        let (_d, w) = ws();
        std::fs::write(w.root().join("f"), "a = 1\nb = 1\n").unwrap();
        let out = run(&w, "edit_file", json!({"path": "f", "old_str": "= 1", "new_str": "= 2"})).await;
        assert!(out.is_error);
        assert!(out.content.contains("matches 2 times"), "{}", out.content);
        let out = run(&w, "edit_file", json!({"path": "f", "old_str": "c = 1", "new_str": "x"})).await;
        assert!(out.is_error && out.content.contains("not found"), "{}", out.content);
        let out = run(&w, "edit_file", json!({"path": "f", "old_str": "b = 1", "new_str": "b = 2"})).await;
        assert!(!out.is_error, "{}", out.content);
        assert_eq!(std::fs::read_to_string(w.root().join("f")).unwrap(), "a = 1\nb = 2\n");
        assert_eq!(std::fs::read_to_string(w.root().join("f")).unwrap().matches("= 1").count(), 1);
    }

    #[tokio::test]
    async fn bash_times_out_and_kills_the_group() {
        let (_d, w) = ws();
        let started = std::time::Instant::now();
        let out = run(&w, "bash", json!({"command": "sleep 30 & echo started; sleep 30; echo never"})).await;
        assert!(out.is_error);
        assert!(out.content.contains("timed out after 0.5s"), "{}", out.content);
        assert!(out.content.contains("started"), "{}", out.content);
        assert!(!out.content.contains("never"));
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        let out = run(&w, "bash", json!({"command": "echo hi; echo err >&2; exit 3"})).await;
        assert!(out.is_error);
        assert_eq!(out.content, "exit code: 3\nhi\n[stderr]\nerr\n");
        let out = run(&w, "bash", json!({"command": "pwd"})).await;
        assert_eq!(out.content, format!("exit code: 0\n{}\n", w.root().display()));
    }

    #[tokio::test]
    async fn large_outputs_are_cut_with_a_note() {
        let (_d, w) = ws();
        let out = run(&w, "bash", json!({"command": "seq 1 100000"})).await;
        assert!(out.content.len() < 2_300, "{}", out.content.len());
        assert!(out.content.contains("bytes cut"), "{}", out.content);
        assert!(out.content.trim_end().ends_with("100000"));
        std::fs::write(w.root().join("big"), "x".repeat(100_000)).unwrap();
        let out = run(&w, "read_file", json!({"path": "big"})).await;
        assert!(out.content.contains("the output was 100000 bytes"));
    }

    #[tokio::test]
    async fn list_and_grep() {
        let (_d, w) = ws();
        std::fs::create_dir_all(w.root().join("src")).unwrap();
        std::fs::create_dir_all(w.root().join(".git")).unwrap();
        std::fs::write(w.root().join("src/lib.rs"), "fn parse_config() {}\nfn other() {}\n").unwrap();
        std::fs::write(w.root().join(".git/HEAD"), "parse_config").unwrap();
        let out = run(&w, "list_files", json!({"path": "."})).await;
        assert_eq!(out.content, "src/\nsrc/lib.rs");
        let out = run(&w, "grep", json!({"pattern": "parse_\\w+", "path": "."})).await;
        assert_eq!(out.content, "src/lib.rs:1: fn parse_config() {}");
        let out = run(&w, "grep", json!({"pattern": "("})).await;
        assert!(out.is_error && out.content.contains("invalid regular expression"));
        let out = run(&w, "nope", json!({})).await;
        assert!(out.is_error && out.content.contains("unknown tool"));
        let out = run(&w, "read_file", json!({"file": "x"})).await;
        assert!(out.is_error && out.content.contains("missing string argument `path`"));
    }
}
