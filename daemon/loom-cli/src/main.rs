//! `loom`: the operator's CLI. Every command talks to loomd over its Unix socket; `--json`
//! prints loomd's answer as JSON and errors as JSON on stderr.

mod apply;
mod client;
mod exec;
mod render;
mod upload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use client::{CliError, Client};
use http_body_util::BodyExt;
use hyper::Method;
use loom_core::api::CreateWeaver;
use loom_core::terminal::sanitize_json;
use loom_core::weaver::AgentSpec;

#[derive(Debug, Parser)]
#[command(name = "loom", version, about = "Drive loomd: create, watch and stop weavers that run agent loops")]
struct Cli {
    /// loomd's socket.
    #[arg(long, global = true, env = "LOOM_SOCKET", default_value = loom_core::config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Machine-readable output on stdout; errors as JSON on stderr.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// loomd's version, backend, weaver counts and warnings.
    Status,
    /// Create and manage weavers.
    #[command(subcommand)]
    Weaver(WeaverCmd),
    /// Every turn of every agent loop, searchable.
    #[command(subcommand)]
    Thread(ThreadCmd),
    /// What weavers executed, opened, connected to and tried, from the eBPF audit.
    Audit {
        #[arg(long)]
        weaver: Option<String>,
        /// exec, exit, open, unlink, rename, connect, bind, listen, setuid, ptrace, mount, ...
        #[arg(long)]
        kind: Option<String>,
        /// 10m, 2h, @UNIX_SECONDS or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Keep printing new events.
        #[arg(short, long)]
        follow: bool,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Tokens and cost per weaver, from the LLM proxy.
    Usage {
        #[arg(long)]
        weaver: Option<String>,
    },
    /// Provider keys from the SOPS file.
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// The WireGuard operator tunnel into the weaver subnet (admins).
    #[command(subcommand)]
    Wireguard(WireguardCmd),
    /// Make the weavers of a file (`[weavers.NAME]` tables, TOML or YAML) what it says:
    /// create what is missing, update what changed, remove what is gone from it.
    Apply {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Print the plan (create/update/remove per weaver) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// What names this set of weavers (default: the file's absolute path).
        #[arg(long)]
        source: Option<String>,
    },
    /// Remove every weaver `loom apply -f FILE` made.
    Down {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        source: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum EgressAction {
    /// The built-in rules and the weaver's own.
    List,
    /// Add rules: CIDR[:PORT] or DOMAIN[:PORT], optionally /tcp or /udp.
    Allow {
        #[arg(required = true)]
        rules: Vec<String>,
    },
    /// Remove rules added before (everything not allowed is denied).
    Deny {
        #[arg(required = true)]
        rules: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum WireguardCmd {
    /// Peers of the tunnel.
    #[command(subcommand)]
    Peer(PeerCmd),
}

#[derive(Debug, Subcommand)]
enum PeerCmd {
    /// Make a peer: prints its client config (with its private key, shown only now) and a QR code.
    Add { name: String },
    /// Remove a peer added with `add`.
    Rm { name: String },
    /// Every peer, with its last handshake and traffic.
    Ls,
}

#[derive(Debug, Subcommand)]
enum ThreadCmd {
    /// Threads, newest first.
    List {
        #[arg(long)]
        weaver: Option<String>,
    },
    /// One thread as Markdown (or JSON with --json).
    Show { id: String },
    /// Ranked full-text search over every event (identifiers and paths stay whole).
    Search {
        query: String,
        #[arg(long)]
        weaver: Option<String>,
        /// Only events newer than this, e.g. 2h or 7d.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum SecretsCmd {
    /// Which configured secrets decrypt (never their values).
    Check,
}

#[derive(Debug, Subcommand)]
enum WeaverCmd {
    /// Create a weaver and start it; returns once its first process runs.
    Create(Box<CreateArgs>),
    /// List weavers.
    Ps,
    /// Everything loomd knows about one weaver.
    Inspect { id: String },
    /// A weaver's output, without terminal escape sequences unless --raw.
    Logs {
        id: String,
        /// Keep printing what it writes until it ends.
        #[arg(short, long)]
        follow: bool,
        /// The bytes as the weaver wrote them, escape sequences included.
        #[arg(long)]
        raw: bool,
    },
    /// Run a command inside a running weaver.
    Exec {
        id: String,
        /// Give the command a terminal.
        #[arg(short, long)]
        tty: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// A weaver's egress rules: list them, or allow/deny rules (live for a running weaver).
    Egress {
        id: String,
        #[command(subcommand)]
        action: EgressAction,
    },
    /// A shell in a running weaver, through loomd (no sshd needed): a login shell with a
    /// terminal, or COMMAND (with a terminal when stdin is one); exits with its exit code.
    Ssh {
        id: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Show a weaver's LLM budgets and rate limits, or (admins) change them; 0 = unlimited.
    Limits {
        id: String,
        #[arg(long)]
        max_tokens: Option<u64>,
        #[arg(long)]
        max_usd: Option<f64>,
        #[arg(long)]
        requests_per_minute: Option<u32>,
        #[arg(long)]
        max_concurrent: Option<u32>,
    },
    /// Stop a weaver (its workspace is kept).
    Stop { id: String },
    /// Start a stopped, exited or failed weaver again.
    Start { id: String },
    /// Remove a weaver and its workspace.
    Rm {
        id: String,
        /// Stop it first if it runs.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
struct CreateArgs {
    #[arg(long)]
    name: Option<String>,
    /// `host` (the host's /usr, read-only) or a directory whose usr/ is used.
    #[arg(long)]
    image: Option<String>,
    /// A git URL loomd clones, or a local directory this CLI uploads with your rights (a git
    /// repository as its commits, anything else as its files).
    #[arg(long)]
    repo: Option<String>,
    #[arg(long)]
    branch: Option<String>,
    /// Memory limit, e.g. 2G.
    #[arg(long)]
    memory: Option<String>,
    /// CPU limit, e.g. 1.5.
    #[arg(long)]
    cpus: Option<f64>,
    /// Process and thread limit.
    #[arg(long)]
    tasks: Option<u64>,
    /// Disk cap of the weaver's root, e.g. 10G: past it the weaver is stopped (failed).
    #[arg(long, value_name = "SIZE")]
    disk: Option<String>,
    /// How much of the weaver's output is kept, e.g. 64M (nspawn backend; systemd: the journal's limits).
    #[arg(long, value_name = "SIZE")]
    log_size: Option<String>,
    /// Lifetime, e.g. 4h; `none` for no limit.
    #[arg(long)]
    ttl: Option<String>,
    /// KEY=VALUE, repeatable.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// private (its own address on the loom bridge; egress only to the proxy and what
    /// --allow names), none (loopback only, no proxy) or host (admins only).
    #[arg(long)]
    network: Option<String>,
    /// An egress rule on top of `[weaver.egress] allow`: CIDR[:PORT] or DOMAIN[:PORT] (a
    /// domain covers the names under it), optionally /tcp or /udp; repeatable.
    #[arg(long = "allow", value_name = "RULE")]
    allow: Vec<String>,
    /// never, on-failure or always.
    #[arg(long)]
    restart: Option<String>,
    /// Let the weaver make user namespaces and mounts inside, for nested containers (admins only).
    #[arg(long)]
    nested: bool,
    /// Run an sshd in the weaver (port 22 on its address) taking your ~/.ssh/authorized_keys
    /// and the operators' keys of loomd's `[weaver.ssh]`.
    #[arg(long)]
    ssh: bool,
    /// The public keys --ssh takes instead of ~/.ssh/authorized_keys (an authorized_keys or .pub file).
    #[arg(long, value_name = "FILE", requires = "ssh")]
    ssh_keys: Option<PathBuf>,
    /// Join loomd's tailnet (`[tailscale]`) as a node named after the weaver, with Tailscale SSH.
    #[arg(long)]
    tailscale: bool,
    /// The prompt file for the agent loop.
    #[arg(long, requires = "model")]
    prompt: Option<PathBuf>,
    /// PROVIDER/MODEL for the agent loop.
    #[arg(long, requires = "prompt")]
    model: Option<String>,
    #[arg(long, requires = "prompt")]
    max_iterations: Option<u32>,
    /// A command whose success ends the loop.
    #[arg(long, requires = "prompt")]
    until: Option<String>,
    /// Runs after each iteration; its failing output is fed into the next prompt.
    #[arg(long, requires = "prompt")]
    check: Option<String>,
    /// The loop's wall-clock limit, e.g. 4h.
    #[arg(long, requires = "prompt")]
    wall_clock: Option<String>,
    /// The text by which the agent says it is done.
    #[arg(long, requires = "prompt")]
    completion_marker: Option<String>,
    /// An earlier thread to give the loop as context (repeatable).
    #[arg(long = "context-thread", requires = "prompt", value_name = "ID")]
    context_threads: Vec<String>,
    /// A command to run instead of the built-in agent loop.
    #[arg(last = true)]
    command: Vec<String>,
}

/// The keys `--ssh` sends, read with the caller's own rights: `--ssh-keys FILE`, or else
/// `~/.ssh/authorized_keys` when there is one (loomd may have operators' keys of its own).
fn ssh_request(file: Option<&std::path::Path>) -> Result<loom_core::ssh::SshRequest, CliError> {
    let (path, must_exist) = match file {
        Some(f) => (f.to_path_buf(), true),
        None => match std::env::var_os("HOME") {
            Some(home) => (PathBuf::from(home).join(".ssh/authorized_keys"), false),
            None => return Ok(loom_core::ssh::SshRequest::default()),
        },
    };
    let cap = (loom_core::ssh::MAX_KEYS * loom_core::ssh::MAX_KEY_LINE) as u64;
    let text = match std::fs::metadata(&path) {
        Ok(m) if m.len() > cap => {
            return Err(CliError::new("bad_request", format!("{} is larger than {cap} bytes", path.display())));
        }
        Ok(_) => std::fs::read_to_string(&path)
            .map_err(|e| CliError::new("bad_request", format!("reading {}: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
        Err(e) => return Err(CliError::new("bad_request", format!("reading {}: {e}", path.display()))),
    };
    let authorized_keys =
        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect();
    Ok(loom_core::ssh::SshRequest { authorized_keys })
}

async fn create_body(client: &Client, a: CreateArgs, json: bool) -> Result<CreateWeaver, CliError> {
    let mut env = BTreeMap::new();
    for kv in &a.env {
        let (k, v) =
            kv.split_once('=').ok_or_else(|| CliError::new("bad_request", format!("--env {kv:?} is not KEY=VALUE")))?;
        env.insert(k.to_string(), v.to_string());
    }
    let prompt = match &a.prompt {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| CliError::new("bad_request", format!("reading --prompt {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let (mut repo, mut upload, mut branch) = (None, None, a.branch);
    match a.repo.as_deref().map(upload::classify).transpose()? {
        Some(upload::Source::Remote(url)) => repo = Some(url),
        Some(upload::Source::Local(dir)) => {
            let up = upload::send(client, &dir).await?;
            for line in up.notes.lines() {
                if json {
                    eprintln!("{}", serde_json::json!({ "warning": line }));
                } else {
                    eprintln!("loom: {line}");
                }
            }
            upload = Some(up.id);
            branch = branch.or(up.branch);
        }
        None => {}
    }
    let ssh = if a.ssh { Some(ssh_request(a.ssh_keys.as_deref())?) } else { None };
    let agent = match (prompt, a.model) {
        (Some(prompt), Some(model)) => Some(AgentSpec {
            prompt,
            model,
            max_iterations: a.max_iterations,
            until: a.until,
            check: a.check,
            wall_clock: a.wall_clock,
            completion_marker: a.completion_marker,
            context_threads: a.context_threads,
        }),
        _ => None,
    };
    Ok(CreateWeaver {
        name: a.name,
        image: a.image,
        repo,
        upload,
        branch,
        memory: a.memory,
        cpus: a.cpus,
        disk: a.disk,
        log_size: a.log_size,
        tasks: a.tasks,
        ttl: a.ttl,
        env,
        network: a.network,
        allow: a.allow,
        restart: a.restart,
        nested: a.nested.then_some(true),
        ssh,
        tailscale: a.tailscale.then_some(true),
        command: a.command,
        agent,
    })
}

fn path_key(id: &str) -> String {
    // Ids and names are [a-z0-9-]; anything else is still sent safely and loomd says not found.
    id.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

type Printer<'a> = dyn Fn(&serde_json::Value, &dyn Fn(&serde_json::Value) -> String) + 'a;

/// `loom apply` and `loom down`: a weaver that could not be applied makes the exit status 1.
async fn apply_cmd(
    client: &Client,
    print: &Printer<'_>,
    file: PathBuf,
    source: Option<String>,
    dry_run: bool,
    down: bool,
) -> Result<(), CliError> {
    let req = apply::read_request(&file, source, dry_run, down).map_err(|e| CliError::new("bad_request", e))?;
    let v = client.json(Method::POST, "/v1/apply", Some(serde_json::to_value(&req).unwrap_or_default())).await?;
    print(&v, &|v| {
        serde_json::from_value::<loom_core::api::ApplyResult>(v.clone())
            .map(|r| apply::render(&r))
            .unwrap_or_else(|e| format!("loomd answered something unexpected: {e}\n"))
    });
    if v["errors"].as_array().is_some_and(|e| !e.is_empty()) {
        return Err(CliError::new("conflict", "some weavers could not be applied (see the error lines)"));
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<i32, CliError> {
    let client = Client::new(&cli.socket);
    let json = cli.json;
    // Human output is built from loomd's JSON with every string stripped of terminal escapes
    // (much of it comes from weavers); JSON output stays exact.
    let print = |v: &serde_json::Value, human: &dyn Fn(&serde_json::Value) -> String| {
        if json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            print!("{}", human(&sanitize_json(v)));
        }
    };
    match cli.command {
        Command::Status => print(&client.json(Method::GET, "/v1/status", None).await?, &render::status),
        Command::Audit { weaver, kind, since, follow, limit } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(w) = weaver {
                q.push(format!("weaver={}", path_key(&w)));
            }
            if let Some(k) = kind {
                q.push(format!("kind={}", path_key(&k)));
            }
            if let Some(s) = since {
                q.push(format!("since={}", path_key(&s)));
            }
            let mut after: Option<i64> = None;
            loop {
                let mut query = q.clone();
                if let Some(a) = after {
                    query.push(format!("after={a}"));
                }
                let rows = client.json(Method::GET, &format!("/v1/audit?{}", query.join("&")), None).await?;
                if let Some(last) = rows.as_array().and_then(|a| a.last()) {
                    after = last["id"].as_i64();
                }
                if json && !follow {
                    println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
                } else if json {
                    for r in rows.as_array().into_iter().flatten() {
                        println!("{r}");
                    }
                } else {
                    print!("{}", render::audit(&sanitize_json(&rows)));
                }
                if !follow {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        Command::Thread(ThreadCmd::List { weaver }) => {
            let q = weaver.map(|w| format!("?weaver={}", path_key(&w))).unwrap_or_default();
            print(&client.json(Method::GET, &format!("/v1/threads{q}"), None).await?, &render::threads)
        }
        Command::Thread(ThreadCmd::Show { id }) => {
            print(&client.json(Method::GET, &format!("/v1/threads/{}", path_key(&id)), None).await?, &|v| {
                v["markdown"].as_str().unwrap_or("").to_string()
            })
        }
        Command::Thread(ThreadCmd::Search { query, weaver, since, limit }) => {
            let mut q = vec![format!("q={}", path_key(&query)), format!("limit={limit}")];
            if let Some(w) = weaver {
                q.push(format!("weaver={}", path_key(&w)));
            }
            if let Some(s) = since {
                q.push(format!("since={}", path_key(&s)));
            }
            print(&client.json(Method::GET, &format!("/v1/threads/search?{}", q.join("&")), None).await?, &render::hits)
        }
        Command::Usage { weaver } => {
            let q = weaver.map(|w| format!("?weaver={}", path_key(&w))).unwrap_or_default();
            print(&client.json(Method::GET, &format!("/v1/usage{q}"), None).await?, &render::usage)
        }
        Command::Wireguard(WireguardCmd::Peer(cmd)) => match cmd {
            PeerCmd::Add { name } => {
                let body = serde_json::json!({ "name": name });
                let v = client.json(Method::POST, "/v1/wireguard/peers", Some(body)).await?;
                print(&v, &|v| render::wireguard_peer(v, std::io::IsTerminal::is_terminal(&std::io::stdout())));
            }
            PeerCmd::Rm { name } => {
                let v = client.json(Method::DELETE, &format!("/v1/wireguard/peers/{}", path_key(&name)), None).await?;
                print(&v, &|v| format!("removed {}\n", v["removed"].as_str().unwrap_or("")));
            }
            PeerCmd::Ls => {
                print(&client.json(Method::GET, "/v1/wireguard/peers", None).await?, &render::wireguard_peers)
            }
        },
        Command::Apply { file, dry_run, source } => apply_cmd(&client, &print, file, source, dry_run, false).await?,
        Command::Down { file, dry_run, source } => apply_cmd(&client, &print, file, source, dry_run, true).await?,
        Command::Secrets(SecretsCmd::Check) => {
            print(&client.json(Method::GET, "/v1/secrets/check", None).await?, &render::secrets)
        }
        Command::Weaver(cmd) => match cmd {
            WeaverCmd::Create(a) => {
                let body = serde_json::to_value(create_body(&client, *a, json).await?).unwrap_or_default();
                print(&client.json(Method::POST, "/v1/weavers", Some(body)).await?, &render::created);
            }
            WeaverCmd::Ps => print(&client.json(Method::GET, "/v1/weavers", None).await?, &render::ps),
            WeaverCmd::Inspect { id } => print(
                &client.json(Method::GET, &format!("/v1/weavers/{}", path_key(&id)), None).await?,
                &render::inspect,
            ),
            WeaverCmd::Limits { id, max_tokens, max_usd, requests_per_minute, max_concurrent } => {
                let change = serde_json::json!({
                    "max_tokens": max_tokens, "max_usd": max_usd,
                    "requests_per_minute": requests_per_minute, "max_concurrent": max_concurrent,
                });
                let changing = change.as_object().is_some_and(|m| m.values().any(|v| !v.is_null()));
                let path = format!("/v1/weavers/{}/limits", path_key(&id));
                let v = if changing {
                    client.json(Method::POST, &path, Some(change)).await?
                } else {
                    client.json(Method::GET, &path, None).await?
                };
                print(&v, &|v| {
                    ["max_tokens", "max_usd", "requests_per_minute", "max_concurrent"]
                        .iter()
                        .map(|k| {
                            format!(
                                "{k:<20} {}\n",
                                if v[*k].is_null() { "unlimited".into() } else { v[*k].to_string() }
                            )
                        })
                        .collect()
                });
            }
            WeaverCmd::Stop { id } => print(
                &client.json(Method::POST, &format!("/v1/weavers/{}/stop", path_key(&id)), None).await?,
                &render::one_line,
            ),
            WeaverCmd::Start { id } => print(
                &client.json(Method::POST, &format!("/v1/weavers/{}/start", path_key(&id)), None).await?,
                &render::one_line,
            ),
            WeaverCmd::Rm { id, force } => {
                let q = if force { "?force=true" } else { "" };
                print(&client.json(Method::DELETE, &format!("/v1/weavers/{}{q}", path_key(&id)), None).await?, &|v| {
                    format!("removed {}\n", v["removed"].as_str().unwrap_or(""))
                });
            }
            WeaverCmd::Logs { id, follow, raw } => {
                let q = if follow { "?follow=true" } else { "" };
                let resp =
                    client.send(Method::GET, &format!("/v1/weavers/{}/logs{q}", path_key(&id)), None, None).await?;
                let mut body = resp.into_body();
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                let mut clean = loom_core::terminal::Sanitizer::new();
                while let Some(frame) = body.frame().await {
                    let frame =
                        frame.map_err(|e| CliError::new("unavailable", format!("the log stream broke: {e}")))?;
                    if let Some(data) = frame.data_ref() {
                        let _ = if raw { out.write_all(data) } else { out.write_all(clean.feed(data).as_bytes()) };
                        let _ = out.flush();
                    }
                }
                if !raw {
                    let _ = out.write_all(clean.finish().as_bytes());
                }
            }
            WeaverCmd::Exec { id, tty, command } => {
                return exec::run(&client, &path_key(&id), command, tty).await;
            }
            WeaverCmd::Egress { id, action } => {
                let path = format!("/v1/weavers/{}/egress", path_key(&id));
                let v = match action {
                    EgressAction::List => client.json(Method::GET, &path, None).await?,
                    EgressAction::Allow { rules } => {
                        client.json(Method::POST, &path, Some(serde_json::json!({ "allow": rules }))).await?
                    }
                    EgressAction::Deny { rules } => {
                        client.json(Method::POST, &path, Some(serde_json::json!({ "deny": rules }))).await?
                    }
                };
                print(&v, &render::egress);
            }
            WeaverCmd::Ssh { id, command } => {
                use std::io::IsTerminal;
                let tty = std::io::stdin().is_terminal();
                let command = if command.is_empty() { exec::login_shell() } else { command };
                return exec::run(&client, &path_key(&id), command, tty).await;
            }
        },
    }
    Ok(0)
}

fn main() -> ExitCode {
    // `loom ... | head` ends quietly, as Unix tools do, instead of panicking on EPIPE.
    // SAFETY: restoring a default signal disposition touches no memory of ours.
    unsafe {
        let _ = nix::sys::signal::signal(nix::sys::signal::Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl);
    }
    let cli = Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loom: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    // Not a drop: a drop waits for a blocking read of a terminal (the exec client's stdin) that may never end.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if json {
                eprintln!("{}", serde_json::json!({"error": {"code": e.code, "message": e.message}}));
            } else {
                eprintln!("loom: {}", loom_core::terminal::sanitize(&e.message));
            }
            ExitCode::from(1)
        }
    }
}
