//! The daemon's whole API as one enum, and the router from a [`Request`] to its handler.

use std::sync::Arc;

use loom_core::access::{Caller, Role, may_touch};
use loom_core::api::{CreateWeaver, ErrorCode, Status, WeaverInfo};
use loom_core::weaver::{Image, NetworkMode, WeaverId, WeaverState, resolve_spec};

use super::{ApiError, CONTEXT_BYTES, Daemon, now_secs};
use crate::rootfs;
use crate::store::WeaverRecord;

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
    /// A weaver's egress rules, and changes to them (live for a running weaver).
    Egress {
        key: String,
        change: Option<EgressChange>,
    },
    /// The operator tunnel's peers; admins only.
    WireguardPeers,
    /// A new peer: its key pair is made here and its client config (with the private key)
    /// is in this one response only.
    WireguardPeerAdd {
        name: String,
    },
    WireguardPeerRemove {
        name: String,
    },
    // Declared weavers (issue 10).
    /// `loom apply` / `loom down`: reconcile the weavers of one source (`crate::daemon::reconcile`).
    Apply(Box<loom_core::api::ApplyRequest>),
}

#[derive(Debug)]
pub enum Response {
    Status(Box<Status>),
    Weaver(Box<WeaverInfo>),
    Weavers(Vec<WeaverInfo>),
    Removed {
        id: WeaverId,
    },
    Secrets(Box<crate::secrets::SecretsReport>),
    Usage(Vec<crate::llm::UsageSummary>),
    Audit(Vec<crate::auditing::AuditRow>),
    Threads(Vec<loom_threads::ThreadSummary>),
    Limits(loom_proxy::WeaverLimits),
    Thread {
        detail: Box<loom_threads::ThreadDetail>,
        markdown: String,
    },
    ThreadHits(Vec<loom_threads::SearchHit>),
    /// Answers whose shape is their handler's own.
    Json(serde_json::Value),
    // Declared weavers (issue 10).
    Applied(Box<loom_core::api::ApplyResult>),
}

