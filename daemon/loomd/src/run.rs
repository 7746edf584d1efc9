//! loomd's start-up: flags over config, logging, the store, the backend, the socket, and the
//! signal loop (SIGTERM leaves weavers running; SIGHUP reloads the config).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use loom_core::access::AccessGroups;
use loom_core::config::{BackendKind, Config};
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::backend::Backend;
use crate::backend::nspawn::NspawnBackend;
use crate::cgroups::CgroupHost;
use crate::daemon::{Daemon, WeaverHooks};
use crate::store::Store;

#[derive(Debug, Parser)]
#[command(name = "loomd", version, about = "The loom host daemon: runs agent loops in isolated weavers")]
pub struct Args {
    /// TOML config file; without one loomd runs on embedded defaults.
    #[arg(long, env = "LOOMD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Unix socket to serve the API on (overrides `socket`).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Where the store and the weavers' roots live (overrides `state_dir`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// systemd, nspawn or kubernetes (overrides `backend`; default: systemd where it is PID 1).
    #[arg(long)]
    pub backend: Option<BackendKind>,
    /// Validate this config file and exit.
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,
}

pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        None => Ok(Config::default()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading the config file {}", p.display()))?;
            Config::from_toml(&text).with_context(|| format!("in {}", p.display()))
        }
    }
}

/// SIGHUP's config: re-read and validated whole (its sections and its declared weavers, prompt
/// files read), so that a bad file changes nothing.
fn reload_config(args: &Args) -> anyhow::Result<(Config, Vec<loom_core::declare::DeclaredWeaver>)> {
    let c = apply_flags(load_config(args.config.as_deref())?, args);
    c.validate()?;
    check_sections(&c)?;
    let declared = crate::daemon::declared_in_config(&c).map_err(anyhow::Error::msg)?;
    Ok((c, declared))
}

pub fn apply_flags(mut config: Config, args: &Args) -> Config {
    if let Some(s) = &args.socket {
        config.socket = s.clone();
    }
    if let Some(s) = &args.state_dir {
        config.state_dir = s.clone();
    }
    if let Some(b) = args.backend {
        config.backend = Some(b);
    }
    config
}

pub fn resolve_groups(config: &Config) -> AccessGroups {
    let gid = |name: &str| nix::unistd::Group::from_name(name).ok().flatten().map(|g| g.gid.as_raw());
    AccessGroups { admin: gid(&config.access.admin_group), operator: gid(&config.access.operator_group) }
}

