//! Human-readable output; `--json` bypasses all of it.

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub fn status(v: &Value) -> String {
    let mut out = format!(
        "loomd {} · backend {} · state {} · up {}s\n",
        s(&v["version"]),
        s(&v["backend"]),
        s(&v["state_dir"]),
        s(&v["uptime_secs"])
    );
    if let Some(m) = v["weavers"].as_object() {
        let counts: Vec<String> = m.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out += &format!("weavers: {}\n", if counts.is_empty() { "none".into() } else { counts.join(", ") });
    }
    for w in v["warnings"].as_array().into_iter().flatten() {
        out += &format!("warning: {}\n", s(w));
    }
    if let Some(sections) = v["sections"].as_object() {
        for (k, val) in sections {
            out += &format!("{k}: {val}\n");
        }
    }
    out
}

pub fn created(v: &Value) -> String {
    format!("{}\t{}\t{} (pid {})\n", s(&v["id"]), s(&v["name"]), s(&v["state"]), s(&v["pid"]))
}

pub fn one_line(v: &Value) -> String {
    let code = v["exit_code"].as_i64().map(|c| format!(" (exit {c})")).unwrap_or_default();
    format!("{}\t{}\t{}{}\n", s(&v["id"]), s(&v["name"]), s(&v["state"]), code)
}

pub fn ps(v: &Value) -> String {
    let mut rows = vec![
        ["ID", "NAME", "STATE", "EXIT", "RESTARTS", "ITER", "STOP", "TOKENS", "DECLARED", "COMMAND"].map(String::from),
    ];
    for w in v.as_array().into_iter().flatten() {
        let cmd = w["spec"]["command"]
            .as_array()
            .map(|a| a.iter().map(s).collect::<Vec<_>>().join(" "))
            .filter(|c| !c.is_empty());
        let cmd = cmd.unwrap_or_else(|| format!("agent {}", s(&w["spec"]["agent"]["model"])));
        let a = &w["agent_status"];
        let (iter, stop, tokens) = if a.is_object() {
            let max = a["max_iterations"].as_u64().map(|m| format!("/{m}")).unwrap_or_default();
            let tokens = a["input_tokens"].as_u64().unwrap_or(0) + a["output_tokens"].as_u64().unwrap_or(0);
            (format!("{}{max}", s(&a["iteration"])), s(&a["stop_reason"]["kind"]), tokens.to_string())
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        rows.push([
            s(&w["id"]),
            s(&w["name"]),
            s(&w["state"]),
            s(&w["exit_code"]),
            s(&w["restarts"]),
            iter,
            stop,
            tokens,
            // Who keeps it: `config`, `apply:SOURCE`; `-` for one made by hand.
            w["origin"].as_str().map(|o| o.chars().take(40).collect()).unwrap_or_else(|| "-".into()),
            cmd.chars().take(40).collect(),
        ]);
    }
    let widths: Vec<usize> = (0..10).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
                + "\n"
        })
        .collect()
}

