//! Reading processes from /proc: start times (to recognise a pid after a restart) and pid
//! namespaces (to find a container's first process).

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), which
/// together with the pid names one process for the life of the host.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Parses field 22 of a /proc/PID/stat line; comm (field 2) may hold spaces and parentheses.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 2..];
    // After comm, fields start at 3 (state); start time is field 22.
    after_comm.split(' ').nth(22 - 3)?.parse().ok()
}

/// Whether `pid` is still the process that had `ticks` as its start time (and not a zombie).
pub fn is_same_process(pid: i32, ticks: u64) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3));
    parse_start_ticks(&stat) == Some(ticks) && state != Some("Z")
}

/// The pid of `pid` in its innermost pid namespace (last NSpid value), and how deep it is.
pub fn inner_pid(pid: i32) -> Option<(i32, usize)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_nspid(&status)
}

pub fn parse_nspid(status: &str) -> Option<(i32, usize)> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    let ids: Vec<i32> = line["NSpid:".len()..].split_whitespace().filter_map(|s| s.parse().ok()).collect();
    Some((*ids.last()?, ids.len()))
}

/// A pidfd for a process that need not be our child: readable once it exits.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Supplementary groups of a process, from its status file.
pub fn groups_of(pid: i32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Groups:"))?;
    Some(line["Groups:".len()..].split_whitespace().filter_map(|s| s.parse().ok()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ticks_survive_odd_comms() {
        let stat = "1234 (a) b (c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100";
        assert_eq!(parse_start_ticks(stat), Some(98765));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn own_process_is_recognised() {
        let me = std::process::id() as i32;
        let ticks = start_ticks(me).unwrap();
        assert!(is_same_process(me, ticks));
        assert!(!is_same_process(me, ticks + 1));
    }

    #[test]
    fn nspid() {
        assert_eq!(parse_nspid("Name:\tx\nNSpid:\t6516\t2\n"), Some((2, 2)));
        assert_eq!(parse_nspid("NSpid:\t77\n"), Some((77, 1)));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }
}
