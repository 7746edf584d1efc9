//! The loop driver's I/O shell: runs iterations (the built-in agent or any command), commits,
//! runs `--check` and `--until`, records thread events and the status file, and asks the pure
//! [`Policy`] when to stop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use loom_threads::{AgentStatus, EventKind, StopReason};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::client::ModelClient;
use crate::llm::{ModelError, ModelReply, ModelRequest, Msg, ToolResult};
use crate::machine::{Agent, AgentConfig, Step};
use crate::policy::{Decision, IterationReport, Limits, Policy};
use crate::spool::{EventsApi, Spool, SpoolError, now_ms};
use crate::tools::{GroupGuard, ToolConfig, Workspace, read_capped, tool_specs, truncate_middle};

/// What runs as the body of each iteration.
#[derive(Debug, Clone)]
pub enum Body {
    /// The built-in agent with its six tools.
    Agent(AgentSettings),
    /// Bring your own agent: this argv runs with the prompt on stdin, in the workspace.
    Command(Vec<String>),
}

/// Settings of the built-in agent.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub client: ModelClient,
    pub max_tokens: u32,
    pub context_tokens: usize,
    pub max_turns: u32,
    /// Transient failures (5xx, cut streams, connection errors) retried per model call.
    pub retries: u32,
}

/// Everything one loop needs.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub workspace: PathBuf,
    pub state_dir: PathBuf,
    pub prompt_file: PathBuf,
    pub body: Body,
    pub until: Option<String>,
    pub check: Option<String>,
    pub completion_marker: String,
    pub limits: Limits,
    pub tools: ToolConfig,
    /// Commit after each iteration with changes.
    pub commit: bool,
    /// Text of earlier threads given as context (`--context-thread`), prepended to each prompt.
    pub context: Option<String>,
    pub weaver_id: String,
    pub events_api: Option<EventsApi>,
    /// Timeout of `--until`/`--check` commands and of one bring-your-own-agent run.
    pub command_timeout: Duration,
    /// Print progress (model text, tool calls) to stdout.
    pub verbose: bool,
}

/// How a loop ended.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopOutcome {
    pub stop: StopReason,
    pub iterations: u32,
    pub commits: u32,
    pub thread_id: String,
    pub status: AgentStatus,
}

/// Errors that end the driver itself (not a stop reason: the state directory is unusable).
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("workspace {path} is unusable; give an existing directory with --workspace")]
    Workspace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The driver asked the agent state machine for a transition it refuses.
    #[error("loom agent bug: {0}")]
    Bug(String),
    #[error("writing the status file {path} failed; check that --state-dir is writable")]
    Status {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The system prompt of the built-in agent.
pub fn system_prompt(workspace: &Path, marker: &str) -> String {
    format!(
        "You are an autonomous coding agent working in the repository at {ws}. Use the tools to \
         read, search, edit and test the code; paths are relative to {ws}. Each iteration starts \
         with a fresh context, so the repository is your memory. Work in small verified steps. \
         When the whole task is complete and verified, reply with the line {marker} and no tool call.",
        ws = workspace.display()
    )
}

struct Shell {
    cfg: LoopConfig,
    spool: Spool,
    status: AgentStatus,
    started: Instant,
    shutdown: watch::Receiver<bool>,
    workspace: Workspace,
    git: bool,
    /// Whether git has a committer identity; checked once.
    git_identity: bool,
    /// HEAD after the last iteration (so each iteration spawns as few `git`s as it can).
    last_head: Option<String>,
    last_send_failure: Option<Instant>,
}

/// Result of one command (`--until`, `--check`, a bring-your-own agent).
#[derive(Debug)]
struct CmdResult {
    code: Option<i32>,
    output: String,
    timed_out: bool,
}

impl CmdResult {
    fn passed(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// Runs `argv` in `dir` in its own process group, with `stdin` fed, output captured (capped).
async fn run_command(
    argv: &[String],
    dir: &Path,
    stdin: Option<&str>,
    timeout: Duration,
    cap: usize,
    echo: bool,
) -> std::io::Result<CmdResult> {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .current_dir(dir)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove(crate::spool::TOKEN_ENV)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|p| p as i32);
    // If this future is dropped (shutdown, wall clock), the whole group goes with it.
    let mut guard = GroupGuard(pgid);
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        let input = input.to_owned();
        tokio::spawn(async move {
            let _ = w.write_all(input.as_bytes()).await;
        });
    }
    let (o, e) = if echo {
        // Shown as it comes, for `loom weaver logs -f`; kept capped for the thread.
        (
            tokio::spawn(read_capped(child.stdout.take().map(|r| Tee(r, false)), cap.max(1024) * 2)),
            tokio::spawn(read_capped(child.stderr.take().map(|r| Tee(r, true)), cap.max(1024) * 2)),
        )
    } else {
        (
            tokio::spawn(read_capped(child.stdout.take(), cap.max(1024) * 2)),
            tokio::spawn(read_capped(child.stderr.take(), cap.max(1024) * 2)),
        )
    };
    let crate::tools::Finished { status, timed_out, stdout: mut output, stderr: e } =
        crate::tools::finish(&mut child, &mut guard, timeout, o, e).await;
    if !e.is_empty() {
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        output.push_str(&e);
    }
    Ok(CmdResult { code: status.and_then(|s| s.code()), output: truncate_middle(&output, cap), timed_out })
}

/// A reader that copies what it reads to our stdout (or stderr, when `.1`). The write is a
/// plain blocking write of a small chunk to a pipe, which keeps every byte in order.
struct Tee<R>(R, bool);

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tee<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Write;
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &r {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                let _ = if self.1 { std::io::stderr().write_all(new) } else { std::io::stdout().write_all(new) };
            }
        }
        r
    }
}

