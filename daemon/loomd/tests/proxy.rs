//! The LLM proxy from inside real weavers: streaming requests of both APIs go through with the
//! real key (from a sops-nix test file) injected, and the key is nowhere a weaver, a log, the
//! store or a response could show it. The upstream is a fake of the Anthropic and OpenAI APIs
//! on 127.0.0.1 speaking their real streaming wire formats.

mod common;
mod fake_upstream;

use std::time::Duration;

use common::{Loomd, privileged};
use fake_upstream::FakeUpstream;

fn testdata() -> std::path::PathBuf {
    std::env::var_os("LOOM_TESTDATA")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"))
}

const CALLS: &str = r#"
curl -sS -N --retry 20 --retry-connrefused --retry-delay 0 "$ANTHROPIC_BASE_URL/v1/messages" \
  -H "x-api-key: $ANTHROPIC_API_KEY" -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \
  -d '{"model":"claude-test","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
echo; echo ---
curl -sS -N --retry 20 --retry-connrefused --retry-delay 0 "$OPENAI_BASE_URL/chat/completions" \
  -H "Authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' \
  -d '{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}'
echo; echo ---ENV; env; echo ---FILES; grep -rl 'test_valu[e]' /workspace /etc /tmp /root 2>/dev/null; echo ---END
"#;

#[test]
fn weavers_reach_models_only_through_the_proxy_and_never_see_the_key() {
    if !privileged("weavers_reach_models_only_through_the_proxy") {
        return;
    }
    let up = FakeUpstream::start();
    let data = testdata();
    let config = format!(
        "[secrets]\nfile = \"{}\"\nage_key_file = \"{}\"\n\
         [providers.anthropic]\nbase_url = \"http://127.0.0.1:{port}\"\nsecret = \"test_key\"\n\
         [providers.openai]\nbase_url = \"http://127.0.0.1:{port}\"\nsecret = \"nested.test.file\"\n",
        data.join("sops-nix/secrets.yaml").display(),
        data.join("sops-nix/age-keys.txt").display(),
        port = up.port
    );
    let d = Loomd::start_with_config(Some(&config));
    let w = d.cli_json(&["weaver", "create", "--name", "caller", "--", "/bin/sh", "-c", CALLS]);
    d.wait_for("caller", "exited", Duration::from_secs(60), |v| v["state"] == "exited");
    let log = d.logs("caller");
    assert!(log.contains("hello from anthropic") && log.contains("event: message_stop"), "{log}");
    assert!(log.contains("hello from openai") && log.contains("data: [DONE]"), "{log}");
    let seen = up.seen_auth.lock().unwrap().clone();
    assert!(seen.iter().any(|h| h.eq_ignore_ascii_case("x-api-key: test_value")), "upstream saw {seen:?}");
    assert!(
        seen.iter().any(|h| h == "authorization: Bearer another value" || h == "Authorization: Bearer another value"),
        "upstream saw {seen:?}"
    );
    // The weaver's environment holds only its token.
    let env = log.split("---ENV").nth(1).unwrap();
    assert!(env.contains("ANTHROPIC_API_KEY=loom-wv-"), "{env}");
    let files = log.split("---FILES").nth(1).unwrap().split("---END").next().unwrap();
    assert_eq!(files.trim(), "", "a file in the weaver holds the key");
    // Usage was metered from the streams.
    let usage = d.cli_json(&["usage", "--weaver", "caller"]);
    assert_eq!(usage[0]["requests"], 2, "{usage}");
    assert_eq!(usage[0]["input_tokens"], 12 + 9, "{usage}");
    assert_eq!(usage[0]["output_tokens"], 7 + 5, "{usage}");
    // Nowhere on the host side either: loomd's log, the store, the weaver's directory.
    let mut haystack = std::fs::read(d.log_path()).unwrap();
    for entry in walk(&d.state_dir()) {
        haystack.extend(std::fs::read(entry).unwrap_or_default());
    }
    for secret in ["test_value", "another value"] {
        assert!(!haystack.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} leaked to disk or logs");
        assert!(!log.contains(secret), "{secret} leaked into a response");
    }
    let _ = w;
}

