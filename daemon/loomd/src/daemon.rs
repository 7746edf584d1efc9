//! The daemon: what it is made of, the hooks subsystems meet weavers through, and lookups.
//! Its jobs are in their own files: the API router (`daemon_api`: [`Request`] → handlers; the
//! HTTP layer, [`crate::http`], is only an adapter over [`Daemon::handle`]), the supervisor
//! (`daemon_supervisor`: one lock per weaver, runs, restarts, adoption, expiry), the agent
//! loop's glue (`daemon_agent`, a [`WeaverHooks`]) and loom's files in a root (`daemon_files`).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loom_core::access::{AccessGroups, Caller, Role, may_touch};
use loom_core::api::{ErrorCode, ExecRequest, Status};
use loom_core::config::Config;
use loom_core::weaver::{RunId, WeaverId, WeaverState};

use crate::backend::{Backend, ExecPlan};
use crate::store::{Lookup, Store, StoreError, WeaverRecord};

#[path = "daemon_agent.rs"]
mod agent;
#[path = "daemon_api.rs"]
mod api;
#[path = "daemon_files.rs"]
mod files;
#[path = "reconcile.rs"]
mod reconcile;
#[path = "daemon_supervisor.rs"]
mod supervisor;

pub use api::{EgressChange, Request, Response};
pub use reconcile::declared_in_config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into() }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(_) => ApiError::new(ErrorCode::Conflict, e.to_string()),
            other => {
                tracing::error!(error = %crate::error_chain(&other), "store failure");
                ApiError::new(ErrorCode::Internal, format!("{}; see loomd's log", other))
            }
        }
    }
}

/// What other subsystems (the agent loop, the proxy, audit) do when a weaver starts and
/// stops. Calls for one run carry its [`RunId`], in this order: `before_start`, `on_cgroup`
/// (when the backend knows the cgroup before the first process), `after_start` (only if the
/// start succeeded; also for a run adopted after a loomd restart, with no call before it),
/// and exactly one `after_stop`, also when the start failed. What a hook acquires for a run it
/// releases in that run's `after_stop`, so that nothing grows with the number of runs.
#[async_trait::async_trait]
pub trait WeaverHooks: Send + Sync + std::fmt::Debug {
    /// Extra environment for the run; an error refuses the start.
    async fn before_start(
        &self,
        _id: &WeaverId,
        _run: RunId,
        _rec: &WeaverRecord,
    ) -> Result<Vec<(String, String)>, String> {
        Ok(vec![])
    }
    /// The run's cgroup exists and its first process has not run yet.
    async fn on_cgroup(&self, _id: &WeaverId, _run: RunId, _cgroup_id: u64) {}
    async fn after_start(&self, _id: &WeaverId, _run: RunId, _leader_pid: i32, _cgroup_id: Option<u64>) {}
    /// The run outlived a loomd restart and is adopted: take back what it held (called right
    /// before its `after_start`, with no `before_start`). An error stops the run.
    async fn on_adopt(&self, _id: &WeaverId, _run: RunId, _rec: &WeaverRecord) -> Result<(), String> {
        Ok(())
    }
    /// The run ended (or never started): release what it holds.
    async fn after_stop(&self, _id: &WeaverId, _run: RunId, _rec: &WeaverRecord) {}
    /// The weaver is removed; `last_run` is its latest run, already stopped.
    async fn on_remove(&self, _id: &WeaverId, _last_run: Option<RunId>) {}
    /// A section for `loom status`.
    fn status(&self) -> Option<(String, serde_json::Value)> {
        None
    }
}

/// What a daemon is made of; `run` assembles it, tests assemble their own.
#[allow(missing_debug_implementations)]
pub struct DaemonParts {
    pub config: Config,
    pub groups: AccessGroups,
    pub store: Store,
    pub backend: Arc<dyn Backend>,
    pub hooks: Vec<Arc<dyn WeaverHooks>>,
    /// Extra read-only binds into every weaver (host path, path inside).
    pub binds_ro: Vec<(PathBuf, String)>,
    pub secrets: Arc<crate::secrets::Secrets>,
    pub llm: Option<Arc<crate::llm::Llm>>,
    pub auditor: Option<Arc<crate::auditing::Auditor>>,
    pub threads: Option<Arc<crate::threads::Threads>>,
    /// Weaver networks: without it (unit tests) nspawn makes a private namespace itself.
    pub net: Option<Arc<crate::net::WeaverNet>>,
    /// The operator tunnel, when `[wireguard] enable = true`.
    pub wireguard: Option<Arc<loom_wireguard::Tunnel>>,
    pub warnings: Vec<String>,
}

