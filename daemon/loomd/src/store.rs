//! The SQLite store in the state directory: weavers now, and the tables other subsystems
//! (threads, usage, the audit index) migrate into the same file through `loom_sqlite`.

use std::path::Path;

use loom_core::api::WeaverInfo;
use loom_core::restart::RestartTracker;
use loom_core::weaver::{RunId, WeaverId, WeaverSpec, WeaverState};
use rusqlite::{Connection, OptionalExtension};

use crate::backend::RunHandle;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store at {path} could not be opened")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("a weaver named {0:?} already exists: pick another --name or `loom weaver rm` the old one")]
    NameTaken(String),
    #[error(transparent)]
    Schema(#[from] loom_sqlite::MigrateError),
    #[error("store query failed")]
    Sql(#[from] rusqlite::Error),
    #[error("a stored record is corrupt: {0}")]
    Corrupt(String),
}

/// One weaver as loomd keeps it: what clients see plus what only the supervisor needs.
#[derive(Debug, Clone, PartialEq)]
pub struct WeaverRecord {
    pub info: WeaverInfo,
    pub handle: Option<RunHandle>,
    /// The weaver's latest run: the one running, or the last one that ran or tried to.
    pub run: Option<RunId>,
    pub tracker: RestartTracker,
    /// For a declared weaver (`info.origin` set): the hash of the declared spec it was last
    /// created or updated from (`loom_core::declare::spec_hash`).
    pub declared_hash: Option<String>,
}

impl WeaverRecord {
    /// A weaver that was just created and has never run.
    pub fn new(id: WeaverId, spec: WeaverSpec, owner_uid: u32, backend: &str, now: u64) -> WeaverRecord {
        WeaverRecord {
            info: WeaverInfo {
                id,
                name: spec.name.clone(),
                state: WeaverState::Creating,
                exit_code: None,
                reason: None,
                owner_uid,
                backend: backend.into(),
                created_at: now,
                started_at: None,
                expires_at: spec.ttl.map(|t| now + t.0),
                pid: None,
                restarts: 0,
                spec,
                agent_status: None,
                address: None,
                origin: None,
            },
            handle: None,
            run: None,
            tracker: RestartTracker::default(),
            declared_hash: None,
        }
    }

    /// A record that was never stored or run, for unit tests.
    #[cfg(test)]
    pub fn new_for_tests(id: WeaverId, spec: WeaverSpec) -> WeaverRecord {
        WeaverRecord::new(id, spec, 1000, "nspawn", 1)
    }
}

const WEAVER_MIGRATIONS: &[&str] = &[
    "CREATE TABLE weavers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        owner_uid INTEGER NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        exit_code INTEGER,
        reason TEXT,
        backend TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        expires_at INTEGER,
        restarts INTEGER NOT NULL DEFAULT 0,
        leader_pid INTEGER,
        handle TEXT,
        tracker TEXT NOT NULL
    )",
    "ALTER TABLE weavers ADD COLUMN run_id TEXT",
    // Declared weavers (loomd's reconcile): `config` or `apply:SOURCE`, NULL for one made by
    // hand; and the declared spec's hash.
    "ALTER TABLE weavers ADD COLUMN origin TEXT; ALTER TABLE weavers ADD COLUMN spec_hash TEXT",
];

