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
use loom_systemd::unit::{LOOM_SLICE, WEAVER_FIELD, unit_name};
use loom_systemd::{DbusSystemd, Phase, SystemdError, SystemdManager, TransientServiceSpec, UnitStatus};
use tokio::io::unix::AsyncFd;

use super::nspawn_args::{Register, START_MARKER, nspawn_argv};
use super::{Backend, BackendError, ExecPlan, Launch, Observed, RunHandle, Started};
use crate::cgroups::pids_in_tree;
use crate::procfs;
use crate::weaverfs::WeaverRoot;

/// The cgroup hierarchies loomd sees, parsed once from `/proc/self/mounts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    /// The v2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on hybrid hosts).
    pub unified: Option<PathBuf>,
    /// v1 hierarchies a process joins besides the v2 one so that it is tracked and limited like
    /// the rest of the weaver: `name=systemd`, memory, pids, cpu, cpuacct.
    pub v1: Vec<PathBuf>,
}

/// v1 controllers whose hierarchy an exec'd process joins (others, like cpuset, need set-up
/// a unit's cgroup does not have and limit nothing loom asks for).
const JOINED_V1: [&str; 5] = ["name=systemd", "memory", "pids", "cpu", "cpuacct"];

impl CgroupLayout {
    /// Reads the layout of the calling process's mount namespace.
    pub fn detect() -> CgroupLayout {
        CgroupLayout::parse(&fs::read_to_string("/proc/self/mounts").unwrap_or_default())
    }

    /// Parses `/proc/self/mounts`.
    pub fn parse(mounts: &str) -> CgroupLayout {
        let mut layout = CgroupLayout::default();
        for line in mounts.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 4 {
                continue;
            }
            let target = PathBuf::from(f[1]);
            match f[2] {
                "cgroup2" if layout.unified.is_none() => layout.unified = Some(target),
                "cgroup" if f[3].split(',').any(|o| JOINED_V1.contains(&o)) && !layout.v1.contains(&target) => {
                    layout.v1.push(target)
                }
                _ => {}
            }
        }
        layout
    }

    /// The unit's v2 cgroup directory.
    pub fn unified_dir(&self, control_group: &str) -> Option<PathBuf> {
        self.unified.as_ref().map(|root| below(root, control_group))
    }

    /// The `cgroup.procs` files a process joins to become part of the unit: in each hierarchy,
    /// the `payload` cgroup systemd-nspawn makes below its delegated unit cgroup when there is
    /// one (a v2 cgroup with children may hold no processes), else the unit's own; hierarchies
    /// where the unit has no cgroup are left alone.
    pub fn join_files(&self, control_group: &str) -> Vec<PathBuf> {
        self.unified
            .iter()
            .chain(&self.v1)
            .filter_map(|root| {
                let dir = below(root, control_group);
                let payload = dir.join("payload");
                let leaf = if payload.is_dir() { payload } else { dir };
                leaf.is_dir().then(|| leaf.join("cgroup.procs"))
            })
            .collect()
    }
}

