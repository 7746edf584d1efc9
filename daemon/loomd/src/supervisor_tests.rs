//! The supervisor's runs over the recording backend: hook order per run, restart backoff,
//! stops during it, removes racing starts, and 5,000 restarts that leave nothing behind in the
//! hooks, the real proxy, the real audit maps (as root) or loomd's own tables.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loom_core::access::{AccessGroups, Caller};
use loom_core::api::{CreateWeaver, ErrorCode, WeaverInfo};
use loom_core::config::Config;
use loom_core::weaver::{RunId, WeaverId, WeaverState};

use crate::backend::recording::RecordingBackend;
use crate::daemon::{ApiError, Daemon, DaemonParts, Request, Response, WeaverHooks, lock};
use crate::store::{Store, WeaverRecord};

/// Every hook call, and what a hook that acquires per run would hold.
#[derive(Debug, Default)]
struct Recorder {
    calls: Mutex<Vec<(String, WeaverId, RunId)>>,
    held: Mutex<HashSet<(WeaverId, RunId)>>,
}

impl Recorder {
    fn note(&self, what: &str, id: &WeaverId, run: RunId) {
        lock(&self.calls).push((what.to_string(), id.clone(), run));
    }
    fn held(&self) -> usize {
        lock(&self.held).len()
    }
}

#[async_trait::async_trait]
impl WeaverHooks for Recorder {
    async fn before_start(&self, id: &WeaverId, run: RunId, _: &WeaverRecord) -> Result<Vec<(String, String)>, String> {
        self.note("before_start", id, run);
        lock(&self.held).insert((id.clone(), run));
        Ok(vec![])
    }
    async fn on_cgroup(&self, id: &WeaverId, run: RunId, _: u64) {
        self.note("on_cgroup", id, run);
    }
    async fn after_start(&self, id: &WeaverId, run: RunId, _: i32, _: Option<u64>) {
        self.note("after_start", id, run);
    }
    async fn after_stop(&self, id: &WeaverId, run: RunId, _: &WeaverRecord) {
        self.note("after_stop", id, run);
        assert!(lock(&self.held).remove(&(id.clone(), run)), "after_stop for a run that holds nothing: {run}");
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    daemon: Arc<Daemon>,
    backend: Arc<RecordingBackend>,
    recorder: Arc<Recorder>,
    llm: Arc<crate::llm::Llm>,
    auditor: Option<Arc<crate::auditing::Auditor>>,
}

fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        assert!(
            std::env::var_os("LOOM_REQUIRE_PRIVILEGED").is_none(),
            "LOOM_REQUIRE_PRIVILEGED is set but the real audit maps need root"
        );
        eprintln!("SKIPPED the real audit maps: not root");
    }
    root
}

/// A daemon with the recorder, the real proxy hook, and as root the real audit.
fn fixture(audit: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let config = Config { state_dir: dir.path().to_path_buf(), ..Config::default() };
    let db = dir.path().join("loom.db");
    let secrets = Arc::new(crate::secrets::Secrets::load(&config));
    let threads = Arc::new(crate::threads::Threads::open(&db).unwrap());
    let llm = crate::llm::Llm::start(&config, secrets.clone(), &db, threads.clone()).unwrap();
    let auditor = audit.then(|| {
        let table: toml::Table = toml::from_str("required = true\nsink = \"ndjson\"\nindex = false").unwrap();
        crate::auditing::Auditor::start(&table, dir.path(), &db).unwrap().unwrap()
    });
    let recorder = Arc::new(Recorder::default());
    let mut hooks: Vec<Arc<dyn WeaverHooks>> = vec![recorder.clone(), llm.clone()];
    if let Some(a) = &auditor {
        hooks.push(a.clone());
    }
    let backend = Arc::new(RecordingBackend::default());
    let daemon = Daemon::new(DaemonParts {
        secrets,
        config,
        groups: AccessGroups { admin: Some(100), operator: Some(200) },
        store: Store::open(&db).unwrap(),
        backend: backend.clone(),
        hooks,
        binds_ro: vec![],
        llm: Some(llm.clone()),
        auditor: auditor.clone(),
        threads: Some(threads),
        net: None,
        wireguard: None,
        warnings: vec![],
    });
    Fixture { _dir: dir, daemon, backend, recorder, llm, auditor }
}

