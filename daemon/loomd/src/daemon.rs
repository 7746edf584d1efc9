//! The daemon's whole API as one enum, and the supervisor that moves weavers through their
//! states. The HTTP layer ([`crate::http`]) is only an adapter over [`Daemon::handle`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loom_core::access::{AccessGroups, Caller, Role, may_touch};
use loom_core::api::{CreateWeaver, ErrorCode, ExecRequest, Status, WeaverInfo};
use loom_core::config::Config;
use loom_core::restart::RestartTracker;
use loom_core::weaver::{Image, NetworkMode, RunId, WeaverId, WeaverState, resolve_spec};

use crate::backend::{Backend, ExecPlan};
use crate::rootfs;
use crate::store::{Lookup, Store, StoreError, WeaverRecord};

#[path = "daemon_agent.rs"]
mod agent;
#[path = "daemon_files.rs"]
mod files;
#[path = "daemon_supervisor.rs"]
mod supervisor;

/// Every request loomd serves over its socket, apart from the two streams (logs, exec).
#[derive(Debug)]
pub enum Request {
    Status,
    CreateWeaver(Box<CreateWeaver>),
    ListWeavers,
    InspectWeaver(String),
    StopWeaver(String),
    StartWeaver(String),
    RemoveWeaver {
        key: String,
        force: bool,
    },
    /// Which configured secrets decrypt; admins only, and never their values.
    SecretsCheck,
    /// Token and cost totals per weaver (operators: their own).
    Usage {
        weaver: Option<String>,
    },
    /// A weaver's proxy limits; changing them is for admins.
    Limits {
        key: String,
        change: Option<crate::llm::LimitsChange>,
    },
    ThreadList {
        weaver: Option<String>,
    },
    ThreadShow {
        id: String,
    },
    ThreadSearch {
        query: String,
        weaver: Option<String>,
        since: Option<String>,
        limit: Option<usize>,
    },
    /// Audit events from the index (operators: of their own weavers).
    Audit {
        weaver: Option<String>,
        kind: Option<String>,
        since: Option<String>,
        after_id: Option<i64>,
        limit: Option<u32>,
    },
}

