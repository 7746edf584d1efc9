//! Loop overhead per iteration, excluding model time: the loop runs against the fake model API
//! with zero latency, so what is measured is the driver (prompt, state machine, tool calls,
//! SSE parsing, thread events to the spool and to a loomd stand-in with the real store, the
//! status file, git status/add/commit per iteration).
//!
//! `CARGO_TARGET_DIR=/work/target-loom-agent cargo bench -p loom-agent --bench loop_overhead`
//! Env: `LOOM_BENCH_ITERATIONS` (default 100).
//!
//! Baseline in the same run: the git work alone (`git status --porcelain; git add -A;
//! git commit`) for one changed file per iteration, which any committing loop pays.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use loom_agent::client::ModelClient;
use loom_agent::llm::ModelSpec;
use loom_agent::policy::Limits;
use loom_agent::spool::EventsApi;
use loom_agent::tools::ToolConfig;
use loom_agent::{AgentSettings, Body, LoopConfig, run_loop};
use loom_threads::EventKind;
use serde_json::json;
use support::*;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Per-iteration durations (ms) from the spool's iteration_start events.
fn iteration_times(state: &std::path::Path) -> Vec<f64> {
    let evs: Vec<loom_threads::ThreadEvent> = std::fs::read_to_string(state.join("spool.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let starts: Vec<i64> = evs.iter().filter(|e| e.kind == EventKind::IterationStart).map(|e| e.ts_ms).collect();
    let end = evs.iter().rev().find(|e| e.kind == EventKind::IterationEnd).map(|e| e.ts_ms).unwrap_or(0);
    let mut out: Vec<f64> = starts.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    if let Some(last) = starts.last() {
        out.push((end - last) as f64);
    }
    out
}

fn config(dir: &std::path::Path, name: &str, body: Body, n: u32, api: Option<EventsApi>) -> LoopConfig {
    let ws = dir.join(format!("{name}-ws"));
    failing_repo(&ws);
    let prompt = dir.join("PROMPT.md");
    std::fs::write(&prompt, "# Write a note\n\nWrite one note file per iteration.\n").unwrap();
    LoopConfig {
        workspace: ws,
        state_dir: dir.join(format!("{name}-state")),
        prompt_file: prompt,
        body,
        until: None,
        check: None,
        completion_marker: "<promise>COMPLETE</promise>".into(),
        limits: Limits { max_iterations: Some(n), no_change_limit: 0, ..Default::default() },
        tools: ToolConfig::default(),
        commit: true,
        context: None,
        weaver_id: "bench".into(),
        events_api: api,
        command_timeout: Duration::from_secs(60),
        verbose: false,
    }
}

// The loomd stand-in runs on other workers, as the real loomd runs in another process.
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u32 = std::env::var("LOOM_BENCH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();

    // Baseline: the git work alone, per iteration.
    let base_ws = dir.path().join("baseline-ws");
    failing_repo(&base_ws);
    let mut base = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        std::fs::write(base_ws.join(format!("note-{i}.md")), format!("note {i}\n")).unwrap();
        git(&base_ws, &["status", "--porcelain"]);
        git(&base_ws, &["add", "-A"]);
        git(&base_ws, &["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "-m", "note"]);
        base.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // The built-in agent: per iteration one model turn with a write_file call, then a final reply.
    let fake = FakeModelApi::start(|k, _| {
        if k % 2 == 0 {
            turn(
                "Writing the note.",
                &[("write_file", json!({"path": format!("notes/{k}.md"), "content": format!("note {k}\n")}))],
            )
        } else {
            turn("Wrote the note.", &[])
        }
    })
    .await;
    let loomd = FakeLoomd::start(dir.path().join("loomd.db"), "tok", "bench").await;
    let body = Body::Agent(AgentSettings {
        client: ModelClient::new(ModelSpec::parse("anthropic/fake").unwrap(), &fake.base_url, "k".into(), false),
        max_tokens: 1000,
        context_tokens: 100_000,
        max_turns: 10,
        retries: 0,
    });
    let cfg = config(dir.path(), "agent", body, n, Some(EventsApi::new(&loomd.base_url, "tok".into())));
    let state = cfg.state_dir.clone();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let out = run_loop(cfg, rx).await.unwrap();
    let agent_total = t.elapsed();
    assert_eq!(out.commits, n, "every iteration committed");
    let mut agent_iters = iteration_times(&state);

    // Bring-your-own agent: a command that writes a file; no model at all.
    let body = Body::Command(vec!["sh".into(), "-c".into(), "cat > /dev/null; date +%s%N > stamp.txt".into()]);
    let cfg = config(dir.path(), "byo", body, n, None);
    let state = cfg.state_dir.clone();
    let (_tx2, rx) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let out = run_loop(cfg, rx).await.unwrap();
    let byo_total = t.elapsed();
    assert_eq!(out.commits, n);
    let mut byo_iters = iteration_times(&state);

    let row = |label: &str, mean: f64, times: &mut Vec<f64>| {
        println!("{label:<52} {mean:>9.2} {:>9.2} {:>9.2}", pct(times, 0.5), pct(times, 0.99));
    };
    println!("iterations per run: {n}");
    println!("{:<52} {:>9} {:>9} {:>9}", "", "mean ms", "p50 ms", "p99 ms");
    let b_mean = base.iter().sum::<f64>() / base.len() as f64;
    row("baseline: git status+add+commit only", b_mean, &mut base);
    let a_mean = agent_total.as_secs_f64() * 1000.0 / n as f64;
    row("built-in agent, 2 model calls + 1 tool, 0-latency model", a_mean, &mut agent_iters);
    let c_mean = byo_total.as_secs_f64() * 1000.0 / n as f64;
    row("bring-your-own command (sh), no model", c_mean, &mut byo_iters);
    println!("(p50/p99 from thread event timestamps, ms resolution; means from wall time)");
    println!("ratio built-in agent / git baseline (mean): {:.1}x", a_mean / b_mean);
    println!(
        "the loop's own cost beyond the git baseline (mean): built-in {:.1} ms, bring-your-own {:.1} ms",
        a_mean - b_mean,
        c_mean - b_mean
    );
    println!(
        "target: overhead <= 50 ms per iteration: {}",
        if a_mean <= 50.0 && c_mean <= 50.0 { "MET" } else { "MISSED" }
    );
}
