//! The store's audit index behind `loom audit [--weaver ID] [--kind K] [--since T]`.
//! The lead owns the connection; this module owns the `audit_events` table.

use rusqlite::{Connection, params};

use crate::event::{AuditEvent, EventKind};

/// An index operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("audit index: SQLite failed while {doing}")]
    Sql {
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("audit index: stored event {id} is not valid JSON; the row is corrupt")]
    Corrupt {
        id: i64,
        #[source]
        source: serde_json::Error,
    },
}

fn sql(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> IndexError {
    move |source| IndexError::Sql { doing, source }
}

/// Which events `loom audit` wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub weaver: Option<String>,
    pub kind: Option<EventKind>,
    /// Only events at or after this wall time (ns since the epoch).
    pub since_unix_ns: Option<u64>,
    /// Only rows after this row id (for `-f`: pass the last id you saw).
    pub after_id: Option<i64>,
    /// At most this many rows (default 1000).
    pub limit: Option<u32>,
}

/// This index's row in the shared `schema_versions` table.
pub const COMPONENT: &str = "audit";

const MIGRATIONS: &[&str] = &[
    // 1. `IF NOT EXISTS`: before the shared scheme the table was created on every batch, so
    // an older database has it with no version row; this step adopts it as it is.
    "CREATE TABLE IF NOT EXISTS audit_events (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        time_unix_ns INTEGER NOT NULL,
        weaver TEXT NOT NULL,
        kind TEXT NOT NULL,
        pid INTEGER NOT NULL,
        ppid INTEGER NOT NULL,
        event TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_events_weaver_time ON audit_events(weaver, time_unix_ns);
    CREATE INDEX IF NOT EXISTS audit_events_kind_time ON audit_events(kind, time_unix_ns);
    CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events(time_unix_ns);",
];

/// Brings the `audit_events` table up to this crate's version; once, when the caller opens
/// the connection it will index into.
pub fn migrate(conn: &mut Connection) -> Result<(), loom_sqlite::MigrateError> {
    loom_sqlite::migrate(conn, COMPONENT, MIGRATIONS)
}

/// The `audit_events` table over a connection the caller owns and has [`migrate`]d.
#[derive(Debug)]
pub struct AuditIndex<'c> {
    conn: &'c Connection,
}

impl<'c> AuditIndex<'c> {
    pub fn new(conn: &'c Connection) -> Self {
        Self { conn }
    }

    /// Insert a batch in one transaction; returns the last row id.
    pub fn insert(&self, events: &[AuditEvent]) -> Result<i64, IndexError> {
        let tx = self.conn.unchecked_transaction().map_err(sql("starting an insert"))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO audit_events (seq, time_unix_ns, weaver, kind, pid, ppid, event)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sql("preparing an insert"))?;
            for ev in events {
                let json = serde_json::to_string(ev).expect("AuditEvent always serializes");
                stmt.execute(params![
                    ev.seq as i64,
                    ev.time_unix_ns as i64,
                    ev.weaver,
                    ev.kind().as_str(),
                    ev.pid,
                    ev.ppid,
                    json
                ])
                .map_err(sql("inserting an event"))?;
            }
        }
        let last = tx.last_insert_rowid();
        tx.commit().map_err(sql("committing events"))?;
        Ok(last)
    }

    /// Matching events, oldest first, with their row ids.
    pub fn query(&self, q: &AuditQuery) -> Result<Vec<(i64, AuditEvent)>, IndexError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, event FROM audit_events
                 WHERE (?1 IS NULL OR weaver = ?1)
                   AND (?2 IS NULL OR kind = ?2)
                   AND (?3 IS NULL OR time_unix_ns >= ?3)
                   AND (?4 IS NULL OR id > ?4)
                 ORDER BY time_unix_ns, id
                 LIMIT ?5",
            )
            .map_err(sql("preparing a query"))?;
        let rows = stmt
            .query_map(
                params![
                    q.weaver,
                    q.kind.map(EventKind::as_str),
                    q.since_unix_ns.map(|t| t.min(i64::MAX as u64) as i64),
                    q.after_id,
                    q.limit.unwrap_or(1000)
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .map_err(sql("querying events"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, json) = row.map_err(sql("reading an event row"))?;
            let ev = serde_json::from_str(&json).map_err(|source| IndexError::Corrupt { id, source })?;
            out.push((id, ev));
        }
        Ok(out)
    }

    /// Delete events older than `before_unix_ns`; returns how many.
    pub fn prune(&self, before_unix_ns: u64) -> Result<usize, IndexError> {
        self.conn
            .execute(
                "DELETE FROM audit_events WHERE time_unix_ns < ?1",
                params![before_unix_ns.min(i64::MAX as u64) as i64],
            )
            .map_err(sql("pruning old events"))
    }
}

/// A `--since` value that cannot be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--since {0:?} is not a time: use a duration ago (30s, 10m, 2h, 7d), seconds since the epoch (@1700000000) or UTC RFC 3339 (2026-01-02T03:04:05Z)"
)]
pub struct SinceError(pub String);

