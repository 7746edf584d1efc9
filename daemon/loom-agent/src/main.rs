//! `loom-agent`: the loop driver binary. Thin over the library.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use loom_agent::client::ModelClient;
use loom_agent::llm::{ModelSpec, Protocol};
use loom_agent::policy::Limits;
use loom_agent::spool::EventsApi;
use loom_agent::tools::ToolConfig;
use loom_agent::{AgentSettings, Body, LoopConfig, run_loop};
use loom_threads::StopReason;

/// Run a coding-agent loop: each iteration feeds PROMPT afresh to the model (or to COMMAND on
/// stdin) until a stop rule fires. Exit status: 0 when the work is done (`--until` passed or the
/// completion marker was printed), 2 when another stop rule ended it, 1 on an error.
#[derive(Debug, Parser)]
#[command(name = "loom-agent", version)]
struct Args {
    /// The prompt file, read afresh at every iteration.
    #[arg(long, env = "LOOM_PROMPT")]
    prompt: PathBuf,
    /// provider/model; `anthropic/...` speaks Anthropic Messages, anything else OpenAI chat
    /// completions. Not needed with a COMMAND.
    #[arg(long, env = "LOOM_MODEL")]
    model: Option<String>,
    /// The workspace the tools are confined to, and where commands run.
    #[arg(long, env = "LOOM_WORKSPACE", default_value = "/workspace")]
    workspace: PathBuf,
    /// Where the thread spool and status.json live.
    #[arg(long, env = "LOOM_STATE_DIR", default_value = "/var/lib/loom-agent")]
    state_dir: PathBuf,
    #[arg(long, env = "LOOM_MAX_ITERATIONS")]
    max_iterations: Option<u32>,
    /// Stop when this shell command exits 0 (run after each iteration).
    #[arg(long, env = "LOOM_UNTIL")]
    until: Option<String>,
    /// Run after each iteration; its failing output is fed into the next prompt.
    #[arg(long, env = "LOOM_CHECK")]
    check: Option<String>,
    /// Text the agent prints when it is done (with --until, that must pass too).
    #[arg(long, env = "LOOM_COMPLETION_MARKER", default_value = "<promise>COMPLETE</promise>")]
    completion_marker: String,
    /// Circuit breaker: stop after this many iterations in a row without a change (0: off).
    #[arg(long, default_value_t = 3)]
    no_change_limit: u32,
    /// Circuit breaker: stop after the same error this many times in a row (0: off).
    #[arg(long, default_value_t = 3)]
    same_error_limit: u32,
    /// Wall-clock limit of the whole loop: 90, 90s, 15m, 4h.
    #[arg(long, env = "LOOM_WALL_CLOCK", value_parser = parse_duration)]
    wall_clock: Option<Duration>,
    /// Timeout of one bash tool call.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    bash_timeout: Duration,
    /// Timeout of --until/--check and of one COMMAND run.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    command_timeout: Duration,
    /// Most bytes of one tool output given to the model.
    #[arg(long, default_value_t = loom_agent::tools::DEFAULT_OUTPUT_CAP)]
    output_cap: usize,
    /// Do not commit after iterations.
    #[arg(long)]
    no_commit: bool,
    /// Text of earlier threads to give as context (loomd writes it for --context-thread).
    #[arg(long, env = "LOOM_CONTEXT_FILE")]
    context_file: Option<PathBuf>,
    /// The weaver's id (loomd sets LOOM_WEAVER); thread events carry it, and loomd accepts
    /// them only under the identity of the token that sent them.
    #[arg(long = "weaver", env = "LOOM_WEAVER", default_value = "local")]
    weaver_id: String,
    #[arg(long, default_value_t = 8192)]
    max_tokens: u32,
    /// The model's context window, in tokens.
    #[arg(long, default_value_t = 200_000)]
    context_tokens: usize,
    /// Most model calls in one iteration.
    #[arg(long, default_value_t = 100)]
    max_turns: u32,
    /// Send the bare model name instead of provider/model (talking to a provider directly).
    #[arg(long)]
    bare_model: bool,
    /// Extra CA certificates (PEM) to trust for https:// base URLs (builds with `--features tls`).
    #[arg(long, env = "LOOM_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Print only the stop reason.
    #[arg(long, short)]
    quiet: bool,
    /// Bring your own agent: run this command as the loop body, prompt on stdin.
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1.0),
        Some('m') => (&s[..s.len() - 1], 60.0),
        Some('h') => (&s[..s.len() - 1], 3600.0),
        _ => (s, 1.0),
    };
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 90, 90s, 15m or 4h"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{s:?} is not a positive duration"));
    }
    Ok(Duration::from_secs_f64(n * mult))
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOOM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(StopReason::UntilPassed | StopReason::CompletionMarker) => std::process::ExitCode::SUCCESS,
        Ok(_) => std::process::ExitCode::from(2),
        Err(e) => {
            eprintln!("loom-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<StopReason> {
    let a = Args::parse();
    let body = if !a.command.is_empty() {
        Body::Command(a.command.clone())
    } else {
        let Some(model) = &a.model else {
            bail!("give --model provider/model, or a command after -- to run your own agent");
        };
        let spec = ModelSpec::parse(model)?;
        let (base_var, key_var) = match spec.protocol {
            Protocol::Anthropic => ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
            Protocol::OpenAi => ("OPENAI_BASE_URL", "OPENAI_API_KEY"),
        };
        let base = env(base_var)
            .with_context(|| format!("{base_var} is not set; inside a weaver loomd sets it to the proxy"))?;
        let key = env(key_var).with_context(|| format!("{key_var} is not set"))?;
        #[allow(unused_mut)]
        let mut client = ModelClient::new(spec, &base, key, a.bare_model);
        #[cfg(feature = "tls")]
        if base.starts_with("https://") {
            client.tls = Some(loom_agent::http::Tls::new(a.ca_file.as_deref())?);
        }
        #[cfg(not(feature = "tls"))]
        if a.ca_file.is_some() || base.starts_with("https://") {
            bail!("{base_var} is https://, but this loom-agent has no TLS; build it with --features tls");
        }
        Body::Agent(AgentSettings {
            client,
            max_tokens: a.max_tokens,
            context_tokens: a.context_tokens,
            max_turns: a.max_turns,
            retries: 3,
        })
    };
    let context = match &a.context_file {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading the context file {}", p.display()))?)
        }
        None => None,
    };
    let events_api = match (env("LOOM_API_URL"), env("LOOM_PROXY_TOKEN")) {
        (Some(url), Some(token)) => Some(EventsApi::new(&url, token)),
        (Some(_), None) => bail!("LOOM_API_URL is set but LOOM_PROXY_TOKEN is not"),
        _ => None,
    };
    let cfg = LoopConfig {
        workspace: a.workspace,
        state_dir: a.state_dir,
        prompt_file: a.prompt,
        body,
        until: a.until.clone(),
        check: a.check,
        completion_marker: a.completion_marker,
        limits: Limits {
            max_iterations: a.max_iterations,
            until_set: a.until.is_some(),
            no_change_limit: a.no_change_limit,
            same_error_limit: a.same_error_limit,
            wall_clock: a.wall_clock,
        },
        tools: ToolConfig { bash_timeout: a.bash_timeout, output_cap: a.output_cap },
        commit: !a.no_commit,
        context,
        weaver_id: a.weaver_id,
        events_api,
        command_timeout: a.command_timeout,
        verbose: !a.quiet,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = tx.send(true);
    });
    let out = run_loop(cfg, rx).await?;
    println!("loom-agent: stopped after {} iteration(s), {} commit(s): {}", out.iterations, out.commits, out.stop);
    Ok(out.stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1h").is_err());
    }
}
