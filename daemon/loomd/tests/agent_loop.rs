//! The agent loop end to end through loomd: a real loomd, real weavers (nspawn backend) running
//! the real `loom-agent` bound in by loomd, the real proxy injecting the key it decrypted from
//! the sops-nix test file, the real thread store, and the real `loom` CLI. The model provider
//! is outside this machine, so it is `FakeAnthropicApi`: a scripted fake of the Anthropic
//! Messages API on 127.0.0.1 that streams its real SSE format (tool_use blocks whose input
//! arrives as `input_json_delta` pieces).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Loomd, privileged};
use serde_json::{Value, json};

/// What the fake answers to one call.
enum Reply {
    /// One streamed assistant turn: text, then tool calls `(name, input)`.
    Turn { text: String, tools: Vec<(&'static str, Value)> },
    /// The provider's usage limit: 429 with `retry-after` (seconds) and its error body.
    RateLimited { retry_after: &'static str },
}

fn turn(text: &str, tools: Vec<(&'static str, Value)>) -> Reply {
    Reply::Turn { text: text.into(), tools }
}

/// What the fake received: the auth header and the JSON body of each call.
#[derive(Clone, Debug)]
struct Seen {
    api_key: Option<String>,
    body: Value,
}

type Script = dyn Fn(usize, usize) -> Reply + Send + Sync;

/// A scripted fake of the Anthropic Messages API (the real provider is off this machine).
/// `script(call, turn_index)` picks the reply to the `call`-th request (0-based), where
/// `turn_index` counts the assistant
/// messages already in the request: the loop starts every iteration with a fresh context, so
/// the script follows the conversation, not the number of calls, and a retried call gets the
/// same answer.
struct FakeAnthropicApi {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeAnthropicApi {
    fn start(script: impl Fn(usize, usize) -> Reply + Send + Sync + 'static) -> FakeAnthropicApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let s = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (s, script) = (s.clone(), script.clone());
                std::thread::spawn(move || {
                    if let Err(e) = serve(stream, &s, &*script) {
                        eprintln!("FakeAnthropicApi: {e}");
                    }
                });
            }
        });
        FakeAnthropicApi { port, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads one request (Content-Length or chunked body), answers it with a stream, closes.
fn serve(stream: TcpStream, seen: &Mutex<Vec<Seen>>, script: &Script) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    let (mut len, mut chunked, mut api_key) = (0usize, false, None);
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
            "x-api-key" => api_key = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![];
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).map_err(std::io::Error::other)?;
            let mut part = vec![0; n + 2];
            r.read_exact(&mut part)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&part[..n]);
        }
    } else {
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let call = {
        let mut seen = seen.lock().unwrap();
        seen.push(Seen { api_key, body: body.clone() });
        seen.len() - 1
    };
    let mut out = stream;
    if !path.ends_with("/v1/messages") {
        let msg =
            r#"{"type":"error","error":{"type":"not_found_error","message":"the fake serves only /v1/messages"}}"#;
        return write!(
            out,
            "HTTP/1.1 404 Not Found\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{msg}",
            msg.len()
        );
    }
    let turn_index = body["messages"].as_array().map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count());
    let (text, tools) = match script(call, turn_index) {
        Reply::Turn { text, tools } => (text, tools),
        Reply::RateLimited { retry_after } => {
            let msg = r#"{"type":"error","error":{"type":"rate_limit_error","message":"usage limit reached for the fake org"}}"#;
            return write!(
                out,
                "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: {retry_after}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{msg}",
                msg.len()
            );
        }
    };
    out.write_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )?;
    for ev in sse_events(&text, &tools, call) {
        write!(out, "{:x}\r\n{ev}\r\n", ev.len())?;
        out.flush()?;
    }
    out.write_all(b"0\r\n\r\n")?;
    out.flush()
}