fn admin() -> Caller {
    Caller { uid: 0, pid: 1, gids: vec![0] }
}

async fn weaver(d: &Arc<Daemon>, req: Request) -> Result<WeaverInfo, ApiError> {
    match d.handle(&admin(), req).await? {
        Response::Weaver(w) => Ok(*w),
        other => panic!("expected a weaver, got {other:?}"),
    }
}

fn create(name: &str, network: &str, restart: Option<&str>) -> Request {
    Request::CreateWeaver(Box::new(CreateWeaver {
        name: Some(name.into()),
        command: vec!["/bin/true".into()],
        network: Some(network.into()),
        restart: restart.map(str::to_string),
        ..Default::default()
    }))
}

fn run_of(d: &Daemon, id: &WeaverId) -> Option<RunId> {
    d.with_store(|s| s.get(id)).unwrap().and_then(|r| r.run)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The calls for each run, in the order they came.
fn calls_per_run(r: &Recorder) -> HashMap<RunId, Vec<String>> {
    let mut out: HashMap<RunId, Vec<String>> = HashMap::new();
    for (what, _, run) in lock(&r.calls).iter() {
        out.entry(*run).or_default().push(what.clone());
    }
    out
}

#[tokio::test]
async fn each_run_gets_its_hooks_in_order_under_its_own_id() {
    let f = fixture(false);
    let w = weaver(&f.daemon, create("order", "host", None)).await.unwrap();
    let first = run_of(&f.daemon, &w.id).unwrap();
    weaver(&f.daemon, Request::StopWeaver("order".into())).await.unwrap();
    weaver(&f.daemon, Request::StartWeaver("order".into())).await.unwrap();
    let second = run_of(&f.daemon, &w.id).unwrap();
    assert_ne!(first, second, "every start is a new run");
    // The second run ends by itself.
    let Some(crate::backend::RunHandle::Shim { pid, run, .. }) =
        f.daemon.with_store(|s| s.get(&w.id)).unwrap().unwrap().handle
    else {
        panic!()
    };
    assert_eq!(run, second, "the handle names the run");
    f.backend.finish(pid, 0);
    wait_until("the run's end", || f.recorder.held() == 0).await;
    // A start that fails still releases what its run took.
    f.backend.fail_starts(Some("no"));
    weaver(&f.daemon, Request::StartWeaver("order".into())).await.unwrap_err();
    let third = run_of(&f.daemon, &w.id).unwrap();
    let runs = calls_per_run(&f.recorder);
    let full = ["before_start", "on_cgroup", "after_start", "after_stop"];
    assert_eq!(runs[&first], full);
    assert_eq!(runs[&second], full);
    assert_eq!(runs[&third], ["before_start", "on_cgroup", "after_stop"]);
    assert_eq!(f.recorder.held(), 0);
    assert_eq!(f.llm.held(), (0, 0, 0));
}

#[tokio::test]
async fn a_failed_run_restarts_after_its_backoff_as_a_new_run() {
    let f = fixture(false);
    let w = weaver(&f.daemon, create("again", "host", Some("on-failure"))).await.unwrap();
    let first = run_of(&f.daemon, &w.id).unwrap();
    f.backend.finish(w.pid.unwrap(), 3);
    wait_until("the exit", || {
        f.daemon.with_store(|s| s.get(&w.id)).unwrap().unwrap().info.state == WeaverState::Exited
    })
    .await;
    let rec = f.daemon.with_store(|s| s.get(&w.id)).unwrap().unwrap();
    assert!(rec.info.reason.as_deref().unwrap().contains("restarting in"), "{:?}", rec.info.reason);
    assert_eq!(f.recorder.held(), 0, "the ended run released everything before its backoff");
    wait_until("the restart", || f.daemon.is_active(&w.id)).await;
    let rec = f.daemon.with_store(|s| s.get(&w.id)).unwrap().unwrap();
    assert_eq!(rec.info.restarts, 1);
    assert_ne!(rec.run, Some(first));
    assert_eq!(f.recorder.held(), 1);
    assert_eq!(lock(&f.daemon.runs).get(&w.id), rec.run.as_ref());
}

#[tokio::test]
async fn a_stop_during_the_backoff_cancels_the_restart() {
    let f = fixture(false);
    let w = weaver(&f.daemon, create("halt", "host", Some("always"))).await.unwrap();
    f.backend.finish(w.pid.unwrap(), 1);
    wait_until("the pending restart", || lock(&f.daemon.pending_restarts).contains(&w.id)).await;
    let stopped = weaver(&f.daemon, Request::StopWeaver("halt".into())).await.unwrap();
    assert_eq!(stopped.state, WeaverState::Stopped);
    tokio::time::sleep(Duration::from_millis(loom_core::restart::BASE_DELAY_MS * 2 + 500)).await;
    let starts = f.backend.calls().iter().filter(|c| c.starts_with("start ")).count();
    assert_eq!(starts, 1, "{:?}", f.backend.calls());
    assert_eq!(f.daemon.with_store(|s| s.get(&w.id)).unwrap().unwrap().info.state, WeaverState::Stopped);
    assert_eq!((f.recorder.held(), lock(&f.daemon.runs).len()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remove_racing_a_start_leaves_nothing_running() {
    let f = fixture(false);
    for i in 0..40 {
        let name = format!("race-{i}");
        let w = weaver(&f.daemon, create(&name, "host", None)).await.unwrap();
        weaver(&f.daemon, Request::StopWeaver(name.clone())).await.unwrap();
        let (d1, d2, id) = (f.daemon.clone(), f.daemon.clone(), w.id.clone());
        let rm = tokio::spawn(async move { d1.remove(&id, true).await });
        let id = w.id.clone();
        let start = tokio::spawn(async move { d2.start(&id).await });
        let (rm, start) = (rm.await.unwrap(), start.await.unwrap());
        if let Err(e) = &start {
            assert!(matches!(e.code, ErrorCode::NotFound | ErrorCode::Internal), "{e:?}");
        }
        // Whichever came first, the remove ends with the weaver gone and nothing held.
        rm.unwrap();
        assert!(f.daemon.with_store(|s| s.get(&w.id)).unwrap().is_none());
        assert_eq!(f.recorder.held(), 0, "round {i}: a run outlived its weaver");
        assert!(lock(&f.daemon.runs).is_empty() && lock(&f.daemon.locks).is_empty());
        let calls = f.backend.calls();
        let cleanup = calls.iter().rposition(|c| c == &format!("cleanup {}", w.id)).unwrap();
        assert!(
            !calls[cleanup..].iter().any(|c| c.starts_with(&format!("start {name} "))),
            "round {i}: started after its cleanup: {calls:?}"
        );
    }
    assert_eq!(f.llm.held(), (0, 0, 0));
}

/// Listening sockets on the proxy's port in the namespace of `pid`.
fn proxy_listeners(pid: i32) -> usize {
    let port = format!(":{:04X}", crate::llm::WEAVER_PROXY_PORT);
    std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&port) && f[3] == "0A"
        })
        .count()
}

/// The leak: audit watches replaced without unwatching (the BPF map holds 4,096), a
/// stopped weaver's token and listener kept. 5,000 restarts of one weaver must leave every
/// table as one run leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_restarts_leave_nothing_behind() {
    let root = is_root();
    let f = fixture(root);
    // As root, a real network namespace stands in for the weaver's, so that each run's proxy
    // listener is really opened in it (and would pile up, or fail to bind, if one leaked).
    let netns = root.then(|| {
        let child = std::process::Command::new("unshare").args(["--net", "sleep", "600"]).spawn().unwrap();
        let pid = child.id() as i32;
        let own = std::fs::read_link("/proc/self/ns/net").unwrap();
        let t = Instant::now();
        while std::fs::read_link(format!("/proc/{pid}/ns/net")).ok().is_none_or(|n| n == own) {
            assert!(t.elapsed() < Duration::from_secs(5), "unshare did not make a namespace");
            std::thread::sleep(Duration::from_millis(5));
        }
        f.backend.lead_with(pid);
        child
    });
    let network = if root { "private" } else { "host" };
    let w = weaver(&f.daemon, create("churn", network, None)).await.unwrap();
    let mut seen = HashSet::new();
    for i in 0..5_000 {
        let sample = i % 500 == 0 || i == 4_999;
        if sample {
            // One run running: each table holds exactly it.
            let run = run_of(&f.daemon, &w.id).unwrap();
            assert_eq!(lock(&f.daemon.runs).get(&w.id), Some(&run), "restart {i}");
            assert_eq!(f.recorder.held(), 1, "restart {i}");
            let (runs, tokens, _) = f.llm.held();
            assert_eq!((runs, tokens), (1, 1), "restart {i}: proxy registrations");
            if let Some(a) = &f.auditor {
                assert_eq!(a.watched(), (1, 1), "restart {i}: audit watches (loomd's, the kernel map's)");
            }
            if let Some(ns) = &netns {
                wait_until("the run's listener", || proxy_listeners(ns.id() as i32) == 1).await;
            }
        }
        let stopped = weaver(&f.daemon, Request::StopWeaver("churn".into())).await.unwrap();
        assert_eq!(stopped.state, WeaverState::Stopped);
        if sample {
            // Stopped: nothing of the run is left anywhere.
            assert_eq!(f.recorder.held(), 0, "restart {i}");
            assert_eq!(f.llm.held(), (0, 0, 0), "restart {i}: a stopped weaver's token or listener");
            if let Some(a) = &f.auditor {
                assert_eq!(a.watched(), (0, 0), "restart {i}: a stopped run's cgroup still watched");
            }
            if let Some(ns) = &netns {
                wait_until("the listener to close", || proxy_listeners(ns.id() as i32) == 0).await;
            }
        }
        let started = weaver(&f.daemon, Request::StartWeaver("churn".into())).await.unwrap();
        assert_eq!(started.state, WeaverState::Running, "restart {i}: {:?}", started.reason);
        assert!(seen.insert(run_of(&f.daemon, &w.id).unwrap()), "restart {i}: a run id came twice");
    }
    // Every run saw its hooks once each, in order, and released what it took.
    let runs = calls_per_run(&f.recorder);
    assert_eq!(runs.len(), 5_001);
    let ended = runs.values().filter(|c| *c == &["before_start", "on_cgroup", "after_start", "after_stop"]).count();
    assert_eq!(ended, 5_000, "every run but the running one ended exactly once");
    assert_eq!(lock(&f.daemon.locks).len(), 1);
    assert!(lock(&f.daemon.pending_restarts).is_empty());
    assert!(lock(&f.daemon.disk_watch.next).len() <= 1);
    f.daemon.remove(&w.id, true).await.unwrap();
    assert_eq!(f.recorder.held(), 0);
    assert_eq!(f.llm.held(), (0, 0, 0));
    if let Some(a) = &f.auditor {
        assert_eq!(a.watched(), (0, 0));
    }
    assert!(lock(&f.daemon.runs).is_empty() && lock(&f.daemon.locks).is_empty());
    if let Some(mut ns) = netns {
        let _ = ns.kill();
        let _ = ns.wait();
    }
}