/// Removes an empty cgroup and its descendants, leaves first, retrying while the kernel still
/// counts exiting processes in them; gives up quietly after a while (nothing is lost but a dir).
async fn remove_cgroup_tree(dir: &Path) {
    fn dirs_deepest_first(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs_deepest_first(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    for _ in 0..40 {
        let mut dirs = Vec::new();
        dirs_deepest_first(dir, &mut dirs);
        for d in &dirs {
            let _ = fs::remove_dir(d);
        }
        if !dir.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::debug!(cgroup = %dir.display(), "cgroup still busy; left in place");
}

fn below(root: &Path, control_group: &str) -> PathBuf {
    root.join(control_group.trim_start_matches('/'))
}

/// Where systemd puts a weaver's unit when it has not told us yet.
fn default_control_group(unit: &str) -> String {
    format!("/{LOOM_SLICE}/{unit}")
}

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

/// The lines of a failed run's journal that say why, minus nspawn's harmless noise.
fn journal_tail(text: &str) -> String {
    let lines: Vec<&str> =
        text.lines().filter(|l| !l.contains("/run/systemd/nspawn/propagate") && !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// How a unit's last run ended, by systemd's (PID 1's) lifecycle entries in the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunEnd {
    /// "Deactivated successfully": the main process exited 0 and nothing stopped it.
    Success,
    /// "Stopped": a stop job ended it.
    Stopped,
    /// "Failed with result": the unit failed (and was reset since).
    Failed,
    /// The last entry is its start, or there is none.
    Unknown,
}

const MSG_UNIT_STARTED: &str = "39f53479d3a045ac8e11786248231fbf";
const MSG_UNIT_SUCCESS: &str = "7ad2d189f7e94e70a38c781354912448";
const MSG_UNIT_STOPPED: &str = "9d1aaa27d60140bd96365438aad20286";
const MSG_UNIT_FAILED: &str = "d9b373ed55a64feb8242e02dbe79a49c";

/// Reads `journalctl -o json` lines, oldest first; only PID 1's entries count (a weaver's
/// output cannot carry fields, but be strict anyway).
fn last_run_end(json_lines: &str) -> RunEnd {
    for line in json_lines.lines().rev() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["_PID"].as_str() != Some("1") {
            continue;
        }
        match v["MESSAGE_ID"].as_str() {
            Some(MSG_UNIT_SUCCESS) => return RunEnd::Success,
            Some(MSG_UNIT_STOPPED) => return RunEnd::Stopped,
            Some(MSG_UNIT_FAILED) => return RunEnd::Failed,
            Some(MSG_UNIT_STARTED) => return RunEnd::Unknown,
            _ => {}
        }
    }
    RunEnd::Unknown
}

fn systemd_err(e: &SystemdError) -> BackendError {
    BackendError::Systemd(crate::error_chain(e))
}

enum PidWait {
    /// The process is gone (or was already).
    Exited,
    /// No pidfd for it (old kernel, or not in our pid namespace): poll instead.
    Unavailable,
}

async fn wait_pid(pid: u32) -> PidWait {
    let Ok(pid) = i32::try_from(pid) else {
        return PidWait::Unavailable;
    };
    match procfs::pidfd_open(pid) {
        Ok(fd) => {
            // SAFETY: the pidfd is owned by the AsyncFd for as long as it is registered and is
            // closed only when the AsyncFd drops.
            match unsafe { AsyncFd::register(fd) } {
                Ok(fd) => {
                    let _ = fd.readable().await;
                    PidWait::Exited
                }
                Err(_) => PidWait::Unavailable,
            }
        }
        Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => PidWait::Exited,
        Err(_) => PidWait::Unavailable,
    }
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

    /// What the journal says about the unit's last lines, for an error message.
    async fn why(&self, unit: &str) -> String {
        // journald may take a moment to have the last lines of a process that just ended.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let out = tokio::process::Command::new(&self.journalctl)
            .args(["-o", "cat", "--no-pager", "-n", "20", "-u", unit])
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        match out {
            Ok(o) => journal_tail(&String::from_utf8_lossy(&o.stdout)),
            Err(_) => format!("see `journalctl -u {unit}`"),
        }
    }

    /// How a run ended, or `Err` while it still runs.
    async fn observed(&self, id: &WeaverId, unit: &str, st: Option<UnitStatus>) -> Result<Observed, ()> {
        let Some(st) = st else {
            // systemd-nspawn says STOPPING=1 as its container ends, so a unit whose command
            // exited 0 is deactivated and unloaded at once; only the journal still knows.
            return self.ended_per_journal(unit).await.ok_or(());
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

    /// How the unit's last run ended, from systemd's own journal entries about it; `None`
    /// when the unit is loaded again meanwhile (a newer run started).
    async fn ended_per_journal(&self, unit: &str) -> Option<Observed> {
        for attempt in 0..10 {
            let out = tokio::process::Command::new(&self.journalctl)
                .args(["-u", unit, "-o", "json", "--no-pager", "-n", "50", "--output-fields=MESSAGE_ID,_PID"])
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
            match last_run_end(&text) {
                RunEnd::Unknown if attempt < 9 => {
                    // journald may not have the entry systemd just sent yet, or the last
                    // entry is the start of a newer run.
                    if let Ok(Some(_)) = self.sd.unit_status(unit).await {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                RunEnd::Success => return Some(Observed::Exited { code: 0 }),
                RunEnd::Stopped => {
                    return Some(Observed::Lost { reason: format!("its unit {unit} was stopped outside loom") });
                }
                RunEnd::Unknown | RunEnd::Failed => break,
            }
        }
        Some(Observed::Lost {
            reason: format!(
                "its unit {unit} is gone and the journal does not say how it ended (reset outside loom, or the host rebooted)"
            ),
        })
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
                    self.why(&unit).await
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
        let wanted_cmdline: Vec<u8> = launch.spec.command.iter().flat_map(|a| a.bytes().chain([0])).collect();
        let invocation = Some(started.invocation_id.clone()).filter(|i| !i.is_empty());
        let handle = RunHandle::Unit { run: launch.run, name: unit.clone(), invocation };
        let mut pause = Duration::from_millis(1);
        let mut marked_at: Option<Instant> = None;
        let mut last_check = Instant::now();
        loop {
            if marked_at.is_none() && root.is_file(START_MARKER) {
                marked_at = Some(Instant::now());
            }
            if let Some(marked) = marked_at {
                // The marker is written just before exec: wait for the exec itself, briefly,
                // and accept a command that rewrites its own argv or has already ended.
                let leader = self.find_leader(id, Some(&launch.spec.name)).await;
                let execd = leader
                    .is_some_and(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted_cmdline));
                if execd || marked.elapsed() > Duration::from_millis(100) {
                    return Ok(Started { handle, leader_pid: leader.unwrap_or(0), cgroup_id });
                }
            } else if last_check.elapsed() >= Duration::from_millis(20) {
                last_check = Instant::now();
                let st = self.status(&unit).await?;
                let ended = st.as_ref().is_none_or(|s| !running(s.phase()));
                if ended && !root.is_file(START_MARKER) {
                    let how = st.and_then(|s| s.exit).map_or("ended".to_string(), |e| e.to_string());
                    return Err(BackendError::StartFailed(format!(
                        "the container {how} before the command ran: {}",
                        self.why(&unit).await
                    )));
                }
            }
            if Instant::now() >= deadline {
                let _ = self.stop(id, &handle, Duration::from_secs(1)).await;
                return Err(BackendError::StartTimeout(self.start_timeout));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    async fn observe(&self, id: &WeaverId, handle: &RunHandle) -> Observed {
        let RunHandle::Unit { name, invocation, .. } = handle else {
            return Observed::Lost { reason: "not a run of the systemd backend".into() };
        };
        match self.sd.unit_status(name).await {
            Ok(st) if replaced(invocation.as_deref(), st.as_ref()) => Observed::Lost { reason: replaced_reason(name) },
            Ok(st) => match self.observed(id, name, st).await {
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
            if let Ok(done) = self.observed(id, name, st).await {
                return done;
            }
            if pid_usable && pid != 0 && is_nspawn(pid) {
                if let PidWait::Unavailable = wait_pid(pid).await {
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
mod tests {
    use super::*;
    use loom_core::api::CreateWeaver;
    use loom_core::config::WeaverDefaults;
    use loom_core::weaver::resolve_spec;
    use loom_systemd::unit::StartedUnit;
    use loom_systemd::{Call, ExitStatus, LoomUnit, RecordingSystemd};

    /// The recording fake, plus what systemd-nspawn's payload does on a start: the start
    /// wrapper drops the marker in the weaver's root.
    struct Fake {
        rec: RecordingSystemd,
        marker: Option<PathBuf>,
    }

    #[async_trait::async_trait]
    impl SystemdManager for Fake {
        async fn start_transient_service(&self, spec: &TransientServiceSpec) -> Result<StartedUnit, SystemdError> {
            let started = self.rec.start_transient_service(spec).await?;
            if let Some(m) = &self.marker {
                fs::create_dir_all(m.parent().unwrap()).unwrap();
                fs::write(m, "").unwrap();
            }
            Ok(started)
        }
        async fn unit_status(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError> {
            self.rec.unit_status(unit).await
        }
        async fn stop_unit(&self, unit: &str) -> Result<Option<UnitStatus>, SystemdError> {
            self.rec.stop_unit(unit).await
        }
        async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
            self.rec.reset_failed(unit).await
        }
        async fn list_loom_units(&self) -> Result<Vec<LoomUnit>, SystemdError> {
            self.rec.list_loom_units().await
        }
        async fn machine_leader(&self, _machine: &str) -> Result<Option<u32>, SystemdError> {
            // No real container behind the fake.
            Ok(None)
        }
    }

    fn launch(dir: &Path, f: impl FnOnce(&mut CreateWeaver)) -> Launch {
        let mut req = CreateWeaver { command: vec!["/bin/sleep".into(), "300".into()], ..Default::default() };
        f(&mut req);
        fs::create_dir_all(dir.join("root")).unwrap();
        Launch {
            id: WeaverId::from_random([0xab, 2, 3, 4, 5, 6]),
            run: loom_core::weaver::RunId::from_random(7),
            spec: resolve_spec(req, &WeaverDefaults::default(), "w1".into()).unwrap(),
            dir: dir.to_path_buf(),
            binds_ro: vec![],
        }
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    #[test]
    fn the_journal_tells_how_a_collected_unit_ended() {
        let e = |id: &str, pid: &str| format!(r#"{{"MESSAGE_ID":"{id}","_PID":"{pid}"}}"#);
        let check = |lines: &[String], want: RunEnd| assert_eq!(last_run_end(&lines.join("\n")), want, "{lines:?}");
        check(&[e(MSG_UNIT_STARTED, "1"), e(MSG_UNIT_SUCCESS, "1")], RunEnd::Success);
        check(&[e(MSG_UNIT_SUCCESS, "1"), e(MSG_UNIT_STARTED, "1")], RunEnd::Unknown);
        check(&[e(MSG_UNIT_STARTED, "1"), e(MSG_UNIT_FAILED, "1"), e(MSG_UNIT_STOPPED, "1")], RunEnd::Stopped);
        check(&[e(MSG_UNIT_STARTED, "1"), e(MSG_UNIT_SUCCESS, "4242")], RunEnd::Unknown);
        check(&[e(MSG_UNIT_STARTED, "1"), "not json".into(), r#"{"_PID":"1"}"#.into()], RunEnd::Unknown);
        check(&[], RunEnd::Unknown);
    }

    #[test]
    fn cgroup_layouts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup ro,relatime,memory 0 0\n\
                      cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        let l = CgroupLayout::parse(hybrid);
        assert_eq!(l.unified, Some("/sys/fs/cgroup/unified".into()));
        assert_eq!(
            l.v1,
            [PathBuf::from("/sys/fs/cgroup/cpu"), "/sys/fs/cgroup/memory".into(), "/sys/fs/cgroup/systemd".into()]
        );
        assert_eq!(
            l.unified_dir("/loom.slice/loom-weaver-x.service"),
            Some("/sys/fs/cgroup/unified/loom.slice/loom-weaver-x.service".into())
        );
        let v2 = CgroupLayout::parse("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n");
        assert_eq!(v2, CgroupLayout { unified: Some("/sys/fs/cgroup".into()), v1: vec![] });
        assert_eq!(CgroupLayout::parse("garbage\n\n"), CgroupLayout::default());
    }

    #[test]
    fn exec_joins_the_payload_cgroup_where_nspawn_made_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (v2, mem, pids) = (tmp.path().join("unified"), tmp.path().join("memory"), tmp.path().join("pids"));
        let id = WeaverId::from_random([1, 2, 3, 4, 5, 6]);
        let cg = format!("loom.slice/loom-weaver-{id}.service");
        fs::create_dir_all(v2.join(&cg).join("payload")).unwrap();
        fs::create_dir_all(mem.join(&cg)).unwrap();
        let b = SystemdBackend::new(Arc::new(RecordingSystemd::new()), Duration::from_secs(5))
            .with_cgroups(CgroupLayout { unified: Some(v2.clone()), v1: vec![mem.clone(), pids] });
        let plan = b.exec_plan(&id, &["/bin/echo".into(), "hi".into()]);
        assert_eq!(plan.argv[0], "/bin/sh", "the weaver's own shell, after exec entered it: {:?}", plan.argv);
        assert_eq!(plan.argv[4..], ["/bin/echo", "hi"]);
        assert_eq!(plan.cgroup_marker, format!("loom-weaver-{id}.service"));
        assert_eq!(
            plan.join_cgroups,
            [v2.join(&cg).join("payload/cgroup.procs"), mem.join(&cg).join("cgroup.procs")],
            "the payload leaf in v2, the unit in v1, nothing where the unit has no cgroup"
        );
        assert_eq!(b.cgroup_id(&id), Some(fs::metadata(v2.join(&cg)).unwrap().ino()));
        let logs = b.log_command(&id, true).unwrap();
        assert!(logs[0].ends_with("journalctl"));
        assert_eq!(logs[1..], ["-o", "cat", "--no-pager", "-f", &format!("LOOM_WEAVER={id}")]);
    }

    #[test]
    fn the_unit_carries_nspawn_registered_and_the_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let l = launch(tmp.path(), |r| {
            r.memory = Some("256M".into());
            r.cpus = Some(1.5);
            r.tasks = Some(99);
        });
        let b = SystemdBackend::new(Arc::new(RecordingSystemd::new()), Duration::from_secs(5));
        let u = b.unit_spec(&l);
        assert!(u.argv[0].starts_with('/') && u.argv[0].ends_with("systemd-nspawn"), "{:?}", u.argv);
        assert!(u.argv.iter().any(|a| a == "--register=yes"));
        assert!(u.argv.iter().any(|a| a == "--keep-unit"));
        assert!(u.argv.iter().any(|a| a == "--private-users=pick"));
        assert_eq!(u.argv[u.argv.len() - 2..], ["/bin/sleep", "300"]);
        assert_eq!(u.weaver_id, l.id.as_str());
        assert_eq!(u.weaver_name, "w1");
        assert_eq!(u.memory_max, Some(256 << 20));
        assert_eq!(u.cpu_quota_per_sec_usec, Some(1_500_000));
        assert_eq!(u.tasks_max, Some(99));
        assert_eq!(u.environment, [format!("LOOM_WEAVER={}", l.id)]);
        let l = launch(tmp.path(), |r| {
            r.command = vec!["/bin/sh".into(), "-c".into(), "echo $$ ${HOME} $X".into()];
            r.env.insert("A".into(), "$B".into());
        });
        let u = b.unit_spec(&l);
        assert_eq!(u.argv.last().unwrap(), "echo $$$$ $${HOME} $$X", "systemd must not expand the command");
        // The weaver's own variables travel in its env file, not the unit's command line.
        assert!(!u.argv.iter().any(|a| a.contains("A=")), "{:?}", u.argv);
    }

    #[test]
    fn a_run_is_started_observed_waited_for_stopped_and_cleaned_up() {
        block(async {
            let tmp = tempfile::tempdir().unwrap();
            let l = launch(tmp.path(), |_| {});
            let v2 = tmp.path().join("cg");
            let unit = format!("loom-weaver-{}.service", l.id);
            let fake = Arc::new(Fake { rec: RecordingSystemd::new(), marker: Some(l.root().join(START_MARKER)) });
            let b = SystemdBackend::new(fake.clone(), Duration::from_secs(5))
                .with_cgroups(CgroupLayout { unified: Some(v2.clone()), v1: vec![] });
            let prepared = b.prepare(&l).await.unwrap();
            assert!(prepared.is_some());
            let started = b.start(&l).await.unwrap();
            assert_eq!(started.cgroup_id, prepared, "audit knows the id before the first process");
            let RunHandle::Unit { name, invocation, run } = &started.handle else { panic!("{:?}", started.handle) };
            assert_eq!((name, *run), (&unit, l.run));
            assert!(invocation.is_some(), "the run is the unit's InvocationID");
            assert_eq!(started.cgroup_id, Some(fs::metadata(v2.join("loom.slice").join(&unit)).unwrap().ino()));
            let Some(Call::StartTransientService(spec)) =
                fake.rec.calls().into_iter().find(|c| matches!(c, Call::StartTransientService(_)))
            else {
                panic!("no start: {:?}", fake.rec.calls());
            };
            assert_eq!(spec, b.unit_spec(&l));
            assert!(matches!(b.observe(&l.id, &started.handle).await, Observed::Running { .. }));

            // The run ends: wait (polling, the fake's main pid is not a real nspawn) sees it.
            let waiter = b.wait(&l.id, &started.handle);
            let ender = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                fake.rec.exit_unit(&unit, ExitStatus::Code(3)).unwrap();
            };
            let (observed, ()) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(waiter, ender) })
                .await
                .expect("wait must notice the end");
            assert_eq!(observed, Observed::Exited { code: 3 });
            assert_eq!(b.observe(&l.id, &started.handle).await, Observed::Exited { code: 3 });

            // A second start clears the failed unit of the first run before starting again,
            // and is a different run under the same unit name.
            let again = b.start(&l).await.unwrap();
            assert_ne!(again.handle, started.handle);
            let calls = fake.rec.calls();
            assert!(calls.contains(&Call::ResetFailed(unit.clone())), "{calls:?}");
            // What the first run's handle says now is not the second run's state.
            assert!(matches!(b.observe(&l.id, &started.handle).await, Observed::Lost { .. }));
            let stale = tokio::time::timeout(Duration::from_secs(5), b.wait(&l.id, &started.handle)).await;
            assert!(matches!(stale, Ok(Observed::Lost { .. })), "{stale:?}");
            fake.rec.exit_unit(&unit, ExitStatus::Signal { signal: 9, core_dumped: false }).unwrap();
            assert_eq!(b.observe(&l.id, &again.handle).await, Observed::Exited { code: 137 });

            b.stop(&l.id, &again.handle, Duration::from_secs(1)).await.unwrap();
            assert!(fake.rec.unit_status(&unit).await.unwrap().is_none(), "stop resets the failed unit");
            assert!(matches!(b.observe(&l.id, &again.handle).await, Observed::Lost { .. }));
            // Stopping or cleaning up what is not there is fine.
            b.stop(&l.id, &again.handle, Duration::from_secs(1)).await.unwrap();
            b.cleanup(&l.id).await.unwrap();
        });
    }

    #[test]
    fn failed_starts_say_why() {
        block(async {
            let tmp = tempfile::tempdir().unwrap();
            let l = launch(tmp.path(), |_| {});
            // The container comes up but the command never runs (no marker), then it ends.
            let fake = Arc::new(Fake { rec: RecordingSystemd::new(), marker: None });
            let b = SystemdBackend::new(fake.clone(), Duration::from_secs(5));
            let unit = format!("loom-weaver-{}.service", l.id);
            let ending = async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                fake.rec.exit_unit(&unit, ExitStatus::Code(127)).unwrap();
            };
            let (r, ()) = tokio::join!(b.start(&l), ending);
            match r {
                Err(BackendError::StartFailed(m)) => assert!(m.contains("exited with code 127"), "{m}"),
                other => panic!("expected a failed start: {other:?}"),
            }
            b.cleanup(&l.id).await.unwrap();
            assert!(fake.rec.unit_status(&unit).await.unwrap().is_none(), "cleanup clears the failed unit");

            // systemd-nspawn itself fails: the start job fails.
            fake.rec.fail_next_start("failed");
            match b.start(&l).await {
                Err(BackendError::StartFailed(m)) => assert!(m.contains("did not start (failed)"), "{m}"),
                other => panic!("expected a failed start: {other:?}"),
            }

            // Nothing ever happens: the start times out and the unit is stopped.
            b.cleanup(&l.id).await.unwrap();
            let slow = SystemdBackend::new(fake.clone(), Duration::from_millis(300));
            assert!(matches!(slow.start(&l).await, Err(BackendError::StartTimeout(_))));
            assert!(fake.rec.unit_status(&unit).await.unwrap().is_none());
        });
    }
}
