//! The supervisor: every lifecycle change of one weaver, under that weaver's lock. A start
//! mints a [`RunId`]; the run's hooks acquire what it holds (`before_start`, `on_cgroup`,
//! `after_start`) and [`Daemon::end_run`] releases it (`after_stop`), exactly once per run,
//! whoever notices the end first: a stop, the run's watcher, a failed start, a remove.

use std::sync::Arc;
use std::time::Duration;

use loom_core::api::{ErrorCode, WeaverInfo};
use loom_core::restart::{Decision, RestartTracker};
use loom_core::weaver::{Image, NetworkMode, RunId, WeaverId, WeaverState};

use super::{ApiError, Daemon, STOP_GRACE, lock, now_secs};
use crate::backend::{Launch, Observed, RunHandle};
use crate::rootfs;
use crate::store::{StoreError, WeaverRecord};

impl Daemon {
    /// Starts one run of a weaver whose lock the caller holds, and the watcher for its end.
    pub(super) async fn launch(self: &Arc<Self>, rec: &mut WeaverRecord) -> Result<(), ApiError> {
        let id = rec.info.id.clone();
        // Whatever an earlier run still holds goes before a new one takes anything.
        self.end_run(rec).await;
        let run = RunId::from_random(rand::random());
        rec.run = Some(run);
        rec.handle = None;
        lock(&self.runs).insert(id.clone(), run);
        tracing::debug!(weaver = %id, %run, "starting a run");
        let mut env = vec![];
        for h in &self.hooks {
            match h.before_start(&id, run, rec).await {
                Ok(more) => env.extend(more),
                Err(reason) => return self.fail(rec, reason).await,
            }
        }
        let mut spec = rec.info.spec.clone();
        if let Image::Dir(dir) = &spec.image
            && let Err(e) = crate::image::check(dir, &[], true)
        {
            return self.fail(rec, e.to_string()).await;
        }
        if let Some(agent) = &spec.agent {
            spec.command = super::agent::agent_command(agent, &spec.command);
        }
        let vars: Vec<(&str, &str)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        let env_text = crate::backend::nspawn_args::env_file(&vars);
        if let Err(reason) = self.prepare_root(&spec, &id, env_text).await {
            return self.fail(rec, reason).await;
        }
        let network = spec.network;
        let netns = (self.net.is_some() && network != NetworkMode::Host).then(|| crate::net::netns_path(&id));
        let launch =
            Launch { id: id.clone(), run, spec, dir: self.dir_of(&id), binds_ro: self.net_binds(network), netns };
        match self.backend.prepare(&launch).await {
            Ok(Some(cgroup_id)) => {
                for h in &self.hooks {
                    h.on_cgroup(&id, run, cgroup_id).await;
                }
            }
            Ok(None) => {}
            Err(e) => return self.fail(rec, e.to_string()).await,
        }
        let started = self.backend.start(&launch).await;
        if launch.spec.tailscale {
            self.remove_tailscale_key(&id).await;
        }
        match started {
            Ok(started) => {
                rec.info.state = WeaverState::Running;
                rec.info.pid = (started.leader_pid > 0).then_some(started.leader_pid);
                rec.info.started_at = Some(now_secs());
                rec.info.exit_code = None;
                rec.info.reason = None;
                rec.handle = Some(started.handle.clone());
                self.with_store(|s| s.update(rec))?;
                tracing::info!(weaver = %id, name = %rec.info.name, %run, pid = started.leader_pid, "weaver running");
                for h in &self.hooks {
                    h.after_start(&id, run, started.leader_pid, started.cgroup_id).await;
                }
                self.watch(id, started.handle);
                Ok(())
            }
            Err(e) => {
                let _ = self.backend.cleanup(&id).await;
                self.fail(rec, e.to_string()).await
            }
        }
    }

    /// The binds every weaver gets, and those of its network (its resolv.conf).
    fn net_binds(&self, network: NetworkMode) -> Vec<(std::path::PathBuf, String)> {
        let mut binds = self.binds_ro.clone();
        if let Some(net) = &self.net {
            binds.extend(net.binds_for(network));
        }
        binds
    }

