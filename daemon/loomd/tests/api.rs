//! The API's edges with real clients: access by peer credentials (real uids and groups) and
//! bad input of every kind, each a clear 4xx or a clean close with nothing else disturbed.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{Loomd, as_user, ensure_group, loom_bin, privileged};

fn error_code(out: &Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|_| panic!("stderr is not a JSON error: {}", String::from_utf8_lossy(&out.stderr)));
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

#[test]
fn access_follows_the_clients_uid_and_groups() {
    if !privileged("access_follows_the_clients_uid_and_groups") {
        return;
    }
    let admin = ensure_group("loomt-admin");
    let op = ensure_group("loomt-op");
    let d = Loomd::start_with_config(Some("[access]\nadmin_group = \"loomt-admin\"\noperator_group = \"loomt-op\"\n"));
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.gid(), op, "the socket belongs to the operator group");

    let out = as_user(&d, 5001, &[op], &["weaver", "create", "--name", "mine", "--", "/bin/sleep", "300"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["owner_uid"], 5001);

    // Another operator sees nothing of it and cannot touch it.
    let ps = as_user(&d, 5002, &[op], &["weaver", "ps"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&ps.stdout).unwrap(), serde_json::json!([]));
    for args in [&["weaver", "inspect", "mine"][..], &["weaver", "stop", "mine"], &["weaver", "rm", "-f", "mine"]] {
        let out = as_user(&d, 5002, &[op], args);
        assert!(!out.status.success());
        assert_eq!(error_code(&out), "not_found", "{args:?}");
    }
    let out = as_user(&d, 5002, &[op], &["weaver", "exec", "mine", "--", "/bin/true"]);
    assert_eq!(error_code(&out), "not_found");

    // An admin (in the socket's group too, to reach it) sees and stops it.
    let ps = as_user(&d, 5003, &[admin, op], &["weaver", "ps"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&ps.stdout).unwrap()[0]["name"], "mine");
    let out = as_user(&d, 5003, &[admin, op], &["weaver", "stop", "mine"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A stranger is stopped by the socket's mode...
    let out = as_user(&d, 5004, &[], &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loom group"), "{}", String::from_utf8_lossy(&out.stderr));
    // ...and by loomd itself, with an audit line, should the socket be opened up.
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_user(&d, 5004, &[], &["status"]);
    assert_eq!(error_code(&out), "forbidden");
    let log = std::fs::read_to_string(d.log_path()).unwrap();
    assert!(log.contains("refused") && log.contains("uid=5004"), "no audit line for the refusal: {log}");
    // An admin outside the operator group reaches everything once it can reach the socket.
    let ps = as_user(&d, 5005, &[admin], &["weaver", "ps"]);
    assert!(ps.status.success());
}

fn raw(d: &Loomd, request: &[u8]) -> (u16, serde_json::Value) {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let (status, body) = common::read_response(&mut s).unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
}

fn post(d: &Loomd, path: &str, body: &str) -> (u16, serde_json::Value) {
    d.request("POST", path, Some(body))
}

fn check(got: (u16, serde_json::Value), status: u16, code: &str, needle: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["code"], code, "{}", got.1);
    let msg = got.1["error"]["message"].as_str().unwrap_or("");
    assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
}

#[test]
fn bad_input_gets_a_clear_error_and_disturbs_nothing() {
    if !privileged("bad_input_gets_a_clear_error") {
        return;
    }
    let d = Loomd::start();
    let (s, w) = post(&d, "/v1/weavers", r#"{"name":"steady","command":["/bin/sleep","300"]}"#);
    assert_eq!(s, 200, "{w}");
    let pid = w["pid"].as_i64().unwrap();

    check(post(&d, "/v1/weavers", "{not json"), 400, "bad_request", "invalid JSON");
    check(post(&d, "/v1/weavers", r#"{"nmae":"x","command":["true"]}"#), 400, "bad_request", "unknown field `nmae`");
    check(
        post(&d, "/v1/weavers", r#"{"memory":"lots","command":["true"]}"#),
        400,
        "bad_request",
        "invalid size \"lots\"",
    );
    check(post(&d, "/v1/weavers", r#"{"command":[]}"#), 400, "bad_request", "nothing to run");
    check(post(&d, "/v1/weavers", r#"{"name":"steady","command":["true"]}"#), 409, "conflict", "already exists");
    check(d.request("GET", "/v1/weavers/nope", None), 404, "not_found", "no weaver \"nope\"");
    check(d.request("POST", "/v1/weavers/nope/stop", None), 404, "not_found", "no weaver");
    check(d.request("GET", "/v2/everything", None), 404, "not_found", "no endpoint");
    check(post(&d, "/v1/weavers/steady/start", ""), 409, "conflict", "already running");
    check(raw(&d, b"POST /v1/weavers/steady/exec HTTP/1.1\r\nHost: x\r\nContent-Length: 25\r\n\r\n{\"command\":[\"/bin/true\"]}"), 400, "bad_request", "Upgrade");

    // 100 MB announced: refused before it is read.
    let t = Instant::now();
    let head = b"POST /v1/weavers HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n";
    assert_eq!(status_while_sending(&d, head, &vec![b' '; 1 << 20]), 413);
    assert!(t.elapsed() < Duration::from_secs(10));
    // 100 MB streamed without a length: cut off at the limit.
    let head = b"POST /v1/weavers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunk = [format!("{:x}\r\n", 1 << 20).into_bytes(), vec![b' '; 1 << 20], b"\r\n".to_vec()].concat();
    assert_eq!(status_while_sending(&d, head, &chunk), 413);

    // A client that leaves mid-stream: a followed log, and an exec whose command must die.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"GET /v1/weavers/steady/logs?follow=true HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let _ = s.read(&mut buf).unwrap();
    drop(s);
    // A duration no other process on the host has, so only this test's command matches.
    let secs = format!("4242.{}", std::process::id());
    let mut exec = Command::new(loom_bin())
        .args(["--socket", d.socket.to_str().unwrap(), "weaver", "exec", "steady", "--", "/bin/sleep", &secs])
        .spawn()
        .unwrap();
    let pattern = format!("^/bin/sleep {secs}$");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pids = loop {
        let pids = pgrep(&pattern);
        if !pids.is_empty() {
            break pids;
        }
        assert!(Instant::now() < deadline, "the exec'd command never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    exec.kill().unwrap();
    let _ = exec.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
        assert!(Instant::now() < deadline, "the exec'd command outlived its client");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client that sends half a request head and vanishes.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"POST /v1/weavers HTTP/1.1\r\nContent-Le").unwrap();
    drop(s);

    // Nothing else was disturbed.
    let v = d.inspect("steady");
    assert_eq!(v["state"], "running");
    assert_eq!(v["pid"], pid);
    let (s, list) = d.request("GET", "/v1/weavers", None);
    assert_eq!(s, 200);
    assert_eq!(list.as_array().unwrap().len(), 1, "failed creates left no weavers behind: {list}");
}

/// Sends `head` and then `chunk` up to 100 times while another thread reads the answer: loomd
/// answers and closes before the body is in, and a client that only reads after writing
/// everything would find the connection reset and the answer gone.
fn status_while_sending(d: &Loomd, head: &[u8], chunk: &[u8]) -> u16 {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = s.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
    });
    let _ = s.write_all(head);
    for _ in 0..100 {
        if s.write_all(chunk).is_err() {
            break;
        }
    }
    answer.join().unwrap()
}

/// Pids whose full command line matches `pattern`.
fn pgrep(pattern: &str) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-f", pattern]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn check_config_validates_and_explains() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "backend = \"nspawn\"\n[weaver]\nmemory = \"2G\"\n").unwrap();
    let out = Command::new(common::loomd_bin()).arg("--check-config").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[weaver]\nmemroy = \"2G\"\n").unwrap();
    let out = Command::new(common::loomd_bin()).arg("--check-config").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memroy") && err.contains("bad.toml"), "{err}");
    let bad_audit = dir.path().join("audit.toml");
    std::fs::write(&bad_audit, "[audit]\nring_buffer = 5\n").unwrap();
    let out = Command::new(common::loomd_bin()).arg("--check-config").arg(&bad_audit).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ring_buffer"), "{}", String::from_utf8_lossy(&out.stderr));
    let bad_proxy = dir.path().join("proxy.toml");
    std::fs::write(&bad_proxy, "[providers.anthropic]\nbase_ur = \"x\"\n").unwrap();
    let out = Command::new(common::loomd_bin()).arg("--check-config").arg(&bad_proxy).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("base_ur"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn testdata() -> std::path::PathBuf {
    std::env::var_os("LOOM_TESTDATA")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"))
}

#[test]
fn secrets_check_reports_which_secrets_decrypt_and_never_their_values() {
    let data = testdata();
    assert!(data.join("sops-nix/secrets.yaml").exists(), "test vectors missing at {}", data.display());
    let config = format!(
        "[secrets]\nfile = \"{}\"\nage_key_file = \"{}\"\n\
         [providers.anthropic]\nbase_url = \"http://127.0.0.1:1\"\nsecret = \"test_key\"\n\
         [providers.openai]\nbase_url = \"http://127.0.0.1:1\"\nsecret = \"nested.test.file\"\n\
         [providers.openrouter]\nbase_url = \"http://127.0.0.1:1\"\nsecret = \"nested.nope\"\n",
        data.join("sops-nix/secrets.yaml").display(),
        data.join("sops-nix/age-keys.txt").display()
    );
    let d = Loomd::start_with_config(Some(&config));
    let out = d.cli(&["--json", "secrets", "check"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"], "decrypted", "{v}");
    let by: std::collections::BTreeMap<String, bool> = v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["provider"].as_str().unwrap().to_string(), c["ok"].as_bool().unwrap()))
        .collect();
    assert!(by["anthropic"]);
    assert!(by["openai"]);
    assert!(!by["openrouter"]);
    let human = d.cli(&["secrets", "check"]);
    let everything =
        [out.stdout, out.stderr, human.stdout, human.stderr, std::fs::read(d.log_path()).unwrap()].concat();
    let text = String::from_utf8_lossy(&everything);
    assert!(!text.contains("test_value") && !text.contains("another value"), "a secret value leaked: {text}");
}

#[test]
fn a_tampered_secrets_file_is_a_warning_not_a_crash() {
    let data = testdata();
    let dir = tempfile::tempdir().unwrap();
    let tampered = dir.path().join("secrets.yaml");
    let text = std::fs::read_to_string(data.join("sops-nix/secrets.yaml")).unwrap();
    std::fs::write(&tampered, text.replacen("data:2mP+", "data:3mP+", 1)).unwrap();
    let config = format!(
        "[secrets]\nfile = \"{}\"\nage_key_file = \"{}\"\n[providers.anthropic]\nbase_url = \"http://127.0.0.1:1\"\nsecret = \"test_key\"\n",
        tampered.display(),
        data.join("sops-nix/age-keys.txt").display()
    );
    let d = Loomd::start_with_config(Some(&config));
    let status = d.cli_json(&["status"]);
    let warnings = status["warnings"].to_string();
    assert!(warnings.contains("test_key") || warnings.contains("MAC") || warnings.contains("tamper"), "{status}");
    let v = d.cli_json(&["secrets", "check"]);
    assert_eq!(v["status"], "error");
    assert_eq!(v["secrets"][0]["ok"], false);
}
