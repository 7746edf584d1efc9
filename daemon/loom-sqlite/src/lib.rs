//! The one migration scheme every SQLite component of loom uses (loomd's weavers, the usage
//! store, `loom-threads`, `loom-audit`'s index). They share one database file, so each is
//! versioned on its own row of one `schema_versions` table and adds tables without touching
//! the others. A component applies its steps once, when it opens its connection; a version
//! newer than the binary's steps is refused instead of being written over by older code.
//!
//! This is its own crate because loom-core has no I/O and the components' crates must not
//! depend on each other (loom-audit on loom-threads, or either on loomd).

use rusqlite::{Connection, OptionalExtension, params};

/// A migration that could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// SQLite failed; `doing` names the step.
    #[error("{component} schema: SQLite failed while {doing}")]
    Sql {
        component: String,
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer loom: running older code on it could lose data.
    #[error(
        "{component} schema version {found} is newer than this binary knows ({known}): run the newer loomd, \
         or restore a backup of the state directory made with this version"
    )]
    TooNew { component: String, found: i64, known: i64 },
}

/// The version `component`'s steps bring its tables to.
pub fn known_version(steps: &[&str]) -> i64 {
    steps.len() as i64
}

/// The version recorded for `component`, 0 when it never migrated.
pub fn version(conn: &Connection, component: &str) -> Result<i64, MigrateError> {
    ensure_table(conn, component)?;
    conn.query_row("SELECT version FROM schema_versions WHERE component = ?1", [component], |r| r.get(0))
        .optional()
        .map_err(sql(component, "reading the schema version"))
        .map(|v| v.unwrap_or(0))
}

/// Records `version` for `component` if it has no row yet: for databases a component
/// versioned some other way before this scheme (e.g. with `PRAGMA user_version`).
pub fn adopt(conn: &Connection, component: &str, version: i64) -> Result<(), MigrateError> {
    ensure_table(conn, component)?;
    conn.execute(
        "INSERT INTO schema_versions (component, version) VALUES (?1, ?2) ON CONFLICT(component) DO NOTHING",
        params![component, version],
    )
    .map_err(sql(component, "adopting an earlier schema version"))?;
    Ok(())
}

/// Applies `component`'s steps that are not applied yet, in order, each in its own
/// transaction with its version bump, so a crash leaves the schema at a step boundary.
pub fn migrate(conn: &mut Connection, component: &str, steps: &[&str]) -> Result<(), MigrateError> {
    let found = version(conn, component)?;
    let known = known_version(steps);
    if found > known {
        return Err(MigrateError::TooNew { component: component.to_string(), found, known });
    }
    for (i, step) in steps.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(sql(component, "starting a migration"))?;
        tx.execute_batch(step).map_err(sql(component, "applying a migration"))?;
        tx.execute(
            "INSERT INTO schema_versions (component, version) VALUES (?1, ?2)
             ON CONFLICT(component) DO UPDATE SET version = excluded.version",
            params![component, i as i64 + 1],
        )
        .map_err(sql(component, "recording the schema version"))?;
        tx.commit().map_err(sql(component, "committing a migration"))?;
    }
    Ok(())
}

fn ensure_table(conn: &Connection, component: &str) -> Result<(), MigrateError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    )
    .map_err(sql(component, "creating the schema_versions table"))
}

fn sql(component: &str, doing: &'static str) -> impl FnOnce(rusqlite::Error) -> MigrateError {
    let component = component.to_string();
    move |source| MigrateError::Sql { component, doing, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &[&str] = &["CREATE TABLE a (x INTEGER)"];
    const V2: &[&str] = &["CREATE TABLE a (x INTEGER)", "ALTER TABLE a ADD COLUMN y TEXT NOT NULL DEFAULT 'd'"];

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn an_old_database_migrates_and_keeps_its_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "a", V1).unwrap();
        conn.execute("INSERT INTO a (x) VALUES (7)", []).unwrap();
        migrate(&mut conn, "a", V2).unwrap();
        assert_eq!(version(&conn, "a").unwrap(), 2);
        let y: String = conn.query_row("SELECT y FROM a WHERE x = 7", [], |r| r.get(0)).unwrap();
        assert_eq!(y, "d");
        // Applied once: a second open runs nothing (the ALTER would fail if it ran again).
        migrate(&mut conn, "a", V2).unwrap();
    }

    #[test]
    fn components_version_independently_in_one_table() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "a", V2).unwrap();
        migrate(&mut conn, "b", &["CREATE TABLE b (z INTEGER)"]).unwrap();
        assert_eq!((version(&conn, "a").unwrap(), version(&conn, "b").unwrap()), (2, 1));
        assert_eq!(count(&conn, "SELECT count(*) FROM schema_versions"), 2);
    }

    #[test]
    fn a_newer_schema_is_refused_with_both_versions_and_left_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, "a", V2).unwrap();
        let err = migrate(&mut conn, "a", V1).unwrap_err();
        assert!(matches!(err, MigrateError::TooNew { found: 2, known: 1, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("a schema version 2 is newer than this binary knows (1)"), "{msg}");
        assert!(msg.contains("run the newer loomd"), "{msg}");
        assert_eq!(version(&conn, "a").unwrap(), 2);
    }

    #[test]
    fn a_failed_step_rolls_back_to_the_last_good_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        let bad: &[&str] = &["CREATE TABLE a (x INTEGER)", "CREATE TABLE c (q); THIS IS NOT SQL"];
        let err = migrate(&mut conn, "a", bad).unwrap_err();
        assert!(matches!(err, MigrateError::Sql { doing: "applying a migration", .. }), "{err:?}");
        assert_eq!(version(&conn, "a").unwrap(), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM sqlite_master WHERE name = 'c'"), 0);
    }

    #[test]
    fn adopt_seeds_a_version_only_once() {
        let conn = Connection::open_in_memory().unwrap();
        adopt(&conn, "a", 1).unwrap();
        adopt(&conn, "a", 5).unwrap();
        assert_eq!(version(&conn, "a").unwrap(), 1);
    }
}
