//! Reading processes from /proc: start times (to recognise a pid after a restart) and pid
//! namespaces (to find a container's first process); and a socket peer's groups.

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

/// The supplementary groups a Unix socket's peer had when it connected (`SO_PEERGROUPS`), or
/// `None` on a kernel without it (before Linux 4.13).
pub fn peer_groups(sock: std::os::fd::BorrowedFd<'_>) -> std::io::Result<Option<Vec<u32>>> {
    use nix::libc;
    use std::os::fd::AsRawFd;
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * GID) as libc::socklen_t;
        // SAFETY: `groups` is valid for writes of `len` bytes, the kernel writes at most that
        // many and stores in `len` how many it wrote (or, with ERANGE, how many it needs).
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if r == 0 {
            groups.truncate(len as usize / GID);
            return Ok(Some(groups));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOPROTOOPT) => return Ok(None),
            // NGROUPS_MAX is 65536: the second round always fits.
            Some(libc::ERANGE) if (len as usize) / GID > groups.len() && groups.len() < 65536 => {
                groups.resize((len as usize).div_ceil(GID), 0);
            }
            _ => return Err(e),
        }
    }
}

/// Supplementary groups of a process now, from its status file: only for kernels without
/// [`peer_groups`], since the pid may have changed its groups, or been reused, since it connected.
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
    fn peer_groups_are_those_of_the_connect() {
        use std::os::fd::AsFd;
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut got = peer_groups(a.as_fd()).unwrap().expect("this kernel has SO_PEERGROUPS");
        let mut mine: Vec<u32> = nix::unistd::getgroups().unwrap().iter().map(|g| g.as_raw()).collect();
        got.sort();
        mine.sort();
        assert_eq!(got, mine);
    }

    /// A client that changes its groups after connecting is judged by those it connected with.
    #[test]
    fn peer_groups_do_not_follow_a_later_change() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(std::env::var("LOOM_REQUIRE_PRIVILEGED").as_deref(), Ok("1"), "needs root");
            eprintln!("SKIPPED (not root): changing a client's groups needs root");
            return;
        }
        use std::io::{BufRead, Write};
        use std::os::fd::AsFd;
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let script = "use Socket; $| = 1; socket(my $s, PF_UNIX, SOCK_STREAM, 0) or die $!; \
                      connect($s, pack_sockaddr_un($ARGV[0])) or die $!; $) = '333 333'; \
                      print \"ready $)\\n\"; <STDIN>;";
        let mut cmd = std::process::Command::new("perl");
        cmd.args(["-e", script]).arg(&path).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        // SAFETY: between fork and exec the child only sets its groups.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setgroups(&[nix::unistd::Gid::from_raw(111), nix::unistd::Gid::from_raw(222)])?;
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("ready 333"), "the client did not change its groups: {line:?}");
        let (conn, _) = listener.accept().unwrap();
        let now = groups_of(child.id() as i32).unwrap();
        let mut then = peer_groups(conn.as_fd()).unwrap().unwrap();
        then.sort();
        let _ = child.stdin.take().unwrap().write_all(b"\n");
        let _ = child.wait();
        assert_eq!(now, vec![333], "the pid shows the new groups");
        assert_eq!(then, vec![111, 222], "the socket keeps those of the connect");
    }

    #[test]
    fn nspid() {
        assert_eq!(parse_nspid("Name:\tx\nNSpid:\t6516\t2\n"), Some((2, 2)));
        assert_eq!(parse_nspid("NSpid:\t77\n"), Some((77, 1)));
        assert_eq!(parse_nspid("Name:\tx\n"), None);
    }
}