#[derive(Debug)]
pub enum Response {
    Status(Box<Status>),
    Weaver(Box<WeaverInfo>),
    Weavers(Vec<WeaverInfo>),
    Removed { id: WeaverId },
    Secrets(Box<crate::secrets::SecretsReport>),
    Usage(Vec<crate::llm::UsageSummary>),
    Audit(Vec<crate::auditing::AuditRow>),
    Threads(Vec<loom_threads::ThreadSummary>),
    Limits(loom_proxy::WeaverLimits),
    Thread { detail: Box<loom_threads::ThreadDetail>, markdown: String },
    ThreadHits(Vec<loom_threads::SearchHit>),
}

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
            warnings,
        } = parts;
        let weavers_dir = config.state_dir.join("weavers");
        let uploads = crate::uploads::Uploads::new(config.state_dir.join("uploads"));
        let installed = binds_ro.iter().any(|(_, inside)| inside == AGENT_PATH);
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

    pub async fn handle(self: &Arc<Self>, caller: &Caller, req: Request) -> Result<Response, ApiError> {
        let role = self.authorize(caller, &req)?;
        match req {
            Request::Status => Ok(Response::Status(Box::new(self.status()))),
            Request::CreateWeaver(req) => self.create(caller, role, *req).await.map(|i| Response::Weaver(Box::new(i))),
            Request::ListWeavers => {
                let all = self.with_store(|s| s.list())?;
                Ok(Response::Weavers(
                    all.into_iter()
                        .filter(|r| may_touch(role, caller, r.info.owner_uid))
                        .map(|r| self.with_agent_status(r.info))
                        .collect(),
                ))
            }
            Request::InspectWeaver(key) => {
                Ok(Response::Weaver(Box::new(self.with_agent_status(self.lookup(caller, role, &key)?.info))))
            }
            Request::Limits { key, change } => {
                let rec = self.lookup(caller, role, &key)?;
                if change.is_some() && role != Role::Admin {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        "only root and the admin group may change a weaver's limits",
                    ));
                }
                let llm = self
                    .llm
                    .as_ref()
                    .ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "the LLM proxy is not running"))?;
                let limits = llm.limits(&rec.info.id, change).map_err(|e| ApiError::new(ErrorCode::BadRequest, e))?;
                Ok(Response::Limits(limits))
            }
            Request::ThreadList { weaver } => {
                let threads = self.threads()?;
                let weaver =
                    weaver.map(|k| self.lookup(caller, role, &k).map(|r| r.info.id.to_string())).transpose()?;
                let visible = self.visible_weavers(caller, role)?;
                let list = threads
                    .with(|c| loom_threads::list_threads(c, weaver.as_deref(), 1000))
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                Ok(Response::Threads(
                    list.into_iter().filter(|t| visible.as_ref().is_none_or(|v| v.contains(&t.weaver_id))).collect(),
                ))
            }
            Request::ThreadShow { id } => {
                let threads = self.threads()?;
                let not_found = || {
                    ApiError::new(
                        ErrorCode::NotFound,
                        format!("no thread {id:?}: `loom thread list` shows the ones you can see"),
                    )
                };
                let detail = threads.with(|c| loom_threads::get_thread(c, &id)).map_err(|e| match e {
                    loom_threads::ThreadsError::NotFound(_) | loom_threads::ThreadsError::Invalid(_) => not_found(),
                    other => ApiError::new(ErrorCode::Internal, other.to_string()),
                })?;
                if self.visible_weavers(caller, role)?.is_some_and(|v| !v.contains(&detail.summary.weaver_id)) {
                    return Err(not_found());
                }
                let markdown = loom_threads::render_markdown(&detail);
                Ok(Response::Thread { detail: Box::new(detail), markdown })
            }
            Request::ThreadSearch { query, weaver, since, limit } => {
                let threads = self.threads()?;
                let weaver =
                    weaver.map(|k| self.lookup(caller, role, &k).map(|r| r.info.id.to_string())).transpose()?;
                let since_ms = since
                    .map(|s| {
                        s.parse::<loom_core::units::Span>()
                            .map(|span| (now_secs().saturating_sub(span.0) * 1000) as i64)
                            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("--since: {e}")))
                    })
                    .transpose()?;
                let q = loom_threads::SearchQuery {
                    text: query,
                    weaver,
                    since_ms,
                    until_ms: None,
                    limit: limit.unwrap_or(20),
                };
                let hits = threads.with(|c| loom_threads::search(c, &q)).map_err(|e| match e {
                    loom_threads::ThreadsError::EmptyQuery(_) => ApiError::new(ErrorCode::BadRequest, e.to_string()),
                    other => ApiError::new(ErrorCode::Internal, other.to_string()),
                })?;
                let visible = self.visible_weavers(caller, role)?;
                Ok(Response::ThreadHits(
                    hits.into_iter().filter(|h| visible.as_ref().is_none_or(|v| v.contains(&h.weaver_id))).collect(),
                ))
            }
            Request::StopWeaver(key) => {
                let rec = self.lookup(caller, role, &key)?;
                self.stop(&rec.info.id, format!("stopped by uid {}", caller.uid))
                    .await
                    .map(|i| Response::Weaver(Box::new(i)))
            }
            Request::StartWeaver(key) => {
                let rec = self.lookup(caller, role, &key)?;
                self.start(&rec.info.id).await.map(|i| Response::Weaver(Box::new(i)))
            }
            Request::SecretsCheck => {
                if role != Role::Admin {
                    return Err(ApiError::new(ErrorCode::Forbidden, "only root and the admin group may check secrets"));
                }
                Ok(Response::Secrets(Box::new(self.secrets.check(&self.config()))))
            }
            Request::Audit { weaver, kind, since, after_id, limit } => {
                let Some(auditor) = &self.auditor else {
                    return Err(ApiError::new(
                        ErrorCode::Unavailable,
                        "audit is not running: see `loom status` for why",
                    ));
                };
                let weaver = match weaver {
                    Some(key) => Some(self.lookup(caller, role, &key)?.info.id.to_string()),
                    None if role == Role::Admin => None,
                    None => {
                        return Err(ApiError::new(
                            ErrorCode::BadRequest,
                            "operators see the audit of one weaver at a time: give --weaver ID",
                        ));
                    }
                };
                let rows = auditor
                    .query(weaver, kind.as_deref(), since.as_deref(), after_id, limit)
                    .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
                Ok(Response::Audit(rows))
            }
            Request::Usage { weaver } => {
                let Some(llm) = &self.llm else { return Ok(Response::Usage(vec![])) };
                let internal = |e: rusqlite::Error| ApiError::new(ErrorCode::Internal, format!("reading usage: {e}"));
                if let Some(key) = weaver {
                    let id = self.lookup(caller, role, &key)?.info.id.to_string();
                    return Ok(Response::Usage(llm.usage(Some(&id)).map_err(internal)?));
                }
                let all = llm.usage(None).map_err(internal)?;
                if role == Role::Admin {
                    // Admins also see the usage of weavers removed since.
                    return Ok(Response::Usage(all));
                }
                let mine: Vec<String> = self
                    .with_store(|s| s.list())?
                    .into_iter()
                    .filter(|r| may_touch(role, caller, r.info.owner_uid))
                    .map(|r| r.info.id.to_string())
                    .collect();
                Ok(Response::Usage(all.into_iter().filter(|u| mine.contains(&u.weaver)).collect()))
            }
            Request::RemoveWeaver { key, force } => {
                let rec = self.lookup(caller, role, &key)?;
                self.remove(&rec.info.id, force).await.map(|id| Response::Removed { id })
            }
        }
    }

    /// Earlier threads the caller may read, rendered as context for a new loop.
    async fn context_of(self: &Arc<Self>, caller: &Caller, ids: &[String]) -> Result<String, ApiError> {
        let mut out = String::new();
        for id in ids {
            let Response::Thread { detail, .. } =
                Box::pin(self.handle(caller, Request::ThreadShow { id: id.clone() })).await?
            else {
                continue;
            };
            out.push_str(&loom_threads::render_context(&detail, CONTEXT_BYTES / ids.len().max(1)));
            out.push('\n');
        }
        Ok(out)
    }

    fn threads(&self) -> Result<&Arc<crate::threads::Threads>, ApiError> {
        self.threads.as_ref().ok_or_else(|| ApiError::new(ErrorCode::Unavailable, "the thread store is not running"))
    }

    /// The weaver ids an operator may see; `None` for admins, who see everything (also the
    /// threads of weavers removed since).
    fn visible_weavers(&self, caller: &Caller, role: Role) -> Result<Option<Vec<String>>, ApiError> {
        if role == Role::Admin {
            return Ok(None);
        }
        Ok(Some(
            self.with_store(|s| s.list())?
                .into_iter()
                .filter(|r| may_touch(role, caller, r.info.owner_uid))
                .map(|r| r.info.id.to_string())
                .collect(),
        ))
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
            warnings: self.warnings.iter().cloned().chain(self.secrets.warning()).collect(),
            sections: self.hooks.iter().filter_map(|h| h.status()).collect(),
        }
    }

    async fn create(self: &Arc<Self>, caller: &Caller, role: Role, req: CreateWeaver) -> Result<WeaverInfo, ApiError> {
        let id = WeaverId::from_random(rand::random());
        let defaults = self.config().weaver;
        let upload_id = req.upload.clone();
        let spec = resolve_spec(req, &defaults, format!("w-{}", &id.as_str()[..8]))
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        if role != Role::Admin {
            if spec.network == NetworkMode::Host {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "--network host shares the host's network with the weaver: only root and the admin group may \
                     ask for it; use private (the default) or none",
                ));
            }
            if spec.nested && !defaults.nested {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    "--nested lets the weaver make user namespaces and mounts: only root and the admin group may \
                     ask for it unless `[weaver] nested = true`",
                ));
            }
        }
        if let Image::Dir(dir) = &spec.image {
            crate::image::check(dir, &defaults.image_roots, role == Role::Admin)
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        }
        if spec.command.is_empty() && spec.agent.is_none() {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "nothing to run: give a command after `--`, or --prompt FILE with --model PROVIDER/MODEL for the agent loop",
            ));
        }
        // Taken now, so that a second create with the same id fails; its file goes when this
        // create is done with it, whatever the outcome.
        let upload = upload_id
            .map(|u| self.uploads.take(&u, caller.uid))
            .transpose()
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        let now = now_secs();
        let mut rec = WeaverRecord {
            info: WeaverInfo {
                id: id.clone(),
                name: spec.name.clone(),
                state: WeaverState::Creating,
                exit_code: None,
                reason: None,
                owner_uid: caller.uid,
                backend: self.backend.kind().as_str().into(),
                created_at: now,
                started_at: None,
                expires_at: spec.ttl.map(|t| now + t.0),
                pid: None,
                restarts: 0,
                spec,
                agent_status: None,
            },
            handle: None,
            run: None,
            tracker: RestartTracker::default(),
        };
        let guard = self.weaver_lock(&id);
        let _g = guard.lock().await;
        self.with_store(|s| s.insert(&rec))?;
        let dir = self.dir_of(&id);
        let (repo, branch) = (rec.info.spec.repo.clone(), rec.info.spec.branch.clone());
        let context = match &rec.info.spec.agent {
            Some(a) if !a.context_threads.is_empty() => Some(self.context_of(caller, &a.context_threads).await?),
            _ => None,
        };
        let prepared = tokio::task::spawn_blocking(move || -> Result<(), rootfs::RootfsError> {
            let root = dir.join("root");
            rootfs::create_skeleton(&root)?;
            std::fs::create_dir_all(dir.join("run"))
                .map_err(|e| rootfs::RootfsError::Io { path: dir.join("run"), source: e })?;
            let source = match (&repo, &upload) {
                (Some(url), _) => Some(rootfs::RepoSource::Remote(url)),
                (None, Some(up)) => Some(rootfs::RepoSource::Upload(up)),
                (None, None) => None,
            };
            if let Some(source) = source {
                rootfs::populate_workspace(&root.join("workspace"), &source, branch.as_deref())?;
            }
            drop(upload);
            if let Some(context) = context {
                Daemon::write_context(&root, &context)?;
            }
            Ok(())
        })
        .await
        .unwrap_or_else(|e| Err(rootfs::RootfsError::Repo { repo: String::new(), detail: e.to_string() }));
        if let Err(e) = prepared {
            let e = crate::error_chain(&e);
            rec.info.state = WeaverState::Failed;
            rec.info.reason = Some(e.clone());
            self.with_store(|s| s.update(&rec))?;
            return Err(ApiError::new(ErrorCode::BadRequest, format!("weaver {} ({id}) failed: {e}", rec.info.name)));
        }
        self.launch(&mut rec).await?;
        Ok(rec.info)
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
    /// enter) and whether it nests containers (for the sandbox the command gets).
    pub fn exec_plan(&self, caller: &Caller, key: &str, req: &ExecRequest) -> Result<(ExecPlan, i32, bool), ApiError> {
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
        Ok((self.backend.exec_plan(&rec.info.id, &req.command), pid, rec.info.spec.nested))
    }
}

#[cfg(test)]
#[path = "daemon_tests.rs"]
mod tests;