#[test]
fn a_weaver_cannot_pass_as_another_and_outsiders_are_refused() {
    if !privileged("a_weaver_cannot_pass_as_another") {
        return;
    }
    let up = FakeUpstream::start();
    let data = testdata();
    let config = format!(
        "[secrets]\nfile = \"{}\"\nage_key_file = \"{}\"\n[providers.anthropic]\nbase_url = \"http://127.0.0.1:{}\"\nsecret = \"test_key\"\n",
        data.join("sops-nix/secrets.yaml").display(),
        data.join("sops-nix/age-keys.txt").display(),
        up.port
    );
    let d = Loomd::start_with_config(Some(&config));
    let a = d.cli_json(&["weaver", "create", "--name", "alice", "--", "/bin/sleep", "300"]);
    let a_pid = a["pid"].as_i64().unwrap();
    let environ = std::fs::read(format!("/proc/{a_pid}/environ")).unwrap();
    let a_token = environ
        .split(|b| *b == 0)
        .find_map(|kv| std::str::from_utf8(kv.strip_prefix(b"LOOM_PROXY_TOKEN=")?).ok())
        .unwrap()
        .to_string();
    d.cli_json(&["weaver", "create", "--name", "bob", "--", "/bin/sleep", "300"]);
    let call = |token: &str| {
        format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --retry 20 --retry-connrefused --retry-delay 0 \"$ANTHROPIC_BASE_URL/v1/messages\" \
             -H \"x-api-key: {token}\" -H 'content-type: application/json' \
             -d '{{\"model\":\"claude-test\",\"max_tokens\":10,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'"
        )
    };
    let out = d.cli(&["weaver", "exec", "bob", "--", "/bin/sh", "-c", &call(&a_token)]);
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(code == "401" || code == "403", "bob passed as alice: {code}");
    let out = d.cli(&["weaver", "exec", "bob", "--", "/bin/sh", "-c", &call("$ANTHROPIC_API_KEY")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "bob's own token must work");
    // An admin lowers bob's token budget: the next call is refused in Anthropic's shape,
    // saying which budget and how to raise it.
    let limits = d.cli_json(&["weaver", "limits", "bob", "--max-tokens", "5"]);
    assert_eq!(limits["max_tokens"], 5);
    let body_call = call("$ANTHROPIC_API_KEY").replace("-o /dev/null -w '%{http_code}'", "");
    let out = d.cli(&["weaver", "exec", "bob", "--", "/bin/sh", "-c", &body_call]);
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(body.contains("budget") && body.contains("loom weaver limits"), "{body}");
    assert!(body.contains("\"type\":\"error\""), "not Anthropic's error shape: {body}");
    assert_eq!(d.cli_json(&["weaver", "limits", "bob"])["max_tokens"], 5);
    // From outside any weaver, on the host listener, with no valid token.
    let status = d.cli_json(&["status"]);
    let port = status["sections"]["proxy"]["host_port"].as_u64().unwrap();
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/v1/messages")])
        .args(["-H", "x-api-key: loom-wv-0000000000000000000000000000000000000000000000000000000000000000"])
        .args(["-d", "{}"])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(code == "401" || code == "403", "an outsider got {code}");
    // The token dies with its weaver.
    d.cli_json(&["weaver", "rm", "--force", "alice"]);
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://127.0.0.1:{port}/v1/messages")])
        .args(["-H", &format!("x-api-key: {a_token}"), "-d", "{}"])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(code == "401" || code == "403", "a removed weaver's token still works: {code}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() && !p.ends_with("usr") => out.extend(walk(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

#[test]
fn tokens_are_in_no_host_command_line() {
    if !privileged("tokens_are_in_no_host_command_line") {
        return;
    }
    let d = Loomd::start();
    let w = d.cli_json(&["weaver", "create", "--name", "quiet", "--env", "MINE=secret-ish", "--", "/bin/sleep", "300"]);
    let pid = w["pid"].as_i64().unwrap();
    let environ = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap()).to_string();
    assert!(
        environ.contains("LOOM_PROXY_TOKEN=loom-wv-") && environ.contains("MINE=secret-ish"),
        "the weaver lost its env"
    );
    // Any local user can read every process's argv: no token and no --env value may be there.
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let text = String::from_utf8_lossy(&cmdline);
        assert!(
            !text.contains("loom-wv-") && !text.contains("secret-ish"),
            "leaked in {}: {text}",
            entry.path().display()
        );
    }
}
