//! The `systemd` backend: each run of a weaver is the transient unit
//! `loom-weaver-<id>.service` in `loom.slice`, running systemd-nspawn (`--keep-unit
//! --register=yes`), so systemd owns the process tree, applies the limits, collects the output
//! in the journal and registers the container with systemd-machined (`machinectl list`).
//!
//! Every call to systemd goes through [`SystemdManager`] (D-Bus in production, a recording fake
//! in tests). loomd is a unit of the same systemd, so it sees the same pid namespace and cgroup
//! tree: the unit's `ControlGroup` is a path below loomd's cgroup mounts, and its `MainPID`
//! (systemd-nspawn) can be waited on with a pidfd.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loom_core::config::BackendKind;
use loom_core::weaver::WeaverId;
use loom_systemd::unit::{WEAVER_FIELD, unit_name};
use loom_systemd::{DbusSystemd, Phase, SystemdError, SystemdManager, TransientServiceSpec, UnitStatus};

pub use cgroups::CgroupLayout;
use cgroups::{below, default_control_group, remove_cgroup_tree};

use super::nspawn_args::{Register, START_MARKER, nspawn_argv};
use super::wait::{PidWait, StartProbe, StartWait, pidfd_exit, wait_for_command};
use super::{Backend, BackendError, ExecPlan, Launch, Observed, RunHandle, Started};
use crate::cgroups::pids_in_tree;
use crate::procfs;
use crate::weaverfs::WeaverRoot;

mod cgroups;
mod journal;

/// `name` found on PATH as an absolute path, else `fallback`.
fn find_program(name: &str, fallback: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_absolute() && p.is_file())
        .unwrap_or_else(|| PathBuf::from(fallback))
}

pub struct SystemdBackend {
    sd: Arc<dyn SystemdManager>,
    start_timeout: Duration,
    nix_store: bool,
    /// Absolute, because systemd runs `ExecStart=` without a search path.
    nspawn: PathBuf,
    journalctl: PathBuf,
    cgroups: CgroupLayout,
    /// Each weaver's unit cgroup as systemd reported it, for the sync calls (exec, cgroup id).
    control_groups: Mutex<std::collections::HashMap<WeaverId, String>>,
}

impl std::fmt::Debug for SystemdBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdBackend")
            .field("nspawn", &self.nspawn)
            .field("cgroups", &self.cgroups)
            .finish_non_exhaustive()
    }
}

fn systemd_err(e: &SystemdError) -> BackendError {
    BackendError::Systemd(crate::error_chain(e))
}

/// Whether `pid` is a systemd-nspawn process in our pid namespace (and so the unit's main
/// process as systemd reports it, not a stranger with the same number).
fn is_nspawn(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "systemd-nspawn")
}

/// Whether the unit is loaded for a run other than the handle's: its `InvocationID` differs
/// (a handle or a systemd without one cannot tell, and says no).
fn replaced(invocation: Option<&str>, st: Option<&UnitStatus>) -> bool {
    matches!((invocation, st), (Some(mine), Some(s)) if !s.invocation_id.is_empty() && s.invocation_id != mine)
}

fn replaced_reason(unit: &str) -> String {
    format!("its unit {unit} was started again since, as a newer run")
}

fn running(phase: Phase) -> bool {
    matches!(phase, Phase::Running | Phase::Starting | Phase::Stopping)
}

impl SystemdBackend {
    /// Connects to the system bus of the systemd loomd runs under.
    pub async fn connect(_weavers_dir: PathBuf, start_timeout: Duration) -> Result<SystemdBackend, BackendError> {
        let sd = DbusSystemd::connect_system().await.map_err(|e| systemd_err(&e))?;
        Ok(SystemdBackend::new(Arc::new(sd), start_timeout))
    }