/// HEAD's commit, read from the repository's files (`None` when anything is unusual: a
/// worktree, an unborn branch; then `git rev-parse` answers).
fn read_head(workspace: &Path) -> Option<String> {
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

pub use loom_core::error_chain;

/// A state directory inside the workspace must not be committed (its spool changes every
/// iteration, which would also blind the no-change breaker): list it in `.git/info/exclude`.
fn exclude_state_dir(workspace: &Path, state_dir: &Path) {
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

/// Resolves when a shutdown is requested; never, if nobody can request one any more.
async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn sh(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}

/// What the body of an iteration produced.
#[derive(Debug, Default)]
struct BodyResult {
    final_text: String,
    marker_seen: bool,
    error: Option<String>,
    budget: Option<String>,
}

impl Shell {
    fn record(&mut self, kind: EventKind, text: &str, payload: serde_json::Value) -> Result<u64, LoopError> {
        Ok(self.spool.record(kind, self.status.iteration, text, payload)?)
    }

    fn write_status(&mut self) -> Result<(), LoopError> {
        self.status.updated_ms = now_ms();
        let path = self.cfg.state_dir.join("status.json");
        let tmp = self.cfg.state_dir.join("status.json.tmp");
        let body = serde_json::to_vec_pretty(&self.status).unwrap_or_default();
        std::fs::write(&tmp, body)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| LoopError::Status { path, source })
    }

    /// At iteration boundaries: deliver the spool; what loomd did not acknowledge is made
    /// durable on disk (what it acknowledged is durable in its store already, and an fsync
    /// costs milliseconds).
    async fn flush(&mut self) {
        self.deliver(Duration::from_secs(5)).await;
        if (self.spool.unacked() > 0 || self.cfg.events_api.is_none())
            && let Err(e) = self.spool.sync()
        {
            tracing::warn!(error = %error_chain(&e), "syncing the thread spool failed");
        }
    }

    /// Within an iteration (after each tool round), so threads show progress live; skipped
    /// for a while after a failure so that a loomd that is down does not slow the loop.
    async fn flush_soft(&mut self) {
        if self.last_send_failure.is_some_and(|t| t.elapsed() < Duration::from_secs(15)) {
            return;
        }
        self.deliver(Duration::from_secs(2)).await;
    }

    async fn deliver(&mut self, timeout: Duration) {
        match self.spool.flush(timeout).await {
            Ok(_) => self.last_send_failure = None,
            Err(e) => {
                self.last_send_failure = Some(Instant::now());
                tracing::warn!(error = %error_chain(&e), "thread events not delivered yet");
            }
        }
    }

    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    fn remaining(&self) -> Duration {
        match self.cfg.limits.wall_clock {
            Some(l) => l.saturating_sub(self.elapsed()),
            None => Duration::from_secs(10 * 365 * 86_400),
        }
    }

    fn say(&self, line: &str) {
        if self.cfg.verbose {
            println!("{line}");
        }
    }

    async fn git(&self, args: &[&str]) -> Option<CmdResult> {
        let mut argv = vec!["git".to_owned()];
        argv.extend(args.iter().map(|s| s.to_string()));
        run_command(&argv, &self.cfg.workspace, None, Duration::from_secs(60), 1 << 20, false).await.ok()
    }

    async fn head(&self) -> Option<String> {
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
    async fn commit(&mut self, summary: &str) -> Result<Option<(String, String)>, String> {
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

    /// Waits `d`, or less if a shutdown comes. Returns false on shutdown.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = shutdown_requested(&mut self.shutdown) => false,
        }
    }

    async fn call_model(
        &mut self,
        s: &AgentSettings,
        req: &ModelRequest,
    ) -> Result<Result<ModelReply, ModelError>, LoopError> {
        let mut attempt = 0;
        loop {
            let verbose = self.cfg.verbose;
            let r = s
                .client
                .call(req, |t| {
                    if verbose {
                        print!("{t}");
                    }
                })
                .await;
            match r {
                Err(ModelError::RateLimited { retry_after, message }) => {
                    // A usage limit: pause and resume; the iteration is not burnt.
                    let wait = retry_after.min(self.remaining());
                    self.status.state = "paused".into();
                    self.status.paused_until_ms = Some(now_ms() + wait.as_millis() as i64);
                    self.record(
                        EventKind::Pause,
                        &format!("rate limited; pausing {:.1}s: {message}", wait.as_secs_f64()),
                        json!({"retry_after_ms": retry_after.as_millis() as u64}),
                    )?;
                    self.write_status()?;
                    self.say(&format!("[loom] rate limited, pausing {:.1}s", wait.as_secs_f64()));
                    let resumed = self.sleep(wait).await;
                    self.status.state = "running".into();
                    self.status.paused_until_ms = None;
                    self.write_status()?;
                    if !resumed || self.remaining().is_zero() {
                        return Ok(Err(ModelError::RateLimited { retry_after, message }));
                    }
                }
                Err(e) if e.is_transient() && attempt < s.retries => {
                    attempt += 1;
                    let wait = Duration::from_millis(250 << attempt.min(6));
                    tracing::warn!(error = %e, attempt, "model call failed, retrying");
                    if !self.sleep(wait).await {
                        return Ok(Err(e));
                    }
                }
                other => return Ok(other),
            }
        }
    }

    async fn run_agent(&mut self, s: &AgentSettings, prompt: String) -> Result<BodyResult, LoopError> {
        let mut agent = Agent::new(
            AgentConfig {
                system: system_prompt(self.workspace.root(), &self.cfg.completion_marker),
                tools: tool_specs(),
                max_tokens: s.max_tokens,
                context_tokens: s.context_tokens,
                max_turns: s.max_turns,
                completion_marker: self.cfg.completion_marker.clone(),
            },
            prompt,
        );
        let mut step = agent.start().map_err(|e| unreachable_transition(&e))?;
        let mut out = BodyResult::default();
        loop {
            step = match step {
                Step::CallModel(req) => {
                    let new_input = match req.messages.last() {
                        Some(Msg::User(t)) => t.clone(),
                        Some(Msg::ToolResults(r)) => format!("{} tool result(s)", r.len()),
                        _ => String::new(),
                    };
                    self.record(
                        EventKind::ModelRequest,
                        &new_input,
                        json!({"model": s.client.wire_model, "turn": agent.turns(), "messages": req.messages.len()}),
                    )?;
                    match self.call_model(s, &req).await? {
                        Ok(reply) => {
                            if self.cfg.verbose && !reply.text.is_empty() {
                                println!();
                            }
                            self.status.input_tokens += reply.usage.input_tokens;
                            self.status.output_tokens += reply.usage.output_tokens;
                            self.record(
                                EventKind::ModelReply,
                                &reply.text,
                                json!({
                                    "stop_reason": reply.stop_reason,
                                    "input_tokens": reply.usage.input_tokens,
                                    "output_tokens": reply.usage.output_tokens,
                                    "tool_calls": reply.tool_calls.len(),
                                }),
                            )?;
                            agent.on_reply(reply).map_err(|e| unreachable_transition(&e))?
                        }
                        Err(ModelError::BudgetExhausted(m)) => {
                            self.record(EventKind::Error, &format!("budget exhausted: {m}"), json!({}))?;
                            out.budget = Some(m);
                            return Ok(out);
                        }
                        Err(e) => agent.on_model_error(e.to_string()).map_err(|e| unreachable_transition(&e))?,
                    }
                }
                Step::ExecuteTools(calls) => {
                    let mut results = Vec::with_capacity(calls.len());
                    for c in calls {
                        let input = c.input.to_string();
                        self.say(&format!("[tool] {} {}", c.name, truncate_middle(&input, 200)));
                        self.record(
                            EventKind::ToolCall,
                            &format!("{} {input}", c.name),
                            json!({"id": c.id, "name": c.name, "input": c.input}),
                        )?;
                        let r = self.workspace.execute(&c.name, &c.input).await;
                        self.record(
                            EventKind::ToolResult,
                            &r.content,
                            json!({"id": c.id, "name": c.name, "is_error": r.is_error}),
                        )?;
                        results.push(ToolResult { call_id: c.id, content: r.content, is_error: r.is_error });
                    }
                    self.write_status()?;
                    self.flush_soft().await;
                    agent.on_tool_results(results).map_err(|e| unreachable_transition(&e))?
                }
                Step::Done { final_text, marker_seen } => {
                    out.final_text = final_text;
                    out.marker_seen = marker_seen;
                    return Ok(out);
                }
                Step::Failed(e) => {
                    self.record(EventKind::Error, &e, json!({}))?;
                    out.error = Some(e);
                    return Ok(out);
                }
                Step::Shutdown => return Ok(out),
            };
        }
    }

    async fn run_byo(&mut self, argv: &[String], prompt: String) -> Result<BodyResult, LoopError> {
        if argv.is_empty() {
            return Ok(BodyResult { error: Some("the agent command is empty".into()), ..Default::default() });
        }
        let timeout = self.cfg.command_timeout.min(self.remaining());
        let r = run_command(
            argv,
            &self.cfg.workspace,
            Some(&prompt),
            timeout,
            self.cfg.tools.output_cap * 4,
            self.cfg.verbose,
        )
        .await;
        let mut out = BodyResult::default();
        match r {
            Err(e) => {
                let msg = format!("cannot run {:?}: {e}", argv[0]);
                self.record(EventKind::Error, &msg, json!({}))?;
                out.error = Some(msg);
            }
            Ok(r) => {
                self.record(
                    EventKind::Output,
                    &r.output,
                    json!({"argv": argv, "exit_code": r.code, "timed_out": r.timed_out}),
                )?;
                out.marker_seen =
                    !self.cfg.completion_marker.is_empty() && r.output.contains(&self.cfg.completion_marker);
                out.final_text = r.output.clone();
                if !r.passed() {
                    let last = r.output.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
                    out.error = Some(if r.timed_out {
                        format!("{} timed out after {}s", argv[0], timeout.as_secs())
                    } else {
                        format!("{} exited with {:?}: {last}", argv[0], r.code)
                    });
                }
            }
        }
        Ok(out)
    }

    async fn check_cmd(&mut self, which: &str, cmd: &str) -> Result<CmdResult, LoopError> {
        let timeout = self.cfg.command_timeout;
        let r = run_command(&sh(cmd), &self.cfg.workspace, None, timeout, self.cfg.tools.output_cap, false)
            .await
            .unwrap_or_else(|e| CmdResult { code: None, output: format!("cannot run sh: {e}"), timed_out: false });
        let verdict = if r.passed() { "passed" } else { "failed" };
        self.record(
            EventKind::CheckResult,
            &format!("--{which} `{cmd}` {verdict} (exit {:?})\n{}", r.code, r.output),
            json!({"which": which, "command": cmd, "exit_code": r.code, "passed": r.passed(), "timed_out": r.timed_out}),
        )?;
        self.say(&format!("[loom] --{which} {verdict}"));
        Ok(r)
    }
}

fn unreachable_transition(e: &crate::machine::BadTransition) -> LoopError {
    // The driver follows the machine's steps; a refused transition is a bug, reported loudly.
    LoopError::Bug(e.to_string())
}

/// Runs the loop until a stop rule fires. `shutdown` turning true stops it cleanly.
pub async fn run_loop(cfg: LoopConfig, shutdown: watch::Receiver<bool>) -> Result<LoopOutcome, LoopError> {
    let spool = Spool::open(&cfg.state_dir, &cfg.weaver_id, cfg.events_api.clone())?;
    let workspace = Workspace::new(&cfg.workspace, cfg.tools.clone())
        .map_err(|source| LoopError::Workspace { path: cfg.workspace.clone(), source })?;
    let started_ms = now_ms();
    let mut sh = Shell {
        status: AgentStatus {
            thread_id: spool.thread_id().to_owned(),
            state: "starting".into(),
            max_iterations: cfg.limits.max_iterations,
            started_ms,
            ..Default::default()
        },
        spool,
        started: Instant::now(),
        shutdown,
        workspace,
        git: false,
        git_identity: false,
        last_head: None,
        last_send_failure: None,
        cfg,
    };
    sh.git = sh.git(&["rev-parse", "--is-inside-work-tree"]).await.is_some_and(|r| r.passed());
    if sh.git {
        exclude_state_dir(&sh.cfg.workspace, &sh.cfg.state_dir);
        sh.git_identity = sh.git(&["config", "user.email"]).await.is_some_and(|r| r.passed());
        sh.last_head = sh.head().await;
    }
    if !sh.git {
        tracing::warn!(workspace = %sh.cfg.workspace.display(), "not a git repository: no commits, no no-change breaker");
    }
    // Deliver what a previous run left unacknowledged before adding more.
    sh.flush().await;
    let prompt_head = std::fs::read_to_string(&sh.cfg.prompt_file)
        .ok()
        .and_then(|p| p.lines().find(|l| !l.trim().is_empty()).map(|l| l.trim_start_matches('#').trim().to_owned()))
        .unwrap_or_default();
    let body_desc = match &sh.cfg.body {
        Body::Agent(a) => json!({"model": a.client.wire_model}),
        Body::Command(argv) => json!({"command": argv}),
    };
    sh.record(
        EventKind::ThreadStart,
        &prompt_head,
        json!({
            "body": body_desc,
            "until": sh.cfg.until,
            "check": sh.cfg.check,
            "max_iterations": sh.cfg.limits.max_iterations,
            "workspace": sh.cfg.workspace.display().to_string(),
        }),
    )?;
    sh.status.state = "running".into();
    sh.write_status()?;
    let mut policy = Policy::new(sh.cfg.limits.clone());
    let mut feedback: Vec<String> = Vec::new();
    let stop = loop {
        if *sh.shutdown.borrow() {
            break StopReason::Shutdown;
        }
        if let Decision::Stop(r) = policy.before_iteration(sh.elapsed()) {
            break r;
        }
        sh.status.iteration = policy.iterations() + 1;
        sh.write_status()?;
        sh.record(EventKind::IterationStart, &format!("iteration {}", sh.status.iteration), json!({}))?;
        sh.say(&format!("[loom] iteration {}", sh.status.iteration));
        let prompt = match std::fs::read_to_string(&sh.cfg.prompt_file) {
            Ok(p) => p,
            Err(e) => {
                break StopReason::Fatal {
                    error: format!("cannot read the prompt file {}: {e}", sh.cfg.prompt_file.display()),
                };
            }
        };
        let mut full = prompt;
        if let Some(c) = &sh.cfg.context {
            full.push_str("\n\n## Context from earlier threads\n\n");
            full.push_str(c);
        }
        if !feedback.is_empty() {
            full.push_str("\n\n## Feedback from the previous iteration\n\n");
            full.push_str(&feedback.join("\n\n"));
        }
        feedback.clear();
        let head_before = sh.last_head.clone();
        let body = sh.cfg.body.clone();
        let remaining = sh.remaining();
        let mut shutdown_rx = sh.shutdown.clone();
        let result = {
            let fut = async {
                match &body {
                    Body::Agent(a) => sh.run_agent(a, full).await,
                    Body::Command(argv) => sh.run_byo(argv, full).await,
                }
            };
            tokio::select! {
                r = fut => Some(r?),
                _ = tokio::time::sleep(remaining) => None,
                _ = shutdown_requested(&mut shutdown_rx) => None,
            }
        };
        let interrupted = result.is_none();
        let result = result.unwrap_or_default();
        let is_shutdown = *sh.shutdown.borrow();
        // Commit whatever the iteration changed, even when it was cut short.
        let mut tree_changed = false;
        if sh.git {
            if sh.cfg.commit {
                match sh.commit(&result.final_text).await {
                    Ok(Some((hash, msg))) => {
                        tree_changed = true;
                        sh.status.commits += 1;
                        let subject = msg.lines().next().unwrap_or("").to_owned();
                        sh.say(&format!("[loom] committed {hash}: {subject}"));
                        sh.record(EventKind::Commit, &msg, json!({"hash": hash}))?;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        sh.record(EventKind::Error, &e, json!({}))?;
                    }
                }
            } else if sh.git(&["status", "--porcelain"]).await.is_some_and(|r| !r.output.trim().is_empty()) {
                tree_changed = true;
            }
            if !tree_changed {
                // The body may have committed by itself (a bring-your-own agent does).
                sh.last_head = sh.head().await;
                tree_changed = sh.last_head != head_before;
            }
        } else {
            tree_changed = true;
        }
        let mut report = IterationReport {
            tree_changed,
            error: result.error.clone(),
            marker_seen: result.marker_seen,
            budget_exhausted: result.budget.clone(),
            shutdown: is_shutdown,
            until_passed: None,
        };
        if !interrupted && result.budget.is_none() {
            if let Some(check) = sh.cfg.check.clone() {
                let r = sh.check_cmd("check", &check).await?;
                if !r.passed() {
                    feedback.push(format!("`{check}` failed (exit {:?}):\n```\n{}\n```", r.code, r.output.trim_end()));
                }
            }
            if let Some(until) = sh.cfg.until.clone() {
                let r = sh.check_cmd("until", &until).await?;
                report.until_passed = Some(r.passed());
                if !r.passed() && result.marker_seen {
                    feedback.push(format!(
                        "You said the work is done, but the completion check `{until}` failed (exit {:?}):\n```\n{}\n```",
                        r.code,
                        r.output.trim_end()
                    ));
                }
            }
        }
        if let Some(e) = &result.error {
            sh.status.last_error = Some(e.clone());
            feedback.push(format!("The previous iteration ended with an error: {e}"));
        }
        sh.record(
            EventKind::IterationEnd,
            &format!("iteration {} ended", sh.status.iteration),
            json!({"tree_changed": tree_changed, "marker_seen": result.marker_seen, "until_passed": report.until_passed, "error": result.error}),
        )?;
        sh.write_status()?;
        sh.flush().await;
        if interrupted && !is_shutdown {
            break StopReason::WallClock { limit_secs: sh.cfg.limits.wall_clock.map(|d| d.as_secs()).unwrap_or(0) };
        }
        if let Decision::Stop(r) = policy.after_iteration(&report, sh.elapsed()) {
            break r;
        }
    };
    sh.say(&format!("[loom] stopped: {stop}"));
    sh.record(EventKind::Stop, &format!("stopped: {stop}"), json!({"reason": stop}))?;
    sh.status.state = "stopped".into();
    sh.status.stop_reason = Some(stop.clone());
    sh.write_status()?;
    sh.flush().await;
    Ok(LoopOutcome {
        stop,
        iterations: sh.status.iteration,
        commits: sh.status.commits,
        thread_id: sh.spool.thread_id().to_owned(),
        status: sh.status.clone(),
    })
}
