//! The agent loop's glue, as a [`WeaverHooks`] like the proxy's and the audit's: its command
//! line, its environment, and the intake of what it spooled during a run, once that run ends.

use std::path::PathBuf;
use std::sync::Arc;

use loom_core::weaver::{RunId, WeaverId};

use super::{AGENT_CONTEXT, AGENT_PATH, AGENT_PROMPT, AGENT_STATE, WeaverHooks};
use crate::store::WeaverRecord;
use crate::weaverfs::WeaverRoot;

/// The most of an agent's spool loomd reads when its run ends.
const MAX_SPOOL_BYTES: u64 = 64 << 20;

/// The loop's command line inside the weaver; a command given with it is the loop body.
pub(super) fn agent_command(agent: &loom_core::weaver::AgentSpec, body: &[String]) -> Vec<String> {
    let mut argv =
        vec![AGENT_PATH.to_string(), "--prompt".into(), AGENT_PROMPT.into(), "--model".into(), agent.model.clone()];
    if let Some(n) = agent.max_iterations {
        argv.extend(["--max-iterations".into(), n.to_string()]);
    }
    if let Some(until) = &agent.until {
        argv.extend(["--until".into(), until.clone()]);
    }
    if let Some(check) = &agent.check {
        argv.extend(["--check".into(), check.clone()]);
    }
    if let Some(w) = &agent.wall_clock {
        argv.extend(["--wall-clock".into(), w.clone()]);
    }
    if let Some(m) = &agent.completion_marker {
        argv.extend(["--completion-marker".into(), m.clone()]);
    }
    if !agent.context_threads.is_empty() {
        argv.extend(["--context-file".into(), AGENT_CONTEXT.into()]);
    }
    if !body.is_empty() {
        argv.push("--".into());
        argv.extend(body.iter().cloned());
    }
    argv
}

#[derive(Debug)]
pub(super) struct AgentLoop {
    weavers_dir: PathBuf,
    threads: Option<Arc<crate::threads::Threads>>,
    /// Whether loom-agent is bound into weavers (installed next to loomd).
    installed: bool,
}

impl AgentLoop {
    pub(super) fn new(weavers_dir: PathBuf, threads: Option<Arc<crate::threads::Threads>>, installed: bool) -> Self {
        AgentLoop { weavers_dir, threads, installed }
    }

    /// Stores what the agent spooled but could not deliver before its run ended (loomd down,
    /// a refused write, a crash). Appends are idempotent and owner-checked, so events that did
    /// arrive are not doubled and a weaver can only add to its own threads.
    async fn ingest_spool(&self, rec: &WeaverRecord) {
        let (Some(threads), Some(_)) = (self.threads.clone(), rec.info.spec.agent.as_ref()) else { return };
        let root = self.weavers_dir.join(rec.info.id.as_str()).join("root");
        let weaver = rec.info.id.to_string();
        let result = tokio::task::spawn_blocking(move || -> Result<usize, String> {
            let spool = format!("{AGENT_STATE}/spool.jsonl");
            // The undelivered events are the newest: past the cap, the spool's end is read.
            let (bytes, cut) = match WeaverRoot::open(&root).and_then(|r| r.read_last(&spool, MAX_SPOOL_BYTES)) {
                Ok(b) => b,
                Err(e) if e.is_not_found() => return Ok(0),
                Err(e) => return Err(crate::error_chain(&e)),
            };
            let text = String::from_utf8_lossy(&bytes);
            let text = if cut { text.split_once('\n').map_or("", |(_, rest)| rest) } else { &text };
            let events: Vec<loom_threads::ThreadEvent> =
                text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            let mut stored = 0;
            for batch in events.chunks(loom_threads::wire::MAX_BATCH_EVENTS) {
                stored += threads
                    .with(|c| loom_threads::append_events(c, &weaver, batch))
                    .map_err(|e| e.to_string())?
                    .inserted;
            }
            Ok(stored)
        })
        .await;
        match result {
            Ok(Ok(stored)) if stored > 0 => {
                tracing::info!(weaver = %rec.info.id, stored, "stored thread events the agent had not delivered")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(weaver = %rec.info.id, error = %e, "the agent's spool could not be stored"),
            Err(e) => tracing::warn!(weaver = %rec.info.id, error = %e, "reading the agent's spool failed"),
        }
    }
}

#[async_trait::async_trait]
impl WeaverHooks for AgentLoop {
    async fn before_start(
        &self,
        _id: &WeaverId,
        _run: RunId,
        rec: &WeaverRecord,
    ) -> Result<Vec<(String, String)>, String> {
        if rec.info.spec.agent.is_none() {
            return Ok(vec![]);
        }
        if !self.installed {
            return Err("the loom-agent binary is not installed next to loomd, so the agent loop cannot run".into());
        }
        Ok(vec![("LOOM_STATE_DIR".into(), AGENT_STATE.into())])
    }

    /// The spool of the run that ended is read once, here, whoever noticed the end.
    async fn after_stop(&self, _id: &WeaverId, _run: RunId, rec: &WeaverRecord) {
        self.ingest_spool(rec).await;
    }
}
