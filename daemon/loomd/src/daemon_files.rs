//! The daemon's dealings with the files in a weaver's root, all through [`WeaverRoot`]: loom's
//! own files before each run, the agent's status, and the disk cap.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use loom_core::api::WeaverInfo;
use loom_core::units::ByteSize;
use loom_core::weaver::{WeaverId, WeaverSpec, WeaverState};

use super::{AGENT_CONTEXT, AGENT_PATH, AGENT_PROMPT, AGENT_STATE, Daemon, lock};
use crate::backend::nspawn_args::ENV_FILE;
use crate::rootfs;
use crate::weaverfs::{UsageError, WeaverRoot};

/// The most of an agent's status file loomd reads.
const MAX_STATUS_BYTES: u64 = 1 << 20;
/// The most entries one disk-cap walk counts before it gives up on the weaver.
const MAX_WALK_ENTRIES: u64 = 4_000_000;
/// How often a running weaver's root is measured at most, and at least this many times the
/// last walk took, so that measuring costs at most ~5% of one core.
const MIN_DISK_INTERVAL: Duration = Duration::from_secs(2);
const DISK_INTERVAL_FACTOR: u32 = 20;

/// What the disk-cap checks remember between ticks.
#[derive(Debug, Default)]
pub(super) struct DiskWatch {
    /// One walk at a time, whatever the number of weavers.
    walking: AtomicBool,
    pub(super) next: std::sync::Mutex<HashMap<WeaverId, Instant>>,
}

/// Clears `walking` however the walk ends.
struct Walking<'a>(&'a AtomicBool);

impl Drop for Walking<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn inside(path: &str) -> &str {
    path.trim_start_matches('/')
}

/// What one measurement of a weaver's root found.
enum Verdict {
    Within,
    /// Past the cap, or not measurable within the walk's bounds: the reason it is stopped.
    Over(String),
    /// The walk failed for a reason of loomd's (logged; the weaver runs on).
    Unknown(String),
}

fn measure(root: &std::path::Path, cap: ByteSize) -> Verdict {
    let usage = match WeaverRoot::open(root) {
        Ok(r) => r.disk_usage(cap.0, MAX_WALK_ENTRIES),
        Err(e) => return Verdict::Unknown(crate::error_chain(&e)),
    };
    match usage {
        Ok(u) if u.bytes > cap.0 => {
            Verdict::Over(format!("its root grew past its disk cap of {cap}; free space or raise --disk"))
        }
        Ok(_) => Verdict::Within,
        Err(e @ UsageError::Io(_)) => Verdict::Unknown(crate::error_chain(&e)),
        Err(e) => Verdict::Over(format!("{e}; remove files or raise --disk")),
    }
}

impl Daemon {
    fn root_of(&self, id: &WeaverId) -> std::path::PathBuf {
        self.dir_of(id).join("root")
    }

    /// Puts loom's own files in place for the next run: the skeleton (with `/.loom` as a
    /// real directory again, whatever the weaver made of it), the env file, and for agent
    /// weavers the prompt and the mount point of the agent binary.
    pub(super) async fn prepare_root(&self, spec: &WeaverSpec, id: &WeaverId, env: String) -> Result<(), String> {
        let root = self.root_of(id);
        let agent = spec.agent.as_ref().map(|a| a.prompt.clone());
        let ssh = spec.ssh.clone();
        let tailscale = match spec.tailscale {
            true => Some(self.tailscale_files(spec)?),
            false => None,
        };
        let done = tokio::task::spawn_blocking(move || -> Result<(), rootfs::RootfsError> {
            rootfs::create_skeleton(&root)?;
            let r = WeaverRoot::open(&root)?;
            r.replace_file(ENV_FILE, env.as_bytes(), 0o600)?;
            if let Some(prompt) = agent {
                r.make_dirs(inside(AGENT_STATE), 0o755, true)?;
                r.make_dirs(".loom/bin", 0o755, true)?;
                r.replace_file(inside(AGENT_PATH), b"", 0o755)?;
                r.replace_file(inside(AGENT_PROMPT), prompt.as_bytes(), 0o644)?;
            }
            if let Some(ssh) = &ssh {
                crate::ssh::write_files(&r, ssh)?;
            }
            if let Some((script, key)) = &tailscale {
                use loom_core::tailscale::{AUTH_KEY, DIR, UP_SCRIPT};
                r.make_dirs(DIR, 0o700, true)?;
                r.replace_file(UP_SCRIPT, script.as_bytes(), 0o644)?;
                r.replace_file(AUTH_KEY, key.as_bytes(), 0o600)?;
            }
            Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("preparing its root: {}", crate::error_chain(&e))),
            Err(e) => Err(format!("preparing its root: {e}")),
        }
    }

