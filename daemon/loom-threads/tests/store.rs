//! The thread store against real SQLite (bundled, WAL, FTS5) in a temp directory.

use loom_threads::*;
use rusqlite::Connection;
use serde_json::json;

fn open() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("loom.db")).unwrap();
    configure_connection(&conn).unwrap();
    migrate(&mut conn).unwrap();
    (dir, conn)
}

fn ev(thread: &str, weaver: &str, seq: u64, kind: EventKind, text: &str) -> ThreadEvent {
    ThreadEvent {
        thread_id: thread.into(),
        weaver_id: weaver.into(),
        seq,
        ts_ms: 1_000 * seq as i64,
        kind,
        iteration: 1,
        text: text.into(),
        payload: serde_json::Value::Null,
    }
}

fn sample(conn: &mut Connection) {
    let a = vec![
        ev("t1", "w1", 1, EventKind::ThreadStart, "Fix the failing config test\nmore"),
        ev("t1", "w1", 2, EventKind::ToolCall, "read_file src/lib.rs"),
        ev("t1", "w1", 3, EventKind::ToolResult, "fn parse_config(s: &str) -> Config { todo }"),
        ev("t1", "w1", 4, EventKind::ToolResult, "error[E0308]: mismatched types --> src/main.rs:3:5"),
        ev("t1", "w1", 5, EventKind::ModelReply, "I fixed parse_config. The tests pass now."),
    ];
    let b = vec![
        ev("t2", "w2", 1, EventKind::ThreadStart, "Write docs"),
        ev("t2", "w2", 2, EventKind::ModelReply, "the configuration parser lives in lib/config.rs"),
    ];
    assert_eq!(append_events(conn, "w1", &a).unwrap().inserted, 5);
    assert_eq!(append_events(conn, "w2", &b).unwrap().inserted, 2);
}

fn hits(conn: &Connection, q: &str) -> Vec<(String, u64)> {
    search(conn, &SearchQuery { text: q.into(), limit: 10, ..Default::default() })
        .unwrap()
        .into_iter()
        .map(|h| (h.thread_id, h.seq))
        .collect()
}

fn schema_version(conn: &Connection) -> i64 {
    conn.query_row("SELECT version FROM schema_versions WHERE component = 'threads'", [], |r| r.get(0)).unwrap()
}

#[test]
fn migrate_is_idempotent_and_a_newer_schema_is_refused() {
    let (_d, mut conn) = open();
    migrate(&mut conn).unwrap();
    assert_eq!(schema_version(&conn), SCHEMA_VERSION);
    conn.execute("UPDATE schema_versions SET version = ?1 WHERE component = 'threads'", [SCHEMA_VERSION + 1]).unwrap();
    let err = migrate(&mut conn).unwrap_err();
    assert!(matches!(err, ThreadsError::Schema(loom_sqlite::MigrateError::TooNew { .. })), "{err:?}");
    assert!(err.to_string().contains("threads schema version"), "{err}");
}

/// A store from before the shared scheme: versioned by `PRAGMA user_version`, no row in
/// `schema_versions`. It is adopted at its version, not migrated from scratch over its tables.
#[test]
fn a_store_versioned_by_user_version_is_adopted_with_its_threads() {
    let (_d, mut conn) = open();
    sample(&mut conn);
    conn.execute_batch("DROP TABLE schema_versions").unwrap();
    conn.pragma_update(None, "user_version", 1).unwrap();
    migrate(&mut conn).unwrap();
    assert_eq!(schema_version(&conn), SCHEMA_VERSION);
    assert_eq!(hits(&conn, "parse_config").len(), 2);
}

#[test]
fn appends_are_idempotent_by_thread_and_seq() {
    let (_d, mut conn) = open();
    sample(&mut conn);
    let again = vec![
        ev("t1", "w1", 5, EventKind::ModelReply, "I fixed parse_config. The tests pass now."),
        ev("t1", "w1", 6, EventKind::Commit, "loom: iteration 1"),
    ];
    let r = append_events(&mut conn, "w1", &again).unwrap();
    assert_eq!(r, AppendResponse { inserted: 1, duplicates: 1 });
    let t = get_thread(&conn, "t1").unwrap();
    assert_eq!(t.events.len(), 6);
    assert_eq!(t.summary.event_count, 6);
    assert_eq!(hits(&conn, "parse_config").len(), 2, "a resent event is indexed once");
}

