//! The SQLite store: schema, migrations, appends, listing, showing and searching threads.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::text::{fts_query, parts_text, truncate_str, whole_text};
use crate::wire::{
    AppendResponse, EventKind, MAX_BATCH_EVENTS, MAX_EVENT_PAYLOAD, MAX_EVENT_TEXT, MAX_ID_LEN, StopReason, ThreadEvent,
};

/// Errors of the thread store.
#[derive(Debug, thiserror::Error)]
pub enum ThreadsError {
    /// SQLite failed; the message names the operation.
    #[error("thread store: {op} failed")]
    Sqlite {
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The schema could not be migrated, or was written by a newer loom.
    #[error(transparent)]
    Schema(#[from] loom_sqlite::MigrateError),
    /// This SQLite has no FTS5; loom needs rusqlite's bundled SQLite (which has it).
    #[error("SQLite lacks FTS5; build with rusqlite's `bundled` feature")]
    NoFts5,
    /// A batch or event a weaver sent is malformed or out of bounds.
    #[error("rejected thread event: {0}")]
    Invalid(String),
    /// An event names a thread that belongs to another weaver.
    #[error("thread {thread_id} belongs to weaver {owner}, not {sender}")]
    WrongOwner { thread_id: String, owner: String, sender: String },
    /// No thread with this id; `loom thread list` shows the ids.
    #[error("no thread {0}; `loom thread list` shows the existing ones")]
    NotFound(String),
    /// The query has no word, identifier or path to search for.
    #[error("search query {0:?} has nothing to search for; give a word, identifier or path")]
    EmptyQuery(String),
}

fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> ThreadsError {
    move |source| ThreadsError::Sqlite { op, source }
}

const MIGRATIONS: &[&str] = &[
    // 1: threads, events, and their full-text index.
    r#"
    CREATE TABLE threads (
        id          TEXT PRIMARY KEY,
        weaver_id   TEXT NOT NULL,
        title       TEXT NOT NULL DEFAULT '',
        iteration   INTEGER NOT NULL DEFAULT 0,
        started_ms  INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL,
        ended_ms    INTEGER,
        stop_reason TEXT,
        event_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX threads_weaver ON threads(weaver_id, started_ms);
    CREATE TABLE events (
        id        INTEGER PRIMARY KEY,
        thread_id TEXT NOT NULL REFERENCES threads(id) ON DELETE CASCADE,
        weaver_id TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        ts_ms     INTEGER NOT NULL,
        kind      TEXT NOT NULL,
        iteration INTEGER NOT NULL,
        text      TEXT NOT NULL,
        payload   TEXT,
        -- What the `parts` index column holds; computed on read, never stored.
        parts     TEXT GENERATED ALWAYS AS (
            replace(replace(replace(replace(replace(text, '_', ' '), '-', ' '), '.', ' '), '/', ' '), ':', ' ')
        ) VIRTUAL,
        -- Indexed so that the weaver filter is part of the full-text match.
        meta      TEXT GENERATED ALWAYS AS (weaver_id || ' ' || kind) VIRTUAL,
        UNIQUE (thread_id, seq)
    );
    CREATE INDEX events_weaver_ts ON events(weaver_id, ts_ms);
    -- External content: the text lives once, in `events`; snippets read it from there.
    -- What is indexed is `text::whole_text(text)` and `text::parts_text(text)`, written by
    -- `append_events` (never by a trigger: SQLite cannot compute whole_text).
    CREATE VIRTUAL TABLE events_fts USING fts5(
        text, parts, meta,
        content = 'events',
        content_rowid = 'id',
        tokenize = "unicode61 tokenchars '_-./:'"
    );
    "#,
];

/// Settings the thread store is measured with; loomd should apply them to its connection:
/// WAL (readers never wait for the writer), `synchronous=NORMAL` (durable at checkpoints, safe
/// in WAL), a busy timeout, and memory-mapped reads (search reads candidate rows at random;
/// through `pread` each is a syscall, mapped it is a memory access).
pub fn configure_connection(conn: &Connection) -> Result<(), ThreadsError> {
    conn.pragma_update(None, "journal_mode", "WAL").map_err(sql("enabling WAL"))?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql("setting synchronous"))?;
    conn.pragma_update(None, "mmap_size", 1i64 << 30).map_err(sql("setting mmap_size"))?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(sql("setting the busy timeout"))?;
    Ok(())
}

/// The schema version this crate writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// This store's row in the shared `schema_versions` table.
pub const COMPONENT: &str = "threads";

/// Brings the schema on `conn` up to [`SCHEMA_VERSION`] through `loom_sqlite`'s scheme.
/// Safe to call on every start; loomd owns the connection (and its WAL mode).
pub fn migrate(conn: &mut Connection) -> Result<(), ThreadsError> {
    let fts5: bool = conn
        .query_row("SELECT sqlite_compileoption_used('ENABLE_FTS5')", [], |r| r.get(0))
        .map_err(sql("checking for FTS5"))?;
    if !fts5 {
        return Err(ThreadsError::NoFts5);
    }
    // Before the shared scheme this store kept its version in `PRAGMA user_version`.
    let legacy: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql("reading the schema version"))?;
    if legacy > 0 {
        loom_sqlite::adopt(conn, COMPONENT, legacy)?;
    }
    loom_sqlite::migrate(conn, COMPONENT, MIGRATIONS)?;
    Ok(())
}

fn valid_id(what: &str, id: &str) -> Result<(), ThreadsError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ThreadsError::Invalid(format!("{what} {id:?} must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 - _ . :")))
    }
}

