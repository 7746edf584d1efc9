//! The seam to the cgroup file system. Every weaver gets a v2 cgroup for identity (the audit
//! programs filter on its id) and limits through whichever controllers the host has: v2 where
//! the unified tree has them, v1 hierarchies otherwise (hybrid hosts).

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use loom_core::units::{ByteSize, Cpus};
use loom_core::weaver::WeaverId;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy found (looked at /sys/fs/cgroup and /sys/fs/cgroup/unified); loomd needs one to tell weavers apart"
    )]
    NoUnified,
    #[error("cgroup operation on {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory: ByteSize,
    pub cpus: Cpus,
    pub tasks: u64,
}

/// Where a weaver's cgroups live, one path per hierarchy it joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeaverCgroups {
    /// The v2 cgroup: its inode number is the weaver's cgroup id.
    pub unified: PathBuf,
    /// v1 controller cgroups (memory, pids, cpu) on hybrid hosts.
    pub v1: Vec<PathBuf>,
}

impl WeaverCgroups {
    /// Every `cgroup.procs` a process joins to become part of the weaver.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        std::iter::once(&self.unified).chain(&self.v1).map(|p| p.join("cgroup.procs")).collect()
    }

    /// The cgroup id the kernel reports for processes in this cgroup (its inode number).
    pub fn id(&self) -> Result<u64, CgroupError> {
        Ok(fs::metadata(&self.unified).map_err(io_err(&self.unified))?.ino())
    }
}

/// The host's cgroup layout, found once at start.
#[derive(Debug, Clone)]
pub struct CgroupHost {
    /// The v2 mount point.
    unified_root: PathBuf,
    /// Controllers the v2 tree offers.
    v2_controllers: Vec<String>,
    /// v1 mount points per controller, for those the v2 tree lacks.
    v1_roots: Vec<(String, PathBuf)>,
    /// The `name=systemd` v1 hierarchy of hybrid hosts, where nspawn mirrors the weaver's
    /// cgroup; it holds no limits, but its directories must go when the weaver does.
    named_systemd: Option<PathBuf>,
    /// The folder under every hierarchy that holds loom's weavers.
    parent: String,
}