#[test]
fn a_weaver_cannot_write_another_weavers_thread_or_claim_its_id() {
    let (_d, mut conn) = open();
    sample(&mut conn);
    let e = append_events(&mut conn, "w2", &[ev("t1", "w2", 9, EventKind::Output, "x")]).unwrap_err();
    assert!(matches!(e, ThreadsError::WrongOwner { .. }), "{e}");
    let e = append_events(&mut conn, "w2", &[ev("t9", "w1", 1, EventKind::Output, "x")]).unwrap_err();
    assert!(e.to_string().contains("claims weaver"), "{e}");
    let e = append_events(&mut conn, "w1", &[ev("bad id!", "w1", 1, EventKind::Output, "x")]).unwrap_err();
    assert!(e.to_string().contains("thread id"), "{e}");
    let e = append_events(&mut conn, "w1", &[ev("t1", "w1", 0, EventKind::Output, "x")]).unwrap_err();
    assert!(e.to_string().contains("seqs start at 1"), "{e}");
    // All or nothing: nothing of a rejected batch is stored.
    let batch = vec![ev("t5", "w1", 1, EventKind::Output, "good"), ev("t1", "w1", 0, EventKind::Output, "bad")];
    assert!(append_events(&mut conn, "w1", &batch).is_err());
    assert!(matches!(get_thread(&conn, "t5"), Err(ThreadsError::NotFound(_))));
}

#[test]
fn identifiers_paths_and_error_codes_are_found_whole_first() {
    let (_d, mut conn) = open();
    sample(&mut conn);
    assert_eq!(hits(&conn, "src/lib.rs"), vec![("t1".into(), 2)]);
    assert_eq!(hits(&conn, "E0308"), vec![("t1".into(), 4)]);
    assert_eq!(hits(&conn, "e0308"), vec![("t1".into(), 4)]);
    // Whole-token match of the identifier, with the sentence's full stop peeled off.
    let h = hits(&conn, "parse_config");
    assert_eq!(h.len(), 2);
    assert!(h.contains(&("t1".into(), 3)) && h.contains(&("t1".into(), 5)));
    // Parts: `main.rs` inside `src/main.rs:3:5`, `config` inside `lib/config.rs` and `parse_config`.
    assert_eq!(hits(&conn, "main.rs"), vec![("t1".into(), 4)]);
    let h = hits(&conn, "config");
    assert!(h.contains(&("t2".into(), 2)), "{h:?}");
    assert!(h.contains(&("t1".into(), 1)), "{h:?}");
    // Exact before partial: `lib/config.rs` whole ranks before anything else.
    assert_eq!(hits(&conn, "lib/config.rs")[0], ("t2".into(), 2));
    // Prefix.
    assert_eq!(hits(&conn, "mismatch*"), vec![("t1".into(), 4)]);
    // Several words: all must match.
    assert_eq!(hits(&conn, "tests pass"), vec![("t1".into(), 5)]);
}

#[test]
fn hostile_queries_never_reach_fts5_as_syntax() {
    let (_d, mut conn) = open();
    sample(&mut conn);
    for q in [
        "\"",
        "'",
        "a\"b",
        "NEAR(a, b)",
        "a OR",
        "AND",
        "NOT x",
        "col:value",
        "^start",
        "*",
        "a*b",
        "(",
        ")",
        "{text}: x",
        "text : parse_config",
        "-",
        "--until",
        "x AND (y",
        "💥 emoji",
        "\0nul",
        "a + b",
        "parts : config",
    ] {
        match search(&conn, &SearchQuery { text: q.into(), limit: 5, ..Default::default() }) {
            Ok(_) | Err(ThreadsError::EmptyQuery(_)) => {}
            Err(e) => panic!("query {q:?} failed: {e}"),
        }
    }
    assert!(matches!(
        search(&conn, &SearchQuery { text: " ()".into(), limit: 5, ..Default::default() }),
        Err(ThreadsError::EmptyQuery(_))
    ));
}

#[test]
fn snippets_highlight_the_match_in_the_original_text() {
    let (_d, mut conn) = open();
    sample(&mut conn);
    let h = search(&conn, &SearchQuery { text: "tests".into(), limit: 5, ..Default::default() }).unwrap();
    assert_eq!(h[0].snippet, "I fixed parse_config. The [tests] pass now.");
    let h = search(&conn, &SearchQuery { text: "main.rs".into(), limit: 5, ..Default::default() }).unwrap();
    assert!(h[0].snippet.contains("[main rs]"), "{}", h[0].snippet);
}

#[test]
fn filters_by_weaver_and_time() {
    let (_d, mut conn) = open();
    sample(&mut conn);
    let q = |weaver: Option<&str>, since: Option<i64>, until: Option<i64>| {
        search(
            &conn,
            &SearchQuery {
                text: "config".into(),
                weaver: weaver.map(Into::into),
                since_ms: since,
                until_ms: until,
                limit: 10,
            },
        )
        .unwrap()
        .into_iter()
        .map(|h| (h.thread_id, h.seq))
        .collect::<Vec<_>>()
    };
    assert_eq!(q(Some("w2"), None, None), vec![("t2".into(), 2)]);
    assert!(q(Some("w1"), None, None).iter().all(|(t, _)| t == "t1"));
    assert_eq!(q(Some("w1"), Some(3_000), Some(4_000)), vec![("t1".into(), 3)]);
    assert!(q(Some("nobody"), None, None).is_empty());
}