/// The Messages API's streaming events for one turn, tool inputs split across deltas.
fn sse_events(text: &str, tools: &[(&str, Value)], n: usize) -> Vec<String> {
    let ev = |name: &str, v: Value| format!("event: {name}\ndata: {v}\n\n");
    let mut out = vec![ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": format!("msg_fake_{n}"), "type": "message", "role": "assistant",
            "model": "claude-test", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 50, "output_tokens": 1}}}),
    )];
    out.push(ev("ping", json!({"type": "ping"})));
    let mut idx = 0;
    if !text.is_empty() {
        out.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}}),
        ));
        let (a, b) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(0, |(i, _)| i));
        for part in [a, b] {
            out.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": part}}),
            ));
        }
        out.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": idx})));
        idx += 1;
    }
    for (i, (name, input)) in tools.iter().enumerate() {
        out.push(ev(
            "content_block_start",
            json!({"type": "content_block_start", "index": idx,
                "content_block": {"type": "tool_use", "id": format!("toolu_fake_{n}_{i}"), "name": name, "input": {}}}),
        ));
        let js = input.to_string();
        let mid = js.char_indices().nth(js.chars().count() / 2).map_or(0, |(i, _)| i);
        for part in [&js[..mid], &js[mid..]] {
            out.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": idx, "delta": {"type": "input_json_delta", "partial_json": part}}),
            ));
        }
        out.push(ev("content_block_stop", json!({"type": "content_block_stop", "index": idx})));
        idx += 1;
    }
    let stop = if tools.is_empty() { "end_turn" } else { "tool_use" };
    out.push(ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 20}}),
    ));
    out.push(ev("message_stop", json!({"type": "message_stop"})));
    out
}

fn testdata() -> PathBuf {
    std::env::var_os("LOOM_TESTDATA")
        .map(Into::into)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"))
}

/// loomd's config: the anthropic provider at the fake, its key (`test_value`) from the sops-nix file.
fn config(port: u16, extra: &str) -> String {
    let data = testdata();
    format!(
        "[secrets]\nfile = \"{}\"\nage_key_file = \"{}\"\n\
         [providers.anthropic]\nbase_url = \"http://127.0.0.1:{port}\"\nsecret = \"test_key\"\n{extra}",
        data.join("sops-nix/secrets.yaml").display(),
        data.join("sops-nix/age-keys.txt").display(),
    )
}

const SECRET: &str = "test_value";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "safe.directory=*"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temp dir with a git repository whose test fails (`quokka_add` subtracts) and a PROMPT.md.
fn failing_repo() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("loom-agent-repo").tempdir_in("/var/tmp").unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("calc.sh"), "# calc: arithmetic helpers\nquokka_add() {\n  echo $(( $1 - $2 ))\n}\n")
        .unwrap();
    std::fs::write(
        repo.join("test.sh"),
        "#!/bin/sh\n. ./calc.sh\ngot=$(quokka_add 2 3)\n\
         if [ \"$got\" != 5 ]; then echo \"FAIL: quokka_add 2 3 gave $got, want 5\"; exit 1; fi\necho PASS\n",
    )
    .unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "initial"]);
    std::fs::write(dir.path().join("PROMPT.md"), "# Fix the calculator\n\nRun `sh test.sh` and make it pass.\n")
        .unwrap();
    dir
}

/// `loom weaver create` for an agent loop over `repo`, through the real CLI.
fn create_loop(d: &Loomd, name: &str, dir: &Path, extra: &[&str]) -> Value {
    let (repo, prompt) = (dir.join("repo"), dir.join("PROMPT.md"));
    let mut args = vec![
        "weaver",
        "create",
        "--name",
        name,
        "--repo",
        repo.to_str().unwrap(),
        "--prompt",
        prompt.to_str().unwrap(),
        "--model",
        "anthropic/claude-test",
    ];
    args.extend_from_slice(extra);
    d.cli_json(&args)
}

