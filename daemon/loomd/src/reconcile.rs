//! Declared weavers made real: the config's `[weavers.NAME]` at start-up and on SIGHUP, and
//! `loom apply`/`loom down` files. The plan is `loom_core::declare::plan`'s; this applies it,
//! one weaver at a time through the same create, stop, start and remove every client uses.
//! Update = stop, replace the spec, start (a changed repo or branch recreates the weaver: its
//! workspace was cloned from the old one).

use std::path::Path;
use std::sync::Arc;

use loom_core::access::{Caller, Role, may_touch};
use loom_core::api::{ApplyRequest, ApplyResult, ErrorCode};
use loom_core::declare::{Conflict, DeclaredWeaver, Existing, Origin, declared_weavers, plan};
use loom_core::restart::RestartTracker;
use loom_core::weaver::WeaverState;

use super::{ApiError, Daemon, now_secs};

/// One reconcile at a time: two applies of one source racing would both plan a create.
static RECONCILING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The config's declared weavers, reading each `prompt_file` as loomd (the admin wrote the
/// config; its prompt files are the admin's). Errors name the weaver and the file.
pub fn declared_in_config(config: &loom_core::config::Config) -> Result<Vec<DeclaredWeaver>, String> {
    declared_weavers(&config.weavers, &config.weaver, read_prompt).map_err(|e| e.to_string())
}