impl CgroupHost {
    pub fn detect(parent: &str) -> Result<CgroupHost, CgroupError> {
        let mounts = fs::read_to_string("/proc/self/mounts").map_err(io_err(Path::new("/proc/self/mounts")))?;
        let mut unified_root = None;
        let mut v1 = Vec::new();
        let mut named_systemd = None;
        for m in loom_core::mounts::parse_mounts(&mounts) {
            match m.fstype.as_str() {
                "cgroup2" => unified_root = Some(m.target),
                "cgroup" => {
                    if m.has_option("name=systemd") {
                        named_systemd = Some(m.target.clone());
                    }
                    for opt in &m.options {
                        if ["memory", "pids", "cpu", "devices"].contains(&opt.as_str()) {
                            v1.push((opt.clone(), m.target.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        let unified_root = unified_root.ok_or(CgroupError::NoUnified)?;
        let ctl = unified_root.join("cgroup.controllers");
        let v2_controllers: Vec<String> =
            fs::read_to_string(&ctl).map_err(io_err(&ctl))?.split_whitespace().map(str::to_string).collect();
        v1.retain(|(c, _)| !v2_controllers.contains(c));
        Ok(CgroupHost { unified_root, v2_controllers, v1_roots: v1, named_systemd, parent: parent.to_string() })
    }

    pub fn paths(&self, id: &WeaverId) -> WeaverCgroups {
        let mut v1: Vec<PathBuf> =
            self.v1_roots.iter().map(|(_, root)| root.join(&self.parent).join(id.as_str())).collect();
        v1.dedup();
        WeaverCgroups { unified: self.unified_root.join(&self.parent).join(id.as_str()), v1 }
    }

    /// The folder holding every weaver's v2 cgroup; audit programs count levels from here.
    pub fn unified_parent(&self) -> PathBuf {
        self.unified_root.join(&self.parent)
    }

    /// Creates the weaver's cgroups and writes its limits.
    pub fn create(&self, id: &WeaverId, limits: Limits) -> Result<WeaverCgroups, CgroupError> {
        let paths = self.paths(id);
        let parent = self.unified_root.join(&self.parent);
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        // Controllers must be enabled in the parent for limits in the child to apply.
        let wanted: Vec<String> = ["memory", "pids", "cpu"]
            .iter()
            .filter(|c| self.v2_controllers.iter().any(|h| h == *c))
            .map(|c| format!("+{c}"))
            .collect();
        if !wanted.is_empty() {
            for dir in [&self.unified_root, &parent] {
                let f = dir.join("cgroup.subtree_control");
                // A controller the parent cannot pass down is a weaker limit, not a failure.
                if let Err(e) = fs::write(&f, wanted.join(" ")) {
                    tracing::warn!(path = %f.display(), error = %e, "could not enable cgroup controllers");
                }
            }
        }
        mkdir(&paths.unified)?;
        for c in &self.v2_controllers {
            match c.as_str() {
                "memory" => {
                    write(&paths.unified.join("memory.max"), &limits.memory.0.to_string())?;
                    // No swap: past the limit the OOM killer acts, as an operator expects.
                    let _ = fs::write(paths.unified.join("memory.swap.max"), "0");
                }
                "pids" => write(&paths.unified.join("pids.max"), &limits.tasks.to_string())?,
                "cpu" => write(&paths.unified.join("cpu.max"), &format!("{} 100000", limits.cpus.quota_us(100_000)))?,
                _ => {}
            }
        }
        for (controller, root) in &self.v1_roots {
            let dir = root.join(&self.parent).join(id.as_str());
            mkdir(&dir)?;
            match controller.as_str() {
                "memory" => {
                    write(&dir.join("memory.limit_in_bytes"), &limits.memory.0.to_string())?;
                    let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), limits.memory.0.to_string());
                }
                "pids" => write(&dir.join("pids.max"), &limits.tasks.to_string())?,
                // Hybrid hosts: the v1 device controller does what `DevicePolicy=closed` does
                // for the systemd backend (v2 has no device files; nspawn's /dev is all there is).
                "devices" => {
                    write(&dir.join("devices.deny"), "a")?;
                    for rule in loom_core::devices::cgroup_v1_rules() {
                        write(&dir.join("devices.allow"), &rule)?;
                    }
                }
                "cpu" => {
                    write(&dir.join("cpu.cfs_period_us"), "100000")?;
                    write(&dir.join("cpu.cfs_quota_us"), &limits.cpus.quota_us(100_000).to_string())?;
                }
                _ => {}
            }
        }
        Ok(paths)
    }

    /// Kills everything left in the weaver's cgroups and removes them, leaves first.
    pub fn destroy(&self, id: &WeaverId) -> Result<(), CgroupError> {
        let paths = self.paths(id);
        kill_all(&paths);
        for dir in std::iter::once(&paths.unified).chain(&paths.v1) {
            remove_tree(dir)?;
        }
        if let Some(named) = &self.named_systemd {
            remove_tree(&named.join(&self.parent).join(id.as_str()))?;
        }
        Ok(())
    }
}

/// Kills every process in the weaver's cgroups (used once the container is down or stuck).
pub fn kill_all(paths: &WeaverCgroups) {
    let kill = paths.unified.join("cgroup.kill");
    if fs::write(&kill, "1").is_ok() {
        return;
    }
    for procs in paths.procs_files() {
        for pid in pids_in_tree(procs.parent().unwrap_or(Path::new("/"))) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// All pids in a cgroup and its descendants.
pub fn pids_in_tree(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(pids_in_tree(&e.path()));
            }
        }
    }
    out
}

fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    // A cgroup whose last process is still exiting refuses removal briefly.
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => {
                return Err(CgroupError::Io { path: dir.to_path_buf(), source: e });
            }
        }
    }
    fs::remove_dir(dir).map_err(io_err(dir))
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(CgroupError::Io { path: dir.to_path_buf(), source: e }),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}