    /// The join script and the auth key (from the SOPS file) of a `--tailscale` weaver.
    fn tailscale_files(&self, spec: &WeaverSpec) -> Result<(String, zeroize::Zeroizing<String>), String> {
        let cfg = self.config().tailscale;
        if !cfg.enable {
            return Err("it was made with --tailscale, but loomd's [tailscale] is not enabled any more".into());
        }
        let key = self.secrets.get(&cfg.auth_key_secret).ok_or_else(|| {
            format!(
                "the tailscale auth key {:?} ([tailscale] auth_key_secret) is not in the secrets file: add it with sops, then start the weaver again",
                cfg.auth_key_secret
            )
        })?;
        Ok((cfg.up_script(&spec.name), key))
    }

    /// The auth key is the start script's to remove; this makes sure, whatever the start did.
    pub(super) async fn remove_tailscale_key(&self, id: &WeaverId) {
        let root = self.root_of(id);
        let removed = tokio::task::spawn_blocking(move || {
            WeaverRoot::open(&root).and_then(|r| r.remove(loom_core::tailscale::AUTH_KEY))
        })
        .await;
        if !matches!(removed, Ok(Ok(()))) {
            tracing::error!(weaver = %id, "could not make sure the tailscale auth key left the weaver's root");
        }
    }

    /// Writes the context of earlier threads for a new loop.
    pub(super) fn write_context(root: &std::path::Path, context: &str) -> Result<(), rootfs::RootfsError> {
        WeaverRoot::open(root)?.replace_file(inside(AGENT_CONTEXT), context.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Adds the agent loop's progress from its status file, for weavers that run it. A file
    /// the weaver made into something else (a FIFO, a symlink, a huge file) shows as the
    /// error saying so, and is never followed or read past its cap.
    pub(super) fn with_agent_status(&self, mut info: WeaverInfo) -> WeaverInfo {
        info.address = self.net.as_ref().and_then(|n| n.addr_of(&info.id));
        if info.spec.agent.is_none() {
            return info;
        }
        let status = format!("{AGENT_STATE}/status.json");
        let read = WeaverRoot::open(&self.root_of(&info.id)).and_then(|r| r.read(&status, MAX_STATUS_BYTES));
        info.agent_status = match read {
            Ok(bytes) => serde_json::from_slice(&bytes).ok(),
            Err(e) if e.is_not_found() => None,
            Err(e) => Some(serde_json::json!({ "error": e.to_string() })),
        };
        info
    }

    /// Measures the roots of running weavers that are due, off the async threads and one at a
    /// time, and stops each one past its disk cap as `failed`. Called every tick; returns at
    /// once while a walk is under way.
    pub fn check_disks(self: &Arc<Self>) {
        if self.disk_watch.walking.swap(true, Ordering::SeqCst) {
            return;
        }
        let now = Instant::now();
        let due: Vec<(WeaverId, ByteSize)> = {
            let mut next = lock(&self.disk_watch.next);
            let running: Vec<(WeaverId, ByteSize)> = self
                .with_store(|s| s.list())
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.info.state == WeaverState::Running)
                .map(|r| (r.info.id, r.info.spec.disk))
                .collect();
            next.retain(|id, _| running.iter().any(|(r, _)| r == id));
            running.into_iter().filter(|(id, _)| next.get(id).is_none_or(|t| *t <= now)).collect()
        };
        if due.is_empty() {
            self.disk_watch.walking.store(false, Ordering::SeqCst);
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _walking = Walking(&this.disk_watch.walking);
            let roots: Vec<_> = due.iter().map(|(id, cap)| (id.clone(), *cap, this.root_of(id))).collect();
            let measured = tokio::task::spawn_blocking(move || {
                roots
                    .into_iter()
                    .map(|(id, cap, root)| {
                        let started = Instant::now();
                        let verdict = measure(&root, cap);
                        (id, verdict, started.elapsed())
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (id, verdict, took) in measured {
                let every = MIN_DISK_INTERVAL.max(took * DISK_INTERVAL_FACTOR);
                lock(&this.disk_watch.next).insert(id.clone(), Instant::now() + every);
                match verdict {
                    Verdict::Within => {}
                    Verdict::Unknown(e) => {
                        tracing::warn!(weaver = %id, error = %e, "measuring the weaver's root failed")
                    }
                    Verdict::Over(reason) => {
                        tracing::warn!(weaver = %id, %reason, "stopping a weaver past its disk cap");
                        this.stop_failed(&id, reason).await;
                    }
                }
            }
        });
    }
}