/// Waits for the loop's weaver to exit; returns `inspect` (via the CLI) at that point.
fn wait_exited(d: &Loomd, name: &str) -> Value {
    d.wait_for(name, "exited", Duration::from_secs(60), |v| v["state"] == "exited" || v["state"] == "failed");
    let v = d.cli_json(&["weaver", "inspect", name]);
    assert_eq!(v["state"], "exited", "{v}\nlogs:\n{}", d.logs(name));
    v
}

/// The weaver's one thread, once the agent's stop event reached loomd.
fn the_thread(d: &Loomd, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = d.cli_json(&["thread", "list", "--weaver", name]);
        let threads = list.as_array().unwrap();
        if threads.len() == 1 && threads[0]["stop_reason"].is_string() {
            return threads[0].clone();
        }
        assert!(Instant::now() < deadline, "no finished thread for {name}: {list}\nlogs:\n{}", d.logs(name));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn events_of_kind<'a>(thread: &'a Value, kind: &str) -> Vec<&'a Value> {
    thread["events"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).collect()
}

#[test]
fn a_loop_fixes_a_failing_test_and_stops_when_until_passes() {
    if !privileged("a_loop_fixes_a_failing_test_and_stops_when_until_passes") {
        return;
    }
    let fake = FakeAnthropicApi::start(|_, t| match t {
        0 => turn("Let me read calc.sh first.", vec![("read_file", json!({"path": "calc.sh"}))]),
        1 => turn(
            "quokka_add subtracts; fixing it.",
            vec![("edit_file", json!({"path": "calc.sh", "old_str": "$1 - $2", "new_str": "$1 + $2"}))],
        ),
        2 => turn("", vec![("bash", json!({"command": "sh test.sh"}))]),
        _ => turn("Fixed quokka_add in calc.sh: it subtracted. The test passes.\n<promise>COMPLETE</promise>", vec![]),
    });
    let d = Loomd::start_with_config(Some(&config(fake.port, "")));
    let dir = failing_repo();
    let w = create_loop(&d, "fixer", dir.path(), &["--max-iterations", "5", "--until", "sh test.sh"]);
    let id = w["id"].as_str().unwrap().to_string();

    let v = wait_exited(&d, "fixer");
    assert_eq!(v["exit_code"], 0, "the loop ends with success when --until passes: {v}\n{}", d.logs("fixer"));
    let st = &v["agent_status"];
    assert_eq!(st["stop_reason"]["kind"], "until_passed", "inspect shows why the loop stopped: {v}");
    assert_eq!(st["state"], "stopped", "{v}");
    assert_eq!(st["iteration"], 1, "{v}");
    assert_eq!(st["commits"], 1, "{v}");
    let ps = d.cli_json(&["weaver", "ps"]);
    let row = ps.as_array().unwrap().iter().find(|w| w["name"] == "fixer").unwrap().clone();
    assert_eq!(row["agent_status"]["stop_reason"]["kind"], "until_passed", "ps carries the loop's progress: {row}");
    assert_eq!(row["agent_status"]["input_tokens"], 4 * 50, "{row}");
    // loomd's own metering of the same four streamed calls.
    let usage = d.cli_json(&["usage", "--weaver", "fixer"]);
    assert_eq!(usage[0]["requests"], 4, "{usage}");
    assert_eq!(usage[0]["input_tokens"], 4 * 50, "{usage}");
    assert_eq!(usage[0]["output_tokens"], 4 * 20, "{usage}");

    // The fix is in the weaver's workspace and committed by the loop (the weaver has exited,
    // so its workspace is read where loomd keeps it).
    let ws = d.state_dir().join("weavers").join(&id).join("root/workspace");
    assert!(std::fs::read_to_string(ws.join("calc.sh")).unwrap().contains("$(( $1 + $2 ))"));
    let log = git(&ws, &["log", "--format=%an|%s"]);
    assert!(log.starts_with("loom agent|loom: iteration 1: Fixed quokka_add in calc.sh"), "{log}");
    assert!(log.trim_end().ends_with("test|initial"), "{log}");
    assert_eq!(git(&ws, &["status", "--porcelain"]), "");
    assert!(git(&ws, &["show", "HEAD", "--", "calc.sh"]).contains("+  echo $(( $1 + $2 ))"));

    // The model was reached only through the proxy, with the real key injected, and saw each
    // tool's output in the next call.
    let seen = fake.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.iter().all(|s| s.api_key.as_deref() == Some(SECRET)), "{:?}", seen.iter().map(|s| &s.api_key));
    let req = |i: usize| serde_json::to_string(&seen[i].body["messages"]).unwrap();
    assert!(req(1).contains("$1 - $2"), "the read_file result reached the model: {}", req(1));
    assert!(req(3).contains("PASS"), "the bash result reached the model: {}", req(3));

    // The thread has every step, in Markdown and JSON, and search finds it.
    let summary = the_thread(&d, "fixer");
    let tid = summary["id"].as_str().unwrap();
    assert_eq!(summary["weaver_id"], id.as_str());
    assert_eq!(summary["stop_reason"], "--until command passed");
    let out = d.cli(&["thread", "show", tid]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = String::from_utf8_lossy(&out.stdout);
    for step in ["tool call `read_file`", "tool call `edit_file`", "tool call `bash`", "PASS", "$1 - $2"] {
        assert!(md.contains(step), "the thread lacks {step:?}:\n{md}");
    }
    let thread = d.cli_json(&["thread", "show", tid]);
    assert_eq!(events_of_kind(&thread, "tool_call").len(), 3, "{thread}");
    assert_eq!(events_of_kind(&thread, "tool_result").len(), 3, "{thread}");
    assert_eq!(events_of_kind(&thread, "model_reply").len(), 4, "{thread}");
    let commits = events_of_kind(&thread, "commit");
    assert_eq!(commits.len(), 1, "{thread}");
    assert_eq!(commits[0]["payload"]["hash"], git(&ws, &["rev-parse", "HEAD"]).trim(), "{thread}");
    let hits = d.cli_json(&["thread", "search", "quokka_add", "--weaver", "fixer"]);
    let hits = hits.as_array().unwrap();
    assert!(!hits.is_empty() && hits.iter().all(|h| h["thread_id"] == tid), "{hits:?}");
    assert!(hits.iter().any(|h| h["kind"] == "tool_result"), "the read_file output is searchable: {hits:?}");
    let hits = d.cli_json(&["thread", "search", "calc.sh"]);
    assert!(hits.as_array().unwrap().iter().any(|h| h["kind"] == "tool_call" && h["thread_id"] == tid), "{hits}");

    // The key is in no thread event and not in the weaver's output.
    assert!(!thread.to_string().contains(SECRET), "the provider key leaked into the thread");
    assert!(!md.contains(SECRET));
    assert!(!d.logs("fixer").contains(SECRET));
}

