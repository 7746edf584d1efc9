//! The agent of one iteration as a pure state machine (no I/O):
//! waiting → calling the model → processing the reply → executing tools → calling the model …
//! until the model stops asking for tools (done), an error ends it, or it is shut down.
//!
//! The caller does the I/O each [`Step`] asks for and feeds the outcome back. It also keeps
//! the conversation within the model's context window ([`fit_context`]).

use crate::llm::{ModelReply, ModelRequest, Msg, ToolCall, ToolResult, ToolSpec};

/// Where the agent is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Waiting,
    CallingModel,
    ProcessingReply,
    ExecutingTools,
    Done,
    Failed,
    Shutdown,
}

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Send this request to the model, then call [`Agent::on_reply`] or [`Agent::on_model_error`].
    CallModel(ModelRequest),
    /// Run these tools, then call [`Agent::on_tool_results`] with one result per call, in order.
    ExecuteTools(Vec<ToolCall>),
    /// The model finished: its last text, and whether it contains the completion marker.
    Done {
        final_text: String,
        marker_seen: bool,
    },
    Failed(String),
    Shutdown,
}

/// A transition the current state does not allow: a bug in the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent cannot {action} while {state:?}")]
pub struct BadTransition {
    pub action: &'static str,
    pub state: State,
}

/// Settings of one iteration's agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub system: String,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: u32,
    /// The model's context window in tokens (estimated as bytes/4).
    pub context_tokens: usize,
    /// Most model calls in one iteration before it is ended as failed.
    pub max_turns: u32,
    pub completion_marker: String,
}

/// The agent of one iteration.
#[derive(Debug)]
pub struct Agent {
    cfg: AgentConfig,
    state: State,
    messages: Vec<Msg>,
    pending: Vec<ToolCall>,
    turns: u32,
    marker_seen: bool,
}

/// The note that replaces tool output dropped to fit the context window.
pub const ELIDED: &str = "[output elided to keep the conversation within the context window]";

fn msg_len(m: &Msg) -> usize {
    match m {
        Msg::User(t) => t.len(),
        Msg::Assistant { text, tool_calls } => {
            text.len() + tool_calls.iter().map(|c| c.name.len() + c.input.to_string().len()).sum::<usize>()
        }
        Msg::ToolResults(rs) => rs.iter().map(|r| r.content.len() + 16).sum(),
    }
}

/// Estimated tokens of a conversation (bytes/4, the usual rough rule).
pub fn estimate_tokens(system: &str, messages: &[Msg]) -> usize {
    (system.len() + messages.iter().map(msg_len).sum::<usize>()) / 4 + 1
}

/// Shrinks `messages` until they fit `budget` tokens: first old tool outputs are replaced by
/// [`ELIDED`] (oldest first, never the latest round), then old assistant text is cut. The
/// first message (the prompt) and the latest round are always kept whole.
pub fn fit_context(system: &str, messages: &mut [Msg], budget: usize) {
    let n = messages.len();
    if n < 3 {
        return;
    }
    for i in 1..n.saturating_sub(2) {
        if estimate_tokens(system, messages) <= budget {
            return;
        }
        if let Msg::ToolResults(rs) = &mut messages[i] {
            for r in rs.iter_mut() {
                if r.content.len() > ELIDED.len() {
                    r.content = ELIDED.to_owned();
                }
            }
        }
    }
    for i in 1..n.saturating_sub(2) {
        if estimate_tokens(system, messages) <= budget {
            return;
        }
        if let Msg::Assistant { text, .. } = &mut messages[i]
            && text.len() > 200
        {
            let mut cut = 200;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" [cut]");
        }
    }
}

