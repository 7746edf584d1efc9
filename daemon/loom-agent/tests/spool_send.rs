//! The spool's delivery to a stand-in for loomd's event intake (real loom-threads store).

mod support;

use loom_agent::spool::{EventsApi, Spool};
use loom_threads::EventKind;
use serde_json::json;
use support::FakeLoomd;

#[tokio::test]
async fn a_large_backlog_goes_in_bounded_batches_and_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let loomd = FakeLoomd::start(dir.path().join("loomd.db"), "tok", "w1").await;
    let api = Some(EventsApi::new(&loomd.base_url, "tok".into()));
    let mut s = Spool::open(&dir.path().join("state"), "w1", api.clone()).unwrap();
    let big = "lorem ipsum parse_config ".repeat(600); // ~15 KB of text per event
    for i in 0..1200 {
        s.record(EventKind::ToolResult, 1, &big, json!({"i": i, "blob": "x".repeat(20_000)})).unwrap();
    }
    assert_eq!(s.flush(std::time::Duration::from_secs(10)).await.unwrap(), 1200);
    assert_eq!(s.unacked(), 0);
    let posts = *loomd.posts.lock().unwrap();
    assert!(posts >= 6, "1200 events of ~25 KB need several batches under the 4 MiB target, got {posts}");
    // A restart resends nothing that was acknowledged; a second flush is a no-op.
    let mut s = Spool::open(&dir.path().join("state"), "w1", api).unwrap();
    assert_eq!(s.unacked(), 0);
    assert_eq!(s.flush(std::time::Duration::from_secs(10)).await.unwrap(), 0);
    let t = loom_threads::get_thread(&loomd.conn(), s.thread_id()).unwrap();
    assert_eq!(t.events.len(), 1200);
    assert_eq!(t.events[1199].payload["i"], 1199);
}

#[tokio::test]
async fn a_refusing_loomd_keeps_events_for_later() {
    let dir = tempfile::tempdir().unwrap();
    let loomd = FakeLoomd::start(dir.path().join("loomd.db"), "right-token", "w1").await;
    let mut s = Spool::open(dir.path(), "w1", Some(EventsApi::new(&loomd.base_url, "wrong-token".into()))).unwrap();
    s.record(EventKind::Output, 1, "hello", json!(null)).unwrap();
    let e = s.flush(std::time::Duration::from_secs(5)).await.unwrap_err();
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    assert!(e.to_string().contains("sent again"), "{e}");
    assert_eq!(s.unacked(), 1);
}
