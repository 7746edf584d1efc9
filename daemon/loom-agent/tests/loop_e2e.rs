//! The loop driver end to end, against a scripted fake of the Anthropic and OpenAI APIs (the
//! providers are outside this machine) on 127.0.0.1, a real git repository in a temp dir, real
//! shell commands, and the real loom-threads store behind a stand-in for loomd's event intake.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use loom_agent::client::ModelClient;
use loom_agent::llm::ModelSpec;
use loom_agent::policy::Limits;
use loom_agent::spool::EventsApi;
use loom_agent::tools::ToolConfig;
use loom_agent::{AgentSettings, Body, LoopConfig, LoopOutcome, run_loop};
use loom_threads::{AgentStatus, EventKind, SearchQuery, StopReason};
use serde_json::{Value, json};
use support::*;

const TOKEN: &str = "weaver-token-1";
const WEAVER: &str = "w1";

struct Env {
    _dir: tempfile::TempDir,
    ws: std::path::PathBuf,
    state: std::path::PathBuf,
    prompt: std::path::PathBuf,
    root: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("workspace");
    failing_repo(&ws);
    let prompt = dir.path().join("PROMPT.md");
    std::fs::write(&prompt, "# Fix the failing test\n\nRun `sh test.sh`; make it pass.\n").unwrap();
    Env { ws, state: dir.path().join("state"), prompt, root: dir.path().to_path_buf(), _dir: dir }
}

fn agent_body(model: &str, base: &str) -> Body {
    Body::Agent(AgentSettings {
        client: ModelClient::new(ModelSpec::parse(model).unwrap(), base, "per-weaver-key".into(), false),
        max_tokens: 1000,
        context_tokens: 100_000,
        max_turns: 20,
        retries: 2,
    })
}

fn config(e: &Env, body: Body) -> LoopConfig {
    LoopConfig {
        workspace: e.ws.clone(),
        state_dir: e.state.clone(),
        prompt_file: e.prompt.clone(),
        body,
        until: None,
        check: None,
        completion_marker: "<promise>COMPLETE</promise>".into(),
        limits: Limits { max_iterations: Some(5), ..Default::default() },
        tools: ToolConfig { bash_timeout: Duration::from_secs(10), output_cap: 10_000 },
        commit: true,
        context: None,
        weaver_id: WEAVER.into(),
        events_api: None,
        command_timeout: Duration::from_secs(30),
        verbose: false,
    }
}

async fn run(cfg: LoopConfig) -> LoopOutcome {
    let (_tx, rx) = tokio::sync::watch::channel(false);
    tokio::time::timeout(Duration::from_secs(60), run_loop(cfg, rx)).await.expect("loop hung").expect("loop failed")
}

