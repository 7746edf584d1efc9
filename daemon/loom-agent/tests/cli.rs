//! The `loom-agent` binary as loomd starts it in a weaver: configuration from the environment
//! and flags, against the scripted fake of the Anthropic API on 127.0.0.1.

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn binary_runs_a_loop_from_env_and_flags_and_exits_0_when_done() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    failing_repo(&ws);
    std::fs::write(dir.path().join("PROMPT.md"), "Fix the test.\n").unwrap();
    std::fs::write(dir.path().join("context.md"), "Earlier: look at calc.sh\n").unwrap();
    let fake = FakeModelApi::scripted(
        vec![
            turn("", &[("edit_file", json!({"path": "calc.sh", "old_str": "$1 - $2", "new_str": "$1 + $2"}))]),
            turn("Fixed. <promise>COMPLETE</promise>", &[]),
        ],
        turn("never", &[]),
    )
    .await;
    let loomd = FakeLoomd::start(dir.path().join("loomd.db"), "proxy-token", "w7").await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loom-agent"))
        .args(["--prompt", "PROMPT.md", "--model", "anthropic/fake-claude", "--until", "sh test.sh"])
        .args(["--max-iterations", "3", "--workspace"])
        .arg(&ws)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .current_dir(dir.path())
        .env("ANTHROPIC_BASE_URL", &fake.base_url)
        .env("ANTHROPIC_API_KEY", "weaver-key")
        .env("LOOM_API_URL", &loomd.base_url)
        .env("LOOM_PROXY_TOKEN", "proxy-token")
        .env("LOOM_WEAVER", "w7")
        .env("LOOM_CONTEXT_FILE", dir.path().join("context.md"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("stopped after 1 iteration(s), 1 commit(s): --until command passed"), "{stdout}");
    assert!(stdout.contains("[tool] edit_file"), "progress is printed for `loom weaver logs`: {stdout}");
    let reqs = fake.requests();
    assert_eq!(reqs[0].header("x-api-key"), Some("weaver-key"));
    assert!(reqs[0].body["messages"][0]["content"].as_str().unwrap().contains("Earlier: look at calc.sh"));
    let threads = loom_threads::list_threads(&loomd.conn(), Some("w7"), 10).unwrap();
    assert_eq!(threads.len(), 1);
    assert_eq!(threads[0].stop_reason.as_deref(), Some("--until command passed"));
}

#[tokio::test]
async fn binary_explains_missing_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("P.md"), "x").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loom-agent"))
        .args(["--prompt", "P.md", "--workspace", "."])
        .current_dir(dir.path())
        .env_remove("LOOM_MODEL")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("give --model provider/model, or a command after --"), "{err}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loom-agent"))
        .args(["--prompt", "P.md", "--workspace", ".", "--model", "openai/x"])
        .current_dir(dir.path())
        .env_remove("OPENAI_BASE_URL")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OPENAI_BASE_URL is not set"), "{err}");
}

#[tokio::test]
async fn binary_runs_your_own_agent_and_streams_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    failing_repo(&ws);
    std::fs::write(dir.path().join("P.md"), "do the thing\n").unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_loom-agent"))
        .args(["--prompt", "P.md", "--max-iterations", "1", "--workspace"])
        .arg(&ws)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args([
            "--",
            "sh",
            "-c",
            "read line; echo \"byo saw: $line\"; echo \"token=[$LOOM_PROXY_TOKEN]\"; echo oops >&2",
        ])
        .current_dir(dir.path())
        .env("LOOM_API_URL", "http://127.0.0.1:9")
        .env("LOOM_PROXY_TOKEN", "event-intake-token")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "stopped by --max-iterations, not done");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("byo saw: do the thing"), "{stdout}");
    assert!(stdout.contains("token=[]"), "the event intake token is not handed to the agent's commands: {stdout}");
    assert!(stdout.contains("reached --max-iterations (1)"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("oops"));
}
