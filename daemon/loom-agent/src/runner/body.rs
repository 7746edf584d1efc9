//! The body of an iteration: the built-in agent's model calls and tool rounds, a
//! bring-your-own agent, and the `--check`/`--until` commands.

use std::time::Duration;

use loom_threads::EventKind;
use serde_json::json;

use super::*;
use crate::llm::{ModelError, ModelReply, ModelRequest, Msg, ToolResult};
use crate::machine::{Agent, AgentConfig, Step};
use crate::spool::now_ms;
use crate::tools::{tool_specs, truncate_middle};

/// What the body of an iteration produced.
#[derive(Debug, Default)]
pub(super) struct BodyResult {
    pub(super) final_text: String,
    pub(super) marker_seen: bool,
    pub(super) error: Option<String>,
    pub(super) budget: Option<String>,
}

impl Shell {
    pub(super) async fn call_model(
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

    pub(super) async fn run_agent(&mut self, s: &AgentSettings, prompt: String) -> Result<BodyResult, LoopError> {
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

    pub(super) async fn run_byo(&mut self, argv: &[String], prompt: String) -> Result<BodyResult, LoopError> {
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

    pub(super) async fn check_cmd(&mut self, which: &str, cmd: &str) -> Result<CmdResult, LoopError> {
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