#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.display().to_string(), source };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
            .map_err(open_err)?;
        loom_sqlite::migrate(&mut conn, "weavers", WEAVER_MIGRATIONS)?;
        Ok(Store { conn })
    }

    pub fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn insert(&mut self, rec: &WeaverRecord) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        let r = tx.execute(
            "INSERT INTO weavers (id, name, owner_uid, spec, state, exit_code, reason, backend, created_at,
                started_at, expires_at, restarts, leader_pid, handle, tracker, run_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params_of(rec)?,
        );
        match r {
            Ok(_) => {}
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                return Err(StoreError::NameTaken(rec.info.spec.name.clone()));
            }
            Err(e) => return Err(e.into()),
        }
        set_origin(&tx, rec)?;
        tx.commit()?;
        Ok(())
    }

    pub fn update(&mut self, rec: &WeaverRecord) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE weavers SET name = ?2, owner_uid = ?3, spec = ?4, state = ?5, exit_code = ?6, reason = ?7,
                backend = ?8, created_at = ?9, started_at = ?10, expires_at = ?11, restarts = ?12,
                leader_pid = ?13, handle = ?14, tracker = ?15, run_id = ?16
             WHERE id = ?1",
            params_of(rec)?,
        )?;
        set_origin(&tx, rec)?;
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, id: &WeaverId) -> Result<Option<WeaverRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("{SELECT} WHERE id = ?1"))?;
        let row = stmt.query_row([id.as_str()], row_to_raw).optional()?;
        row.map(raw_to_record).transpose()
    }

    /// A weaver by its full id, its name, or an unambiguous id prefix of at least 4 digits.
    pub fn find(&self, key: &str) -> Result<Lookup, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("{SELECT} WHERE id = ?1 OR name = ?1"))?;
        if let Some(raw) = stmt.query_row([key], row_to_raw).optional()? {
            return Ok(Lookup::One(Box::new(raw_to_record(raw)?)));
        }
        if key.len() >= 4 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut stmt = self.conn.prepare_cached(&format!("{SELECT} WHERE substr(id, 1, length(?1)) = ?1"))?;
            let rows: Vec<RawRow> = stmt.query_map([key], row_to_raw)?.collect::<Result<_, _>>()?;
            return match rows.len() {
                0 => Ok(Lookup::None),
                1 => Ok(Lookup::One(Box::new(raw_to_record(rows.into_iter().next().unwrap_or_default())?))),
                n => Ok(Lookup::Ambiguous(n)),
            };
        }
        Ok(Lookup::None)
    }

    pub fn list(&self) -> Result<Vec<WeaverRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("{SELECT} ORDER BY created_at, id"))?;
        let rows: Vec<RawRow> = stmt.query_map([], row_to_raw)?.collect::<Result<_, _>>()?;
        rows.into_iter().map(raw_to_record).collect()
    }

    pub fn delete(&mut self, id: &WeaverId) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM weavers WHERE id = ?1", [id.as_str()])?;
        Ok(())
    }
}

// Its own statement: the other columns already fill rusqlite's largest parameter tuple.
fn set_origin(tx: &rusqlite::Transaction<'_>, rec: &WeaverRecord) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE weavers SET origin = ?2, spec_hash = ?3 WHERE id = ?1",
        (rec.info.id.as_str(), rec.info.origin.as_deref(), rec.declared_hash.as_deref()),
    )?;
    Ok(())
}

#[derive(Debug)]
pub enum Lookup {
    None,
    One(Box<WeaverRecord>),
    Ambiguous(usize),
}

const SELECT: &str = "SELECT id, name, owner_uid, spec, state, exit_code, reason, backend, created_at, started_at,
    expires_at, restarts, leader_pid, handle, tracker, run_id, origin, spec_hash FROM weavers";

#[derive(Debug, Default)]
struct RawRow {
    id: String,
    name: String,
    owner_uid: u32,
    spec: String,
    state: String,
    exit_code: Option<i32>,
    reason: Option<String>,
    backend: String,
    created_at: u64,
    started_at: Option<u64>,
    expires_at: Option<u64>,
    restarts: u32,
    leader_pid: Option<i32>,
    handle: Option<String>,
    tracker: String,
    run_id: Option<String>,
    origin: Option<String>,
    spec_hash: Option<String>,
}

fn row_to_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        name: r.get(1)?,
        owner_uid: r.get(2)?,
        spec: r.get(3)?,
        state: r.get(4)?,
        exit_code: r.get(5)?,
        reason: r.get(6)?,
        backend: r.get(7)?,
        created_at: r.get(8)?,
        started_at: r.get(9)?,
        expires_at: r.get(10)?,
        restarts: r.get(11)?,
        leader_pid: r.get(12)?,
        handle: r.get(13)?,
        tracker: r.get(14)?,
        run_id: r.get(15)?,
        origin: r.get(16)?,
        spec_hash: r.get(17)?,
    })
}

