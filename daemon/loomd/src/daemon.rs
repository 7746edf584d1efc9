//! The daemon's whole API as one enum, and the supervisor that moves weavers through their
//! states. The HTTP layer ([`crate::http`]) is only an adapter over [`Daemon::handle`].

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use loom_core::access::{AccessGroups, Caller, Role, may_touch};
use loom_core::api::{CreateWeaver, ErrorCode, ExecRequest, Status, WeaverInfo};
use loom_core::config::Config;
use loom_core::restart::{Decision, RestartTracker};
use loom_core::weaver::{Image, NetworkMode, WeaverId, WeaverState, resolve_spec};

use crate::backend::{Backend, ExecPlan, Launch, Observed, RunHandle};
use crate::rootfs;
use crate::store::{Lookup, Store, StoreError, WeaverRecord};

#[path = "daemon_files.rs"]
mod files;

/// The loop's command line inside the weaver; a command given with it is the loop body.
fn agent_command(agent: &loom_core::weaver::AgentSpec, body: &[String]) -> Vec<String> {
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

/// What other subsystems (the proxy, audit) do when a weaver starts and stops.
#[async_trait::async_trait]
pub trait WeaverHooks: Send + Sync + std::fmt::Debug {
    /// Extra environment for the weaver's next run; an error refuses the start.
    async fn before_start(&self, _id: &WeaverId, _rec: &WeaverRecord) -> Result<Vec<(String, String)>, String> {
        Ok(vec![])
    }
    /// The weaver's cgroup exists and its first process has not run yet.
    async fn on_cgroup(&self, _id: &WeaverId, _cgroup_id: u64) {}
    async fn after_start(&self, _id: &WeaverId, _leader_pid: i32, _cgroup_id: Option<u64>) {}
    async fn after_stop(&self, _id: &WeaverId) {}
    async fn on_remove(&self, _id: &WeaverId) {}
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
/// The most of an agent's spool loomd reads when its run ends.
const MAX_SPOOL_BYTES: u64 = 64 << 20;
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
        let DaemonParts { config, groups, store, backend, hooks, binds_ro, secrets, llm, auditor, threads, warnings } =
            parts;
        let weavers_dir = config.state_dir.join("weavers");
        let uploads = crate::uploads::Uploads::new(config.state_dir.join("uploads"));
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

    /// Starts one run of a weaver whose lock the caller holds, and the watcher for its end.
    async fn launch(self: &Arc<Self>, rec: &mut WeaverRecord) -> Result<(), ApiError> {
        let id = rec.info.id.clone();
        let mut env = vec![];
        for h in &self.hooks {
            match h.before_start(&id, rec).await {
                Ok(more) => env.extend(more),
                Err(reason) => return self.fail(rec, reason),
            }
        }
        let mut spec = rec.info.spec.clone();
        if let Image::Dir(dir) = &spec.image
            && let Err(e) = crate::image::check(dir, &[], true)
        {
            return self.fail(rec, e.to_string());
        }
        if let Some(agent) = &spec.agent {
            if !self.binds_ro.iter().any(|(_, inside)| inside == AGENT_PATH) {
                return self.fail(
                    rec,
                    "the loom-agent binary is not installed next to loomd, so the agent loop cannot run".into(),
                );
            }
            spec.command = agent_command(agent, &spec.command);
            env.push(("LOOM_STATE_DIR".into(), AGENT_STATE.into()));
        }
        let vars: Vec<(&str, &str)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        let env_text = crate::backend::nspawn_args::env_file(&vars);
        if let Err(reason) = self.prepare_root(&spec, &id, env_text).await {
            return self.fail(rec, reason);
        }
        let launch = Launch { id: id.clone(), spec, dir: self.dir_of(&id), binds_ro: self.binds_ro.clone() };
        match self.backend.prepare(&launch).await {
            Ok(Some(cgroup_id)) => {
                for h in &self.hooks {
                    h.on_cgroup(&id, cgroup_id).await;
                }
            }
            Ok(None) => {}
            Err(e) => return self.fail(rec, e.to_string()),
        }
        match self.backend.start(&launch).await {
            Ok(started) => {
                rec.info.state = WeaverState::Running;
                rec.info.pid = (started.leader_pid > 0).then_some(started.leader_pid);
                rec.info.started_at = Some(now_secs());
                rec.info.exit_code = None;
                rec.info.reason = None;
                rec.handle = Some(started.handle.clone());
                self.with_store(|s| s.update(rec))?;
                tracing::info!(weaver = %id, name = %rec.info.name, pid = started.leader_pid, "weaver running");
                for h in &self.hooks {
                    h.after_start(&id, started.leader_pid, started.cgroup_id).await;
                }
                self.watch(id, started.handle);
                Ok(())
            }
            Err(e) => {
                let _ = self.backend.cleanup(&id).await;
                self.fail(rec, e.to_string())
            }
        }
    }

    fn fail(&self, rec: &mut WeaverRecord, reason: String) -> Result<(), ApiError> {
        tracing::warn!(weaver = %rec.info.id, name = %rec.info.name, %reason, "weaver failed to start");
        rec.info.state = WeaverState::Failed;
        rec.info.pid = None;
        rec.info.reason = Some(reason.clone());
        self.with_store(|s| s.update(rec))?;
        Err(ApiError::new(
            ErrorCode::Internal,
            format!("weaver {} ({}) failed to start: {reason}", rec.info.name, rec.info.id),
        ))
    }

    /// Waits for the run to end, then records how and applies the restart policy.
    fn watch(self: &Arc<Self>, id: WeaverId, handle: RunHandle) {
        let this = self.clone();
        tokio::spawn(async move {
            let observed = this.backend.wait(&id, &handle).await;
            this.run_ended(id, handle, observed).await;
        });
    }

    async fn run_ended(self: &Arc<Self>, id: WeaverId, handle: RunHandle, observed: Observed) {
        let guard = self.weaver_lock(&id);
        let _g = guard.lock().await;
        let Ok(Some(mut rec)) = self.with_store(|s| s.get(&id)) else {
            return;
        };
        if rec.handle.as_ref() != Some(&handle) {
            return; // A newer run replaced this one.
        }
        for h in &self.hooks {
            h.after_stop(&id).await;
        }
        let (code, lost) = match observed {
            Observed::Exited { code } => (Some(code), None),
            Observed::Lost { reason } => (None, Some(reason)),
            Observed::Running { .. } => return,
        };
        rec.info.pid = None;
        rec.info.exit_code = code;
        // Stopped (or failed) by loomd itself: that decision stands, whatever the exit.
        if !rec.info.state.is_active() {
            let _ = self.with_store(|s| s.update(&rec));
            self.ingest_spool(&rec).await;
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
        self.ingest_spool(&rec).await;
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

    async fn stop(self: &Arc<Self>, id: &WeaverId, reason: String) -> Result<WeaverInfo, ApiError> {
        let guard = self.weaver_lock(id);
        let _g = guard.lock().await;
        let Some(mut rec) = self.with_store(|s| s.get(id))? else {
            return Err(ApiError::new(ErrorCode::NotFound, format!("weaver {id} was removed")));
        };
        let was_pending = lock(&self.pending_restarts).remove(id);
        if !rec.info.state.is_active() && !was_pending {
            return Ok(rec.info);
        }
        rec.info.state = WeaverState::Stopped;
        rec.info.reason = Some(reason);
        self.with_store(|s| s.update(&rec))?;
        if let Some(handle) = &rec.handle {
            if let Err(e) = self.backend.stop(id, handle, STOP_GRACE).await {
                tracing::error!(weaver = %id, error = %crate::error_chain(&e), "stopping failed");
            }
            if let Observed::Exited { code } = self.backend.observe(id, handle).await {
                rec.info.exit_code = Some(code);
            }
        }
        rec.info.pid = None;
        self.with_store(|s| s.update(&rec))?;
        Ok(rec.info)
    }

    async fn start(self: &Arc<Self>, id: &WeaverId) -> Result<WeaverInfo, ApiError> {
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

    async fn remove(self: &Arc<Self>, id: &WeaverId, force: bool) -> Result<WeaverId, ApiError> {
        let active = self.with_store(|s| s.get(id))?.is_some_and(|r| r.info.state.is_active());
        if active {
            if !force {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("weaver {id} is running: stop it first, or remove it with --force"),
                ));
            }
            self.stop(id, "removed".into()).await?;
        }
        let guard = self.weaver_lock(id);
        let _g = guard.lock().await;
        if let Err(e) = self.backend.cleanup(id).await {
            tracing::warn!(weaver = %id, error = %crate::error_chain(&e), "cleanup left something behind");
        }
        for h in &self.hooks {
            h.on_remove(id).await;
        }
        let dir = self.dir_of(id);
        tokio::task::spawn_blocking(move || rootfs::remove(&dir))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        self.with_store(|s| s.delete(id))?;
        lock(&self.locks).remove(id);
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
            let Some(handle) = rec.handle.clone() else {
                let guard = self.weaver_lock(&id);
                let _g = guard.lock().await;
                let mut rec = rec;
                rec.info.state = WeaverState::Failed;
                rec.info.reason = Some("loomd stopped while creating it: `loom weaver start` it again".into());
                self.with_store(|s| s.update(&rec))?;
                ended += 1;
                continue;
            };
            match self.backend.observe(&id, &handle).await {
                Observed::Running { leader_pid } => {
                    let mut rec = rec;
                    if leader_pid.is_some() {
                        rec.info.pid = leader_pid;
                    }
                    rec.info.state = WeaverState::Running;
                    self.with_store(|s| s.update(&rec))?;
                    for h in &self.hooks {
                        h.after_start(&id, rec.info.pid.unwrap_or(0), self.backend.cgroup_id(&id)).await;
                    }
                    self.watch(id, handle);
                    adopted += 1;
                }
                done => {
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