/// Validates the sections other crates own, so `--check-config` catches their typos too.
fn check_sections(config: &Config) -> anyhow::Result<()> {
    loom_proxy::ProxyConfig::from_toml(&config.providers, &config.proxy).context("in [providers] or [proxy]")?;
    loom_audit::AuditConfig::from_toml(&config.audit).context("in [audit]")?;
    crate::wireguard::config_of(config)?;
    Ok(())
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOOMD_LOG").unwrap_or_else(|_| "info".into());
    let journald = Path::new("/run/systemd/journal/socket").exists().then(tracing_journald::layer).and_then(Result::ok);
    match journald {
        Some(layer) => {
            tracing_subscriber::registry().with(filter).with(layer.with_syslog_identifier("loomd".into())).init()
        }
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        return match load_config(Some(path)).and_then(|c| check_sections(&c).map(|()| c)) {
            Ok(c) => {
                println!(
                    "{}: ok (backend {}, state_dir {})",
                    path.display(),
                    c.backend.map_or("auto", |b| b.as_str()),
                    c.state_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loomd: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().worker_threads(2).build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loomd: starting the async runtime failed: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "loomd failed");
            eprintln!("loomd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn systemd_is_pid1() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

async fn make_backend(kind: BackendKind, config: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    let exe = std::env::current_exe().context("finding loomd's own binary (it runs as the shim)")?;
    let timeout = Duration::from_secs(config.weaver.start_timeout.0);
    match kind {
        BackendKind::Nspawn => {
            let cgroups = CgroupHost::detect("loom").context("finding the cgroup hierarchy")?;
            Ok(Arc::new(NspawnBackend::new(cgroups, config.state_dir.join("weavers"), exe, timeout)))
        }
        BackendKind::Systemd => {
            let backend = crate::backend::systemd::SystemdBackend::connect(config.state_dir.join("weavers"), timeout)
                .await
                .context(
                    "connecting to systemd over D-Bus (is this host booted with systemd? else use --backend nspawn)",
                )?;
            Ok(Arc::new(backend))
        }
        BackendKind::Kubernetes => {
            bail!(
                "backend \"kubernetes\" is accepted by the config but not built yet: use --backend systemd (where systemd is PID 1) or --backend nspawn, or set `backend` to one of them in the config"
            )
        }
    }
}

fn bind_socket(path: &Path, operator_gid: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use: is another loomd running? Stop it or pick another --socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).context("chmod 0660 on the socket")?;
    if let Some(gid) = operator_gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
            .context("chown of the socket to the operator group")?;
    }
    Ok(listener)
}

/// What every weaver gets bound read-only: loomd's own binary as the sandbox entry its first
/// process runs (see `crate::sandbox`), and the in-weaver agent when it sits next to loomd.
fn weaver_binds() -> anyhow::Result<Vec<(PathBuf, String)>> {
    let exe = std::env::current_exe().context("finding loomd's own binary, which every weaver runs first")?;
    let mut binds = vec![(exe.clone(), crate::sandbox::SANDBOX_PATH.to_string())];
    let agent = exe.with_file_name("loom-agent");
    if agent.is_file() {
        binds.push((agent, crate::daemon::AGENT_PATH.to_string()));
    } else {
        tracing::warn!("loom-agent is not next to loomd: weavers with --prompt will not start until it is");
    }
    Ok(binds)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let config = apply_flags(load_config(args.config.as_deref())?, &args);
    config.validate()?;
    check_sections(&config)?;
    let kind = config.backend.unwrap_or(if systemd_is_pid1() { BackendKind::Systemd } else { BackendKind::Nspawn });
    std::fs::create_dir_all(config.state_dir.join("weavers"))
        .with_context(|| format!("creating the state directory {}", config.state_dir.display()))?;
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
        .context("chmod 0700 on the state directory")?;
    let store = Store::open(&config.state_dir.join("loom.db"))?;
    let backend = make_backend(kind, &config).await?;
    let groups = resolve_groups(&config);
    let listener = bind_socket(&config.socket, groups.operator)?;
    let secrets = Arc::new(crate::secrets::Secrets::load(&config));
    let threads = Arc::new(crate::threads::Threads::open(&config.state_dir.join("loom.db"))?);
    let llm = crate::llm::Llm::start(&config, secrets.clone(), &config.state_dir.join("loom.db"), threads.clone())?;
    let mut hooks: Vec<Arc<dyn crate::daemon::WeaverHooks>> = vec![llm.clone()];
    let mut warnings = vec![];
    let required = config.audit.get("required").and_then(|v| v.as_bool()).unwrap_or(false);
    let auditor =
        match crate::auditing::Auditor::start(&config.audit, &config.state_dir, &config.state_dir.join("loom.db")) {
            Ok(a) => a,
            Err(e) if !required => {
                let why = format!("audit is off: {}", crate::error_chain(&e));
                tracing::warn!(warning = %why, "running without audit ([audit] required = true makes this fatal)");
                warnings.push(why);
                None
            }
            Err(e) => return Err(e.into()),
        };
    if let Some(a) = &auditor {
        hooks.push(a.clone());
        warnings.extend(
            a.status()
                .and_then(|(_, v)| serde_json::from_value::<Vec<String>>(v["warnings"].clone()).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|w| format!("audit: {w}")),
        );
    }
    let wireguard = {
        let (c, dir) = (config.clone(), config.state_dir.clone());
        tokio::task::spawn_blocking(move || crate::wireguard::start(&c, &dir)).await??
    };
    let daemon = Daemon::new(crate::daemon::DaemonParts {
        config: config.clone(),
        groups,
        store,
        backend,
        hooks,
        binds_ro: weaver_binds()?,
        secrets,
        threads: Some(threads),
        llm: Some(llm),
        auditor: auditor.clone(),
        net: Some(crate::net::WeaverNet::new(crate::net::NetParts {
            host: Arc::new(crate::net::IpTool::from_path()),
            config: config.network.clone(),
            tunnel: wireguard.as_ref().map(|t| t.interface().to_string()),
            enforcement: crate::net::Enforcement::start(),
            auditor,
            state_dir: config.state_dir.clone(),
        })),
        wireguard,
        warnings,
    });
    daemon.uploads().clear_stale().context("clearing the uploads an earlier loomd left")?;
    let (adopted, ended) = daemon.adopt().await?;
    tracing::info!(backend = kind.as_str(), socket = %config.socket.display(), adopted, ended, "loomd ready");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(crate::http::serve(daemon.clone(), listener, stop_rx));
    let expiry = {
        let daemon = daemon.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                daemon.expire().await;
                daemon.check_disks();
            }
        })
    };
    let notifier = crate::notify::Notifier::from_env();
    notifier.notify("READY=1");
    // On tasks of their own (one at a time, `reconcile`'s lock): a declared weaver's clone may
    // take longer than systemd waits for READY=1, and SIGTERM must still be heard meanwhile.
    match crate::daemon::declared_in_config(&config) {
        Ok(declared) => {
            let daemon = daemon.clone();
            tokio::spawn(async move { daemon.reconcile_config(declared).await });
        }
        Err(e) => {
            tracing::error!(error = %e, "the config's declared weavers were not reconciled: fix the config and send SIGHUP")
        }
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                notifier.notify("RELOADING=1");
                match reload_config(&args) {
                    Ok((c, declared)) => {
                        let groups = resolve_groups(&c);
                        for w in daemon.reload(c, groups) {
                            tracing::warn!(warning = %w, "config reloaded with a warning");
                        }
                        tracing::info!("config reloaded");
                        let daemon = daemon.clone();
                        tokio::spawn(async move { daemon.reconcile_config(declared).await });
                    }
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "config reload failed; keeping the old config and the weavers as they are"),
                }
                notifier.notify("READY=1");
            }
        }
    }
    // Weavers keep running: their shims or units outlive loomd, and the next loomd adopts them.
    notifier.notify("STOPPING=1");
    let _ = stop_tx.send(true);
    expiry.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    let _ = std::fs::remove_file(&config.socket);
    tracing::info!("loomd stopped; weavers left running");
    Ok(())
}