/// Checks a batch a weaver sent before anything is written.
pub fn validate_batch(sender_weaver: &str, events: &[ThreadEvent]) -> Result<(), ThreadsError> {
    if events.len() > MAX_BATCH_EVENTS {
        return Err(ThreadsError::Invalid(format!(
            "batch has {} events, at most {MAX_BATCH_EVENTS} are accepted; send smaller batches",
            events.len()
        )));
    }
    for e in events {
        valid_id("thread id", &e.thread_id)?;
        if e.weaver_id != sender_weaver {
            return Err(ThreadsError::Invalid(format!(
                "event {}#{} claims weaver {:?} but was sent by weaver {sender_weaver:?}",
                e.thread_id, e.seq, e.weaver_id
            )));
        }
        if e.seq == 0 || e.seq > i64::MAX as u64 {
            return Err(ThreadsError::Invalid(format!("event {} has seq {}; seqs start at 1", e.thread_id, e.seq)));
        }
        let payload_len = if e.payload.is_null() {
            0
        } else {
            serde_json::to_string(&e.payload).map(|s| s.len()).unwrap_or(usize::MAX)
        };
        if payload_len > MAX_EVENT_PAYLOAD {
            return Err(ThreadsError::Invalid(format!(
                "event {}#{} has a {payload_len}-byte payload, at most {MAX_EVENT_PAYLOAD} are accepted",
                e.thread_id, e.seq
            )));
        }
    }
    Ok(())
}

/// Parses the body of `POST /loom/v1/threads/events` (bounded by
/// [`MAX_BATCH_BYTES`](crate::wire::MAX_BATCH_BYTES)); the caller then passes the events to
/// [`append_events`] with the weaver identity it authenticated.
pub fn parse_batch(body: &[u8]) -> Result<crate::wire::EventBatch, ThreadsError> {
    if body.len() > crate::wire::MAX_BATCH_BYTES {
        return Err(ThreadsError::Invalid(format!(
            "batch body is {} bytes, at most {} are accepted; send smaller batches",
            body.len(),
            crate::wire::MAX_BATCH_BYTES
        )));
    }
    serde_json::from_slice(body).map_err(|e| ThreadsError::Invalid(format!("batch is not an EventBatch JSON: {e}")))
}