    /// Records a start that did not happen and releases what its run took.
    async fn fail(&self, rec: &mut WeaverRecord, reason: String) -> Result<(), ApiError> {
        tracing::warn!(weaver = %rec.info.id, name = %rec.info.name, %reason, "weaver failed to start");
        self.end_run(rec).await;
        rec.info.state = WeaverState::Failed;
        rec.info.pid = None;
        rec.info.reason = Some(reason.clone());
        self.with_store(|s| s.update(rec))?;
        Err(ApiError::new(
            ErrorCode::Internal,
            format!("weaver {} ({}) failed to start: {reason}", rec.info.name, rec.info.id),
        ))
    }

    /// Releases what the weaver's live run holds, if it has one and it is `rec.run`: its
    /// hooks' `after_stop`, in reverse order of acquisition. The caller holds the lock.
    pub(super) async fn end_run(&self, rec: &WeaverRecord) {
        let id = &rec.info.id;
        let run = {
            let mut runs = lock(&self.runs);
            match runs.get(id) {
                Some(live) if rec.run.is_none_or(|r| r == *live) => runs.remove(id),
                _ => None,
            }
        };
        let Some(run) = run else { return };
        for h in self.hooks.iter().rev() {
            h.after_stop(id, run, rec).await;
        }
    }

    /// Waits for the run to end, then records how and applies the restart policy.
    fn watch(self: &Arc<Self>, id: WeaverId, handle: RunHandle) {
        let this = self.clone();
        tokio::spawn(async move {
            let observed = this.backend.wait(&id, &handle).await;
            this.run_ended(id, handle, observed).await;
        });
    }

