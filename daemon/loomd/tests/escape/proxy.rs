//! The proxy from inside real weavers: the passthrough reaches no account endpoint (batches,
//! files, fine-tuning, a traversal to them) and the fake upstream never sees one; allowed calls
//! are metered; a weaver cannot use another weaver's token, reach another weaver's listener or
//! write into another weaver's thread; the threads endpoint has the model calls' rate limit and
//! refuses an oversized batch while it streams in. Requests are raw HTTP through bash's
//! `/dev/tcp`, so what is sent is exactly what is written here (no client normalises a path).

use std::time::{Duration, Instant};

use crate::fake_upstream::FakeUpstream;
use crate::support::{Loomd, field, loomd, privileged, sleeper};

fn testdata() -> std::path::PathBuf {
    std::env::var_os("LOOM_TESTDATA")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"))
}

/// Providers on the fake upstream, with keys from the sops-nix test file, and `extra` config.
fn start(up: &FakeUpstream, extra: &str) -> Loomd {
    let data = testdata();
    loomd(&format!(
        "[secrets]\nfile = \"{}\"\nage_key_file = \"{}\"\n\
         [providers.anthropic]\nbase_url = \"http://127.0.0.1:{port}\"\nsecret = \"test_key\"\n\
         [providers.openai]\nbase_url = \"http://127.0.0.1:{port}\"\nsecret = \"nested.test.file\"\n{extra}",
        data.join("sops-nix/secrets.yaml").display(),
        data.join("sops-nix/age-keys.txt").display(),
        port = up.port
    ))
}

/// Bash functions for raw HTTP to the weaver's proxy listener on 127.0.0.1:4141.
/// `call NAME METHOD PATH TOKEN BODY` prints `NAME=STATUS` and `NAME.body=LAST LINE` (of the
/// body, chunk sizes left out).
const HTTP_SH: &str = r#"
wait_proxy() {
  for i in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/4141) 2>/dev/null && return 0; sleep 0.05; done
  echo "proxy_listener=missing"
}
req() {
  exec 3<>/dev/tcp/127.0.0.1/4141 || return 1
  printf '%s %s HTTP/1.1\r\nHost: loom\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$1" "$2" "$3" "${#4}" "$4" >&3
  timeout 20 cat <&3
  exec 3<&-
}
call() {
  local r; r=$(req "$2" "$3" "$4" "$5" | tr -d '\r')
  echo "$1=$(printf '%s\n' "$r" | head -n1 | cut -d' ' -f2)"
  echo "$1.body=$(printf '%s\n' "$r" | grep -vE '^[0-9a-f]*$' | tail -n1)"
}
ev() { # THREAD WEAVER SEQ: a batch of one event
  printf '{"events":[{"thread_id":"%s","weaver_id":"%s","seq":%s,"ts_ms":1,"kind":"output","text":"note %s"}]}' "$1" "$2" "$3" "$3"
}
"#;

/// Runs `script` (after [`HTTP_SH`]) with bash as the first process of a new weaver; its log.
fn bash_probe(d: &Loomd, name: &str, script: &str) -> String {
    let full = format!("{HTTP_SH}\nwait_proxy\n{script}\necho probe_done=1\n");
    let w = d.cli_json(&["weaver", "create", "--name", name, "--", "/bin/bash", "-c", &full]);
    assert_eq!(w["state"], "running", "{w}");
    d.wait_for(name, "exited", Duration::from_secs(90), |v| v["state"] == "exited" || v["state"] == "failed");
    let log = d.logs(name);
    assert_eq!(field(&log, "probe_done"), "1", "the probe did not run to its end:\n{log}");
    log
}

