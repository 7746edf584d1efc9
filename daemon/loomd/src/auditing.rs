//! The eBPF audit as loomd runs it: each run's cgroup is watched from before its first
//! process runs until the run ends; events go to journald (or NDJSON) and to the store's
//! index behind `loom audit`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use loom_audit::{Audit, AuditConfig, AuditEvent, AuditIndex, AuditQuery, EventKind, open_sink, parse_since, pump};
use loom_core::weaver::{RunId, WeaverId};
use rusqlite::Connection;

use crate::daemon::WeaverHooks;

#[derive(Debug, thiserror::Error)]
pub enum AuditingError {
    #[error("the [audit] config is invalid")]
    Config(#[source] loom_audit::ConfigError),
    #[error("the audit programs could not start")]
    Start(#[source] loom_audit::AuditError),
    #[error("the audit sink could not be opened")]
    Sink(#[source] loom_audit::SinkError),
    #[error("the audit index could not be opened")]
    Index(#[source] rusqlite::Error),
    #[error("the audit index could not be migrated")]
    Schema(#[source] loom_sqlite::MigrateError),
    #[error("invalid audit query: {0}")]
    Query(String),
}

#[derive(Debug)]
pub struct Auditor {
    audit: Audit,
    conn: Arc<Mutex<Connection>>,
    /// The cgroup each weaver's live run is watched by: one entry per weaver, whatever the
    /// number of its runs, since a run's `after_stop` unwatches it.
    watched: Mutex<HashMap<WeaverId, (RunId, u64)>>,
}

/// One row of `loom audit`: its index id (for following) and the event.
#[derive(Debug, serde::Serialize)]
pub struct AuditRow {
    pub id: i64,
    #[serde(flatten)]
    pub event: AuditEvent,
}

impl Auditor {
    /// Starts the audit per `[audit]`; `Ok(None)` when it is switched off.
    pub fn start(table: &toml::Table, state_dir: &Path, db: &Path) -> Result<Option<Arc<Auditor>>, AuditingError> {
        let config = AuditConfig::from_toml(table).map_err(AuditingError::Config)?;
        if !config.enabled {
            return Ok(None);
        }
        // The index first: a schema it cannot use is refused before any program is loaded.
        let mut conn = Connection::open(db).map_err(AuditingError::Index)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
            .map_err(AuditingError::Index)?;
        loom_audit::index::migrate(&mut conn).map_err(AuditingError::Schema)?;
        let mut audit = Audit::start(&config).map_err(AuditingError::Start)?;
        let mut sink = open_sink(&config, state_dir).map_err(AuditingError::Sink)?;
        let conn = Arc::new(Mutex::new(conn));
        if let Some(events) = audit.take_events() {
            let index_conn = conn.clone();
            let index = config.index;
            tokio::spawn(async move {
                pump(events, sink.as_mut(), |batch| {
                    if !index {
                        return;
                    }
                    let conn = index_conn.lock().unwrap_or_else(|e| e.into_inner());
                    if let Err(e) = AuditIndex::new(&conn).insert(batch) {
                        tracing::error!(error = %e, "audit index insert failed");
                    }
                })
                .await;
            });
        }
        for w in audit.stats().warnings {
            tracing::warn!(warning = %w, "audit");
        }
        Ok(Some(Arc::new(Auditor { audit, conn, watched: Mutex::new(HashMap::new()) })))
    }

    fn watch(&self, id: &WeaverId, run: RunId, cgroup_id: u64) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        match watched.get(id) {
            Some(&(r, cg)) if r == run && cg == cgroup_id => return,
            // A cgroup of an earlier run (or an earlier cgroup of this one) is not the
            // weaver's any more: left in the map it would fill it.
            Some(&(_, cg)) if cg != cgroup_id => self.unwatch(id, cg),
            _ => {}
        }
        match self.audit.watch(cgroup_id, id.as_str()) {
            Ok(()) => {
                watched.insert(id.clone(), (run, cgroup_id));
            }
            Err(e) => {
                watched.remove(id);
                tracing::error!(weaver = %id, %run, error = %crate::error_chain(&e), "the weaver runs unaudited")
            }
        }
    }

    fn unwatch(&self, id: &WeaverId, cgroup_id: u64) {
        if let Err(e) = self.audit.unwatch(cgroup_id) {
            tracing::warn!(weaver = %id, error = %e, "unwatching the weaver's cgroup failed");
        }
    }

    /// Records an event loomd saw itself (an egress refusal); dropped, with a warning, when
    /// the queue is full rather than ever blocking the caller.
    pub fn record(&self, ev: AuditEvent) {
        if !self.audit.record(ev) {
            tracing::warn!("the audit queue is full: an egress refusal was not recorded");
        }
    }

    /// How many cgroups loomd has the audit watch (its own table and the kernel's map).
    pub fn watched(&self) -> (usize, usize) {
        let mine = self.watched.lock().unwrap_or_else(|e| e.into_inner()).len();
        (mine, self.audit.watched_in_kernel())
    }

    pub fn query(
        &self,
        weaver: Option<String>,
        kind: Option<&str>,
        since: Option<&str>,
        after_id: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<AuditRow>, AuditingError> {
        let kind = kind
            .map(|k| serde_json::from_value::<EventKind>(serde_json::Value::String(k.to_string())))
            .transpose()
            .map_err(|_| AuditingError::Query(format!("unknown event kind {:?}: use exec, exit, open, unlink, rename, connect, bind, listen, setuid, ptrace, mount, umount, unshare, setns, bpf or module", kind.unwrap_or(""))))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let since_unix_ns =
            since.map(|s| parse_since(s, now)).transpose().map_err(|e| AuditingError::Query(e.to_string()))?;
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let index = AuditIndex::new(&conn);
        let rows = index
            .query(&AuditQuery {
                weaver,
                kind,
                since_unix_ns,
                after_id,
                limit: Some(limit.unwrap_or(1000).min(10_000)),
            })
            .map_err(|e| AuditingError::Query(e.to_string()))?;
        Ok(rows.into_iter().map(|(id, event)| AuditRow { id, event }).collect())
    }
}

#[async_trait::async_trait]
impl WeaverHooks for Auditor {
    async fn on_cgroup(&self, id: &WeaverId, run: RunId, cgroup_id: u64) {
        self.watch(id, run, cgroup_id);
    }

    async fn after_start(&self, id: &WeaverId, run: RunId, _leader_pid: i32, cgroup_id: Option<u64>) {
        // Backends that cannot name the cgroup before the first process (systemd units)
        // and weavers adopted after a restart are watched from here.
        if let Some(cg) = cgroup_id {
            self.watch(id, run, cg);
        }
    }

    async fn after_stop(&self, id: &WeaverId, run: RunId, _rec: &crate::store::WeaverRecord) {
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&(r, cg)) = watched.get(id)
            && r == run
        {
            watched.remove(id);
            self.unwatch(id, cg);
        }
    }

    async fn on_remove(&self, id: &WeaverId, _last_run: Option<RunId>) {
        let cg = self.watched.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        if let Some((_, cg)) = cg {
            self.unwatch(id, cg);
        }
    }

    fn status(&self) -> Option<(String, serde_json::Value)> {
        Some(("audit".into(), serde_json::to_value(self.audit.stats()).unwrap_or_default()))
    }
}