/// Where the agent binary and its files are inside a weaver.
pub const AGENT_PATH: &str = "/.loom/bin/loom-agent";
const AGENT_PROMPT: &str = "/.loom/PROMPT.md";
const AGENT_STATE: &str = "/.loom/agent";
const AGENT_CONTEXT: &str = "/.loom/CONTEXT.md";
/// How much of earlier threads a loop gets as context.
const CONTEXT_BYTES: usize = 64 * 1024;

pub struct Daemon {
    config: RwLock<Config>,
    groups: RwLock<AccessGroups>,
    store: Mutex<Store>,
    backend: Arc<dyn Backend>,
    hooks: Vec<Arc<dyn WeaverHooks>>,
    weavers_dir: PathBuf,
    started: Instant,
    /// Serialises lifecycle operations on one weaver; different weavers never wait on each other.
    locks: Mutex<HashMap<WeaverId, Arc<tokio::sync::Mutex<()>>>>,
    binds_ro: Vec<(PathBuf, String)>,
    secrets: Arc<crate::secrets::Secrets>,
    llm: Option<Arc<crate::llm::Llm>>,
    auditor: Option<Arc<crate::auditing::Auditor>>,
    threads: Option<Arc<crate::threads::Threads>>,
    net: Option<Arc<crate::net::WeaverNet>>,
    wireguard: Option<Arc<loom_wireguard::Tunnel>>,
    /// What runs degraded (a subsystem that could not start), for `loom status`.
    warnings: Vec<String>,
    /// Each weaver's live run: started (or starting) and not yet released by `end_run`.
    runs: Mutex<HashMap<WeaverId, RunId>>,
    /// Weavers waiting out a restart backoff; a stop takes them out of here.
    pending_restarts: Mutex<std::collections::HashSet<WeaverId>>,
    disk_watch: files::DiskWatch,
    /// Local directories the CLI uploaded, waiting for their create.
    uploads: crate::uploads::Uploads,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("backend", &self.backend.kind()).finish_non_exhaustive()
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How long a stop waits for the weaver to end by itself before killing it.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Daemon {
    pub fn new(parts: DaemonParts) -> Arc<Daemon> {
        let DaemonParts {
            config,
            groups,
            store,
            backend,
            mut hooks,
            binds_ro,
            secrets,
            llm,
            auditor,
            threads,
            net,
            wireguard,
            warnings,
        } = parts;
        let weavers_dir = config.state_dir.join("weavers");
        let uploads = crate::uploads::Uploads::new(config.state_dir.join("uploads"));
        let installed = binds_ro.iter().any(|(_, inside)| inside == AGENT_PATH);
        // The network comes before the proxy, which binds its listener in the namespace.
        if let Some(net) = &net {
            hooks.insert(0, net.clone());
        }
        hooks.insert(0, Arc::new(agent::AgentLoop::new(weavers_dir.clone(), threads.clone(), installed)));
        Arc::new(Daemon {
            config: RwLock::new(config),
            groups: RwLock::new(groups),
            store: Mutex::new(store),
            backend,
            hooks,
            weavers_dir,
            started: Instant::now(),
            locks: Mutex::new(HashMap::new()),
            binds_ro,
            runs: Mutex::new(HashMap::new()),
            pending_restarts: Mutex::new(Default::default()),
            disk_watch: Default::default(),
            secrets,
            llm,
            auditor,
            threads,
            net,
            wireguard,
            warnings,
            uploads,
        })
    }

    pub fn uploads(&self) -> &crate::uploads::Uploads {
        &self.uploads
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn config(&self) -> Config {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps in a reloaded config; what needs a restart (socket, state dir, backend) is kept
    /// and named in the returned warnings.
    pub fn reload(&self, new: Config, groups: AccessGroups) -> Vec<String> {
        let mut cfg = self.config.write().unwrap_or_else(|e| e.into_inner());
        let mut warnings = vec![];
        if new.socket != cfg.socket || new.state_dir != cfg.state_dir || new.backend != cfg.backend {
            warnings
                .push("socket, state_dir and backend changes take effect only after a restart of loomd".to_string());
        }
        let keep = (cfg.socket.clone(), cfg.state_dir.clone(), cfg.backend);
        *cfg = new;
        (cfg.socket, cfg.state_dir, cfg.backend) = keep;
        *self.groups.write().unwrap_or_else(|e| e.into_inner()) = groups;
        self.secrets.reload(&cfg);
        warnings
    }

    pub fn role_of(&self, caller: &Caller) -> Option<Role> {
        self.groups.read().unwrap_or_else(|e| e.into_inner()).role_of(caller)
    }

    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut lock(&self.store))
    }

    fn weaver_lock(&self, id: &WeaverId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(id.clone()).or_default().clone()
    }

    fn dir_of(&self, id: &WeaverId) -> PathBuf {
        self.weavers_dir.join(id.as_str())
    }

    /// Refuses callers with no role, with a line in loomd's log an operator can audit.
    pub fn authorize<T: std::fmt::Debug>(&self, caller: &Caller, what: &T) -> Result<Role, ApiError> {
        self.role_of(caller).ok_or_else(|| {
            let what = format!("{what:?}");
            tracing::warn!(target: "loom::access", uid = caller.uid, pid = caller.pid, request = %what.chars().take(80).collect::<String>(), "refused a client outside the admin and operator groups");
            ApiError::new(
                ErrorCode::Forbidden,
                format!("uid {} may not use loomd: ask an admin to add you to the operator group", caller.uid),
            )
        })
    }

    /// Finds a weaver the caller may see; one it may not see is reported as not found.
    pub fn lookup(&self, caller: &Caller, role: Role, key: &str) -> Result<WeaverRecord, ApiError> {
        let not_found = || {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no weaver {key:?}: `loom weaver ps` lists the ones you can see"),
            )
        };
        if key.is_empty() || key.len() > 64 {
            return Err(not_found());
        }
        match self.with_store(|s| s.find(key))? {
            Lookup::One(rec) if may_touch(role, caller, rec.info.owner_uid) => Ok(*rec),
            Lookup::One(_) | Lookup::None => Err(not_found()),
            Lookup::Ambiguous(n) => {
                Err(ApiError::new(ErrorCode::BadRequest, format!("{key:?} matches {n} weavers: give more of the id")))
            }
        }
    }