/// Stores `events` sent by `sender_weaver` (the identity loomd authenticated, not what the
/// events claim). Idempotent by `(thread_id, seq)`: a resent event is counted as a duplicate.
/// All or nothing: one bad event rejects the batch.
pub fn append_events(
    conn: &mut Connection,
    sender_weaver: &str,
    events: &[ThreadEvent],
) -> Result<AppendResponse, ThreadsError> {
    valid_id("weaver id", sender_weaver)?;
    validate_batch(sender_weaver, events)?;
    // IMMEDIATE: this transaction reads and then writes, and in WAL mode a deferred one that
    // finds another writer got in first fails at once with SQLITE_BUSY, busy timeout or not.
    let tx =
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql("starting an append"))?;
    let mut resp = AppendResponse::default();
    {
        let mut owner_q = tx
            .prepare_cached("SELECT weaver_id FROM threads WHERE id = ?1")
            .map_err(sql("preparing the owner lookup"))?;
        let mut new_thread = tx
            .prepare_cached("INSERT INTO threads (id, weaver_id, started_ms, updated_ms) VALUES (?1, ?2, ?3, ?3)")
            .map_err(sql("preparing the thread insert"))?;
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO events (thread_id, weaver_id, seq, ts_ms, kind, iteration, text, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (thread_id, seq) DO NOTHING",
            )
            .map_err(sql("preparing the event insert"))?;
        let mut fts = tx
            .prepare_cached("INSERT INTO events_fts (rowid, text, parts, meta) VALUES (?1, ?2, ?3, ?4)")
            .map_err(sql("preparing the index insert"))?;
        let mut upd = tx
            .prepare_cached(
                "UPDATE threads SET
                    iteration = max(iteration, ?2),
                    updated_ms = max(updated_ms, ?3),
                    started_ms = min(started_ms, ?3),
                    event_count = event_count + 1,
                    title = CASE WHEN ?4 IS NOT NULL AND title = '' THEN ?4 ELSE title END,
                    ended_ms = CASE WHEN ?5 IS NOT NULL THEN ?3 ELSE ended_ms END,
                    stop_reason = coalesce(?5, stop_reason)
                 WHERE id = ?1",
            )
            .map_err(sql("preparing the thread update"))?;
        let mut known: Vec<&str> = Vec::new();
        for e in events {
            if !known.contains(&e.thread_id.as_str()) {
                let owner: Option<String> = owner_q
                    .query_row([&e.thread_id], |r| r.get(0))
                    .optional()
                    .map_err(sql("looking up a thread's owner"))?;
                match owner {
                    Some(o) if o != sender_weaver => {
                        return Err(ThreadsError::WrongOwner {
                            thread_id: e.thread_id.clone(),
                            owner: o,
                            sender: sender_weaver.to_owned(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        new_thread
                            .execute(params![e.thread_id, sender_weaver, e.ts_ms])
                            .map_err(sql("creating a thread"))?;
                    }
                }
                known.push(&e.thread_id);
            }
            let text = truncate_str(&e.text, MAX_EVENT_TEXT);
            let payload = if e.payload.is_null() { None } else { Some(e.payload.to_string()) };
            let n = ins
                .execute(params![
                    e.thread_id,
                    sender_weaver,
                    e.seq as i64,
                    e.ts_ms,
                    e.kind.as_str(),
                    e.iteration,
                    text,
                    payload
                ])
                .map_err(sql("inserting an event"))?;
            if n == 0 {
                resp.duplicates += 1;
                continue;
            }
            resp.inserted += 1;
            let id = tx.last_insert_rowid();
            let meta = format!("{sender_weaver} {}", e.kind.as_str());
            fts.execute(params![id, whole_text(text), parts_text(text), meta]).map_err(sql("indexing an event"))?;
            let title = (e.kind == EventKind::ThreadStart)
                .then(|| truncate_str(text.lines().next().unwrap_or(""), 200).to_owned());
            let stop = (e.kind == EventKind::Stop).then(|| {
                e.payload
                    .get("reason")
                    .and_then(|r| serde_json::from_value::<StopReason>(r.clone()).ok())
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| text.to_owned())
            });
            upd.execute(params![e.thread_id, e.iteration, e.ts_ms, title, stop]).map_err(sql("updating a thread"))?;
        }
    }
    tx.commit().map_err(sql("committing an append"))?;
    Ok(resp)
}

/// One thread as `loom thread list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadSummary {
    pub id: String,
    pub weaver_id: String,
    pub title: String,
    pub iteration: u32,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub ended_ms: Option<i64>,
    pub stop_reason: Option<String>,
    pub event_count: u64,
}

/// One stored event, as `loom thread show --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub seq: u64,
    pub ts_ms: i64,
    pub kind: EventKind,
    pub iteration: u32,
    pub text: String,
    #[serde(skip_serializing_if = "serde_json::Value::is_null", default)]
    pub payload: serde_json::Value,
}

/// A thread with all its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadDetail {
    #[serde(flatten)]
    pub summary: ThreadSummary,
    pub events: Vec<StoredEvent>,
}

const SUMMARY_COLS: &str =
    "id, weaver_id, title, iteration, started_ms, updated_ms, ended_ms, stop_reason, event_count";

fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ThreadSummary> {
    Ok(ThreadSummary {
        id: r.get(0)?,
        weaver_id: r.get(1)?,
        title: r.get(2)?,
        iteration: r.get(3)?,
        started_ms: r.get(4)?,
        updated_ms: r.get(5)?,
        ended_ms: r.get(6)?,
        stop_reason: r.get(7)?,
        event_count: r.get::<_, i64>(8)? as u64,
    })
}

/// Threads, newest first, of one weaver or all; at most `limit`.
pub fn list_threads(conn: &Connection, weaver: Option<&str>, limit: usize) -> Result<Vec<ThreadSummary>, ThreadsError> {
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLS} FROM threads WHERE (?1 IS NULL OR weaver_id = ?1)
             ORDER BY started_ms DESC, id LIMIT ?2"
        ))
        .map_err(sql("preparing the thread list"))?;
    st.query_map(params![weaver, limit as i64], summary_row)
        .map_err(sql("listing threads"))?
        .collect::<Result<_, _>>()
        .map_err(sql("reading threads"))
}

/// A thread and its events in order.
pub fn get_thread(conn: &Connection, id: &str) -> Result<ThreadDetail, ThreadsError> {
    let summary = conn
        .query_row(&format!("SELECT {SUMMARY_COLS} FROM threads WHERE id = ?1"), [id], summary_row)
        .optional()
        .map_err(sql("reading a thread"))?
        .ok_or_else(|| ThreadsError::NotFound(id.to_owned()))?;
    let mut st = conn
        .prepare_cached(
            "SELECT seq, ts_ms, kind, iteration, text, payload FROM events
             WHERE thread_id = ?1 ORDER BY seq",
        )
        .map_err(sql("preparing the event read"))?;
    let events = st
        .query_map([id], |r| {
            let payload: Option<String> = r.get(5)?;
            Ok(StoredEvent {
                seq: r.get::<_, i64>(0)? as u64,
                ts_ms: r.get(1)?,
                kind: EventKind::parse(&r.get::<_, String>(2)?),
                iteration: r.get(3)?,
                text: r.get(4)?,
                payload: payload.and_then(|p| serde_json::from_str(&p).ok()).unwrap_or(serde_json::Value::Null),
            })
        })
        .map_err(sql("reading events"))?
        .collect::<Result<_, _>>()
        .map_err(sql("reading events"))?;
    Ok(ThreadDetail { summary, events })
}

/// What to search for and where.
#[derive(Debug, Clone, Default)]
pub struct SearchQuery {
    pub text: String,
    pub weaver: Option<String>,
    /// Only events at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only events before this time.
    pub until_ms: Option<i64>,
    pub limit: usize,
}

/// One search result: an event, where it is, and a snippet with matches in `[`…`]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub thread_id: String,
    pub weaver_id: String,
    pub seq: u64,
    pub ts_ms: i64,
    pub kind: EventKind,
    pub iteration: u32,
    pub snippet: String,
    /// BM25-style score (term frequency and length); higher is better. Exact identifier/path
    /// matches come before partial ones whatever their score.
    pub score: f64,
}

/// Ranked full-text search over every event. Exact tokens first (`parse_config`, `src/lib.rs`),
/// then, if there is room, matches of their parts (`lib.rs` in `src/lib.rs`).
pub fn search(conn: &Connection, q: &SearchQuery) -> Result<Vec<SearchHit>, ThreadsError> {
    let fq = fts_query(&q.text).ok_or_else(|| ThreadsError::EmptyQuery(q.text.clone()))?;
    let limit = q.limit.clamp(1, 1000);
    let mut hits = run_search(conn, &fq.exact, &fq.exact_terms, 0, q, limit)?;
    if hits.len() < limit
        && let Some(parts) = &fq.parts
    {
        let more = run_search(conn, parts, &fq.parts_terms, 1, q, limit)?;
        for h in more {
            if hits.len() >= limit {
                break;
            }
            if !hits.iter().any(|x| x.thread_id == h.thread_id && x.seq == h.seq) {
                hits.push(h);
            }
        }
    }
    Ok(hits)
}

/// How many of the most recent matches are ranked. A query matching more events ranks only
/// these: scoring every match of a common word over millions of events would take far longer
/// than the latency target, and recent work is what people look for.
pub const RANK_WINDOW: usize = 500;