/// Runs `script` (after [`HTTP_SH`]) with bash inside the running weaver `name`; its output.
fn bash_exec(d: &Loomd, name: &str, script: &str) -> String {
    let full = format!("{HTTP_SH}\nwait_proxy\n{script}\necho probe_done=1\n");
    let out = d.cli(&["weaver", "exec", name, "--", "/bin/bash", "-c", &full]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(field(&text, "probe_done"), "1", "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}

/// The weaver's proxy token, from its first process's environment (read from the host).
fn token_of(w: &serde_json::Value) -> String {
    let pid = w["pid"].as_i64().expect("a running weaver has a pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    environ
        .split(|b| *b == 0)
        .find_map(|kv| std::str::from_utf8(kv.strip_prefix(b"LOOM_PROXY_TOKEN=")?).ok())
        .expect("LOOM_PROXY_TOKEN in the weaver's environment")
        .to_string()
}

fn id_of(w: &serde_json::Value) -> String {
    w["id"].as_str().unwrap().to_string()
}

#[test]
fn passthrough_to_account_endpoints_is_refused_before_the_upstream() {
    if !privileged("passthrough_to_account_endpoints_is_refused_before_the_upstream") {
        return;
    }
    let up = FakeUpstream::start();
    let d = start(&up, "");
    let t = "$LOOM_PROXY_TOKEN";
    let log = bash_probe(
        &d,
        "passer",
        &format!(
            r#"
call batches POST /proxy/openai/v1/batches {t} '{{"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h"}}'
call files POST /proxy/openai/v1/files {t} '{{"purpose":"batch"}}'
call finetune POST /proxy/openai/v1/fine_tuning/jobs {t} '{{"model":"gpt-4o-mini","training_file":"file-abc123"}}'
call encoded POST '/proxy/openai/v1/chat/completions/%2e%2e/%2e%2e/files' {t} '{{"purpose":"batch"}}'
call dotdot POST '/proxy/openai/v1/chat/completions/../../files' {t} '{{"purpose":"batch"}}'
call slashes POST '/proxy/openai/v1//files' {t} '{{"purpose":"batch"}}'
call override POST '/proxy/openai/v1/chat/completions?_method=DELETE' {t} '{{}}'
call anthbatch POST /proxy/anthropic/v1/messages/batches {t} '{{"requests":[]}}'
call models GET /proxy/openai/v1/models {t} ''
call chat POST /proxy/openai/v1/chat/completions {t} '{{"model":"gpt-test","stream":true,"messages":[{{"role":"user","content":"hi"}}]}}'
"#
        ),
    );
    let refused = [
        ("batches", "POST /proxy/openai/v1/batches is not forwarded to provider `openai`"),
        ("files", "POST /proxy/openai/v1/files is not forwarded"),
        ("finetune", "POST /proxy/openai/v1/fine_tuning/jobs is not forwarded"),
        ("encoded", "percent-encoding"),
        ("dotdot", "`.` or `..` segment"),
        ("slashes", "empty segment"),
        ("override", "would change the method"),
        ("anthbatch", "POST /proxy/anthropic/v1/messages/batches is not forwarded"),
    ];
    for (name, why) in refused {
        assert_eq!(field(&log, name), "403", "{name} was not refused:\n{log}");
        let body: serde_json::Value = serde_json::from_str(&field(&log, &format!("{name}.body"))).unwrap();
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "{name}: {msg}");
        if name == "anthbatch" {
            assert_eq!(body["error"]["type"], "permission_error", "Anthropic's shape: {body}");
        } else {
            assert_eq!(body["error"]["code"], "permission_denied", "OpenAI's shape: {body}");
        }
        if why.contains("is not forwarded") {
            assert!(msg.contains("only inference endpoints (POST /proxy/"), "says what is allowed: {msg}");
        }
    }
    assert_eq!(field(&log, "models"), "200", "{log}");
    assert_eq!(field(&log, "chat"), "200", "{log}");
    assert_eq!(field(&log, "chat.body"), "data: [DONE]");
    // The fake upstream saw the two allowed calls and nothing else.
    assert_eq!(up.seen(), ["GET /v1/models", "POST /v1/chat/completions"]);
    // Both allowed calls are metered: the models list (no usage) at the floor, never $0.
    let usage = d.cli_json(&["usage", "--weaver", "passer"]);
    assert_eq!(usage[0]["requests"], 2, "{usage}");
    assert_eq!(usage[0]["input_tokens"], loom_proxy::charge::FLOOR_TOKENS + 9, "{usage}");
    assert_eq!(usage[0]["output_tokens"], 5, "{usage}");
    let floor_usd = loom_proxy::charge::FLOOR_TOKENS as f64 * 15.0 / 1e6;
    assert!(usage[0]["cost_usd"].as_f64().unwrap() > floor_usd, "{usage}");
}

#[test]
fn another_weavers_token_listener_and_thread_are_out_of_reach() {
    if !privileged("another_weavers_token_listener_and_thread_are_out_of_reach") {
        return;
    }
    let up = FakeUpstream::start();
    let d = start(&up, "");
    let alice = sleeper(&d, "alice", &[]);
    let bob = sleeper(&d, "bob", &[]);
    let (a_id, a_token) = (id_of(&alice), token_of(&alice));
    let (b_id, b_token) = (id_of(&bob), token_of(&bob));
    let out = bash_exec(
        &d,
        "alice",
        &format!("call own POST /loom/v1/threads/events {a_token} \"$(ev alice-notes {a_id} 1)\""),
    );
    assert_eq!(field(&out, "own"), "200", "{out}");

    let host_port = d.cli_json(&["status"])["sections"]["proxy"]["host_port"].as_u64().unwrap();
    let host_ips = std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output();
    let host_ips: Vec<String> = String::from_utf8_lossy(&host_ips.map(|o| o.stdout).unwrap_or_default())
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next().map(str::to_string))
        .collect();
    let mut reach = format!(
        "(exec 3<>/dev/tcp/127.0.0.1/{host_port}) 2>/dev/null && echo host_listener=open || echo host_listener=closed\n"
    );
    for ip in &host_ips {
        reach.push_str(&format!(
            "timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{host_port}' 2>/dev/null && echo host_{ip}=open || echo host_{ip}=closed\n"
        ));
    }
    let out = bash_exec(
        &d,
        "bob",
        &format!(
            r#"
call stolen_model POST /v1/messages {a_token} '{{"model":"claude-test","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}]}}'
call stolen_events POST /loom/v1/threads/events {a_token} "$(ev alice-notes {a_id} 2)"
call into_alice POST /loom/v1/threads/events {b_token} "$(ev alice-notes {b_id} 2)"
call as_alice POST /loom/v1/threads/events {b_token} "$(ev alice-notes {a_id} 2)"
call own POST /loom/v1/threads/events {b_token} "$(ev bob-notes {b_id} 1)"
{reach}
echo "ifaces=$(ls /sys/class/net | tr '\n' ' ')"
"#
        ),
    );
    // Alice's token on bob's listener (the only 127.0.0.1:4141 bob has) is no credential.
    for name in ["stolen_model", "stolen_events"] {
        assert_eq!(field(&out, name), "401", "{name}:\n{out}");
        assert!(field(&out, &format!("{name}.body")).contains("unknown or revoked weaver token"), "{out}");
    }
    // With his own token bob writes his own thread, never alice's, not even claiming to be her.
    assert_eq!(field(&out, "own"), "200", "{out}");
    assert_eq!(field(&out, "into_alice"), "403", "{out}");
    assert!(field(&out, "into_alice.body").contains("alice-notes"), "{out}");
    assert_eq!(field(&out, "as_alice"), "400", "{out}");
    assert!(field(&out, "as_alice.body").contains("claims weaver"), "{out}");
    // Loopback and its veth on the bridge, and the egress policy: neither loomd's host
    // listener nor any host address is reachable, so no other weaver's listener is either.
    assert_eq!(field(&out, "ifaces"), "eth0 lo", "{out}");
    assert_eq!(field(&out, "host_listener"), "closed", "{out}");
    for ip in &host_ips {
        assert_eq!(field(&out, &format!("host_{ip}")), "closed", "{out}");
    }
    let (status, thread) = d.request("GET", "/v1/threads/alice-notes", None);
    assert_eq!(status, 200, "{thread}");
    assert_eq!(thread["detail"]["weaver_id"].as_str().or(thread["weaver_id"].as_str()), Some(a_id.as_str()));
    let events = thread["detail"]["events"].as_array().or(thread["events"].as_array()).unwrap().clone();
    assert_eq!(events.len(), 1, "only alice's own event: {thread}");
    assert!(up.seen().is_empty(), "a refused call reached the upstream: {:?}", up.seen());
}

#[test]
fn a_threads_flood_is_rate_limited_and_an_oversized_batch_is_refused_while_it_streams() {
    if !privileged("a_threads_flood_is_rate_limited_and_an_oversized_batch_is_refused_while_it_streams") {
        return;
    }
    let up = FakeUpstream::start();
    let d = start(&up, "[proxy.limits]\nrequests_per_minute = 5\n");
    let w = sleeper(&d, "flooder", &[]);
    let (id, token) = (id_of(&w), token_of(&w));
    let limit = loom_threads::wire::MAX_BATCH_BYTES;
    let out = bash_exec(
        &d,
        "flooder",
        &format!(
            r#"
# A chunk four times the limit, of which one byte past the limit is sent, then nothing.
exec 3<>/dev/tcp/127.0.0.1/4141
printf 'POST /loom/v1/threads/events HTTP/1.1\r\nHost: loom\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n' {token} {chunk} >&3
head -c {past} /dev/zero >&3
echo "streamed=$(timeout 10 head -n1 <&3 | tr -d '\r')"
exec 3<&-
# A declared length over the limit, and no body at all.
exec 3<>/dev/tcp/127.0.0.1/4141
printf 'POST /loom/v1/threads/events HTTP/1.1\r\nHost: loom\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n' {token} {past} >&3
echo "declared=$(timeout 10 head -n1 <&3 | tr -d '\r')"
exec 3<&-
codes=""
for i in 1 2 3 4 5 6 7 8; do
  codes="$codes $(req POST /loom/v1/threads/events {token} "$(ev flood-notes {id} $i)" | head -n1 | cut -d' ' -f2)"
done
echo "flood=$codes"
r=$(req POST /loom/v1/threads/events {token} "$(ev flood-notes {id} 9)" | tr -d '\r')
echo "limited.retry=$(printf '%s\n' "$r" | grep -i '^retry-after:' | cut -d' ' -f2)"
echo "limited.body=$(printf '%s\n' "$r" | tail -n1)"
call model POST /v1/messages {token} '{{"model":"claude-test","max_tokens":10,"messages":[{{"role":"user","content":"hi"}}]}}'
"#,
            chunk = 4 * limit,
            past = limit + 1,
        ),
    );
    assert_eq!(field(&out, "streamed"), "HTTP/1.1 413 Payload Too Large", "refused while streaming:\n{out}");
    assert_eq!(field(&out, "declared"), "HTTP/1.1 413 Payload Too Large", "{out}");
    // Five a minute: the two oversized posts took two, three events went in, the rest waits.
    assert_eq!(field(&out, "flood"), "200 200 200 429 429 429 429 429", "{out}");
    let retry: u64 = field(&out, "limited.retry").parse().unwrap_or_else(|_| panic!("no retry-after:\n{out}"));
    assert!((1..=60).contains(&retry), "{out}");
    assert!(field(&out, "limited.body").contains("5 requests per minute"), "{out}");
    // Model calls count apart: the flood did not use them up.
    assert_eq!(field(&out, "model"), "200", "{out}");
    // loomd kept answering, and stored exactly what it accepted.
    let t0 = Instant::now();
    let (status, thread) = d.request("GET", "/v1/threads/flood-notes", None);
    assert!(status == 200 && t0.elapsed() < Duration::from_secs(1), "{status} {thread}");
    let events = thread["detail"]["events"].as_array().or(thread["events"].as_array()).unwrap().clone();
    assert_eq!(events.len(), 3, "{thread}");
}
