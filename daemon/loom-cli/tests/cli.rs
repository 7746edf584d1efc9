//! The CLI's own behaviour, without a loomd: its help, and errors that say what to do, as
//! text or as JSON on stderr with a non-zero exit. (Building this test also puts the `loom`
//! binary where loomd's integration tests look for it.)

use std::process::Command;

fn loom(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loom")).args(args).env_remove("LOOM_SOCKET").output().unwrap()
}

#[test]
fn help_lists_the_whole_surface() {
    let out = loom(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["status", "weaver", "thread", "audit", "usage", "secrets"] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
    let out = loom(&["weaver", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["create", "ps", "inspect", "logs", "exec", "stop", "start", "rm", "limits"] {
        assert!(help.contains(cmd), "{cmd} missing from:\n{help}");
    }
}

#[test]
fn an_unreachable_loomd_is_a_json_error_that_says_what_to_do() {
    let out = loom(&["--socket", "/nonexistent/loomd.sock", "--json", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "unavailable");
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(msg.contains("/nonexistent/loomd.sock") && msg.contains("is loomd running"), "{msg}");
    let out = loom(&["--socket", "/nonexistent/loomd.sock", "status"]);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("loom: cannot connect to loomd"));
}

#[test]
fn bad_arguments_are_refused_before_anything_is_sent() {
    let out = loom(&["--socket", "/nonexistent/s", "--json", "weaver", "create", "--env", "NOEQUALS", "--", "true"]);
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert!(err["error"]["message"].as_str().unwrap().contains("not KEY=VALUE"), "{err}");
    let out = loom(&["weaver", "create", "--prompt", "p.md"]);
    assert_eq!(out.status.code(), Some(2), "--prompt needs --model");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
    let out =
        loom(&["--socket", "/nonexistent/s", "weaver", "create", "--prompt", "/nonexistent/p.md", "--model", "a/b"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading --prompt /nonexistent/p.md"));
}