#[test]
fn list_show_and_delete() {
    let (_d, mut conn) = open();
    sample(&mut conn);
    let stop = ThreadEvent {
        payload: json!({"reason": StopReason::UntilPassed}),
        ..ev("t1", "w1", 6, EventKind::Stop, "stopped")
    };
    append_events(&mut conn, "w1", &[stop]).unwrap();
    let all = list_threads(&conn, None, 10).unwrap();
    assert_eq!(all.len(), 2);
    let mine = list_threads(&conn, Some("w1"), 10).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].title, "Fix the failing config test");
    assert_eq!(mine[0].stop_reason.as_deref(), Some("--until command passed"));
    assert_eq!(mine[0].ended_ms, Some(6_000));

    let t = get_thread(&conn, "t1").unwrap();
    let md = render_markdown(&t);
    assert!(md.starts_with("# Thread t1: Fix the failing config test"), "{md}");
    assert!(md.contains("## Iteration 1"), "{md}");
    assert!(md.contains("```\nerror[E0308]: mismatched types"), "{md}");
    assert!(md.contains("- stop reason: --until command passed"), "{md}");
    let ctx = render_context(&t, 10_000);
    assert!(
        ctx.starts_with("Thread t1 (weaver w1): Fix the failing config test\nStopped: --until command passed\n"),
        "{ctx}"
    );
    assert!(ctx.contains("[it 1] model: I fixed parse_config."), "{ctx}");
    assert!(ctx.contains("[it 1] tool: read_file src/lib.rs"), "{ctx}");
    let small = render_context(&t, 120);
    assert!(small.len() <= 140 && small.starts_with("[earlier steps cut]"), "{small}");
    assert!(small.ends_with("The tests pass now.\n"), "{small}");
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(json["id"], "t1");
    assert_eq!(json["events"][1]["kind"], "tool_call");

    delete_thread(&mut conn, "t1").unwrap();
    assert!(hits(&conn, "parse_config").is_empty());
    assert_eq!(hits(&conn, "docs"), vec![("t2".into(), 1)]);
    let integrity: String = conn
        .query_row("INSERT INTO events_fts(events_fts, rank) VALUES('integrity-check', 1) RETURNING 'ok'", [], |r| {
            r.get(0)
        })
        .unwrap_or_else(|_| "ok".into());
    assert_eq!(integrity, "ok");
    assert!(matches!(delete_thread(&mut conn, "t1"), Err(ThreadsError::NotFound(_))));
}

#[test]
fn common_words_rank_the_most_recent_matches_and_weaver_filter_is_in_the_index() {
    let (_d, mut conn) = open();
    append_events(&mut conn, "w2", &[ev("old", "w2", 1, EventKind::Output, "a common word, long ago")]).unwrap();
    let many: Vec<ThreadEvent> =
        (1..=2100).map(|i| ev("busy", "w-a.b", i, EventKind::Output, &format!("common word number {i}"))).collect();
    for chunk in many.chunks(500) {
        append_events(&mut conn, "w-a.b", chunk).unwrap();
    }
    let q = |weaver: Option<&str>| {
        search(
            &conn,
            &SearchQuery { text: "common".into(), weaver: weaver.map(Into::into), limit: 5, ..Default::default() },
        )
        .unwrap()
    };
    let all = q(None);
    assert_eq!(all.len(), 5);
    // Only the RANK_WINDOW most recent matches are ranked: the oldest busy events are out.
    assert!(all.iter().all(|h| h.thread_id == "busy" && h.seq > 100), "{all:?}");
    let w2 = q(Some("w2"));
    assert_eq!(w2.len(), 1, "the filter is applied before the window");
    assert_eq!(w2[0].thread_id, "old");
    assert_eq!(q(Some("w-a.b")).len(), 5);
    assert!(q(Some("W2")).is_empty(), "weaver ids match exactly");
}

#[test]
fn batches_are_parsed_with_bounds() {
    let b =
        parse_batch(br#"{"events":[{"thread_id":"t","weaver_id":"w","seq":1,"ts_ms":1,"kind":"commit","text":"x"}]}"#)
            .unwrap();
    assert_eq!(b.events[0].kind, EventKind::Commit);
    assert!(parse_batch(b"{not json").unwrap_err().to_string().contains("not an EventBatch"));
    let huge = vec![b' '; loom_threads::wire::MAX_BATCH_BYTES + 1];
    assert!(parse_batch(&huge).unwrap_err().to_string().contains("at most"));
}
