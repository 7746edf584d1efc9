//! The cgroups of a weaver's unit: the hierarchies loomd sees, where the unit's cgroup is in
//! each, the files an exec'd process joins, and removing what systemd left behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use loom_core::mounts::parse_mounts;
use loom_systemd::unit::LOOM_SLICE;

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
        for m in parse_mounts(mounts) {
            match m.fstype.as_str() {
                "cgroup2" if layout.unified.is_none() => layout.unified = Some(m.target),
                "cgroup" if JOINED_V1.iter().any(|c| m.has_option(c)) && !layout.v1.contains(&m.target) => {
                    layout.v1.push(m.target)
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
pub(super) async fn remove_cgroup_tree(dir: &Path) {
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

pub(super) fn below(root: &Path, control_group: &str) -> PathBuf {
    root.join(control_group.trim_start_matches('/'))
}

/// Where systemd puts a weaver's unit when it has not told us yet.
pub(super) fn default_control_group(unit: &str) -> String {
    format!("/{LOOM_SLICE}/{unit}")
}
