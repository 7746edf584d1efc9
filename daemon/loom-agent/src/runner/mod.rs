//! The loop driver's I/O shell: runs iterations (the built-in agent or any command), commits,
//! runs `--check` and `--until`, records thread events and the status file, and asks the pure
//! [`Policy`] when to stop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loom_threads::{AgentStatus, EventKind, StopReason};
use serde_json::json;
use tokio::sync::watch;

use crate::client::ModelClient;
use crate::policy::{Decision, IterationReport, Limits, Policy};
use crate::spool::{EventsApi, Spool, SpoolError, now_ms};
mod body;
mod command;
mod git;

use crate::tools::{ToolConfig, Workspace};
use command::{CmdResult, run_command, sh, shutdown_requested};
use git::exclude_state_dir;

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

pub use loom_core::error_chain;

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

    /// Waits `d`, or less if a shutdown comes. Returns false on shutdown.
    async fn sleep(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = shutdown_requested(&mut self.shutdown) => false,
        }
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