impl Agent {
    pub fn new(cfg: AgentConfig, prompt: String) -> Agent {
        Agent {
            cfg,
            state: State::Waiting,
            messages: vec![Msg::User(prompt)],
            pending: Vec::new(),
            turns: 0,
            marker_seen: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn messages(&self) -> &[Msg] {
        &self.messages
    }

    /// Model calls made so far.
    pub fn turns(&self) -> u32 {
        self.turns
    }

    fn call_model(&mut self) -> Step {
        if self.turns >= self.cfg.max_turns {
            self.state = State::Failed;
            return Step::Failed(format!(
                "the model made {} calls in one iteration without finishing (limit {})",
                self.turns, self.cfg.max_turns
            ));
        }
        self.turns += 1;
        self.state = State::CallingModel;
        let budget = self.cfg.context_tokens.saturating_sub(self.cfg.max_tokens as usize);
        fit_context(&self.cfg.system, &mut self.messages, budget);
        Step::CallModel(ModelRequest {
            system: self.cfg.system.clone(),
            messages: self.messages.clone(),
            tools: self.cfg.tools.clone(),
            max_tokens: self.cfg.max_tokens,
        })
    }

    fn expect(&self, s: State, action: &'static str) -> Result<(), BadTransition> {
        if self.state == s { Ok(()) } else { Err(BadTransition { action, state: self.state }) }
    }

    /// Waiting → calling the model.
    pub fn start(&mut self) -> Result<Step, BadTransition> {
        self.expect(State::Waiting, "start")?;
        Ok(self.call_model())
    }

    /// Calling the model → processing the reply → executing tools, or done.
    pub fn on_reply(&mut self, reply: ModelReply) -> Result<Step, BadTransition> {
        self.expect(State::CallingModel, "take a reply")?;
        self.state = State::ProcessingReply;
        if !self.cfg.completion_marker.is_empty() && reply.text.contains(&self.cfg.completion_marker) {
            self.marker_seen = true;
        }
        let calls = reply.tool_calls.clone();
        self.messages.push(Msg::Assistant { text: reply.text.clone(), tool_calls: calls.clone() });
        if calls.is_empty() {
            self.state = State::Done;
            return Ok(Step::Done { final_text: reply.text, marker_seen: self.marker_seen });
        }
        self.state = State::ExecutingTools;
        self.pending = calls.clone();
        Ok(Step::ExecuteTools(calls))
    }

    /// Executing tools → calling the model again with their results.
    pub fn on_tool_results(&mut self, results: Vec<ToolResult>) -> Result<Step, BadTransition> {
        self.expect(State::ExecutingTools, "take tool results")?;
        let mut ordered = Vec::with_capacity(self.pending.len());
        for call in std::mem::take(&mut self.pending) {
            let r = results.iter().find(|r| r.call_id == call.id).cloned().unwrap_or(ToolResult {
                call_id: call.id.clone(),
                content: "tool was not run".into(),
                is_error: true,
            });
            ordered.push(r);
        }
        self.messages.push(Msg::ToolResults(ordered));
        Ok(self.call_model())
    }

    /// Calling the model → failed.
    pub fn on_model_error(&mut self, error: String) -> Result<Step, BadTransition> {
        self.expect(State::CallingModel, "take a model error")?;
        self.state = State::Failed;
        Ok(Step::Failed(error))
    }

    /// Any state → shut down.
    pub fn shutdown(&mut self) -> Step {
        self.state = State::Shutdown;
        Step::Shutdown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> AgentConfig {
        AgentConfig {
            system: "sys".into(),
            tools: crate::tools::tool_specs(),
            max_tokens: 100,
            context_tokens: 100_000,
            max_turns: 3,
            completion_marker: "<done>".into(),
        }
    }

    fn reply(text: &str, calls: &[(&str, &str)]) -> ModelReply {
        ModelReply {
            text: text.into(),
            tool_calls: calls
                .iter()
                .map(|(id, name)| ToolCall { id: (*id).into(), name: (*name).into(), input: json!({}) })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_round_trip() {
        let mut a = Agent::new(cfg(), "fix it".into());
        assert_eq!(a.state(), State::Waiting);
        let Step::CallModel(req) = a.start().unwrap() else { panic!() };
        assert_eq!(req.messages, vec![Msg::User("fix it".into())]);
        assert_eq!(a.state(), State::CallingModel);
        let step = a.on_reply(reply("reading", &[("c1", "read_file"), ("c2", "bash")])).unwrap();
        assert!(matches!(&step, Step::ExecuteTools(c) if c.len() == 2));
        assert_eq!(a.state(), State::ExecutingTools);
        // Results out of order are put back in call order.
        let res = |id: &str| ToolResult { call_id: id.into(), content: id.into(), is_error: false };
        let Step::CallModel(req) = a.on_tool_results(vec![res("c2"), res("c1")]).unwrap() else { panic!() };
        assert_eq!(req.messages.len(), 3);
        assert!(matches!(&req.messages[2], Msg::ToolResults(r) if r[0].call_id == "c1" && r[1].call_id == "c2"));
        let step = a.on_reply(reply("all fixed <done>", &[])).unwrap();
        assert_eq!(step, Step::Done { final_text: "all fixed <done>".into(), marker_seen: true });
        assert_eq!(a.state(), State::Done);
        assert_eq!(a.turns(), 2);
    }

    #[test]
    fn invalid_transitions_are_refused() {
        let mut a = Agent::new(cfg(), "p".into());
        assert!(a.on_reply(reply("x", &[])).is_err());
        assert!(a.on_tool_results(vec![]).is_err());
        a.start().unwrap();
        assert!(a.start().is_err());
        assert!(a.on_tool_results(vec![]).is_err());
        let s = a.on_model_error("boom".into()).unwrap();
        assert_eq!(s, Step::Failed("boom".into()));
        assert_eq!(a.state(), State::Failed);
        assert_eq!(a.shutdown(), Step::Shutdown);
        assert_eq!(a.state(), State::Shutdown);
    }

    #[test]
    fn turn_limit_fails_the_iteration() {
        let mut a = Agent::new(cfg(), "p".into());
        a.start().unwrap();
        for _ in 0..2 {
            a.on_reply(reply("", &[("c", "bash")])).unwrap();
            assert!(matches!(a.on_tool_results(vec![]).unwrap(), Step::CallModel(_)));
        }
        a.on_reply(reply("", &[("c", "bash")])).unwrap();
        let s = a.on_tool_results(vec![]).unwrap();
        assert!(matches!(s, Step::Failed(m) if m.contains("3 calls")));
        // A missing result is reported to the model as an error, not dropped.
        assert!(matches!(&a.messages()[a.messages().len() - 1], Msg::ToolResults(r) if r[0].is_error));
    }

    #[test]
    fn context_is_kept_within_the_window() {
        let big = "x".repeat(40_000);
        let mut msgs = vec![Msg::User("prompt".into())];
        for i in 0..5 {
            msgs.push(Msg::Assistant { text: "y".repeat(1000), tool_calls: vec![] });
            msgs.push(Msg::ToolResults(vec![ToolResult {
                call_id: format!("{i}"),
                content: big.clone(),
                is_error: false,
            }]));
        }
        let before = estimate_tokens("s", &msgs);
        assert!(before > 50_000);
        fit_context("s", &mut msgs, 25_000);
        let after = estimate_tokens("s", &msgs);
        assert!(after <= 25_000, "{after}");
        // The prompt and the latest round are whole.
        assert_eq!(msgs[0], Msg::User("prompt".into()));
        assert!(matches!(&msgs[10], Msg::ToolResults(r) if r[0].content == big));
        assert!(matches!(&msgs[2], Msg::ToolResults(r) if r[0].content == ELIDED));
        // Fits already: untouched.
        let mut small = vec![Msg::User("a".into()), Msg::User("b".into()), Msg::User("c".into())];
        fit_context("s", &mut small, 100);
        assert_eq!(small.len(), 3);
    }
}