fn raw_to_record(raw: RawRow) -> Result<WeaverRecord, StoreError> {
    let corrupt =
        |what: &str, e: &dyn std::fmt::Display| StoreError::Corrupt(format!("weaver {}: {what}: {e}", raw.id));
    let spec: WeaverSpec = serde_json::from_str(&raw.spec).map_err(|e| corrupt("spec", &e))?;
    let handle = raw.handle.as_deref().map(serde_json::from_str).transpose().map_err(|e| corrupt("handle", &e))?;
    let tracker = serde_json::from_str(&raw.tracker).map_err(|e| corrupt("restart tracker", &e))?;
    let id = WeaverId::try_from(raw.id.clone()).map_err(|e| corrupt("id", &e))?;
    let state: WeaverState = raw.state.parse().map_err(|e: String| corrupt("state", &e))?;
    let run = raw.run_id.as_deref().map(str::parse::<RunId>).transpose().map_err(|e| corrupt("run id", &e))?;
    Ok(WeaverRecord {
        info: WeaverInfo {
            id,
            name: raw.name,
            state,
            exit_code: raw.exit_code,
            reason: raw.reason,
            owner_uid: raw.owner_uid,
            backend: raw.backend,
            created_at: raw.created_at,
            started_at: raw.started_at,
            expires_at: raw.expires_at,
            pid: raw.leader_pid,
            restarts: raw.restarts,
            spec,
            agent_status: None,
            address: None,
            origin: raw.origin,
        },
        handle,
        run,
        tracker,
        declared_hash: raw.spec_hash,
    })
}

type Params = (
    String,
    String,
    u32,
    String,
    &'static str,
    Option<i32>,
    Option<String>,
    String,
    u64,
    Option<u64>,
    Option<u64>,
    u32,
    Option<i32>,
    Option<String>,
    String,
    Option<String>,
);

