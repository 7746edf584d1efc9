//! The daemon's logic over the recording backend: states, access, failures and adoption,
//! without root or containers.

use std::sync::Arc;

use loom_core::access::{AccessGroups, Caller};
use loom_core::api::{CreateWeaver, ErrorCode, WeaverInfo};
use loom_core::config::Config;
use loom_core::weaver::{RunId, WeaverState};

use super::agent::agent_command;
use super::*;
use crate::backend::recording::RecordingBackend;

struct Fixture {
    _dir: tempfile::TempDir,
    daemon: Arc<Daemon>,
    backend: Arc<RecordingBackend>,
}

fn fixture() -> Fixture {
    fixture_with(false)
}

/// With `agent`, the daemon has a thread store and believes loom-agent is installed.
fn fixture_with(agent: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { state_dir: dir.path().to_path_buf(), ..Config::default() };
    let store = Store::open(&dir.path().join("loom.db")).unwrap();
    let backend = Arc::new(RecordingBackend::default());
    let daemon = Daemon::new(DaemonParts {
        secrets: Arc::new(crate::secrets::Secrets::load(&config)),
        config,
        groups: AccessGroups { admin: Some(100), operator: Some(200) },
        store,
        backend: backend.clone(),
        hooks: vec![],
        binds_ro: if agent { vec![("/bin/true".into(), AGENT_PATH.to_string())] } else { vec![] },
        llm: None,
        auditor: None,
        threads: agent.then(|| Arc::new(crate::threads::Threads::open(&dir.path().join("loom.db")).unwrap())),
        net: None,
        wireguard: None,
        warnings: vec![],
    });
    Fixture { _dir: dir, daemon, backend }
}

fn operator(uid: u32) -> Caller {
    Caller { uid, pid: 1, gids: vec![200] }
}

fn admin() -> Caller {
    Caller { uid: 0, pid: 1, gids: vec![0] }
}

fn create_req(name: &str) -> Request {
    Request::CreateWeaver(Box::new(CreateWeaver {
        name: Some(name.into()),
        command: vec!["/bin/true".into()],
        ..Default::default()
    }))
}

async fn weaver(d: &Arc<Daemon>, caller: &Caller, req: Request) -> Result<WeaverInfo, ApiError> {
    match d.handle(caller, req).await? {
        Response::Weaver(w) => Ok(*w),
        other => panic!("expected a weaver, got {other:?}"),
    }
}

#[tokio::test]
async fn operators_see_and_touch_only_their_own_weavers() {
    let f = fixture();
    let mine = weaver(&f.daemon, &operator(1000), create_req("mine")).await.unwrap();
    assert_eq!(mine.state, WeaverState::Running);
    let Response::Weavers(theirs) = f.daemon.handle(&operator(1001), Request::ListWeavers).await.unwrap() else {
        panic!()
    };
    assert!(theirs.is_empty());
    let e = weaver(&f.daemon, &operator(1001), Request::StopWeaver("mine".into())).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let Response::Weavers(all) = f.daemon.handle(&admin(), Request::ListWeavers).await.unwrap() else { panic!() };
    assert_eq!(all.len(), 1);
    let stranger = Caller { uid: 5, pid: 1, gids: vec![5] };
    assert_eq!(f.daemon.handle(&stranger, Request::Status).await.unwrap_err().code, ErrorCode::Forbidden);
    assert_eq!(f.daemon.handle(&operator(1000), Request::SecretsCheck).await.unwrap_err().code, ErrorCode::Forbidden);
}

#[tokio::test]
async fn a_failed_start_is_recorded_with_its_reason() {
    let f = fixture();
    f.backend.fail_starts(Some("no such image"));
    let e = weaver(&f.daemon, &admin(), create_req("broken")).await.unwrap_err();
    assert!(e.message.contains("no such image"), "{e}");
    let w = weaver(&f.daemon, &admin(), Request::InspectWeaver("broken".into())).await.unwrap();
    assert_eq!(w.state, WeaverState::Failed);
    assert!(w.reason.unwrap().contains("no such image"));
    assert!(f.backend.calls().iter().any(|c| c.starts_with("cleanup")), "a failed start frees what it took");
    f.backend.fail_starts(None);
    let w = weaver(&f.daemon, &admin(), Request::StartWeaver("broken".into())).await.unwrap();
    assert_eq!(w.state, WeaverState::Running);
}