/// Answers each iteration's first call with a read outside /workspace, then changes nothing.
fn idle_reader(_: usize, t: usize) -> Reply {
    if t == 0 {
        turn("Let me look at the system.", vec![("read_file", json!({"path": "/etc/passwd"}))])
    } else {
        turn("I looked around and changed nothing.", vec![])
    }
}

#[test]
fn stop_rules_max_iterations_and_the_no_change_breaker_and_paths_outside_the_workspace() {
    if !privileged("stop_rules_max_iterations_and_the_no_change_breaker") {
        return;
    }
    let fake = FakeAnthropicApi::start(idle_reader);
    let d = Loomd::start_with_config(Some(&config(fake.port, "")));
    let dir = failing_repo();
    // Two loops at once: one capped below the breaker (3 idle iterations), one above it.
    create_loop(&d, "capped", dir.path(), &["--max-iterations", "2"]);
    create_loop(&d, "stuck", dir.path(), &["--max-iterations", "6"]);

    let v = wait_exited(&d, "capped");
    assert_eq!(v["exit_code"], 2, "a limit, not success: {v}");
    assert_eq!(v["agent_status"]["stop_reason"], json!({"kind": "max_iterations", "iterations": 2}), "{v}");
    assert_eq!(v["agent_status"]["iteration"], 2, "{v}");
    assert_eq!(the_thread(&d, "capped")["stop_reason"], "reached --max-iterations (2)");

    let v = wait_exited(&d, "stuck");
    assert_eq!(v["exit_code"], 2, "{v}");
    assert_eq!(v["agent_status"]["stop_reason"], json!({"kind": "no_progress", "iterations": 3}), "{v}");
    assert_eq!(v["agent_status"]["commits"], 0, "{v}");
    let summary = the_thread(&d, "stuck");
    assert_eq!(summary["stop_reason"], "circuit breaker: 3 iterations without a change in the tree");
    assert_eq!(summary["iteration"], 3, "{summary}");

    // The read of /etc/passwd was refused, the refusal is in the thread, and the model saw it.
    let thread = d.cli_json(&["thread", "show", summary["id"].as_str().unwrap()]);
    let results = events_of_kind(&thread, "tool_result");
    assert_eq!(results.len(), 3, "one refused read per iteration: {thread}");
    for r in &results {
        assert_eq!(r["payload"]["is_error"], true, "{r}");
        let text = r["text"].as_str().unwrap();
        assert!(text.contains("outside the workspace"), "{text}");
        assert!(!text.contains("root:x:0:0"), "the file's content leaked: {text}");
    }
    let seen = fake.seen();
    assert_eq!(seen.len(), 2 * 2 + 3 * 2, "two calls per iteration: {seen:?}");
    let answers: Vec<&Seen> =
        seen.iter().filter(|s| s.body["messages"].as_array().is_some_and(|m| m.len() == 3)).collect();
    assert_eq!(answers.len(), 5);
    for s in answers {
        let result = &s.body["messages"][2]["content"][0];
        assert_eq!(result["type"], "tool_result", "{result}");
        assert_eq!(result["is_error"], true, "{result}");
        assert!(result.to_string().contains("outside the workspace"), "{result}");
    }
    assert!(seen.iter().all(|s| s.api_key.as_deref() == Some(SECRET)));
}

