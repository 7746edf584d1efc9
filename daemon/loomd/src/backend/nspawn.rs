//! The `nspawn` backend: for hosts where systemd is not PID 1. loomd starts a shim per run
//! (see [`crate::shim`]), which runs systemd-nspawn inside cgroups loomd made for the weaver.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loom_core::config::BackendKind;
use loom_core::weaver::WeaverId;

use super::nspawn_args::{Register, START_MARKER, nspawn_argv};
use super::wait::{StartProbe, StartWait, process_gone, wait_for_command};
use super::{Backend, BackendError, ExecPlan, Launch, Observed, RunHandle, Started};
use crate::cgroups::{CgroupHost, Limits, kill_all, pids_in_tree};
use crate::procfs;
use crate::shim::{self, ShimPlan};
use crate::weaverfs::WeaverRoot;

#[derive(Debug)]
pub struct NspawnBackend {
    cgroups: CgroupHost,
    /// `STATE_DIR/weavers`: each weaver's directory is named by its id.
    weavers_dir: PathBuf,
    /// loomd's own binary, run as the shim.
    shim_exe: PathBuf,
    start_timeout: Duration,
    nix_store: bool,
}

impl NspawnBackend {
    pub fn new(cgroups: CgroupHost, weavers_dir: PathBuf, shim_exe: PathBuf, start_timeout: Duration) -> Self {
        NspawnBackend { cgroups, weavers_dir, shim_exe, start_timeout, nix_store: Path::new("/nix/store").is_dir() }
    }

    fn run_dir_for(&self, id: &WeaverId) -> PathBuf {
        self.weavers_dir.join(id.as_str()).join("run")
    }

    /// The container's first process: the pid-2 process of the payload's pid namespace
    /// (nspawn runs with --as-pid2).
    fn find_leader(&self, id: &WeaverId) -> Option<i32> {
        let tree = self.cgroups.paths(id).unified;
        pids_in_tree(&tree).into_iter().find(|&pid| matches!(procfs::inner_pid(pid), Some((2, depth)) if depth >= 2))
    }
}

fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    // Only the end is read: the log is as large as the weaver made it, up to its cap.
    let mut text = vec![];
    if let Ok(mut f) = fs::File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
        let _ = f.take(2048).read_to_end(&mut text);
    }
    let s = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = s.lines().filter(|l| !l.contains("/run/systemd/nspawn/propagate")).collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// The start wait's view of a shim's run: the leader in the weaver's cgroup, and the exit the
/// shim records.
struct ShimProbe<'a> {
    backend: &'a NspawnBackend,
    id: &'a WeaverId,
    run_dir: &'a Path,
}

impl StartProbe for ShimProbe<'_> {
    async fn leader(&mut self) -> Option<i32> {
        self.backend.find_leader(self.id)
    }
    async fn ended(&mut self) -> Result<bool, BackendError> {
        Ok(shim::read_exit(self.run_dir).is_some())
    }
}

