//! A probe run inside a weaver's cgroup by the tests and the benchmark: it
//! performs the actions named on its command line, each `verb:arg,arg`, so
//! the audit can be checked against exactly what was done.
//!
//! verbs: exec:PROG,ARGS.. | write:PATH | rename:FROM,TO | unlink:PATH |
//! connect:IP:PORT | bind:IP:PORT (binds and listens) | setuid:UID |
//! mount:DIR (tmpfs, then umount) | ptrace:PID (PTRACE_PEEKDATA) |
//! unshare-uts | burst-open:PATH,N | burst-exec:N,PROG | chdir:DIR |
//! write-at:DIR,NAME (openat relative to a directory fd) |
//! mount-write:DIR (tmpfs on DIR, create DIR/inside via a relative path, umount)

use std::ffi::CString;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, ExitCode};

fn run(action: &str) -> Result<(), String> {
    let (verb, rest) = action.split_once(':').unwrap_or((action, ""));
    let args: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split(',').collect() };
    let arg = |i: usize| args.get(i).copied().ok_or_else(|| format!("{action}: missing argument {i}"));
    let num = |i: usize| -> Result<u64, String> { arg(i)?.parse().map_err(|e| format!("{action}: argument {i}: {e}")) };
    let cstr = |s: &str| CString::new(s).map_err(|e| format!("{action}: {e}"));
    match verb {
        "exec" => {
            // exit status is not an error: a killed child is a valid test case
            Command::new(arg(0)?).args(&args[1..]).status().map_err(|e| format!("{action}: {e}"))?;
        }
        "write" => {
            let mut f = std::fs::File::create(arg(0)?).map_err(|e| format!("{action}: {e}"))?;
            f.write_all(b"x").map_err(|e| format!("{action}: {e}"))?;
        }
        "chdir" => std::env::set_current_dir(arg(0)?).map_err(|e| format!("{action}: {e}"))?,
        "write-at" => {
            let dir = std::fs::File::open(arg(0)?).map_err(|e| format!("{action}: {e}"))?;
            let name = cstr(arg(1)?)?;
            // SAFETY: valid dirfd and NUL-terminated name; the fd is closed right away.
            let fd = unsafe {
                libc::openat(
                    std::os::fd::AsRawFd::as_raw_fd(&dir),
                    name.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                    0o600,
                )
            };
            if fd < 0 {
                return Err(format!("{action}: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: fd was just opened by us.
            unsafe { libc::close(fd) };
        }
        "mount-write" => {
            let dir = cstr(arg(0)?)?;
            // SAFETY: valid NUL-terminated strings, null data.
            let r = unsafe { libc::mount(c"loomprobe".as_ptr(), dir.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
            if r != 0 {
                return Err(format!("{action}: {}", std::io::Error::last_os_error()));
            }
            let cwd = std::env::current_dir().map_err(|e| format!("{action}: {e}"))?;
            let result = std::env::set_current_dir(arg(0)?)
                .and_then(|()| std::fs::write("inside", b"x"))
                .and_then(|()| std::env::set_current_dir(&cwd));
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
            result.map_err(|e| format!("{action}: {e}"))?;
        }
        "rename" => std::fs::rename(arg(0)?, arg(1)?).map_err(|e| format!("{action}: {e}"))?,
        "unlink" => std::fs::remove_file(arg(0)?).map_err(|e| format!("{action}: {e}"))?,
        "connect" => {
            TcpStream::connect(arg(0)?).map_err(|e| format!("{action}: {e}"))?;
        }
        "bind" => {
            TcpListener::bind(arg(0)?).map_err(|e| format!("{action}: {e}"))?;
        }
        "setuid" => {
            let uid = num(0)? as libc::uid_t;
            // SAFETY: plain syscall; it only changes this process's credentials.
            if unsafe { libc::setuid(uid) } != 0 {
                return Err(format!("{action}: {}", std::io::Error::last_os_error()));
            }
        }
        "mount" => {
            let dir = cstr(arg(0)?)?;
            // SAFETY: valid NUL-terminated strings, null data.
            let r = unsafe { libc::mount(c"loomprobe".as_ptr(), dir.as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) };
            if r != 0 {
                return Err(format!("{action}: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(dir.as_ptr(), 0) };
        }
        "ptrace" => {
            let pid = num(0)? as libc::pid_t;
            // SAFETY: PEEKDATA on a process we do not trace fails with ESRCH
            // and changes nothing; the attempt is what the audit must see.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_PEEKDATA,
                    pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                )
            };
        }
        "unshare-uts" => {
            // SAFETY: a new UTS namespace for this process only.
            if unsafe { libc::unshare(libc::CLONE_NEWUTS) } != 0 {
                return Err(format!("{action}: {}", std::io::Error::last_os_error()));
            }
        }
        "burst-open" => {
            let path = cstr(arg(0)?)?;
            for _ in 0..num(1)? {
                // SAFETY: valid path; the fd is closed right away.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC, 0o600) };
                if fd < 0 {
                    return Err(format!("{action}: {}", std::io::Error::last_os_error()));
                }
                // SAFETY: fd was just opened by us.
                unsafe { libc::close(fd) };
            }
        }
        "burst-exec" => {
            let prog = arg(1)?;
            for _ in 0..num(0)? {
                Command::new(prog).status().map_err(|e| format!("{action}: {e}"))?;
            }
        }
        _ => return Err(format!("unknown action {action:?}")),
    }
    Ok(())
}

fn main() -> ExitCode {
    for action in std::env::args().skip(1) {
        if let Err(e) = run(&action) {
            eprintln!("loom-audit-probe: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