#[test]
fn a_spent_token_budget_stops_the_loop_before_the_provider_is_called() {
    if !privileged("a_spent_token_budget_stops_the_loop") {
        return;
    }
    let fake = FakeAnthropicApi::start(|_, _| turn("never reached", vec![]));
    let d = Loomd::start_with_config(Some(&config(fake.port, "[proxy.limits]\nmax_tokens = 10\n")));
    let dir = failing_repo();
    create_loop(&d, "broke", dir.path(), &["--max-iterations", "5", "--until", "sh test.sh"]);
    let v = wait_exited(&d, "broke");
    assert_eq!(v["exit_code"], 2, "{v}");
    let st = &v["agent_status"];
    assert_eq!(st["stop_reason"]["kind"], "budget_exhausted", "{v}");
    let message = st["stop_reason"]["message"].as_str().unwrap();
    assert!(message.contains("token budget exhausted") && message.contains("max_tokens"), "{message}");
    assert_eq!(st["iteration"], 1, "the budget ends the loop at once: {v}");
    assert_eq!(fake.seen().len(), 0, "the proxy refused before calling the provider");
    let summary = the_thread(&d, "broke");
    assert!(summary["stop_reason"].as_str().unwrap().starts_with("budget exhausted: "), "{summary}");
}

#[test]
fn a_provider_usage_limit_pauses_the_loop_and_a_twice_matching_edit_is_refused() {
    if !privileged("a_provider_usage_limit_pauses_the_loop") {
        return;
    }
    // The first call hits the provider's usage limit with a retry-after longer than the proxy
    // waits out by itself, so the 429 reaches the agent, which pauses instead of failing.
    let fake = FakeAnthropicApi::start(|call, t| match (call, t) {
        (0, _) => Reply::RateLimited { retry_after: "2" },
        (_, 0) => turn(
            "Renaming the function in test.sh.",
            vec![("edit_file", json!({"path": "test.sh", "old_str": "quokka_add", "new_str": "quokka_sub"}))],
        ),
        _ => turn("The edit was ambiguous; stopping here. <promise>COMPLETE</promise>", vec![]),
    });
    let d = Loomd::start_with_config(Some(&config(fake.port, "[proxy.retry]\nmax_retry_after_ms = 500\n")));
    let dir = failing_repo();
    let started = Instant::now();
    let w = create_loop(&d, "paused", dir.path(), &["--max-iterations", "1"]);
    let v = wait_exited(&d, "paused");
    assert!(started.elapsed() >= Duration::from_secs(2), "the loop did not wait out retry-after");
    assert_eq!(v["exit_code"], 0, "{v}\n{}", d.logs("paused"));
    let st = &v["agent_status"];
    assert_eq!(st["stop_reason"]["kind"], "completion_marker", "the pause did not use up the only iteration: {v}");
    assert_eq!(st["iteration"], 1, "{v}");
    assert_eq!(fake.seen().len(), 3, "the 429, the same request again, then the answer to the tool result");
    assert_eq!(fake.seen()[0].body, fake.seen()[1].body, "after the pause the same request is sent again");

    let summary = the_thread(&d, "paused");
    let thread = d.cli_json(&["thread", "show", summary["id"].as_str().unwrap()]);
    assert_eq!(events_of_kind(&thread, "pause").len(), 1, "{thread}");
    let results = events_of_kind(&thread, "tool_result");
    assert_eq!(results.len(), 1, "{thread}");
    assert_eq!(results[0]["payload"]["is_error"], true, "{thread}");
    assert!(results[0]["text"].as_str().unwrap().contains("old_str matches 2 times in test.sh"), "{thread}");
    assert!(serde_json::to_string(&fake.seen()[2].body).unwrap().contains("old_str matches 2 times"));
    // Nothing was edited, so nothing was committed.
    let ws = d.state_dir().join("weavers").join(w["id"].as_str().unwrap()).join("root/workspace");
    assert_eq!(git(&ws, &["status", "--porcelain"]), "");
    assert_eq!(git(&ws, &["log", "--format=%s"]), "initial\n");
}