    pub(super) async fn run_ended(self: &Arc<Self>, id: WeaverId, handle: RunHandle, observed: Observed) {
        let guard = self.weaver_lock(&id);
        let _g = guard.lock().await;
        let Ok(Some(mut rec)) = self.with_store(|s| s.get(&id)) else {
            return;
        };
        // The handle names the run: a report about any other run (one a stop already ended,
        // one a newer run replaced) changes nothing.
        if rec.handle.as_ref() != Some(&handle) {
            return;
        }
        let (code, lost) = match observed {
            Observed::Exited { code } => (Some(code), None),
            Observed::Lost { reason } => (None, Some(reason)),
            Observed::Running { .. } => return,
        };
        self.end_run(&rec).await;
        rec.info.pid = None;
        rec.info.exit_code = code;
        // Stopped (or failed) by loomd itself: that decision stands, whatever the exit.
        if !rec.info.state.is_active() {
            let _ = self.with_store(|s| s.update(&rec));
            return;
        }
        rec.info.state = if lost.is_some() { WeaverState::Failed } else { WeaverState::Exited };
        rec.info.reason = lost.clone().or_else(|| code.map(|c| format!("exited with code {c}")));
        let now = now_secs();
        let ran = now.saturating_sub(rec.info.started_at.unwrap_or(now));
        let decision = rec.tracker.on_exit(rec.info.spec.restart, code.unwrap_or(-1), ran, now, rand::random::<f64>());
        match decision {
            Decision::Stay => {}
            Decision::GiveUp { reason } => {
                rec.info.state = WeaverState::Failed;
                rec.info.reason = Some(reason);
            }
            Decision::Restart { after_ms } => {
                rec.info.reason = Some(format!(
                    "{}; restarting in {:.1}s",
                    rec.info.reason.unwrap_or_default(),
                    after_ms as f64 / 1000.0
                ));
                let this = self.clone();
                let id = id.clone();
                lock(&self.pending_restarts).insert(id.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after_ms)).await;
                    this.restart_after_backoff(id, handle).await;
                });
            }
        }
        tracing::info!(weaver = %id, state = %rec.info.state, exit_code = ?code, "weaver run ended");
        let _ = self.with_store(|s| s.update(&rec));
    }

    async fn restart_after_backoff(self: &Arc<Self>, id: WeaverId, previous: RunHandle) {
        let guard = self.weaver_lock(&id);
        let _g = guard.lock().await;
        if !lock(&self.pending_restarts).remove(&id) {
            return; // Stopped or removed while waiting.
        }
        let Ok(Some(mut rec)) = self.with_store(|s| s.get(&id)) else {
            return;
        };
        // Stopped, removed or started by hand in the meantime: the operator's word wins.
        if rec.handle.as_ref() != Some(&previous)
            || rec.info.state.is_active()
            || rec.info.state == WeaverState::Stopped
        {
            return;
        }
        rec.info.restarts += 1;
        let _ = self.launch(&mut rec).await;
    }

    pub(super) async fn stop(self: &Arc<Self>, id: &WeaverId, reason: String) -> Result<WeaverInfo, ApiError> {
        let guard = self.weaver_lock(id);
        let _g = guard.lock().await;
        let Some(mut rec) = self.with_store(|s| s.get(id))? else {
            return Err(ApiError::new(ErrorCode::NotFound, format!("weaver {id} was removed")));
        };
        self.stop_locked(&mut rec, reason).await?;
        Ok(rec.info)
    }

    /// Stops the weaver's run (or its pending restart) and releases what the run held; the
    /// caller holds the weaver's lock. Nothing to stop is not an error.
    pub(super) async fn stop_locked(&self, rec: &mut WeaverRecord, reason: String) -> Result<(), ApiError> {
        let id = rec.info.id.clone();
        let was_pending = lock(&self.pending_restarts).remove(&id);
        if !rec.info.state.is_active() && !was_pending {
            return Ok(());
        }
        rec.info.state = WeaverState::Stopped;
        rec.info.reason = Some(reason);
        self.with_store(|s| s.update(rec))?;
        if let Some(handle) = &rec.handle {
            if let Err(e) = self.backend.stop(&id, handle, STOP_GRACE).await {
                tracing::error!(weaver = %id, error = %crate::error_chain(&e), "stopping failed");
            }
            if let Observed::Exited { code } = self.backend.observe(&id, handle).await {
                rec.info.exit_code = Some(code);
            }
        }
        self.end_run(rec).await;
        rec.info.pid = None;
        self.with_store(|s| s.update(rec))?;
        Ok(())
    }

    /// Stops a weaver and marks it `failed` with `reason`, unless it was not running.
    pub(super) async fn stop_failed(self: &Arc<Self>, id: &WeaverId, reason: String) {
        let guard = self.weaver_lock(id);
        let _g = guard.lock().await;
        let Ok(Some(mut rec)) = self.with_store(|s| s.get(id)) else { return };
        if rec.info.state != WeaverState::Running {
            return;
        }
        if self.stop_locked(&mut rec, reason).await.is_ok() {
            rec.info.state = WeaverState::Failed;
            let _ = self.with_store(|s| s.update(&rec));
        }
    }

    pub(super) async fn start(self: &Arc<Self>, id: &WeaverId) -> Result<WeaverInfo, ApiError> {
        let guard = self.weaver_lock(id);
        let _g = guard.lock().await;
        let Some(mut rec) = self.with_store(|s| s.get(id))? else {
            return Err(ApiError::new(ErrorCode::NotFound, format!("weaver {id} was removed")));
        };
        if rec.info.state.is_active() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("weaver {} is already {}", rec.info.name, rec.info.state),
            ));
        }
        if let Some(exp) = rec.info.expires_at
            && exp <= now_secs()
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("weaver {} outlived its ttl: create a new one", rec.info.name),
            ));
        }
        // A start by hand is a fresh chance: the operator has looked at the failures.
        rec.tracker = RestartTracker::default();
        rec.info.state = WeaverState::Creating;
        self.with_store(|s| s.update(&rec))?;
        self.launch(&mut rec).await?;
        Ok(rec.info)
    }

    /// Stops (with `force`), cleans up and forgets a weaver, all under one hold of its lock:
    /// a start cannot slip in between the stop and the cleanup.
    pub(super) async fn remove(self: &Arc<Self>, id: &WeaverId, force: bool) -> Result<WeaverId, ApiError> {
        let guard = self.weaver_lock(id);
        let _g = guard.lock().await;
        let Some(mut rec) = self.with_store(|s| s.get(id))? else {
            return Err(ApiError::new(ErrorCode::NotFound, format!("weaver {id} was removed")));
        };
        if rec.info.state.is_active() {
            if !force {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("weaver {id} is running: stop it first, or remove it with --force"),
                ));
            }
            self.stop_locked(&mut rec, "removed".into()).await?;
        }
        lock(&self.pending_restarts).remove(id);
        self.end_run(&rec).await;
        if let Err(e) = self.backend.cleanup(id).await {
            tracing::warn!(weaver = %id, error = %crate::error_chain(&e), "cleanup left something behind");
        }
        for h in &self.hooks {
            h.on_remove(id, rec.run).await;
        }
        let dir = self.dir_of(id);
        tokio::task::spawn_blocking(move || rootfs::remove(&dir))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        self.with_store(|s| s.delete(id))?;
        lock(&self.locks).remove(id);
        lock(&self.disk_watch.next).remove(id);
        Ok(id.clone())
    }

    /// After a restart of loomd: finds every weaver that was running, re-attaches to the ones
    /// still running, and records how the others ended while loomd was away.
    pub async fn adopt(self: &Arc<Self>) -> Result<(usize, usize), StoreError> {
        let (mut adopted, mut ended) = (0, 0);
        for rec in self.with_store(|s| s.list())? {
            if !rec.info.state.is_active() {
                continue;
            }
            let id = rec.info.id.clone();
            let guard = self.weaver_lock(&id);
            let g = guard.lock().await;
            let Some(handle) = rec.handle.clone() else {
                let mut rec = rec;
                rec.info.state = WeaverState::Failed;
                rec.info.reason = Some("loomd stopped while creating it: `loom weaver start` it again".into());
                self.with_store(|s| s.update(&rec))?;
                ended += 1;
                continue;
            };
            let run = handle.run();
            match self.backend.observe(&id, &handle).await {
                Observed::Running { leader_pid } => {
                    let mut rec = rec;
                    if leader_pid.is_some() {
                        rec.info.pid = leader_pid;
                    }
                    rec.info.state = WeaverState::Running;
                    rec.run = Some(run);
                    self.with_store(|s| s.update(&rec))?;
                    lock(&self.runs).insert(id.clone(), run);
                    let mut refused = None;
                    for h in &self.hooks {
                        if let Err(why) = h.on_adopt(&id, run, &rec).await {
                            refused = Some(why);
                            break;
                        }
                    }
                    if let Some(why) = refused {
                        // What the run held cannot be put back (e.g. its egress policy): it
                        // must not go on without it.
                        tracing::error!(weaver = %id, %why, "stopping an adopted weaver");
                        let _ = self.backend.stop(&id, &handle, STOP_GRACE).await;
                        self.end_run(&rec).await;
                        rec.info.state = WeaverState::Failed;
                        rec.info.pid = None;
                        rec.info.reason = Some(format!("stopped after a loomd restart: {why}"));
                        self.with_store(|s| s.update(&rec))?;
                        ended += 1;
                        continue;
                    }
                    for h in &self.hooks {
                        h.after_start(&id, run, rec.info.pid.unwrap_or(0), self.backend.cgroup_id(&id)).await;
                    }
                    self.watch(id, handle);
                    adopted += 1;
                }
                done => {
                    drop(g);
                    self.run_ended(id, handle, done).await;
                    ended += 1;
                }
            }
        }
        Ok((adopted, ended))
    }

    /// Stops weavers whose ttl has passed. Called periodically.
    pub async fn expire(self: &Arc<Self>) {
        let now = now_secs();
        let due: Vec<WeaverRecord> = self
            .with_store(|s| s.list())
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.info.state.is_active() && r.info.expires_at.is_some_and(|e| e <= now))
            .collect();
        for rec in due {
            let ttl = rec.info.spec.ttl.map(|t| t.to_string()).unwrap_or_default();
            tracing::info!(weaver = %rec.info.id, %ttl, "ttl expired");
            let _ = self.stop(&rec.info.id, format!("its ttl of {ttl} expired")).await;
        }
    }
}

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