#[async_trait::async_trait]
impl Backend for NspawnBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Nspawn
    }

    async fn prepare(&self, launch: &Launch) -> Result<Option<u64>, BackendError> {
        let spec = &launch.spec;
        let cg = self.cgroups.create(&launch.id, Limits { memory: spec.memory, cpus: spec.cpus, tasks: spec.tasks })?;
        Ok(cg.id().ok())
    }

    async fn start(&self, launch: &Launch) -> Result<Started, BackendError> {
        let spec = &launch.spec;
        let cg = self.cgroups.create(&launch.id, Limits { memory: spec.memory, cpus: spec.cpus, tasks: spec.tasks })?;
        let run_dir = launch.run_dir();
        fs::create_dir_all(&run_dir)
            .map_err(|e| BackendError::Io { context: format!("creating {}", run_dir.display()), source: e })?;
        for f in [shim::EXIT_FILE, shim::CHILD_PID_FILE] {
            let _ = fs::remove_file(run_dir.join(f));
        }
        // The marker is in the weaver's root: never removed, or later looked at, through a
        // symlink the weaver left there.
        let root = WeaverRoot::open(&launch.root())?;
        root.remove(START_MARKER)?;
        let plan = ShimPlan {
            argv: nspawn_argv(launch, Register::No, self.nix_store),
            join_cgroups: cg.procs_files(),
            log: Some(shim::ShimLog { path: launch.log_path(), cap: spec.log_size.0 }),
            netns: launch.netns.clone(),
        };
        fs::write(run_dir.join(shim::PLAN_FILE), serde_json::to_vec(&plan).unwrap_or_default()).map_err(|e| {
            BackendError::Io { context: format!("writing the launch plan in {}", run_dir.display()), source: e }
        })?;
        let log_path = launch.log_path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| BackendError::Io { context: format!("opening {}", log_path.display()), source: e })?;
        let log2 =
            log.try_clone().map_err(|e| BackendError::Io { context: "duplicating the log fd".into(), source: e })?;
        let mut cmd = tokio::process::Command::new(&self.shim_exe);
        cmd.arg("__shim")
            .arg(&run_dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        // SAFETY: setsid only changes the child's session; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        // tokio reaps the shim if it exits while loomd runs; after a loomd restart, init does.
        let child = cmd.spawn().map_err(|e| BackendError::Io {
            context: format!("starting the shim {}", self.shim_exe.display()),
            source: e,
        })?;
        let shim_pid = child.id().unwrap_or(0) as i32;
        drop(child);
        let start_ticks = procfs::start_ticks(shim_pid).unwrap_or(0);
        let handle = RunHandle::Shim { run: launch.run, pid: shim_pid, start_ticks };
        let deadline = Instant::now() + self.start_timeout;
        let mut probe = ShimProbe { backend: self, id: &launch.id, run_dir: &run_dir };
        match wait_for_command(&root, &spec.command, deadline, &mut probe).await? {
            StartWait::Reached { leader } => {
                Ok(Started { handle, leader_pid: leader.unwrap_or(0), cgroup_id: cg.id().ok() })
            }
            StartWait::EndedBeforeCommand => {
                let code = shim::read_exit(&run_dir).map_or(-1, |e| e.code);
                Err(BackendError::StartFailed(format!(
                    "exit code {code} before the command ran: {}",
                    log_tail(&log_path)
                )))
            }
            StartWait::TimedOut => {
                let _ = self.stop(&launch.id, &handle, Duration::from_secs(1)).await;
                Err(BackendError::StartTimeout(self.start_timeout))
            }
        }
    }

    async fn observe(&self, id: &WeaverId, handle: &RunHandle) -> Observed {
        let RunHandle::Shim { pid, start_ticks, .. } = handle else {
            return Observed::Lost { reason: "not a run of the nspawn backend".into() };
        };
        let run_dir = self.run_dir_for(id);
        if procfs::is_same_process(*pid, *start_ticks) {
            return Observed::Running { leader_pid: self.find_leader(id) };
        }
        match shim::read_exit(&run_dir) {
            Some(e) => Observed::Exited { code: e.code },
            None => Observed::Lost {
                reason: "its supervising shim vanished without recording an exit (host reboot or a kill)".into(),
            },
        }
    }

    async fn wait(&self, id: &WeaverId, handle: &RunHandle) -> Observed {
        if let RunHandle::Shim { pid, start_ticks, .. } = handle {
            process_gone(*pid, *start_ticks).await;
        }
        self.observe(id, handle).await
    }

    async fn stop(&self, id: &WeaverId, handle: &RunHandle, grace: Duration) -> Result<(), BackendError> {
        let RunHandle::Shim { pid, start_ticks, .. } = handle else {
            return Ok(());
        };
        if procfs::is_same_process(*pid, *start_ticks) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGTERM);
            if tokio::time::timeout(grace, process_gone(*pid, *start_ticks)).await.is_err() {
                kill_all(&self.cgroups.paths(id));
                let _ = tokio::time::timeout(Duration::from_secs(5), process_gone(*pid, *start_ticks)).await;
            }
        }
        // Whatever escaped nspawn's own teardown dies with the cgroup.
        kill_all(&self.cgroups.paths(id));
        Ok(())
    }

    async fn cleanup(&self, id: &WeaverId) -> Result<(), BackendError> {
        self.cgroups.destroy(id)?;
        Ok(())
    }

    fn exec_plan(&self, id: &WeaverId, command: &[String]) -> ExecPlan {
        let cg = self.cgroups.paths(id);
        let payload = cg.unified.join("payload");
        let unified = if payload.is_dir() { payload } else { cg.unified.clone() };
        let mut join: Vec<PathBuf> = vec![unified.join("cgroup.procs")];
        join.extend(cg.v1.iter().map(|p| p.join("cgroup.procs")));
        ExecPlan { argv: super::exec_argv(command), join_cgroups: join, cgroup_marker: id.as_str().to_string() }
    }

    fn cgroup_id(&self, id: &WeaverId) -> Option<u64> {
        self.cgroups.paths(id).id().ok()
    }
}
