//! The eBPF audit of real weavers: each action inside a weaver appears with its fields in
//! `loom audit` and in the sink (NDJSON here: no journald on this host), and the same
//! actions outside any weaver produce nothing.

mod common;

use std::time::Duration;

use common::{Loomd, privileged};

const ACTIONS: &str = r#"
/bin/echo audit-arg-1 audit-arg-2
echo data > /workspace/a
mv /workspace/a /workspace/b
rm /workspace/b
curl -s -o /dev/null --max-time 2 http://127.0.0.1:4141/ || true
python3 -c 'import os
try: os.setuid(4242)
except OSError: pass'
mkdir -p /tmp/m; mount -t tmpfs none /tmp/m 2>/dev/null || true
python3 -c 'import ctypes; ctypes.CDLL(None).ptrace(16, 1, 0, 0)'
"#;

fn find<'a>(
    events: &'a [serde_json::Value],
    kind: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["kind"] == kind && pred(e))
        .unwrap_or_else(|| panic!("no {kind} event matched among {} events", events.len()))
}

#[test]
fn actions_inside_a_weaver_are_audited_and_outside_ones_are_not() {
    if !privileged("actions_inside_a_weaver_are_audited") {
        return;
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        assert_ne!(std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref(), Ok("1"), "no kernel BTF");
        eprintln!("SKIPPED: no kernel BTF");
        return;
    }
    let d = Loomd::start_with_config(Some("[audit]\nrequired = true\nsink = \"ndjson\"\n"));
    // Nested, so that the mount attempt reaches the kernel's tracepoints: a plain weaver's
    // seccomp filter refuses mount before any tracepoint runs (see loomd's sandbox).
    let w = d.cli_json(&["weaver", "create", "--name", "audited", "--nested", "--", "/bin/sh", "-c", ACTIONS]);
    let id = w["id"].as_str().unwrap().to_string();
    d.wait_for("audited", "exited", Duration::from_secs(30), |v| v["state"] == "exited");
    // Outside any weaver: the same kind of action must leave no trace.
    let out = std::process::Command::new("/bin/echo").args(["outside-marker"]).output().unwrap();
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(500));

    let events: Vec<serde_json::Value> =
        serde_json::from_value(d.cli_json(&["audit", "--weaver", "audited", "--limit", "10000"])).unwrap();
    assert!(events.iter().all(|e| e["weaver"] == id.as_str()));
    let exec = find(&events, "exec", |e| e["argv"] == serde_json::json!(["/bin/echo", "audit-arg-1", "audit-arg-2"]));
    assert_eq!(exec["path"], "/bin/echo");
    assert!(exec["pid"].as_u64().unwrap() > 0 && exec["ppid"].as_u64().unwrap() > 0);
    assert_ne!(exec["uid"], 0, "uids are host ids: the weaver's root is not the host's");
    assert!(exec["comm"].is_string() && exec["time_unix_ns"].as_u64().unwrap() > 0);
    let open = find(&events, "open", |e| e["path"] == "/workspace/a");
    assert_ne!(open["flags"].as_u64().unwrap() & 0o3, 0, "opened for writing: {open}");
    find(&events, "rename", |e| e["path"] == "/workspace/a" && e["new_path"] == "/workspace/b");
    find(&events, "unlink", |e| e["path"] == "/workspace/b");
    find(&events, "connect", |e| e["port"] == 4141 && e["addr"] == "127.0.0.1");
    find(&events, "setuid", |e| e["ids"].as_array().is_some_and(|ids| ids.contains(&serde_json::json!(4242))));
    find(&events, "mount", |e| e["fstype"] == "tmpfs" && e["path"] == "/tmp/m");
    find(&events, "ptrace", |e| e["target_pid"] == 1);
    find(&events, "exit", |_| true);

    // Filters.
    let execs: Vec<serde_json::Value> =
        serde_json::from_value(d.cli_json(&["audit", "--weaver", "audited", "--kind", "exec"])).unwrap();
    assert!(!execs.is_empty() && execs.iter().all(|e| e["kind"] == "exec"));
    let out = d.cli(&["--json", "audit", "--weaver", "audited", "--kind", "teleport"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown event kind"));

    // The sink has them too, and nothing from outside reached either.
    let ndjson = std::fs::read_to_string(d.state_dir().join("audit.ndjson")).unwrap();
    assert!(ndjson.contains("audit-arg-1"));
    let all = serde_json::to_string(&d.cli_json(&["audit", "--limit", "10000"])).unwrap();
    assert!(
        !all.contains("outside-marker") && !ndjson.contains("outside-marker"),
        "an action outside any weaver was recorded"
    );
    // Loss accounting is visible.
    let status = d.cli_json(&["status"]);
    assert!(status["sections"]["audit"]["seq_issued"].as_u64().unwrap() > 0, "{status}");
}