#[tokio::test]
async fn exits_stops_and_removal() {
    let f = fixture();
    let w = weaver(&f.daemon, &admin(), create_req("w")).await.unwrap();
    f.backend.finish(w.pid.unwrap(), 3);
    let mut state = None;
    for _ in 0..100 {
        let v = weaver(&f.daemon, &admin(), Request::InspectWeaver("w".into())).await.unwrap();
        if v.state == WeaverState::Exited {
            state = Some(v);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let v = state.expect("the exit was noticed");
    assert_eq!(v.exit_code, Some(3));
    assert_eq!(v.pid, None);
    // Stopping an exited weaver changes nothing; starting it runs it again.
    assert_eq!(weaver(&f.daemon, &admin(), Request::StopWeaver("w".into())).await.unwrap().state, WeaverState::Exited);
    let again = weaver(&f.daemon, &admin(), Request::StartWeaver("w".into())).await.unwrap();
    assert_eq!(again.state, WeaverState::Running);
    let e = f.daemon.handle(&admin(), Request::RemoveWeaver { key: "w".into(), force: false }).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    f.daemon.handle(&admin(), Request::RemoveWeaver { key: "w".into(), force: true }).await.unwrap();
    let calls = f.backend.calls();
    assert!(calls.iter().any(|c| c.starts_with("stop")) && calls.iter().any(|c| c.starts_with("cleanup")), "{calls:?}");
    assert_eq!(
        weaver(&f.daemon, &admin(), Request::InspectWeaver("w".into())).await.unwrap_err().code,
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn adoption_marks_vanished_runs_failed_and_keeps_running_ones() {
    let f = fixture();
    let kept = weaver(&f.daemon, &admin(), create_req("kept")).await.unwrap();
    // A run the backend no longer knows (as after a reboot), written straight into the store.
    let mut lost = f.daemon.with_store(|s| s.get(&kept.id)).unwrap().unwrap();
    lost.info.id = loom_core::weaver::WeaverId::from_random([9; 6]);
    lost.info.name = "lost".into();
    lost.handle = Some(crate::backend::RunHandle::Shim { run: RunId::from_random(9), pid: 999_999, start_ticks: 1 });
    f.daemon.with_store(|s| s.insert(&lost)).unwrap();
    let (adopted, ended) = f.daemon.adopt().await.unwrap();
    assert_eq!((adopted, ended), (1, 1));
    let v = weaver(&f.daemon, &admin(), Request::InspectWeaver("lost".into())).await.unwrap();
    assert_eq!(v.state, WeaverState::Failed);
    assert_eq!(
        weaver(&f.daemon, &admin(), Request::InspectWeaver("kept".into())).await.unwrap().state,
        WeaverState::Running
    );
}

#[test]
fn the_agent_command_carries_every_loop_setting() {
    let agent = loom_core::weaver::AgentSpec {
        prompt: "p".into(),
        model: "anthropic/m".into(),
        max_iterations: Some(7),
        until: Some("make test".into()),
        check: Some("make lint".into()),
        wall_clock: Some("2h".into()),
        completion_marker: Some("DONE".into()),
        context_threads: vec!["t1".into()],
    };
    let argv = agent_command(&agent, &["claude".into(), "-p".into()]);
    let joined = argv.join(" ");
    for part in [
        "--prompt /.loom/PROMPT.md",
        "--model anthropic/m",
        "--max-iterations 7",
        "--until make test",
        "--check make lint",
        "--wall-clock 2h",
        "--completion-marker DONE",
        "--context-file /.loom/CONTEXT.md",
        "-- claude -p",
    ] {
        assert!(joined.contains(part), "{part} missing from {joined}");
    }
    assert_eq!(argv[0], AGENT_PATH);
    let bare = agent_command(&loom_core::weaver::AgentSpec { context_threads: vec![], ..agent }, &[]);
    assert!(!bare.iter().any(|a| a == "--" || a == "--context-file"));
}

#[tokio::test]
async fn what_the_agent_spooled_but_never_delivered_is_stored_when_its_run_ends() {
    let f = fixture_with(true);
    let req = Request::CreateWeaver(Box::new(CreateWeaver {
        name: Some("looper".into()),
        agent: Some(loom_core::weaver::AgentSpec::new("fix it", "anthropic/m")),
        ..Default::default()
    }));
    let w = weaver(&f.daemon, &admin(), req).await.unwrap();
    assert!(f.backend.calls().iter().any(|c| c.contains(AGENT_PATH)), "{:?}", f.backend.calls());
    let spool = f.daemon.dir_of(&w.id).join("root/.loom/agent/spool.jsonl");
    std::fs::create_dir_all(spool.parent().unwrap()).unwrap();
    let event = |seq: u64, weaver: &str, text: &str| {
        serde_json::json!({"thread_id": "t-spooled", "weaver_id": weaver, "seq": seq, "ts_ms": 1, "kind": "tool_call", "text": text})
            .to_string()
    };
    let lines = [event(1, w.id.as_str(), "undelivered_marker one"), event(2, w.id.as_str(), "two"), "garbage".into()];
    std::fs::write(&spool, lines.join("\n")).unwrap();
    f.backend.finish(w.pid.unwrap(), 0);
    let mut found = vec![];
    for _ in 0..200 {
        let Response::Threads(t) = f.daemon.handle(&admin(), Request::ThreadList { weaver: None }).await.unwrap()
        else {
            panic!()
        };
        if !t.is_empty() {
            found = t;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(found.len(), 1, "the spooled thread was not stored");
    assert_eq!(found[0].event_count, 2);
    let Response::ThreadHits(hits) = f
        .daemon
        .handle(
            &admin(),
            Request::ThreadSearch { query: "undelivered_marker".into(), weaver: None, since: None, limit: None },
        )
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(hits.len(), 1);
}

#[tokio::test]
async fn a_root_past_its_disk_cap_is_stopped_as_failed_and_not_restarted() {
    let f = fixture();
    let req = Request::CreateWeaver(Box::new(CreateWeaver {
        name: Some("fat".into()),
        disk: Some("1M".into()),
        restart: Some("always".into()),
        command: vec!["/bin/true".into()],
        ..Default::default()
    }));
    let w = weaver(&f.daemon, &admin(), req).await.unwrap();
    let root = f.daemon.dir_of(&w.id).join("root");
    f.daemon.check_disks();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        weaver(&f.daemon, &admin(), Request::InspectWeaver("fat".into())).await.unwrap().state,
        WeaverState::Running
    );
    // Real blocks, not a sparse file: the cap counts what the disk holds.
    std::fs::write(root.join("workspace/fill"), vec![1u8; 2 << 20]).unwrap();
    let mut seen = None;
    for _ in 0..100 {
        // A check is due again only after its interval.
        f.daemon.disk_watch.next.lock().unwrap().clear();
        f.daemon.check_disks();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let v = weaver(&f.daemon, &admin(), Request::InspectWeaver("fat".into())).await.unwrap();
        if v.state == WeaverState::Failed {
            seen = Some(v);
            break;
        }
    }
    let v = seen.expect("the weaver past its cap was stopped");
    assert_eq!(v.reason.as_deref(), Some("its root grew past its disk cap of 1M; free space or raise --disk"));
    // The run's end, handled after the stop, neither restarts it nor overwrites why it ended.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let v = weaver(&f.daemon, &admin(), Request::InspectWeaver("fat".into())).await.unwrap();
    assert_eq!((v.state, v.restarts), (WeaverState::Failed, 0), "{v:?}");
    assert_eq!(f.backend.calls().iter().filter(|c| c.starts_with("start")).count(), 1, "{:?}", f.backend.calls());
}