#[test]
fn a_command_that_runs_forever_is_ended_by_the_wall_clock_limit() {
    if !privileged("a_command_that_runs_forever_is_ended_by_the_wall_clock_limit") {
        return;
    }
    let fake = FakeAnthropicApi::start(|_, t| match t {
        0 => turn("", vec![("bash", json!({"command": "echo forever-started > forever.txt; sleep 100000"}))]),
        _ => turn("never reached: the wall clock ends the iteration first", vec![]),
    });
    let d = Loomd::start_with_config(Some(&config(fake.port, "")));
    let dir = failing_repo();
    let started = Instant::now();
    // The wall-clock limit reaches the agent through the weaver's environment.
    let w = create_loop(&d, "forever", dir.path(), &["--max-iterations", "5", "--env", "LOOM_WALL_CLOCK=3s"]);
    let v = wait_exited(&d, "forever");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "the endless command was not cut: {took:?}");
    assert_eq!(v["exit_code"], 2, "{v}");
    assert_eq!(v["agent_status"]["stop_reason"], json!({"kind": "wall_clock", "limit_secs": 3}), "{v}");
    assert_eq!(fake.seen().len(), 1, "the iteration was cut inside the tool call");
    // What the cut-short iteration changed is still committed.
    let ws = d.state_dir().join("weavers").join(w["id"].as_str().unwrap()).join("root/workspace");
    assert_eq!(git(&ws, &["show", "HEAD:forever.txt"]), "forever-started\n");
    let summary = the_thread(&d, "forever");
    assert_eq!(summary["stop_reason"], "wall-clock limit of 3s passed");
    let thread = d.cli_json(&["thread", "show", summary["id"].as_str().unwrap()]);
    assert!(events_of_kind(&thread, "tool_call").iter().any(|e| e["text"].as_str().unwrap().contains("sleep 100000")));
}