pub fn inspect(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

pub fn secrets(v: &Value) -> String {
    let mut out = format!("file {} · {}", s(&v["file"]), s(&v["status"]));
    if let Some(by) = v["unwrapped_by"].as_str() {
        out += &format!(" (key: {by})");
    }
    out += "\n";
    if let Some(e) = v["error"].as_str() {
        out += &format!("error: {e}\n");
    }
    for c in v["secrets"].as_array().into_iter().flatten() {
        let verdict = if c["ok"] == true { "ok".to_string() } else { format!("FAILED: {}", s(&c["error"])) };
        out += &format!("{:<16} {:<32} {verdict}\n", s(&c["provider"]), s(&c["path"]));
    }
    out
}

pub fn usage(v: &Value) -> String {
    let mut out = format!(
        "{:<14} {:>8} {:>7} {:>12} {:>12} {:>12} {:>10}\n",
        "WEAVER", "REQUESTS", "FAILED", "INPUT", "OUTPUT", "CACHE R/W", "USD"
    );
    for u in v.as_array().into_iter().flatten() {
        out += &format!(
            "{:<14} {:>8} {:>7} {:>12} {:>12} {:>12} {:>10.4}\n",
            s(&u["weaver"]),
            s(&u["requests"]),
            s(&u["failed"]),
            s(&u["input_tokens"]),
            s(&u["output_tokens"]),
            format!("{}/{}", s(&u["cache_read_tokens"]), s(&u["cache_write_tokens"])),
            u["cost_usd"].as_f64().unwrap_or(0.0)
        );
    }
    out
}

pub fn audit(v: &Value) -> String {
    let mut out = String::new();
    for r in v.as_array().into_iter().flatten() {
        let secs = r["time_unix_ns"].as_u64().unwrap_or(0) / 1_000_000_000;
        let mut detail = r.clone();
        if let Some(m) = detail.as_object_mut() {
            for k in [
                "id",
                "seq",
                "ts_boot_ns",
                "time_unix_ns",
                "weaver",
                "cgroup_id",
                "syscall",
                "pid",
                "tid",
                "ppid",
                "uid",
                "gid",
                "euid",
                "comm",
                "kind",
            ] {
                m.remove(k);
            }
        }
        out += &format!(
            "{secs} {} {:<8} pid={} ppid={} uid={} {:<16} {}\n",
            s(&r["weaver"]),
            s(&r["kind"]),
            s(&r["pid"]),
            s(&r["ppid"]),
            s(&r["uid"]),
            s(&r["comm"]),
            detail
        );
    }
    out
}

pub fn threads(v: &Value) -> String {
    let mut out = String::new();
    for t in v.as_array().into_iter().flatten() {
        out +=
            &format!("{}\t{}\t{} events\t{}\n", s(&t["id"]), s(&t["weaver_id"]), s(&t["event_count"]), s(&t["title"]));
    }
    out
}

pub fn hits(v: &Value) -> String {
    let mut out = String::new();
    for h in v.as_array().into_iter().flatten() {
        out += &format!(
            "{} #{} {} (iteration {})\n    {}\n",
            s(&h["thread_id"]),
            s(&h["seq"]),
            s(&h["kind"]),
            s(&h["iteration"]),
            s(&h["snippet"])
        );
    }
    out
}

/// A new peer: the client config to save as `wg0.conf`, and its QR code on a terminal.
pub fn wireguard_peer(v: &serde_json::Value, terminal: bool) -> String {
    let mut out = format!(
        "# peer {} ({}): save as /etc/wireguard/loom.conf and run `wg-quick up loom`;\n# its private key is shown only now\n{}",
        v["name"].as_str().unwrap_or(""),
        v["address"].as_str().unwrap_or(""),
        v["client_config"].as_str().unwrap_or("")
    );
    if terminal && let Some(qr) = v["qr"].as_str() {
        out += "\n";
        out += qr;
    }
    out
}

pub fn wireguard_peers(v: &serde_json::Value) -> String {
    let mut out = String::from("NAME\tADDRESS\tSOURCE\tLAST HANDSHAKE\n");
    for p in v.as_array().into_iter().flatten() {
        let handshake =
            p["last_handshake"]["secs_since_epoch"].as_u64().map_or("never".to_string(), |s| format!("@{s}"));
        out += &format!(
            "{}\t{}\t{}\t{}\n",
            p["name"].as_str().unwrap_or(""),
            p["address"].as_str().unwrap_or(""),
            p["source"].as_str().unwrap_or(""),
            handshake
        );
    }
    out
}

/// A weaver's egress policy, most specific last.
pub fn egress(v: &serde_json::Value) -> String {
    let list = |k: &str| -> Vec<String> {
        v[k].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(String::from)).collect()
    };
    let mut out = format!(
        "weaver {} ({}), network {}: {}\n",
        v["name"].as_str().unwrap_or(""),
        v["weaver"].as_str().unwrap_or(""),
        v["network"].as_str().unwrap_or(""),
        if v["enforced"].as_bool() == Some(true) { "enforced now" } else { "in force at its next start" }
    );
    for r in list("built_in") {
        out += &format!("  allow {r}\t(built in)\n");
    }
    for r in list("rules") {
        out += &format!("  allow {r}\n");
    }
    out += "  deny everything else\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use loom_core::terminal::sanitize_json;

    /// What a weaver writes into its agent status or threads reaches human output only
    /// through `sanitize_json`, as `main` renders it.
    #[test]
    fn weaver_text_reaches_the_terminal_without_escapes() {
        let w = serde_json::json!([{
            "id": "abc", "name": "w", "state": "exited", "exit_code": 1, "restarts": 0,
            "reason": "\u{1b}]0;pwned\u{7}boom", "spec": {"command": [], "agent": {"model": "m\u{9b}2J"}},
            "agent_status": {"iteration": "1\u{1b}[2J", "stop_reason": {"kind": "done\u{1b}[31m"}},
        }]);
        for out in [ps(&sanitize_json(&w)), inspect(&sanitize_json(&w)), audit(&sanitize_json(&w))] {
            assert!(!out.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{out:?}");
            assert!(!out.contains("pwned") && !out.contains("\\u001b"), "{out:?}");
        }
        assert!(ps(&sanitize_json(&w)).contains("done"));
    }
}