fn spool_kinds(state: &Path) -> Vec<EventKind> {
    std::fs::read_to_string(state.join("spool.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<loom_threads::ThreadEvent>(l).unwrap().kind)
        .collect()
}

fn status(state: &Path) -> AgentStatus {
    serde_json::from_slice(&std::fs::read(state.join("status.json")).unwrap()).unwrap()
}

/// The scripted model of the main scenario: look, read, run the test, fix, re-run, done.
fn fixing_script() -> Vec<FakeReply> {
    vec![
        turn(
            "Let me look at the repository.",
            &[("list_files", json!({"path": "."})), ("read_file", json!({"path": "calc.sh"}))],
        ),
        turn("", &[("bash", json!({"command": "sh test.sh"}))]),
        turn(
            "add subtracts; fixing it.",
            &[("edit_file", json!({"path": "calc.sh", "old_str": "$1 - $2", "new_str": "$1 + $2"}))],
        ),
        turn("", &[("bash", json!({"command": "sh test.sh"}))]),
        turn(
            "Fixed add in calc.sh: it subtracted instead of adding. The test passes.\n<promise>COMPLETE</promise>",
            &[],
        ),
    ]
}

async fn fixes_the_repo(model: &str) {
    let e = env();
    let fake = FakeModelApi::scripted(fixing_script(), turn("nothing left to do", &[])).await;
    let loomd = FakeLoomd::start(e.root.join("loomd.db"), TOKEN, WEAVER).await;
    let mut cfg = config(&e, agent_body(model, &fake.base_url));
    cfg.until = Some("sh test.sh".into());
    cfg.limits.until_set = true;
    cfg.events_api = Some(EventsApi::new(&loomd.base_url, TOKEN.into()));
    let out = run(cfg).await;

    // The loop stopped because --until passed, after one iteration, with the fix committed.
    assert_eq!(out.stop, StopReason::UntilPassed);
    assert_eq!(out.iterations, 1);
    assert_eq!(out.commits, 1);
    assert!(std::fs::read_to_string(e.ws.join("calc.sh")).unwrap().contains("$1 + $2"));
    let log = git(&e.ws, &["log", "--format=%s", "-n", "2"]);
    assert!(log.starts_with("loom: iteration 1: Fixed add in calc.sh: it subtracted"), "{log}");
    assert!(log.ends_with("…\ninitial\n"), "a long subject is cut: {log}");
    let body = git(&e.ws, &["log", "-1", "--format=%b"]);
    assert!(body.contains("- calc.sh") && body.contains(&format!("Loom-Thread: {}", out.thread_id)), "{body}");
    assert_eq!(git(&e.ws, &["status", "--porcelain"]), "");
    let commit_event = std::fs::read_to_string(e.state.join("spool.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<loom_threads::ThreadEvent>(l).unwrap())
        .find(|ev| ev.kind == EventKind::Commit)
        .unwrap();
    assert_eq!(commit_event.payload["hash"], git(&e.ws, &["rev-parse", "HEAD"]).trim());

    // The model saw each tool's output in the next request, in its protocol's shape.
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 5);
    for r in &reqs {
        assert_eq!(r.body["model"], model, "the proxy routes by provider/model");
        assert_eq!(r.body["stream"], true);
    }
    let all = serde_json::to_string(&reqs[1].body["messages"]).unwrap();
    assert!(all.contains("$1 - $2"), "read_file result reached the model: {all}");
    let all = serde_json::to_string(&reqs[2].body["messages"]).unwrap();
    assert!(all.contains("FAIL: add 2 3 gave -1, want 5"), "{all}");
    let all = serde_json::to_string(&reqs[4].body["messages"]).unwrap();
    assert!(all.contains("PASS"), "{all}");
    if model.starts_with("anthropic/") {
        assert_eq!(reqs[0].path, "/v1/messages");
        assert_eq!(reqs[0].header("x-api-key"), Some("per-weaver-key"));
        assert_eq!(reqs[1].body["messages"][2]["content"][0]["type"], "tool_result");
    } else {
        assert_eq!(reqs[0].path, "/v1/chat/completions");
        assert_eq!(reqs[0].header("authorization"), Some("Bearer per-weaver-key"));
        assert_eq!(reqs[1].body["messages"][3]["role"], "tool");
    }

    // Every step is a thread event, delivered to the store and searchable.
    let kinds = spool_kinds(&e.state);
    let count = |k: EventKind| kinds.iter().filter(|x| **x == k).count();
    assert_eq!(kinds[0], EventKind::ThreadStart);
    assert_eq!(count(EventKind::ModelRequest), 5);
    assert_eq!(count(EventKind::ModelReply), 5);
    assert_eq!(count(EventKind::ToolCall), 5);
    assert_eq!(count(EventKind::ToolResult), 5);
    assert_eq!(count(EventKind::Commit), 1);
    assert_eq!(count(EventKind::CheckResult), 1);
    assert_eq!(count(EventKind::IterationStart), 1);
    assert_eq!(count(EventKind::IterationEnd), 1);
    assert_eq!(*kinds.last().unwrap(), EventKind::Stop);
    let conn = loomd.conn();
    let t = loom_threads::get_thread(&conn, &out.thread_id).unwrap();
    assert_eq!(t.events.len(), kinds.len(), "every spooled event reached the store");
    assert_eq!(t.summary.weaver_id, WEAVER);
    assert_eq!(t.summary.title, "Fix the failing test");
    assert_eq!(t.summary.stop_reason.as_deref(), Some("--until command passed"));
    let md = loom_threads::render_markdown(&t);
    assert!(md.contains("tool call `edit_file`"), "{md}");
    assert!(md.contains("FAIL: add 2 3 gave -1, want 5"), "{md}");
    let hits =
        loom_threads::search(&conn, &SearchQuery { text: "calc.sh".into(), limit: 20, ..Default::default() }).unwrap();
    assert!(hits.iter().any(|h| h.kind == EventKind::ToolCall && h.snippet.contains("[calc.sh]")), "{hits:?}");
    assert!(hits.iter().any(|h| h.kind == EventKind::Commit), "{hits:?}");
    let hits = loom_threads::search(
        &conn,
        &SearchQuery { text: "want 5".into(), weaver: Some(WEAVER.into()), limit: 5, ..Default::default() },
    )
    .unwrap();
    assert_eq!(hits[0].kind, EventKind::ToolResult);

    // Progress for `loom weaver ps`.
    let st = status(&e.state);
    assert_eq!(st.state, "stopped");
    assert_eq!(st.iteration, 1);
    assert_eq!(st.commits, 1);
    assert_eq!(st.stop_reason, Some(StopReason::UntilPassed));
    assert!(st.input_tokens >= 500 && st.output_tokens >= 100, "{st:?}");
    assert_eq!(std::fs::read_to_string(e.state.join("spool.acked")).unwrap(), kinds.len().to_string());
}

#[tokio::test]
async fn anthropic_agent_fixes_a_failing_test_and_stops_on_until() {
    fixes_the_repo("anthropic/fake-claude").await;
}

#[tokio::test]
async fn openai_agent_fixes_a_failing_test_and_stops_on_until() {
    fixes_the_repo("openai/fake-gpt").await;
}

#[tokio::test]
async fn completion_marker_stops_without_until() {
    let e = env();
    let fake =
        FakeModelApi::scripted(vec![turn("All done. <promise>COMPLETE</promise>", &[])], turn("again", &[])).await;
    let out = run(config(&e, agent_body("anthropic/m", &fake.base_url))).await;
    assert_eq!(out.stop, StopReason::CompletionMarker);
    assert_eq!(out.iterations, 1);
    assert_eq!(out.commits, 0);
}

#[tokio::test]
async fn marker_with_failing_until_goes_on_and_feeds_back_check_output() {
    let e = env();
    let fake = FakeModelApi::scripted(vec![], turn("Done! <promise>COMPLETE</promise>", &[])).await;
    let mut cfg = config(&e, agent_body("openai/m", &fake.base_url));
    cfg.until = Some("sh test.sh".into());
    cfg.limits.until_set = true;
    cfg.check = Some("echo lint-warning-XYZ; exit 1".into());
    cfg.limits.max_iterations = Some(2);
    cfg.limits.no_change_limit = 0;
    let out = run(cfg).await;
    assert_eq!(out.stop, StopReason::MaxIterations { iterations: 2 });
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    let first = reqs[0].body["messages"][1]["content"].as_str().unwrap();
    assert!(!first.contains("Feedback"), "{first}");
    let second = reqs[1].body["messages"][1]["content"].as_str().unwrap();
    assert!(second.starts_with("# Fix the failing test"), "the prompt file is fed afresh: {second}");
    assert!(second.contains("You said the work is done, but the completion check `sh test.sh` failed"), "{second}");
    assert!(second.contains("FAIL: add 2 3 gave -1"), "{second}");
    assert!(second.contains("lint-warning-XYZ"), "--check output is fed back: {second}");
}

#[tokio::test]
async fn max_iterations_with_a_commit_per_iteration() {
    let e = env();
    let fake = FakeModelApi::start(|n, _| {
        if n % 2 == 0 {
            turn("", &[("write_file", json!({"path": format!("notes/{n}.md"), "content": format!("note {n}\n")}))])
        } else {
            turn(&format!("Wrote note {}", n - 1), &[])
        }
    })
    .await;
    let mut cfg = config(&e, agent_body("anthropic/m", &fake.base_url));
    cfg.limits.max_iterations = Some(3);
    let out = run(cfg).await;
    assert_eq!(out.stop, StopReason::MaxIterations { iterations: 3 });
    assert_eq!(out.commits, 3);
    assert_eq!(
        git(&e.ws, &["log", "--format=%s", "-n", "3"]),
        "loom: iteration 3: Wrote note 4\nloom: iteration 2: Wrote note 2\nloom: iteration 1: Wrote note 0\n"
    );
}

#[tokio::test]
async fn budget_exhausted_stops_the_loop() {
    let e = env();
    let fake = FakeModelApi::scripted(vec![FakeReply::BudgetSpent], turn("never", &[])).await;
    let out = run(config(&e, agent_body("anthropic/m", &fake.base_url))).await;
    assert!(
        matches!(&out.stop, StopReason::BudgetExhausted { message } if message.contains("USD budget")),
        "{:?}",
        out.stop
    );
    assert_eq!(out.iterations, 1);
    assert_eq!(fake.requests().len(), 1, "a budget error is not retried");
}

#[tokio::test]
async fn circuit_breaker_no_change_in_the_tree() {
    let e = env();
    let fake = FakeModelApi::scripted(vec![], turn("I looked around and changed nothing.", &[])).await;
    let mut cfg = config(&e, agent_body("openai/m", &fake.base_url));
    cfg.limits.max_iterations = Some(10);
    cfg.limits.no_change_limit = 3;
    let out = run(cfg).await;
    assert_eq!(out.stop, StopReason::NoProgress { iterations: 3 });
    assert_eq!(out.iterations, 3);
}

#[tokio::test]
async fn circuit_breaker_same_error() {
    let e = env();
    let fake = FakeModelApi::scripted(vec![], FakeReply::Status(400, "prompt is too long".into())).await;
    let mut cfg = config(&e, agent_body("anthropic/m", &fake.base_url));
    cfg.limits.max_iterations = Some(10);
    cfg.limits.same_error_limit = 2;
    cfg.limits.no_change_limit = 0;
    let out = run(cfg).await;
    match &out.stop {
        StopReason::RepeatedError { count: 2, error } => {
            assert!(error.contains("HTTP 400: prompt is too long"), "{error}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out.iterations, 2);
    assert_eq!(status(&e.state).last_error.as_deref(), Some("model endpoint answered HTTP 400: prompt is too long"));
}

#[tokio::test]
async fn rate_limit_pauses_and_resumes_without_burning_an_iteration() {
    let e = env();
    let fake = FakeModelApi::scripted(
        vec![
            FakeReply::RateLimited { retry_after: "1.5".into() },
            FakeReply::CutStream,
            turn("Done. <promise>COMPLETE</promise>", &[]),
        ],
        turn("never", &[]),
    )
    .await;
    let mut cfg = config(&e, agent_body("anthropic/m", &fake.base_url));
    cfg.limits.max_iterations = Some(1);
    let started = Instant::now();
    let out = run(cfg).await;
    assert_eq!(out.stop, StopReason::CompletionMarker, "the pause did not use up the only iteration");
    assert_eq!(out.iterations, 1);
    assert!(started.elapsed() >= Duration::from_millis(1500), "paused {}", short(started.elapsed()));
    assert_eq!(fake.requests().len(), 3, "429, then a cut stream retried, then the reply");
    let kinds = spool_kinds(&e.state);
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Pause).count(), 1);
}

#[tokio::test]
async fn wall_clock_limit_ends_a_long_iteration() {
    let e = env();
    let mut cfg =
        config(&e, Body::Command(vec!["sh".into(), "-c".into(), "echo working > progress.txt; sleep 30".into()]));
    cfg.limits.wall_clock = Some(Duration::from_secs(1));
    let started = Instant::now();
    let out = run(cfg).await;
    assert_eq!(out.stop, StopReason::WallClock { limit_secs: 1 });
    assert!(started.elapsed() < Duration::from_secs(10), "{}", short(started.elapsed()));
    // What the cut-short iteration changed is still committed.
    assert_eq!(out.commits, 1);
    assert_eq!(git(&e.ws, &["show", "HEAD:progress.txt"]), "working\n");
}

#[tokio::test]
async fn bring_your_own_agent_gets_the_prompt_on_stdin() {
    let e = env();
    let script =
        "cat > seen-prompt.txt; sed -i 's/\\$1 - \\$2/$1 + $2/' calc.sh; echo 'fixed it <promise>COMPLETE</promise>'";
    let mut cfg = config(&e, Body::Command(vec!["sh".into(), "-c".into(), script.into()]));
    cfg.until = Some("sh test.sh".into());
    cfg.limits.until_set = true;
    cfg.context = Some("Earlier thread t0 found that calc.sh is sourced by test.sh.".into());
    let out = run(cfg).await;
    assert_eq!(out.stop, StopReason::UntilPassed);
    let seen = std::fs::read_to_string(e.ws.join("seen-prompt.txt")).unwrap();
    assert!(seen.starts_with("# Fix the failing test"), "{seen}");
    assert!(seen.contains("## Context from earlier threads\n\nEarlier thread t0 found"), "{seen}");
    assert_eq!(git(&e.ws, &["log", "-1", "--format=%s"]), "loom: iteration 1: fixed it\n");
    assert!(spool_kinds(&e.state).contains(&EventKind::Output));
}

#[tokio::test]
async fn byo_agent_that_fails_the_same_way_trips_the_breaker() {
    let e = env();
    let mut cfg =
        config(&e, Body::Command(vec!["sh".into(), "-c".into(), "echo 'error: no API key' >&2; exit 7".into()]));
    cfg.limits.same_error_limit = 3;
    cfg.limits.no_change_limit = 0;
    let out = run(cfg).await;
    assert!(
        matches!(&out.stop, StopReason::RepeatedError { count: 3, error } if error.contains("no API key")),
        "{:?}",
        out.stop
    );
}

#[tokio::test]
async fn shutdown_stops_cleanly_mid_iteration() {
    let e = env();
    let cfg = config(&e, Body::Command(vec!["sh".into(), "-c".into(), "sleep 30".into()]));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let h = tokio::spawn(run_loop(cfg, rx));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    tx.send(true).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), h).await.unwrap().unwrap().unwrap();
    assert_eq!(out.stop, StopReason::Shutdown);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(status(&e.state).stop_reason, Some(StopReason::Shutdown));
}

#[tokio::test]
async fn tool_errors_reach_the_model_outside_path_double_match_and_endless_command() {
    let e = env();
    std::fs::write(e.root.join("secret.txt"), "top secret").unwrap();
    let fake = FakeModelApi::scripted(
        vec![
            turn(
                "",
                &[
                    ("read_file", json!({"path": "../secret.txt"})),
                    ("write_file", json!({"path": "/etc/loom-test-should-not-exist", "content": "x"})),
                    ("edit_file", json!({"path": "test.sh", "old_str": "add", "new_str": "sub"})),
                    ("bash", json!({"command": "sleep 1000"})),
                ],
            ),
            turn("I give up for now.", &[]),
        ],
        turn("never", &[]),
    )
    .await;
    let mut cfg = config(&e, agent_body("openai/m", &fake.base_url));
    cfg.tools.bash_timeout = Duration::from_millis(700);
    cfg.limits.max_iterations = Some(1);
    let started = Instant::now();
    let out = run(cfg).await;
    assert_eq!(out.stop, StopReason::MaxIterations { iterations: 1 });
    assert!(started.elapsed() < Duration::from_secs(10), "{}", short(started.elapsed()));
    assert!(!Path::new("/etc/loom-test-should-not-exist").exists());
    let reqs = fake.requests();
    let tool_msgs: Vec<&Value> =
        reqs[1].body["messages"].as_array().unwrap().iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tool_msgs.len(), 4);
    let c = |i: usize| tool_msgs[i]["content"].as_str().unwrap().to_owned();
    assert!(c(0).contains("outside the workspace"), "{}", c(0));
    assert!(!c(0).contains("top secret"));
    assert!(c(1).contains("outside the workspace"), "{}", c(1));
    assert!(c(2).contains("old_str matches 2 times in test.sh"), "{}", c(2));
    assert!(c(3).contains("timed out after 0.7s"), "{}", c(3));
    // The test file was not edited.
    assert_eq!(git(&e.ws, &["status", "--porcelain"]), "");
}

#[tokio::test]
async fn unacknowledged_events_are_resent_after_a_restart() {
    let e = env();
    // First run: loomd is down (nothing listens), so events only reach the spool.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let fake = FakeModelApi::scripted(vec![], turn("Done <promise>COMPLETE</promise>", &[])).await;
    let mut cfg = config(&e, agent_body("anthropic/m", &fake.base_url));
    cfg.events_api = Some(EventsApi::new(&format!("http://{dead_addr}"), TOKEN.into()));
    let first = run(cfg.clone()).await;
    let n_first = spool_kinds(&e.state).len();
    assert!(!e.state.join("spool.acked").exists());
    // loomd comes back; the agent restarts in the same state directory.
    let loomd = FakeLoomd::start(e.root.join("loomd.db"), TOKEN, WEAVER).await;
    cfg.events_api = Some(EventsApi::new(&loomd.base_url, TOKEN.into()));
    let second = run(cfg).await;
    assert_eq!(first.thread_id, second.thread_id, "a restart goes on with the same thread");
    let total = spool_kinds(&e.state).len();
    assert!(total > n_first);
    let t = loom_threads::get_thread(&loomd.conn(), &second.thread_id).unwrap();
    assert_eq!(t.events.len(), total, "events of the first run were resent");
    let seqs: Vec<u64> = t.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "dense, no duplicates");
}