fn read_prompt(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    // One byte past the cap, so an oversized file is refused by the validation, not cut.
    f.take(loom_core::declare::MAX_PROMPT_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{e} (a prompt file is UTF-8 text)"))?;
    Ok(text)
}

impl Daemon {
    /// Makes the weavers declared in the config what `declared` says (the config already
    /// swapped in). Owned by root, like everything the admin's config does.
    pub async fn reconcile_config(self: &Arc<Self>, declared: Vec<DeclaredWeaver>) -> ApplyResult {
        let started = std::time::Instant::now();
        let root = Caller { uid: 0, pid: std::process::id() as i32, gids: vec![] };
        let result = self.reconcile(&root, Role::Admin, Origin::Config, declared, false).await;
        let result = result.unwrap_or_else(|e| ApplyResult {
            source: "config".into(),
            errors: vec![e.message],
            ..Default::default()
        });
        let p = &result.plan;
        for c in &p.conflicts {
            tracing::warn!(weaver = %c.name, held_by = %c.held_by, "a declared weaver's name is taken by a weaver the config did not declare: left alone; rename one of them");
        }
        for e in &result.errors {
            tracing::error!(error = %e, "a declared weaver could not be reconciled");
        }
        tracing::info!(
            create = p.create.len(),
            update = p.update.len(),
            remove = p.remove.len(),
            unchanged = p.unchanged.len(),
            conflicts = p.conflicts.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "declared weavers reconciled"
        );
        result
    }

    /// `loom apply` / `loom down`: the caller's file, under origin `apply:SOURCE`.
    pub(super) async fn apply(
        self: &Arc<Self>,
        caller: &Caller,
        role: Role,
        req: ApplyRequest,
    ) -> Result<ApplyResult, ApiError> {
        let bad = |m: String| ApiError::new(ErrorCode::BadRequest, m);
        let origin = Origin::apply(&req.source).map_err(|e| bad(e.to_string()))?;
        if req.down && !req.weavers.is_empty() {
            return Err(bad("down removes every weaver of the source: send no weavers with it".into()));
        }
        if let Some(name) = req.weavers.iter().find(|(_, d)| d.prompt_file.is_some()).map(|(n, _)| n) {
            return Err(bad(format!(
                "[weavers.{name}]: prompt_file reached loomd, which never reads a file for a client: \
                 `loom apply` sends the file's text as prompt (update the CLI)"
            )));
        }
        let declared = declared_weavers(&req.weavers, &self.config().weaver, |_| Err(String::new()))
            .map_err(|e| bad(e.to_string()))?;
        // `http` runs this on its own task: a client that gives up must not cut a plan in half.
        self.reconcile(caller, role, origin, declared, req.dry_run).await
    }

    async fn reconcile(
        self: &Arc<Self>,
        caller: &Caller,
        role: Role,
        origin: Origin,
        declared: Vec<DeclaredWeaver>,
        dry_run: bool,
    ) -> Result<ApplyResult, ApiError> {
        let _one = RECONCILING.lock().await;
        let all = self.with_store(|s| s.list())?;
        // Weavers the caller may not touch are not its to plan for: a declared name one of them
        // holds is a conflict, like any name held by another origin.
        let (mine, others): (Vec<_>, Vec<_>) = all.into_iter().partition(|r| may_touch(role, caller, r.info.owner_uid));
        let existing: Vec<Existing> = mine
            .iter()
            .map(|r| Existing {
                name: r.info.name.clone(),
                origin: Origin::from_stored(r.info.origin.as_deref()),
                hash: r.declared_hash.clone(),
            })
            .collect();
        let mut p = plan(&origin, declared.iter().map(|d| (d.name.as_str(), d.hash.as_str())), &existing);
        let hidden: std::collections::BTreeSet<&str> = others.iter().map(|r| r.info.name.as_str()).collect();
        p.create.retain(|name| {
            let taken = hidden.contains(name.as_str());
            if taken {
                p.conflicts.push(Conflict { name: name.clone(), held_by: "a weaver of another user".into() });
            }
            !taken
        });
        p.conflicts.sort_by(|a, b| a.name.cmp(&b.name));
        let mut result = ApplyResult { source: origin.to_string(), plan: p, dry_run, errors: vec![] };
        if dry_run {
            return Ok(result);
        }
        let by_name = |name: &str| declared.iter().find(|d| d.name == name);
        let rec_of = |name: &str| mine.iter().find(|r| r.info.name == name);
        for name in result.plan.remove.clone() {
            if let Some(rec) = rec_of(&name)
                && let Err(e) = self.remove(&rec.info.id, true).await
            {
                result.errors.push(format!("{name}: removing: {}", e.message));
            }
        }
        for name in result.plan.update.clone() {
            let (Some(d), Some(rec)) = (by_name(&name), rec_of(&name)) else { continue };
            if let Err(e) = self.update_declared(caller, role, &origin, d, rec.info.id.clone()).await {
                result.errors.push(format!("{name}: updating: {}", e.message));
            }
        }
        for name in result.plan.create.clone() {
            let Some(d) = by_name(&name) else { continue };
            if let Err(e) = self.create(caller, role, d.request.clone(), Some(origin.clone())).await {
                result.errors.push(format!("{name}: creating: {}", e.message));
            }
        }
        Ok(result)
    }

    /// Stop, replace the spec, start, under the weaver's lock. A new repo or branch needs a new
    /// workspace, so that weaver is removed and created again.
    async fn update_declared(
        self: &Arc<Self>,
        caller: &Caller,
        role: Role,
        origin: &Origin,
        d: &DeclaredWeaver,
        id: loom_core::weaver::WeaverId,
    ) -> Result<(), ApiError> {
        let guard = self.weaver_lock(&id);
        let g = guard.lock().await;
        let mut rec = self
            .with_store(|s| s.get(&id))?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the weaver was removed meanwhile"))?;
        super::api::may_have(role, &d.spec, &self.config().weaver)?;
        if rec.info.spec.repo != d.spec.repo || rec.info.spec.branch != d.spec.branch {
            drop(g);
            self.remove(&id, true).await?;
            return self.create(caller, role, d.request.clone(), Some(origin.clone())).await.map(|_| ());
        }
        self.stop_locked(&mut rec, "its declared spec changed".into()).await?;
        let now = now_secs();
        rec.info.spec = d.spec.clone();
        rec.declared_hash = Some(d.hash.clone());
        rec.info.expires_at = d.spec.ttl.map(|t| now + t.0);
        rec.info.restarts = 0;
        rec.tracker = RestartTracker::default();
        rec.info.state = WeaverState::Creating;
        self.with_store(|s| s.update(&rec))?;
        tracing::info!(weaver = %id, name = %rec.info.name, "declared weaver updated; starting it with its new spec");
        self.launch(&mut rec).await
    }
}