    /// A backend over any [`SystemdManager`] (the recording fake in tests).
    pub fn new(sd: Arc<dyn SystemdManager>, start_timeout: Duration) -> SystemdBackend {
        SystemdBackend {
            sd,
            start_timeout,
            nix_store: Path::new("/nix/store").is_dir(),
            nspawn: find_program("systemd-nspawn", "/usr/bin/systemd-nspawn"),
            journalctl: find_program("journalctl", "/usr/bin/journalctl"),
            cgroups: CgroupLayout::detect(),
            control_groups: Mutex::default(),
        }
    }

    /// Replaces the cgroup layout (tests point it at a fake tree).
    pub fn with_cgroups(mut self, cgroups: CgroupLayout) -> Self {
        self.cgroups = cgroups;
        self
    }

    fn unit_of(id: &WeaverId) -> Result<String, BackendError> {
        unit_name(id.as_str()).map_err(|e| BackendError::Systemd(e.to_string()))
    }

    fn control_group(&self, id: &WeaverId) -> String {
        let known = self.control_groups.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned();
        known.unwrap_or_else(|| default_control_group(&format!("loom-weaver-{}.service", id.as_str())))
    }

    fn remember_cgroup(&self, id: &WeaverId, control_group: &str) {
        if !control_group.is_empty() {
            self.control_groups.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), control_group.into());
        }
    }

    /// The transient service for one run: nspawn's command line, the limits from the spec.
    pub fn unit_spec(&self, launch: &Launch) -> TransientServiceSpec {
        let mut argv = nspawn_argv(launch, Register::Yes, self.nix_store);
        argv[0] = self.nspawn.display().to_string();
        // systemd expands `$VAR`, `${VAR}` and `$$` in ExecStart= when it runs it; `$$` is a
        // literal `$`, so the weaver's command and environment reach nspawn as given.
        let argv = argv.into_iter().map(|a| a.replace('$', "$$")).collect();
        let spec = &launch.spec;
        let mut unit = TransientServiceSpec::new(launch.id.as_str(), spec.name.as_str(), argv);
        // The environment of systemd-nspawn itself; the payload's comes through --setenv.
        unit.environment = vec![format!("{WEAVER_FIELD}={}", launch.id)];
        unit.memory_max = Some(spec.memory.0).filter(|&m| m > 0);
        unit.cpu_quota_per_sec_usec = Some(spec.cpus.quota_us(1_000_000)).filter(|&q| q > 0);
        unit.network_namespace_path = launch.netns.as_ref().map(|p| p.display().to_string());
        unit.tasks_max = Some(spec.tasks).filter(|&t| t > 0);
        unit
    }

    /// The container's first process: the pid-2 process of the payload's pid namespace
    /// (nspawn runs with --as-pid2), found in the unit's cgroup, else below the leader
    /// systemd-machined knows for the machine.
    async fn find_leader(&self, id: &WeaverId, machine: Option<&str>) -> Option<i32> {
        if let Some(dir) = self.cgroups.unified_dir(&self.control_group(id)) {
            let found = pids_in_tree(&dir)
                .into_iter()
                .find(|&pid| matches!(procfs::inner_pid(pid), Some((2, depth)) if depth >= 2));
            if found.is_some() {
                return found;
            }
        }
        let pid1 = self.sd.machine_leader(machine?).await.ok()??;
        let children = fs::read_to_string(format!("/proc/{pid1}/task/{pid1}/children")).ok()?;
        children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .find(|&pid| procfs::inner_pid(pid).is_some_and(|(p, _)| p == 2))
    }

    async fn status(&self, unit: &str) -> Result<Option<UnitStatus>, BackendError> {
        self.sd.unit_status(unit).await.map_err(|e| systemd_err(&e))
    }

    /// Takes a unit that is still loaded out of the way: stops it if it runs and clears a
    /// failed one, so that its name can be used again.
    async fn clear_unit(&self, unit: &str) -> Result<(), BackendError> {
        let Some(st) = self.status(unit).await? else {
            return Ok(());
        };
        let after = if st.active_state == "failed" {
            Some(st)
        } else {
            match self.sd.stop_unit(unit).await {
                Ok(after) => after,
                Err(SystemdError::NoSuchUnit(_)) => None,
                Err(e) => return Err(systemd_err(&e)),
            }
        };
        if after.is_some() {
            match self.sd.reset_failed(unit).await {
                Ok(()) | Err(SystemdError::NoSuchUnit(_)) => {}
                Err(e) => return Err(systemd_err(&e)),
            }
        }
        Ok(())
    }

    /// How a run ended, or `Err` while it still runs.
    async fn observed(
        &self,
        id: &WeaverId,
        unit: &str,
        invocation: Option<&str>,
        st: Option<UnitStatus>,
    ) -> Result<Observed, ()> {
        let Some(st) = st else {
            // systemd-nspawn says STOPPING=1 as its container ends, so a unit whose command
            // exited 0 is deactivated and unloaded at once; only the journal still knows.
            return self.ended_per_journal(unit, invocation).await.ok_or(());
        };
        self.remember_cgroup(id, &st.control_group);
        match st.phase() {
            p if running(p) => Err(()),
            Phase::Exited(Some(exit)) | Phase::Failed(Some(exit)) => Ok(Observed::Exited { code: exit.shell_code() }),
            _ => Ok(Observed::Lost {
                reason: format!(
                    "systemd reports {unit} {}/{} ({}) with no exit status",
                    st.active_state, st.sub_state, st.result
                ),
            }),
        }
    }

    /// Kills what is left in the unit's cgroup when a stop job takes too long.
    fn kill_cgroup(&self, id: &WeaverId) {
        let cg = self.control_group(id);
        if let Some(dir) = self.cgroups.unified_dir(&cg)
            && fs::write(dir.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        for procs in self.cgroups.join_files(&cg) {
            for pid in pids_in_tree(procs.parent().unwrap_or(Path::new("/nonexistent"))) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// The start wait's view of a unit's run: the leader in the unit's cgroup (or below the
/// machine's), and the unit's state, read at most every 20 ms (a D-Bus round trip).
struct UnitProbe<'a> {
    backend: &'a SystemdBackend,
    id: &'a WeaverId,
    unit: &'a str,
    machine: &'a str,
    /// When the unit's state was last read, and whether it had ended.
    last: Option<(Instant, bool)>,
}

impl StartProbe for UnitProbe<'_> {
    async fn leader(&mut self) -> Option<i32> {
        self.backend.find_leader(self.id, Some(self.machine)).await
    }
    async fn ended(&mut self) -> Result<bool, BackendError> {
        match self.last {
            Some((at, ended)) if at.elapsed() < Duration::from_millis(20) => Ok(ended),
            _ => {
                let st = self.backend.status(self.unit).await?;
                let ended = st.as_ref().is_none_or(|s| !running(s.phase()));
                self.last = Some((Instant::now(), ended));
                Ok(ended)
            }
        }
    }
}

#[async_trait::async_trait]
impl Backend for SystemdBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Systemd
    }

    /// Makes the unit's v2 cgroup before systemd does, so that audit knows its id before the
    /// first process runs: systemd takes an existing directory as the unit's cgroup.
    async fn prepare(&self, launch: &Launch) -> Result<Option<u64>, BackendError> {
        let unit = Self::unit_of(&launch.id)?;
        // A previous run stays loaded (RemainAfterExit=yes) until it is cleared, and clearing
        // it removes its cgroup.
        self.clear_unit(&unit).await?;
        let Some(dir) = self.cgroups.unified_dir(&default_control_group(&unit)) else {
            return Ok(None);
        };
        fs::create_dir_all(&dir).map_err(|e| BackendError::Io {
            context: format!("creating the weaver's cgroup {}", dir.display()),
            source: e,
        })?;
        Ok(fs::metadata(&dir).ok().map(|m| m.ino()))
    }

    async fn start(&self, launch: &Launch) -> Result<Started, BackendError> {
        let id = &launch.id;
        let unit = Self::unit_of(id)?;
        let deadline = Instant::now() + self.start_timeout;
        // In the weaver's root: never removed, or later looked at, through a symlink.
        let root = WeaverRoot::open(&launch.root())?;
        root.remove(START_MARKER)?;
        let prepared = self.cgroups.unified_dir(&default_control_group(&unit)).and_then(|d| fs::metadata(d).ok());
        // Without prepare, an old run may still be loaded (after prepare this finds nothing).
        self.clear_unit(&unit).await?;
        let spec = self.unit_spec(launch);
        // Type=notify: the job is done once systemd-nspawn says READY, i.e. the container is
        // set up and its init runs; the marker then says the command itself was reached.
        let started = match tokio::time::timeout(self.start_timeout, self.sd.start_transient_service(&spec)).await {
            Err(_) => {
                let _ = self.clear_unit(&unit).await;
                return Err(BackendError::StartTimeout(self.start_timeout));
            }
            Ok(Err(SystemdError::JobFailed { result, .. })) => {
                return Err(BackendError::StartFailed(format!(
                    "systemd-nspawn did not start ({result}): {}",
                    self.why(&unit, self.status(&unit).await.ok().flatten().as_ref()).await
                )));
            }
            Ok(Err(e)) => return Err(systemd_err(&e)),
            Ok(Ok(s)) => s,
        };
        self.remember_cgroup(id, &started.control_group);
        let cgroup_id =
            self.cgroups.unified_dir(&self.control_group(id)).and_then(|d| fs::metadata(d).ok()).map(|m| m.ino());
        if let Some(p) = &prepared
            && cgroup_id != Some(p.ino())
        {
            tracing::warn!(weaver = %id, unit, prepared = p.ino(), started = ?cgroup_id, "the unit's cgroup id changed after prepare; audit may have missed its first processes");
        }
        let invocation = Some(started.invocation_id.clone()).filter(|i| !i.is_empty());
        let handle = RunHandle::Unit { run: launch.run, name: unit.clone(), invocation };
        let mut probe = UnitProbe { backend: self, id, unit: &unit, machine: &launch.spec.name, last: None };
        match wait_for_command(&root, &launch.spec.command, deadline, &mut probe).await? {
            StartWait::Reached { leader } => Ok(Started { handle, leader_pid: leader.unwrap_or(0), cgroup_id }),
            StartWait::EndedBeforeCommand => {
                let st = self.status(&unit).await?;
                let how = st.as_ref().and_then(|s| s.exit).map_or("ended".to_string(), |e| e.to_string());
                Err(BackendError::StartFailed(format!(
                    "the container {how} before the command ran: {}",
                    self.why(&unit, st.as_ref()).await
                )))
            }
            StartWait::TimedOut => {
                let _ = self.stop(id, &handle, Duration::from_secs(1)).await;
                Err(BackendError::StartTimeout(self.start_timeout))
            }
        }
    }

    async fn observe(&self, id: &WeaverId, handle: &RunHandle) -> Observed {
        let RunHandle::Unit { name, invocation, .. } = handle else {
            return Observed::Lost { reason: "not a run of the systemd backend".into() };
        };
        match self.sd.unit_status(name).await {
            Ok(st) if replaced(invocation.as_deref(), st.as_ref()) => Observed::Lost { reason: replaced_reason(name) },
            Ok(st) => match self.observed(id, name, invocation.as_deref(), st).await {
                Ok(o) => o,
                Err(_) => Observed::Running { leader_pid: self.find_leader(id, None).await },
            },
            // Not knowing is not an end: the caller keeps watching and asks again.
            Err(e) => {
                tracing::warn!(weaver = %id, unit = %name, error = %crate::error_chain(&e), "cannot read the unit's status");
                Observed::Running { leader_pid: None }
            }
        }
    }

    /// Waits for this run's end. A unit name is the same for every run of a weaver; the run is
    /// the unit's `InvocationID`, and the daemon drops what a watcher says about any run but
    /// the weaver's current one, so a watcher never has to work out whether it is stale.
    async fn wait(&self, id: &WeaverId, handle: &RunHandle) -> Observed {
        let RunHandle::Unit { name, invocation, .. } = handle else {
            return Observed::Lost { reason: "not a run of the systemd backend".into() };
        };
        let mut pid_usable = true;
        loop {
            let st = match self.sd.unit_status(name).await {
                Ok(st) => st,
                Err(e) => {
                    tracing::warn!(weaver = %id, unit = %name, error = %crate::error_chain(&e), "cannot read the unit's status; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if replaced(invocation.as_deref(), st.as_ref()) {
                return Observed::Lost { reason: replaced_reason(name) };
            }
            let pid = st.as_ref().map_or(0, |s| s.main_pid);
            if let Ok(done) = self.observed(id, name, invocation.as_deref(), st).await {
                return done;
            }
            if pid_usable && pid != 0 && is_nspawn(pid) {
                let waited = match i32::try_from(pid) {
                    Ok(pid) => pidfd_exit(pid).await,
                    Err(_) => PidWait::Unavailable,
                };
                if waited == PidWait::Unavailable {
                    pid_usable = false;
                }
                // systemd needs a moment to reap its main process and update the unit.
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(2) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match self.sd.unit_status(name).await {
                        Ok(Some(s)) if running(s.phase()) && s.main_pid == pid => {}
                        _ => break,
                    }
                }
            } else {
                pid_usable = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    async fn stop(&self, id: &WeaverId, handle: &RunHandle, grace: Duration) -> Result<(), BackendError> {
        let RunHandle::Unit { name, .. } = handle else {
            return Ok(());
        };
        // KillMode=mixed: SIGTERM to systemd-nspawn, which tears the container down; systemd
        // itself SIGKILLs the rest after TimeoutStopSec. Past our grace, the cgroup is killed.
        let after = match tokio::time::timeout(grace + Duration::from_secs(5), self.sd.stop_unit(name)).await {
            Ok(Ok(after)) => after,
            Ok(Err(SystemdError::NoSuchUnit(_))) => return Ok(()),
            Ok(Err(e)) => return Err(systemd_err(&e)),
            Err(_) => {
                tracing::warn!(weaver = %id, unit = %name, ?grace, "stop job too slow; killing the unit's cgroup");
                self.kill_cgroup(id);
                let t = Instant::now();
                let mut st = self.status(name).await?;
                while st.as_ref().is_some_and(|s| running(s.phase())) && t.elapsed() < Duration::from_secs(10) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    st = self.status(name).await?;
                }
                st
            }
        };
        if after.is_some() {
            match self.sd.reset_failed(name).await {
                Ok(()) | Err(SystemdError::NoSuchUnit(_)) => {}
                Err(e) => return Err(systemd_err(&e)),
            }
        }
        Ok(())
    }

    async fn cleanup(&self, id: &WeaverId) -> Result<(), BackendError> {
        let unit = Self::unit_of(id)?;
        self.clear_unit(&unit).await?;
        // What systemd could not trim because the container's last processes were still
        // exiting, or what prepare made for a run that never started.
        let cg = self.control_group(id);
        for root in self.cgroups.unified.iter().chain(&self.cgroups.v1) {
            remove_cgroup_tree(&below(root, &cg)).await;
        }
        self.control_groups.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        Ok(())
    }

    fn exec_plan(&self, id: &WeaverId, command: &[String]) -> ExecPlan {
        ExecPlan {
            argv: super::exec_argv(command),
            join_cgroups: self.cgroups.join_files(&self.control_group(id)),
            cgroup_marker: format!("loom-weaver-{}.service", id.as_str()),
        }
    }

    fn cgroup_id(&self, id: &WeaverId) -> Option<u64> {
        let dir = self.cgroups.unified_dir(&self.control_group(id))?;
        fs::metadata(dir).ok().map(|m| m.ino())
    }

    fn log_command(&self, id: &WeaverId, follow: bool) -> Option<Vec<String>> {
        let mut argv = vec![self.journalctl.display().to_string(), "-o".into(), "cat".into(), "--no-pager".into()];
        if follow {
            argv.push("-f".into());
        }
        argv.push(format!("{WEAVER_FIELD}={}", id.as_str()));
        Some(argv)
    }
}

#[cfg(test)]
mod tests;