#[tokio::test]
async fn a_state_dir_inside_the_workspace_is_never_committed() {
    let mut e = env();
    e.state = e.ws.join(".loom");
    let fake = FakeModelApi::scripted(vec![], turn("Looked; nothing to change.", &[])).await;
    let mut cfg = config(&e, agent_body("anthropic/m", &fake.base_url));
    cfg.limits.no_change_limit = 2;
    let out = run(cfg).await;
    assert_eq!(out.stop, StopReason::NoProgress { iterations: 2 }, "the spool's changes are no progress");
    assert_eq!(out.commits, 0);
    assert!(e.state.join("spool.jsonl").exists());
    assert_eq!(git(&e.ws, &["status", "--porcelain"]), "");
}

#[tokio::test]
async fn an_agent_that_commits_by_itself_counts_as_progress() {
    let e = env();
    let script = "date +%s%N > stamp.txt && git add -A && git -c user.name=a -c user.email=a@a commit -q -m self";
    let mut cfg = config(&e, Body::Command(vec!["sh".into(), "-c".into(), script.into()]));
    cfg.limits.max_iterations = Some(2);
    cfg.limits.no_change_limit = 1;
    let out = run(cfg).await;
    assert_eq!(out.stop, StopReason::MaxIterations { iterations: 2 }, "HEAD moved, so the tree changed");
    assert_eq!(out.commits, 0, "nothing was left for the loop to commit");
    assert_eq!(git(&e.ws, &["log", "--format=%s", "-n", "2"]), "self\nself\n");
}