impl Daemon {
    pub async fn handle(self: &Arc<Self>, caller: &Caller, req: Request) -> Result<Response, ApiError> {
        let role = self.authorize(caller, &req)?;
        match req {
            Request::Status => Ok(Response::Status(Box::new(self.status()))),
            Request::CreateWeaver(req) => {
                self.create(caller, role, *req, None).await.map(|i| Response::Weaver(Box::new(i)))
            }
            Request::Apply(req) => self.apply(caller, role, *req).await.map(|r| Response::Applied(Box::new(r))),
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
            Request::Egress { key, change } => {
                let rec = self.lookup(caller, role, &key)?;
                self.egress(role, rec.info.id, change).await.map(Response::Json)
            }
            Request::WireguardPeers | Request::WireguardPeerAdd { .. } | Request::WireguardPeerRemove { .. } => {
                self.wireguard(role, req).await.map(Response::Json)
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

    /// A new weaver; `origin` is set for a declared one (`daemon::reconcile`), None by hand.
    pub(super) async fn create(
        self: &Arc<Self>,
        caller: &Caller,
        role: Role,
        req: CreateWeaver,
        origin: Option<loom_core::declare::Origin>,
    ) -> Result<WeaverInfo, ApiError> {
        let id = WeaverId::from_random(rand::random());
        let defaults = self.config().weaver;
        let upload_id = req.upload.clone();
        let mut spec = resolve_spec(req, &defaults, format!("w-{}", &id.as_str()[..8]))
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))?;
        if spec.tailscale {
            let ts = self.config().tailscale;
            if !ts.enable {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "--tailscale needs loomd's [tailscale] section: enable = true and auth_key_secret naming an \
                     ephemeral, tagged auth key in the SOPS file",
                ));
            }
            for rule in ts.egress_rules() {
                if !spec.egress.contains(&rule) {
                    spec.egress.push(rule);
                }
            }
        }
        let host_key = match &mut spec.ssh {
            Some(ssh) => {
                let key = crate::ssh::HostKey::generate(&format!("loom-weaver-{}", spec.name))
                    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
                ssh.host_key = key.public.clone();
                Some(key)
            }
            None => None,
        };
        may_have(role, &spec, &defaults)?;
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
        let mut rec = WeaverRecord::new(id.clone(), spec, caller.uid, self.backend.kind().as_str(), now);
        if let Some(origin) = origin {
            rec.declared_hash = Some(loom_core::declare::spec_hash(&rec.info.spec));
            rec.info.origin = Some(origin.as_stored());
        }
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
            if let Some(key) = host_key {
                key.install(&crate::weaverfs::WeaverRoot::open(&root)?)?;
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

    async fn wireguard(&self, role: Role, req: Request) -> Result<serde_json::Value, ApiError> {
        if role != Role::Admin {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "only root and the admin group may manage WireGuard peers",
            ));
        }
        let tunnel = self.wireguard.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "the WireGuard tunnel is off: set `[wireguard] enable = true` and restart loomd",
            )
        })?;
        let bad = |e: loom_wireguard::WgError| match e {
            loom_wireguard::WgError::Config(_) | loom_wireguard::WgError::Alloc(_) => {
                ApiError::new(ErrorCode::BadRequest, e.to_string())
            }
            other => ApiError::new(ErrorCode::Internal, other.to_string()),
        };
        // Each call talks to the interface (and may wait for wireguard-go): off the runtime.
        tokio::task::spawn_blocking(move || match req {
            Request::WireguardPeerAdd { name } => {
                let peer = tunnel.add_peer(&name).map_err(bad)?;
                let qr = peer.qr_terminal().ok();
                tracing::info!(peer = %name, address = %peer.address, "WireGuard peer added");
                Ok(serde_json::json!({
                    "name": peer.name,
                    "address": peer.address.to_string(),
                    "public_key": peer.public_key.to_string(),
                    "client_config": peer.client_config.text(),
                    "qr": qr,
                }))
            }
            Request::WireguardPeerRemove { name } => {
                tunnel.remove_peer(&name).map_err(bad)?;
                tracing::info!(peer = %name, "WireGuard peer removed");
                Ok(serde_json::json!({ "removed": name }))
            }
            _ => Ok(serde_json::to_value(tunnel.list_peers().map_err(bad)?).unwrap_or_default()),
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("the WireGuard call failed: {e}")))?
    }

    /// Lists or changes a weaver's egress rules under its lock: stored for its next runs and,
    /// while it runs, in force for its next connect.
    async fn egress(
        &self,
        role: Role,
        id: WeaverId,
        change: Option<EgressChange>,
    ) -> Result<serde_json::Value, ApiError> {
        let guard = self.weaver_lock(&id);
        let _g = guard.lock().await;
        let mut rec = self
            .with_store(|s| s.get(&id))?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the weaver was removed"))?;
        let mut live = false;
        if let Some(change) = change {
            let bad = |e: loom_core::egress::EgressRuleError| {
                ApiError::new(ErrorCode::BadRequest, format!("invalid egress rule {e}"))
            };
            let allow = loom_core::egress::policy_of(&change.allow).map_err(bad)?;
            let deny = loom_core::egress::policy_of(&change.deny).map_err(bad)?;
            if role != Role::Admin
                && let Some(r) = allow.iter().find(|r| names_metadata(r))
            {
                return Err(metadata_forbidden(r));
            }
            let mut rules = rec.info.spec.egress.clone();
            for r in &deny {
                let before = rules.len();
                rules.retain(|have| have != r);
                if rules.len() == before {
                    return Err(ApiError::new(
                        ErrorCode::BadRequest,
                        format!(
                            "the weaver has no rule {r} (everything not allowed is denied already): \
                             `loom weaver egress {} list` shows its rules",
                            rec.info.name
                        ),
                    ));
                }
            }
            let rules = loom_core::egress::policy_of(rules.iter().chain(&allow)).map_err(bad)?;
            if let Some(net) = &self.net {
                live = net.apply_policy(&id, &rules).map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
            }
            tracing::info!(weaver = %id, allow = ?allow, deny = ?deny, live, "egress rules changed");
            rec.info.spec.egress = rules;
            self.with_store(|s| s.update(&rec))?;
        }
        let running = rec.info.state.is_active();
        Ok(serde_json::json!({
            "weaver": id,
            "name": rec.info.name,
            "network": rec.info.spec.network,
            "built_in": self.net.as_ref().map(|n| n.built_in_rules()).unwrap_or_default(),
            "rules": rec.info.spec.egress,
            "enforced": running && rec.info.spec.network == NetworkMode::Private && self.net.is_some(),
            "changed_live": live,
        }))
    }
}

/// `PUT`-like changes to a weaver's egress rules: `allow` adds, `deny` removes.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressChange {
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// What only admins may ask of a weaver's spec, checked on every create and declared update.
pub(super) fn may_have(
    role: Role,
    spec: &loom_core::weaver::WeaverSpec,
    defaults: &loom_core::config::WeaverDefaults,
) -> Result<(), ApiError> {
    if role != Role::Admin {
        if spec.network == NetworkMode::Host {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "--network host shares the host's network with the weaver: only root and the admin group may \
                     ask for it; use private (the default) or none",
            ));
        }
        // The config's own defaults are the admin's choice; only what the caller added counts.
        let defaults_allow = loom_core::egress::policy_of(&defaults.egress.allow).unwrap_or_default();
        if let Some(r) = spec.egress.iter().find(|r| names_metadata(r) && !defaults_allow.contains(r)) {
            return Err(metadata_forbidden(r));
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
    Ok(())
}

fn names_metadata(rule: &str) -> bool {
    matches!(rule.parse::<loom_core::egress::EgressRule>(), Ok(loom_core::egress::EgressRule::Net(n)) if n.names_metadata())
}

fn metadata_forbidden(rule: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "{rule} names a link-local metadata address, where clouds hand out credentials: only root and the \
             admin group may allow it"
        ),
    )
}