/// Parse `--since` into ns since the epoch, relative to `now_unix_ns`.
pub fn parse_since(s: &str, now_unix_ns: u64) -> Result<u64, SinceError> {
    let err = || SinceError(s.to_string());
    let s = s.trim();
    if let Some(secs) = s.strip_prefix('@') {
        let secs: u64 = secs.parse().map_err(|_| err())?;
        return secs.checked_mul(1_000_000_000).ok_or_else(err);
    }
    let unit = s.chars().last().filter(|c| "smhd".contains(*c));
    if let Some(unit) = unit
        && let Ok(n) = s[..s.len() - 1].parse::<u64>()
    {
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86400,
        };
        let ago = n.checked_mul(mult).and_then(|x| x.checked_mul(1_000_000_000)).ok_or_else(err)?;
        return Ok(now_unix_ns.saturating_sub(ago));
    }
    parse_rfc3339_utc(s).ok_or_else(err)
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` (or a space instead of `T`, `Z` optional) as UTC.
fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s.split_once(['T', ' ']).unwrap_or((s, "00:00:00"));
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: i64 = d.next()?.parse().ok()?;
    let day: i64 = d.next()?.parse().ok()?;
    // RFC 3339 years have four digits; bounding them keeps the day arithmetic from overflowing.
    if d.next().is_some() || !(0..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let ss: i64 = t.next().unwrap_or("0").parse().ok()?;
    if t.next().is_some() || !(0..=23).contains(&hh) || !(0..=59).contains(&mm) || !(0..=60).contains(&ss) {
        return None;
    }
    let nanos: i64 = if frac.is_empty() {
        0
    } else {
        if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        format!("{frac:0<9}").parse().ok()?
    };
    // days from civil (Howard Hinnant's algorithm)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs).ok()?.checked_mul(1_000_000_000)?.checked_add(nanos as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventDetail;

    fn ev(seq: u64, weaver: &str, t: u64, detail: EventDetail) -> AuditEvent {
        AuditEvent {
            seq,
            ts_boot_ns: t,
            time_unix_ns: t,
            cgroup_id: 1,
            comm: "c".into(),
            ..AuditEvent::new(weaver, "x", detail)
        }
    }

    fn listen() -> EventDetail {
        EventDetail::Listen { fd: 3, backlog: 1 }
    }
    fn bpf() -> EventDetail {
        EventDetail::Bpf { cmd: 5, cmd_name: None, size: 0 }
    }

    #[test]
    fn filters_by_weaver_kind_since_and_follow_position() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap(); // idempotent
        let idx = AuditIndex::new(&conn);
        idx.insert(&[ev(1, "a", 10, listen()), ev(2, "b", 20, listen()), ev(3, "a", 30, bpf())]).unwrap();
        let seqs = |q: AuditQuery| -> Vec<u64> { idx.query(&q).unwrap().into_iter().map(|(_, e)| e.seq).collect() };
        assert_eq!(seqs(AuditQuery::default()), vec![1, 2, 3]);
        let weaver_a = AuditQuery { weaver: Some("a".into()), ..Default::default() };
        assert_eq!(seqs(weaver_a.clone()), vec![1, 3]);
        assert_eq!(seqs(AuditQuery { kind: Some(EventKind::Bpf), ..Default::default() }), vec![3]);
        assert_eq!(seqs(AuditQuery { since_unix_ns: Some(20), ..Default::default() }), vec![2, 3]);
        let first = idx.query(&weaver_a).unwrap()[0].0;
        assert_eq!(seqs(AuditQuery { after_id: Some(first), ..weaver_a }), vec![3]);
        assert_eq!(idx.prune(25).unwrap(), 2);
        assert_eq!(seqs(AuditQuery::default()), vec![3]);
        let got = idx.query(&AuditQuery::default()).unwrap();
        assert_eq!(got[0].1, ev(3, "a", 30, bpf()));
    }

    /// An index from before the shared scheme (table, no version row) keeps its rows.
    #[test]
    fn an_unversioned_index_is_adopted_with_its_rows_and_a_newer_one_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        AuditIndex::new(&conn).insert(&[ev(1, "a", 10, listen())]).unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(AuditIndex::new(&conn).query(&AuditQuery::default()).unwrap().len(), 1);
        let version = |c: &Connection| -> i64 {
            c.query_row("SELECT version FROM schema_versions WHERE component = 'audit'", [], |r| r.get(0)).unwrap()
        };
        assert_eq!(version(&conn), 1);
        conn.execute("UPDATE schema_versions SET version = 2 WHERE component = 'audit'", []).unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(matches!(err, loom_sqlite::MigrateError::TooNew { found: 2, known: 1, .. }), "{err:?}");
    }

    #[test]
    fn since_accepts_durations_epoch_and_rfc3339() {
        let now = 1_000_000 * 1_000_000_000;
        assert_eq!(parse_since("30s", now), Ok(now - 30_000_000_000));
        assert_eq!(parse_since("2h", now), Ok(now - 7200 * 1_000_000_000));
        assert_eq!(parse_since("@5", now), Ok(5_000_000_000));
        assert_eq!(parse_since("1970-01-02T00:00:00Z", now), Ok(86400 * 1_000_000_000));
        assert_eq!(parse_since("2026-11-21T11:25:48.5Z", now), Ok(1_795_260_348_500_000_000));
        for bad in ["", "yesterday", "10x", "2026-13-01", "@-1", "99999999999999999999d"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }
}