fn run_search(
    conn: &Connection,
    expr: &str,
    terms: &[crate::text::Term],
    column: i32,
    q: &SearchQuery,
    limit: usize,
) -> Result<Vec<SearchHit>, ThreadsError> {
    let expr = match &q.weaver {
        Some(w) => format!("meta : \"{}\" AND ({expr})", w.replace('"', "\"\"")),
        None => expr.to_owned(),
    };
    // Candidates: the most recent matches, newest first. Walking doclists backwards is cheap;
    // FTS5's own bm25 is not used because its IDF reads every posting of every term.
    let mut st = conn
        .prepare_cached(
            "SELECT f.rowid, e.text FROM events_fts f JOIN events e ON e.id = f.rowid
             WHERE events_fts MATCH ?1
               AND (?2 IS NULL OR e.ts_ms >= ?2) AND (?3 IS NULL OR e.ts_ms < ?3)
             ORDER BY f.rowid DESC LIMIT ?4",
        )
        .map_err(sql("preparing a search"))?;
    let docs: Vec<(i64, crate::text::DocStats)> = st
        .query_map(params![expr, q.since_ms, q.until_ms, RANK_WINDOW as i64], |r| {
            let text = r.get_ref(1)?.as_str().unwrap_or("");
            Ok((r.get::<_, i64>(0)?, crate::text::doc_stats(text, column == 1, terms)))
        })
        .map_err(sql("searching"))?
        .collect::<Result<_, _>>()
        .map_err(sql("reading search results"))?;
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    let avgdl = docs.iter().map(|d| d.1.len).sum::<usize>() as f64 / docs.len() as f64;
    let mut scored: Vec<(f64, i64)> = docs.iter().map(|(id, d)| (crate::text::score(d, avgdl), *id)).collect();
    // Best score first; among equals, the most recent.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    scored.truncate(limit);
    let mut hit = conn
        .prepare_cached(
            "SELECT e.thread_id, e.weaver_id, e.seq, e.ts_ms, e.kind, e.iteration,
                    (SELECT snippet(events_fts, ?2, '[', ']', '…', 12) FROM events_fts
                      WHERE events_fts MATCH ?3 AND rowid = e.id)
             FROM events e WHERE e.id = ?1",
        )
        .map_err(sql("preparing a search"))?;
    let mut out = Vec::with_capacity(scored.len());
    for (score, rowid) in scored {
        let h = hit
            .query_row(params![rowid, column, expr], |r| {
                Ok(SearchHit {
                    thread_id: r.get(0)?,
                    weaver_id: r.get(1)?,
                    seq: r.get::<_, i64>(2)? as u64,
                    ts_ms: r.get(3)?,
                    kind: EventKind::parse(&r.get::<_, String>(4)?),
                    iteration: r.get(5)?,
                    snippet: r.get::<_, Option<String>>(6)?.unwrap_or_default(),
                    score,
                })
            })
            .optional()
            .map_err(sql("reading a search result"))?;
        // The index matches weaver ids case-insensitively; the filter is exact.
        if let Some(h) = h
            && q.weaver.as_ref().is_none_or(|w| *w == h.weaver_id)
        {
            out.push(h);
        }
    }
    Ok(out)
}

/// Removes a thread, its events and their index entries.
pub fn delete_thread(conn: &mut Connection, id: &str) -> Result<(), ThreadsError> {
    let tx =
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql("starting a delete"))?;
    {
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM threads WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(sql("looking up a thread"))?;
        if exists.is_none() {
            return Err(ThreadsError::NotFound(id.to_owned()));
        }
        let mut st = tx
            .prepare("SELECT id, text, meta FROM events WHERE thread_id = ?1")
            .map_err(sql("reading events to delete"))?;
        let rows: Vec<(i64, String, String)> = st
            .query_map([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sql("reading events to delete"))?
            .collect::<Result<_, _>>()
            .map_err(sql("reading events to delete"))?;
        let mut del = tx
            .prepare("INSERT INTO events_fts (events_fts, rowid, text, parts, meta) VALUES ('delete', ?1, ?2, ?3, ?4)")
            .map_err(sql("preparing index deletes"))?;
        for (rowid, text, meta) in rows {
            del.execute(params![rowid, whole_text(&text), parts_text(&text), meta])
                .map_err(sql("removing an event from the index"))?;
        }
        tx.execute("DELETE FROM events WHERE thread_id = ?1", [id]).map_err(sql("deleting events"))?;
        tx.execute("DELETE FROM threads WHERE id = ?1", [id]).map_err(sql("deleting a thread"))?;
    }
    tx.commit().map_err(sql("committing a delete"))
}