fn params_of(rec: &WeaverRecord) -> Result<Params, StoreError> {
    let i = &rec.info;
    let json = |v: Result<String, serde_json::Error>| v.map_err(|e| StoreError::Corrupt(e.to_string()));
    Ok((
        i.id.to_string(),
        i.name.clone(),
        i.owner_uid,
        json(serde_json::to_string(&i.spec))?,
        i.state.as_str(),
        i.exit_code,
        i.reason.clone(),
        i.backend.clone(),
        i.created_at,
        i.started_at,
        i.expires_at,
        i.restarts,
        i.pid,
        rec.handle.as_ref().map(serde_json::to_string).transpose().map_err(|e| StoreError::Corrupt(e.to_string()))?,
        json(serde_json::to_string(&rec.tracker))?,
        rec.run.map(|r| r.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loom_core::api::CreateWeaver;
    use loom_core::config::WeaverDefaults;
    use loom_core::weaver::resolve_spec;

    fn record(id: u8, name: &str) -> WeaverRecord {
        let spec = resolve_spec(
            CreateWeaver { command: vec!["true".into()], ..Default::default() },
            &WeaverDefaults::default(),
            name.into(),
        )
        .unwrap();
        WeaverRecord {
            handle: Some(RunHandle::Shim { run: RunId::from_random(0x5eed), pid: 42, start_ticks: 7 }),
            run: Some(RunId::from_random(0x5eed)),
            ..WeaverRecord::new_for_tests(WeaverId::from_random([id, 0, 0, 0, 0, id]), spec)
        }
    }

    #[test]
    fn round_trip_and_lookups() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("loom.db")).unwrap();
        let a = record(0xab, "alpha");
        store.insert(&a).unwrap();
        store.insert(&record(0xac, "beta")).unwrap();
        assert_eq!(store.get(&a.info.id).unwrap().unwrap(), a);
        assert!(matches!(store.find("alpha").unwrap(), Lookup::One(r) if r.info.id == a.info.id));
        assert!(matches!(store.find("ab00").unwrap(), Lookup::One(_)));
        assert!(matches!(store.find("a").unwrap(), Lookup::None));
        assert!(matches!(store.find("nope").unwrap(), Lookup::None));
        let mut b = a.clone();
        b.info.state = WeaverState::Running;
        b.info.pid = Some(99);
        store.update(&b).unwrap();
        assert_eq!(store.get(&a.info.id).unwrap().unwrap().info.state, WeaverState::Running);
        assert_eq!(store.list().unwrap().len(), 2);
        store.delete(&a.info.id).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn names_are_unique() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("loom.db")).unwrap();
        store.insert(&record(1, "same")).unwrap();
        let e = store.insert(&record(2, "same")).unwrap_err();
        assert!(matches!(e, StoreError::NameTaken(ref n) if n == "same"), "{e}");
    }

    #[test]
    fn reopening_keeps_data_and_migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loom.db");
        Store::open(&path).unwrap().insert(&record(3, "kept")).unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list().unwrap()[0].info.name, "kept");
        assert_eq!(store.list().unwrap()[0].run, Some(RunId::from_random(0x5eed)));
    }

    /// A store written before run ids keeps its weavers: their run id and their handle's
    /// read as unknown, and adoption still finds the run by its handle.
    #[test]
    fn a_store_from_before_run_ids_migrates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loom.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            loom_sqlite::migrate(&mut conn, "weavers", &WEAVER_MIGRATIONS[..1]).unwrap();
            let rec = record(4, "old");
            let mut p = params_of(&rec).unwrap();
            p.13 = Some(r#"{"kind":"shim","pid":42,"start_ticks":7}"#.into());
            conn.execute(
                "INSERT INTO weavers (id, name, owner_uid, spec, state, exit_code, reason, backend, created_at,
                    started_at, expires_at, restarts, leader_pid, handle, tracker)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                (p.0, p.1, p.2, p.3, p.4, p.5, p.6, p.7, p.8, p.9, p.10, p.11, p.12, p.13, p.14),
            )
            .unwrap();
        }
        let got = Store::open(&path).unwrap().list().unwrap().remove(0);
        assert_eq!(got.run, None);
        assert_eq!(got.handle, Some(RunHandle::Shim { run: RunId::UNKNOWN, pid: 42, start_ticks: 7 }));
    }

    /// Declared weavers keep their origin and hash; a store from before origins reads every
    /// weaver as made by hand, which a reconcile never touches.
    #[test]
    fn origins_are_stored_and_an_older_store_reads_as_hand_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loom.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            loom_sqlite::migrate(&mut conn, "weavers", &WEAVER_MIGRATIONS[..2]).unwrap();
            let p = params_of(&record(5, "before")).unwrap();
            conn.execute(
                "INSERT INTO weavers (id, name, owner_uid, spec, state, exit_code, reason, backend, created_at,
                    started_at, expires_at, restarts, leader_pid, handle, tracker, run_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                p,
            )
            .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        let old = store.list().unwrap().remove(0);
        assert_eq!((old.info.origin, old.declared_hash), (None, None));
        let mut rec = record(6, "declared");
        rec.info.origin = Some("apply:/srv/loom.toml".into());
        rec.declared_hash = Some("ab".repeat(32));
        store.insert(&rec).unwrap();
        assert_eq!(store.get(&rec.info.id).unwrap().unwrap(), rec);
        rec.declared_hash = Some("cd".repeat(32));
        store.update(&rec).unwrap();
        assert_eq!(store.get(&rec.info.id).unwrap().unwrap().declared_hash, rec.declared_hash);
    }

    /// One file, one `schema_versions` table, one row per component, each applied once at open.
    #[test]
    fn every_component_migrates_into_one_table_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loom.db");
        for _ in 0..2 {
            Store::open(&path).unwrap();
            crate::llm::UsageStore::open(&path).unwrap();
            crate::threads::Threads::open(&path).unwrap();
            loom_audit::index::migrate(&mut Connection::open(&path).unwrap()).unwrap();
        }
        let conn = Connection::open(&path).unwrap();
        let mut stmt = conn.prepare("SELECT component, version FROM schema_versions ORDER BY component").unwrap();
        let rows: Vec<(String, i64)> =
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap();
        let names: Vec<&str> = rows.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(names, ["audit", "threads", "usage", "weavers"]);
        assert!(rows.iter().all(|(_, v)| *v >= 1), "{rows:?}");

        conn.execute("UPDATE schema_versions SET version = version + 1 WHERE component = 'weavers'", []).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::Schema(loom_sqlite::MigrateError::TooNew { .. })), "{err:?}");
        let known = WEAVER_MIGRATIONS.len();
        let expected = format!("weavers schema version {} is newer than this binary knows ({known})", known + 1);
        assert!(err.to_string().contains(&expected), "{err}");
    }
}
