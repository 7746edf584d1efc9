//! Property tests of what a weaver and a client send the thread store: any batch body parses
//! or is refused, any batch that parses is stored or refused whole, and whatever is stored can
//! be listed, shown, rendered and searched with any query, never a panic.

use loom_threads::*;
use proptest::prelude::*;
use proptest::sample::select;
use rusqlite::Connection;
use support::cases;

/// The helpers every crate's property tests share, defined once in loom-core's.
#[path = "../../loom-core/tests/fuzz/support.rs"]
mod support;

fn open() -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    configure_connection(&conn).unwrap();
    migrate(&mut conn).unwrap();
    conn
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-z_./ ]{0,40}",
        1 => Just("\"quoted\" AND NOT * ( NEAR(a b) ) ^ -x : meta".to_string()),
        1 => ("\\PC{0,8}", 16_000..17_000usize).prop_map(|(s, n)| s.repeat(n / s.len().max(1)).chars().take(n).collect()),
    ]
}

fn payload() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn event() -> impl Strategy<Value = ThreadEvent> {
    (
        prop_oneof![9 => select(vec!["t1", "t2", "a.b:c-d_e"]).prop_map(str::to_string), 1 => any::<String>()],
        prop_oneof![19 => Just("w1".to_string()), 1 => Just("w2".to_string())],
        prop_oneof![9 => 1..6u64, 1 => any::<u64>()],
        any::<i64>(),
        select(vec!["thread_start", "tool_call", "tool_result", "stop", "error", "output", "from_the_future"]),
        any::<u32>(),
        text(),
        payload(),
    )
        .prop_map(|(thread_id, weaver_id, seq, ts_ms, kind, iteration, text, payload)| ThreadEvent {
            thread_id,
            weaver_id,
            seq,
            ts_ms,
            kind: EventKind::parse(kind),
            iteration,
            text,
            payload,
        })
}

fn check_store(conn: &Connection, queries: &[(String, Option<String>)]) -> Result<(), TestCaseError> {
    let threads = list_threads(conn, None, 100).map_err(|e| TestCaseError::fail(e.to_string()))?;
    for t in &threads {
        let detail = get_thread(conn, &t.id).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let md = render_markdown(&detail);
        prop_assert!(md.contains(&t.id));
        let _ = render_context(&detail, 4096);
    }
    for (q, weaver) in queries {
        let query = SearchQuery { text: q.clone(), weaver: weaver.clone(), since_ms: None, until_ms: None, limit: 20 };
        match search(conn, &query) {
            Ok(hits) => prop_assert!(hits.len() <= 20),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_batch_body_parses_or_is_refused(body in prop::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(batch) = parse_batch(&body) {
            let _ = validate_batch("w1", &batch.events);
        }
    }

    #[test]
    fn any_batch_is_stored_or_refused_whole(
        events in prop::collection::vec(event(), 0..5),
        queries in prop::collection::vec((text(), prop::option::of(any::<String>())), 1..4),
    ) {
        let body = serde_json::to_vec(&EventBatch { events }).unwrap();
        let batch = parse_batch(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut conn = open();
        match append_events(&mut conn, "w1", &batch.events) {
            Ok(r) => {
                prop_assert_eq!(r.inserted + r.duplicates, batch.events.len());
                let stored: usize = list_threads(&conn, None, 100).unwrap().iter().map(|t| t.event_count as usize).sum();
                prop_assert_eq!(stored, r.inserted);
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(list_threads(&conn, None, 100).unwrap().is_empty(), "a refused batch left threads");
            }
        }
        check_store(&conn, &queries)?;
    }
}
