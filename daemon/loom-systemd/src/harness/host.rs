//! The harness's look at the host: processes in `/proc`, its own cgroups, and small helpers,
//! apart from the container's life in `mod.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use loom_core::mounts::parse_mountinfo;

use super::{HarnessError, WRITABLE_V1_CONTROLLERS};

pub(super) fn wait_with_deadline(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub(super) fn find_container_init(nspawn: u32, our_ns: Option<&Path>) -> Option<u32> {
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        if !is_pid1_of_child_ns(&status) {
            continue;
        }
        let ns = fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
        if ns.is_none() || ns.as_deref() == our_ns {
            continue;
        }
        if descends_from(pid, nspawn) {
            return Some(pid);
        }
    }
    None
}

/// True when the `NSpid:` line of a `/proc/PID/status` shows the process as pid 1 of a pid
/// namespace below the one we see it from.
pub(super) fn is_pid1_of_child_ns(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|rest| {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() >= 2 && fields.last() == Some(&"1")
        })
        .unwrap_or(false)
}

/// Makes `loom-harness-NAME` below our own cgroup in each of [`WRITABLE_V1_CONTROLLERS`]
/// that the host mounts as a v1 hierarchy.
pub(super) fn own_v1_cgroups(name: &str) -> Result<Vec<PathBuf>, HarnessError> {
    let ours = read_lossy(Path::new("/proc/self/cgroup"));
    let mountinfo = read_lossy(Path::new("/proc/self/mountinfo"));
    let mut made: Vec<PathBuf> = Vec::new();
    for c in WRITABLE_V1_CONTROLLERS {
        let mount = format!("/sys/fs/cgroup/{c}");
        if !is_cgroup_v1_mount(&mountinfo, &mount) {
            continue;
        }
        let Some(rel) = own_cgroup_path(&ours, c) else {
            continue;
        };
        let dir = Path::new(&mount).join(rel.trim_start_matches('/')).join(format!("loom-harness-{name}"));
        if made.contains(&dir) {
            continue;
        }
        if let Err(source) = fs::create_dir_all(&dir) {
            remove_cgroups(&made);
            return Err(HarnessError::Spawn { what: format!("a cgroup at {}", dir.display()), source });
        }
        made.push(dir);
    }
    Ok(made)
}

/// Our cgroup path in the v1 hierarchy that has `controller`, from `/proc/self/cgroup`.
pub(super) fn own_cgroup_path<'a>(proc_cgroup: &'a str, controller: &str) -> Option<&'a str> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls.split(',').any(|c| c == controller).then_some(path)
    })
}

pub(super) fn is_cgroup_v1_mount(mountinfo: &str, target: &str) -> bool {
    parse_mountinfo(mountinfo).iter().any(|m| m.target == Path::new(target) && m.fstype == "cgroup")
}

/// Removes cgroup directories and whatever the container's systemd left below them, deepest
/// first (a cgroup directory can only be removed when it has no children and no processes).
pub(super) fn remove_cgroups(dirs: &[PathBuf]) {
    fn rm(dir: &Path) {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        let _ = fs::remove_dir(dir);
    }
    for d in dirs {
        // Processes may take a moment to leave after the container is gone.
        for _ in 0..20 {
            rm(d);
            if !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// True when `/proc/PID/mountinfo` shows a cgroup (v1) mount at `target` whose mount point is
/// read-only.
pub(super) fn is_read_only_cgroup_mount(mountinfo: &str, target: &str) -> bool {
    parse_mountinfo(mountinfo)
        .iter()
        .any(|m| m.target == Path::new(target) && m.fstype == "cgroup" && m.has_option("ro"))
}

pub(super) fn parent_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|s| s.trim().parse().ok())
}

fn descends_from(mut pid: u32, ancestor: u32) -> bool {
    for _ in 0..16 {
        match parent_of(pid) {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => pid = p,
            _ => return false,
        }
    }
    false
}

pub(super) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|r| r.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

pub(super) fn find_in_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join(prog)).find(|p| p.is_file())
}

pub(super) fn read_lossy(path: &Path) -> String {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

pub(super) fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_pid1_of_a_child_namespace() {
        assert!(is_pid1_of_child_ns("Name:\tsystemd\nNSpid:\t6822\t1\n"));
        assert!(!is_pid1_of_child_ns("NSpid:\t1\n"));
        assert!(!is_pid1_of_child_ns("NSpid:\t6822\t17\n"));
        assert!(!is_pid1_of_child_ns("Name:\tx\n"));
    }

    #[test]
    fn read_only_cgroup_mounts() {
        let mi = "45 42 0:32 / /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory\n\
                  48 44 0:33 / /sys/fs/cgroup/pids rw,relatime shared:17 - cgroup cgroup rw,pids\n\
                  51 42 0:38 / /sys/fs/cgroup/unified ro,nosuid shared:22 - cgroup2 cgroup rw\n";
        assert!(is_read_only_cgroup_mount(mi, "/sys/fs/cgroup/memory"));
        assert!(!is_read_only_cgroup_mount(mi, "/sys/fs/cgroup/pids"));
        assert!(!is_read_only_cgroup_mount(mi, "/sys/fs/cgroup/unified"));
        assert!(!is_read_only_cgroup_mount(mi, "/sys/fs/cgroup/cpu"));
    }

    #[test]
    fn own_cgroup_paths() {
        let pc = "9:name=systemd:/\n4:memory:/process_api/ea64\n2:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(own_cgroup_path(pc, "memory"), Some("/process_api/ea64"));
        assert_eq!(own_cgroup_path(pc, "cpuacct"), Some("/x"));
        assert_eq!(own_cgroup_path(pc, "cpu"), Some("/x"));
        assert_eq!(own_cgroup_path(pc, "pids"), None);
    }
}
