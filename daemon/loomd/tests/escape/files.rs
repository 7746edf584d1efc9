//! Weaver-owned files: what a weaver plants in its root for loomd (root) to read or write —
//! the agent's status and spool as symlinks to `/dev/zero` or a host file, or as FIFOs; its
//! `/.loom` as a symlink to a host directory; a root filled past its disk cap; a log printed
//! forever. loomd must keep answering, never return the host file's content, never write or
//! chown through the symlink, and stop the weaver that outgrows its caps.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{self, Loomd, exec_sh, privileged, sleeper};

/// An agent weaver whose loop body is `sleep 600`: loomd reads its status and spool.
fn agent_sleeper(d: &Loomd, name: &str) -> Value {
    let prompt = d.dir.path().join(format!("{name}-PROMPT.md"));
    std::fs::write(&prompt, "# Wait\n").unwrap();
    let w = d.cli_json(&[
        "weaver",
        "create",
        "--name",
        name,
        "--prompt",
        prompt.to_str().unwrap(),
        "--model",
        "anthropic/claude-test",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(w["state"], "running", "{w}");
    w
}

/// Runs `script` in the weaver and checks it printed `planted`: the attack really ran.
fn plant(d: &Loomd, name: &str, script: &str) {
    let out = exec_sh(d, name, &format!("{script} && echo planted"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("planted"), "planting failed: {text}{}", String::from_utf8_lossy(&out.stderr));
}

/// `inspect` and `ps` over the API, each answered within a second; `inspect`'s answer.
fn answers_within_a_second(d: &Loomd, name: &str) -> Value {
    let t = Instant::now();
    let (status, one) = d.request("GET", &format!("/v1/weavers/{name}"), None);
    assert!(t.elapsed() < Duration::from_secs(1), "inspect took {:?}", t.elapsed());
    assert_eq!(status, 200, "{one}");
    let t = Instant::now();
    let (status, all) = d.request("GET", "/v1/weavers", None);
    assert!(t.elapsed() < Duration::from_secs(1), "ps took {:?}", t.elapsed());
    assert_eq!(status, 200, "{all}");
    one
}

/// Stops and removes the weaver, each within `limit`: no worker or lock is held by a file.
fn stop_and_rm_work(d: &Loomd, name: &str) {
    let limit = Duration::from_secs(30);
    let t = Instant::now();
    let v = d.cli_json(&["weaver", "stop", name]);
    assert_eq!(v["state"], "stopped", "{v}");
    assert!(t.elapsed() < limit, "stop took {:?}", t.elapsed());
    let t = Instant::now();
    d.cli_json(&["weaver", "rm", name]);
    assert!(t.elapsed() < limit, "rm took {:?}", t.elapsed());
}

fn loomd_log(d: &Loomd) -> String {
    std::fs::read_to_string(d.log_path()).unwrap_or_default()
}

/// Waits until loomd's log has `needle` (the run's end is handled after `stop` returns).
fn wait_for_log(d: &Loomd, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !loomd_log(d).contains(needle) {
        assert!(Instant::now() < deadline, "loomd never logged {needle:?}:\n{}", loomd_log(d));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_and_spool_linked_to_dev_zero_are_refused_not_read() {
    if !privileged("status_and_spool_linked_to_dev_zero_are_refused_not_read") {
        return;
    }
    let d = support::loomd("");
    agent_sleeper(&d, "zero");
    plant(&d, "zero", "ln -sf /dev/zero /.loom/agent/status.json && ln -sf /dev/zero /.loom/agent/spool.jsonl");
    let v = answers_within_a_second(&d, "zero");
    assert_eq!(
        v["agent_status"]["error"],
        "/.loom/agent/status.json is or goes through a symlink, and loomd never follows a weaver's symlinks",
        "{v}"
    );
    stop_and_rm_work(&d, "zero");
    wait_for_log(&d, "/.loom/agent/spool.jsonl is or goes through a symlink");
}

#[test]
fn status_and_spool_linked_to_a_host_file_never_return_its_content() {
    if !privileged("status_and_spool_linked_to_a_host_file_never_return_its_content") {
        return;
    }
    let d = support::loomd("");
    let w = agent_sleeper(&d, "peek");
    let id = w["id"].as_str().unwrap();
    // A host file outside the state dir, in the shapes loomd would parse if it followed links.
    let host = tempfile::Builder::new().prefix("loomesc-host").tempdir_in("/var/tmp").unwrap();
    let marker = "HOSTMARKER7f3a";
    let status = host.path().join("status.json");
    std::fs::write(&status, format!(r#"{{"iteration": 1, "stop_reason": {{"kind": "{marker}"}}}}"#)).unwrap();
    let spool = host.path().join("spool.jsonl");
    std::fs::write(
        &spool,
        format!(
            r#"{{"thread_id": "t-host", "weaver_id": "{id}", "seq": 1, "ts_ms": 1, "kind": "tool_call", "text": "{marker}"}}"#
        ) + "\n",
    )
    .unwrap();
    plant(
        &d,
        "peek",
        &format!(
            "ln -sf {} /.loom/agent/status.json && ln -sf {} /.loom/agent/spool.jsonl",
            status.display(),
            spool.display()
        ),
    );
    let v = answers_within_a_second(&d, "peek");
    assert!(v["agent_status"]["error"].as_str().is_some_and(|e| e.contains("symlink")), "{v}");
    let ps = d.cli(&["weaver", "ps"]);
    let inspect = d.cli(&["--json", "weaver", "inspect", "peek"]);
    for out in [&ps.stdout, &inspect.stdout] {
        assert!(!String::from_utf8_lossy(out).contains(marker), "{}", String::from_utf8_lossy(out));
    }
    stop_and_rm_work(&d, "peek");
    wait_for_log(&d, "/.loom/agent/spool.jsonl is or goes through a symlink");
    let hits = d.cli_json(&["thread", "search", marker]);
    assert_eq!(hits, serde_json::json!([]), "the host file's event reached a thread");
}

#[test]
fn status_and_spool_as_fifos_block_no_worker_and_no_lock() {
    if !privileged("status_and_spool_as_fifos_block_no_worker_and_no_lock") {
        return;
    }
    let d = support::loomd("");
    agent_sleeper(&d, "fifo");
    plant(&d, "fifo", "cd /.loom/agent && rm -f status.json spool.jsonl && mkfifo status.json spool.jsonl");
    for _ in 0..3 {
        let v = answers_within_a_second(&d, "fifo");
        assert_eq!(v["agent_status"]["error"], "/.loom/agent/status.json is a FIFO, not a regular file", "{v}");
    }
    stop_and_rm_work(&d, "fifo");
    wait_for_log(&d, "/.loom/agent/spool.jsonl is a FIFO, not a regular file");
    let t = Instant::now();
    assert_eq!(d.request("GET", "/v1/status", None).0, 200);
    assert!(t.elapsed() < Duration::from_secs(1), "status took {:?}", t.elapsed());
}

/// The entries of `dir` with their owner, mode, size and modification time.
fn snapshot(dir: &Path) -> Vec<(String, u32, u32, u64, i64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), m.uid(), m.mode(), m.len(), m.mtime())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_loom_dir_swapped_for_a_host_symlink_gets_nothing_written_or_chowned_there() {
    if !privileged("a_loom_dir_swapped_for_a_host_symlink_gets_nothing_written_or_chowned_there") {
        return;
    }
    let d = support::loomd("");
    let host = tempfile::Builder::new().prefix("loomesc-loomdir").tempdir_in("/var/tmp").unwrap();
    // What an unguarded start would remove (`started`) and overwrite or chown (`env`).
    std::fs::write(host.path().join("started"), "host's own").unwrap();
    std::fs::write(host.path().join("env"), "host's own").unwrap();
    let before = (snapshot(host.path()), std::fs::metadata(host.path()).unwrap().uid());
    sleeper(&d, "swap", &[]);
    // Moved rather than removed: the agent binary may be bound into it (a busy mount point).
    plant(&d, "swap", &format!("mv /.loom /.loom-old && ln -s {} /.loom", host.path().display()));
    d.cli_json(&["weaver", "stop", "swap"]);
    let v = d.cli_json(&["weaver", "start", "swap"]);
    assert_eq!(v["state"], "running", "the start puts /.loom back: {v}");
    assert_eq!((snapshot(host.path()), std::fs::metadata(host.path()).unwrap().uid()), before);
    let out = exec_sh(&d, "swap", "test -d /.loom && ! test -L /.loom && test -f /.loom/started && echo real-dir");
    assert!(String::from_utf8_lossy(&out.stdout).contains("real-dir"), "{out:?}");
    d.cli_json(&["weaver", "rm", "--force", "swap"]);
    assert_eq!((snapshot(host.path()), std::fs::metadata(host.path()).unwrap().uid()), before);
}

#[test]
fn a_weaver_filling_its_root_past_its_disk_cap_is_stopped_as_failed() {
    if !privileged("a_weaver_filling_its_root_past_its_disk_cap_is_stopped_as_failed") {
        return;
    }
    let d = support::loomd("");
    sleeper(&d, "small", &["--disk", "8M"]);
    plant(&d, "small", "head -c 4000000 /dev/urandom > /workspace/half");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.inspect("small")["state"], "running", "within its cap it runs on");
    // In the background: loomd may stop the weaver before an exec of the write would return.
    plant(&d, "small", "{ (head -c 12000000 /dev/urandom > /workspace/fill) >/dev/null 2>&1 & }");
    let v = d.wait_for("small", "failed", Duration::from_secs(30), |v| v["state"] == "failed");
    assert_eq!(v["reason"], "its root grew past its disk cap of 8M; free space or raise --disk", "{v}");
    // A fresh start by hand is allowed, and the same check stops it again.
    let again = d.cli_json(&["weaver", "start", "small"]);
    assert_eq!(again["state"], "running", "{again}");
    let v = d.wait_for("small", "failed again", Duration::from_secs(30), |v| v["state"] == "failed");
    assert!(v["started_at"].as_u64() >= again["started_at"].as_u64(), "{v}");
}

#[test]
fn a_weaver_printing_forever_keeps_at_most_its_log_size() {
    if !privileged("a_weaver_printing_forever_keeps_at_most_its_log_size") {
        return;
    }
    let d = support::loomd("");
    let w = d.cli_json(&[
        "weaver",
        "create",
        "--name",
        "chatty",
        "--log-size",
        "1M",
        "--",
        "/bin/sh",
        "-c",
        "yes 'all work and no play' | head -c 20000000; echo; echo the-last-line",
    ]);
    let id = w["id"].as_str().unwrap().to_string();
    d.wait_for("chatty", "exited", Duration::from_secs(60), |v| v["state"] == "exited");
    let dir = d.state_dir().join("weavers").join(&id);
    let kept: u64 = ["log", "log.1"].iter().map(|f| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0)).sum();
    assert!(kept <= 1 << 20, "kept {kept} bytes of a 1M log");
    assert!(kept >= 1 << 19, "the latest half of the cap at least is kept: {kept}");
    let logs = d.logs("chatty");
    // nspawn may add a line of its own as it ends.
    assert!(
        logs.lines().rev().take(3).any(|l| l == "the-last-line"),
        "the latest output is there: {:?}",
        &logs[logs.len().saturating_sub(300)..]
    );
    assert!(logs.len() as u64 <= 1 << 20);
}