    pub fn status(&self) -> Status {
        let mut weavers = BTreeMap::new();
        for rec in self.with_store(|s| s.list()).unwrap_or_default() {
            *weavers.entry(rec.info.state.as_str().to_string()).or_insert(0) += 1;
        }
        let cfg = self.config();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            backend: self.backend.kind().as_str().into(),
            state_dir: cfg.state_dir.display().to_string(),
            weavers,
            uptime_secs: self.started.elapsed().as_secs(),
            warnings: self
                .warnings
                .iter()
                .cloned()
                .chain(self.secrets.warning())
                .chain(self.net.as_ref().and_then(|n| n.warning()))
                .collect(),
            sections: self.hooks.iter().filter_map(|h| h.status()).collect(),
        }
    }

    /// The log file of a weaver the caller may see, and whether it still runs.
    pub fn log_of(&self, caller: &Caller, key: &str) -> Result<(WeaverId, PathBuf), ApiError> {
        let role = self.authorize(caller, &"logs")?;
        let rec = self.lookup(caller, role, key)?;
        Ok((rec.info.id.clone(), self.dir_of(&rec.info.id).join("log")))
    }

    pub fn is_active(&self, id: &WeaverId) -> bool {
        self.with_store(|s| s.get(id)).ok().flatten().is_some_and(|r| r.info.state.is_active())
    }

    /// How to run a command inside a running weaver: the plan, the weaver's first process (to
    /// enter) and its sandbox profile (what `--nested`/`--ssh` add to the sandbox the command gets).
    pub fn exec_plan(
        &self,
        caller: &Caller,
        key: &str,
        req: &ExecRequest,
    ) -> Result<(ExecPlan, i32, crate::sandbox::Profile), ApiError> {
        let role = self.authorize(caller, &"exec")?;
        let rec = self.lookup(caller, role, key)?;
        if req.command.is_empty() || req.command[0].is_empty() || req.command.iter().any(|a| a.contains('\0')) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "exec needs a command: `loom weaver exec ID -- CMD ARGS...`",
            ));
        }
        let (WeaverState::Running, Some(pid)) = (rec.info.state, rec.info.pid) else {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("weaver {} is {}, not running: `loom weaver start` it first", rec.info.name, rec.info.state),
            ));
        };
        tracing::info!(weaver = %rec.info.id, uid = caller.uid, command = %req.command[0], "exec");
        Ok((self.backend.exec_plan(&rec.info.id, &req.command), pid, crate::sandbox::Profile::of(&rec.info.spec)))
    }
}

#[cfg(test)]
#[path = "daemon_tests.rs"]
mod tests;
